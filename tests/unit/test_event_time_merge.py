"""EventTimeMerge: event-time release order and the offsets that are safe to commit."""

from __future__ import annotations

import random

from streamwatch.pipeline import EventTimeMerge
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
