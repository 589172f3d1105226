"""The process's heap: CPython's cyclic garbage collector, and memory reused between
snapshots."""

from __future__ import annotations

import gc
import logging
import sys

import numpy as np

log = logging.getLogger(__name__)


def freeze_heap() -> None:
    """Take everything alive out of the cyclic GC's reach (``gc.freeze``; ``gc.unfreeze``
    undoes it): full collections then scan only what was made since. Without it they scan
    ~200-300k long-lived objects (modules, torch, clients) and, with a batch's Readings and
    Scores promoted on every few batches, pause the loop for 200-600 ms every 1-2 s at
    5-10k readings/s (``streamwatch bench``).

    >>> freeze_heap(); gc.get_freeze_count() > 0
    True
    >>> gc.unfreeze()
    """
    gc.collect()
    gc.freeze()
    log.debug("gc heap frozen", extra={"objects": gc.get_freeze_count()})


class SpareArrays:
    """Arrays to copy snapshots into, each reused once nothing holds it any more.

    A checkpoint copies ~15 MB of state on the detector thread. Copied into fresh memory,
    every page of it is faulted in again (~3,700 page faults per checkpoint of 500 ICU
    streams; each snapshot took 100-150 ms of the detector thread's CPU on a busy 2-core
    machine with them, 38-60 ms without; docs/bench.md). ``copy(key, src)`` copies into
    the array it returned for ``key`` last time when that array's only references are
    this object's: no snapshot, tensor (``torch.from_numpy`` holds its array) or view of
    it is alive. Otherwise it allocates a new one, so a snapshot never changes under its
    holder. The cost: one spare array per key stays allocated between snapshots.

    >>> spare = SpareArrays()
    >>> first = spare.copy("x", np.arange(3.0))
    >>> second = spare.copy("x", np.ones(3))  # ``first`` is alive: a new array
    >>> first.tolist(), second is first
    ([0.0, 1.0, 2.0], False)
    >>> address = second.ctypes.data
    >>> del first, second
    >>> spare.copy("x", np.zeros(3)).ctypes.data == address  # nothing held it: reused
    True
    """

    #: references to a spare array while ``copy`` looks at it: the dict's, the local
    #: name's and ``sys.getrefcount``'s own argument
    _OWN = 3

    def __init__(self) -> None:
        self._spare: dict[str, np.ndarray] = {}

    def copy(self, key: str, src: np.ndarray) -> np.ndarray:
        """A C-contiguous copy of ``src``, in last time's array for ``key`` if it is free."""
        buf = self._spare.get(key)
        if (buf is None or buf.shape != src.shape or buf.dtype != src.dtype
                or sys.getrefcount(buf) > self._OWN):
            buf = self._spare[key] = np.empty(src.shape, dtype=src.dtype)
        np.copyto(buf, src)
        return buf
