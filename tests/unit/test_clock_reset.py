"""A stream whose clock steps back (a device reset, a replaced monitor) starts afresh,
so its critical readings alert at once instead of being ignored as late for as long as
the clock is behind."""

from __future__ import annotations

import pytest

from streamwatch.commands.detect import build_detector
from streamwatch.config import load_settings
from streamwatch.kinds import ICU
from streamwatch.schema import Alert, Reading

NORMAL = {"hr": 72.0, "spo2": 97.0, "rr": 15.0, "sbp": 120.0, "dbp": 70.0, "map": 87.0,
          "temp": 36.8}  # fmt: skip
CRITICAL = {**NORMAL, "hr": 190.0, "spo2": 82.0}
SID = "icu/bed-3"


def _detector() -> object:
    return build_detector(load_settings(overrides={"model": {
        "hidden_size": 8, "window": 8, "burn_in": 2, "batch_size": 16, "train_every": 64}}))


def _run(detector: object, readings: list[Reading]) -> list[Alert]:
    alerts: list[Alert] = []
    for i in range(0, len(readings), 20):
        alerts += detector.process(readings[i:i + 20])[1]  # type: ignore[attr-defined]
    return alerts


def _readings(start: float, n: int, values: dict[str, float]) -> list[Reading]:
    return [Reading(SID, ICU, start + i, dict(values)) for i in range(n)]


@pytest.mark.parametrize("back_s", [3600.0, 600.0])
def test_critical_readings_after_the_clock_steps_back_open_an_alert(back_s: float) -> None:
    detector = _detector()
    t0 = 1_767_225_600.0
    assert not _run(detector, _readings(t0, 400, NORMAL))
    # the monitor's clock now says back_s earlier; the patient is critical for 2 minutes
    alerts = _run(detector, _readings(t0 + 400 - back_s, 120, CRITICAL))
    opened = [a for a in alerts if a.event == "open"]
    assert len(opened) == 1 and opened[0].severity == "critical", alerts
    assert opened[0].onset_ts >= t0 + 400 - back_s
    counters = detector.counters  # type: ignore[attr-defined]
    # the first two readings behind are late; the third in a row confirms the step
    assert counters["clock_resets"] == 1 and counters["late_readings"] == 2


@pytest.mark.parametrize("late_s", [60.0, 3600.0])
def test_one_stale_reading_is_a_late_reading_not_a_clock_step(late_s: float) -> None:
    detector = _detector()
    t0 = 1_767_225_600.0
    _run(detector, _readings(t0, 400, NORMAL))
    _run(detector, [Reading(SID, ICU, t0 + 399 - late_s, dict(CRITICAL))])
    _run(detector, _readings(t0 + 400, 5, NORMAL))  # the clock goes on as before
    counters = detector.counters  # type: ignore[attr-defined]
    assert counters["late_readings"] == 1 and counters["clock_resets"] == 0


def test_an_open_alert_is_closed_saying_why_when_the_clock_steps_back() -> None:
    detector = _detector()
    t0 = 1_767_225_600.0
    _run(detector, _readings(t0, 300, NORMAL))
    first = _run(detector, _readings(t0 + 300, 60, CRITICAL))
    assert [a.event for a in first] == ["open"]
    after = _run(detector, _readings(t0 + 360 - 7200, 60, CRITICAL))
    closed = [a for a in after if a.alert_id == first[0].alert_id]
    assert [a.event for a in closed] == ["close"]
    assert "clock stepped back 120 min" in closed[0].explanation.summary
    assert closed[0].end_ts is not None and closed[0].end_ts >= first[0].onset_ts
    reopened = [a for a in after if a.event == "open"]
    assert len(reopened) == 1 and reopened[0].alert_id != first[0].alert_id
