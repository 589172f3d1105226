"""SPOT thresholds: warm-up, false-positive rate on iid scores, adaptation, state."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from streamwatch.detect.config import ThresholdConfig
from streamwatch.detect.thresholds import ThresholdBank, fit_gpd
from streamwatch.errors import CheckpointError

IDS = [f"s{i}" for i in range(100)]


def run_spot(bank: ThresholdBank, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feed scores[t, stream] wave by wave, every score learnable (exceedances are
    censored by the bank); returns the thresholds in force and the exceedance flags."""
    steps, n = scores.shape
    ids = IDS[:n]
    thresholds = np.empty_like(scores)
    for t in range(steps):
        z = bank.thresholds(ids)
        thresholds[t] = z
        bank.update_many(ids, scores[t], np.ones(n, dtype=bool))
    return thresholds, scores > thresholds


def gpd_sample(rng: np.random.Generator, gamma: float, sigma: float, n: int) -> np.ndarray:
    u = rng.random(n)
    return sigma / gamma * ((1 - u) ** (-gamma) - 1) if gamma else -sigma * np.log(1 - u)


def test_warmup_returns_nan_until_enough_scores() -> None:
    bank = ThresholdBank(ThresholdConfig(warmup=50, risk=1e-3))
    rng = np.random.default_rng(0)
    for i in range(49):
        bank.update_many(["a"], rng.exponential(size=1), np.array([True]))
        assert np.isnan(bank.thresholds(["a"])[0]), i
    bank.update_many(["a"], rng.exponential(size=1), np.array([True]))
    assert np.isfinite(bank.thresholds(["a"])[0])
    assert np.isnan(bank.thresholds(["never-seen"])[0])


def test_masked_scores_do_not_count_towards_warmup() -> None:
    bank = ThresholdBank(ThresholdConfig(warmup=50))
    for _ in range(100):
        bank.update_many(["a"], np.array([1.0]), np.array([False]))
        bank.update_many(["a"], np.array([np.nan]), np.array([True]))
    assert np.isnan(bank.thresholds(["a"])[0])


@pytest.mark.parametrize("estimator", ["mle", "mom"])
@pytest.mark.parametrize("law", ["exponential", "chi2", "halfnormal"])
def test_false_positive_rate_on_iid_scores_is_close_to_risk(law: str, estimator: str) -> None:
    risk = 1e-3
    rng = np.random.default_rng(7)
    shape = (3000, 100)
    scores = {
        "exponential": rng.exponential(size=shape),
        "chi2": rng.standard_normal(shape) ** 2 + rng.standard_normal(shape) ** 2,
        "halfnormal": np.abs(rng.standard_normal(shape)),
    }[law]
    bank = ThresholdBank(ThresholdConfig(warmup=500, risk=risk, estimator=estimator))
    _, flagged = run_spot(bank, scores)
    rate = flagged[500:].mean()
    assert 0.5 * risk <= rate <= 2.0 * risk, rate


def test_threshold_adapts_when_the_score_scale_changes() -> None:
    rng = np.random.default_rng(3)
    n = 50
    bank = ThresholdBank(ThresholdConfig(warmup=500, risk=1e-3, burst_patience=600))
    before, _ = run_spot(bank, rng.exponential(size=(3000, n)))
    z_before = before[-1].mean()
    after, flagged = run_spot(bank, 3.0 * rng.exponential(size=(8000, n)))
    z_after = after[-1].mean()
    # Right after the change the old bar is far too low; later the bar has moved up.
    early, late = flagged[:500].mean(), flagged[-2000:].mean()
    assert early > 20 * 1e-3
    assert late < 5 * 1e-3
    assert z_after > 2.0 * z_before


def test_a_burst_of_peaks_just_under_the_bar_does_not_raise_it() -> None:
    rng = np.random.default_rng(9)
    guarded = ThresholdBank(ThresholdConfig(warmup=300, risk=1e-3))
    unguarded = ThresholdBank(
        ThresholdConfig(warmup=300, risk=1e-3, burst_peaks=64, burst_pause_scorer=64)
    )
    base = rng.exponential(size=(2000, 1))
    run_spot(guarded, base)
    run_spot(unguarded, base)
    z0 = guarded.thresholds(["s0"])[0]
    assert unguarded.thresholds(["s0"])[0] == z0
    for _ in range(300):  # an anomaly hovering at 95% of the bar, every reading a peak
        for bank in (guarded, unguarded):
            hover = np.array([0.95 * bank.thresholds(["s0"])[0]])
            bank.update_many(["s0"], hover, np.array([True]))
    assert guarded.thresholds(["s0"])[0] < 1.05 * z0
    assert unguarded.thresholds(["s0"])[0] > 1.3 * z0  # the bar climbs away
    slot = guarded.slots(["s0"])
    assert guarded.frozen_at(slot)[0] and guarded.pause_scorer_at(slot)[0]
    assert not unguarded.frozen_at(unguarded.slots(["s0"]))[0]


def test_a_burst_lasting_beyond_the_patience_is_learned() -> None:
    rng = np.random.default_rng(10)
    bank = ThresholdBank(ThresholdConfig(warmup=300, risk=1e-3, burst_patience=100))
    run_spot(bank, rng.exponential(size=(2000, 1)))
    z0 = bank.thresholds(["s0"])[0]
    for _ in range(400):
        bank.update_many(["s0"], np.array([0.95 * bank.thresholds(["s0"])[0]]), np.array([True]))
    assert bank.thresholds(["s0"])[0] > 1.3 * z0
    assert not bank.frozen_at(bank.slots(["s0"]))[0]


def test_unlearnable_anomalies_leave_the_bar_unchanged() -> None:
    rng = np.random.default_rng(5)
    bank = ThresholdBank(ThresholdConfig(warmup=200, risk=1e-3))
    run_spot(bank, rng.exponential(size=(400, 1)))
    z0 = bank.thresholds(["s0"])[0]
    for _ in range(300):
        bank.update_many(["s0"], np.array([50 * z0]), np.array([False]))
    assert bank.thresholds(["s0"])[0] == z0


def test_an_exceedance_counts_only_as_reaching_the_bar_not_by_its_size() -> None:
    rng = np.random.default_rng(5)
    cfg = ThresholdConfig(warmup=200, risk=1e-3, refit_every=1)
    base = rng.exponential(size=(400, 1))
    at_bar, huge = ThresholdBank(cfg), ThresholdBank(cfg)
    run_spot(at_bar, base)
    run_spot(huge, base)
    for _ in range(5):
        z = at_bar.thresholds(["s0"])[0]
        at_bar.update_many(["s0"], np.array([z + 1e-9]), np.array([True]))
        huge.update_many(["s0"], np.array([1e6]), np.array([True]))
    assert huge.thresholds(["s0"])[0] == pytest.approx(at_bar.thresholds(["s0"])[0])


def test_plain_spot_without_censoring_would_drift_low() -> None:
    """Pins why exceedances are censored: dropping them truncates the tail."""
    rng = np.random.default_rng(8)
    y = rng.exponential(size=20000)
    bound = 3.0
    _, dropped = fit_gpd(y[y <= bound], min_peaks=10**9)  # exponential fit, truncated
    _, censored = fit_gpd(np.minimum(y, bound), y > bound, min_peaks=10**9)
    assert dropped < 0.9 and abs(censored - 1.0) < 0.03


def test_peak_memory_is_bounded() -> None:
    bank = ThresholdBank(ThresholdConfig(warmup=100, max_peaks=20, risk=1e-3))
    rng = np.random.default_rng(1)
    run_spot(bank, rng.exponential(size=(5000, 3)))
    counts = bank.state_dict()["streams"]["count"]
    assert counts.max().item() == 20
    assert bank.state_dict()["streams"]["peaks"].shape == (3, 20)


def test_constant_warmup_gives_a_threshold_just_above_the_constant() -> None:
    bank = ThresholdBank(ThresholdConfig(warmup=50))
    for _ in range(50):
        bank.update_many(["a"], np.array([2.0]), np.array([True]))
    z = bank.thresholds(["a"])[0]
    assert 2.0 < z < 2.01


def test_repeated_stream_in_one_call_updates_in_order() -> None:
    rng = np.random.default_rng(2)
    scores = rng.exponential(size=300)
    one_call = ThresholdBank(ThresholdConfig(warmup=100, risk=1e-3))
    one_call.update_many(["a"] * 300, scores, np.ones(300, bool))
    sequential = ThresholdBank(ThresholdConfig(warmup=100, risk=1e-3))
    for s in scores:
        sequential.update_many(["a"], np.array([s]), np.array([True]))
    assert one_call.thresholds(["a"])[0] == sequential.thresholds(["a"])[0]


def test_state_round_trip_through_torch_weights_only_continues_identically() -> None:
    rng = np.random.default_rng(4)
    cfg = ThresholdConfig(warmup=100, risk=1e-3)
    bank = ThresholdBank(cfg)
    run_spot(bank, rng.exponential(size=(400, 5)))
    buf = io.BytesIO()
    torch.save(bank.state_dict(), buf)
    buf.seek(0)
    restored = ThresholdBank(cfg)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    more = rng.exponential(size=(300, 5))
    za, _ = run_spot(bank, more)
    zb, _ = run_spot(restored, more)
    np.testing.assert_array_equal(za, zb)


def test_export_import_and_forget_move_single_streams() -> None:
    rng = np.random.default_rng(6)
    cfg = ThresholdConfig(warmup=100, risk=1e-3)
    bank = ThresholdBank(cfg)
    run_spot(bank, rng.exponential(size=(300, 4)))
    moved = bank.export_streams(["s1", "s3"])
    other = ThresholdBank(cfg)
    other.import_streams(moved)
    np.testing.assert_array_equal(other.thresholds(["s1", "s3"]), bank.thresholds(["s1", "s3"]))
    assert np.isnan(other.thresholds(["s0"])[0])
    bank.forget_streams(["s1"])
    assert np.isnan(bank.thresholds(["s1"])[0]) and len(bank) == 3


def test_loading_state_written_with_other_settings_is_a_clear_error() -> None:
    bank = ThresholdBank(ThresholdConfig(warmup=100, max_peaks=20))
    with pytest.raises(CheckpointError, match="max_peaks"):
        ThresholdBank(ThresholdConfig(warmup=100, max_peaks=30)).load_state_dict(bank.state_dict())


@pytest.mark.parametrize("gamma", [-0.3, 0.0, 0.3])
def test_gpd_fit_recovers_known_shape(gamma: float) -> None:
    y = gpd_sample(np.random.default_rng(11), gamma, 2.0, 3000)
    for estimator in ("mle", "mom"):
        g, s = fit_gpd(y, estimator=estimator)
        assert abs(g - gamma) < 0.1, (estimator, g)
        assert abs(s - 2.0) < 0.3, (estimator, s)


def test_gpd_fit_with_few_or_degenerate_excesses_is_finite() -> None:
    assert fit_gpd(np.array([0.5, 1.5])) == (0.0, 1.0)  # exponential below min_peaks
    g, s = fit_gpd(np.full(50, 0.3))
    assert np.isfinite(g) and s > 0
    assert fit_gpd(np.array([])) == (0.0, 1e-9)
