"""Alert state machine: debounce, extreme scores, updates, quiet close, cooldown, ids,
replay from a state dict, explanations and the drift rule."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch

from streamwatch.alerts import AlertBook, AlertMachine, Snapshot
from streamwatch.detect.config import AlertConfig, DriftConfig
from streamwatch.schema import Alert, alert_id_for

CHANNELS = ("hr", "spo2", "rr")
THRESHOLD = 10.0


@dataclass
class Obs:
    ts: float
    score: float = 1.0
    hl_level: int = 0
    hl_confirmed: int = 0
    hl_onset: float = math.nan
    extreme: bool = False

    @property
    def anomalous(self) -> bool:
        return self.score > THRESHOLD


def snapshot_of(obs: Obs, hl_channels: list[str] | None = None) -> Snapshot:
    return Snapshot(
        ts=obs.ts,
        score=obs.score,
        observed=[140.0, 97.0, float("nan")],
        mean=[80.0, 97.5, 16.0],
        std=[5.0, 1.0, 2.0],
        channel_scores=[obs.score * 0.8, obs.score * 0.1, float("nan")],
        hard_limit_channels=hl_channels or [],
    )


def make(config: AlertConfig | None = None, drift: DriftConfig | None = None) -> AlertMachine:
    return AlertMachine("icu/bed-1", "icu_vitals", CHANNELS, config or AlertConfig(),
                        drift or DriftConfig(accept_regime=False))  # fmt: skip


def drive(machine: AlertMachine, stream: list[Obs]) -> tuple[list[Alert], list[float]]:
    events, accepted = [], []
    for o in stream:
        if not (o.anomalous or o.hl_level or machine.active):
            continue  # the detector skips normal readings of inactive machines
        out, acc = machine.step(
            o.ts, o.score, THRESHOLD, o.anomalous, o.extreme, o.hl_level, o.hl_confirmed,
            o.hl_onset, lambda o=o: snapshot_of(o, ["hr"] if o.hl_level else None), 3)  # fmt: skip
        events += out
        if acc:
            accepted.append(o.ts)
    return events, accepted


def series(scores: list[float], start: float = 1000.0) -> list[Obs]:
    return [Obs(ts=start + i, score=s) for i, s in enumerate(scores)]


def test_m_of_n_anomalous_readings_open_an_alert_with_the_first_anomaly_as_onset() -> None:
    scores = [1.0] * 5 + [20.0, 1.0, 20.0, 20.0, 1.0, 20.0, 20.0] + [1.0] * 3
    events, _ = drive(make(), series(scores))
    assert [e.event for e in events] == ["open"]
    assert events[0].ts == 1011.0  # the 5th anomalous reading within 10
    assert events[0].onset_ts == 1005.0
    assert events[0].alert_id == alert_id_for("icu/bed-1", 1005.0)
    assert events[0].severity == "warning"


def test_isolated_noisy_points_never_open_an_alert() -> None:
    scores = ([25.0] + [1.0] * 2) * 400  # 1 in 3: never 5 in any 10
    events, _ = drive(make(), series(scores))
    assert events == []


def test_one_extreme_score_opens_at_once_as_critical() -> None:
    stream = [*series([1.0] * 3), Obs(ts=1003.0, score=99.0, extreme=True)]
    events, _ = drive(make(), stream)
    assert [(e.event, e.severity, e.onset_ts) for e in events] == [("open", "critical", 1003.0)]


def test_extreme_confirmation_needs_consecutive_extremes() -> None:
    cfg = AlertConfig(extreme_confirm=2)
    lone = [Obs(ts=1.0, score=99.0, extreme=True), *series([1.0] * 30, start=2.0)]
    assert drive(make(cfg), lone)[0] == []
    pair = [Obs(ts=1.0, score=99.0, extreme=True), Obs(ts=2.0, score=99.0, extreme=True)]
    events, _ = drive(make(cfg), pair)
    assert [(e.event, e.onset_ts) for e in events] == [("open", 1.0)]


def test_escalation_updates_at_once_and_higher_peaks_are_rate_limited() -> None:
    cfg = AlertConfig(update_min_interval_s=60.0)
    stream = series([20.0] * 5)  # open at t=1004, warning, peak 20
    stream += series([40.0] * 10, start=1005.0)  # material peak, too soon for an update
    stream += series([20.0] * 50, start=1015.0)  # t=1064: 60 s since the open: update
    stream += [Obs(ts=1065.0, score=60.0)]  # material again, but only 1 s later
    stream += [Obs(ts=1066.0, score=200.0, extreme=True)]  # escalation: update at once
    events, _ = drive(make(cfg), stream)
    kinds = [(e.event, e.ts, e.severity, e.seq) for e in events]
    assert kinds == [
        ("open", 1004.0, "warning", 0),
        ("update", 1064.0, "warning", 1),
        ("update", 1066.0, "critical", 2),
    ]
    assert events[1].peak_score == 40.0 and events[2].peak_score == 200.0


def test_alert_closes_after_the_quiet_period_with_the_last_anomaly_as_end() -> None:
    stream = series([20.0] * 8) + series([1.0] * 100, start=1008.0)
    events, _ = drive(make(AlertConfig(quiet_s=60.0)), stream)
    assert [e.event for e in events] == ["open", "close"]
    close = events[1]
    assert close.ts == 1067.0 and close.end_ts == 1007.0
    assert close.alert_id == events[0].alert_id and close.seq == 1
    assert close.explanation.summary.startswith("resolved after 7 s")


def test_cooldown_holds_back_a_new_alert_but_not_a_critical_hard_limit() -> None:
    cfg = AlertConfig(quiet_s=10.0, cooldown_s=100.0)
    stream = series([20.0] * 5) + series([1.0] * 10, start=1005.0)  # closes at t=1014
    stream += series([20.0] * 20, start=1020.0)  # within cooldown: held back
    events, _ = drive(make(cfg), list(stream))
    assert [e.event for e in events] == ["open", "close"]
    critical = [Obs(ts=1040.0 + i, hl_level=2, hl_confirmed=2, hl_onset=1040.0)
                for i in range(3)]  # fmt: skip
    events, _ = drive(make(cfg), stream + critical)
    assert [e.event for e in events] == ["open", "close", "open"]
    assert events[2].severity == "critical"
    assert events[2].explanation.reasons == ["model", "hard_limit"]
    after = series([1.0] * 10, start=1020.0) + series([20.0] * 6, start=1120.0)
    events, _ = drive(make(cfg), stream[:15] + after)
    assert [e.event for e in events] == ["open", "close", "open"]  # after the cooldown


def noisy_episodes(seed: int) -> list[Obs]:
    import random

    rng = random.Random(seed)
    out, ts = [], 0.0
    for _ in range(3000):
        ts += rng.choice([0.5, 1.0, 1.0, 2.0])
        burst = int(ts) % 400 < 30
        noise = rng.uniform(11, 13) if rng.random() < 0.01 else rng.uniform(0, 10)
        score = rng.uniform(12, 40) if burst and rng.random() < 0.8 else noise
        out.append(Obs(ts=ts, score=score, extreme=score > 39.5))
    return out


def test_same_data_gives_the_same_events_and_ids_across_runs() -> None:
    a, _ = drive(make(), noisy_episodes(1))
    b, _ = drive(make(), noisy_episodes(1))
    assert len([e for e in a if e.event == "open"]) >= 5
    assert a == b


def test_resuming_from_a_state_dict_mid_stream_gives_the_same_alert_ids() -> None:
    data = noisy_episodes(2)
    whole, _ = drive(make(), data)
    for cut in (211, 407, 1100, 2147, 2800):  # idle, open, open, pending, idle
        first = make()
        head, _ = drive(first, data[:cut])
        buf = io.BytesIO()
        torch.save(first.state_dict(), buf)
        buf.seek(0)
        resumed = make()
        resumed.load_state_dict(torch.load(buf, weights_only=True))
        tail, _ = drive(resumed, data[cut:])
        assert head + tail == whole, cut


def test_explanation_names_channels_with_observed_expected_band_and_direction() -> None:
    events, _ = drive(make(), series([20.0] * 5))
    ex = events[0].explanation
    assert [c.channel for c in ex.channels] == ["hr", "spo2"]  # rr's score is NaN
    hr = ex.channels[0]
    assert (hr.observed, hr.expected, hr.lower, hr.upper) == (140.0, 80.0, 65.0, 95.0)
    assert hr.direction == "high" and hr.score == 16.0
    assert ex.channels[1].direction == "low"
    assert ex.duration_s == 4.0 and ex.reasons == ["model"]
    assert ex.summary == (
        "warning for 4 s: hr high 140 (expected 80, band 65-95); "
        "spo2 low 97 (expected 97.5, band 94.5-100.5)"
    )


def test_hard_limit_alert_explains_the_limit_channels_first() -> None:
    stream = [Obs(ts=float(t), hl_level=1, hl_confirmed=1 if t >= 30 else 0, hl_onset=0.0)
              for t in range(31)]  # fmt: skip
    events, _ = drive(make(), stream)
    assert [(e.event, e.onset_ts, e.severity) for e in events] == [("open", 0.0, "warning")]
    ex = events[0].explanation
    assert ex.reasons == ["hard_limit"] and ex.channels[0].channel == "hr"
    assert "NEWS2 warning limit" in ex.summary and ex.duration_s == 30.0


def test_long_alerts_become_critical() -> None:
    cfg = AlertConfig(critical_after_s=100.0, update_min_interval_s=1e9)
    events, _ = drive(make(cfg), series([20.0] * 120))
    assert [(e.event, e.ts - e.onset_ts, e.severity) for e in events] == [
        ("open", 4.0, "warning"), ("update", 100.0, "critical")]  # fmt: skip


def test_drift_rule_accepts_a_persistent_model_regime_and_reports_it() -> None:
    drift = DriftConfig(accept_regime=True, accept_regime_after_s=300.0)
    events, accepted = drive(make(drift=drift), series([20.0] * 400))
    closes = [e for e in events if e.event == "close"]
    assert accepted == [1300.0] and closes[0].ts == 1300.0 and closes[0].end_ts == 1300.0
    assert closes[0].explanation.summary.startswith("regime change accepted after 5 min")


def test_drift_rule_never_accepts_while_a_hard_limit_holds() -> None:
    drift = DriftConfig(accept_regime=True, accept_regime_after_s=300.0)
    stream = [Obs(ts=1000.0 + i, score=20.0, hl_level=2, hl_confirmed=2 if i > 15 else 0,
                  hl_onset=1000.0) for i in range(600)]  # fmt: skip
    events, accepted = drive(make(drift=drift), stream)
    assert accepted == [] and all(e.event != "close" for e in events)


def test_alert_book_exports_imports_and_forgets_streams() -> None:
    book = AlertBook("icu_vitals", CHANNELS, AlertConfig(), DriftConfig())
    drive(book.machine("a"), series([20.0] * 6))
    drive(book.machine("b"), series([1.0] * 3))
    assert book.open_count() == 1
    other = AlertBook("icu_vitals", CHANNELS, AlertConfig(), DriftConfig())
    other.import_streams(book.export_streams(["a", "zzz"]))
    assert other.open_count() == 1 and set(other.machines) == {"a"}
    book.forget_streams(["a"])
    assert book.open_count() == 0
