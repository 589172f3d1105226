"""Interfaces shared by the forecaster, the river baselines and the detector around them.

A *scorer* turns a micro-batch of one kind's readings into anomaly scores (the GRU/LSTM
forecaster, or a river baseline). The *detector* wraps any scorer with the same adaptive
thresholds, clinical hard limits and alert state machine, so every benchmark compares
like with like.

Test-then-train: ``score_many`` runs first on every reading; the detector then decides
which readings may teach the scorer (not anomalous, not inside an open alert) and calls
``learn_many`` with that mask.
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
    """Scores one kind's readings; learns only from what the detector lets through."""

    name: str
    kind: KindSpec

    def score_many(self, batch: KindBatch) -> ScoreBatch:
        """Score every row before learning from any of them. May advance per-stream
        inference state (recurrent hidden state, normaliser position) but never the
        learned parameters."""

    def learn_many(self, batch: KindBatch, mask: np.ndarray) -> None:
        """Learn from the rows where ``mask`` is True (the others are anomalous or inside
        an open alert and must not teach the model that they are normal)."""

    @property
    def version(self) -> int:
        """Monotonic model version (number of parameter updates)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: plain tensors, arrays, numbers, strings."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Detector(Protocol):
    """The whole per-event path: validate -> score -> threshold -> alert -> learn."""

    def process(self, readings: Sequence[Reading]) -> tuple[list[Score], list[Alert]]:
        """Test-then-train over a micro-batch; returns one Score per reading (same order)
        and the alert lifecycle events the batch caused."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
