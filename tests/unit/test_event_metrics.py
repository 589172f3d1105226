"""Event-level metrics of alerts against labelled episodes: hand-made scenarios."""

from __future__ import annotations

import math

import pytest

from streamwatch.errors import ConfigError
from streamwatch.evaluate.events import AlertSpan, EventConfig, alert_spans, event_metrics
from streamwatch.schema import Alert, Episode, Explanation


def episode(stream: str, kind: str, onset: float, end: float, category: str = "clinical") -> Episode:
    return Episode(episode_id=f"{stream}|{kind}|{onset}", stream_id=stream, kind="icu_vitals",
                   type=kind, category=category, onset_ts=onset, end_ts=end, channels=["hr"])


def alert(alert_id: str, event: str, stream: str, ts: float, onset: float, end: float | None = None,
          severity: str = "warning", peak: float = 5.0) -> Alert:
    return Alert(alert_id=alert_id, event=event, stream_id=stream, kind="icu_vitals", ts=ts,
                 onset_ts=onset, end_ts=end, severity=severity, peak_score=peak,  # type: ignore[arg-type]
                 explanation=Explanation(summary="", channels=[], duration_s=0.0, reasons=["model"]),
                 model_version=1)


def test_lifecycle_events_collapse_to_one_span_per_alert_id() -> None:
    events = [
        alert("a", "open", "s1", 100, 100),
        alert("a", "update", "s1", 150, 100, severity="critical", peak=9.0),
        alert("a", "close", "s1", 300, 100, end=280.0),
        alert("a", "close", "s1", 300, 100, end=280.0),  # replayed duplicate
        alert("b", "open", "s2", 500, 500),  # never closed
    ]
    spans = alert_spans(events, run_end_ts=1000.0)
    assert spans == [AlertSpan("a", "s1", 100.0, 280.0, "critical", 9.0),
                     AlertSpan("b", "s2", 500.0, 1000.0, "warning", 5.0)]


def test_detection_delay_is_first_overlapping_alert_onset_clamped_at_zero() -> None:
    eps = [episode("s1", "desaturation", 1000, 1600), episode("s2", "tachycardia", 1000, 1300)]
    spans = [AlertSpan("late", "s1", 1240, 1500), AlertSpan("later", "s1", 1400, 1450),
             AlertSpan("early", "s2", 900, 1100)]
    m = event_metrics(eps, spans, stream_days=2.0)
    assert (m.episodes, m.detected, m.recall) == (2, 2, 1.0)
    assert m.by_type["desaturation"].delay_median_s == 240.0
    assert m.by_type["tachycardia"].delay_median_s == 0.0
    assert m.delay_median_s == 120.0
    assert m.delay_p90_s == pytest.approx(0.0 + 0.9 * 240.0)


def test_alert_within_grace_after_the_end_detects_and_after_grace_is_false() -> None:
    eps = [episode("s1", "hypotension", 1000, 2000)]
    within = event_metrics(eps, [AlertSpan("a", "s1", 2200, 2300)], stream_days=1.0,
                           config=EventConfig(grace_s=300))
    assert within.recall == 1.0 and within.false_alerts == 0
    after = event_metrics(eps, [AlertSpan("a", "s1", 2400, 2500)], stream_days=1.0,
                          config=EventConfig(grace_s=300))
    assert after.recall == 0.0 and after.false_alerts == 1 and after.precision == 0.0


def test_alert_on_another_stream_does_not_detect() -> None:
    m = event_metrics([episode("s1", "bradycardia", 100, 200)], [AlertSpan("a", "s2", 120, 150)],
                      stream_days=1.0)
    assert (m.detected, m.false_alerts) == (0, 1)


def test_artefact_alerts_are_counted_apart_and_lower_precision() -> None:
    eps = [episode("s1", "desaturation", 1000, 1500),
           episode("s1", "probe_off", 5000, 5100, category="artefact"),
           episode("s2", "spike", 3000, 3001, category="artefact")]
    spans = [AlertSpan("true", "s1", 1100, 1400),
             AlertSpan("probe", "s1", 5010, 5200),
             AlertSpan("spike", "s2", 3000, 3060),
             AlertSpan("noise", "s2", 9000, 9100)]
    m = event_metrics(eps, spans, stream_days=4.0)
    assert (m.episodes, m.alerts, m.true_alerts, m.artefact_alerts, m.false_alerts) == (1, 4, 1, 2, 1)
    assert m.precision == 0.25
    assert m.f1 == pytest.approx(2 * 0.25 * 1.0 / 1.25)
    assert m.false_alerts_per_stream_day == 0.25
    assert m.artefact_alerts_per_stream_day == 0.5


def test_alert_overlapping_a_true_episode_and_an_artefact_is_a_true_alert() -> None:
    eps = [episode("s1", "tachycardia", 1000, 1200),
           episode("s1", "spike", 1100, 1101, category="artefact")]
    m = event_metrics(eps, [AlertSpan("a", "s1", 1090, 1150)], stream_days=1.0)
    assert (m.true_alerts, m.artefact_alerts, m.false_alerts) == (1, 0, 0)


def test_slow_types_are_left_out_of_the_delay_statistics_and_configurable() -> None:
    eps = [episode("s1", "sepsis", 0, 20000), episode("s2", "tachycardia", 0, 600)]
    spans = [AlertSpan("a", "s1", 7200, 9000), AlertSpan("b", "s2", 60, 200)]
    default = event_metrics(eps, spans, stream_days=1.0)
    assert default.acute_detected == 1 and default.delay_median_s == 60.0
    assert default.by_type["sepsis"].delay_median_s == 7200.0
    everything = event_metrics(eps, spans, stream_days=1.0, config=EventConfig(slow_types=frozenset()))
    assert everything.acute_detected == 2 and everything.delay_median_s == pytest.approx(3630.0)


def test_machine_faults_are_true_events() -> None:
    eps = [episode("m1", "level_shift", 100, 900, category="fault")]
    m = event_metrics(eps, [AlertSpan("a", "m1", 130, 300)], stream_days=1.0)
    assert (m.episodes, m.detected) == (1, 1)


def test_no_alerts_gives_zero_recall_and_undefined_precision() -> None:
    m = event_metrics([episode("s1", "desaturation", 0, 100)], [], stream_days=1.0)
    assert m.recall == 0.0 and math.isnan(m.precision) and m.f1 == 0.0
    assert m.to_dict()["by_type"]["desaturation"]["detected"] == 0


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="stream_days"):
        event_metrics([], [], stream_days=0.0)
    with pytest.raises(ConfigError, match="grace_s"):
        EventConfig(grace_s=-1.0)
