"""Episode planning and the shared generation helpers."""

from __future__ import annotations

import doctest
import itertools
from types import ModuleType

import numpy as np
import pytest

import simulators
from simulators import base, cli, icu, replay, sensors
from simulators.base import ar1, n_steps, smooth_profile, stream_ids
from simulators.episodes import Draft, place_scattered, place_spaced


def _draft(duration_s: float, kind: str = "x") -> Draft:
    return Draft(kind, "clinical", duration_s, (0,))


def test_spaced_placement_keeps_gaps_and_window() -> None:
    rng = np.random.default_rng(0)
    drafts = [_draft(d) for d in (600, 1200, 300, 900)]
    placed = place_spaced(rng, drafts, (7200, 86_100), gap_s=3600)
    assert len(placed) == 4
    spans = [(onset, onset + d.duration_s) for onset, d in placed]
    assert spans[0][0] >= 7200 and spans[-1][1] <= 86_100
    for (_, end), (onset, _) in itertools.pairwise(spans):
        assert onset - end >= 3600


def test_spaced_placement_drops_the_longest_when_it_cannot_fit() -> None:
    rng = np.random.default_rng(0)
    drafts = [_draft(600, "short"), _draft(6 * 3600, "long"), _draft(900, "mid")]
    placed = place_spaced(rng, drafts, (0, 4 * 3600), gap_s=600)
    assert [d.type for _, d in placed] == ["short", "mid"]


def test_scattered_placement_keeps_its_margin_from_busy_time() -> None:
    rng = np.random.default_rng(1)
    busy = [(10_000.0, 20_000.0)]
    placed = place_scattered(rng, [_draft(60)] * 20, (0, 40_000), busy, margin_s=900)
    assert len(placed) == 20
    spans = sorted(busy + [(o, o + d.duration_s) for o, d in placed])
    for (_, end), (onset, _) in itertools.pairwise(spans):
        assert onset - end >= 900


def test_ar1_in_chunks_equals_one_pass_and_has_unit_variance() -> None:
    z = np.random.default_rng(2).standard_normal((20_000, 3, 2))
    decay = np.exp(-1 / np.array([30.0, 600.0]))
    whole = ar1(z, decay, np.zeros((3, 2)))
    state = np.zeros((3, 2))
    parts = np.concatenate([ar1(z[i:i + 777], decay, state) for i in range(0, 20_000, 777)])
    assert np.allclose(whole, parts, atol=1e-9)
    assert abs(whole[..., 0].std() - 1) < 0.1
    lag1 = np.corrcoef(whole[1:, 0, 0], whole[:-1, 0, 0])[0, 1]
    assert abs(lag1 - decay[0]) < 0.02


def test_profile_rises_plateaus_falls_and_is_zero_outside() -> None:
    t = np.arange(-5, 105, dtype=float)
    f = smooth_profile(t, 100, ramp_up=20, ramp_down=10)
    assert f[t < 0].max() == 0 and f[t >= 100].max() == 0
    assert np.all(f[(t >= 20) & (t <= 90)] == 1)
    assert np.all(np.diff(f[(t >= 0) & (t <= 20)]) >= 0)


def test_stream_ids_and_step_counts() -> None:
    assert stream_ids("icu/bed", 3) == ["icu/bed-01", "icu/bed-02", "icu/bed-03"]
    assert stream_ids("icu/bed", 120)[-1] == "icu/bed-120"
    assert n_steps(3600, 1.0) == 3600 and n_steps(0.3, 10.0) == 3


def test_scenario_returns_readings_and_the_labels_of_the_same_run() -> None:
    steps, episodes = simulators.scenario("icu", 3, 24, seed=1)
    assert episodes and all(e.stream_id.startswith("icu/bed-") for e in episodes)
    first = next(steps)
    assert len(first) == 3
    _, machine_eps = simulators.scenario("sensors", 3, 24, seed=1)
    assert machine_eps and {e.category for e in machine_eps} == {"fault"}


@pytest.mark.parametrize(
    "module", [simulators, base, icu, sensors, replay, cli], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module: ModuleType) -> None:
    """pytest collects doctests under streamwatch/ only; run the simulators' ones here."""
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
