"""Channel groups in the joint score: channels that move together count once."""

from __future__ import annotations

import numpy as np
import pytest

from streamwatch.errors import ConfigError
from streamwatch.kinds import KindSpec, get_kind
from streamwatch.model.scoring import chi2_surprise, forecast_scores, level_scores

ICU_GROUPS = np.asarray(get_kind("icu_vitals").group_index())


def _icu(z: dict[str, float]) -> np.ndarray:
    """One ICU reading whose channels sit ``z`` standard deviations off a N(0, 1) forecast."""
    channels = get_kind("icu_vitals").channels
    return np.array([[z.get(c, 0.0) for c in channels]])


def test_a_blood_pressure_swing_scores_like_one_channel_not_three() -> None:
    values = _icu({"sbp": 3.0, "dbp": 3.0, "map": 3.0})
    ones, zeros = np.ones_like(values), np.zeros_like(values)
    _, grouped = forecast_scores(values, zeros, ones, zeros, ICU_GROUPS)
    _, plain = forecast_scores(values, zeros, ones, zeros)
    # 5 groups (hr, spo2, rr, bp, temp), one of them 3 sigma off
    assert grouped[0] == pytest.approx(chi2_surprise(np.array([9.0]), np.array([5]))[0])
    assert plain[0] == pytest.approx(chi2_surprise(np.array([27.0]), np.array([7]))[0])
    assert grouped[0] < plain[0] / 2


def test_ungrouped_channels_still_add_up() -> None:
    values = _icu({"hr": 3.0, "spo2": -3.0})
    ones, zeros = np.ones_like(values), np.zeros_like(values)
    _, grouped = forecast_scores(values, zeros, ones, zeros, ICU_GROUPS)
    assert grouped[0] == pytest.approx(chi2_surprise(np.array([18.0]), np.array([5]))[0])


def test_a_group_with_every_channel_missing_adds_no_degree_of_freedom() -> None:
    values = _icu({"hr": 2.0})
    values[0, list(get_kind("icu_vitals").channels).index("sbp"):][:3] = np.nan
    ones, zeros = np.ones_like(values), np.zeros_like(values)
    usable = np.isfinite(values)
    _, level = level_scores(values, zeros, ones, usable, ICU_GROUPS)
    assert level[0] == pytest.approx(chi2_surprise(np.array([4.0]), np.array([4]))[0])


def test_groups_naming_unknown_or_twice_grouped_channels_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="group"):
        KindSpec("k", ("a", "b"), groups=(("a", "c"),)).group_index()
    with pytest.raises(ConfigError, match="group"):
        KindSpec("k", ("a", "b", "c"), groups=(("a", "b"), ("b", "c"))).group_index()
