"""The confluent-kafka consumer's bounded commit, with a stand-in for librdkafka's
consumer whose commit blocks until the test lets it go (no broker): one commit in flight at
a time, in order, and commits from rebalance callbacks made on the callback's thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from streamwatch.errors import TransportError
from streamwatch.transport.base import TopicPartition
from streamwatch.transport.confluent import ConfluentConsumerTransport

TP = TopicPartition("t", 0)


class _Native:
    """Records each commit (offset, thread) and blocks it while ``hold`` is clear."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.hold.set()
        self.commits: list[tuple[int, int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.callbacks: dict[str, Any] = {}

    def commit(self, offsets: list[Any], asynchronous: bool) -> list[Any]:
        assert asynchronous is False
        self.commits.append((offsets[0].offset, threading.get_ident()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.hold.wait()
        finally:
            self.in_flight -= 1
        return offsets

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def assign(self, partitions: list[Any]) -> None:
        pass

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        return []

    def close(self) -> None:
        self.hold.wait()


def _consumer() -> tuple[ConfluentConsumerTransport, _Native]:
    native = _Native()
    consumer = ConfluentConsumerTransport(native, "g", {}, "earliest")  # type: ignore[arg-type]
    consumer.commit_timeout_s = consumer.close_timeout_s = 0.3
    return consumer, native


def test_a_commit_left_waiting_refuses_the_next_until_it_ends_so_commits_stay_in_order() -> None:
    consumer, native = _consumer()
    native.hold.clear()  # the broker does not answer
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"not acknowledged within 0\.3 s"):
        consumer.commit({TP: 5})
    assert 0.25 < time.monotonic() - started < 2
    started = time.monotonic()
    with pytest.raises(TransportError, match="not attempted"):
        consumer.commit({TP: 7})  # never sent: it would race the waiting one
    assert time.monotonic() - started < 0.1
    native.hold.set()  # the broker answers: the waiting commit lands, then the next goes
    deadline = time.monotonic() + 5
    while True:
        try:
            consumer.commit({TP: 9})
            break
        except TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert [offset for offset, _ in native.commits] == [5, 9]
    assert native.most_in_flight == 1


def test_a_commit_inside_a_rebalance_callback_is_made_on_the_callbacks_thread() -> None:
    # librdkafka holds another thread's commit until the callback returns: made elsewhere
    # and waited for, it never finished
    consumer, native = _consumer()
    seen: list[int] = []

    def on_revoke(parts: set[TopicPartition]) -> None:
        seen.append(threading.get_ident())
        consumer.commit({TP: 3})

    consumer.subscribe(["t"], on_revoke=on_revoke)
    from confluent_kafka import TopicPartition as CTP

    native.callbacks["on_revoke"](native, [CTP("t", 0)])
    assert native.commits == [(3, seen[0])] == [(3, threading.get_ident())]
    consumer.commit({TP: 4})  # outside a callback: on a thread of its own
    assert native.commits[1][0] == 4 and native.commits[1][1] != threading.get_ident()


def test_a_close_that_times_out_raises_and_its_late_callbacks_do_nothing() -> None:
    consumer, native = _consumer()
    revoked: list[set[TopicPartition]] = []
    consumer.subscribe(["t"], on_revoke=revoked.append)
    native.hold.clear()
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"close not finished within 0\.3 s"):
        consumer.close()
    assert time.monotonic() - started < 2
    from confluent_kafka import TopicPartition as CTP

    native.callbacks["on_revoke"](native, [CTP("t", 0)])  # the close's revoke, late
    assert revoked == []
    native.hold.set()
