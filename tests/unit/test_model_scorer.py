"""ForecastScorer behaviour through the wave protocol, with a tiny seeded model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from numpy.typing import ArrayLike

from streamwatch.detect.base import KindBatch, ScoreBatch, Scorer
from streamwatch.detect.forecast_scorer import ForecastScorer
from streamwatch.errors import CheckpointError, ConfigError, StreamwatchError
from streamwatch.kinds import KindSpec, get_kind
from streamwatch.model.config import ModelConfig
from streamwatch.model.scoring import chi2_surprise

UNI = get_kind("univariate")
TRI = KindSpec(name="tri", channels=("a", "b", "c"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**overrides: object) -> ModelConfig:
    fields: dict[str, object] = dict(hidden_size=8, window=8, burn_in=2, batch_size=16,
                                     train_every=8, replay_every=1, warmup=5, lr=5e-3)
    fields.update(overrides)
    return ModelConfig.build(**fields)


def wave(kind: KindSpec, ids: Sequence[str], t: float, values: ArrayLike) -> KindBatch:
    values = np.asarray(values, dtype=np.float64).reshape(len(ids), len(kind.channels))
    return KindBatch(kind, list(ids), np.full(len(ids), float(t)), values)


def step(scorer: ForecastScorer, batch: KindBatch, ok: np.ndarray | None = None) -> ScoreBatch:
    """Test-then-train for one wave; ``ok`` False rows are neither observed nor learned."""
    if ok is None:
        ok = np.ones(len(batch), dtype=bool)
    out = scorer.score_many(batch)
    scorer.advance_many(batch, ok)
    scorer.learn_many(batch, ok)
    return out


def sine(t: int, n: int, rng: np.random.Generator) -> np.ndarray:
    phase = np.arange(n) * 0.7
    return 10.0 + 3.0 * np.sin(2 * np.pi * t / 20.0 + phase) + 0.1 * rng.standard_normal(n)


def test_forecast_scorer_satisfies_the_scorer_protocol() -> None:
    assert isinstance(ForecastScorer(UNI, tiny()), Scorer)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_forecast_learns_a_noisy_sine_and_its_nll_falls(cell: str) -> None:
    cfg = tiny(cell=cell, hidden_size=16, window=16, burn_in=4, level_score=False)
    scorer = ForecastScorer(UNI, cfg)
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(8)]
    nll = []
    for t in range(400):
        out = step(scorer, wave(UNI, ids, t, sine(t, 8, rng)))
        nll.append(float(np.nanmean(out.channel_scores)) if t >= 20 else np.nan)
    early, late = np.nanmean(nll[20:100]), np.nanmean(nll[-80:])
    assert scorer.version > 350  # one step per 8 learned readings, none before warm-up
    assert late < early - 1.0, (early, late)
    assert late < -0.5  # std well below the signal's (normalised) spread of ~1
    # calibrated enough that the combined surprise averages near its nominal 1
    assert 0.3 < np.mean([scorer.score_many(wave(UNI, ids, 400, sine(400, 8, rng))).score]) < 3


def test_a_wave_of_many_streams_scores_like_each_stream_alone() -> None:
    cfg = tiny(train_every=10**9)  # optimiser steps would happen at other points
    together, alone = ForecastScorer(TRI, cfg), ForecastScorer(TRI, cfg)
    rng = np.random.default_rng(1)
    ids = [f"m{i}" for i in range(6)]
    for t in range(40):
        values = 20 + rng.standard_normal((6, 3))
        values[rng.random((6, 3)) < 0.15] = np.nan
        ok = rng.random(6) > 0.1
        a = step(together, wave(TRI, ids, t, values), ok)
        for i, sid in enumerate(ids):
            b = step(alone, wave(TRI, [sid], t, values[i]), ok[i:i + 1])
            np.testing.assert_allclose(a.score[i], b.score[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(a.mean[i], b.mean[0], rtol=1e-5, equal_nan=True)
            np.testing.assert_allclose(a.std[i], b.std[0], rtol=1e-5, equal_nan=True)


def test_same_seed_same_input_gives_identical_scores_and_weights() -> None:
    def run(seed: int) -> tuple[np.ndarray, list[torch.Tensor]]:
        scorer = ForecastScorer(TRI, tiny(seed=seed, dropout=0.3, layers=2))
        rng = np.random.default_rng(5)
        scores = [step(scorer, wave(TRI, ["x", "y"], t, rng.normal(size=6))).score
                  for t in range(60)]
        return np.array(scores), [p.detach().clone() for p in scorer.model.parameters()]

    (s1, p1), (s2, p2), (s3, _) = run(3), run(3), run(4)
    assert np.array_equal(s1, s2)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))
    assert not np.array_equal(s1, s3)


def test_score_many_is_pure_and_allocates_nothing() -> None:
    scorer = ForecastScorer(TRI, tiny())
    for t in range(12):
        step(scorer, wave(TRI, ["a"], t, [1.0 + t % 3, 2.0, 3.0]))
    before = scorer.state_dict()
    batch = wave(TRI, ["a", "new"], 12, [[9.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    first, second = scorer.score_many(batch), scorer.score_many(batch)
    assert np.array_equal(first.score, second.score)
    assert scorer.n_streams == 1
    after = scorer.state_dict()
    for key, value in before["streams"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value.nan_to_num(-1), after["streams"][key].nan_to_num(-1)), key
    assert first.score[1] == 0.0 and np.isnan(first.mean[1]).all()  # unknown stream


def test_first_reading_scores_zero_and_channels_without_statistics_are_nan() -> None:
    scorer = ForecastScorer(TRI, tiny())
    for t in (0, 1):  # statistics are learned after the first reading's advance
        out = step(scorer, wave(TRI, ["a"], t, [1.0 + t, np.nan, 2.0 + t]))
        assert out.score[0] == 0.0 and np.isnan(out.channel_scores).all()
    out = step(scorer, wave(TRI, ["a"], 2, [1.5, 5.0, 2.5]))
    assert np.isfinite(out.channel_scores[0, [0, 2]]).all()
    assert np.isnan(out.channel_scores[0, 1]) and np.isnan(out.mean[0, 1])  # b never seen
    assert np.isfinite(out.score[0])


def test_missing_channels_are_nan_per_channel_and_all_missing_scores_zero() -> None:
    scorer = ForecastScorer(TRI, tiny())
    rng = np.random.default_rng(2)
    for t in range(30):
        step(scorer, wave(TRI, ["a"], t, 5 + rng.standard_normal(3)))
    out = step(scorer, wave(TRI, ["a"], 30, [5.0, np.nan, 5.0]))
    assert np.isnan(out.channel_scores[0, 1]) and np.isfinite(out.channel_scores[0, [0, 2]]).all()
    assert np.isfinite(out.mean[0]).all() and (out.std[0] > 0).all()  # forecast still there
    out = step(scorer, wave(TRI, ["a"], 31, [np.nan, np.nan, np.nan]))
    assert out.score[0] == 0.0 and np.isnan(out.channel_scores).all()


def test_combined_score_is_the_chi2_surprise_of_the_forecast_and_of_the_baseline() -> None:
    with_level = ForecastScorer(TRI, tiny())
    rng = np.random.default_rng(3)
    for t in range(30):
        step(with_level, wave(TRI, ["a"], t, 5 + rng.standard_normal(3)))
    forecast_only = ForecastScorer(TRI, tiny(level_score=False))
    forecast_only.load_state_dict(with_level.state_dict() | {
        "config": forecast_only.config.model_dump()})
    values = np.array([[5.0, np.nan, 9.0]])
    batch = wave(TRI, ["a"], 30, values)
    f, both = forecast_only.score_many(batch), with_level.score_many(batch)
    z = (values - f.mean) / f.std
    s_f = chi2_surprise(np.array([np.nansum(z * z)]), np.array([2]))
    np.testing.assert_allclose(f.score, s_f, rtol=1e-9)
    row = with_level.state.rows["a"]
    mean = with_level.state["norm_mean"][row]
    std = np.sqrt(with_level.state["norm_var"][row])
    zl = (values - mean) / std
    s_l = chi2_surprise(np.array([np.nansum(zl * zl)]), np.array([2]))
    np.testing.assert_allclose(both.score, np.maximum(s_f, s_l), rtol=1e-9)
    assert np.isnan(both.channel_scores[0, 1])
    nll_l = 0.5 * (np.log(2 * np.pi) + zl[0, 2] ** 2)
    assert both.channel_scores[0, 2] == pytest.approx(max(f.channel_scores[0, 2], nll_l))
    np.testing.assert_array_equal(f.mean, both.mean)  # the forecast itself is the same


def test_level_term_catches_a_fast_ramp_the_one_step_forecast_follows() -> None:
    """A fall of 20 noise-sds over 100 readings: 0.2 sd per step, which the one-step
    forecast follows, but far from the stream's baseline. Learning is gated as the
    detector would (a reading scoring >= 15 neither teaches nor is observed)."""
    rng = np.random.default_rng(2)
    base = [100 + rng.standard_normal() for _ in range(400)]
    ramp = [100 - 0.2 * i + rng.standard_normal() for i in range(1, 101)]
    flagged = {}
    for level in (False, True):
        scorer = ForecastScorer(UNI, tiny(level_score=level, hidden_size=16))
        for t, v in enumerate(base):
            step(scorer, wave(UNI, ["s"], t, [v]))
        hits = []
        for i, v in enumerate(ramp):
            batch = wave(UNI, ["s"], 400 + i, [v])
            ok = scorer.score_many(batch).score < 15
            step(scorer, batch, ok)
            hits.append(not ok[0])
        flagged[level] = np.array(hits)
    assert flagged[False].mean() < 0.05, "the forecast alone follows this ramp"
    assert flagged[True].mean() > 0.5 and np.argmax(flagged[True]) < 50


def test_duplicate_late_and_irregular_timestamps_are_fed_with_gap_zero_and_counted() -> None:
    scorer = ForecastScorer(UNI, tiny())
    for t in (0.0, 1.0, 2.5, 2.5, 1.0, 7200.0, 7201.0):
        out = step(scorer, KindBatch(UNI, ["a"], np.array([t]), np.array([[3.0]])))
        assert np.isfinite(out.score).all()
    assert scorer.late_readings == 2  # the duplicate 2.5 and the late 1.0
    row = scorer.state.rows["a"]
    assert scorer.state["last_ts"][row] == 7201.0
    gaps = scorer.state.ring_read("ring_gap", np.array([row]))[0, -7:]
    assert gaps[3] == 0.0 and gaps[4] == 0.0  # duplicate and late
    assert gaps[5] == pytest.approx(1.0)  # 7198 s clipped at max_gap_s=3600


def test_anomalous_rows_never_reach_the_normaliser_the_replay_or_the_weights() -> None:
    """Poisoning: rows the detector masks out must leave learning exactly as if their
    values had never arrived (here: replaced by all-missing readings)."""
    cfg = tiny()
    poisoned, clean = ForecastScorer(UNI, cfg), ForecastScorer(UNI, cfg)
    rng = np.random.default_rng(4)
    for t in range(200):
        value = float(sine(t, 1, rng)[0])
        anomalous = 80 <= t < 150
        ok = np.array([not anomalous])
        step(poisoned, wave(UNI, ["s"], t, [1000.0 if anomalous else value]), ok)
        step(clean, wave(UNI, ["s"], t, [np.nan if anomalous else value]), ok)
        if anomalous:
            row = poisoned.state.rows["s"]
            assert poisoned.state["norm_mean"][row, 0] < 20.0
    assert poisoned.version == clean.version > 0
    p, c = poisoned.trainer.replay, clean.trainer.replay
    assert np.array_equal(p.x[: len(p)], c.x[: len(c)])
    assert np.array_equal(p.y[: len(p)], c.y[: len(c)], equal_nan=True)
    assert np.nanmax(np.abs(p.y[: len(p)])) < 5.0  # no target anywhere near 1000
    for a, b in zip(poisoned.model.parameters(), clean.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for name in ("norm_mean", "norm_var", "norm_n"):
        assert np.array_equal(poisoned.state[name], clean.state[name])


def test_unobserved_readings_leave_the_forecast_freewheeling() -> None:
    scorer = ForecastScorer(UNI, tiny(train_every=10**9))
    rng = np.random.default_rng(6)
    for t in range(40):
        step(scorer, wave(UNI, ["s"], t, [10 + rng.standard_normal()]))
    twin = ForecastScorer(UNI, tiny(train_every=10**9))
    twin.load_state_dict(scorer.state_dict())
    for t in range(40, 60):  # an excursion the detector flagged: not observed
        out = step(scorer, wave(UNI, ["s"], t, [500.0]), np.array([False]))
        ref = step(twin, wave(UNI, ["s"], t, [np.nan]), np.array([False]))
        np.testing.assert_array_equal(out.mean, ref.mean)
        assert abs(out.mean[0, 0] - 10) < 5
    assert out.score[0] > 50  # still surprising: the state did not follow the anomaly


def test_adapt_streams_makes_a_lasting_level_shift_unsurprising() -> None:
    scorer = ForecastScorer(UNI, tiny(hidden_size=16))
    rng = np.random.default_rng(7)
    for t in range(300):
        step(scorer, wave(UNI, ["s", "other"], t, 10 + 0.5 * rng.standard_normal(2)))
    shifted: list[float] = []
    for t in range(300, 330):  # the detector would not let these teach
        batch = wave(UNI, ["s", "other"], t, [30 + 0.5 * rng.standard_normal(),
                                              10 + 0.5 * rng.standard_normal()])
        shifted.append(float(step(scorer, batch, np.array([False, True])).score[0]))
    assert min(shifted) > 20
    other_before = scorer.export_streams(["other"])
    scorer.adapt_streams(["s", "unknown-id"])
    other_after = scorer.export_streams(["other"])
    assert torch.equal(other_before["hidden"], other_after["hidden"])  # others untouched
    after = [float(step(scorer, wave(UNI, ["s", "other"], t, [30 + 0.5 * rng.standard_normal(),
                                                              10.0])).score[0])
             for t in range(330, 350)]
    assert np.median(after) < 3, after
    assert abs(scorer.state["norm_mean"][scorer.state.rows["s"], 0] - 30) < 2


def test_learn_before_advance_is_an_error_naming_the_stream() -> None:
    scorer = ForecastScorer(UNI, tiny())
    batch = wave(UNI, ["a"], 0, [1.0])
    with pytest.raises(StreamwatchError, match="'a'"):
        scorer.learn_many(batch, np.array([True]))
    scorer.advance_many(batch, np.array([True]))
    scorer.learn_many(batch, np.array([True]))
    with pytest.raises(StreamwatchError, match="learn_many before advance_many"):
        scorer.learn_many(batch, np.array([True]))  # the same reading twice


def test_bad_wave_arguments_are_clear_errors() -> None:
    scorer = ForecastScorer(TRI, tiny())
    with pytest.raises(StreamwatchError, match="at most once"):
        scorer.advance_many(wave(TRI, ["a", "a"], 0, np.ones((2, 3))), np.ones(2, bool))
    with pytest.raises(StreamwatchError, match=r"expected \(1, 3\)"):
        scorer.score_many(KindBatch(TRI, ["a"], np.zeros(1), np.ones((1, 2))))
    with pytest.raises(StreamwatchError, match="bool array"):
        scorer.advance_many(wave(TRI, ["a"], 0, np.ones(3)), np.ones(1))


def test_rows_grow_past_the_initial_capacity_and_forgotten_rows_are_reused() -> None:
    scorer = ForecastScorer(UNI, tiny())
    ids = [f"s{i}" for i in range(150)]
    step(scorer, wave(UNI, ids, 0, np.arange(150.0)))
    assert scorer.n_streams == 150 and scorer.state.capacity == 256
    scorer.forget_streams(ids[:100])
    assert scorer.n_streams == 50
    step(scorer, wave(UNI, [f"n{i}" for i in range(100)], 1, np.zeros(100)))
    assert scorer.state.capacity == 256 and scorer.n_streams == 150
    out = scorer.score_many(wave(UNI, ["s0", "s120"], 2, [0.0, 120.0]))
    assert out.score[0] == 0.0 and np.isfinite(out.score[1])  # s0 forgotten: fresh


def test_exported_streams_continue_identically_in_another_scorer() -> None:
    cfg = tiny()
    a = ForecastScorer(TRI, cfg)
    rng = np.random.default_rng(8)
    ids = ["p", "q", "r"]
    for t in range(40):
        step(a, wave(TRI, ids, t, rng.normal(size=(3, 3))))
    b = ForecastScorer(TRI, cfg)
    b.load_state_dict(a.state_dict())
    b.forget_streams(["q"])
    assert b.score_many(wave(TRI, ["q"], 40, np.zeros(3))).score[0] == 0.0
    b.import_streams(a.export_streams(["q", "not-there"]))
    batch = wave(TRI, ids, 40, rng.normal(size=(3, 3)))
    np.testing.assert_array_equal(a.score_many(batch).score, b.score_many(batch).score)
    bad = a.export_streams(["q"])
    bad["ring_raw"] = bad["ring_raw"][:, :3]
    with pytest.raises(CheckpointError, match="ring_raw"):
        b.import_streams(bad)


def test_warming_up_and_readings_seen_follow_the_stream_count() -> None:
    scorer = ForecastScorer(UNI, tiny(warmup=3))
    for t in range(4):
        assert scorer.warming_up(["a", "b"]).tolist() == [t < 3, True]
        step(scorer, wave(UNI, ["a"], t, [1.0]))
    assert scorer.readings_seen(["a", "b"]).tolist() == [4, 0]


def test_a_non_finite_training_batch_is_skipped_and_weights_stay_finite() -> None:
    scorer = ForecastScorer(UNI, tiny())
    before = [p.detach().clone() for p in scorer.model.parameters()]
    x = np.zeros((4, 8, scorer.model.input_size), dtype=np.float32)
    x[:, 3, 0] = np.inf  # would turn every weight into NaN
    scorer.trainer.replay.add(x, np.zeros((4, 8, 1), dtype=np.float32))
    assert scorer.trainer.step() is None
    assert scorer.skipped_steps == 1 and scorer.version == 0
    for a, b in zip(before, scorer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_without_streams_restores_the_global_model_only() -> None:
    a = ForecastScorer(UNI, tiny())
    for t in range(30):
        step(a, wave(UNI, ["s", "u"], t, [float(t % 4), 1.0]))
    b = ForecastScorer(UNI, tiny())
    b.load_state_dict(a.state_dict(include_streams=False))
    assert b.n_streams == 0 and b.version == a.version > 0
    b.import_streams(a.export_streams(["s", "u"]))
    batch = wave(UNI, ["s", "u"], 30, [2.0, 1.0])
    np.testing.assert_array_equal(a.score_many(batch).score, b.score_many(batch).score)


def test_kind_overrides_give_each_kind_its_settings_and_bad_ones_name_the_field() -> None:
    machine, icu = get_kind("machine"), get_kind("icu_vitals")
    default = ModelConfig()
    assert ForecastScorer(machine, default).config.level_score is False  # the default override
    assert ForecastScorer(icu, default).config.level_score is True
    mine = ModelConfig.build(kind_overrides={"icu_vitals": {"hidden_size": 6}})
    scorer = ForecastScorer(icu, mine)
    assert scorer.config.hidden_size == 6 and scorer.config.kind_overrides == {}
    assert ForecastScorer(machine, mine).config.level_score is True  # replaced, not merged
    b = ForecastScorer(icu, scorer.config)  # a checkpoint of the effective settings loads
    b.load_state_dict(scorer.state_dict())
    with pytest.raises(ConfigError, match=r"kind_overrides\.machine: .*hidden_size"):
        ModelConfig.build(kind_overrides={"machine": {"hidden_size": 0}})


def test_deferred_training_waits_until_a_step_is_owed_then_adds_in_ts_stream_order() -> None:
    """Deferred, with waves in stream order s2, s1: nothing reaches the buffer before a
    step is owed; then the buffer and the step are those of an immediate scorer fed the
    same readings in (ts, stream) order, s1 before s2."""
    config = tiny(train_every=20, warmup=2)
    scorer, ordered = ForecastScorer(TRI, config), ForecastScorer(TRI, config)
    scorer.defer_training = True
    rng = np.random.default_rng(0)
    for t in range(10):  # 2 streams: the 10th wave makes 20 readings learned, one step
        values = rng.normal(size=(2, 3))
        step(scorer, wave(TRI, ["s2", "s1"], t, values))
        step(ordered, wave(TRI, ["s1", "s2"], t, values[::-1]))
        if t < 9:
            assert scorer.train_pending() == 0
    assert len(scorer.trainer.replay) == 0 and scorer.version == 0 and ordered.version == 1
    assert scorer.training_room() == 0
    assert scorer.train_pending() == 1 and scorer.version == 1
    assert scorer.trainer.replay.added == 2 * (10 - 2 + 1)  # a window a reading after warm-up
    np.testing.assert_array_equal(scorer.trainer.replay.x, ordered.trainer.replay.x)
    for a, b in zip(scorer.model.parameters(), ordered.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert scorer.training_room() == 20 and scorer.train_pending() == 0


def test_staged_windows_stay_bounded_and_train_as_if_all_were_kept() -> None:
    """While no step is owed (here: ``train_every`` far above the buffer), staged windows
    are trimmed to the newest ``replay_capacity``: the buffer, the weights after the step
    and the staged memory are those of keeping every window, with a bound."""
    config = tiny(train_every=120, replay_capacity=16, warmup=2)
    trimmed, kept = ForecastScorer(TRI, config), ForecastScorer(TRI, config)
    kept._trim_staged = lambda: None  # type: ignore[method-assign]
    rng = np.random.default_rng(4)
    ids = ["c", "a", "b"]
    most = 0
    for t in range(40):
        values = rng.normal(size=9)
        for scorer in (trimmed, kept):
            scorer.defer_training = True
            step(scorer, wave(TRI, ids, t, values))
        most = max(most, trimmed._staged_n)
    assert kept._staged_n > 2 * 16 >= most
    assert trimmed.train_pending() == kept.train_pending() == 1
    np.testing.assert_array_equal(trimmed.trainer.replay.x, kept.trainer.replay.x)
    np.testing.assert_array_equal(trimmed.trainer.replay.y, kept.trainer.replay.y)
    assert trimmed.trainer.replay.added == kept.trainer.replay.added
    for a, b in zip(trimmed.model.parameters(), kept.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_replay_snapshots_never_change_and_reuse_memory_once_let_go() -> None:
    from streamwatch.model.trainer import ReplayBuffer

    replay = ReplayBuffer(capacity=16, steps=4, n_features=3, n_channels=2)
    replay.add(np.ones((8, 4, 3), np.float32), np.ones((8, 4, 2), np.float32))
    first = replay.state_dict()
    replay.add(np.full((8, 4, 3), 5.0, np.float32), np.zeros((8, 4, 2), np.float32))
    second = replay.state_dict()  # ``first`` is alive: its memory is left alone
    assert first["x"].data_ptr() != second["x"].data_ptr()
    assert float(first["x"].max()) == 1.0 and first["filled"] == 8
    assert float(second["x"].max()) == 5.0 and second["filled"] == 16
    view = second["y"][:2]  # a view keeps its snapshot's memory held too
    where = second["x"].data_ptr()
    del first, second
    third = replay.state_dict()
    assert third["x"].data_ptr() == where  # let go of: copied into again
    assert third["y"].data_ptr() != view.data_ptr() and float(view.abs().max()) == 1.0
    restored = ReplayBuffer(capacity=16, steps=4, n_features=3, n_channels=2)
    restored.load_state_dict(third)
    assert np.array_equal(restored.x, replay.x) and np.array_equal(restored.y, replay.y, equal_nan=True)
