"""ICU simulator: determinism, shape of normal periods, episodes and artefacts."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import numpy as np
import pytest

from simulators.episodes import ACUTE_TYPES, CLINICAL_TYPES
from simulators.icu import CHANNELS, IcuSimulator
from streamwatch.errors import ConfigError
from streamwatch.kinds import NEWS2_NORMAL, news2_channel_score
from streamwatch.schema import Episode

H = 3600.0
ENC = msgspec.json.Encoder()
DIRECTIONS = {
    "sepsis": {"hr": 1, "temp": 1, "rr": 1, "sbp": -1, "dbp": -1, "map": -1},
    "desaturation": {"spo2": -1, "rr": 1},
    "tachycardia": {"hr": 1},
    "bradycardia": {"hr": -1},
    "hypotension": {"sbp": -1, "dbp": -1, "map": -1},
}

WANDER = {"hr": 10, "spo2": 2, "rr": 4, "sbp": 12, "dbp": 8, "temp": 0.5}


def _busy() -> IcuSimulator:
    """A short run crowded with every kind of episode and artefact."""
    return IcuSimulator(4, seed=3, warmup_s=600, gap_s=900, clinical_per_day=24,
                        artefacts_per_day=48, dropouts=True)


def _encoded(sim: IcuSimulator, duration_s: float) -> bytes:
    return b"".join(ENC.encode_lines(step) for step in sim.readings(duration_s))


def _index(sim: IcuSimulator, ep: Episode) -> tuple[int, int, int]:
    return (sim.stream_ids.index(ep.stream_id), round(ep.onset_ts - sim.start_ts),
            round(ep.end_ts - sim.start_ts))


def test_same_seed_gives_byte_identical_output_and_labels() -> None:
    a, b = _busy(), _busy()
    assert _encoded(a, 3 * H) == _encoded(b, 3 * H)
    assert a.episodes(3 * H) == b.episodes(3 * H)
    assert any(e.category == "artefact" for e in a.episodes(3 * H))


def test_different_seed_gives_different_output() -> None:
    other = IcuSimulator(4, seed=4, warmup_s=600, gap_s=900, clinical_per_day=24,
                         artefacts_per_day=48, dropouts=True)
    assert _encoded(_busy(), H) != _encoded(other, H)
    assert _busy().episodes(3 * H) != other.episodes(3 * H)


def test_run_without_episodes_is_a_prefix_of_a_longer_run() -> None:
    short = IcuSimulator(3, seed=5, episodes=False, artefacts=False)
    long = IcuSimulator(3, seed=5, episodes=False, artefacts=False)
    head = _encoded(short, 1000)
    assert _encoded(long, 2000).startswith(head)


def test_a_bed_is_the_same_whatever_the_number_of_beds() -> None:
    # 300 beds are generated in smaller time chunks than 2 beds: the output must not care
    kwargs: dict[str, Any] = {"seed": 8, "warmup_s": 600, "clinical_per_day": 48,
                              "artefacts_per_day": 48}
    few, many = IcuSimulator(2, **kwargs), IcuSimulator(300, **kwargs)
    _, v_few, _ = few.arrays(H)
    _, v_many, _ = many.arrays(H)
    assert np.array_equal(v_few, v_many[:, :2], equal_nan=True)
    renamed = {many.stream_ids[i]: few.stream_ids[i] for i in range(2)}  # bed-001 vs bed-01
    mine = [msgspec.structs.replace(e, stream_id=renamed[e.stream_id])
            for e in many.episodes(H) if e.stream_id in renamed]
    assert mine and [(e.stream_id, e.type, e.onset_ts, e.end_ts) for e in mine] == [
        (e.stream_id, e.type, e.onset_ts, e.end_ts) for e in few.episodes(H)]


def test_every_step_has_every_bed_once_in_order_without_dropouts() -> None:
    sim = IcuSimulator(12, seed=1, rate_hz=2.0)
    steps = list(sim.readings(120))
    assert len(steps) == 240
    for k, step in enumerate(steps):
        assert [r.stream_id for r in step] == [f"icu/bed-{i:02d}" for i in range(1, 13)]
        assert {r.ts for r in step} == {sim.start_ts + k / 2}
        assert all(r.kind == "icu_vitals" and tuple(r.values) == CHANNELS for r in step)


def test_values_are_rounded_like_a_monitor_and_map_follows_sbp_dbp() -> None:
    _, v, _ = IcuSimulator(6, seed=2, episodes=False, artefacts=False).arrays(1800)
    integer = v[..., [0, 1, 2, 3, 4, 5]]
    assert np.array_equal(integer, np.round(integer))
    assert np.allclose(v[..., 6] * 10, np.round(v[..., 6] * 10))
    _hr, spo2, _rr, sbp, dbp, map_, _temp = np.moveaxis(v, -1, 0)
    assert np.all(np.abs(map_ - (dbp + (sbp - dbp) / 3)) <= 0.5)
    assert spo2.max() <= 100 and np.all(dbp < sbp)


def test_normal_periods_stay_in_news2_zero_band() -> None:
    sim = IcuSimulator(10, seed=1, episodes=False, artefacts=False)
    _, v, _ = sim.arrays(24 * H)
    in_band = np.ones(v.shape[:2], dtype=bool)
    for channel, (lo, hi) in NEWS2_NORMAL.items():
        x = v[..., CHANNELS.index(channel)]
        assert ((x >= lo) & (x <= hi)).mean() >= 0.97, channel
        in_band &= (x >= lo) & (x <= hi)
    assert in_band.mean() >= 0.95
    assert in_band.mean(axis=0).min() >= 0.9  # no patient lives outside the band
    # ... and still varies: circadian drift plus physiologic variability, not a constant
    hr = v[..., CHANNELS.index("hr")]
    assert hr.std(axis=0).min() > 1.5
    night, afternoon = hr[3 * 3600:5 * 3600].mean(), hr[15 * 3600:17 * 3600].mean()
    assert afternoon - night > 2.0


def test_channels_are_coupled_through_shared_arousal() -> None:
    _, v, _ = IcuSimulator(8, seed=7, episodes=False, artefacts=False).arrays(12 * H)
    minutes = v[: (v.shape[0] // 60) * 60].reshape(-1, 60, *v.shape[1:]).mean(axis=1)
    hr, sbp = minutes[..., CHANNELS.index("hr")], minutes[..., CHANNELS.index("sbp")]
    corr = [np.corrcoef(hr[:, p], sbp[:, p])[0, 1] for p in range(hr.shape[1])]
    assert np.median(corr) > 0.2


@pytest.mark.parametrize("kind", CLINICAL_TYPES)
def test_each_clinical_episode_moves_its_channels_the_intended_way(kind: str) -> None:
    sim = IcuSimulator(3, seed=11, artefacts=False, clinical_weights={kind: 1.0},
                       clinical_per_day=4, warmup_s=H, gap_s=1800)
    _, v, _ = sim.arrays(24 * H)
    episodes = sim.episodes(24 * H)
    assert episodes and {e.type for e in episodes} == {kind}
    for ep in episodes:
        assert ep.category == "clinical" and sorted(ep.channels) == sorted(DIRECTIONS[kind])
        p, onset, end = _index(sim, ep)
        before = np.median(v[onset - 1800:onset, p], axis=0)
        during = v[onset:end, p]
        for channel, sign in DIRECTIONS[kind].items():
            c = CHANNELS.index(channel)
            peak = during[:, c].max() if sign > 0 else during[:, c].min()
            assert sign * (peak - before[c]) > 0, (ep, channel)
        if kind in ACUTE_TYPES:
            # clinically meaningful: NEWS2 scores the primary channel for minutes
            primary = {"desaturation": "spo2", "tachycardia": "hr", "bradycardia": "hr",
                       "hypotension": "sbp"}[kind]
            scored = [news2_channel_score(primary, x) > 0
                      for x in during[:, CHANNELS.index(primary)]]
            assert sum(scored) >= 120, (ep, sum(scored))
            for other in set(CHANNELS) - set(DIRECTIONS[kind]) - {"map"}:
                c = CHANNELS.index(other)  # untouched channels keep their natural wander
                assert abs(np.median(during[:, c]) - before[c]) <= WANDER[other], (ep, other)
        if kind == "desaturation":
            assert 78 <= during[:, CHANNELS.index("spo2")].min() <= 90
        if kind == "sepsis":
            assert end - onset >= 4 * H
            assert during[:, CHANNELS.index("temp")].max() >= 38.5


def test_outside_labelled_windows_the_data_equal_an_episode_free_run() -> None:
    sim = _busy()
    clean = IcuSimulator(4, seed=3, episodes=False, artefacts=False)
    _, v, present = sim.arrays(6 * H)
    _, v0, _ = clean.arrays(6 * H)
    inside = np.zeros(present.shape, dtype=bool)
    for ep in sim.episodes(6 * H):
        p, onset, end = _index(sim, ep)
        inside[onset:end, p] = True
    assert inside.any() and (~inside).any()
    assert np.array_equal(v[~inside], v0[~inside])
    assert not np.array_equal(v[inside], v0[inside])


def test_artefacts_are_labelled_as_artefacts_and_look_like_artefacts() -> None:
    sim = _busy()
    _, v, present = sim.arrays(6 * H)
    episodes = sim.episodes(6 * H)
    artefacts = [e for e in episodes if e.category == "artefact"]
    assert {e.type for e in artefacts} == {"probe_off", "flatline", "spike", "dropout"}
    assert {e.category for e in episodes if e.type in CLINICAL_TYPES} == {"clinical"}
    for ep in artefacts:
        p, onset, end = _index(sim, ep)
        cols = [CHANNELS.index(c) for c in ep.channels]
        seg = v[onset:end, p][:, cols]
        if ep.type == "probe_off":
            assert ep.channels == ["spo2"]
            assert np.all(np.isnan(seg)) or np.all(seg == 0)
        elif ep.type == "flatline":
            assert end - onset >= 60 and np.all(seg == seg[0])
        elif ep.type == "spike":
            assert end - onset == 1
            assert np.all(np.abs(seg[0] - v[onset - 1, p, cols]) >= 15)
        elif ep.type == "dropout":
            assert not present[onset:end, p].any()
    # outside artefacts nothing is missing: nulls and gaps are always labelled
    labelled = np.zeros(present.shape, dtype=bool)
    for ep in artefacts:
        p, onset, end = _index(sim, ep)
        labelled[onset:end, p] = True
    assert present[~labelled].all() and not np.isnan(v[~labelled]).any()


def test_dropouts_remove_readings_only_when_enabled() -> None:
    on = IcuSimulator(4, seed=3, warmup_s=600, artefacts_per_day=96, dropouts=True)
    off = IcuSimulator(4, seed=3, warmup_s=600, artefacts_per_day=96)
    count_on = sum(len(s) for s in on.readings(4 * H))
    count_off = sum(len(s) for s in off.readings(4 * H))
    dropped = sum(round(e.end_ts - e.onset_ts) for e in on.episodes(4 * H) if e.type == "dropout")
    assert count_off == 4 * 4 * 3600
    assert dropped > 0 and count_on == count_off - dropped
    assert "dropout" not in {e.type for e in off.episodes(4 * H)}


def test_default_plan_suits_the_evaluation_scenario() -> None:
    sim = IcuSimulator(20, seed=1)
    episodes = sim.episodes(24 * H)
    clinical = [e for e in episodes if e.category == "clinical"]
    artefacts = [e for e in episodes if e.category == "artefact"]
    assert 1.0 <= len(clinical) / 20 <= 3.0
    assert 1.0 <= len(artefacts) / 20 <= 8.0
    assert min(e.onset_ts for e in episodes) >= sim.start_ts + 2 * H
    assert max(e.end_ts for e in episodes) <= sim.start_ts + 24 * H
    for sid in sim.stream_ids:
        mine = sorted((e for e in clinical if e.stream_id == sid), key=lambda e: e.onset_ts)
        for a, b in itertools.pairwise(mine):
            assert b.onset_ts - a.end_ts >= H
        for art in (e for e in artefacts if e.stream_id == sid):
            assert all(art.end_ts + 900 <= c.onset_ts or art.onset_ts >= c.end_ts + 900
                       for c in mine)
    assert len({e.episode_id for e in episodes}) == len(episodes)


def test_switches_turn_episodes_and_artefacts_off() -> None:
    assert IcuSimulator(5, seed=1, episodes=False, artefacts=False).episodes(24 * H) == []
    only_art = IcuSimulator(5, seed=1, episodes=False).episodes(24 * H)
    assert only_art and {e.category for e in only_art} == {"artefact"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patients": 0}, r"patients must be an integer in \[1, 100000\]"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"rate_hz": 0.0}, r"rate_hz must be in \[0.0001, 100\]"),
        ({"clinical_per_day": -1.0}, r"clinical_per_day must be in \[0, 1000\]"),
        ({"clinical_weights": {"flu": 1.0}}, "unknown type"),
    ],
)
def test_bad_arguments_name_the_allowed_range(kwargs: dict, message: str) -> None:
    args = {"patients": 2, "seed": 1} | kwargs
    with pytest.raises(ConfigError, match=message):
        IcuSimulator(**args)


def test_bad_duration_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="duration must be in"):
        IcuSimulator(2, seed=1).episodes(0)
