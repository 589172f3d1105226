"""Seasonal inputs of the forecaster (``ModelConfig.season_s``): phase bins, the profile,
what the model gains on a recurring pattern, and that anomalies never enter the profile."""

from __future__ import annotations

import numpy as np
import pytest

from streamwatch.detect.base import KindBatch
from streamwatch.detect.forecast_scorer import ForecastScorer
from streamwatch.kinds import get_kind
from streamwatch.model.config import ModelConfig
from streamwatch.model.features import season_bin, season_columns, step_inputs

UNI = get_kind("univariate")
DAY = 86_400.0
STEP = 1_800.0  # 48 readings a day
PER_DAY = int(DAY / STEP)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(season: bool, **overrides: object) -> ModelConfig:
    fields: dict[str, object] = dict(hidden_size=8, window=8, burn_in=2, batch_size=16,
                                     train_every=8, replay_every=1, warmup=5, lr=5e-3,
                                     level_score=False)
    if season:
        fields.update(season_s=DAY, season_bins=PER_DAY)
    fields.update(overrides)
    return ModelConfig.build(**fields)


def square_day(i: int, rng: np.random.Generator) -> float:
    """A daily square wave: 10 by night, 50 from 08:00 to 18:00, small noise."""
    hour = (i % PER_DAY) * STEP / 3600.0
    return (50.0 if 8.0 <= hour < 18.0 else 10.0) + 0.2 * float(rng.standard_normal())


def run(scorer: ForecastScorer, values: np.ndarray, learn: np.ndarray | None = None) -> np.ndarray:
    """Test-then-train one stream over ``values`` (one per STEP); returns the scores."""
    out = np.empty(len(values))
    for i, v in enumerate(values):
        batch = KindBatch(UNI, ["s"], np.array([i * STEP]), np.array([[v]]))
        ok = np.array([True if learn is None else bool(learn[i])])
        out[i] = scorer.score_many(batch).score[0]
        scorer.advance_many(batch, ok)
        scorer.learn_many(batch, ok)
    return out


def test_season_bin_maps_the_phase_of_the_period_to_bins() -> None:
    ts = np.array([0.0, 299.9, 300.0, DAY - 1.0, DAY, 1.5 * DAY, -300.0])
    assert season_bin(ts, DAY, 288).tolist() == [0, 0, 1, 287, 0, 144, 287]


def test_season_columns_are_change_level_and_mask_and_zero_where_unknown() -> None:
    now = np.array([[1.0], [np.nan], [2.0]])
    nxt = np.array([[3.0], [1.0], [np.nan]])
    cols = season_columns(now, nxt, clip=10.0)
    assert cols.tolist() == [[2.0, 3.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    x = step_inputs(np.array([[0.5]]), np.array([[True]]), np.array([0.1]), 10.0,
                    (np.array([[0.0]]), np.array([[20.0]])))
    assert x.shape == (1, 6) and x[0, 3] == 10.0  # the change is clipped like the values


def test_a_daily_pattern_is_forecast_at_its_transitions_once_the_profile_knows_it() -> None:
    days = 6
    values = np.array([square_day(i, np.random.default_rng(i)) for i in range(days * PER_DAY)])
    plain = run(ForecastScorer(UNI, config(season=False)), values)
    seasonal = run(ForecastScorer(UNI, config(season=True)), values)
    hours = (np.arange(len(values)) % PER_DAY) * STEP / 3600.0
    edges = np.isin(hours, (8.0, 18.0)) & (np.arange(len(values)) >= 3 * PER_DAY)
    # Without the season every transition is a surprise; with it, they are foreseen.
    assert np.median(plain[edges]) > 1.5
    assert np.median(seasonal[edges]) < 0.3 * np.median(plain[edges])


def test_readings_not_learned_never_enter_the_profile() -> None:
    scorer = ForecastScorer(UNI, config(season=True))
    values = np.full(2 * PER_DAY, 20.0)
    learn = np.ones(len(values), dtype=bool)
    values[PER_DAY + 5] = 500.0  # an anomaly, kept out of learning by the detector
    learn[PER_DAY + 5] = False
    run(scorer, values, learn)
    profile = scorer.state["season_prof"][scorer.state.lookup(["s"])[0], :, 0]
    assert np.all(np.isfinite(profile)) and np.allclose(profile, 20.0)


@pytest.mark.parametrize("season", [True, False])
def test_a_state_loaded_in_process_continues_identically_across_training_steps(
    season: bool,
) -> None:
    # The source keeps running too: the copy must not share its optimiser moments.
    values = np.array([square_day(i, np.random.default_rng(i)) for i in range(3 * PER_DAY)])
    a = ForecastScorer(UNI, config(season=season))
    run(a, values[:-PER_DAY])
    b = ForecastScorer(UNI, config(season=season))
    b.load_state_dict(a.state_dict())
    tail = values[-PER_DAY:]
    ts0 = (len(values) - PER_DAY) * STEP
    for i, v in enumerate(tail):
        batch = KindBatch(UNI, ["s"], np.array([ts0 + i * STEP]), np.array([[v]]))
        ok = np.array([True])
        assert a.score_many(batch).score[0] == b.score_many(batch).score[0]
        for scorer in (a, b):
            scorer.advance_many(batch, ok)
            scorer.learn_many(batch, ok)
    assert a.version == b.version > 0
