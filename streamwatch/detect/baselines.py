"""River baselines behind the ``Scorer`` interface, for side-by-side evaluation.

- ``hst``: ``preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(n_trees=10, height=8,
  window_size=250)``, ONE river model per kind shared by all its streams, fed per-stream
  standardised values ``z = (x - mean) / std`` (exponentially weighted per-stream
  statistics, clipped to +-``clip``), so streams with different baselines share one model.
  A missing channel is fed as z = 0 (the stream's usual value). The score is
  ``-log(1 - hst_score)``: same order, but an open tail for the extreme-value threshold
  (HalfSpaceTrees' own score is bounded by 1, where a fitted tail often ends beyond it).
- ``gauss``: river ``anomaly.GaussianScorer`` per stream and channel (a univariate
  detector: it cannot be shared across streams with different levels); each channel's
  two-sided tail probability ``p = 1 - score`` becomes ``-log p`` and the channels add up
  (Fisher's combination), so one extreme channel is not diluted by quiet ones.

Both are test-then-train like the forecaster: ``score_many`` only calls ``score_one``,
``learn_many`` calls ``learn_one`` on the masked rows only, ``adapt_streams`` re-seeds a
stream from its recent raw readings. Their "forecast" for explanations is the per-stream
mean and standard deviation. Speed: ~30 us per reading for ``hst`` (STACK.md), similar
for ``gauss`` with 7 channels.

Baselines are for evaluation only: river models are Python objects, not tensors, and
checkpoints are read with ``torch.load(weights_only=True)``, so ``state_dict`` and stream
export raise ``NotCheckpointableError``.

>>> from streamwatch.kinds import get_kind
>>> make = factory("gauss")
>>> make(get_kind("univariate")).name
'gauss'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from river import anomaly, compose, preprocessing

from streamwatch.detect.base import KindBatch, ScoreBatch, Scorer
from streamwatch.detect.slots import SlotTable
from streamwatch.errors import ConfigError, StreamwatchError
from streamwatch.kinds import KindSpec


class NotCheckpointableError(StreamwatchError, NotImplementedError):
    """A baseline scorer was asked for checkpoint or hand-over state."""


def _refuse(name: str, what: str) -> NotCheckpointableError:
    return NotCheckpointableError(
        f"the {name!r} river baseline is for evaluation only and has no {what}: river models "
        "are not plain tensors, and checkpoints are read with torch.load(weights_only=True); "
        "run the detector service with the GRU/LSTM forecaster ('gru' or 'lstm')"
    )


class StreamStats:
    """Per-stream EW mean/variance per channel and a ring of recent raw readings."""

    def __init__(self, channels: int, halflife: float = 500.0, recent: int = 64) -> None:
        if halflife < 1 or recent < 2:
            raise ConfigError(f"halflife must be >= 1 (got {halflife}), recent >= 2 (got {recent})")
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife)
        self.recent = recent
        self.table = SlotTable({
            "mean": ((channels,), np.float64, 0.0),
            "var": ((channels,), np.float64, 0.0),
            "n": ((channels,), np.float64, 0.0),
            "ring": ((recent, channels), np.float64, np.nan),
            "pos": ((), np.int64, 0),
        })  # fmt: skip

    def moments(self, stream_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) per row and channel; NaN for unknown streams or < 2 values."""
        rows = self.table.lookup(stream_ids)
        a, safe = self.table.arrays, np.maximum(rows, 0)
        ok = (rows >= 0)[:, None] & (a["n"][safe] >= 2)
        mean = a["mean"][safe]
        std = np.maximum(np.sqrt(a["var"][safe]), np.maximum(1e-6 * np.abs(mean), 1e-9))
        return np.where(ok, mean, np.nan), np.where(ok, std, np.nan)

    def record(self, stream_ids: Sequence[str], values: np.ndarray) -> None:
        slots = self.table.slots(stream_ids)
        a = self.table.arrays
        a["ring"][slots, a["pos"][slots] % self.recent] = values
        a["pos"][slots] += 1

    def learn(self, stream_ids: Sequence[str], values: np.ndarray) -> None:
        """EW update of the observed channels (warm start: plain mean for the first ones)."""
        slots = self.table.slots(stream_ids)
        a = self.table.arrays
        seen = ~np.isnan(values)
        n = a["n"][slots] + seen
        rate = np.where(seen, np.maximum(1.0 / np.maximum(n, 1.0), self.alpha), 0.0)
        delta = np.where(seen, values - a["mean"][slots], 0.0)
        a["mean"][slots] += rate * delta
        a["var"][slots] = (1.0 - rate) * (a["var"][slots] + rate * delta * delta)
        a["n"][slots] = n

    def window(self, stream_id: str) -> np.ndarray:
        """The recent raw readings of one stream, oldest first (rows may hold NaN)."""
        a, slot = self.table.arrays, int(self.table.lookup([stream_id])[0])
        if slot < 0:
            return np.empty((0, a["ring"].shape[-1]))
        pos = int(a["pos"][slot])
        order = (np.arange(pos - min(pos, self.recent), pos)) % self.recent
        return a["ring"][slot, order]

    def reseed(self, stream_id: str) -> None:
        """Statistics from the recent window only (a new regime)."""
        recent = self.window(stream_id)
        slot = int(self.table.lookup([stream_id])[0])
        if slot < 0 or not len(recent):
            return
        a = self.table.arrays
        count = (~np.isnan(recent)).sum(axis=0)
        with np.errstate(invalid="ignore"):
            mean, var = np.nanmean(recent, axis=0), np.nanvar(recent, axis=0)
        keep = count > 0
        a["mean"][slot] = np.where(keep, mean, a["mean"][slot])
        a["var"][slot] = np.where(keep, var, a["var"][slot])
        a["n"][slot] = np.where(keep, count, a["n"][slot])


class _Baseline:
    """What both baselines share: stream statistics, version, no checkpoints."""

    name = "baseline"

    def __init__(self, kind: KindSpec, halflife: float, recent: int) -> None:
        self.kind = kind
        self.stats = StreamStats(len(kind.channels), halflife, recent)
        self._learned = 0

    @property
    def version(self) -> int:
        """Rows learned so far (river models update on every learned reading)."""
        return self._learned

    def advance_many(self, batch: KindBatch, observe: np.ndarray) -> None:
        self.stats.record(batch.stream_ids, batch.values)

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        self.stats.table.forget(stream_ids)

    def export_streams(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        raise _refuse(self.name, "per-stream hand-over state")

    def import_streams(self, state: dict[str, Any]) -> None:
        raise _refuse(self.name, "per-stream hand-over state")

    def state_dict(self) -> dict[str, Any]:
        raise _refuse(self.name, "checkpoint state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise _refuse(self.name, "checkpoint state")


class HalfSpaceTreesScorer(_Baseline):
    """river HalfSpaceTrees behind a MinMaxScaler, on per-stream z-scores (see module)."""

    name = "hst"

    def __init__(self, kind: KindSpec, *, n_trees: int = 10, height: int = 8,
                 window_size: int = 250, seed: int = 0, halflife: float = 500.0,
                 recent: int = 64, clip: float = 8.0) -> None:  # fmt: skip
        if not (1 <= n_trees <= 100 and 1 <= height <= 16 and window_size >= 10 and clip > 0):
            raise ConfigError("HalfSpaceTrees needs 1 <= n_trees <= 100, 1 <= height <= 16, "
                              f"window_size >= 10, clip > 0; got {n_trees}, {height}, "
                              f"{window_size}, {clip}")  # fmt: skip
        super().__init__(kind, halflife, recent)
        self.clip, self.window_size, self.min_count = clip, window_size, 10
        self.model = compose.Pipeline(
            preprocessing.MinMaxScaler(),
            anomaly.HalfSpaceTrees(
                n_trees=n_trees, height=height, window_size=window_size, seed=seed
            ),
        )

    def warming_up(self, stream_ids: Sequence[str]) -> np.ndarray:
        """True until the shared trees have a reference window (HalfSpaceTrees scores 0
        before) and the stream's statistics have ``min_count`` values in some channel."""
        if self._learned < self.window_size:
            return np.ones(len(stream_ids), dtype=bool)
        rows = self.stats.table.lookup(stream_ids)
        counts = self.stats.table.arrays["n"][np.maximum(rows, 0)].max(axis=1)
        return (rows < 0) | (counts < self.min_count)

    def _z(self, batch: KindBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, std = self.stats.moments(batch.stream_ids)
        with np.errstate(invalid="ignore"):
            z = np.clip((batch.values - mean) / std, -self.clip, self.clip)
        return z, mean, std

    def _features(self, z: np.ndarray) -> list[dict[str, float]]:
        chans = self.kind.channels
        rows = np.where(np.isnan(z), 0.0, z).tolist()
        return [dict(zip(chans, row, strict=True)) for row in rows]

    def score_many(self, batch: KindBatch) -> ScoreBatch:
        z, mean, std = self._z(batch)
        score_one = self.model.score_one
        raw = np.fromiter((score_one(x) for x in self._features(z)), dtype=np.float64,
                          count=len(batch))  # fmt: skip
        score = -np.log(np.maximum(1.0 - raw, 1e-9))  # [0, 1) -> [0, inf): an open tail
        return ScoreBatch(score=score, channel_scores=np.abs(z), mean=mean, std=std)

    def learn_many(self, batch: KindBatch, mask: np.ndarray) -> None:
        rows = np.flatnonzero(mask)
        if not len(rows):
            return
        ids = [batch.stream_ids[i] for i in rows.tolist()]
        sub = KindBatch(self.kind, ids, batch.ts[rows], batch.values[rows])
        z, _, _ = self._z(sub)
        for x in self._features(z):
            self.model.learn_one(x)
        self.stats.learn(ids, sub.values)
        self._learned += len(rows)

    def adapt_streams(self, stream_ids: Sequence[str]) -> None:
        for sid in stream_ids:
            self.stats.reseed(sid)


class GaussianScorerBaseline(_Baseline):
    """river GaussianScorer per stream and channel, combined by -sum log p (see module)."""

    name = "gauss"

    def __init__(self, kind: KindSpec, *, window_size: int | None = None,
                 grace_period: int = 30, recent: int = 64) -> None:  # fmt: skip
        if window_size is not None and window_size < 2:
            raise ConfigError(f"window_size must be None or >= 2, got {window_size}")
        if grace_period < 2:
            raise ConfigError(f"grace_period must be >= 2, got {grace_period}")
        super().__init__(kind, 500.0, recent)
        self.window_size, self.grace_period = window_size, grace_period
        self.detectors: dict[str, list[anomaly.GaussianScorer]] = {}

    def warming_up(self, stream_ids: Sequence[str]) -> np.ndarray:
        """True until every channel's Gaussian has passed its grace period (it scores 0
        before), for channels that have data at all."""
        out = np.ones(len(stream_ids), dtype=bool)
        for i, sid in enumerate(stream_ids):
            dets = self.detectors.get(sid)
            if dets is not None:
                gaussians: list[Any] = [d.gaussian for d in dets]
                counts = [int(g.n_samples) for g in gaussians]
                out[i] = any(0 < n < self.grace_period for n in counts) or not any(counts)
        return out

    def _new(self) -> list[anomaly.GaussianScorer]:
        return [anomaly.GaussianScorer(window_size=self.window_size,
                                       grace_period=self.grace_period)
                for _ in self.kind.channels]  # fmt: skip

    def score_many(self, batch: KindBatch) -> ScoreBatch:
        n, c = batch.values.shape
        cs, mean, std = (np.full((n, c), np.nan) for _ in range(3))
        for i, (sid, row) in enumerate(zip(batch.stream_ids, batch.values.tolist(), strict=True)):
            dets = self.detectors.get(sid)
            if dets is None:
                continue
            for j, (det, v) in enumerate(zip(dets, row, strict=True)):
                g: Any = det.gaussian
                if g.n_samples >= 2:
                    mean[i, j], std[i, j] = g.mu, g.sigma
                if v == v:
                    p = 1.0 - det.score_one(None, v)
                    cs[i, j] = -math.log(max(p, 1e-12))
        score = np.where(np.isnan(cs), 0.0, cs).sum(axis=1)
        return ScoreBatch(score=score, channel_scores=cs, mean=mean, std=std)

    def learn_many(self, batch: KindBatch, mask: np.ndarray) -> None:
        for i in np.flatnonzero(mask).tolist():
            sid = batch.stream_ids[i]
            dets = self.detectors.get(sid)
            if dets is None:
                dets = self.detectors[sid] = self._new()
            for det, v in zip(dets, batch.values[i].tolist(), strict=True):
                if v == v:
                    det.learn_one(None, v)
            self._learned += 1

    def adapt_streams(self, stream_ids: Sequence[str]) -> None:
        for sid in stream_ids:
            recent = self.stats.window(sid)
            if not len(recent):
                continue
            dets = self.detectors[sid] = self._new()
            for row in recent.tolist():
                for det, v in zip(dets, row, strict=True):
                    if v == v:
                        det.learn_one(None, v)

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        super().forget_streams(stream_ids)
        for sid in stream_ids:
            self.detectors.pop(sid, None)


BASELINES: dict[str, type[_Baseline]] = {"hst": HalfSpaceTreesScorer,
                                         "gauss": GaussianScorerBaseline}  # fmt: skip
ALIASES = {"zscore": "gauss"}
"""Other names accepted by ``factory`` (``zscore``: what the evaluation registry calls it)."""


def factory(name: str, *, seed: int = 0, **options: Any) -> Callable[[KindSpec], Scorer]:
    """A ``KindSpec -> Scorer`` factory for the baseline ``name`` ('hst' or 'gauss')."""
    key = ALIASES.get(name, name)
    cls = BASELINES.get(key)
    if cls is None:
        raise ConfigError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    if cls is HalfSpaceTreesScorer:
        options.setdefault("seed", seed)

    def make(kind: KindSpec) -> Scorer:
        return cls(kind, **options)  # type: ignore[return-value]

    return make
