"""The event-time merge of the detector service (``streamwatch.pipeline``).

The readings of all assigned partitions wait here until every partition has shown data at
least as late, then leave in one (ts, stream_id, offset) order, so the detector sees the
same sequence however the client interleaves partitions in its polls.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right, insort
from collections.abc import Sequence
from itertools import accumulate, islice
from operator import itemgetter

from streamwatch.schema import Reading
from streamwatch.transport.base import TopicPartition

#: A held reading: ``(ts, stream_id, offset, (partition, topic), reading)``. Its sort key
#: is the tuple without the reading, as ``(ts, stream_id, offset, partition, topic)``;
#: no two held readings have the same (one consumer reads each offset once).
_Entry = tuple[float, str, int, tuple[int, str], Reading]
_TS, _OFFSET, _READING = itemgetter(0), itemgetter(2), itemgetter(4)
#: Most readings in one block of a partition's held list (``_Held.starts``): bounds the
#: work of ``EventTimeMerge.safe_offsets``.
_BLOCK = 2048


class _Held:
    """One partition's held readings (a plain record: ``EventTimeMerge`` does the work).

    ``entries[head:]`` are held, sorted by key (``entries[:head]`` have left and wait to
    be cut off). The entries are split in blocks starting at ``starts`` (ascending);
    ``mins[b]`` is the lowest offset in ``entries[starts[b]:]``, exact for every block
    that starts at or after ``head`` (one starting before may count readings that have
    left). ``top`` is at least the highest offset held."""

    __slots__ = ("entries", "head", "mins", "starts", "top")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.head = 0
        self.starts: list[int] = []
        self.mins: list[int] = []
        self.top = 0


class EventTimeMerge:
    """Merges the assigned partitions into one event-time order before scoring.

    Readings wait here until every assigned partition has shown data at least as late
    (the watermark = the minimum over partitions of their latest timestamp), then leave in
    (ts, stream_id, offset, partition, topic) order. So the detector sees the same
    sequence however the client interleaves partitions in its polls, and its event-time
    training ticks make replays after a crash or a rebalance score identically. A
    partition that has sent nothing for ``idle_s`` (wall time) does not hold the others
    back, and an empty poll (the consumer has caught up) releases everything: live data
    waits at most ``idle_s``. While more than ``max_held`` are held, the earliest leave
    even above the watermark.

    How: each partition's held readings are one list sorted by that key (a poll's batch
    is sorted and appended, or merged into the tail where its timestamps go back before
    ones already held). A release cuts each list where the timestamps pass the watermark
    (bisection) and sorts the cut-off parts together: ``list.sort`` merges those sorted
    runs in near-linear time (a heap took O(log held) steps per reading). The lowest held
    offset of a partition comes from the minima of blocks of its list (a batch each, at
    most ``_BLOCK``), so ``safe_offsets`` costs O(partitions), whatever is held. A NaN
    timestamp (refused before it gets here) sorts as +inf: it leaves with ``everything``
    or an overflow, never lost.
    """

    def __init__(self, idle_s: float = 2.0, max_held: int = 200_000) -> None:
        self.idle_s = idle_s
        self.max_held = max_held
        self._parts: dict[TopicPartition, _Held] = {}
        self._count = 0
        self._latest: dict[TopicPartition, float] = {}
        self._seen: dict[TopicPartition, float] = {}  # wall time of the last data
        # the entries the last ``release`` let go, in its order: (ts, stream_id, offset,
        # (partition, topic), reading); kept (no copy) for ``released_position``
        self._released: list[_Entry] = []

    def assign(self, partitions: set[TopicPartition], now: float) -> None:
        for tp in partitions:
            self._seen[tp] = now

    def last_seen(self, tp: TopicPartition, default: float) -> float:
        """Wall time of the partition's latest data (or of its assignment)."""
        return self._seen.get(tp, default)

    @property
    def held(self) -> int:
        return self._count

    def held_of(self, tp: TopicPartition) -> int:
        """Readings of this partition still held."""
        part = self._parts.get(tp)
        return 0 if part is None else len(part.entries) - part.head

    def add(self, tp: TopicPartition, offset: int, reading: Reading, now: float) -> None:
        """Hold one reading (``add_many`` of one)."""
        self.add_many(tp, [offset], [reading], now)

    def add_many(self, tp: TopicPartition, offsets: Sequence[int], readings: Sequence[Reading],
                 now: float) -> None:  # fmt: skip
        """Hold ``readings`` of partition ``tp``, ``readings[i]`` read at ``offsets[i]``:
        the same as ``add`` of each in turn, in one step (a poll's readings of a
        partition)."""
        if len(offsets) != len(readings):
            raise ValueError(f"add_many needs one offset per reading, got {len(offsets)} "
                             f"offsets for {len(readings)} readings")  # fmt: skip
        if not readings:
            return
        where = (tp.partition, tp.topic)
        batch = [(r.ts, r.stream_id, o, where, r) for o, r in zip(offsets, readings, strict=True)]
        stamps = sum(map(_TS, batch))
        if stamps == stamps:
            batch.sort()
            latest = batch[-1][0]
        else:  # a NaN timestamp (or +inf with -inf): NaN sorts as +inf
            inf = float("inf")
            batch = [e if e[0] == e[0] else (inf, e[1], e[2], e[3], e[4]) for e in batch]
            batch.sort()
            latest = max((r.ts for r in readings if r.ts == r.ts), default=float("-inf"))
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Held()
        entries, head = part.entries, part.head
        ordered = sorted(offsets)  # (cheaper than min and max)
        first, last = ordered[0], ordered[-1]
        if head == len(entries):  # nothing held
            part.entries, part.head, part.starts, part.mins = batch, 0, [], []
            self._add_blocks(part, 0, batch, first)
            part.top = last
        else:
            mins = part.mins
            if first <= part.top:  # offsets before held ones (never from one consumer)
                mins[:] = [m if m < first else first for m in mins]
            if batch[0] > entries[-1]:  # after everything held (the usual case)
                self._add_blocks(part, len(entries), batch, first)
                entries += batch
            else:  # timestamps going back before held ones: merge into the tail
                self._merge_tail(part, batch, first)
            if last > part.top:
                part.top = last
        self._count += len(readings)
        self._seen[tp] = now
        if latest > self._latest.get(tp, float("-inf")):
            self._latest[tp] = latest

    def _merge_tail(self, part: _Held, batch: list[_Entry], first: int) -> None:
        """Merge the sorted ``batch`` (lowest offset ``first``) into ``part``'s held
        readings, which have some after ``batch[0]``; the block minima before the
        merged tail already count ``first``."""
        entries, starts, mins = part.entries, part.starts, part.mins
        at = bisect_right(entries, batch[0], part.head)
        b = bisect_right(starts, at) - 1  # the block holding entries[at]
        if starts[b] == at:
            tail_min = mins[b]
            del starts[b:], mins[b:]
        else:
            end = starts[b + 1] if b + 1 < len(starts) else len(entries)
            tail_min = min(map(_OFFSET, entries[at:end]))
            if b + 1 < len(mins) and mins[b + 1] < tail_min:
                tail_min = mins[b + 1]
            del starts[b + 1:], mins[b + 1:]
        tail = batch
        if len(entries) - at <= 16:  # a few held readings after batch[0] (the usual case)
            for entry in entries[at:]:
                insort(tail, entry)
        else:
            tail = entries[at:]
            tail += batch
            tail.sort()
        entries[at:] = tail
        self._add_blocks(part, at, tail, min(tail_min, first))

    @staticmethod
    def _add_blocks(part: _Held, at: int, tail: list[_Entry], low: int) -> None:
        """Blocks for ``tail``, ``part``'s entries from index ``at`` on (their lowest offset
        ``low``): one, or if longer than ``_BLOCK``, blocks of ``_BLOCK // 2``."""
        if len(tail) <= _BLOCK:
            part.starts.append(at)
            part.mins.append(low)
            return
        step = _BLOCK // 2
        offsets = list(map(_OFFSET, tail))
        suffix = list(accumulate(reversed([min(offsets[i:i + step])
                                           for i in range(0, len(tail), step)]), min))  # fmt: skip
        suffix.reverse()
        part.starts += range(at, at + len(tail), step)
        part.mins += suffix

    def release(self, now: float, *, everything: bool, max_n: int | None = None,
                pending: frozenset[TopicPartition] = frozenset()) -> list[Reading]:  # fmt: skip
        """Readings up to the watermark (all held with ``everything``), in order. A partition
        in ``pending`` (data on the broker not read yet) is never idle: it holds the others
        back however long it has been silent. At most ``max_n`` leave; while more than
        ``max_held`` are held, the earliest leave even above the watermark."""
        limit = float("inf")
        if not everything:
            active = [tp for tp, seen in self._seen.items()
                      if now - seen < self.idle_s or tp in pending]  # fmt: skip
            limit = min((self._latest.get(tp, float("-inf")) for tp in active),
                        default=float("inf"))
        held = self._count
        n = held if max_n is None else min(max_n, held)
        if n <= 0:
            return []
        # per partition holding readings: where its readings up to the watermark end
        cuts: list[tuple[_Held, int]] = []
        below = 0
        for part in self._parts.values():
            entries, head = part.entries, part.head
            if head == len(entries):
                continue
            if everything or entries[-1][0] <= limit:
                cut = len(entries)
            elif entries[head][0] > limit:
                cut = head
            else:
                cut = bisect_right(entries, limit, head, key=_TS)
            cuts.append((part, cut))
            below += cut - head
        n = min(n, max(below, held - self.max_held))
        if n <= 0:
            return []
        if n <= below:
            cuts = [(part, cut) for part, cut in cuts if cut > part.head]
            if len(cuts) == 1:
                part, cut = cuts[0]
                chosen = part.entries[part.head:cut]
            else:
                chosen = []
                for part, cut in cuts:
                    chosen += part.entries[part.head:cut]
                chosen.sort()
            if n < below:  # max_n: the first n, so each partition's up to the n-th key
                del chosen[n:]
                cuts = [(part, bisect_right(part.entries, chosen[-1], part.head, cut))
                        for part, cut in cuts]  # fmt: skip
        else:  # more than max_held held: the n first keys, above the watermark too
            chosen = list(islice(heapq.merge(*(islice(part.entries, part.head, None)
                                               for part, _cut in cuts)), n))  # fmt: skip
            cuts = [(part, bisect_right(part.entries, chosen[-1], part.head))
                    for part, _cut in cuts]  # fmt: skip
        for part, cut in cuts:
            self._cut(part, cut)
        self._count -= n
        self._released = chosen
        return list(map(_READING, chosen))

    def released_position(self, i: int) -> tuple[str, int, int]:
        """(topic, partition, offset) of the ``i``-th reading the last ``release`` returned
        (a dead letter must name where its record lies)."""
        _ts, _sid, offset, (partition, topic), _r = self._released[i]
        return topic, partition, offset

    @staticmethod
    def _cut(part: _Held, cut: int) -> None:
        """``part``'s readings before index ``cut`` have left."""
        entries = part.entries
        if cut == len(entries):
            part.entries, part.head, part.starts, part.mins = [], 0, [], []
        elif 2 * cut >= len(entries):  # cut off what has left (amortised O(1) a reading)
            starts = part.starts
            b = bisect_right(starts, cut) - 1
            del entries[:cut], starts[:b], part.mins[:b]
            starts[:] = [s - cut for s in starts]
            part.head = 0
        else:
            part.head = cut

    def safe_offsets(self, polled_next: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Per partition, the next offset such that nothing before it is still held."""
        safe = dict(polled_next)
        for tp, part in self._parts.items():
            entries, head, starts, mins = part.entries, part.head, part.starts, part.mins
            if head == len(entries):
                continue
            b = bisect_right(starts, head) - 1
            if starts[b] == head:
                low = mins[b]
            else:  # head inside block b: its held part, then the blocks after
                end = starts[b + 1] if b + 1 < len(starts) else len(entries)
                low = min(map(_OFFSET, entries[head:end]))
                if b + 1 < len(mins) and mins[b + 1] < low:
                    low = mins[b + 1]
            if low < safe.get(tp, low + 1):
                safe[tp] = low
        return safe

    def drop(self, partitions: set[TopicPartition]) -> None:
        """Forget held readings of revoked partitions (their new owner re-reads them)."""
        for tp in partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                self._count -= len(part.entries) - part.head
            self._latest.pop(tp, None)
            self._seen.pop(tp, None)
