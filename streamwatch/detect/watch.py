"""Watched streams: the streams that get a Score for every reading when a service sends
Scores only around alerts (``service.emit_scores = "alerts"``).

With Scores only around alerts, a consumer of ``streamwatch.scores`` hears nothing of a
quiet stream: it cannot draw that stream's forecast band, nor tell it from a stream that
stopped. The streams someone follows (the beds on a dashboard, a machine under
investigation) can be named here, by id or by ``fnmatch`` pattern (``icu/bed-0*``); every
one of their readings then gets its Score, as with ``emit_scores = "all"``.

A stream id cannot contain ``*``, ``?``, ``[`` or ``]`` (``schema.STREAM_ID_PATTERN``), so
an id given here matches only itself.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

import numpy as np

from streamwatch.errors import ConfigError

#: Answers kept per stream id before the cache starts again (a service sees a bounded set).
MAX_CACHED = 200_000
#: Longest pattern accepted (a stream id is at most 128 characters).
MAX_PATTERN = 256


class WatchedStreams:
    """Which stream ids match any of ``patterns`` (ids or ``fnmatch`` patterns, matched
    case-sensitively), answered once per id and then from a cache.

    >>> w = WatchedStreams(["icu/bed-0[12]", "plant/pump-7"])
    >>> w.mask(["icu/bed-01", "icu/bed-03", "plant/pump-7", "plant/pump-70"]).tolist()
    [True, False, True, False]
    >>> bool(WatchedStreams([]))
    False
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        for p in self.patterns:
            if not isinstance(p, str) or not 0 < len(p) <= MAX_PATTERN:
                raise ConfigError(f"a watched stream must be a stream id or pattern of 1 to "
                                  f"{MAX_PATTERN} characters, got {p!r}")  # fmt: skip
        self._match = (re.compile("|".join(map(fnmatch.translate, self.patterns))).match
                       if self.patterns else None)  # fmt: skip
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self._match is not None

    def __repr__(self) -> str:
        return f"WatchedStreams({list(self.patterns)!r})"

    def mask(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Whether each of ``stream_ids`` is watched (a bool array)."""
        known = self._known
        unseen = set(stream_ids).difference(known)
        if unseen:
            if len(known) + len(unseen) > MAX_CACHED:
                known.clear()
                unseen = set(stream_ids)
            match = self._match
            for sid in unseen:
                known[sid] = match is not None and match(sid) is not None
        return np.fromiter(map(known.__getitem__, stream_ids), dtype=bool, count=len(stream_ids))
