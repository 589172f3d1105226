"""NEWS2 hard limits: bands, levels, probe-off artefacts, persistence, state."""

from __future__ import annotations

import numpy as np
import pytest

from streamwatch.detect.config import HardLimitConfig
from streamwatch.detect.hardlimits import CRITICAL, NONE, WARNING, HardLimitBank
from streamwatch.kinds import ICU, get_kind, news2_channel_score

NORMAL = {
    "hr": 72.0,
    "spo2": 97.0,
    "rr": 16.0,
    "sbp": 120.0,
    "dbp": 70.0,
    "map": 87.0,
    "temp": 37.0,
}
CHANNELS = get_kind(ICU).channels


def row(**overrides: float) -> list[float]:
    values = {**NORMAL, **overrides}
    return [values[c] for c in CHANNELS]


def bank(**cfg: object) -> HardLimitBank:
    return HardLimitBank(HardLimitConfig(**cfg), get_kind(ICU))  # type: ignore[arg-type]


def test_vectorised_points_match_the_news2_reference_table() -> None:
    grid = {
        "hr": np.arange(20, 200, 0.5),
        "spo2": np.arange(70, 100.5, 0.5),
        "rr": np.arange(0, 50, 0.5),
        "sbp": np.arange(50, 260, 0.5),
        "temp": np.arange(33, 42, 0.05),
    }
    hl = bank()
    for channel, values in grid.items():
        matrix = np.array([row(**{channel: float(v)}) for v in values])
        points = hl.evaluate(matrix).points[:, CHANNELS.index(channel)]
        expected = [news2_channel_score(channel, float(v)) for v in values]
        assert points.tolist() == expected, channel


@pytest.mark.parametrize(
    ("overrides", "level"),
    [
        ({}, NONE),
        ({"hr": 135.0}, WARNING),  # a single red parameter
        ({"hr": 45.0}, NONE),  # 1 NEWS2 point only (no warning limits by default)
        ({"hr": 115.0, "rr": 22.0, "temp": 38.5}, WARNING),  # aggregate 2 + 2 + 1 = 5
        ({"hr": 135.0, "rr": 26.0, "sbp": 105.0}, CRITICAL),  # aggregate 3 + 3 + 1 = 7
        ({"spo2": 83.0}, CRITICAL),  # beyond the life-threatening limit on its own
        ({"hr": 155.0}, CRITICAL),
        ({"sbp": 75.0}, CRITICAL),
        ({"spo2": 0.0}, NONE),  # probe off: an artefact, not a desaturation
        ({"spo2": float("nan")}, NONE),
    ],
)
def test_levels_follow_the_documented_clinical_mapping(overrides: dict, level: int) -> None:
    assert bank().evaluate(np.array([row(**overrides)])).level.tolist() == [level]


def test_optional_warning_limits_flag_values_news2_scores_low() -> None:
    hl = bank(warning_limits={"hr": (50.0, 120.0)})
    ev = hl.evaluate(np.array([row(hr=45.0), row(hr=125.0), row(hr=60.0)]))
    assert ev.level.tolist() == [WARNING, WARNING, NONE]
    assert hl.channels(ev.points[0], ev.beyond[0]) == ["hr"]


def test_channels_are_named_most_severe_first() -> None:
    hl = bank()
    ev = hl.evaluate(np.array([row(hr=115.0, spo2=83.0, rr=22.0)]))
    assert hl.channels(ev.points[0], ev.beyond[0]) == ["spo2", "hr", "rr"]


def run(hl: HardLimitBank, rows: list[list[float]], ts: list[float]) -> list[tuple[int, float]]:
    out = []
    slots = hl.slots(["bed-1"])
    for t, values in zip(ts, rows, strict=True):
        step = hl.step_at(slots, np.array([t]), np.array([values]), np.array([True]))
        out.append((int(step.confirmed[0]), float(step.onset[0])))
    return out


def test_warning_alerts_only_after_the_condition_held_30_seconds() -> None:
    hl = bank()
    result = run(hl, [row(hr=135.0)] * 40, [100.0 + i for i in range(40)])
    levels = [lvl for lvl, _ in result]
    assert levels[:30] == [NONE] * 30 and levels[30:] == [WARNING] * 10
    assert result[30][1] == 100.0  # onset = first reading of the run


def test_critical_alerts_after_15_seconds_with_the_warning_onset() -> None:
    hl = bank()
    rows = [row(hr=135.0)] * 10 + [row(spo2=80.0)] * 20
    result = run(hl, rows, [float(i) for i in range(30)])
    first_critical = next(i for i, (lvl, _) in enumerate(result) if lvl == CRITICAL)
    assert first_critical == 25  # critical run starts at t=10, held 15 s at t=25
    assert result[first_critical][1] == 0.0


def test_one_normal_reading_resets_the_run_but_a_reading_without_vitals_does_not() -> None:
    hl = bank()
    empty = [float("nan")] * len(CHANNELS)
    rows = [row(hr=135.0)] * 20 + [row()] + [row(hr=135.0)] * 20
    assert max(lvl for lvl, _ in run(hl, rows, [float(i) for i in range(41)])) == NONE
    hl2 = bank()
    rows = [row(hr=135.0)] * 20 + [empty] + [row(hr=135.0)] * 20
    result = run(hl2, rows, [float(i) for i in range(41)])
    assert result[30] == (WARNING, 0.0)


def test_a_single_reading_never_alerts_even_without_a_time_requirement() -> None:
    hl = bank(persist_s=0.0, critical_persist_s=0.0)
    assert run(hl, [row(spo2=70.0)], [0.0]) == [(NONE, pytest.approx(np.nan, nan_ok=True))]
    assert run(hl, [row(spo2=70.0)], [1.0])[0][0] == CRITICAL


def test_sparse_readings_alert_on_the_second_reading_after_the_persistence_time() -> None:
    hl = bank()
    result = run(hl, [row(hr=135.0)] * 2, [0.0, 300.0])
    assert [lvl for lvl, _ in result] == [NONE, WARNING]


def test_rows_not_marked_for_update_leave_the_state_alone() -> None:
    hl = bank()
    slots = hl.slots(["a"])
    for t in range(10):
        step = hl.step_at(slots, np.array([float(t)]), np.array([row(hr=135.0)]), np.array([False]))
        assert step.confirmed[0] == NONE and step.level[0] == WARNING
    assert np.isnan(hl.state_dict()["streams"]["start"].numpy()).all()


def test_state_export_import_continues_a_run() -> None:
    hl = bank()
    run(hl, [row(hr=135.0)] * 20, [float(i) for i in range(20)])
    moved = bank()
    moved.import_streams(hl.export_streams(["bed-1"]))
    assert run(moved, [row(hr=135.0)] * 11, [20.0 + i for i in range(11)])[-1] == (WARNING, 0.0)
    hl.forget_streams(["bed-1"])
    assert run(hl, [row(hr=135.0)], [31.0])[0][0] == NONE


def test_layer_applies_only_to_configured_kinds() -> None:
    cfg = HardLimitConfig()
    assert HardLimitBank.applies(cfg, get_kind(ICU))
    assert not HardLimitBank.applies(cfg, get_kind("machine"))
    assert not HardLimitBank.applies(HardLimitConfig(enabled=False), get_kind(ICU))


def test_direction_is_the_side_of_the_breached_limit_or_band() -> None:
    hl = bank(warning_limits={"hr": (None, 120.0)})
    assert hl.direction("spo2", 82.0) == "low"  # beyond the critical limit
    assert hl.direction("hr", 190.0) == "high"
    assert hl.direction("hr", 125.0) == "high"  # beyond the configured warning limit
    assert hl.direction("spo2", 93.0) == "low"  # NEWS2 points, inside the limits
    assert hl.direction("temp", 38.5) == "high" and hl.direction("rr", 10.0) == "low"
    assert hl.direction("hr", 72.0) is None and hl.direction("dbp", 20.0) is None
    assert hl.direction("spo2", float("nan")) is None
