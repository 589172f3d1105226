"""Kafka transport over confluent-kafka (librdkafka): the fast option, same contract.

Same semantics as :mod:`streamwatch.transport.kafka`: manual commits of the *next* offsets,
``on_assign`` / ``on_revoke`` / ``on_lost`` (``on_revoke`` when none) run inside ``poll`` or
``close``, topics created through the admin client, delivery failures raised by ``flush``.
Keyed records use Kafka's murmur2 partitioner (``murmur2_random``), as kafka-python does,
so both clients place a key on the same partition.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from functools import partial
from operator import attrgetter, itemgetter
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import Message as CMessage
from confluent_kafka import TopicPartition as CTP
from confluent_kafka.admin import AdminClient, NewTopic

from streamwatch.errors import ConfigError, FlushTimeoutError, TransportError
from streamwatch.transport._common import check_partitions, check_poll_args, check_record
from streamwatch.transport._kafka_common import (
    CLOSE_TIMEOUT_S,
    COMMIT_TIMEOUT_S,
    DeliveryErrors,
    check_offset_reset,
    check_session_timeout,
    to_librdkafka,
    unreachable,
)
from streamwatch.transport.base import Message, RebalanceCallback, TopicPartition

logger = logging.getLogger(__name__)
_client_logger = logging.getLogger("streamwatch.transport.librdkafka")
_SEEK_RETRY_S = 10.0
FETCH_QUEUE_BACKOFF_MS = 10
"""The consumer's ``fetch.queue.backoff.ms`` unless ``client_config`` sets it (see
``ConfluentTransport``); 10 ms, as other librdkafka users who drain backlogs set it."""


class _Waited:
    """A blocking client call made on its own daemon thread, waited for at most a while.

    librdkafka's synchronous commit and its consumer close wait for the group coordinator
    with no bound: with the broker paused, a commit was still waiting after 20 s and a
    close after 30 s (measured on Tansu), and a stop waited as long as the outage. The call
    goes on in the background when the wait ends, and a daemon thread does not hold up the
    interpreter's exit.
    """

    def __init__(self, name: str, call: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = threading.Thread(
            target=self._run, args=(call,), name=name, daemon=True)
        self.thread.start()

    @classmethod
    def inline(cls, call: Any) -> _Waited:
        """The call made on this thread, unbounded."""
        done = cls.__new__(cls)
        done.result, done.error, done.thread = None, None, None
        done._run(call)
        return done

    def _run(self, call: Any) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc

    def wait(self, timeout: float) -> bool:
        """True once the call has returned or raised."""
        if self.thread is None:
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _to_c(tp: TopicPartition, offset: int = OFFSET_INVALID) -> CTP:
    return CTP(tp.topic, tp.partition, offset)


def _from_c(tps: Iterable[CTP]) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in tps}


def _log_client_error(error: KafkaError) -> None:
    logger.warning("kafka client error code=%s reason=%s", error.name(), error.str())


_ERROR = CMessage.error
_TOPIC_PARTITION = attrgetter("topic", "partition")
_OFFSET = attrgetter("offset")
_TIMESTAMP_MS = itemgetter(1)
_new_message = partial(tuple.__new__, Message)


def _message(m: Any) -> Message:
    return Message(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1])


def _messages(batch: list[Any]) -> list[Message]:
    """``[_message(m) for m in batch]`` with C-level maps: ~0.17 us less per record (of
    ~0.55), measured on 1,000-record batches.

    >>> m = CMessage(topic="t", partition=1, offset=7, key=b"k", value=b"v", timestamp=(1, 5))
    >>> _messages([m]) == [_message(m)] == [Message("t", 1, 7, b"k", b"v", 5)]
    True
    """
    return list(map(_new_message, zip(
        map(CMessage.topic, batch), map(CMessage.partition, batch), map(CMessage.offset, batch),
        map(CMessage.key, batch), map(CMessage.value, batch),
        map(_TIMESTAMP_MS, map(CMessage.timestamp, batch)), strict=True)))  # fmt: skip


class ConfluentTransport:
    """Producers, consumers and topic admin on one Kafka cluster, through confluent-kafka.

    Parameters are those of :class:`streamwatch.transport.kafka.KafkaTransport`;
    ``client_config`` takes kafka-python names (mapped) or librdkafka names (with dots).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        session_timeout_ms: int = 6000,
        auto_offset_reset: str = "earliest",
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not bootstrap_servers:
            raise ConfigError("bootstrap_servers must be 'host:port[,host:port...]'")
        check_session_timeout(session_timeout_ms)
        check_offset_reset(auto_offset_reset)
        config = dict(client_config or {})
        self.bootstrap_servers = bootstrap_servers
        self.session_timeout_ms = session_timeout_ms
        self.auto_offset_reset = auto_offset_reset
        self.connect_timeout_s = float(config.get("bootstrap_timeout_ms", 5000)) / 1000
        self.max_block_s = float(config.get("max_block_ms", 10_000)) / 1000
        base = {
            "bootstrap.servers": bootstrap_servers,
            "error_cb": _log_client_error,
            "logger": _client_logger,
        }
        self.producer_config = {
            **base,
            "linger.ms": 5,
            "batch.size": 256 * 1024,
            "acks": "all",
            "partitioner": "murmur2_random",
            "delivery.report.only.error": True,
            "enable.idempotence": False,  # see _kafka_common.PRODUCER_DEFAULTS
            "max.in.flight.requests.per.connection": 1,
            **to_librdkafka(config, "producer"),
        }
        self.consumer_config = {
            **base,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": auto_offset_reset,
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(100, session_timeout_ms // 4),
            "allow.auto.create.topics": False,
            # librdkafka stops fetching a partition whose prefetch queue has passed
            # queued.min.messages (100,000) or queued.max.messages.kbytes (64 MB) and
            # fetches it again only after this backoff, 1,000 ms by default: the service
            # drains a queue far sooner and then blocked in poll (a detector at 0.73-0.79
            # of a core; +4 % to +30 % readings/s with 5-10 ms in five back-to-back pairs,
            # docs/bench.md)
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            **to_librdkafka(config, "consumer"),
        }
        self.admin_config = {**base, **to_librdkafka(config, "admin")}
        self._admin: AdminClient | None = None

    def connect(self) -> ConfluentTransport:
        """Reach the cluster now; raises :class:`BrokerUnavailableError` within a few s."""
        self._metadata()
        return self

    def _metadata(self) -> Any:
        if self._admin is None:
            self._admin = AdminClient(self.admin_config)
        try:
            return self._admin.list_topics(timeout=self.connect_timeout_s)
        except KafkaException as exc:
            raise unreachable(self.bootstrap_servers, self.connect_timeout_s) from exc

    # -- Transport protocol ---------------------------------------------------------------
    def producer(self) -> ConfluentProducerTransport:
        errors = DeliveryErrors()

        def on_delivery(error: KafkaError | None, msg: Any) -> None:
            if error is not None:
                errors.add(msg.topic(), error.str())

        native = Producer({**self.producer_config, "on_delivery": on_delivery})
        return ConfluentProducerTransport(native, errors, self.bootstrap_servers, self.max_block_s)

    def consumer(self, group_id: str | None = None) -> ConfluentConsumerTransport:
        if group_id is not None and not group_id:
            raise ConfigError("group_id must be a non-empty string or None")
        # librdkafka wants a group.id even for assign(); a private one, never committed to.
        native_group = group_id or f"streamwatch-nogroup-{uuid.uuid4().hex}"
        native = Consumer({**self.consumer_config, "group.id": native_group})
        probe_config = {**self.consumer_config, "group.id": f"streamwatch-probe-{uuid.uuid4().hex}"}
        return ConfluentConsumerTransport(native, group_id, probe_config, self.auto_offset_reset)

    def create_topics(
        self, topics: Mapping[str, int], configs: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        for name, partitions in topics.items():
            check_partitions(name, partitions)
        self._metadata()
        assert self._admin is not None
        configs = configs or {}
        new = [NewTopic(name, n, -1, config=dict(configs.get(name, {})))
               for name, n in topics.items()]
        if new:
            futures = self._admin.create_topics(new, operation_timeout=10, request_timeout=15)
            for name, future in futures.items():
                try:
                    future.result()
                    logger.info("topic created name=%s partitions=%d", name, topics[name])
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise TransportError(f"could not create topic {name!r}: {exc}") from exc
        for name, partitions in topics.items():
            have = self._wait_visible(name)
            if have != partitions:
                logger.warning(
                    "topic exists with other partition count name=%s have=%d asked=%d",
                    name,
                    have,
                    partitions,
                )

    def _wait_visible(self, topic: str, timeout: float = 10.0) -> int:
        """Partition count of a topic just created, once the cluster's metadata shows it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.partitions_for(topic)
            except TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def partitions_for(self, topic: str) -> int:
        # All topics, not list_topics(topic=...): that request auto-creates it on Tansu.
        meta = self._metadata().topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            raise TransportError(f"unknown topic {topic!r}: create it with create_topics()")
        return len(meta.partitions)

    def close(self) -> None:
        self._admin = None


class ConfluentProducerTransport:
    """A confluent-kafka producer; delivery failures are raised by :meth:`flush`."""

    def __init__(
        self, native: Producer, errors: DeliveryErrors, bootstrap: str, max_block_s: float
    ) -> None:
        self._native = native
        self._errors = errors
        self._bootstrap = bootstrap
        self._max_block_s = max_block_s
        self._sends = 0

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        check_record(value, key, 1_000_000)
        deadline = None
        while True:
            try:
                self._native.produce(topic, value, key)
                break
            except BufferError:  # local queue full: serve deliveries, wait, retry
                deadline = deadline or time.monotonic() + self._max_block_s
                if time.monotonic() > deadline:
                    raise TransportError(
                        f"send to {topic!r}: local queue full for {self._max_block_s:.0f} s; "
                        f"broker {self._bootstrap} slow or unreachable"
                    ) from None
                self._native.poll(0.05)
            except KafkaException as exc:
                raise TransportError(f"send to {topic!r} failed: {exc}") from exc
        self._sends += 1
        if self._sends % 10_000 == 0:
            self._native.poll(0)

    def flush(self, timeout: float | None = None) -> None:
        left = self._native.flush(-1 if timeout is None else timeout)
        if left:
            raise FlushTimeoutError(
                f"flush: {left} record(s) not acknowledged within {timeout} s by "
                f"{self._bootstrap} (broker slow or unreachable); they stay queued, a later "
                "flush() may succeed"
            )
        self._errors.raise_if_any()

    def close(self) -> None:
        self.flush(timeout=10)


class ConfluentConsumerTransport:
    """A confluent-kafka consumer (group member via ``subscribe`` or group-less ``assign``)."""

    def __init__(
        self,
        native: Consumer,
        group_id: str | None,
        probe_config: dict[str, Any],
        auto_offset_reset: str,
    ) -> None:
        self.native = native
        self.group_id = group_id
        self._probe_config = probe_config
        self._auto_offset_reset = auto_offset_reset
        self._positions: dict[TopicPartition, int] = {}
        self._assigning: dict[TopicPartition, int] | None = None
        self._manual: list[TopicPartition] = []
        self._paused: set[TopicPartition] = set()
        self._commit: _Waited | None = None  # the last commit, while it may be in flight
        self._closing = False
        self._abandoned = False  # close() gave up waiting: no more application callbacks
        self._in_callback = 0  # inside on_assign / on_revoke
        self.commit_timeout_s = COMMIT_TIMEOUT_S
        self.close_timeout_s = CLOSE_TIMEOUT_S

    def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        if self.group_id is None:
            raise TransportError("subscribe() needs a group_id: use assign() without a group")
        lost_callback = on_lost if on_lost is not None else on_revoke

        def assigned(native: Consumer, partitions: list[CTP]) -> None:
            tps = _from_c(partitions)
            self._assigning = {}
            self._in_callback += 1
            try:
                if on_assign is not None and not self._abandoned:
                    on_assign(tps)
            finally:
                self._in_callback -= 1
                seeks, self._assigning = self._assigning, None
                native.assign([_to_c(tp, seeks.get(tp, OFFSET_INVALID)) for tp in sorted(tps)])
                # librdkafka keeps a partition's paused flag across a rebalance; the
                # transport's contract is that an assigned partition starts unpaused
                again = sorted(tps & self._paused)
                if again:
                    native.resume([_to_c(tp) for tp in again])
                self._paused -= tps
                self._positions.update(self._committed_many(tps - set(seeks)))
                self._positions.update(seeks)

        def taken(partitions: list[CTP], callback: RebalanceCallback | None) -> None:
            tps = _from_c(partitions)
            self._in_callback += 1
            try:
                if tps and callback is not None and not self._abandoned:
                    callback(tps)
            finally:
                self._in_callback -= 1
                for tp in tps:
                    self._positions.pop(tp, None)

        def revoked(native: Consumer, partitions: list[CTP]) -> None:
            taken(partitions, on_revoke)

        def lost(native: Consumer, partitions: list[CTP]) -> None:
            logger.warning(
                "group membership lost; partitions %s lost", sorted(_from_c(partitions))
            )
            taken(partitions, lost_callback)

        try:
            self.native.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=lost)
        except KafkaException as exc:
            raise TransportError(f"subscribe failed: {exc}") from exc

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._manual = sorted(set(partitions))
        self._positions = {}
        self._reassign()

    def _reassign(self) -> None:
        native = [_to_c(tp, self._positions.get(tp, OFFSET_INVALID)) for tp in self._manual]
        try:
            self.native.assign(native)
        except KafkaException as exc:
            raise TransportError(f"assign failed: {exc}") from exc

    def poll(self, timeout: float = 1.0, max_records: int = 10_000) -> list[Message]:
        """Up to ``max_records`` messages, returning as soon as any are available (like
        kafka-python's poll), waiting at most ``timeout`` for the first one.

        librdkafka's ``consume(n, timeout)`` alone waits until it has ``n`` messages or the
        timeout expires: at live rates every batch waited the full timeout (p50 latency
        420 ms, p99 927 ms at 6,400 readings/s in ``streamwatch bench kafka``). So: take
        what is buffered, else wait for one message, then take what came with it.
        """
        check_poll_args(timeout, max_records)
        n = min(max_records, 1_000_000)
        try:
            batch: list[Any] = self.native.consume(num_messages=n, timeout=0)
            if not batch:
                batch = self.native.consume(num_messages=1, timeout=timeout)
                if batch and n > 1:
                    batch.extend(self.native.consume(num_messages=n - 1, timeout=0))
        except KafkaException as exc:  # a callback's own exception propagates unchanged
            raise TransportError(f"poll failed: {exc}") from exc
        if not any(map(_ERROR, batch)):
            out = _messages(batch)  # the usual poll: no error in it, converted in C
        else:
            out = []
            m: Any
            for m in batch:
                error = m.error()
                if error is not None:
                    if error.fatal():
                        raise TransportError(f"consumer failed: {error.str()}")
                    logger.warning("consume error code=%s reason=%s", error.name(), error.str())
                    continue
                out.append(_message(m))
        # a partition's messages come in offset order: the last one of each is its position
        last = dict(zip(map(_TOPIC_PARTITION, out), map(_OFFSET, out), strict=True))
        for (topic, partition), offset in last.items():
            self._positions[TopicPartition(topic, partition)] = offset + 1
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit synchronously, waiting at most ``commit_timeout_s`` (as kafka-python's
        ``commit`` does): librdkafka's own wait has no bound. A commit that times out goes
        on in the background, and the next one fails at once while it does, so commits
        reach the broker in order (a late one never overwrites newer offsets). Inside a
        rebalance callback the commit is unbounded (below)."""
        if self.group_id is None:
            raise TransportError("commit() needs a group_id: this consumer has none")
        if not offsets:
            return
        earlier = self._commit
        if earlier is not None and not earlier.wait(0):
            raise TransportError(
                "commit not attempted: the previous one is still waiting for the broker "
                "(unreachable?); the next checkpoint commits again")
        native = [_to_c(tp, int(off)) for tp, off in offsets.items()]
        commit = partial(self.native.commit, offsets=native, asynchronous=False)
        if self._in_callback or self._closing:
            # librdkafka holds a commit made elsewhere until the rebalance callback returns
            # (measured: another thread's commit never finished), so a callback commits on
            # its own thread, unbounded. close() runs on a thread that close waits for.
            call = _Waited.inline(commit)
        else:
            call = _Waited("streamwatch-commit", commit)
        self._commit = call
        if not call.wait(self.commit_timeout_s):
            raise TransportError(
                f"commit not acknowledged within {self.commit_timeout_s:g} s (broker "
                "unreachable?); it goes on in the background, and the next checkpoint "
                "commits again")
        self._commit = None
        if isinstance(call.error, KafkaException):
            raise TransportError(
                f"commit failed ({call.error}); if the group rebalanced, the new owner resumes "
                "from the last committed offsets"
            ) from call.error
        if call.error is not None:  # a rebalance callback's own exception: unchanged
            raise call.error
        failed = [tp for tp in call.result or [] if tp.error is not None]
        if failed:
            raise TransportError(f"commit failed for {failed[0]}: {failed[0].error}")

    def committed(self, partition: TopicPartition) -> int | None:
        if self.group_id is None:
            return None
        return self._committed_many({partition}).get(partition)

    def _committed_many(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Committed offsets of ``partitions`` that have one."""
        if not partitions:
            return {}
        try:
            found = self.native.committed([_to_c(tp) for tp in sorted(partitions)], timeout=10)
        except KafkaException as exc:
            raise TransportError(f"committed() failed: {exc}") from exc
        return {TopicPartition(c.topic, c.partition): int(c.offset) for c in found if c.offset >= 0}

    def assignment(self) -> set[TopicPartition]:
        return _from_c(self.native.assignment())

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if offset < 0:
            raise ConfigError(f"seek offset must be >= 0, got {offset}")
        if self._assigning is not None:  # inside on_assign: applied by the assign() after it
            self._assigning[partition] = offset
            return
        if partition not in self.assignment():
            raise TransportError(f"{partition} is not assigned to this consumer")
        deadline = time.monotonic() + _SEEK_RETRY_S
        while True:
            try:
                self.native.seek(_to_c(partition, offset))
                break
            except KafkaException as exc:  # _STATE until the partition's fetcher has started
                if exc.args[0].code() != KafkaError._STATE or time.monotonic() > deadline:
                    raise TransportError(f"seek({partition}, {offset}) failed: {exc}") from exc
                time.sleep(0.01)
        self._positions[partition] = offset

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """librdkafka drops what it prefetched for a paused partition and, on resume,
        fetches again from the offset after the last message handed to the application."""
        tps = sorted(set(partitions))
        if not tps:
            return
        missing = [tp for tp in tps if tp not in self.assignment()]
        if missing:
            raise TransportError(f"pause({missing[0]}): the partition is not assigned")
        try:
            self.native.pause([_to_c(tp) for tp in tps])
        except KafkaException as exc:
            raise TransportError(f"pause failed: {exc}") from exc
        self._paused.update(tps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = sorted(set(partitions) & self.assignment())  # revoked: nothing to resume
        if not tps:
            return
        try:
            self.native.resume([_to_c(tp) for tp in tps])
        except KafkaException as exc:
            raise TransportError(f"resume failed: {exc}") from exc
        self._paused.difference_update(tps)

    def position(self, partition: TopicPartition) -> int:
        if partition not in self.assignment():
            raise TransportError(f"{partition} is not assigned to this consumer")
        known = self._positions.get(partition)
        if known is not None:
            return known
        committed = self.committed(partition)
        if committed is not None:
            return committed
        if self._auto_offset_reset == "latest":
            return self.end_offsets([partition])[partition]
        try:
            low, _high = self.native.get_watermark_offsets(_to_c(partition), timeout=10)
        except KafkaException as exc:
            raise TransportError(f"position({partition}) failed: {exc}") from exc
        return int(low)

    def _watermarks(self, partitions: Iterable[TopicPartition], what: str
                    ) -> dict[TopicPartition, tuple[int, int]]:
        """(low, high) per partition, asked of the broker."""
        out: dict[TopicPartition, tuple[int, int]] = {}
        try:
            for tp in partitions:
                low, high = self.native.get_watermark_offsets(_to_c(tp), timeout=10, cached=False)
                out[tp] = (int(low), int(high))
        except KafkaException as exc:
            raise TransportError(f"{what} failed: {exc}") from exc
        return out

    def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return {tp: low for tp, (low, _high) in self._watermarks(partitions, "beginning_offsets").items()}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        listed = {tp: high for tp, (_low, high) in self._watermarks(partitions, "end_offsets").items()}
        return self._confirm_ends(listed)

    def highwater(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        try:
            for tp in partitions:
                _low, high = self.native.get_watermark_offsets(_to_c(tp), cached=True)
                if high >= 0:  # OFFSET_INVALID (-1001) until a fetch answer has arrived
                    out[tp] = int(high)
        except KafkaException as exc:
            raise TransportError(f"highwater failed: {exc}") from exc
        return out

    def _confirm_ends(self, listed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Replace each non-zero ListOffsets answer by the high watermark of a fetch at it - 1."""
        pending = {tp: off for tp, off in listed.items() if off > 0}
        if not pending:
            return listed
        result = dict(listed)
        probe = Consumer(self._probe_config)
        try:
            probe.assign([_to_c(tp, off - 1) for tp, off in pending.items()])
            deadline = time.monotonic() + 10
            while pending and time.monotonic() < deadline:
                messages: list[Any] = probe.consume(num_messages=10_000, timeout=0.2)
                for m in messages:
                    tp = TopicPartition(m.topic(), m.partition())
                    if m.error() is None and tp in pending:
                        _low, high = probe.get_watermark_offsets(_to_c(tp), cached=True)
                        result[tp] = max(pending.pop(tp), int(high))
        finally:
            probe.close()
        if pending:
            logger.warning("end offsets unconfirmed (no fetch answer) partitions=%s", pending)
        return result

    def close(self) -> None:
        """Leave the group and close, waiting at most ``close_timeout_s``; then the close
        goes on in the background and this raises. The revoke callback runs on the closing
        thread (the caller waits meanwhile)."""
        self._closing = True
        call = _Waited("streamwatch-consumer-close", self.native.close)
        if not call.wait(self.close_timeout_s):
            # the close goes on in the background; a callback it runs later must not act
            # for a caller that has moved on (one already running cannot be stopped)
            self._abandoned = True
            raise TransportError(
                f"consumer close not finished within {self.close_timeout_s:g} s (broker "
                "unreachable?); the group's session timeout hands its partitions on")
        if isinstance(call.error, KafkaException):
            raise TransportError(f"close failed: {call.error}") from call.error
        if call.error is not None:
            raise call.error
