"""A hard-limit channel's direction in an alert is the side of the limit it breached, not
observed vs a forecast that has already learned the abnormal level."""

from __future__ import annotations

import math

from streamwatch.alerts import AlertMachine, Snapshot
from streamwatch.commands.detect import build_detector
from streamwatch.config import load_settings
from streamwatch.detect.config import AlertConfig, DriftConfig, HardLimitConfig
from streamwatch.detect.hardlimits import HardLimitBank
from streamwatch.kinds import ICU, get_kind
from streamwatch.schema import Reading

KIND = get_kind(ICU)
CRITICAL = {"hr": 190.0, "spo2": 82.0, "rr": 16.0, "sbp": 120.0, "dbp": 70.0, "map": 87.0,
            "temp": 37.0}  # fmt: skip


def test_hard_limit_channels_take_their_direction_from_the_breached_limit() -> None:
    bank = HardLimitBank(HardLimitConfig(), KIND)
    machine = AlertMachine("icu/bed-1", ICU, KIND.channels, AlertConfig(), DriftConfig(),
                           bank.direction)  # fmt: skip
    observed = [CRITICAL[c] for c in KIND.channels]
    # the forecast has learned the abnormal level: observed == expected, or just above it
    mean = [v - 0.001 for v in observed]
    snap = Snapshot(1015.0, 0.1, observed, mean, [0.01] * len(observed),
                    [0.0] * len(observed), ["spo2", "hr"])  # fmt: skip
    (event,), _ = machine.step(1015.0, 0.1, math.nan, False, False, 2, 2, 1000.0,
                               lambda: snap, 0)  # fmt: skip
    directions = {c.channel: c.direction for c in event.explanation.channels}
    assert directions["spo2"] == "low" and directions["hr"] == "high"
    # set against the normal range, not the forecast that learned the abnormal level
    assert event.explanation.summary.startswith(
        "critical for 15 s: spo2 low 82 (normal 96-100); hr high 190 (normal 51-90)")


def test_a_patient_critical_from_the_first_reading_gets_low_spo2_and_high_hr() -> None:
    settings = load_settings(overrides={"model": {"hidden_size": 8, "window": 8, "burn_in": 2,
                                                  "batch_size": 16, "train_every": 64}})
    detector = build_detector(settings)
    readings = [Reading("icu/bed-9", ICU, 1000.0 + i, dict(CRITICAL)) for i in range(600)]
    alerts = []
    for i in range(0, len(readings), 20):
        alerts += detector.process(readings[i:i + 20])[1]
    assert alerts and alerts[0].event == "open"
    for alert in alerts:
        hard = {c.channel: c for c in alert.explanation.channels}
        assert hard["spo2"].direction == "low", alert.explanation
        assert hard["hr"].direction == "high", alert.explanation
        assert "spo2 low 82" in alert.explanation.summary
