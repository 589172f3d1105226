"""EventTimeMerge: event-time release order and the offsets that are safe to commit."""

from __future__ import annotations

import heapq
import math
import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamwatch.merge import EventTimeMerge
from streamwatch.schema import Reading
from streamwatch.transport.base import TopicPartition

TPS = [TopicPartition("r", p) for p in range(3)]


def _reading(sid: str, ts: float) -> Reading:
    return Reading(stream_id=sid, kind="icu_vitals", ts=ts, values={"hr": 80.0})


def test_release_is_in_event_time_order_and_waits_for_every_partition() -> None:
    merge = EventTimeMerge(idle_s=60.0)
    merge.assign(set(TPS[:2]), now=0.0)
    merge.add(TPS[0], 0, _reading("a", 2.0), now=0.0)
    merge.add(TPS[0], 1, _reading("a", 3.0), now=0.0)
    merge.add(TPS[1], 0, _reading("b", 1.0), now=0.0)
    # partition 1 has shown data up to ts 1 only: nothing later than that may leave yet
    assert [r.ts for r in merge.release(0.0, everything=False)] == [1.0]
    assert merge.safe_offsets({TPS[0]: 2, TPS[1]: 1}) == {TPS[0]: 0, TPS[1]: 1}
    merge.add(TPS[1], 1, _reading("b", 5.0), now=0.0)
    assert [r.ts for r in merge.release(0.0, everything=False)] == [2.0, 3.0]
    assert merge.safe_offsets({TPS[0]: 2, TPS[1]: 2}) == {TPS[0]: 2, TPS[1]: 1}
    assert [r.ts for r in merge.release(0.0, everything=True)] == [5.0]
    assert merge.safe_offsets({TPS[0]: 2, TPS[1]: 2}) == {TPS[0]: 2, TPS[1]: 2}


def test_safe_offsets_equal_the_lowest_held_offset_under_random_traffic() -> None:
    """Against a brute-force reference: per partition min(next polled, lowest held)."""
    rng = random.Random(7)
    merge = EventTimeMerge(idle_s=60.0)
    merge.assign(set(TPS), now=0.0)
    next_offset = dict.fromkeys(TPS, 0)
    held: dict[tuple[float, str], tuple[TopicPartition, int]] = {}
    for step in range(400):
        for _ in range(rng.randint(0, 6)):
            tp = rng.choice(TPS)
            sid = f"s{rng.randint(0, 9)}-{tp.partition}"
            ts = step + rng.random() * 5  # out of order across partitions
            merge.add(tp, next_offset[tp], _reading(sid, ts), now=0.0)
            held[(ts, sid)] = (tp, next_offset[tp])
            next_offset[tp] += 1
        out = merge.release(0.0, everything=rng.random() < 0.1, max_n=rng.randint(0, 8))
        for r in out:
            del held[(r.ts, r.stream_id)]
        want = dict(next_offset)
        for tp, offset in held.values():
            want[tp] = min(want[tp], offset)
        assert merge.safe_offsets(next_offset) == want
        assert merge.held == len(held)
    merge.drop({TPS[0]})
    assert TPS[0] not in merge.safe_offsets({TPS[1]: next_offset[TPS[1]]})


class _HeapMerge:
    """The heap-based EventTimeMerge as it was before the batched one (commit 14c22e9):
    the reference the new one must match step for step."""

    def __init__(self, idle_s: float = 2.0, max_held: int = 200_000) -> None:
        self.idle_s = idle_s
        self.max_held = max_held
        self._heap: list[tuple[float, str, int, int, str, Reading]] = []
        self._latest: dict[TopicPartition, float] = {}
        self._seen: dict[TopicPartition, float] = {}
        self._held: dict[tuple[str, int], deque[int]] = {}
        self._gone: dict[tuple[str, int], set[int]] = {}

    def assign(self, partitions: set[TopicPartition], now: float) -> None:
        for tp in partitions:
            self._seen[tp] = now

    def last_seen(self, tp: TopicPartition, default: float) -> float:
        return self._seen.get(tp, default)

    @property
    def held(self) -> int:
        return len(self._heap)

    def held_of(self, tp: TopicPartition) -> int:
        key = (tp.topic, tp.partition)
        q = self._held.get(key)
        return 0 if q is None else len(q) - len(self._gone[key])

    def add(self, tp: TopicPartition, offset: int, reading: Reading, now: float) -> None:
        heapq.heappush(self._heap, (reading.ts, reading.stream_id, offset, tp.partition,
                                    tp.topic, reading))
        key = (tp.topic, tp.partition)
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = deque()
            self._gone[key] = set()
        if held and offset <= held[-1]:
            held = self._held[key] = deque(sorted([*held, offset]))
        else:
            held.append(offset)
        self._seen[tp] = now
        if reading.ts > self._latest.get(tp, float("-inf")):
            self._latest[tp] = reading.ts

    def release(self, now: float, *, everything: bool, max_n: int | None = None,
                pending: frozenset[TopicPartition] = frozenset()) -> list[Reading]:  # fmt: skip
        limit = float("inf")
        if not everything:
            active = [tp for tp, seen in self._seen.items()
                      if now - seen < self.idle_s or tp in pending]  # fmt: skip
            limit = min((self._latest.get(tp, float("-inf")) for tp in active),
                        default=float("inf"))
        out: list[Reading] = []
        heap, held, gone = self._heap, self._held, self._gone
        budget = len(heap) if max_n is None else max_n
        while heap and len(out) < budget and (heap[0][0] <= limit or len(heap) > self.max_held):
            _ts, _sid, offset, partition, topic, reading = heapq.heappop(heap)
            out.append(reading)
            key = (topic, partition)
            q, g = held[key], gone[key]
            if q[0] == offset:
                q.popleft()
                while q and q[0] in g:
                    g.discard(q.popleft())
            else:
                g.add(offset)
        return out

    def safe_offsets(self, polled_next: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        safe = dict(polled_next)
        for (topic, partition), q in self._held.items():
            if q:
                tp = TopicPartition(topic, partition)
                if q[0] < safe.get(tp, q[0] + 1):
                    safe[tp] = q[0]
        return safe

    def drop(self, partitions: set[TopicPartition]) -> None:
        keep = [e for e in self._heap if TopicPartition(e[4], e[3]) not in partitions]
        heapq.heapify(keep)
        self._heap = keep
        for tp in partitions:
            self._latest.pop(tp, None)
            self._seen.pop(tp, None)
            self._held.pop((tp.topic, tp.partition), None)
            self._gone.pop((tp.topic, tp.partition), None)


#: Partitions for the comparison: two topics, and partition 1 in both (the key's last
#: two parts break ties of timestamp, stream and offset).
MIXED_TPS = [TopicPartition("r", 0), TopicPartition("r", 1), TopicPartition("a", 1)]
_OPS = ["add", "add_many", "add_many", "add_many", "release", "release", "drop", "max_held",
        "assign"]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_batched_merge_releases_exactly_as_the_heap_did(data: st.DataObject) -> None:
    """Random adds (one by one and batched, timestamps and stream ids repeating, within
    and across partitions, offsets in and out of order), releases (watermark, idle and
    pending partitions, ``everything``, ``max_n``), overflows of a small ``max_held``,
    drops and re-assignments: the same readings leave in the same order as from the
    heap-based merge, and ``held``, ``held_of`` and ``safe_offsets`` agree after every
    step."""
    idle_s = data.draw(st.sampled_from([0.5, 2.0, 60.0]), label="idle_s")
    ref, new = _HeapMerge(idle_s=idle_s), EventTimeMerge(idle_s=idle_s)
    now = 0.0
    first = set(data.draw(st.lists(st.sampled_from(MIXED_TPS), max_size=3), label="assign"))
    ref.assign(first, now)
    new.assign(first, now)
    used: dict[TopicPartition, set[int]] = {tp: set() for tp in MIXED_TPS}
    stamps = st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 2.5, 3.0, 4.0, 7.0])
    sids = st.sampled_from(["a", "b", "b2", "c"])

    def offset_for(tp: TopicPartition) -> int:
        taken = used[tp]
        if data.draw(st.booleans(), label="in order") or len(taken) > 60:
            offset = max(taken, default=-1) + 1 + data.draw(st.integers(0, 2), label="gap")
        else:  # out of order: any offset not read yet
            offset = data.draw(st.integers(0, 80).filter(lambda o: o not in taken),
                               label="offset")  # fmt: skip
        taken.add(offset)
        return offset

    for _step in range(data.draw(st.integers(1, 40), label="steps")):
        now += data.draw(st.sampled_from([0.0, 0.1, 1.0, 3.0]), label="wall step")
        op = data.draw(st.sampled_from(_OPS), label="op")
        tp = data.draw(st.sampled_from(MIXED_TPS), label="tp")
        if op in ("add", "add_many"):
            n = 1 if op == "add" else data.draw(st.integers(0, 8), label="n")
            base = data.draw(stamps, label="base ts")
            rows = [(offset_for(tp), _reading(data.draw(sids, label="sid"),
                                              base + data.draw(stamps, label="ts") / 4))
                    for _ in range(n)]  # fmt: skip
            for offset, reading in rows:
                ref.add(tp, offset, reading, now)
            if op == "add":
                new.add(tp, rows[0][0], rows[0][1], now)
            else:
                new.add_many(tp, [o for o, _r in rows], [r for _o, r in rows], now)
        elif op == "release":
            everything = data.draw(st.booleans(), label="everything")
            max_n = data.draw(st.none() | st.integers(-1, 6), label="max_n")
            pending = frozenset(data.draw(st.lists(st.sampled_from(MIXED_TPS), max_size=2),
                                          label="pending"))  # fmt: skip
            want = ref.release(now, everything=everything, max_n=max_n, pending=pending)
            got = new.release(now, everything=everything, max_n=max_n, pending=pending)
            assert [(r.ts, r.stream_id) for r in got] == [(r.ts, r.stream_id) for r in want]
            assert all(g is w for g, w in zip(got, want, strict=True))
        elif op == "drop":
            gone = set(data.draw(st.lists(st.sampled_from(MIXED_TPS), max_size=2), label="drop"))
            ref.drop(gone)
            new.drop(gone)
            for dropped in gone:  # its new owner (us again, later) re-reads its offsets
                used[dropped] = set()
        elif op == "max_held":
            ref.max_held = new.max_held = data.draw(st.integers(0, 12), label="max_held")
        else:
            ref.assign({tp}, now)
            new.assign({tp}, now)
        assert new.held == ref.held
        for each in MIXED_TPS:
            assert new.held_of(each) == ref.held_of(each)
            assert new.last_seen(each, -1.0) == ref.last_seen(each, -1.0)
        polled = {each: max(used[each], default=-1) + 1 for each in MIXED_TPS[:2]}
        assert new.safe_offsets(polled) == ref.safe_offsets(polled)
    rest_new, rest_ref = new.release(now, everything=True), ref.release(now, everything=True)
    assert all(g is w for g, w in zip(rest_new, rest_ref, strict=True))
    assert len(rest_new) == len(rest_ref) and new.held == 0


def test_add_many_of_a_poll_equals_adding_one_by_one_under_heavy_backlog() -> None:
    """A partition far ahead of the others (thousands held, a poll of 2,500, a poll going
    back over everything it holds) and one with timestamps going back across polls:
    batched and heap-based merges release the same sequence and report the same safe
    offsets."""
    rng = random.Random(11)
    ref, new = _HeapMerge(idle_s=60.0), EventTimeMerge(idle_s=60.0)
    ref.assign(set(TPS), 0.0)
    new.assign(set(TPS), 0.0)
    offsets = dict.fromkeys(TPS, 0)
    for poll in range(40):
        for tp, per_poll, spread in ((TPS[0], 400, 0.0), (TPS[1], 20, 3.0), (TPS[2], 30, 0.5)):
            ahead = 200.0 if tp == TPS[0] else 0.0
            if tp == TPS[0] and poll in (20, 30):
                per_poll, spread = 2_500, 15.0 * (poll == 30)
            rows = []
            for _ in range(per_poll):
                ts = ahead + poll + rng.random() + rng.uniform(-spread, spread)
                rows.append((offsets[tp], _reading(f"s{rng.randint(0, 30)}", ts)))
                offsets[tp] += 1
            for offset, reading in rows:
                ref.add(tp, offset, reading, 0.0)
            new.add_many(tp, [o for o, _r in rows], [r for _o, r in rows], 0.0)
        want, got = ref.release(0.0, everything=False), new.release(0.0, everything=False)
        assert all(g is w for g, w in zip(got, want, strict=True)) and len(got) == len(want)
        assert new.safe_offsets(offsets) == ref.safe_offsets(offsets)
        assert [new.held_of(tp) for tp in TPS] == [ref.held_of(tp) for tp in TPS]
    assert new.held_of(TPS[0]) > 10_000  # the backlog case was exercised
    new.max_held = ref.max_held = 5_000  # overflow: the earliest leave, above the watermark
    want, got = ref.release(0.0, everything=False), new.release(0.0, everything=False)
    assert all(g is w for g, w in zip(got, want, strict=True)) and len(got) == len(want)
    assert new.safe_offsets(offsets) == ref.safe_offsets(offsets)
    assert new.held == ref.held == 5_000


def test_a_nan_timestamp_neither_breaks_the_order_nor_gets_lost() -> None:
    """NaN is refused before the merge; should one get in, it waits as if at +inf."""
    merge = EventTimeMerge(idle_s=60.0)
    merge.assign({TPS[0]}, now=0.0)
    readings = [_reading("a", 1.0), _reading("b", math.nan), _reading("c", 0.5)]
    merge.add_many(TPS[0], [0, 1, 2], readings, now=0.0)
    assert [r.stream_id for r in merge.release(0.0, everything=False)] == ["c", "a"]
    assert merge.safe_offsets({TPS[0]: 3}) == {TPS[0]: 1}
    assert [r.stream_id for r in merge.release(0.0, everything=True)] == ["b"]
    assert merge.held == 0


def test_add_many_refuses_offsets_and_readings_of_different_lengths() -> None:
    merge = EventTimeMerge()
    with pytest.raises(ValueError, match="one offset per reading"):
        merge.add_many(TPS[0], [0, 1], [_reading("a", 1.0)], now=0.0)
    assert merge.held == 0


@pytest.mark.parametrize(("sign", "back_first"), [(1, False), (-1, False), (1, True)],
                         ids=["ts with offset", "ts against offset", "going back first"])
def test_safe_offsets_stay_exact_across_the_blocks_of_long_polls(sign: int,
                                                                 back_first: bool) -> None:  # fmt: skip
    """Polls longer than a block of the offset minima (5,000 readings, then 2,500 going
    back between them), released a watermark at a time, the cuts on and beside the block
    edges: the lowest held offset is the reference's at every cut, whether timestamps
    rise with the offsets or against them (the lowest offset last in event time), and
    when the poll going back has the lower offsets (never from one consumer)."""
    ref, new = _HeapMerge(idle_s=60.0), EventTimeMerge(idle_s=60.0)
    for merge in (ref, new):
        merge.assign(set(TPS[:2]), 0.0)
    first = [_reading("s", 5_000.0 + sign * k) for k in range(5_000)]
    going_back = [_reading("t", 5_000.5 + sign * k) for k in range(2_500)]
    polls = ((range(5_000), first), (range(5_000, 7_500), going_back))
    if back_first:
        polls = ((range(2_500, 7_500), first), (range(2_500), going_back))
    for offsets, readings in polls:
        for offset, reading in zip(offsets, readings, strict=True):
            ref.add(TPS[0], offset, reading, 0.0)
        new.add_many(TPS[0], list(offsets), readings, 0.0)
    polled = {TPS[0]: 7_500}
    assert new.safe_offsets(polled) == ref.safe_offsets(polled)
    stamps = sorted(r.ts for r in first + going_back)
    cuts = [1, 512, 1_023, 1_024, 1_025, 1_026, 2_048, 2_049, 2_050, 2_499, 2_500, 2_501,
            3_523, 3_524, 4_547, 4_548, 6_000, 7_499]  # fmt: skip
    for offset, cut in enumerate(cuts):  # partition 1 moves the watermark: cut readings out
        reading = _reading("w", stamps[cut - 1])
        ref.add(TPS[1], offset, reading, 0.0)
        new.add(TPS[1], offset, reading, 0.0)
        polled[TPS[1]] = offset + 1
        want, got = ref.release(0.0, everything=False), new.release(0.0, everything=False)
        assert len(got) == len(want) and all(g is w for g, w in zip(got, want, strict=True))
        assert new.safe_offsets(polled) == ref.safe_offsets(polled)
        assert new.held_of(TPS[0]) == ref.held_of(TPS[0]) == 7_500 - cut
