"""NAB scoring: hand-computed cases, and NAB's published figures reproduced on the shipped subset."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from streamwatch.evaluate.corpus import (
    load_corpus,
    read_results,
    read_windows,
    resolve_nab_dir,
    results_path,
    write_results,
)
from streamwatch.evaluate.nab import (
    NEVER_FIRES,
    PROFILES,
    LabelledFile,
    NabError,
    probation_rows,
    score_corpus,
    score_file,
    threshold_sweep,
)
from streamwatch.evaluate.reference import windowed_gaussian

STANDARD = PROFILES["standard"]


def s(y: float) -> float:
    """NAB's scaled sigmoid, written out independently of the implementation."""
    return -1.0 if y > 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def make_file(n: int = 100, windows: tuple[tuple[int, int], ...] = ((40, 49),), key: str = "c/f.csv") -> LabelledFile:
    ts = pd.date_range("2020-01-01", periods=n, freq="5min")
    limits = [[str(ts[a]), str(ts[b])] for a, b in windows]
    return LabelledFile.from_limits(key, ts.to_numpy(), limits)


def detections(n: int, rows: list[int]) -> np.ndarray:
    out = np.zeros(n)
    out[rows] = 1.0
    return out


def test_probation_is_15_percent_capped_at_750_rows() -> None:
    assert probation_rows(100) == 15
    assert probation_rows(4032) == 604
    assert probation_rows(5000) == 750
    assert probation_rows(22695) == 750


def test_first_row_of_a_window_earns_exactly_a_tp_and_later_rows_less() -> None:
    f = make_file()
    first = score_file(f, detections(100, [40]), STANDARD, 0.5)
    assert first.raw == pytest.approx(1.0)
    middle = score_file(f, detections(100, [45]), STANDARD, 0.5)
    assert middle.raw == pytest.approx(s(-(49 - 45 + 1) / 10) / s(-1.0))
    last = score_file(f, detections(100, [49]), STANDARD, 0.5)
    assert last.raw == pytest.approx(s(-1 / 10) / s(-1.0))
    assert 0 < last.raw < middle.raw < first.raw


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    f = make_file()
    both = score_file(f, detections(100, [41, 45, 48]), STANDARD, 0.5)
    assert both.raw == pytest.approx(s(-(49 - 41 + 1) / 10) / s(-1.0))
    assert (both.tp, both.windows_detected) == (3, 1)


def test_missed_window_costs_a_fn_per_profile() -> None:
    f = make_file()
    for profile in PROFILES.values():
        assert score_file(f, np.zeros(100), profile, 0.5).raw == pytest.approx(-profile.fn)


def test_false_positives_before_and_after_a_window_are_weighted_as_nab_does() -> None:
    f = make_file()
    before = score_file(f, detections(100, [40, 20]), STANDARD, 0.5)
    assert before.raw == pytest.approx(1.0 - 0.11)
    after = score_file(f, detections(100, [40, 55]), STANDARD, 0.5)
    assert after.raw == pytest.approx(1.0 + 0.11 * s(abs(49 - 55) / 9))
    far = score_file(f, detections(100, [40, 90]), STANDARD, 0.5)
    assert far.raw == pytest.approx(1.0 - 0.11)  # y = 41/9 > 3
    low_fp = score_file(f, detections(100, [40, 55]), PROFILES["reward_low_FP_rate"], 0.5)
    assert low_fp.raw == pytest.approx(1.0 + 0.22 * s(6 / 9))
    assert (after.fp, after.tp, after.fn) == (1, 1, 9)


def test_detections_in_the_probation_period_are_ignored() -> None:
    f = make_file()
    assert score_file(f, detections(100, [40, 3, 14]), STANDARD, 0.5).raw == pytest.approx(1.0)
    assert score_file(f, detections(100, [40, 15]), STANDARD, 0.5).raw == pytest.approx(0.89)


def test_threshold_is_optimised_over_the_whole_corpus() -> None:
    a, b = make_file(key="c/a.csv"), make_file(key="c/b.csv")
    # a: window start 0.9, FP at 0.8. b: window start 0.7, three FPs just after at 0.95.
    sa = np.zeros(100)
    sa[40], sa[70] = 0.9, 0.8
    sb = np.zeros(100)
    sb[45], sb[80:83] = 0.7, 0.95
    thresholds, totals = threshold_sweep([a, b], {"c/a.csv": sa, "c/b.csv": sb}, STANDARD)
    assert thresholds[0] == NEVER_FIRES and totals[0] == pytest.approx(-2.0)
    fp_b = 0.11 * sum(s(abs(49 - i) / 9) for i in (80, 81, 82))
    tp_b = s(-(49 - 45 + 1) / 10) / s(-1.0)
    fp_a = 0.11 * s(abs(49 - 70) / 9)
    expected = {0.95: -2.0 + fp_b, 0.9: 0.0 + fp_b, 0.8: fp_b + fp_a, 0.7: 1.0 + tp_b + fp_b + fp_a}
    for t, total in zip(thresholds[1:5], totals[1:5], strict=True):
        assert total == pytest.approx(expected[float(t)])
    result = score_corpus([a, b], {"c/a.csv": sa, "c/b.csv": sb})["standard"]
    assert result.threshold == 0.7
    assert result.raw == pytest.approx(expected[0.7])
    assert result.normalized == pytest.approx(100 * (expected[0.7] + 2) / 4)


def test_sweep_totals_equal_brute_force_scoring_at_every_threshold() -> None:
    rng = np.random.default_rng(3)
    files = [make_file(300, ((60, 80), (150, 151), (200, 240)), key="c/x.csv"),
             make_file(200, ((120, 140),), key="c/y.csv")]
    scores = {f.key: np.round(rng.random(f.n_rows), 2) for f in files}
    for profile in PROFILES.values():
        thresholds, totals = threshold_sweep(files, scores, profile)
        for t, total in zip(thresholds, totals, strict=True):
            brute = sum(score_file(f, scores[f.key], profile, float(t)).raw for f in files)
            assert total == pytest.approx(brute, abs=1e-9)


def test_perfect_detector_scores_100_and_silent_detector_scores_0() -> None:
    files = [make_file(key="c/a.csv"), make_file(300, ((60, 80), (200, 240)), key="c/b.csv")]
    perfect = {f.key: detections(f.n_rows, [a for a, _ in f.windows]) for f in files}
    silent = {f.key: np.zeros(f.n_rows) for f in files}
    for name in PROFILES:
        assert score_corpus(files, perfect)[name].normalized == pytest.approx(100.0)
        assert score_corpus(files, silent)[name].normalized == pytest.approx(0.0)


def test_bad_inputs_are_clear_errors() -> None:
    ts = pd.date_range("2020-01-01", periods=10, freq="1min").to_numpy()
    with pytest.raises(NabError, match="not a timestamp of the file"):
        LabelledFile.from_limits("c/f.csv", ts, [["2020-01-01 00:00:30", "2020-01-01 00:05:00"]])
    with pytest.raises(NabError, match="overlap"):
        LabelledFile.from_limits("c/f.csv", ts, [[str(ts[1]), str(ts[5])], [str(ts[4]), str(ts[8])]])
    f = make_file()
    bad = np.zeros(100)
    bad[50] = np.nan
    with pytest.raises(NabError, match="row 50"):
        score_file(f, bad, STANDARD, 0.5)
    with pytest.raises(NabError, match=r"\[0, 1\]"):
        score_file(f, np.full(100, 1.5), STANDARD, 0.5)


def test_point_label_file_is_refused_with_a_hint(tmp_path) -> None:
    path = tmp_path / "combined_labels.json"
    path.write_text(json.dumps({"c/f.csv": ["2020-01-01 00:00:00"]}))
    with pytest.raises(NabError, match=r"combined_windows\.json"):
        read_windows(path)


def test_missing_corpus_names_the_flag(tmp_path) -> None:
    with pytest.raises(NabError, match="--data-dir"):
        resolve_nab_dir(tmp_path / "nope")


def test_results_round_trip_in_nab_layout(tmp_path) -> None:
    f = make_file(key="realX/my_file.csv")
    scores = np.random.default_rng(0).random(100)
    path = write_results(tmp_path, "gru", f, np.arange(100.0), scores)
    assert path == tmp_path / "gru" / "realX" / "gru_my_file.csv"
    assert path == results_path(tmp_path, "gru", f.key)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["timestamp", "value", "anomaly_score", "label"]
    assert frame["label"].sum() == 10
    back = read_results(tmp_path, "gru", [f])[f.key]
    assert np.array_equal(back, scores)


@pytest.fixture(scope="module")
def subset():
    return load_corpus(resolve_nab_dir())


# NAB's published per-file standard scores of windowedGaussian at its corpus threshold 1.0
# (results/windowedGaussian/windowedGaussian_standard_scores.csv, NAB v1.1), our 31 files.
NAB_WINDOWED_GAUSSIAN_STANDARD = {
    "artificialNoAnomaly/art_daily_no_noise.csv": 0.0,
    "artificialNoAnomaly/art_daily_perfect_square_wave.csv": 0.0,
    "artificialNoAnomaly/art_daily_small_noise.csv": 0.0,
    "artificialNoAnomaly/art_flatline.csv": 0.0,
    "artificialNoAnomaly/art_noisy.csv": 0.0,
    "artificialWithAnomaly/art_daily_flatmiddle.csv": -1.0,
    "artificialWithAnomaly/art_daily_jumpsdown.csv": -1.0,
    "artificialWithAnomaly/art_daily_jumpsup.csv": -1.0,
    "artificialWithAnomaly/art_daily_nojump.csv": -1.0,
    "artificialWithAnomaly/art_increase_spike_density.csv": -1.0,
    "artificialWithAnomaly/art_load_balancer_spikes.csv": -0.6924446095227346,
    "realAdExchange/exchange-2_cpc_results.csv": -1.0,
    "realAdExchange/exchange-2_cpm_results.csv": -2.0,
    "realAdExchange/exchange-3_cpc_results.csv": 2.5026632611866138,
    "realAdExchange/exchange-3_cpm_results.csv": 0.862098587352162,
    "realAdExchange/exchange-4_cpc_results.csv": 0.2922884634276035,
    "realAdExchange/exchange-4_cpm_results.csv": 1.274710362684976,
    "realKnownCause/ambient_temperature_system_failure.csv": -2.0,
    "realKnownCause/cpu_utilization_asg_misconfiguration.csv": -1.11,
    "realKnownCause/ec2_request_latency_system_failure.csv": -0.06591011872780705,
    "realKnownCause/machine_temperature_system_failure.csv": -4.0,
    "realKnownCause/nyc_taxi.csv": -5.0,
    "realKnownCause/rogue_agent_key_hold.csv": -2.44,
    "realKnownCause/rogue_agent_key_updown.csv": -1.3964908955014117,
    "realTraffic/TravelTime_387.csv": -1.7959813307852819,
    "realTraffic/TravelTime_451.csv": -1.0,
    "realTraffic/occupancy_6005.csv": -1.0,
    "realTraffic/occupancy_t4013.csv": 1.725221520228401,
    "realTraffic/speed_6005.csv": -1.0,
    "realTraffic/speed_7578.csv": -4.0,
    "realTraffic/speed_t4013.csv": -2.0,
}


@pytest.mark.timeout(120)
def test_reproduces_nab_published_per_file_scores_of_windowed_gaussian(subset) -> None:
    assert sorted(f.key for f in subset.files) == sorted(NAB_WINDOWED_GAUSSIAN_STANDARD)
    for f in subset.files:
        scores = windowed_gaussian(subset.values[f.key], one_sided=True, storage_digits=12)
        got = score_file(f, scores, STANDARD, 1.0)
        assert got.raw == pytest.approx(NAB_WINDOWED_GAUSSIAN_STANDARD[f.key], abs=1e-9), f.key


@pytest.mark.timeout(120)
def test_reproduces_reference_normalised_scores_of_windowed_gaussian_on_the_subset(subset) -> None:
    # ../shared/data/nab/README.md: Windowed Gaussian 37.70 / 32.72 / 40.86 on these 31 files.
    scores = {f.key: windowed_gaussian(subset.values[f.key], one_sided=False) for f in subset.files}
    result = score_corpus(subset.files, scores)
    assert result["standard"].normalized == pytest.approx(37.70, abs=0.01)
    assert result["reward_low_FP_rate"].normalized == pytest.approx(32.72, abs=0.01)
    assert result["reward_low_FN_rate"].normalized == pytest.approx(40.86, abs=0.01)
    assert result["standard"].perfect == 53.0 and result["standard"].null == -53.0


def test_equal_totals_keep_the_higher_threshold_as_nab_does() -> None:
    f = make_file()
    scores = np.zeros(100)
    scores[40], scores[45] = 0.9, 0.5  # the second detection adds nothing
    assert score_corpus([f], {f.key: scores})["standard"].threshold == 0.9


def test_likelihood_squash_is_causal_and_in_unit_range() -> None:
    from streamwatch.evaluate.squash import likelihood

    rng = np.random.default_rng(7)
    raw = np.abs(rng.normal(1.0, 0.3, 3000))
    raw[2000:2010] += 6.0
    raw[[50, 700]] = np.nan
    full = likelihood(raw)
    assert ((full >= 0) & (full <= 1)).all()
    for k in (1, 99, 101, 1500, 2005):
        assert np.array_equal(likelihood(raw[:k]), full[:k])
    assert full[:100].max() == 0.0  # not enough history yet
    assert full[2000:2010].max() > 0.9 > full[1000:1900].max()


def test_ratio_squash_is_one_half_at_the_threshold() -> None:
    from streamwatch.evaluate.squash import ratio

    out = ratio(np.array([0.0, 1.0, 3.0, 2.0]), np.array([1.0, 1.0, 1.0, np.nan]))
    assert out.tolist() == [0.0, 0.5, 0.75, 0.0]


def test_recent_squash_is_causal_ranks_spikes_and_skips_ignored_rows() -> None:
    from streamwatch.evaluate.squash import recent

    rng = np.random.default_rng(11)
    raw = np.abs(rng.normal(1.0, 0.3, 2000))
    raw[:3] = 1e5  # an untrained model's first scores
    raw[1500] = 9.0
    ignore = np.arange(2000) < 30
    full = recent(raw, ignore=ignore)
    for k in (1, 49, 80, 1500, 1501):
        assert np.array_equal(recent(raw[:k], ignore=ignore[:k]), full[:k])
    assert ((full >= 0) & (full < 1)).all()
    assert full[:80].max() == 0.0  # 50 usable rows of history needed, warm-up rows excluded
    assert full[1500] == full.max() > 0.9
    polluted = recent(raw)  # without the warm-up mask the 1e5 values flatten everything
    assert polluted[1500] < full[1500]


def test_episodes_keep_only_rows_that_beat_the_preceding_hold_and_are_causal() -> None:
    from streamwatch.evaluate.squash import episodes

    rng = np.random.default_rng(5)
    score = rng.uniform(0.0, 1.0, 3000)
    ts = np.cumsum(rng.choice([0.0, 60.0, 300.0], 3000))  # repeats and gaps
    ts[1000:1010] -= 5_000.0  # a clock that goes back
    full = episodes(score, ts, hold_s=3600.0)
    for k in (1, 2, 999, 1005, 2500):
        assert np.array_equal(episodes(score[:k], ts[:k], 3600.0), full[:k])
    clock = np.maximum.accumulate(ts)
    for i in rng.choice(3000, 200, replace=False).tolist():
        before = score[:i][clock[:i] > clock[i] - 3600.0]
        kept = before.size == 0 or score[i] > before.max()
        assert full[i] == (score[i] if kept else 0.0)
    assert np.array_equal(episodes(score, ts, 0.0), score)
    with pytest.raises(ValueError, match="hold_s"):
        episodes(score, ts, -1.0)
