"""Dashboard callbacks called as plain functions over a real store."""

from __future__ import annotations

import json
from typing import Any

import dash
import plotly.io
import pytest
from dash import Patch

from dashboards import figures
from dashboards.app import create_app
from dashboards.buffers import BufferConfig
from dashboards.callbacks import DashboardCallbacks, ViewConfig, filter_and_page
from dashboards.store import DashboardStore
from streamwatch.schema import Health
from tests.unit.test_dashboard_store import FakeClock, alert, score

UTC = ViewConfig(utc_offset_s=0.0)


def apply_patch(figure: dict[str, Any], patch: Patch) -> dict[str, Any]:
    """What the browser does with a Patch (the operations this app sends), on the JSON."""
    figure = json.loads(json.dumps(figure))
    for op in json.loads(json.dumps(patch.to_plotly_json()))["operations"]:
        *path, last = op["location"]
        target: Any = figure
        for key in path:
            target = target[key]
        if op["operation"] == "Extend":
            target[last].extend(op["params"]["value"])
        elif op["operation"] == "Assign":
            target[last] = op["params"]["value"]
        else:
            raise AssertionError(f"unexpected patch operation {op['operation']}")
    return figure


def texts(component: Any) -> list[str]:
    """Every string in a component tree (what the browser would show as text)."""
    if isinstance(component, str):
        return [component]
    if isinstance(component, list | tuple):
        return [t for c in component for t in texts(c)]
    children = getattr(component, "children", None)
    return texts(children) if children is not None else []


def walk(component: Any) -> list[Any]:
    if isinstance(component, list | tuple):
        return [x for c in component for x in walk(c)]
    if not hasattr(component, "to_plotly_json"):
        return []
    return [component, *walk(getattr(component, "children", None) or [])]


@pytest.fixture
def store() -> DashboardStore:
    s = DashboardStore(BufferConfig(recent_points=300), clock=FakeClock())
    for i in range(120):
        for bed in ("icu/bed-01", "icu/bed-02", "icu/bed-03"):
            s.add_score(score(bed, 1000.0 + i))
        s.add_score(score("line/press-1", 1000.0 + i, kind="machine"))
    s.add_alert(alert("icu/bed-02", 1100.0, severity="critical"))
    s.add_alert(alert("icu/bed-03", 1050.0, "close", severity="warning", seq=2))
    return s


def test_routes_map_paths_to_pages_and_read_stream_and_time_from_the_query(store) -> None:
    cb = DashboardCallbacks(store, UTC)
    stream = cb.route("/stream", "?id=icu%2Fbed-02&at=1100.5")
    (context,) = [c for c in walk(stream) if getattr(c, "id", None) == "stream-context"]
    assert context.data == {"stream_id": "icu/bed-02", "at": 1100.5}
    assert "Streams" in texts(cb.route("/", ""))
    assert "Dead letters by reason" in texts(cb.route("/health", None))
    assert "Page not found" in texts(cb.route("/nope", ""))
    assert "Page not found" in texts(cb.route("/stream", "?at=1"))


def test_overview_puts_the_most_severe_stream_first_and_counts_statuses(store) -> None:
    cb = DashboardCallbacks(store, UTC)
    rows, label, page, prev_off, next_off, kpis, kinds = cb.overview(None, [], "", 0, None)
    first_row_texts = texts(rows[0])
    assert first_row_texts[:2] == ["critical", "icu/bed-02"]
    assert label == "1–4 of 4" and page == 0 and prev_off and next_off
    assert kinds == ["icu_vitals", "machine"]
    kpi_texts = texts(kpis)
    assert kpi_texts[kpi_texts.index("critical") - 1] == "1"
    assert kpi_texts[kpi_texts.index("open alerts") - 1] == "1"


def test_overview_filters_by_kind_status_and_id_and_pages_through_many_streams() -> None:
    s = DashboardStore()
    for i in range(1000):
        s.add_score(score(f"icu/bed-{i:04d}", 1.0, kind="icu_vitals" if i % 4 else "machine"))
    cb = DashboardCallbacks(s, UTC)
    rows, label, page, prev_off, next_off, *_ = cb.overview("icu_vitals", [], "", 0, None)
    assert len(rows) == 25 and label == "1–25 of 750" and prev_off and not next_off
    rows, label, page, *_ = cb.overview("icu_vitals", [], "", page, "page-next")
    assert label == "26–50 of 750" and page == 1
    rows, label, page, *_ = cb.overview("icu_vitals", [], "", 999, "page-next")
    assert page == 29 and label == "726–750 of 750"
    rows, label, page, *_ = cb.overview("icu_vitals", [], "bed-0001", 5, "filter-text")
    assert label == "1–1 of 1" and page == 0
    rows, label, *_ = cb.overview(None, ["critical"], "", 0, "filter-status")
    assert label == "0 of 0" and texts(rows) == ["No streams match (yet)."]


def test_filter_and_page_sorts_by_severity_then_score_ratio(store) -> None:
    store.add_score(score("icu/bed-01", 2000.0, value=2.9))
    result = filter_and_page(store.summaries(30.0), page_size=2)
    assert [s.stream_id for s in result.rows] == ["icu/bed-02", "icu/bed-01"]
    assert result.pages == 2 and result.counts["critical"] == 1


def test_stream_figure_patches_append_every_new_point_exactly_once(store) -> None:
    cb = DashboardCallbacks(store, UTC)
    context = {"stream_id": "icu/bed-02", "at": None}
    fig, cursor = cb.stream_figure(300, ["live"], context, None, None)
    assert isinstance(fig, dict)
    observed = figures.trace_index(7, "observed", 0)
    assert len(fig["data"][observed]["x"]) == 120
    nothing, same = cb.stream_figure(300, ["live"], context, cursor, None)
    assert nothing is dash.no_update and same == cursor
    t = 1120.0
    for burst in (1, 3, 0, 5, 2):
        for _ in range(burst):
            store.add_score(score("icu/bed-02", t))
            store.add_score(score("icu/bed-01", t))  # other streams' points must not leak in
            t += 1.0
        update, cursor = cb.stream_figure(300, ["live"], context, cursor, None)
        if burst:
            assert isinstance(update, Patch)
            fig = apply_patch(fig, update)
    xs = fig["data"][observed]["x"]
    assert len(xs) == len(set(xs)) == 120 + 11
    assert xs == figures.to_x([1000.0 + i for i in range(131)])
    assert fig["layout"]["xaxis"]["range"] == figures.to_x([1130.0 - 300, 1130.0])
    assert any(s["name"].startswith("alert:critical:open") for s in fig["layout"]["shapes"])


def test_stream_figure_rebuilds_on_window_change_missed_points_and_after_many_appends() -> None:
    store = DashboardStore(BufferConfig(recent_points=20))
    for i in range(10):
        store.add_score(score("s", float(i)))
    cb = DashboardCallbacks(store, ViewConfig(utc_offset_s=0.0, rebuild_after=10))
    ctx = {"stream_id": "s", "at": None}
    _fig, cursor = cb.stream_figure(300, ["live"], ctx, None, None)
    assert isinstance(cb.stream_figure(3600, ["live"], ctx, cursor, "stream-window")[0], dict)
    for i in range(10, 40):  # more than the ring holds: the cursor fell out
        store.add_score(score("s", float(i)))
    rebuilt, cursor = cb.stream_figure(300, ["live"], ctx, cursor, None)
    assert isinstance(rebuilt, dict)
    for i in range(40, 45):
        store.add_score(score("s", float(i)))
    patch, cursor = cb.stream_figure(300, ["live"], ctx, cursor, None)
    assert isinstance(patch, Patch) and cursor is not None and cursor["appended"] == 5
    for i in range(45, 51):
        store.add_score(score("s", float(i)))
    patch, cursor = cb.stream_figure(300, ["live"], ctx, cursor, None)
    assert isinstance(patch, Patch) and cursor is not None and cursor["appended"] == 11
    store.add_score(score("s", 51.0))
    assert isinstance(cb.stream_figure(300, ["live"], ctx, cursor, None)[0], dict)


def test_stream_view_opened_from_an_alert_centres_on_its_onset(store) -> None:
    cb = DashboardCallbacks(store, UTC)
    fig, cursor = cb.stream_figure(900, [], {"stream_id": "icu/bed-03", "at": 1050.0}, None, None)
    assert fig["layout"]["xaxis"]["range"] == figures.to_x([1050.0 - 300, 1050.0 + 600])
    assert [s["name"].split(":")[:3] for s in fig["layout"]["shapes"]
            if s["name"].startswith("alert")] == [["alert", "warning", "closed"]]
    store.add_score(score("icu/bed-03", 5000.0))
    patch, _ = cb.stream_figure(900, [], {"stream_id": "icu/bed-03", "at": 1050.0}, cursor, None)
    assert isinstance(patch, Patch)  # not following: the range stays on the alert
    assert not any(op["location"][:2] == ["layout", "xaxis"]
                   for op in patch.to_plotly_json()["operations"])


def test_unknown_stream_shows_a_message_instead_of_failing(store) -> None:
    cb = DashboardCallbacks(store, UTC)
    fig, cursor = cb.stream_figure(900, ["live"], {"stream_id": "nope", "at": None}, None, None)
    assert cursor is None and "No scores" in fig["layout"]["annotations"][0]["text"]
    _status, meta, _tiles, _alerts = cb.stream_header({"stream_id": "nope"})
    assert "no scores" in meta


def test_stream_header_shows_latest_values_with_units_and_the_streams_alerts(store) -> None:
    cb = DashboardCallbacks(store, UTC)
    status, _meta, tiles, alerts = cb.stream_header({"stream_id": "icu/bed-02"})
    assert texts(status) == ["critical"]
    tile_texts = texts(tiles)
    assert tile_texts[:4] == ["HR", "80", "bpm", "expected 79"]
    assert "SpO2 low" in texts(alerts)


def test_alert_feed_is_newest_first_links_to_the_onset_and_filters_open(store) -> None:
    cb = DashboardCallbacks(store, UTC)
    items = cb.alert_feed([])
    links = [c.href for c in walk(items) if getattr(c, "href", None)]
    assert links == ["/stream?id=icu%2Fbed-02&at=1100.000", "/stream?id=icu%2Fbed-03&at=1050.000"]
    assert "open" in texts(items[0]) and "closed" in texts(items[1])
    assert "SpO₂ 84 vs 97 expected (95–99), low" in texts(items[0])
    assert len(cb.alert_feed(["open"])) == 1


def test_health_page_sums_detectors_and_lists_dead_letters(store) -> None:
    for d, rate in (("det-a", 400.0), ("det-b", 600.0)):
        store.add_health(Health(detector_id=d, ts=1.0, readings_per_s=rate, consumer_lag=10,
                                training_loss=0.25, training_steps=7,
                                dead_letters={"schema": 3}, open_alerts=1, streams=2))
    kpis, fig, detectors, dead, feed = DashboardCallbacks(store, UTC).health()
    kpi_texts = texts(kpis)
    assert kpi_texts[kpi_texts.index("readings/s") - 1] == "1,000"
    assert kpi_texts[kpi_texts.index("consumer lag") - 1] == "20"
    assert kpi_texts[kpi_texts.index("training steps") - 1] == "14"
    assert "det-b" in texts(detectors)
    assert texts(dead)[4:7] == ["schema", "0", "6"]
    assert "streams held" in texts(feed)
    assert len(fig["data"]) == 4


def test_text_from_data_stays_text_never_markup(store) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    a = alert("icu/bed-01", 1110.0)
    store.add_alert(a.__class__(**{**{f: getattr(a, f) for f in a.__struct_fields__},
                                   "explanation": a.explanation.__class__(
                                       summary=hostile, channels=[], duration_s=1.0,
                                       reasons=["model"])}))
    cb = DashboardCallbacks(store, UTC)
    items = cb.alert_feed([])
    assert hostile in texts(items)  # a text node, escaped by React
    for page in (cb.route("/", ""), cb.route("/health", ""), cb.route("/stream", "?id=x"), items):
        for component in walk(page):
            assert component.__class__.__name__ != "Markdown"
            assert not getattr(component, "dangerously_allow_html", False)


def test_the_app_serves_its_layout_and_runs_a_callback_over_http(store) -> None:
    app = create_app(store, config=UTC)
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    layout = client.get("/_dash-layout").get_json()
    assert "tick" in json.dumps(layout)
    body = {
        "output": "..stream-graph.figure...stream-cursor.data..",
        "outputs": [{"id": "stream-graph", "property": "figure"},
                    {"id": "stream-cursor", "property": "data"}],
        "inputs": [{"id": "tick", "property": "n_intervals", "value": 1},
                   {"id": "stream-window", "property": "value", "value": 900},
                   {"id": "stream-follow", "property": "value", "value": ["live"]}],
        "state": [{"id": "stream-context", "property": "data",
                   "value": {"stream_id": "icu/bed-02", "at": None}},
                  {"id": "stream-cursor", "property": "data", "value": None}],
        "changedPropIds": ["tick.n_intervals"],
    }
    reply = client.post("/_dash-update-component", json=body)
    assert reply.status_code == 200
    response = reply.get_json()["response"]
    figure = plotly.io.from_json(json.dumps(response["stream-graph"]["figure"]), skip_invalid=False)
    assert len(figure.data) == 7 * 6 + 3
    assert response["stream-cursor"]["data"]["seq"] > 0
