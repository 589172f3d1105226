"""Per-stream numeric state as rows of numpy arrays, so a wave of streams updates at once.

``SlotTable`` maps stream ids to rows ("slots") of a set of named arrays. Freed rows are
reused; arrays grow by doubling. Its ``state_dict`` holds torch tensors (not numpy arrays),
because checkpoints are read with ``torch.load(weights_only=True)``, which refuses numpy.

>>> table = SlotTable({"n": ((), np.int64, 0), "last": ((), np.float64, np.nan)})
>>> slots = table.slots(["a", "b", "a"])
>>> slots.tolist()
[0, 1, 0]
>>> table.arrays["n"][slots[:2]] += 1
>>> table.lookup(["b", "zzz"]).tolist()
[1, -1]
>>> other = SlotTable(table.spec)
>>> other.import_rows(table.export_rows(["b"]))
[0]
>>> int(other.arrays["n"][other.lookup(["b"])[0]])
1
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from streamwatch.errors import CheckpointError

ArraySpec = dict[str, tuple[tuple[int, ...], Any, Any]]
"""name -> (shape of one row, dtype, fill value of a fresh row)."""


def to_tensor(array: np.ndarray) -> Any:
    """A CPU torch tensor sharing nothing with ``array`` (torch is imported lazily)."""
    import torch

    return torch.from_numpy(np.array(array, copy=True))


def to_numpy(value: Any) -> np.ndarray:
    """numpy view of a tensor, array or nested list from a state dict."""
    if hasattr(value, "detach"):
        return np.asarray(value.detach().cpu().numpy())
    return np.asarray(value)


class SlotTable:
    """Stream id -> row of named arrays, with free-list reuse and doubling growth."""

    def __init__(self, spec: ArraySpec, capacity: int = 64,
                 optional: frozenset[str] = frozenset()) -> None:  # fmt: skip
        """``optional``: arrays a checkpoint may lack (added later): filled with their
        default on ``import_rows``."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.spec = spec
        self.optional = optional
        self._index: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self.arrays: dict[str, np.ndarray] = {
            name: np.full((capacity, *shape), fill, dtype=dtype)
            for name, (shape, dtype, fill) in spec.items()
        }

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._index

    @property
    def ids(self) -> list[str]:
        return list(self._index)

    def lookup(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Rows of these streams, -1 for unknown ones. Creates nothing."""
        get = self._index.get
        return np.fromiter((get(s, -1) for s in stream_ids), dtype=np.int64, count=len(stream_ids))

    def slots(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Rows of these streams, creating fresh rows for unknown ones."""
        get = self._index.get
        found = [get(s) for s in stream_ids]
        if None in found:
            for i, slot in enumerate(found):
                if slot is None:
                    found[i] = self._create(stream_ids[i])
        return np.fromiter(found, dtype=np.int64, count=len(found))  # type: ignore[arg-type]

    def _create(self, stream_id: str) -> int:
        slot = self._index.get(stream_id)  # a stream repeated in one call
        if slot is not None:
            return slot
        if self._free:
            slot = self._free.pop()
            self._ids[slot] = stream_id
        else:
            slot = len(self._ids)
            self._ids.append(stream_id)
            if slot >= len(next(iter(self.arrays.values()))):
                self._grow()
        self._index[stream_id] = slot
        self._reset(slot)
        return slot

    def _grow(self) -> None:
        for name, array in self.arrays.items():
            shape, dtype, fill = self.spec[name]
            extra = np.full((len(array), *shape), fill, dtype=dtype)
            self.arrays[name] = np.concatenate([array, extra])

    def _reset(self, slot: int) -> None:
        for name, (_, _, fill) in self.spec.items():
            self.arrays[name][slot] = fill

    def forget(self, stream_ids: Iterable[str]) -> list[str]:
        """Free the rows of these streams; returns the ids that were present."""
        gone = []
        for sid in stream_ids:
            slot = self._index.pop(sid, None)
            if slot is not None:
                self._ids[slot] = None
                self._free.append(slot)
                self._reset(slot)
                gone.append(sid)
        return gone

    def export_rows(self, stream_ids: Iterable[str] | None = None) -> dict[str, Any]:
        """The rows of these streams (all when None) as ``{"ids": [...], name: tensor}``."""
        ids = self.ids if stream_ids is None else [s for s in stream_ids if s in self._index]
        rows = np.fromiter((self._index[s] for s in ids), dtype=np.int64, count=len(ids))
        out: dict[str, Any] = {"ids": ids}
        for name, array in self.arrays.items():
            out[name] = to_tensor(array[rows])
        return out

    def import_rows(self, state: dict[str, Any]) -> list[int]:
        """Write exported rows back (creating or overwriting those streams); returns slots."""
        ids = list(state.get("ids", []))
        missing = [name for name in self.spec if name not in state and name not in self.optional]
        if missing:
            raise CheckpointError(f"per-stream state lacks the arrays {missing}")
        data = {name: to_numpy(state[name]) if name in state
                else np.full((len(ids), *shape), fill, dtype=dtype)
                for name, (shape, dtype, fill) in self.spec.items()}  # fmt: skip
        for name, (shape, _, _) in self.spec.items():
            if data[name].shape != (len(ids), *shape):
                raise CheckpointError(
                    f"per-stream array {name!r} has shape {data[name].shape}, expected "
                    f"{(len(ids), *shape)}: the checkpoint was written with other settings"
                )
        slots = self.slots(ids)
        for name in self.spec:
            self.arrays[name][slots] = data[name]
        return slots.tolist()

    def clear(self) -> None:
        self.forget(list(self._index))
