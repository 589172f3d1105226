"""In-process transport with Kafka's semantics: partitions, offsets, consumer groups.

Used by unit tests, library use and offline evaluation. Thread-safe: one bus, any number of
producers and consumers (each consumer used by one thread at a time, as with Kafka).

Consumer groups have real membership. A member joining (``subscribe``), leaving
(``close``) or failing to poll within ``session_timeout_ms`` during a rebalance starts a
rebalance: every member revokes (``on_revoke``) in its next ``poll`` before any member is
assigned (``on_assign``), range assignment per topic, and newly assigned partitions resume
at the group's committed offset (or ``auto_offset_reset`` when there is none).

Examples
--------
>>> bus = MemoryTransport()
>>> bus.create_topics({"t": 2})
>>> producer = bus.producer()
>>> producer.send("t", b"hello", key=b"bed-1")
>>> producer.flush()
>>> consumer = bus.consumer("g")
>>> consumer.subscribe(["t"])
>>> [m.value for m in consumer.poll(timeout=1.0)]
[b'hello']
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Literal

from streamwatch.errors import ConfigError, TransportError
from streamwatch.transport._common import (
    check_partitions,
    check_poll_args,
    check_record,
    check_topic_name,
    partition_for_key,
)
from streamwatch.transport._membership import Group, Member
from streamwatch.transport.base import Message, RebalanceCallback, TopicPartition

logger = logging.getLogger(__name__)

OffsetReset = Literal["earliest", "latest"]
_WAIT_SLICE_S = 0.05


class MemoryTransport:
    """A message bus in this process.

    Parameters
    ----------
    session_timeout_ms
        A group member that does not poll within this time during a rebalance is evicted
        (100..3,600,000).
    auto_offset_reset
        Where a consumer starts on a partition without a committed offset.
    auto_create_topics
        Create unknown topics on first send (1 partition); by default sending to an unknown
        topic is a delivery error raised by ``flush``.
    max_message_bytes
        Largest key + value accepted by ``send`` (Kafka's default is 1 MiB).
    """

    def __init__(
        self,
        *,
        session_timeout_ms: int = 6000,
        auto_offset_reset: OffsetReset = "earliest",
        auto_create_topics: bool = False,
        max_message_bytes: int = 1_048_576,
    ) -> None:
        if not 100 <= session_timeout_ms <= 3_600_000:
            raise ConfigError(
                f"session_timeout_ms must be in 100..3600000, got {session_timeout_ms}"
            )
        if auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(
                f"auto_offset_reset must be 'earliest' or 'latest', got {auto_offset_reset!r}"
            )
        if max_message_bytes < 1:
            raise ConfigError(f"max_message_bytes must be >= 1, got {max_message_bytes}")
        self.session_timeout_ms = session_timeout_ms
        self.auto_offset_reset = auto_offset_reset
        self.auto_create_topics = auto_create_topics
        self.max_message_bytes = max_message_bytes
        self.cond = threading.Condition(threading.RLock())
        self.logs: dict[str, list[list[Message]]] = {}
        self.groups: dict[str, Group] = {}
        self._round_robin: dict[str, itertools.count[int]] = {}
        self._closed = False

    # -- Transport protocol ---------------------------------------------------------------
    def producer(self) -> MemoryProducer:
        self._check_open()
        return MemoryProducer(self)

    def consumer(self, group_id: str | None = None) -> MemoryConsumer:
        self._check_open()
        return MemoryConsumer(self, group_id)

    def create_topics(
        self, topics: Mapping[str, int], configs: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        """Configs are accepted and not kept (no compaction, as on Tansu)."""
        self._check_open()
        for name, partitions in topics.items():
            check_topic_name(name)
            check_partitions(name, partitions)
        with self.cond:
            for name, partitions in topics.items():
                existing = self.logs.get(name)
                if existing is None:
                    self.logs[name] = [[] for _ in range(partitions)]
                    logger.debug("topic created name=%s partitions=%d", name, partitions)
                    for group in self.groups.values():
                        if group.subscribes(name):  # as Kafka's metadata refresh does
                            group.begin_rebalance(self.session_timeout_ms)
                    self.cond.notify_all()
                elif len(existing) != partitions:
                    logger.warning(
                        "topic exists with other partition count name=%s have=%d asked=%d",
                        name,
                        len(existing),
                        partitions,
                    )

    def partitions_for(self, topic: str) -> int:
        with self.cond:
            log = self.logs.get(topic)
            if log is None:
                raise TransportError(f"unknown topic {topic!r}: create it with create_topics()")
            return len(log)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("the in-memory transport is closed")

    # -- used by producers and consumers (call with self.cond held) -------------------------
    def append(self, topic: str, value: bytes | None, key: bytes | None) -> str | None:
        """Append one record; return an error text instead of raising (delivery error)."""
        log = self.logs.get(topic)
        if log is None:
            if not self.auto_create_topics:
                return f"unknown topic {topic!r}: create it first with create_topics()"
            log = self.logs[topic] = [[]]
        n = len(log)
        if key is not None:
            partition = partition_for_key(key, n)
        else:
            counter = self._round_robin.setdefault(topic, itertools.count())
            partition = next(counter) % n
        part = log[partition]
        part.append(Message(topic, partition, len(part), key, value, int(time.time() * 1000)))
        return None

    def end_offset(self, tp: TopicPartition) -> int:
        log = self.logs.get(tp.topic)
        if log is None or not 0 <= tp.partition < len(log):
            raise TransportError(f"unknown partition {tp.topic}[{tp.partition}]")
        return len(log[tp.partition])

    def reset_offset(self, tp: TopicPartition) -> int:
        return 0 if self.auto_offset_reset == "earliest" else self.end_offset(tp)


class MemoryProducer:
    """Producer on a :class:`MemoryTransport`; records are visible as soon as sent."""

    def __init__(self, bus: MemoryTransport) -> None:
        self._bus = bus
        self._errors: list[str] = []
        self._closed = False

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        if self._closed:
            raise TransportError("send() on a closed producer")
        check_record(value, key, self._bus.max_message_bytes)
        with self._bus.cond:
            error = self._bus.append(topic, value, key)
            if error is None:
                self._bus.cond.notify_all()
            else:
                self._errors.append(error)

    def flush(self, timeout: float | None = None) -> None:
        with self._bus.cond:
            errors, self._errors = self._errors, []
        if errors:
            raise TransportError(f"{len(errors)} record(s) not delivered; first: {errors[0]}")

    def close(self) -> None:
        if not self._closed:
            self.flush()
            self._closed = True


class MemoryConsumer:
    """Consumer on a :class:`MemoryTransport` (one thread at a time)."""

    def __init__(self, bus: MemoryTransport, group_id: str | None) -> None:
        if group_id is not None and not group_id:
            raise ConfigError("group_id must be a non-empty string or None")
        self._bus = bus
        self.group_id = group_id
        self._member: Member | None = None
        self._manual = False
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._next_start = 0
        self._closed = False

    # -- membership -----------------------------------------------------------------------
    def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,  # (no sessions here to expire)
    ) -> None:
        self._check_open()
        if self.group_id is None:
            raise TransportError("subscribe() needs a group_id: use assign() without a group")
        if self._manual:
            raise TransportError("subscribe() after assign(): use one consumer per mode")
        wanted = frozenset(topics)
        if not wanted:
            raise ConfigError("subscribe() needs at least one topic")
        with self._bus.cond:
            group = self._group()
            if self._member is None:
                self._member = group.join(wanted, on_assign, on_revoke)
            else:
                self._member.on_assign, self._member.on_revoke = on_assign, on_revoke
                group.change_subscription(self._member, wanted)
            group.begin_rebalance(self._bus.session_timeout_ms)
            self._bus.cond.notify_all()

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._check_open()
        if self._member is not None:
            raise TransportError("assign() after subscribe(): use one consumer per mode")
        self._manual = True
        wanted = set(partitions)
        with self._bus.cond:
            for tp in wanted:
                self._bus.end_offset(tp)  # raises on unknown partitions
            self._positions = {tp: self._positions.get(tp, self._start_offset(tp)) for tp in wanted}
            self._paused.clear()

    def _start_offset(self, tp: TopicPartition) -> int:
        if self.group_id is not None:
            group = self._bus.groups.get(self.group_id)
            if group is not None and tp in group.committed:
                return group.committed[tp]
        return self._bus.reset_offset(tp)

    def _group(self) -> Group:
        assert self.group_id is not None
        group = self._bus.groups.get(self.group_id)
        if group is None:
            group = self._bus.groups[self.group_id] = Group(self.group_id, self._bus.logs)
        return group

    def _drive_group(self) -> None:
        """Advance this member through a pending rebalance.

        Callbacks run here, in the caller's thread, without the bus lock: ``on_revoke``
        before this member joins the rebalance (so it can still commit), ``on_assign``
        once the new assignment is known.
        """
        member = self._member
        if member is None:
            return
        with self._bus.cond:
            group = self._group()
            group.evict_late_members()
            evicted = not group.is_member(member)
            must_join = evicted or (group.rebalancing and not group.has_joined(member))
            revoked = set(self._positions) if must_join else set()
        if must_join:
            try:
                if revoked and member.on_revoke is not None:
                    member.on_revoke(revoked)
            finally:
                with self._bus.cond:
                    self._positions = {}
                    self._paused.clear()
                    if evicted:
                        logger.warning(
                            "evicted from group=%s (no poll within the session timeout): rejoining",
                            member.group_id,
                        )
                        member = self._member = group.join(
                            member.topics, member.on_assign, member.on_revoke
                        )
                        group.begin_rebalance(self._bus.session_timeout_ms)
                    if group.is_member(member) and group.rebalancing:
                        group.mark_joined(member)
                    self._bus.cond.notify_all()
        with self._bus.cond:
            apply = (
                group.is_member(member)
                and not group.rebalancing
                and member.applied_generation != group.generation
            )
            if apply:
                member.applied_generation = group.generation
                assigned = set(member.assignment)
                self._positions = {tp: self._start_offset(tp) for tp in sorted(assigned)}
                self._paused.clear()
        if apply and member.on_assign is not None:
            member.on_assign(assigned)

    # -- reading ---------------------------------------------------------------------------
    def poll(self, timeout: float = 1.0, max_records: int = 10_000) -> list[Message]:
        self._check_open()
        check_poll_args(timeout, max_records)
        deadline = time.monotonic() + timeout
        while True:
            self._drive_group()
            with self._bus.cond:
                records = self._collect(max_records)
                if records:
                    return records
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._bus.cond.wait(min(remaining, _WAIT_SLICE_S))

    def _collect(self, max_records: int) -> list[Message]:
        out: list[Message] = []
        parts = list(self._positions)
        if not parts:
            return out
        start = self._next_start % len(parts)
        self._next_start += 1
        for tp in parts[start:] + parts[:start]:
            if tp in self._paused:
                continue
            log = self._bus.logs[tp.topic][tp.partition]
            pos = self._positions[tp]
            if pos > len(log):
                pos = self._bus.reset_offset(tp)
                logger.warning(
                    "offset out of range topic=%s partition=%d: reset", tp.topic, tp.partition
                )
            chunk = log[pos : pos + max_records - len(out)]
            if chunk:
                out.extend(chunk)
                self._positions[tp] = pos + len(chunk)
                if len(out) >= max_records:
                    break
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._check_open()
        if self.group_id is None:
            raise TransportError("commit() needs a group_id: this consumer has none")
        for tp, offset in offsets.items():
            if not isinstance(offset, int) or offset < 0:
                raise ConfigError(f"commit offset for {tp} must be an int >= 0, got {offset!r}")
        with self._bus.cond:
            group = self._group()
            if self._member is not None and not group.is_member(self._member):
                raise TransportError(
                    f"commit failed: this consumer was evicted from group {self.group_id!r} "
                    "and its partitions were reassigned; it rejoins on the next poll()"
                )
            group.committed.update(offsets)

    def committed(self, partition: TopicPartition) -> int | None:
        if self.group_id is None:
            return None
        with self._bus.cond:
            group = self._bus.groups.get(self.group_id)
            return None if group is None else group.committed.get(partition)

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._check_assigned(partition)
        if offset < 0:
            raise ConfigError(f"seek offset must be >= 0, got {offset}")
        self._positions[partition] = offset

    def position(self, partition: TopicPartition) -> int:
        self._check_assigned(partition)
        return self._positions[partition]

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        tps = set(partitions)
        for tp in tps:
            self._check_assigned(tp)
        self._paused |= tps

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused -= set(partitions)

    def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 0)  # nothing is ever trimmed

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        with self._bus.cond:
            return {tp: self._bus.end_offset(tp) for tp in partitions}

    def highwater(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self.end_offsets(partitions)

    def close(self) -> None:
        """Leave the group (``on_revoke`` first, so the callback can still commit)."""
        if self._closed:
            return
        member = self._member
        try:
            if member is not None:
                with self._bus.cond:
                    still_member = self._group().is_member(member)
                revoked = set(self._positions)
                if still_member and revoked and member.on_revoke is not None:
                    member.on_revoke(revoked)
        finally:
            self._closed = True
            self._positions = {}
            self._paused.clear()
            self._member = None
            if member is not None:
                with self._bus.cond:
                    group = self._group()
                    if group.is_member(member):
                        group.leave(member)
                        group.begin_rebalance(self._bus.session_timeout_ms)
                    self._bus.cond.notify_all()

    def _check_assigned(self, partition: TopicPartition) -> None:
        self._check_open()
        if partition not in self._positions:
            raise TransportError(f"{partition} is not assigned to this consumer")

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("the consumer is closed")
