"""In-memory transport specifics: partitioning, blocking poll, group membership edge cases."""

from __future__ import annotations

import threading
import time

import pytest

from streamwatch.errors import ConfigError, TransportError
from streamwatch.transport import MemoryTransport, Message, TopicPartition, open_transport
from streamwatch.transport._common import murmur2, partition_for_key
from streamwatch.transport.memory import MemoryConsumer


def poll_until(consumers: list[MemoryConsumer], done, timeout: float = 5.0) -> list[Message]:  # type: ignore[no-untyped-def]
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not met in time"
        for consumer in consumers:
            got.extend(consumer.poll(timeout=0.01))
    return got


@pytest.mark.parametrize(
    ("data", "expected"),  # the Java client's own test vectors (UtilsTest.testMurmur2)
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_the_java_client(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_murmur2_matches_kafka_python_bit_for_bit() -> None:
    from kafka.partitioner.default import murmur2 as kafka_murmur2

    for i in range(200):
        key = f"icu/bed-{i:03d}".encode()
        assert murmur2(key) & 0xFFFFFFFF == kafka_murmur2(key) & 0xFFFFFFFF  # theirs: unsigned


def test_keyless_records_go_round_robin() -> None:
    bus = MemoryTransport()
    bus.create_topics({"t": 4})
    producer = bus.producer()
    for i in range(40):
        producer.send("t", b"%d" % i)
    ends = bus.consumer().end_offsets([TopicPartition("t", p) for p in range(4)])
    assert set(ends.values()) == {10}


def test_keyed_records_use_the_kafka_partition() -> None:
    bus = MemoryTransport()
    bus.create_topics({"t": 7})
    producer = bus.producer()
    consumer = bus.consumer()
    consumer.assign([TopicPartition("t", p) for p in range(7)])
    for i in range(50):
        producer.send("t", b"v", key=b"k%d" % i)
    got = consumer.poll(timeout=0.1)
    assert len(got) == 50
    assert all(m.partition == partition_for_key(m.key or b"", 7) for m in got)


def test_poll_blocks_until_data_arrives_and_times_out_without() -> None:
    bus = MemoryTransport()
    bus.create_topics({"t": 1})
    consumer = bus.consumer()
    consumer.assign([TopicPartition("t", 0)])
    started = time.monotonic()
    assert consumer.poll(timeout=0.2) == []
    assert 0.18 <= time.monotonic() - started < 1.0
    timer = threading.Timer(0.1, lambda: bus.producer().send("t", b"late"))
    timer.start()
    started = time.monotonic()
    got = consumer.poll(timeout=5.0)
    timer.join()
    assert [m.value for m in got] == [b"late"]
    assert time.monotonic() - started < 1.0


def test_concurrent_producers_lose_nothing_and_keep_key_order() -> None:
    bus = MemoryTransport()
    bus.create_topics({"t": 3})

    def produce(worker: int) -> None:
        producer = bus.producer()
        for seq in range(500):
            producer.send("t", b"%d" % seq, key=b"w%d" % worker)
        producer.flush()

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    consumer = bus.consumer()
    consumer.assign([TopicPartition("t", p) for p in range(3)])
    got: list[Message] = []
    deadline = time.monotonic() + 10
    while len(got) < 2000 and time.monotonic() < deadline:
        got.extend(consumer.poll(timeout=0.1, max_records=123))
    for t in threads:
        t.join()
    assert len(got) == 2000
    for worker in range(4):
        seqs = [int(m.value or b"") for m in got if m.key == b"w%d" % worker]
        assert seqs == list(range(500))


def test_max_records_bounds_one_poll() -> None:
    bus = MemoryTransport()
    bus.create_topics({"t": 2})
    producer = bus.producer()
    for i in range(100):
        producer.send("t", b"x", key=b"%d" % i)
    consumer = bus.consumer()
    consumer.assign([TopicPartition("t", 0), TopicPartition("t", 1)])
    assert len(consumer.poll(timeout=0.1, max_records=30)) == 30
    assert len(consumer.poll(timeout=0.1, max_records=1000)) == 70


def test_bad_records_are_refused_at_send() -> None:
    bus = MemoryTransport(max_message_bytes=10)
    bus.create_topics({"t": 1})
    producer = bus.producer()
    with pytest.raises(TypeError, match="bytes"):
        producer.send("t", "text")  # type: ignore[arg-type]
    with pytest.raises(TransportError, match="exceeds the limit of 10 bytes"):
        producer.send("t", b"x" * 11)


def test_unknown_topic_fails_delivery_unless_auto_created() -> None:
    strict = MemoryTransport()
    producer = strict.producer()
    producer.send("nope", b"x")
    with pytest.raises(TransportError, match="unknown topic 'nope'"):
        producer.flush()
    relaxed = MemoryTransport(auto_create_topics=True)
    relaxed.producer().send("new", b"x")
    assert relaxed.partitions_for("new") == 1


def test_invalid_arguments_name_the_allowed_range() -> None:
    with pytest.raises(ConfigError, match=r"100\.\.3600000"):
        MemoryTransport(session_timeout_ms=5)
    bus = MemoryTransport()
    with pytest.raises(ConfigError, match=r"1\.\.10000"):
        bus.create_topics({"t": 0})
    with pytest.raises(TransportError, match="invalid topic name"):
        bus.create_topics({"bad topic": 1})
    bus.create_topics({"t": 1})
    consumer = bus.consumer()
    with pytest.raises(ConfigError, match=">= 1"):
        consumer.poll(max_records=0)
    with pytest.raises(TransportError, match="not assigned"):
        consumer.seek(TopicPartition("t", 0), 0)


def test_auto_offset_reset_latest_skips_history() -> None:
    bus = open_transport(None, "memory", client_config={"auto_offset_reset": "latest"})
    bus.create_topics({"t": 1})
    producer = bus.producer()
    producer.send("t", b"old")
    consumer = bus.consumer("g")
    consumer.subscribe(["t"])
    assert consumer.poll(timeout=0.1) == []
    producer.send("t", b"new")
    assert [m.value for m in consumer.poll(timeout=0.5)] == [b"new"]


def test_revoke_runs_before_the_partition_moves_so_the_new_owner_sees_the_commit() -> None:
    bus = MemoryTransport()
    bus.create_topics({"t": 2})
    producer = bus.producer()
    for i in range(20):
        producer.send("t", b"%d" % i, key=b"%d" % i)
    a = bus.consumer("g")
    log: list[str] = []

    def a_revoked(parts: set[TopicPartition]) -> None:
        a.commit({tp: a.position(tp) for tp in parts})
        log.append("a-revoke")

    a.subscribe(["t"], on_revoke=a_revoked)
    poll_until(
        [a], lambda: sum(a.position(tp) for tp in a.assignment()) == 20 if a.assignment() else False
    )
    b = bus.consumer("g")
    starts: dict[TopicPartition, int] = {}

    def b_assigned(parts: set[TopicPartition]) -> None:
        log.append("b-assign")
        starts.update({tp: b.position(tp) for tp in parts})

    b.subscribe(["t"], on_assign=b_assigned)
    poll_until([b, a], lambda: bool(b.assignment()) and bool(a.assignment()))
    assert log.index("a-revoke") < log.index("b-assign")
    assert all(starts[tp] == b.end_offsets([tp])[tp] for tp in starts)  # nothing re-read


def test_member_that_stops_polling_is_evicted_and_its_partitions_move() -> None:
    bus = MemoryTransport(session_timeout_ms=200)
    bus.create_topics({"t": 2})
    a, b = bus.consumer("g"), bus.consumer("g")
    a.subscribe(["t"])
    poll_until([a], lambda: len(a.assignment()) == 2)
    b.subscribe(["t"])  # a never polls again
    poll_until([b], lambda: len(b.assignment()) == 2, timeout=3)
    with pytest.raises(TransportError, match="evicted"):
        a.commit({TopicPartition("t", 0): 0})
    poll_until([a, b], lambda: len(a.assignment()) == 1 and len(b.assignment()) == 1, timeout=3)


def test_more_members_than_partitions_leaves_one_idle_with_an_empty_assignment() -> None:
    bus = MemoryTransport()
    bus.create_topics({"t": 1})
    assigned: dict[str, set[TopicPartition]] = {}
    members = []
    for name in ("a", "b"):
        consumer = bus.consumer("g")
        consumer.subscribe(["t"], on_assign=lambda parts, n=name: assigned.__setitem__(n, parts))
        members.append(consumer)
    poll_until(members, lambda: len(assigned) == 2)
    assert sorted(len(p) for p in assigned.values()) == [0, 1]


def test_a_topic_created_after_subscribe_gets_assigned() -> None:
    bus = MemoryTransport()
    consumer = bus.consumer("g")
    consumer.subscribe(["later"])
    assert consumer.poll(timeout=0.05) == []
    bus.create_topics({"later": 3})
    poll_until([consumer], lambda: len(consumer.assignment()) == 3)


def test_callback_errors_propagate_from_poll() -> None:
    bus = MemoryTransport()
    bus.create_topics({"t": 1})
    consumer = bus.consumer("g")

    def broken(parts: set[TopicPartition]) -> None:
        raise RuntimeError("restore failed")

    consumer.subscribe(["t"], on_assign=broken)
    with pytest.raises(RuntimeError, match="restore failed"):
        poll_until([consumer], lambda: False, timeout=1)
