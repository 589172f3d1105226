"""Machine sensor simulator: determinism, plausible normal data, each fault's signature."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from simulators.episodes import FAULT_TYPES
from simulators.sensors import CHANNELS, DECIMALS, SCALE, SensorSimulator
from streamwatch.errors import ConfigError
from streamwatch.kinds import get_kind

H = 3600.0
ENC = msgspec.json.Encoder()


def _encoded(sim: SensorSimulator, duration_s: float) -> bytes:
    return b"".join(ENC.encode_lines(step) for step in sim.readings(duration_s))


def test_same_seed_gives_byte_identical_output_different_seed_does_not() -> None:
    def make(seed: int) -> SensorSimulator:
        return SensorSimulator(5, seed=seed, warmup_s=300, faults_per_day=48)

    assert _encoded(make(1), 2 * H) == _encoded(make(1), 2 * H)
    assert make(1).episodes(2 * H) == make(1).episodes(2 * H)
    assert _encoded(make(1), 2 * H) != _encoded(make(2), 2 * H)


def test_every_step_has_every_machine_with_all_channels() -> None:
    steps = list(SensorSimulator(3, seed=1).readings(30))
    assert len(steps) == 30
    for step in steps:
        assert [r.stream_id for r in step] == ["plant/machine-01", "plant/machine-02",
                                              "plant/machine-03"]
        assert all(r.kind == "machine" and tuple(r.values) == CHANNELS for r in step)


def test_normal_data_is_plausible_coupled_and_never_missing() -> None:
    _, v, present = SensorSimulator(6, seed=4, faults=False).arrays(12 * H)
    assert present.all() and not np.isnan(v).any()
    for c, channel in enumerate(CHANNELS):
        lo, hi = get_kind("machine").plausible[channel]
        assert lo <= v[..., c].min() and v[..., c].max() <= hi, channel
    minutes = v[: (v.shape[0] // 60) * 60].reshape(-1, 60, *v.shape[1:]).mean(axis=1)
    current, vibration = minutes[..., CHANNELS.index("current")], minutes[..., 1]
    corr = [np.corrcoef(current[:, m], vibration[:, m])[0, 1] for m in range(6)]
    assert np.median(corr) > 0.5  # both follow the machine's load


@pytest.mark.parametrize("kind", FAULT_TYPES)
def test_each_fault_moves_its_channel_and_nothing_else(kind: str) -> None:
    sim = SensorSimulator(4, seed=9, fault_weights={kind: 1.0}, faults_per_day=6,
                          warmup_s=H)
    # the noise of a machine does not depend on its faults: the fault-free run with the
    # same seed is the exact counterfactual, so their difference is the fault alone
    clean = SensorSimulator(4, seed=9, faults=False)
    _, v, _ = sim.arrays(24 * H)
    _, v0, _ = clean.arrays(24 * H)
    episodes = sim.episodes(24 * H)
    assert episodes and {(e.type, e.category) for e in episodes} == {(kind, "fault")}
    inside = np.zeros(v.shape, dtype=bool)
    for ep in episodes:
        m = sim.stream_ids.index(ep.stream_id)
        onset, end = round(ep.onset_ts - sim.start_ts), round(ep.end_ts - sim.start_ts)
        assert len(ep.channels) == 1
        c = CHANNELS.index(ep.channels[0])
        inside[onset:end, m, c] = True
        during, diff = v[onset:end, m, c], v[onset:end, m, c] - v0[onset:end, m, c]
        local = np.std(np.diff(v0[onset - 600:onset, m, c]))  # sample-to-sample noise
        if kind == "spike":
            assert end - onset == 1 and abs(diff[0]) >= 8 * SCALE[c] * 0.99
        elif kind == "level_shift":
            assert np.ptp(diff) <= 10.0 ** -DECIMALS[c] + 1e-9 and abs(diff[0]) >= 4 * SCALE[c] * 0.99
            assert abs(diff[0]) > 10 * local  # a visible step, not hidden in the noise
        elif kind == "slow_drift":
            assert abs(diff[-1]) >= 6 * SCALE[c] * 0.99
            assert abs(diff[0]) < 0.2 * abs(diff[-1])  # gradual, not a step
            assert np.all(np.diff(np.abs(diff)) > -0.02)
        elif kind == "stuck":
            assert np.all(during == during[0]) and np.std(v0[onset:end, m, c]) > 0
        elif kind == "variance_burst":
            assert np.std(np.diff(during)) > 3 * local
        elif kind == "missing":
            assert np.isnan(during).all()
    assert np.array_equal(v[~inside], v0[~inside])
    # every reading still arrives; a missing-data fault nulls a channel, not the reading
    assert sum(len(s) for s in sim.readings(3 * H)) == 4 * 3 * 3600


def test_missing_data_fault_sends_null_channel_in_the_reading() -> None:
    sim = SensorSimulator(2, seed=3, fault_weights={"missing": 1.0}, faults_per_day=24,
                          warmup_s=600)
    episodes = sim.episodes(3 * H)
    ep = episodes[0]
    for k, step in enumerate(sim.readings(3 * H)):
        ts = sim.start_ts + k
        for r in step:
            if r.stream_id == ep.stream_id and ep.onset_ts <= ts < ep.end_ts:
                assert r.values[ep.channels[0]] is None
                assert all(r.values[c] is not None for c in CHANNELS if c != ep.channels[0])


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match=r"machines must be an integer in \[1, 100000\]"):
        SensorSimulator(0, seed=1)
    with pytest.raises(ConfigError, match="fault_weights: unknown type"):
        SensorSimulator(1, seed=1, fault_weights={"fire": 1.0})
    with pytest.raises(ConfigError, match=r"warmup_s must be in \[0, 30 days\]"):
        SensorSimulator(1, seed=1, warmup_s=-1)
