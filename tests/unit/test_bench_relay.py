"""``bench.relay.Relay`` (the transport alone) on the in-memory bus: what it counts is what
it relayed, a record that does not decode is counted and not relayed, offsets committed."""

from __future__ import annotations

import gc
import threading
import time

from streamwatch.bench.relay import Relay
from streamwatch.schema import Reading, decode_reading, encode
from streamwatch.transport import MemoryTransport
from streamwatch.transport.base import TopicPartition


def test_relay_sends_one_record_per_decoded_reading_and_counts_the_rest() -> None:
    bus = MemoryTransport(session_timeout_ms=1000)
    bus.create_topics({"r": 2, "out": 2})
    producer = bus.producer()
    good = [Reading(f"icu/bed-{i % 5:02d}", "icu_vitals", 100.0 + i, {"hr": 60.0 + i})
            for i in range(40)]  # fmt: skip
    for r in good[:20]:
        producer.send("r", encode(r), r.stream_id.encode())
    producer.send("r", b"not json", b"icu/bed-00")
    producer.send("r", None, b"icu/bed-01")  # a tombstone
    for r in good[20:]:
        producer.send("r", encode(r), r.stream_id.encode())
    producer.flush()

    relay = Relay(bus, "r", "out", "g", poll_timeout_s=0.05, max_poll_records=7,
                  commit_every_s=0.0)  # fmt: skip
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while relay.stats.readings + relay.stats.dead_letters < 42 and time.monotonic() < deadline:
        time.sleep(0.01)
    relay.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert (relay.stats.readings, relay.stats.dead_letters) == (40, 2)
    assert relay.stats.batches >= 6  # 42 records, at most 7 per poll

    reader = bus.consumer(None)
    reader.assign([TopicPartition("out", p) for p in range(2)])
    relayed = [decode_reading(m.value) for m in reader.poll(0.5, 1000) if m.value is not None]
    assert sorted(relayed, key=lambda r: r.ts) == good
    probe = bus.consumer("g")
    ends = probe.end_offsets([TopicPartition("r", p) for p in range(2)])
    assert {tp: probe.committed(tp) for tp in ends} == ends


def test_relay_freezes_the_heap_while_it_runs_as_the_service_does() -> None:
    """Full collections then skip the long-lived objects (they took ~19 % of a relay
    process's time without it); unfrozen when it stops."""
    bus = MemoryTransport(session_timeout_ms=1000)
    bus.create_topics({"r": 1, "out": 1})
    producer = bus.producer()
    for i in range(10):
        producer.send("r", encode(Reading("icu/bed-00", "icu_vitals", 100.0 + i, {"hr": 60.0})),
                      b"icu/bed-00")
    producer.flush()
    assert gc.get_freeze_count() == 0
    relay = Relay(bus, "r", "out", "g", poll_timeout_s=0.05, max_poll_records=100)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    frozen = gc.get_freeze_count()
    relay.stop()
    thread.join(10)
    assert relay.stats.readings == 10 and frozen > 1000
    assert gc.get_freeze_count() == 0
