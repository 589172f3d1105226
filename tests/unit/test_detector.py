"""The detection engine: order, waves, warm-up, hard limits, poisoning, drift, missing
channels, timestamps, bad input, state and counters."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamwatch.detect.base import Detector, KindBatch, ScoreBatch, Scorer
from streamwatch.detect.baselines import StreamStats
from streamwatch.detect.config import DetectorConfig
from streamwatch.detect.detector import StreamDetector
from streamwatch.detect.watch import WatchedStreams
from streamwatch.errors import CheckpointError, SchemaError
from streamwatch.kinds import ICU, MACHINE, UNIVARIATE, KindSpec, get_kind
from streamwatch.schema import Alert, Reading, Score

ICU_NORMAL = {"hr": 75.0, "spo2": 97.0, "rr": 15.0, "sbp": 125.0, "dbp": 75.0, "map": 92.0,
              "temp": 36.9}  # fmt: skip
ICU_NOISE = {"hr": 2.0, "spo2": 0.6, "rr": 1.0, "sbp": 4.0, "dbp": 3.0, "map": 3.0,
             "temp": 0.05}  # fmt: skip


class EwmaScorer:
    """A small real scorer for engine tests: per-stream EW mean/std forecast, score = mean
    squared z over the observed channels. Records which (stream, ts) it learned from."""

    name = "ewma"

    def __init__(self, kind: KindSpec, halflife: float = 200.0) -> None:
        self.kind = kind
        self.stats = StreamStats(len(kind.channels), halflife, recent=32)
        self.learned: list[tuple[str, float]] = []
        self.adapted: list[str] = []
        self._rows = 0

    @property
    def version(self) -> int:
        return self._rows // 50

    def score_many(self, batch: KindBatch) -> ScoreBatch:
        mean, std = self.stats.moments(batch.stream_ids)
        with np.errstate(invalid="ignore"):
            z = (batch.values - mean) / std
        seen = ~np.isnan(z)
        sq = np.where(seen, z * z, 0.0).sum(axis=1) / np.maximum(seen.sum(axis=1), 1)
        return ScoreBatch(score=sq, channel_scores=0.5 * z * z, mean=mean, std=std)

    def advance_many(self, batch: KindBatch, observe: np.ndarray) -> None:
        self.stats.record(batch.stream_ids, batch.values)

    def learn_many(self, batch: KindBatch, mask: np.ndarray) -> None:
        rows = np.flatnonzero(mask)
        ids = [batch.stream_ids[i] for i in rows.tolist()]
        self.stats.learn(ids, batch.values[rows])
        self.learned += list(zip(ids, batch.ts[rows].tolist(), strict=True))
        self._rows += len(rows)

    def adapt_streams(self, stream_ids: Sequence[str]) -> None:
        self.adapted += list(stream_ids)
        for sid in stream_ids:
            self.stats.reseed(sid)

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        self.stats.table.forget(stream_ids)

    def export_streams(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        return self.stats.table.export_rows(stream_ids)

    def import_streams(self, state: dict[str, Any]) -> None:
        self.stats.table.import_rows(state)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self._rows, "streams": self.stats.table.export_rows()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rows = int(state["rows"])
        self.stats.table.clear()
        self.stats.table.import_rows(state["streams"])


def small_config(**overrides: Any) -> DetectorConfig:
    base: dict[str, Any] = {"warmup_readings": 20, "thresholds": {"warmup": 150, "risk": 1e-3}}
    return DetectorConfig(**{**base, **overrides})


def detector(config: DetectorConfig | None = None) -> StreamDetector:
    return StreamDetector(lambda kind: EwmaScorer(kind), config or small_config())


def univariate(stream: str, values: Sequence[float | None], start: float = 1_000.0,
               step: float = 1.0) -> list[Reading]:  # fmt: skip
    return [Reading(stream, UNIVARIATE, start + i * step, {"value": v})
            for i, v in enumerate(values)]  # fmt: skip


def icu(
    stream: str, n: int, seed: int, start: float = 1_000.0, **fixed: float | None
) -> list[Reading]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        values: dict[str, float | None] = {
            c: round(ICU_NORMAL[c] + ICU_NOISE[c] * rng.standard_normal(), 2) for c in ICU_NORMAL
        }
        values.update(fixed)
        out.append(Reading(stream, ICU, start + i, values))
    return out


def run(
    det: StreamDetector, readings: list[Reading], batch: int = 100
) -> tuple[list[Score], list[Alert]]:
    scores, alerts = [], []
    for i in range(0, len(readings), batch):
        s, a = det.process(readings[i : i + batch])
        scores += s
        alerts += a
    return scores, alerts


def interleave(*streams: list[Reading]) -> list[Reading]:
    out = []
    for group in zip(*streams, strict=False):
        out.extend(group)
    return out


def test_stream_detector_implements_the_detector_protocol() -> None:
    det = detector()
    assert isinstance(det, Detector)
    assert isinstance(EwmaScorer(get_kind(ICU)), Scorer)


def test_one_score_per_reading_in_input_order_across_kinds_and_waves() -> None:
    rng = np.random.default_rng(0)
    per_stream = {  # two kinds, three streams, several readings per stream in one batch
        "m/1": [Reading("m/1", MACHINE, 10.0 + i, {"temperature": 60 + rng.normal(),
                "vibration": 2.0, "pressure": 5.0, "current": 10.0}) for i in range(40)],
        "u/1": univariate("u/1", list(rng.normal(size=40)), start=10.0),
        "u/2": univariate("u/2", list(5.0 + rng.normal(size=20)), start=10.0, step=2.0),
    }  # fmt: skip
    mixed: list[Reading] = []
    while any(per_stream.values()):  # random interleaving, each stream's order kept
        sid = rng.choice([k for k, v in per_stream.items() if v])
        mixed.append(per_stream[sid].pop(0))
    scores, _ = detector().process(mixed)
    assert [(s.stream_id, s.ts) for s in scores] == [(r.stream_id, r.ts) for r in mixed]
    assert {s.kind for s in scores} == {MACHINE, UNIVARIATE} and scores[0].model == "ewma"
    first = {s.stream_id: s for s in reversed(scores)}
    assert all(s.forecast == {} for s in first.values())  # no forecast before any reading
    assert all(s.threshold is None and s.warming_up for s in scores)
    last_u1 = [s for s in scores if s.stream_id == "u/1"][-1]
    assert set(last_u1.forecast) == {"value"} and last_u1.forecast["value"].std > 0


def test_batch_boundaries_do_not_change_scores_or_alerts() -> None:
    data = interleave(
        univariate("a", list(np.random.default_rng(1).normal(size=600)) + [9.0] * 20 + [0.0] * 80),
        univariate("b", list(np.random.default_rng(2).normal(size=700))),
    )
    results = []
    for batch in (1, 7, 64, len(data)):
        scores, alerts = run(detector(), data, batch)
        results.append(([(s.score, s.threshold, s.anomalous) for s in scores], alerts))
    opened = [a for a in results[0][1] if a.event == "open"]
    assert len(opened) == 1 and opened[0].stream_id == "a"
    assert all(r == results[0] for r in results[1:])


def test_several_readings_of_one_stream_in_a_batch_equal_one_by_one_processing() -> None:
    data = univariate("solo", list(np.random.default_rng(3).normal(size=400)))
    whole, _ = detector().process(data)
    single, _ = run(detector(), data, 1)
    assert [s.score for s in whole] == [s.score for s in single]


def test_warmup_suppresses_model_alerts_but_hard_limits_fire() -> None:
    det = detector()
    readings = icu("icu/bed-1", 60, seed=4, spo2=80.0)  # critical from the first reading
    scores, alerts = det.process(readings)
    assert all(s.warming_up and s.threshold is None and not s.anomalous for s in scores)
    assert all(s.hard_limit == "critical" and s.hard_limit_channels[0] == "spo2" for s in scores)
    assert [(a.event, a.severity, a.onset_ts, a.ts) for a in alerts] == [
        ("open", "critical", 1000.0, 1015.0)]  # fmt: skip
    assert alerts[0].explanation.reasons == ["hard_limit"]
    assert alerts[0].explanation.channels[0].channel == "spo2"


def test_model_alert_after_warmup_on_a_level_shift() -> None:
    det = detector()
    normal = icu("icu/bed-2", 400, seed=5)
    shifted = icu("icu/bed-2", 30, seed=6, start=1400.0)
    shifted = [Reading(r.stream_id, r.kind, r.ts, {**r.values, "hr": 88.0}) for r in shifted]
    scores, alerts = run(det, normal + shifted)
    assert not any(s.anomalous for s in scores[:400]) or sum(s.anomalous for s in scores[:400]) < 3
    opened = [a for a in alerts if a.event == "open"]
    assert len(opened) == 1 and opened[0].onset_ts >= 1400.0
    ex = opened[0].explanation
    assert ex.channels[0].channel == "hr" and ex.channels[0].direction == "high"
    assert ex.reasons == ["model"] and "hr high 88" in ex.summary


def test_long_anomaly_is_not_learned_while_its_alert_is_open() -> None:
    det = StreamDetector({UNIVARIATE: (scorer := EwmaScorer(get_kind(UNIVARIATE)))},
                         small_config(drift={"accept_regime": False}))  # fmt: skip
    rng = np.random.default_rng(7)
    values = list(rng.normal(size=500)) + list(6.0 + rng.normal(size=400)) + list(
        rng.normal(size=300))  # fmt: skip
    scores, alerts = run(det, univariate("p", values))
    opened = [a for a in alerts if a.event == "open"]
    closed = [a for a in alerts if a.event == "close"]
    assert len(opened) == 1 and len(closed) == 1
    start, end = opened[0].ts, closed[0].end_ts
    assert end is not None and end >= 1000.0 + 899
    learned = [ts for _, ts in scorer.learned]
    assert not [ts for ts in learned if start <= ts <= end]
    inside = [s for s in scores if start <= s.ts <= end]
    assert sum(s.anomalous for s in inside) > 0.95 * len(inside)  # the model still sees it
    assert not any(s.anomalous for s in scores if s.ts > end + 60)  # and is not poisoned


class ObservingScorer(EwmaScorer):
    """EwmaScorer that records, per reading, whether it was fed to the state as observed."""

    def __init__(self, kind: KindSpec) -> None:
        super().__init__(kind)
        self.observed: dict[float, bool] = {}

    def advance_many(self, batch: KindBatch, observe: np.ndarray) -> None:
        self.observed.update(zip(batch.ts.tolist(), observe.tolist(), strict=True))
        super().advance_many(batch, observe)


@pytest.mark.parametrize("observe_during_alert", [False, True])
def test_observe_during_alert_feeds_the_state_but_never_training(
    observe_during_alert: bool,
) -> None:
    scorer = ObservingScorer(get_kind(UNIVARIATE))
    config = small_config(drift={"accept_regime": False}, alert_overrides={
        UNIVARIATE: {"observe_during_alert": observe_during_alert}})
    det = StreamDetector({UNIVARIATE: scorer}, config)
    rng = np.random.default_rng(7)
    values = list(rng.normal(size=500)) + list(6.0 + rng.normal(size=100)) + list(
        rng.normal(size=100))  # fmt: skip
    _, alerts = run(det, univariate("p", values))
    opened = [a for a in alerts if a.event == "open"]
    assert opened
    start = opened[0].ts
    end = next(a.end_ts for a in alerts if a.event == "close")
    assert end is not None
    inside = [ts for ts in scorer.observed if start <= ts <= end]
    assert {scorer.observed[ts] for ts in inside} == {observe_during_alert}
    assert not [ts for _, ts in scorer.learned if start <= ts <= end]  # never taught


def test_an_anomaly_hovering_under_the_bar_is_neither_learned_nor_lost() -> None:
    """A +2.6 sigma shift scores around the bar: without the burst guard the model learns
    it and the bar climbs (never an alert); with it the alert opens."""
    results = {}
    for limit in (6, 64):  # 64 > burst_window: guard off
        thresholds = {"warmup": 150, "risk": 1e-3, "burst_peaks": limit,
                      "burst_pause_scorer": max(limit, 18)}  # fmt: skip
        det = StreamDetector({UNIVARIATE: (scorer := EwmaScorer(get_kind(UNIVARIATE)))},
                             small_config(thresholds=thresholds))  # fmt: skip
        rng = np.random.default_rng(21)
        values = list(rng.normal(size=1500)) + list(2.6 + rng.normal(size=600))
        _, alerts = run(det, univariate("h", values))
        shifted_learned = sum(1 for _, ts in scorer.learned if ts >= 2500.0)
        results[limit] = ([a.event for a in alerts if a.ts >= 2500.0], shifted_learned)
    assert results[6][0][0] == "open" and results[6][1] < 20
    assert results[64][0] == [] and results[64][1] > 550


def test_lasting_level_shift_stops_alerting_within_accept_regime_after_s() -> None:
    bound = 120.0
    det = StreamDetector({UNIVARIATE: (scorer := EwmaScorer(get_kind(UNIVARIATE)))},
                         small_config(drift={"accept_regime_after_s": bound}))  # fmt: skip
    rng = np.random.default_rng(8)
    values = list(rng.normal(size=500)) + list(5.0 + rng.normal(size=1000))
    scores, alerts = run(det, univariate("d", values))
    assert [a.event for a in alerts] == ["open", "close"]
    opened, closed = alerts
    assert closed.ts - opened.onset_ts <= bound + 1.0
    assert closed.explanation.summary.startswith("regime change accepted")
    assert scorer.adapted == ["d"] and det.counters["regimes_accepted"] == 1
    assert sum(s.anomalous for s in scores if s.ts > closed.ts) < 5
    assert not det.in_alert("d")


def test_hard_limit_alert_is_never_accepted_as_a_new_regime() -> None:
    det = detector(small_config(drift={"accept_regime_after_s": 60.0}))
    normal = icu("icu/bed-3", 400, seed=9)
    crisis = icu("icu/bed-3", 600, seed=10, start=1400.0, spo2=82.0)
    _, alerts = run(det, normal + crisis)
    assert [a.event for a in alerts if a.event != "update"] == ["open"]
    assert det.in_alert("icu/bed-3")


def test_missing_channels_are_scored_from_the_present_ones() -> None:
    det = detector()
    readings = icu("icu/bed-4", 300, seed=11)
    gappy = [Reading(r.stream_id, r.kind, r.ts, {**r.values, "temp": None, "dbp": None}
                     if i % 3 == 0 else {k: v for k, v in r.values.items() if k != "rr"})
             for i, r in enumerate(readings)]  # fmt: skip
    scores, alerts = det.process(gappy)
    last = scores[-3]
    assert last.values["temp"] is None and last.channel_scores["temp"] is None
    assert last.channel_scores["hr"] is not None and "temp" in last.forecast
    assert np.isfinite([s.score for s in scores]).all() and alerts == []


def test_irregular_timestamps_are_processed_and_late_or_duplicate_ones_change_nothing() -> None:
    rng = np.random.default_rng(12)
    ts = np.cumsum(rng.choice([0.5, 1.0, 3.0, 30.0], size=300)) + 1000.0
    clean = [Reading("irr", UNIVARIATE, float(t), {"value": float(v)})
             for t, v in zip(ts, rng.normal(size=300), strict=True)]  # fmt: skip
    dirty = list(clean)
    dirty.insert(200, Reading("irr", UNIVARIATE, clean[199].ts, {"value": 50.0}))  # duplicate
    dirty.insert(100, Reading("irr", UNIVARIATE, clean[50].ts, {"value": -40.0}))  # late
    a_scores, a_alerts = run(detector(), clean, 37)
    det = detector()
    b_scores, b_alerts = run(det, dirty, 37)
    assert len(b_scores) == len(dirty)
    kept = [s for s in b_scores if (s.ts, s.values["value"]) not in
            {(clean[199].ts, 50.0), (clean[50].ts, -40.0)}]  # fmt: skip
    assert [s.score for s in kept] == [s.score for s in a_scores]
    assert b_alerts == a_alerts
    assert det.counters["late_readings"] == 1 and det.counters["duplicate_readings"] == 1
    assert not any(s.anomalous for s in b_scores if s.values["value"] in (50.0, -40.0))


def test_unknown_kind_and_implausible_values_are_schema_errors_that_change_nothing() -> None:
    det = detector()
    good = icu("icu/bed-5", 3, seed=13)
    with pytest.raises(SchemaError) as err:
        det.validate(Reading("x", "fridge", 1.0, {"t": 1.0}))
    assert err.value.field == "kind" and err.value.code == "unknown_kind"
    bad = Reading("icu/bed-6", ICU, 5.0, {**ICU_NORMAL, "hr": 400.0})
    with pytest.raises(SchemaError) as err:
        det.validate(bad)
    assert (err.value.field, err.value.code) == ("values.hr", "out_of_range")
    with pytest.raises(SchemaError) as err:
        det.process([*good, bad])
    assert err.value.field == "values.hr" and "icu/bed-6" in err.value.problem
    assert det.counters["readings"] == 0 and det.counters["streams"] == 0
    with pytest.raises(SchemaError) as err:
        det.validate(Reading("icu/bed-7", ICU, 5.0, {**ICU_NORMAL, "etco2": 35.0}))
    assert err.value.field == "values.etco2"
    lenient = detector(small_config(unknown_channels="ignore"))
    scores, _ = lenient.process([Reading("icu/bed-7", ICU, 5.0, {**ICU_NORMAL, "etco2": 35.0})])
    assert len(scores) == 1 and lenient.counters["ignored_channels"] == 1
    det.process(good)
    with pytest.raises(SchemaError, match="keeps its kind"):
        det.process([Reading("icu/bed-5", UNIVARIATE, 9.0, {"value": 1.0})])
    strict = StreamDetector({UNIVARIATE: EwmaScorer(get_kind(UNIVARIATE))}, small_config())
    with pytest.raises(SchemaError, match="no scorer configured"):
        strict.validate(good[0])


_ODD_VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([75.0, 97.0, -1.0, 400.0, 0.0]))


@st.composite
def _odd_readings(draw: st.DrawFn) -> list[Reading]:
    out = []
    for i in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from([ICU, ICU, ICU, UNIVARIATE, "fridge"]))
        names = ["value", "x"] if kind == UNIVARIATE else [*ICU_NORMAL, "etco2"]
        values = {c: draw(_ODD_VALUES) for c in draw(st.lists(st.sampled_from(names), unique=True))}
        ts = draw(st.sampled_from([1_000.0 + i, -1.0, float("nan"), float("inf")]))
        out.append(Reading(draw(st.sampled_from(["icu/bed-1", "icu/bed-2", "u/1"])), kind, ts, values))
    return out


@settings(max_examples=150, deadline=None)
@given(batch=_odd_readings(), unknown=st.sampled_from(["reject", "ignore"]))
def test_validate_many_gives_each_reading_the_error_validate_raises(
    batch: list[Reading], unknown: str
) -> None:
    det, one_by_one = (detector(small_config(unknown_channels=unknown)) for _ in range(2))
    for d in (det, one_by_one):
        d.process(icu("icu/bed-1", 3, seed=1))  # a known stream: a kind change is an error

    def one(r: Reading) -> tuple[str, str | None, str | None] | None:
        """``validate``, then ``process`` what it accepts: the readings one at a time (a
        new stream met with two kinds keeps the first one accepted)."""
        try:
            one_by_one.validate(r)
        except SchemaError as exc:
            return str(exc), exc.field, exc.code
        one_by_one.process([r])
        return None

    got = [None if e is None else (str(e), e.field, e.code) for e in det.validate_many(batch)]
    assert got == [one(r) for r in batch]


def test_a_new_stream_with_two_kinds_in_one_batch_keeps_its_first() -> None:
    det = detector()
    batch = [Reading("icu/bed-10", ICU, 5.0, {**ICU_NORMAL, "hr": 400.0}),  # refused
             Reading("icu/bed-10", UNIVARIATE, 6.0, {"value": 1.0}),  # the first accepted
             Reading("icu/bed-10", ICU, 7.0, dict(ICU_NORMAL)),
             Reading("icu/bed-11", ICU, 7.0, dict(ICU_NORMAL))]
    errors = det.validate_many(batch)
    assert errors[0] is not None and errors[0].code == "out_of_range"
    assert errors[1] is None and errors[3] is None
    assert errors[2] is not None and (errors[2].field, errors[2].code) == ("kind", "schema")
    assert "is of kind 'univariate', not 'icu_vitals'; a stream keeps its kind" in str(errors[2])
    # process() refuses the whole batch, as for any bad reading in it
    with pytest.raises(SchemaError, match="keeps its kind") as err:
        det.process(batch[1:])
    assert "icu/bed-10" in err.value.problem and det.counters["readings"] == 0
    det.process([batch[1], batch[3]])
    assert det.validate_many([batch[2]])[0] is not None  # and later batches too


def test_probe_off_spo2_is_not_a_desaturation() -> None:
    det = detector()
    readings = icu("icu/bed-8", 200, seed=14)
    readings += icu("icu/bed-8", 120, seed=15, start=1200.0, spo2=0.0)
    scores, alerts = run(det, readings)
    assert alerts == [] and all(s.hard_limit is None for s in scores)
    assert scores[-1].values["spo2"] == 0.0 and scores[-1].channel_scores["spo2"] is None


def test_state_round_trip_and_stream_handover_continue_identically() -> None:
    data = interleave(univariate("s1", list(np.random.default_rng(16).normal(size=800))),
                      univariate("s2", [0.0] * 10 + list(np.random.default_rng(17).normal(size=790))))  # fmt: skip
    data[1300:1320] = [Reading(r.stream_id, r.kind, r.ts, {"value": 9.0}) for r in data[1300:1320]]
    reference, ref_alerts = run(detector(), data)
    first = detector()
    head, head_alerts = run(first, data[:1310])  # mid-episode: machines pending/open
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    restored = detector()
    restored.load_state_dict(torch.load(buf, weights_only=True))
    tail, tail_alerts = run(restored, data[1310:])
    assert [s.score for s in head + tail] == [s.score for s in reference]
    assert head_alerts + tail_alerts == ref_alerts
    moved = detector()
    moved.load_global_state(first.global_state_dict())
    moved.import_streams(first.export_streams(["s1", "s2", "unknown"]))
    tail2, tail_alerts2 = run(moved, data[1310:])
    assert tail2 == tail and tail_alerts2 == tail_alerts
    first.forget_streams(["s1"])
    assert first.counters["streams"] == 1
    with pytest.raises(CheckpointError):
        detector().load_state_dict({"format": "something else"})


def test_counters_report_what_the_detector_did() -> None:
    det = StreamDetector({UNIVARIATE: EwmaScorer(get_kind(UNIVARIATE))},
                         small_config(drift={"accept_regime": False},
                                      alerts={"quiet_s": 10.0}))  # fmt: skip
    rng = np.random.default_rng(18)
    values = list(rng.normal(size=400)) + [8.0] * 20 + list(rng.normal(size=100))
    _, alerts = run(det, univariate("c", values))
    c = det.health()
    assert c["readings"] == 520 and c["alerts_opened"] == 1 and c["alerts_closed"] == 1
    assert c["anomalous"] >= 20 and c["warming_up"] == 20 + 150
    assert c["training_steps"] == det._kinds[UNIVARIATE].scorer.version > 0
    assert c["open_alerts"] == 0 and c["streams"] == 1 and c["training_loss"] is None
    assert [a.event for a in alerts] == ["open", "close"]


def roundtrip(state: dict[str, Any]) -> Any:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def forecast_detector(seed: int = 0) -> StreamDetector:
    from streamwatch.detect.forecast_scorer import ForecastScorer
    from streamwatch.model.config import ModelConfig

    model = ModelConfig(hidden_size=8, window=8, burn_in=2, batch_size=16, train_every=64,
                        seed=seed)  # fmt: skip
    return StreamDetector(lambda kind: ForecastScorer(kind, model), small_config())


def ward(beds: int, seconds: int, shift_bed: int, shift_at: int) -> list[Reading]:
    streams = []
    for b in range(beds):
        rs = icu(f"icu/bed-{b}", seconds, seed=100 + b)
        if b == shift_bed:
            rs = [Reading(r.stream_id, r.kind, r.ts, {**r.values, "hr": 100.0})
                  if r.ts >= 1000.0 + shift_at else r for r in rs]  # fmt: skip
        streams.append(rs)
    return interleave(*streams)


def test_engine_runs_the_gru_forecast_scorer_end_to_end() -> None:
    det = forecast_detector()
    data = ward(beds=4, seconds=700, shift_bed=2, shift_at=600)
    scores, alerts = run(det, data, batch=40)
    assert [(s.stream_id, s.ts) for s in scores] == [(r.stream_id, r.ts) for r in data]
    assert all(s.model == "gru" for s in scores)
    assert scores[0].warming_up and scores[0].threshold is None
    late = [s for s in scores if s.ts >= 1500.0]
    assert all(not s.warming_up and s.threshold is not None for s in late)
    assert set(late[-1].forecast) == set(ICU_NORMAL) and late[-1].model_version > 0
    opened = [a for a in alerts if a.event == "open"]
    assert [a.stream_id for a in opened if a.onset_ts >= 1600.0] == ["icu/bed-2"]
    assert opened[-1].explanation.channels[0].channel == "hr"
    assert det.counters["training_steps"] == late[-1].model_version


def test_forecast_scorer_state_restores_identically_through_both_checkpoint_paths() -> None:
    data = ward(beds=3, seconds=500, shift_bed=1, shift_at=450)
    cut = 3 * 430
    reference, ref_alerts = run(forecast_detector(), data, batch=30)
    first = forecast_detector()
    head, head_alerts = run(first, data[:cut], batch=30)
    ids = [f"icu/bed-{b}" for b in range(3)]
    # Separate files, as in production: a state dict shares tensors with the live
    # optimiser (torch semantics), so it must be serialised before it is loaded twice.
    full = roundtrip(first.state_dict())
    handover = roundtrip(
        {"global": first.global_state_dict(), "streams": first.export_streams(ids)}
    )
    restored = forecast_detector()
    restored.load_state_dict(full)
    tail, tail_alerts = run(restored, data[cut:], batch=30)
    assert [s.score for s in head + tail] == [s.score for s in reference]
    assert head_alerts + tail_alerts == ref_alerts
    handed = forecast_detector()
    handed.load_global_state(handover["global"])
    handed.import_streams(handover["streams"])
    tail2, tail_alerts2 = run(handed, data[cut:], batch=30)
    assert tail2 == tail and tail_alerts2 == tail_alerts


def test_training_falls_at_the_same_readings_however_the_stream_is_batched() -> None:
    """Event-time ticks: the model's parameters change at the same points of the stream
    (each Score's ``model_version``) whether a batch holds one reading or many ticks, and
    whether the batch is cut at every tick or only where training may be owed (which
    takes fewer parts)."""
    data = ward(beds=6, seconds=420, shift_bed=3, shift_at=360)
    runs = {}
    for batch, every_tick in [(1, False), (7, False), (7, True), (40, False), (40, True),
                              (130, False), (130, True)]:  # fmt: skip
        det = forecast_detector()
        parts = 0
        prepare = det._prepare

        def counting(*args: Any, _prepare: Any = prepare) -> Any:
            nonlocal parts
            parts += 1
            return _prepare(*args)

        det._prepare = counting  # type: ignore[method-assign]
        if every_tick:
            det._training_room = lambda *_: 0  # type: ignore[method-assign]
        scores, alerts = run(det, data, batch)
        events = [(a.alert_id, a.event, a.ts) for a in alerts]
        runs[batch, every_tick] = ([s.model_version for s in scores],
                                   [s.score for s in scores], events, parts)  # fmt: skip
    versions, scores, events, _parts = runs[1, False]
    assert versions[-1] >= 20 and any(event == "open" for _id, event, _ts in events)
    for (batch, every_tick), (v, sc, ev, parts) in runs.items():
        assert v == versions, f"batches of {batch}: training moved"
        assert ev == events, f"batches of {batch}: other alerts"
        # equal up to float rounding (a wave of other rows takes other BLAS paths)
        np.testing.assert_allclose(sc, scores, rtol=1e-6, atol=1e-9)
        if every_tick and batch > 1:
            assert runs[batch, False][3] < parts, f"batches of {batch}: cut at every tick"


@pytest.mark.parametrize("make", [detector, forecast_detector], ids=["ewma", "gru"])
def test_process_encoded_gives_the_bytes_of_every_score_process_gives(make: Any) -> None:
    """Twin detectors, same input: ``process_encoded``'s records are ``schema.encode`` of
    ``process``'s Scores, byte for byte, through warm-up (forecasts without some channels),
    dropouts (None and absent channels), ignored extra channels, hard limits, alerts and
    several readings of one stream per batch."""
    from streamwatch import schema

    data = ward(beds=3, seconds=420, shift_bed=1, shift_at=330)
    rng = np.random.default_rng(5)
    odd = []
    for r in data:
        values: dict[str, float | None] = dict(r.values)
        u = rng.random()
        if u < 0.05:
            values["spo2"] = None
        elif u < 0.08:
            del values["rr"]
        elif u < 0.09:
            values["etco2"] = 35.0  # not a channel of the kind: ignored, but echoed
        if r.stream_id == "icu/bed-0" and 1200.0 <= r.ts < 1260.0:
            values["hr"] = 175.0  # beyond the hard limit: critical, with its channels
        odd.append(Reading(r.stream_id, r.kind, r.ts, values))
    config = small_config(unknown_channels="ignore")
    plain, fast = make(), make()
    plain.config = fast.config = config
    seen: dict[str, int] = {"hard": 0, "anomalous": 0, "no_forecast": 0}
    for i in range(0, len(odd), 45):
        batch = odd[i : i + 45] + odd[i : i + 2]  # late duplicates: scored, never learned
        scores, alerts = plain.process(batch)
        encoded, fast_alerts = fast.process_encoded(batch)
        assert encoded.records == [schema.encode(s) for s in scores]
        assert encoded.stream_ids == [s.stream_id for s in scores]
        assert encoded.flagged == [s.anomalous or s.hard_limit is not None for s in scores]
        assert fast_alerts == alerts
        seen["hard"] += sum(s.hard_limit is not None for s in scores)
        seen["anomalous"] += sum(s.anomalous for s in scores)
        seen["no_forecast"] += sum(len(s.forecast) < len(ICU_NORMAL) for s in scores)
    assert seen["hard"] > 0 and seen["anomalous"] > 0  # the test covered what it claims
    if make is detector:
        assert seen["no_forecast"] > 0


def test_emit_alerts_builds_the_scores_inside_an_open_alert_and_of_flagged_readings_only() -> None:
    """``process_encoded(emit="alerts")``: records (byte for byte those of ``emit="all"``)
    for readings beyond a hard limit or inside an open alert, a late one included; None
    for the others."""
    normal = icu("icu/bed-5", 30, seed=21)
    crisis = icu("icu/bed-5", 40, seed=22, start=1030.0, spo2=80.0)
    late_calm = icu("icu/bed-5", 1, seed=23, start=1040.5)  # late, normal values, alert open
    other = icu("icu/bed-6", 71, seed=24)
    batches = [normal + other[:30], crisis + other[30:70], late_calm + other[70:]]
    full, selected, watching = detector(), detector(), detector()
    watch = WatchedStreams(["icu/bed-6"])
    for batch in batches:
        every, _ = full.process_encoded(batch)
        around, _ = selected.process_encoded(batch, emit="alerts")
        # a watched stream keeps every Score; the others only those around alerts
        seen, _ = watching.process_encoded(batch, emit="alerts", watched=watch)
        assert seen.records == [e if r.stream_id == "icu/bed-6" else a for r, e, a in zip(
            batch, every.records, around.records, strict=True)]
        assert [r for r in around.records if r is not None] == \
            [e for e, a in zip(every.records, around.records, strict=True) if a is not None]
        kept = {(r.stream_id, r.ts) for r, rec in zip(batch, around.records, strict=True)
                if rec is not None}
        if batch is batches[0]:
            assert kept == set()
        elif batch is batches[1]:
            assert kept == {("icu/bed-5", r.ts) for r in crisis}  # beyond a limit, all of it
        else:
            assert kept == {("icu/bed-5", 1040.5)}  # late, not flagged: inside the alert
    assert selected.in_alert("icu/bed-5") and not selected.in_alert("icu/bed-6")


def test_a_value_too_large_for_the_model_is_refused_on_a_kind_with_no_range() -> None:
    """``univariate`` declares no plausible range; a value past +-1e15 (here 1e308, which
    overflowed the float32 state and left the stream without a forecast for good) is
    refused as out of range, names its channel, and changes nothing; the stream then
    scores on with a forecast."""
    det = detector()
    calm = [Reading("u/1", UNIVARIATE, float(t), {"value": 10.0 + (t % 3) * 0.1})
            for t in range(80)]
    det.process(calm)
    for value in (1e308, -2e15):
        with pytest.raises(SchemaError) as err:
            det.validate(Reading("u/1", UNIVARIATE, 80.0, {"value": value}))
        assert (err.value.field, err.value.code) == ("values.value", "out_of_range")
        assert "[-1e+15, 1e+15]" in err.value.problem
    assert det.validate_many([Reading("u/1", UNIVARIATE, 80.0, {"value": 1e308}),
                              Reading("u/1", UNIVARIATE, 80.0, {"value": 1e14})])[1] is None
    scores, _ = det.process([Reading("u/1", UNIVARIATE, 80.0, {"value": 10.1})])
    assert scores[0].forecast and np.isfinite(scores[0].score)
