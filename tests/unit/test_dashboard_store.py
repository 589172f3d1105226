"""The dashboard store: bounded buffers, exactly-once cursor reads, alert lifecycle, health."""

from __future__ import annotations

import math
import random
import threading
from typing import Any

import numpy as np
import pytest

from dashboards.buffers import BufferConfig
from dashboards.status import StreamSummary
from dashboards.store import DashboardStore
from streamwatch.errors import ConfigError
from streamwatch.schema import (
    Alert,
    ChannelExplanation,
    ChannelForecast,
    DeadLetter,
    Explanation,
    Health,
    Score,
    alert_id_for,
)


def score(sid: str, ts: float, hr: float | None = 80.0, *, kind: str = "icu_vitals",
          value: float = 0.5, threshold: float | None = 3.0, hard: str | None = None) -> Score:
    return Score(
        stream_id=sid, kind=kind, ts=ts, values={"hr": hr, "spo2": 97.0},
        forecast={"hr": ChannelForecast(mean=79.0, std=2.0),
                  "spo2": ChannelForecast(mean=97.0, std=1.0)},
        channel_scores={"hr": 0.1}, score=value, threshold=threshold,
        anomalous=threshold is not None and value > threshold, warming_up=False, model="gru",
        model_version=1, hard_limit=hard,  # type: ignore[arg-type]
        hard_limit_channels=["hr"] if hard else [],
    )


def alert(sid: str, onset: float, event: str = "open", *, severity: str = "critical",
          seq: int = 0, ts: float | None = None) -> Alert:
    return Alert(
        alert_id=alert_id_for(sid, onset), event=event, stream_id=sid, kind="icu_vitals",  # type: ignore[arg-type]
        ts=onset if ts is None else ts, onset_ts=onset,
        end_ts=(onset + 60.0) if event == "close" else None, severity=severity,  # type: ignore[arg-type]
        peak_score=9.0,
        explanation=Explanation(summary="SpO2 low", channels=[ChannelExplanation(
            channel="spo2", observed=84.0, expected=97.0, lower=95.0, upper=99.0, score=9.0,
            direction="low")], duration_s=60.0, reasons=["model"]),
        model_version=1, seq=seq,
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cursor_reads_return_every_point_exactly_once_across_interleaved_streams() -> None:
    store = DashboardStore(BufferConfig(recent_points=500))
    rng = random.Random(3)
    written: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    read: dict[str, list[float]] = {k: [] for k in written}
    cursors = dict.fromkeys(written, 0)
    t = dict.fromkeys(written, 0.0)
    for _ in range(600):
        sid = rng.choice("abc")
        t[sid] += rng.uniform(0.5, 2.0)
        store.add_score(score(sid, t[sid]))
        written[sid].append(t[sid])
        if rng.random() < 0.3:
            reader = rng.choice("abc")
            points, reset = store.points_since(reader, cursors[reader])
            if points is not None:
                assert not reset
                read[reader] += points.ts.tolist()
                if len(points):
                    cursors[reader] = int(points.seq[-1])
    for sid in written:
        points, _ = store.points_since(sid, cursors[sid])
        assert points is not None
        read[sid] += points.ts.tolist()
        assert read[sid] == written[sid]


def test_points_that_left_the_ring_make_the_reader_rebuild() -> None:
    store = DashboardStore(BufferConfig(recent_points=10))
    for i in range(5):
        store.add_score(score("s", float(i)))
    _, reset = store.points_since("s", cursor=5)
    assert not reset
    for i in range(5, 30):
        store.add_score(score("s", float(i)))
    points, reset = store.points_since("s", cursor=5)
    assert reset
    assert points is not None and points.ts.tolist() == [float(i) for i in range(20, 30)]


def test_late_or_duplicate_scores_are_counted_not_drawn_twice() -> None:
    store = DashboardStore()
    assert store.add_score(score("s", 10.0))
    assert not store.add_score(score("s", 10.0))
    assert not store.add_score(score("s", 9.0))
    assert store.add_score(score("s", 11.0))
    assert store.stats().late_or_duplicate_scores == 2
    series = store.series("s", 0.0)
    assert series is not None and series.ts.tolist() == [10.0, 11.0]


def test_history_buckets_hold_min_max_mean_and_join_tiers_without_overlap() -> None:
    cfg = BufferConfig(recent_points=60, tiers=((60.0, 30), (600.0, 20)))
    store = DashboardStore(cfg)
    for i in range(3 * 3600 // 10):  # 3 h at 0.1 Hz
        ts = 10.0 * i
        store.add_score(score("s", ts, hr=60.0 + (i % 6), value=float(i % 6)))
    series = store.series("s", 0.0)
    assert series is not None
    assert np.all(np.diff(series.ts) > 0)
    assert set(series.res.tolist()) == {0.0, 60.0, 600.0}
    coarse = series.res == 600.0
    hr = series.channels.index("hr")
    # each 10-min bucket saw hr 60..65 (mean 62.5) and scores 0..5
    assert np.allclose(series.low[coarse, hr], 60.0)
    assert np.allclose(series.high[coarse, hr], 65.0)
    assert np.allclose(series.values[coarse, hr], 62.5)
    assert np.allclose(series.score[coarse], 5.0)
    # full-rate part is the last 60 points, untouched
    full = series.res == 0.0
    assert full.sum() == 60 and series.ts[full][-1] == 10.0 * (3 * 360 - 1)
    # the tiers only cover time before the next finer tier starts
    assert series.ts[coarse].max() + 300 <= series.ts[series.res == 60.0].min() - 30


def test_missing_channel_values_stay_missing_in_buckets() -> None:
    store = DashboardStore(BufferConfig(recent_points=10, tiers=((60.0, 10),)))
    for i in range(200):
        store.add_score(score("s", float(i), hr=None))
    series = store.series("s", 0.0)
    assert series is not None
    hr = series.channels.index("hr")
    assert np.isnan(series.values[:, hr]).all() and np.isnan(series.low[:, hr]).all()


def test_memory_per_stream_is_allocated_up_front_and_within_the_stated_bound() -> None:
    cfg = BufferConfig()
    store = DashboardStore(cfg, max_streams=3)
    store.add_score(score("icu/bed-01", 1.0))
    stream = store._streams["icu/bed-01"]
    parts: list[Any] = [stream.recent, *stream.tiers]
    arrays = [v for part in parts for v in vars(part).values()
              if isinstance(v, np.ndarray) and v.shape and v.shape[0] == part.capacity]
    held = sum(a.nbytes for a in arrays)
    assert held == cfg.bytes_per_stream(7)
    assert 150 * 1024 < held < 200 * 1024  # the ~169 KiB stated in the docstrings
    for i in range(2, 6):
        store.add_score(score(f"icu/bed-{i:02d}", 1.0))
    stats = store.stats()
    assert stats.streams == 3 and stats.refused_streams == 2
    assert stats.memory_bound_bytes == 3 * cfg.bytes_per_stream(7)


def test_alerts_keep_the_latest_lifecycle_event_and_ignore_replays() -> None:
    store = DashboardStore()
    store.add_score(score("s", 1.0))
    assert store.add_alert(alert("s", 100.0, "open", seq=0))
    assert store.add_alert(alert("s", 100.0, "update", seq=1))
    assert store.add_alert(alert("s", 100.0, "close", seq=2))
    assert not store.add_alert(alert("s", 100.0, "update", seq=1))  # replayed after a crash
    assert store.add_alert(alert("s", 100.0, "close", seq=2))  # same event again: idempotent
    (only,) = store.alerts("s")
    assert only.event == "close"
    assert store.stats().stale_alert_events == 1
    assert store.alerts(open_only=True) == []


def test_alert_capacity_evicts_closed_alerts_before_open_ones() -> None:
    store = DashboardStore(max_alerts=10)
    store.add_alert(alert("s", 0.0, "open"))
    for i in range(1, 15):
        store.add_alert(alert("s", float(i), "close"))
    kept = store.alerts()
    assert len(kept) == 10
    assert any(a.onset_ts == 0.0 and a.event == "open" for a in kept)
    assert [a.onset_ts for a in kept][:3] == [14.0, 13.0, 12.0]  # newest onset first


def test_status_is_critical_for_open_critical_alert_or_hard_limit_and_stale_when_quiet() -> None:
    clock = FakeClock()
    store = DashboardStore(clock=clock)
    store.add_score(score("quiet", 1.0))
    store.add_score(score("limit", 1.0, hard="critical"))
    store.add_score(score("alerting", 1.0))
    store.add_score(score("fine", 1.0))
    store.add_alert(alert("alerting", 1.0, severity="warning"))
    clock.now += 60.0
    store.add_score(score("fine", 2.0))
    store.add_score(score("limit", 2.0, hard="critical"))
    store.add_score(score("alerting", 2.0))
    by_id = {s.stream_id: s for s in store.summaries(stale_after_s=30.0)}
    assert by_id["quiet"].status == "stale"
    assert by_id["limit"].status == "critical"
    assert by_id["alerting"].status == "warning" and by_id["alerting"].headline == "SpO2 low"
    assert by_id["fine"].status == "ok"
    ordered = sorted(by_id.values(), key=StreamSummary.sort_key)
    assert [s.stream_id for s in ordered] == ["limit", "alerting", "quiet", "fine"]
    store.add_alert(alert("quiet", 1.0, severity="critical"))
    summary = store.summary("quiet", stale_after_s=30.0)
    assert summary is not None and summary.status == "critical" and summary.stale


def test_health_history_and_dead_letter_counts_are_bounded() -> None:
    store = DashboardStore(max_detectors=2, health_history=3)
    for d in ("d1", "d2", "d3"):
        for i in range(5):
            store.add_health(Health(detector_id=d, ts=float(i) + (10 if d == "d3" else 0),
                                    readings_per_s=100.0, consumer_lag=5, training_loss=0.5,
                                    training_steps=i, dead_letters={}, open_alerts=0, streams=3))
    history = store.health()
    assert len(history) == 2 and "d3" in history
    assert all(len(h) == 3 for h in history.values())
    store.add_health(Health(detector_id="d3", ts=12.5, readings_per_s=1.0, consumer_lag=0,
                            training_loss=None, training_steps=0, dead_letters={},
                            open_alerts=0, streams=0))  # arrives late, from another partition
    assert [h.ts for h in store.health()["d3"]] == [12.5, 13.0, 14.0]
    for reason in ("values.hr: must be a finite number or null", "ts: must be a finite number"):
        store.add_dead_letter(DeadLetter(code="non_finite", reason=reason, field=None, topic="t",
                                         partition=0, offset=1, payload="{}",
                                         payload_encoding="utf-8", payload_size=2,
                                         payload_truncated=False, ts=1.0))
    assert store.dead_letters() == {"non_finite": (2, "ts: must be a finite number")}


def test_concurrent_writer_and_reader_lose_and_repeat_nothing() -> None:
    store = DashboardStore(BufferConfig(recent_points=5000))
    n = 3000
    done = threading.Event()

    def write() -> None:
        for i in range(n):
            store.add_score(score("s", float(i)))
        done.set()

    seen: list[float] = []
    cursor = 0
    writer = threading.Thread(target=write)
    writer.start()
    while not done.is_set() or store.cursor > cursor:
        points, reset = store.points_since("s", cursor)
        if points is None or not len(points):
            continue
        assert not reset
        seen += points.ts.tolist()
        cursor = int(points.seq[-1])
    writer.join()
    assert seen == [float(i) for i in range(n)]


@pytest.mark.parametrize("kwargs", [{"recent_points": 5}, {"tiers": ((60.0, 10), (30.0, 10))},
                                    {"tiers": ((0.5, 10),)}, {"tiers": ((60.0, 0),)},
                                    {"tiers": ((60.0, 10), (90.0, 10))}])
def test_buffer_config_names_the_allowed_range(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"must be (in|a multiple)"):
        BufferConfig(**kwargs)  # type: ignore[arg-type]


def test_store_arguments_name_the_allowed_range() -> None:
    with pytest.raises(ConfigError, match=r"max_streams must be in \[1, 100000\]"):
        DashboardStore(max_streams=0)
    assert math.isclose(DashboardStore().buffers.bytes_per_stream(1), 900 * 37 + 468 * 41)
