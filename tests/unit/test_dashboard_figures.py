"""Figure builders: pure functions from plain data to plotly figure dicts."""

from __future__ import annotations

import json

import numpy as np

from dashboards import figures
from dashboards.buffers import Series
from streamwatch.kinds import NEWS2_NORMAL
from streamwatch.schema import Health

CHANNELS = ("hr", "spo2")


def series(ts: list[float], *, hr: list[float | None] | None = None, score: list[float] | None = None,
           threshold: float = 3.0, res: float = 0.0) -> Series:
    n = len(ts)
    hr_values = np.array([np.nan if v is None else v for v in (hr or [80.0] * n)], dtype=float)
    values = np.column_stack([hr_values, np.full(n, 97.0)])
    mean = np.column_stack([np.full(n, 79.0), np.full(n, 97.0)])
    std = np.column_stack([np.full(n, 2.0), np.full(n, 1.0)])
    scores = np.array(score or [0.5] * n, dtype=float)
    return Series(
        channels=CHANNELS, ts=np.array(ts, dtype=float), seq=np.arange(1, n + 1),
        values=values, low=values - 1 if res else np.full_like(values, np.nan),
        high=values + 1 if res else np.full_like(values, np.nan), mean=mean, std=std,
        score=scores, threshold=np.full(n, threshold), anomalous=scores > threshold,
        res=np.full(n, res),
    )


def build(s: Series, **kwargs: object) -> dict:
    args: dict = {"units": {"hr": "bpm", "spo2": "%"}, "start": 0.0, "end": 100.0}
    args.update(kwargs)
    return figures.stream_figure(s, **args)


def by_role(fig: dict, role: str, channel: str | None) -> dict:
    (trace,) = [t for t in fig["data"] if t["meta"] == {"role": role, "channel": channel}]
    return trace


def test_band_is_forecast_mean_plus_minus_two_std_filled_between() -> None:
    fig = build(series([1.0, 2.0, 3.0]))
    hi, lo = by_role(fig, "band_hi", "hr"), by_role(fig, "band_lo", "hr")
    assert hi["y"] == [83.0, 83.0, 83.0] and lo["y"] == [75.0, 75.0, 75.0]
    assert lo["fill"] == "tonexty" and fig["data"].index(hi) + 1 == fig["data"].index(lo)
    assert by_role(fig, "forecast", "hr")["y"] == [79.0] * 3
    assert by_role(fig, "observed", "spo2")["y"] == [97.0] * 3
    assert by_role(fig, "threshold", None)["y"] == [3.0] * 3


def test_trace_index_matches_the_figure_order_used_by_patches() -> None:
    fig = build(series([1.0]))
    for c, channel in enumerate(CHANNELS):
        for role in figures.ROLES:
            assert fig["data"][figures.trace_index(2, role, c)]["meta"] == {
                "role": role, "channel": channel}
    for role in figures.SCORE_ROLES:
        assert fig["data"][figures.trace_index(2, role)]["meta"]["role"] == role


def test_figure_is_strict_json_with_lists_not_arrays_and_missing_values_as_null() -> None:
    fig = build(series([1.0, 2.0], hr=[None, 81.0]))
    text = json.dumps(fig, allow_nan=False)  # raises on NaN or numpy types
    assert by_role(fig, "observed", "hr")["y"] == [None, 81.0]
    assert '"bdata"' not in text


def test_news2_normal_bands_are_drawn_only_for_vitals_views() -> None:
    shapes = build(series([1.0]), news2=True)["layout"]["shapes"]
    bands = {s["name"]: (s["y0"], s["y1"], s["yref"]) for s in shapes}
    assert bands["news2:hr"] == (*NEWS2_NORMAL["hr"], "y")
    assert bands["news2:spo2"] == (*NEWS2_NORMAL["spo2"], "y2")
    assert build(series([1.0]), news2=False)["layout"]["shapes"] == []


def test_alert_spans_shade_every_panel_and_open_alerts_run_to_now() -> None:
    spans = [figures.AlertSpan("a1", "critical", 10.0, 20.0),
             figures.AlertSpan("a2", "warning", 50.0, None)]
    shapes = build(series([1.0]), spans=spans, end=90.0)["layout"]["shapes"]
    closed, running = shapes
    assert closed["yref"] == "paper" and (closed["y0"], closed["y1"]) == (0, 1)
    assert (closed["x0"], closed["x1"]) == tuple(figures.to_x([10.0, 20.0]))
    assert closed["name"] == "alert:critical:closed:a1"
    assert running["x1"] == figures.to_x([90.0])[0] and running["name"].startswith("alert:warning:open")
    assert closed["fillcolor"] != running["fillcolor"]


def test_lines_break_across_gaps_instead_of_bridging_them() -> None:
    fig = build(series([1.0, 2.0, 3.0, 60.0, 61.0]))
    observed = by_role(fig, "observed", "hr")
    assert observed["y"] == [80.0, 80.0, 80.0, None, 80.0, 80.0]
    assert len(observed["x"]) == 6
    cols = figures.trace_columns(series([100.0]), prev_ts=10.0)
    assert cols[("observed", 0)][1] == [None, 80.0]
    cols = figures.trace_columns(series([11.0]), prev_ts=10.0)
    assert cols[("observed", 0)][1] == [80.0]


def test_bucket_points_get_an_observed_range_and_wider_gap_tolerance() -> None:
    fig = build(series([30.0, 90.0, 150.0], res=60.0))
    assert by_role(fig, "range_hi", "hr")["y"] == [81.0, 81.0, 81.0]
    assert by_role(fig, "range_lo", "hr")["fill"] == "tonexty"
    assert None not in by_role(fig, "observed", "hr")["y"]  # 60 s apart is no gap at 60 s buckets
    assert by_role(build(series([1.0, 2.0])), "range_hi", "hr")["y"] == []


def test_a_few_extreme_scores_do_not_flatten_the_score_panel() -> None:
    scores = [-6000.0] + [0.5] * 98 + [500.0]
    fig = build(series([float(i) for i in range(100)], score=scores))
    limits = fig["layout"]["yaxis3"]["autorangeoptions"]
    assert 9.0 <= limits["maxallowed"] < 500.0
    assert -6000.0 < limits["minallowed"] < 0.5
    assert by_role(fig, "anomalous", None)["y"] == [round(limits["maxallowed"], 3)]


def test_times_are_wall_clock_strings_at_the_given_offset() -> None:
    assert figures.to_x([0.0, 1.5]) == ["1970-01-01 00:00:00.000", "1970-01-01 00:00:01.500"]
    assert figures.to_x([0.0], utc_offset_s=3600.0) == ["1970-01-01 01:00:00.000"]


def test_names_from_data_are_escaped_before_reaching_plotly() -> None:
    s = Series.empty(("<b>x</b>",))
    fig = build(s, units={"<b>x</b>": "<i>u</i>"})
    assert fig["layout"]["yaxis"]["title"]["text"] == "&lt;b&gt;x&lt;/b&gt; (&lt;i&gt;u&lt;/i&gt;)"
    health = {"<script>d</script>": [Health(detector_id="<script>d</script>", ts=1.0,
                                            readings_per_s=5.0, consumer_lag=0,
                                            training_loss=0.2, training_steps=1,
                                            dead_letters={}, open_alerts=0, streams=1)]}
    hfig = figures.health_figure(health)
    assert {t["name"] for t in hfig["data"]} == {"&lt;script&gt;d&lt;/script&gt;"}
    assert [t["y"] for t in hfig["data"]] == [[5.0], [0.2]]
