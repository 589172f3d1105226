"""Interfaces shared by the forecaster, the river baselines and the detector around them.

A *scorer* turns a micro-batch of one kind's readings into anomaly scores (the GRU/LSTM
forecaster, or a river baseline). The *detector* wraps any scorer with the same adaptive
thresholds, clinical hard limits and alert state machine, so every benchmark compares
like with like.

Test-then-train: ``score_many`` runs first on every reading; the detector then decides
which readings may teach the scorer (not anomalous, not inside an open alert) and calls
``advance_many``/``learn_many`` with that mask (see ``Scorer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streamwatch.kinds import KindSpec
from streamwatch.schema import Alert, Reading, Score


@dataclass(frozen=True)
class KindBatch:
    """A micro-batch of readings of one kind, in arrival order.

    ``values[i, c]`` is NaN where channel ``c`` of reading ``i`` is missing or null.
    One stream may appear several times; its rows are in timestamp order.
    """

    kind: KindSpec
    stream_ids: list[str]
    ts: np.ndarray  # (N,) float64 epoch seconds
    values: np.ndarray  # (N, C) float64

    @classmethod
    def from_readings(cls, kind: KindSpec, readings: Sequence[Reading]) -> KindBatch:
        n, channels = len(readings), kind.channels
        values = np.full((n, len(channels)), np.nan)
        for i, reading in enumerate(readings):
            for c, channel in enumerate(channels):
                value = reading.values.get(channel)
                if value is not None:
                    values[i, c] = value
        return cls(
            kind=kind,
            stream_ids=[r.stream_id for r in readings],
            ts=np.fromiter((r.ts for r in readings), dtype=np.float64, count=n),
            values=values,
        )

    def __len__(self) -> int:
        return len(self.stream_ids)


@dataclass(frozen=True)
class ScoreBatch:
    """What a scorer says about each row of a ``KindBatch`` (same order).

    ``score`` is the combined anomaly score (higher = more anomalous);
    ``channel_scores`` the per-channel part (NaN where missing or not available);
    ``mean``/``std`` the forecast in original units (NaN for scorers without a forecast).
    """

    score: np.ndarray  # (N,)
    channel_scores: np.ndarray  # (N, C)
    mean: np.ndarray  # (N, C)
    std: np.ndarray  # (N, C)


@runtime_checkable
class Scorer(Protocol):
    """Scores one kind's readings; learns only from what the detector lets through.

    The detector drives a scorer one *wave* at a time: a wave holds at most one reading
    per stream (a stream with three readings in a micro-batch takes part in three
    consecutive waves, in timestamp order). Per wave:

    1. ``score_many(wave)``: pure. Forecast from the current per-stream state, score.
    2. the detector thresholds the scores and steps the alert machines;
    3. ``advance_many(wave, observe)``: move per-stream inference state (recurrent hidden
       state, last timestamp, recent window) past these readings. Where ``observe`` is
       False (anomalous reading, or the stream is inside an open alert) the reading is fed
       to the model as *missing*, so an anomaly cannot drag the forecast along with it;
    4. ``learn_many(wave, mask)``: learn (normaliser statistics, replay buffer, periodic
       optimiser step) from the rows where ``mask`` is True only: no poisoning.
    """

    name: str
    kind: KindSpec

    def score_many(self, batch: KindBatch) -> ScoreBatch:
        """Score every row (stream ids in ``batch`` are distinct). No side effects."""

    def advance_many(self, batch: KindBatch, observe: np.ndarray) -> None:
        """Advance per-stream inference state; rows with ``observe`` False count as missing."""

    def learn_many(self, batch: KindBatch, mask: np.ndarray) -> None:
        """Learn from the rows where ``mask`` is True only."""

    def adapt_streams(self, stream_ids: Sequence[str]) -> None:
        """Accept these streams' recent regime as their new normal (lasting level shift):
        re-seed their normaliser from their recent readings, observed or not."""

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        """Drop per-stream state (e.g. partition revoked)."""

    def export_streams(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        """Per-stream state of these streams only (plain tensors/arrays/numbers), for a
        changelog or for handing a partition to another process."""

    def import_streams(self, state: dict[str, Any]) -> None: ...

    @property
    def version(self) -> int:
        """Monotonic model version (number of parameter updates)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: plain tensors, arrays, numbers, strings."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Detector(Protocol):
    """The whole per-event path: validate -> score -> threshold -> alert -> learn."""

    @property
    def warmup_readings(self) -> int:
        """Readings of a stream before any model-based alert can fire (its scores come
        from an immature model and normaliser until then)."""

    def process(self, readings: Sequence[Reading]) -> tuple[list[Score], list[Alert]]:
        """Test-then-train over a micro-batch; returns one Score per reading (same order)
        and the alert lifecycle events the batch caused."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
