"""Per-stream state of one kind, in batched arrays indexed by a stream-id -> row map.

Rows are allocated as streams appear (capacity doubles when full, so growth is amortised
O(1) per stream) and recycled after ``forget``. Per row:

- normaliser statistics per channel: exponentially weighted mean, variance and count of
  learned values (``streamwatch.model.features``), float64;
- recurrent state: one torch tensor ``(S, layers, rows, hidden)`` (S = 1 GRU, 2 LSTM);
- the stored forecast for the stream's next reading (mean and std in original units,
  log-variance in normalised units, ``NaN`` for a channel with no statistics yet), so
  scoring needs no model call;
- the recent window: a ring of the last ``R`` readings (raw values, gap feature, whether
  each was fed as observed, whether it was allowed to teach), written at position
  ``count % R``;
- ``count`` (readings advanced), ``learned`` (readings learned), ``last_ts``, and
  ``last_gap`` (seconds between the last two readings, for the next step's phase);
- with seasonal inputs (``season_bins > 0``): the seasonal profile ``season_prof``
  (bins x channels of learned raw values) and, in the ring, the profile values each step
  was given (``ring_s_now``, ``ring_s_next``). Without, these have 0 channels.

A lookup is one dict access per reading; everything else is numpy fancy indexing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from streamwatch.errors import CheckpointError

_NUMPY_FIELDS: dict[str, tuple[Any, float | int | bool]] = {
    # name: (dtype, fill value of a fresh row)
    "count": (np.int64, 0),
    "learned": (np.int64, 0),
    "last_ts": (np.float64, np.nan),
    "last_gap": (np.float64, np.nan),
    "pending": (np.bool_, False),
    "has_forecast": (np.bool_, False),
    "norm_mean": (np.float64, 0.0),
    "norm_var": (np.float64, 0.0),
    "norm_n": (np.int64, 0),
    "fc_mean": (np.float64, np.nan),
    "fc_std": (np.float64, np.nan),
    "fc_logvar": (np.float64, np.nan),
    "ring_raw": (np.float32, np.nan),
    "ring_gap": (np.float32, 0.0),
    "ring_observed": (np.bool_, False),
    "ring_trainable": (np.bool_, False),
    "ring_s_now": (np.float32, np.nan),
    "ring_s_next": (np.float32, np.nan),
    "season_prof": (np.float64, np.nan),
}


class StreamState:
    """Arrays of per-stream state for ``n_channels`` channels and a ring of ``ring_len``.

    Parameters
    ----------
    n_channels, ring_len
        Channels of the kind and readings kept per stream (``window + 1``).
    state_size, layers, hidden_size
        Shape of the recurrent state per stream: ``(state_size, layers, hidden_size)``.
    initial_capacity
        Rows allocated up front (grows by doubling).
    season_bins
        Phase bins of the seasonal profile, 0 = no seasonal state.
    """

    def __init__(
        self,
        n_channels: int,
        ring_len: int,
        state_size: int,
        layers: int,
        hidden_size: int,
        initial_capacity: int = 64,
        season_bins: int = 0,
    ) -> None:
        self.n_channels = n_channels
        self.season_bins = season_bins
        self._season_channels = n_channels if season_bins > 0 else 0
        self.ring_len = ring_len
        self.state_shape = (state_size, layers, hidden_size)
        self.rows: dict[str, int] = {}
        self.ids: list[str | None] = []
        self._free: list[int] = []
        self.capacity = 0
        self.arrays: dict[str, np.ndarray] = {}
        self.hidden = torch.zeros(state_size, layers, 0, hidden_size)
        self._grow(max(1, initial_capacity))

    # ----------------------------------------------------------------- rows
    def _shape(self, name: str, rows: int) -> tuple[int, ...]:
        if name.startswith("ring_raw"):
            return (rows, self.ring_len, self.n_channels)
        if name.startswith("ring_s_"):
            return (rows, self.ring_len, self._season_channels)
        if name == "season_prof":
            return (rows, self.season_bins, self._season_channels)
        if name.startswith("ring_"):
            return (rows, self.ring_len)
        if name.startswith(("norm_", "fc_")):
            return (rows, self.n_channels)
        return (rows,)

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name, (dtype, fill) in _NUMPY_FIELDS.items():
            new = np.full(self._shape(name, capacity), fill, dtype=dtype)
            if old:
                new[:old] = self.arrays[name]
            self.arrays[name] = new
        s, layers, h = self.state_shape
        hidden = torch.zeros(s, layers, capacity, h)
        hidden[:, :, :old] = self.hidden
        self.hidden = hidden
        self.ids.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))  # pop() hands out low rows first
        self.capacity = capacity

    def _reset(self, rows: np.ndarray) -> None:
        for name, (_, fill) in _NUMPY_FIELDS.items():
            self.arrays[name][rows] = fill
        self.hidden[:, :, torch.from_numpy(rows)] = 0.0

    def lookup(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Rows of these streams, -1 for a stream without state. No side effects."""
        get = self.rows.get
        return np.fromiter((get(s, -1) for s in stream_ids), dtype=np.int64,
                           count=len(stream_ids))

    def ensure(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Rows of these streams, allocating fresh rows for new ones."""
        rows = self.lookup(stream_ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            new_ids = [stream_ids[i] for i in missing.tolist()]
            if len(self._free) < len(new_ids):
                capacity = self.capacity
                while capacity - len(self.rows) < len(new_ids):
                    capacity *= 2
                self._grow(capacity)
            fresh = np.array([self._free.pop() for _ in new_ids], dtype=np.int64)
            self._reset(fresh)
            for sid, row in zip(new_ids, fresh.tolist(), strict=True):
                self.rows[sid] = row
                self.ids[row] = sid
            rows[missing] = fresh
        return rows

    def forget(self, stream_ids: Iterable[str]) -> int:
        """Drop these streams' state; returns how many had state."""
        dropped = 0
        for sid in stream_ids:
            row = self.rows.pop(sid, None)
            if row is not None:
                self.ids[row] = None
                self._free.append(row)
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    # ----------------------------------------------------------------- ring
    def ring_positions(self, rows: np.ndarray) -> np.ndarray:
        """(n, R) ring indices of each row's entries, oldest first, ending at the latest."""
        count = self.arrays["count"][rows]
        return (count[:, None] - self.ring_len + np.arange(self.ring_len)) % self.ring_len

    def ring_valid(self, rows: np.ndarray) -> np.ndarray:
        """(n, R) True where the entry (oldest first) holds a reading of this stream."""
        count = self.arrays["count"][rows]
        return (count[:, None] - self.ring_len + np.arange(self.ring_len)) >= 0

    def ring_read(self, name: str, rows: np.ndarray) -> np.ndarray:
        """One ring field of these rows in chronological order (oldest first)."""
        return self.arrays[name][rows[:, None], self.ring_positions(rows)]

    def ring_latest(self, rows: np.ndarray) -> np.ndarray:
        """Ring index of each row's latest reading (valid once ``count`` >= 1)."""
        return (self.arrays["count"][rows] - 1) % self.ring_len

    # ----------------------------------------------------------------- export
    def export(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        """These streams' state as torch tensors (unknown ids are left out)."""
        rows = self.lookup(stream_ids)
        keep = rows >= 0
        rows = rows[keep]
        out: dict[str, Any] = {
            "stream_ids": [sid for sid, k in zip(stream_ids, keep.tolist(), strict=True) if k],
            "ring_len": self.ring_len,
            "state_shape": list(self.state_shape),
        }
        for name in _NUMPY_FIELDS:
            if name != "pending":
                out[name] = torch.from_numpy(np.ascontiguousarray(self.arrays[name][rows]))
        out["hidden"] = self.hidden[:, :, torch.from_numpy(rows)].clone()
        return out

    def export_all(self) -> dict[str, Any]:
        """Every stream's state, in row order."""
        ids = [sid for sid in self.ids if sid is not None]
        return self.export(ids)

    def import_(self, state: dict[str, Any]) -> np.ndarray:
        """Overwrite (or create) the streams in ``state`` (an ``export`` result)."""
        try:
            ids = list(state["stream_ids"])
            if int(state["ring_len"]) != self.ring_len:
                raise CheckpointError(
                    f"stream state has a recent window of {int(state['ring_len'])} readings, "
                    f"this model keeps {self.ring_len} (window + 1): same config needed"
                )
            if tuple(int(v) for v in state["state_shape"]) != self.state_shape:
                raise CheckpointError(
                    f"stream state has recurrent state shape {tuple(state['state_shape'])}, "
                    f"this model has {self.state_shape} (cell, layers, hidden_size differ)"
                )
            columns = {name: _as_numpy(state[name]) for name in _NUMPY_FIELDS
                       if name != "pending"}
            hidden = torch.as_tensor(state["hidden"], dtype=torch.float32)
        except KeyError as exc:
            raise CheckpointError(f"stream state lacks the field {exc.args[0]!r}") from None
        n = len(ids)
        for name, column in columns.items():
            if column.shape != self._shape(name, n):
                raise CheckpointError(
                    f"stream state field {name!r} has shape {column.shape}, "
                    f"expected {self._shape(name, n)}"
                )
        if tuple(hidden.shape) != (self.state_shape[0], self.state_shape[1], n,
                                   self.state_shape[2]):
            raise CheckpointError(f"stream state 'hidden' has shape {tuple(hidden.shape)}")
        rows = self.ensure(ids)
        for name, column in columns.items():
            self.arrays[name][rows] = column
        self.arrays["pending"][rows] = False
        self.hidden[:, :, torch.from_numpy(rows)] = hidden
        return rows


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
