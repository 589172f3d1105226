"""River baselines behind the Scorer interface and inside the detection engine."""

from __future__ import annotations

import numpy as np
import pytest

from streamwatch.detect import baselines
from streamwatch.detect.base import KindBatch, Scorer
from streamwatch.detect.config import DetectorConfig
from streamwatch.detect.detector import StreamDetector
from streamwatch.errors import ConfigError, StreamwatchError
from streamwatch.kinds import ICU, get_kind
from streamwatch.schema import Reading

ICU_KIND = get_kind(ICU)
NORMAL = np.array([75.0, 97.0, 15.0, 125.0, 75.0, 92.0, 36.9])
NOISE = np.array([2.0, 0.6, 1.0, 4.0, 3.0, 3.0, 0.05])
NAMES = ("hst", "gauss")


def waves(n: int, streams: int = 3, seed: int = 0, shift: np.ndarray | None = None,
          start: float = 0.0) -> list[KindBatch]:  # fmt: skip
    rng = np.random.default_rng(seed)
    ids = [f"icu/bed-{i}" for i in range(streams)]
    out = []
    for t in range(n):
        values = NORMAL + NOISE * rng.standard_normal((streams, len(NORMAL)))
        if shift is not None:
            values = values + shift
        out.append(KindBatch(ICU_KIND, ids, np.full(streams, start + t), values))
    return out


def feed(scorer: Scorer, batches: list[KindBatch], learn: bool = True) -> None:
    for b in batches:
        scorer.score_many(b)
        scorer.advance_many(b, np.full(len(b), learn))
        scorer.learn_many(b, np.full(len(b), learn))


@pytest.mark.parametrize("name", NAMES)
def test_baselines_implement_the_scorer_protocol_under_their_names(name: str) -> None:
    scorer = baselines.factory(name, seed=3)(ICU_KIND)
    assert isinstance(scorer, Scorer) and scorer.name == name and scorer.kind is ICU_KIND
    assert baselines.factory("zscore")(ICU_KIND).name == "gauss"
    with pytest.raises(ConfigError, match="unknown baseline"):
        baselines.factory("isolation-forest")


@pytest.mark.parametrize("name", NAMES)
def test_scoring_has_no_side_effects(name: str) -> None:
    history = waves(400, seed=1)
    probe = waves(5, seed=2, start=400.0)
    quiet, busy = (baselines.factory(name, seed=3)(ICU_KIND) for _ in range(2))
    feed(quiet, history)
    feed(busy, history)
    for b in waves(50, seed=4, shift=NOISE * 9, start=400.0):
        busy.score_many(b)  # scoring only: must not change anything
    assert busy.version == quiet.version
    for b in probe:
        a, c = quiet.score_many(b), busy.score_many(b)
        np.testing.assert_array_equal(a.score, c.score)
        np.testing.assert_array_equal(a.mean, c.mean)


@pytest.mark.parametrize("name", NAMES)
def test_only_masked_rows_are_learned(name: str) -> None:
    scorer = baselines.factory(name, seed=3)(ICU_KIND)
    feed(scorer, waves(100, seed=5), learn=False)
    assert scorer.version == 0
    assert np.isnan(scorer.score_many(waves(1, seed=6)[0]).mean).all()
    b = waves(1, seed=7)[0]
    scorer.advance_many(b, np.ones(3, bool))
    scorer.learn_many(b, np.array([True, False, True]))
    assert scorer.version == 2


@pytest.mark.parametrize("name", NAMES)
def test_missing_channels_give_finite_scores_and_no_channel_score(name: str) -> None:
    scorer = baselines.factory(name, seed=3)(ICU_KIND)
    feed(scorer, waves(300, seed=8))
    b = waves(1, seed=9, start=300.0)[0]
    values = b.values.copy()
    values[0, :] = np.nan
    values[1, [1, 6]] = np.nan
    sb = scorer.score_many(KindBatch(ICU_KIND, b.stream_ids, b.ts, values))
    assert np.isfinite(sb.score).all()
    assert np.isnan(sb.channel_scores[0]).all() and np.isnan(sb.channel_scores[1, [1, 6]]).all()
    assert np.isfinite(sb.channel_scores[1, [0, 2, 3]]).all()
    assert np.isfinite(sb.mean[1]).all() and (sb.std[1] > 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_shift_scores_higher_and_adapting_accepts_it(name: str) -> None:
    scorer = baselines.factory(name, seed=3)(ICU_KIND)
    feed(scorer, waves(600, seed=10))
    shift = np.zeros(7)
    shift[0], shift[1] = 20.0, -5.0
    normal = scorer.score_many(waves(1, seed=11, start=600.0)[0]).score.mean()
    shifted = waves(40, seed=12, shift=shift, start=600.0)
    feed(scorer, shifted, learn=False)  # seen (advanced) but not learned: an open alert
    before = scorer.score_many(shifted[-1]).score.mean()
    assert before > normal
    scorer.adapt_streams(shifted[-1].stream_ids)
    after = scorer.score_many(waves(1, seed=13, shift=shift, start=640.0)[0]).score.mean()
    assert after < before


@pytest.mark.parametrize("name", NAMES)
def test_baselines_run_behind_the_detector_engine(name: str) -> None:
    config = DetectorConfig(warmup_readings=20, thresholds={"warmup": 150, "risk": 1e-3})
    det = StreamDetector(baselines.factory(name, seed=3), config)
    rng = np.random.default_rng(14)
    readings = []
    for t in range(900):
        values = NORMAL + NOISE * rng.standard_normal(7)
        if t >= 860:
            values[0], values[1] = 95.0, 92.0  # tachycardia + desaturation
        readings.append(Reading("icu/bed-9", ICU, 1000.0 + t,
                                dict(zip(ICU_KIND.channels, values.round(2).tolist(), strict=True))))  # fmt: skip
    scores, alerts = [], []
    for i in range(0, 900, 50):
        s, a = det.process(readings[i : i + 50])
        scores += s
        alerts += a
    assert [s.ts for s in scores] == [r.ts for r in readings]
    assert all(s.model == name for s in scores)
    assert scores[400].threshold is not None and not scores[400].warming_up
    before = np.mean([s.score for s in scores[760:860]])
    during = np.mean([s.score for s in scores[860:]])
    assert during > before
    if name == "gauss":  # HalfSpaceTrees ranks the shift higher, but is a weak detector
        opened = [a for a in alerts if a.event == "open" and a.onset_ts >= 1860.0]
        assert len(opened) == 1 and opened[0].explanation.channels[0].channel in ("hr", "spo2")


@pytest.mark.parametrize("name", NAMES)
def test_baselines_refuse_checkpoints_with_a_clear_error(name: str) -> None:
    scorer = baselines.factory(name)(ICU_KIND)
    for call in (scorer.state_dict, lambda: scorer.export_streams(["a"]),
                 lambda: scorer.load_state_dict({}), lambda: scorer.import_streams({})):  # fmt: skip
        with pytest.raises(baselines.NotCheckpointableError, match="evaluation only"):
            call()
    assert issubclass(baselines.NotCheckpointableError, StreamwatchError)
    assert issubclass(baselines.NotCheckpointableError, NotImplementedError)
    det = StreamDetector({ICU: scorer}, DetectorConfig())
    det.process([Reading("icu/bed-1", ICU, 1.0, dict(zip(ICU_KIND.channels, NORMAL.tolist(),
                                                          strict=True)))])  # fmt: skip
    with pytest.raises(baselines.NotCheckpointableError):
        det.state_dict()
    with pytest.raises(baselines.NotCheckpointableError):
        det.global_state_dict()


@pytest.mark.parametrize("name", NAMES)
def test_forget_streams_drops_their_state(name: str) -> None:
    scorer = baselines.factory(name, seed=3)(ICU_KIND)
    feed(scorer, waves(100, seed=15))
    scorer.forget_streams(["icu/bed-0"])
    sb = scorer.score_many(waves(1, seed=16, start=100.0)[0])
    assert np.isnan(sb.mean[0]).all() and np.isfinite(sb.mean[1]).all()
