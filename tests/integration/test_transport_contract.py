"""One contract, three transports: in-memory, kafka-python and confluent-kafka.

The Kafka variants run against the real broker of the test session (or, to make delivery
fail, against a broker of their own that the test pauses).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streamwatch.broker import TansuBroker
from streamwatch.errors import FlushTimeoutError, TransportError
from streamwatch.transport import (
    Consumer,
    Message,
    TopicPartition,
    Transport,
    open_transport,
    partition_for_key,
)

CLIENTS = ["memory", "kafka-python", "confluent"]
SESSION_MS = 2000

pytestmark = pytest.mark.kafka


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def transport(client: str, request: pytest.FixtureRequest) -> Iterator[Transport]:
    bootstrap = None if client == "memory" else request.getfixturevalue("kafka_bootstrap")
    bus = open_transport(bootstrap, client, session_timeout_ms=SESSION_MS)  # type: ignore[arg-type]
    yield bus
    bus.close()


def drain(
    consumers: list[Consumer],
    done: Callable[[], bool],
    *,
    timeout: float = 20.0,
    sink: dict[int, list[Message]] | None = None,
) -> None:
    """Poll every consumer in turn until ``done()`` or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        for i, consumer in enumerate(consumers):
            got = consumer.poll(timeout=0.1)
            if sink is not None:
                sink.setdefault(i, []).extend(got)


def all_partitions(topic: str, n: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(n)]


def test_round_trip_keeps_per_key_order_on_the_key_partition(
    transport: Transport, unique_topic: str
) -> None:
    transport.create_topics({unique_topic: 3})
    producer = transport.producer()
    keys = [f"stream-{k}".encode() for k in range(10)]
    for seq in range(30):
        for key in keys:
            producer.send(unique_topic, f"{key.decode()}:{seq}".encode(), key=key)
    producer.flush(timeout=30)
    consumer = transport.consumer(None)
    consumer.assign(all_partitions(unique_topic, 3))
    got: list[Message] = []
    deadline = time.monotonic() + 20
    while len(got) < 300 and time.monotonic() < deadline:
        got.extend(consumer.poll(timeout=0.5))
    consumer.close()
    producer.close()

    assert len(got) == 300
    by_key: dict[bytes, list[Message]] = {}
    for m in got:
        assert m.topic == unique_topic and m.key is not None and m.value is not None
        by_key.setdefault(m.key, []).append(m)
    for key, msgs in by_key.items():
        assert [int(m.value.split(b":")[1]) for m in msgs if m.value] == list(range(30))
        assert {m.partition for m in msgs} == {partition_for_key(key, 3)}
    for p in range(3):
        offsets = [m.offset for m in got if m.partition == p]
        assert offsets == list(range(len(offsets)))


def test_new_member_resumes_exactly_after_the_committed_offset(
    transport: Transport, unique_topic: str, unique_group: str
) -> None:
    transport.create_topics({unique_topic: 2})
    producer = transport.producer()
    for i in range(40):
        producer.send(unique_topic, b"%d" % i, key=b"k%d" % (i % 4))
    producer.flush(timeout=30)
    reader = transport.consumer(None)
    ends = reader.end_offsets(all_partitions(unique_topic, 2))
    reader.close()
    assert sum(ends.values()) == 40

    first = transport.consumer(unique_group)
    first.subscribe([unique_topic])
    seen: dict[int, list[Message]] = {}
    drain([first], lambda: len(seen.get(0, [])) >= 40, sink=seen)
    commit_at = {tp: min(3, end) for tp, end in ends.items()}
    first.commit(commit_at)
    assert {tp: first.committed(tp) for tp in commit_at} == commit_at
    first.close()

    second = transport.consumer(unique_group)
    second.subscribe([unique_topic])
    resumed: dict[int, list[Message]] = {}
    expected = sum(ends[tp] - commit_at[tp] for tp in ends)
    drain([second], lambda: len(resumed.get(0, [])) >= expected, sink=resumed)
    second.close()
    for tp, start in commit_at.items():
        offsets = [m.offset for m in resumed[0] if m.partition == tp.partition]
        assert offsets == list(range(start, ends[tp])), tp


def test_group_members_split_partitions_and_a_leaver_hands_over(
    transport: Transport, unique_topic: str, unique_group: str
) -> None:
    transport.create_topics({unique_topic: 4})
    events: list[tuple[str, str, frozenset[TopicPartition]]] = []
    handed: dict[TopicPartition, int] = {}

    def member(name: str) -> Consumer:
        consumer = transport.consumer(unique_group)

        def on_revoke(parts: set[TopicPartition]) -> None:
            events.append((name, "revoke", frozenset(parts)))
            positions = {tp: consumer.position(tp) for tp in parts}
            consumer.commit(positions)  # commit inside the callback must work
            handed.update(positions)

        def on_assign(parts: set[TopicPartition]) -> None:
            events.append((name, "assign", frozenset(parts)))

        consumer.subscribe([unique_topic], on_assign=on_assign, on_revoke=on_revoke)
        return consumer

    a = member("a")
    drain([a], lambda: len(a.assignment()) == 4)
    b = member("b")
    drain([a, b], lambda: len(a.assignment()) + len(b.assignment()) == 4 and bool(b.assignment()))
    assert a.assignment().isdisjoint(b.assignment())
    assert len(a.assignment()) == 2 and len(b.assignment()) == 2
    assert ("a", "revoke", frozenset(all_partitions(unique_topic, 4))) in events

    producer = transport.producer()
    for i in range(80):
        producer.send(unique_topic, b"%d" % i, key=b"k%d" % i)
    producer.flush(timeout=30)
    producer.close()
    read: dict[int, list[Message]] = {}
    drain([a, b], lambda: sum(len(v) for v in read.values()) >= 80, sink=read)
    assert {m.partition for m in read[0]} <= {tp.partition for tp in a.assignment()}
    assert len({(m.partition, m.offset) for m in read[0] + read[1]}) == 80
    moving = a.assignment()
    events.clear()
    handed.clear()
    a.close()
    after: dict[int, list[Message]] = {}
    drain([b], lambda: len(b.assignment()) == 4, sink=after)
    assert ("a", "revoke", frozenset(moving)) in events
    assert ("b", "assign", frozenset(all_partitions(unique_topic, 4))) in [
        (n, k, p) for n, k, p in events if n == "b" and k == "assign"
    ][-1:]
    for tp in moving:  # the new owner starts where the leaver committed: nothing re-read
        assert b.position(tp) == handed[tp] == b.end_offsets([tp])[tp]
    b.close()


def test_pause_holds_a_partition_back_and_resume_goes_on_exactly_after_it(
    transport: Transport, unique_topic: str, unique_group: str
) -> None:
    """What the service's event-time flow control needs: a paused partition returns
    nothing however long the others are polled, resume continues from the record after
    the last one returned (none lost, none twice), and after a rebalance that takes the
    partition away and gives it back it is no longer paused."""
    transport.create_topics({unique_topic: 2})
    p0, p1 = all_partitions(unique_topic, 2)
    producer = transport.producer()

    def send(start: int, stop: int) -> None:  # each partition gets every number
        for i in range(start, stop):
            for tp in (p0, p1):
                key = next(b"k%d" % k for k in range(100)
                           if partition_for_key(b"k%d" % k, 2) == tp.partition)
                producer.send(unique_topic, b"%d" % i, key=key)
        producer.flush(timeout=30)

    send(0, 300)
    a = transport.consumer(unique_group)
    a.subscribe([unique_topic])
    got: list[Message] = []
    deadline = time.monotonic() + 20
    while not any(m.partition == 0 for m in got):
        assert time.monotonic() < deadline, "nothing from partition 0 within 20 s"
        got.extend(a.poll(timeout=0.1, max_records=5))
    a.pause([p0])
    returned = max(m.offset for m in got if m.partition == 0)
    drain([a], lambda: sum(m.partition == 1 for m in got) >= 300, sink={0: got})
    held_back = len(got)
    for _ in range(10):  # a second of polling: partition 1 is drained, 0 is paused
        got.extend(a.poll(timeout=0.1))
    assert len(got) == held_back, "a paused partition returned records"
    assert all(m.partition == 1 for m in got[held_back:])
    assert max(m.offset for m in got if m.partition == 0) == returned
    send(300, 320)
    a.resume([p0])
    a.resume([p0])  # resuming a partition that is not paused changes nothing
    drain([a], lambda: len(got) >= 640, sink={0: got})
    for tp in (p0, p1):
        offsets = [m.offset for m in got if m.partition == tp.partition]
        assert offsets == list(range(320)), tp

    a.pause([p0])
    b = transport.consumer(unique_group)
    b.subscribe([unique_topic])
    drain([a, b], lambda: bool(b.assignment()))
    b.close()
    drain([a], lambda: a.assignment() == {p0, p1})
    send(320, 330)
    after: list[Message] = []
    drain([a], lambda: sum(m.partition == 0 and m.offset >= 320 for m in after) >= 10,
          sink={0: after})  # fmt: skip
    a.close()
    producer.close()


def test_assign_reads_without_a_group_and_seeks(transport: Transport, unique_topic: str) -> None:
    transport.create_topics({unique_topic: 1})
    producer = transport.producer()
    for i in range(10):
        producer.send(unique_topic, b"%d" % i)
    producer.flush(timeout=30)
    tp = TopicPartition(unique_topic, 0)
    consumer = transport.consumer(None)
    consumer.assign([tp])
    assert consumer.assignment() == {tp}
    got: dict[int, list[Message]] = {}
    drain([consumer], lambda: len(got.get(0, [])) >= 10, sink=got)
    assert [m.value for m in got[0]] == [b"%d" % i for i in range(10)]
    assert consumer.position(tp) == 10
    consumer.seek(tp, 7)
    again: dict[int, list[Message]] = {}
    drain([consumer], lambda: len(again.get(0, [])) >= 3, sink=again)
    assert [m.offset for m in again[0]] == [7, 8, 9]
    assert consumer.committed(tp) is None
    with pytest.raises(TransportError, match="group_id"):
        consumer.commit({tp: 10})
    consumer.close()


def test_poll_returns_what_is_there_without_waiting_for_a_full_batch(
    transport: Transport, unique_topic: str
) -> None:
    transport.create_topics({unique_topic: 1})
    producer = transport.producer()
    for i in range(5):
        producer.send(unique_topic, b"%d" % i)
    producer.flush(timeout=30)
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(unique_topic, 0)])
    got: dict[int, list[Message]] = {}
    drain([consumer], lambda: bool(got.get(0)), sink=got)  # the first fetch has happened
    producer.send(unique_topic, b"late")
    producer.flush(timeout=30)
    waited = time.monotonic()
    messages: list[Message] = []
    while not any(m.value == b"late" for m in messages):
        # 5 records and a 30 s timeout: the call must return with what it has, not wait
        # until it has 100,000 records or the timeout is over
        messages.extend(consumer.poll(timeout=30.0, max_records=100_000))
        assert time.monotonic() - waited < 15.0, "poll waited for a full batch"
    assert [m.value for m in got[0] + messages][-1] == b"late"
    consumer.close()


def test_highwater_after_reading_everything_equals_the_end_offsets(
    transport: Transport, unique_topic: str
) -> None:
    transport.create_topics({unique_topic: 2})
    producer = transport.producer()
    for i in range(12):
        producer.send(unique_topic, b"%d" % i, key=b"k%d" % i)
    producer.flush(timeout=30)
    consumer = transport.consumer(None)
    tps = all_partitions(unique_topic, 2)
    consumer.assign(tps)
    got: dict[int, list[Message]] = {}
    drain([consumer], lambda: len(got.get(0, [])) >= 12, sink=got)
    ends = consumer.end_offsets(tps)
    assert sum(ends.values()) == 12
    assert consumer.highwater(tps) == {tp: end for tp, end in ends.items() if end > 0}
    consumer.close()


def test_end_offsets_count_every_record_across_batches(
    transport: Transport, unique_topic: str
) -> None:
    transport.create_topics({unique_topic: 2})
    producer = transport.producer()
    key0 = next(k for k in (b"a%d" % i for i in range(100)) if partition_for_key(k, 2) == 0)
    for batch in (3, 1, 5):  # several produce requests, several record batches
        for i in range(batch):
            producer.send(unique_topic, b"%d" % i, key=key0)
        producer.flush(timeout=30)
    consumer = transport.consumer(None)
    tps = all_partitions(unique_topic, 2)
    assert consumer.end_offsets(tps) == {tps[0]: 9, tps[1]: 0}
    assert consumer.end_offsets(tps) == {tps[0]: 9, tps[1]: 0}  # repeatable
    consumer.close()


def test_beginning_offsets_and_a_topic_created_with_configs(
    transport: Transport, unique_topic: str
) -> None:
    transport.create_topics({unique_topic: 1}, configs={unique_topic: {"cleanup.policy": "compact"}})
    producer = transport.producer()
    for i in range(4):
        producer.send(unique_topic, b"%d" % i, key=b"k%d" % (i % 2))
    producer.flush(timeout=30)
    consumer = transport.consumer(None)
    tp = TopicPartition(unique_topic, 0)
    consumer.assign([tp])
    assert consumer.beginning_offsets([tp]) == {tp: 0}
    assert consumer.end_offsets([tp]) == {tp: 4}
    consumer.seek(tp, consumer.beginning_offsets([tp])[tp])
    got: list[Message] = []
    drain([consumer], lambda: len(got) >= 4, sink={0: got})
    assert [m.value for m in got] == [b"0", b"1", b"2", b"3"]
    consumer.close()


def test_create_topics_is_idempotent(transport: Transport, unique_topic: str) -> None:
    transport.create_topics({unique_topic: 3})
    transport.create_topics({unique_topic: 3})
    transport.create_topics({unique_topic: 5})  # exists: left alone, not an error
    assert transport.partitions_for(unique_topic) == 3
    with pytest.raises(TransportError, match="unknown topic"):
        transport.partitions_for(unique_topic + "-missing")


def _sent_then_paused(broker: TansuBroker, client: str, topic: str,
                      config: dict[str, Any]) -> tuple[Transport, Any]:  # fmt: skip
    """A producer that had b"before" acknowledged, then the broker paused and b"during
    outage" sent. The caller resumes the broker."""
    bus = open_transport(broker.bootstrap, client, client_config=config)  # type: ignore[arg-type]
    bus.create_topics({topic: 1})
    producer = bus.producer()
    producer.send(topic, b"before")
    producer.flush(timeout=10)
    broker.pause()
    producer.send(topic, b"during outage")
    return bus, producer


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
def test_a_flush_that_times_out_leaves_the_records_queued_and_says_so(
    kafka_client: str, unique_topic: str
) -> None:
    """Not acknowledged in time is not failed: FlushTimeoutError, and the records still go
    out once the broker answers (the service then waits again instead of sending twice)."""
    with TansuBroker() as broker:  # a broker of its own: this test pauses it
        bus, producer = _sent_then_paused(broker, kafka_client, unique_topic, {})
        try:
            with pytest.raises(FlushTimeoutError, match="not acknowledged within 1"):
                producer.flush(timeout=1)
        finally:
            broker.resume()
        producer.flush(timeout=30)  # the same record, not sent again
        producer.close()
        consumer = bus.consumer(None)
        tp = TopicPartition(unique_topic, 0)
        consumer.assign([tp])
        got: list[Message] = []
        drain([consumer], lambda: len(got) >= 2, sink={0: got})
        assert [m.value for m in got] == [b"before", b"during outage"]
        consumer.close()
        bus.close()


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
def test_a_commit_and_a_close_with_the_broker_paused_end_in_time_and_commits_stay_in_order(
    kafka_client: str, unique_topic: str, unique_group: str
) -> None:
    """With the coordinator gone, a commit fails after ``commit_timeout_s`` (librdkafka's
    own synchronous commit waited with no bound), and so does the next (confluent-kafka: at
    once, while the first is still waiting). Once the broker
    answers, a commit succeeds and is what the group reads (a commit left waiting landed
    before it, not after); with the broker gone again, close ends within its bounds."""
    with TansuBroker() as broker:  # a broker of its own: this test pauses it
        bus = open_transport(broker.bootstrap, kafka_client)  # type: ignore[arg-type]
        bus.create_topics({unique_topic: 1})
        tp = TopicPartition(unique_topic, 0)
        consumer: Any = bus.consumer(unique_group)
        consumer.assign([tp])
        consumer.commit({tp: 4})
        assert consumer.committed(tp) == 4
        consumer.commit_timeout_s, consumer.close_timeout_s = 2.0, 2.0
        broker.pause()
        try:
            took = []
            for offset in (7, 9):
                started = time.monotonic()
                with pytest.raises(TransportError, match="commit"):
                    consumer.commit({tp: offset})
                took.append(time.monotonic() - started)
        finally:
            broker.resume()
        assert 1.5 < took[0] < 6, took
        # confluent-kafka: the second is refused at once while the first still waits;
        # kafka-python's commit has its own bound
        assert took[1] < (0.5 if kafka_client == "confluent" else 6), took
        deadline = time.monotonic() + 30
        while True:  # confluent-kafka: refused while the commit of 7 is still waiting
            try:
                consumer.commit({tp: 10})
                break
            except TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert consumer.committed(tp) == 10
        time.sleep(2)  # room for a late commit to land over it, were the order not kept
        assert consumer.committed(tp) == 10
        consumer.commit_timeout_s = 2.0
        broker.pause()
        try:
            with contextlib.suppress(TransportError):
                consumer.commit({tp: 11})
            started = time.monotonic()
            with contextlib.suppress(TransportError):
                consumer.close()
            closing = time.monotonic() - started
        finally:
            broker.resume()
        assert closing < 2.0 + 3, closing
        bus.close()


def test_flush_raises_when_records_are_not_delivered(client: str, unique_topic: str) -> None:
    if client == "memory":  # the in-memory bus has no outage: an unknown topic fails delivery
        bus = open_transport(None, "memory")
        producer = bus.producer()
        producer.send(unique_topic, b"lost")
        with pytest.raises(TransportError, match="not delivered"):
            producer.flush()
        producer.flush()  # errors are reported once
        return
    with TansuBroker() as broker:  # a broker of its own: this test pauses it
        config: dict[str, Any] = {"delivery_timeout_ms": 1500, "request_timeout_ms": 1000}
        bus, producer = _sent_then_paused(broker, client, unique_topic, config)
        try:
            started = time.monotonic()
            with pytest.raises(TransportError, match=r"not delivered|not acknowledged"):
                producer.flush(timeout=10)
            assert time.monotonic() - started < 9  # the delivery timeout, not the flush's
        finally:
            broker.resume()
        producer.send(unique_topic, b"after")
        producer.flush(timeout=15)
        producer.close()
        bus.close()


def test_confluent_drains_a_backlog_past_its_prefetch_queue_without_1_s_stalls(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    """librdkafka postpones a partition's next fetch by ``fetch.queue.backoff.ms`` once its
    prefetch queue has passed ``queued.min.messages`` (1,000 ms by default). With a queue
    of 100 messages and fetches of at most 50 kB, 20,000 records take ~33 fetches, each
    after such a wait (33 s measured with 1,000 ms); with the transport's default backoff
    the backlog drains in under a second."""
    small_fetches = {"queued.min.messages": 100, "fetch.max.bytes": 60_000,
                     "max.partition.fetch.bytes": 50_000, "message.max.bytes": 50_000}
    bus = open_transport(kafka_bootstrap, "confluent", session_timeout_ms=SESSION_MS,
                         client_config=small_fetches)
    try:
        bus.create_topics({unique_topic: 1})
        producer = bus.producer()
        for batch in range(100):
            for i in range(200):  # ~100-byte records
                producer.send(unique_topic, b"%05d" % (batch * 200 + i) + b"." * 95)
            producer.flush(timeout=30)
        consumer = bus.consumer(None)
        consumer.assign([TopicPartition(unique_topic, 0)])
        got: dict[int, list[Message]] = {}
        drain([consumer], lambda: len(got.get(0, [])) >= 20_000, sink=got, timeout=20.0)
        assert [m.offset for m in got[0]] == list(range(20_000))
        assert [m.value[:5] for m in got[0][:2]] == [b"00000", b"00001"]
        consumer.close()
    finally:
        bus.close()
