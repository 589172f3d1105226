"""Kafka transport over kafka-python (the default client).

- Producer: batching (``linger_ms`` 5, ``batch_size`` 256 KB), ``acks='all'`` by default;
  every send's failure is collected and raised by the next ``flush``.
- Consumer: group member with ``enable_auto_commit=False``; ``commit`` takes the *next*
  offsets. kafka-python 3 runs rebalance listeners on its IO thread, where blocking calls
  such as ``commit`` are forbidden; this module runs the user's ``on_assign`` /
  ``on_revoke`` / ``on_lost`` on a worker thread while ``poll`` (or ``close``) is blocked,
  so a callback may commit, exactly as the protocol promises.
- ``end_offsets`` checks the ListOffsets answer against a fetch's high watermark (see
  :mod:`streamwatch.transport._kafka_common`): Tansu 0.6 answers ListOffsets with the base
  offset of the last batch + 1.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTP
from kafka import errors as kerrors
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.partitioner import DefaultPartitioner
from kafka.structs import OffsetAndMetadata

from streamwatch.errors import ConfigError, FlushTimeoutError, TransportError
from streamwatch.transport._common import check_partitions, check_poll_args, check_record
from streamwatch.transport._kafka_common import (
    CLOSE_TIMEOUT_S,
    COMMIT_TIMEOUT_S,
    CallbackErrors,
    DeliveryErrors,
    check_offset_reset,
    check_session_timeout,
    split_kafka_python_config,
    unreachable,
)
from streamwatch.transport.base import Message, RebalanceCallback, TopicPartition

logger = logging.getLogger(__name__)

_CALLBACK_POLL_S = 0.005


def _to_k(tp: TopicPartition) -> KTP:
    return KTP(tp.topic, tp.partition)


def _from_k(tps: Iterable[Any]) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in tps}


#: Seconds past ``bootstrap_timeout_ms`` that ``KafkaTransport.connect`` waits in all.
CONNECT_GRACE_S = 5.0

_stuck_connects: dict[tuple[str, str], threading.Thread] = {}
"""Per bootstrap address and client settings, the last first-contact thread that outlived
its wait: the next ``connect`` with both the same waits for it instead of starting another,
so a retry loop leaves at most one thread (and its socket) behind, not one per attempt.
(Another client, e.g. a plaintext one at the address a TLS one hangs on, is not held up.)"""
_stuck_lock = threading.Lock()


class KafkaTransport:
    """Producers, consumers and topic admin on one Kafka cluster, through kafka-python.

    Parameters
    ----------
    bootstrap_servers
        ``host:port[,host:port...]``.
    session_timeout_ms
        Consumer-group session timeout (1,000..300,000); a group join takes about half of
        it on Tansu.
    auto_offset_reset
        Where a consumer starts without a committed offset.
    client_config
        kafka-python settings passed through (SASL/SSL, timeouts, ``acks`` ...); each goes
        to the clients that know it.
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
        self.bootstrap_servers = bootstrap_servers
        self.session_timeout_ms = session_timeout_ms
        self.auto_offset_reset = auto_offset_reset
        self.producer_config, self.consumer_config, self.admin_config = split_kafka_python_config(
            client_config or {}
        )
        self._admin: KafkaAdminClient | None = None

    def connect(self) -> KafkaTransport:
        """Reach the cluster now; raises :class:`BrokerUnavailableError` within a few s.

        kafka-python bounds the bootstrap by ``bootstrap_timeout_ms`` but not a TLS
        handshake: an SSL client at a plaintext listener waited for ever, silently. So the
        first contact runs in a thread of its own, given that time and a grace; one still
        stuck then is left behind (a daemon thread, blocked on its socket), and the next
        ``connect`` to the same address waits for that one rather than adding another."""
        waited_s = self.admin_config.get("bootstrap_timeout_ms", 5000) / 1000
        key = (self.bootstrap_servers, repr(sorted(self.admin_config.items())))
        with _stuck_lock:
            stuck = _stuck_connects.pop(key, None)
        if stuck is not None:
            stuck.join(waited_s + CONNECT_GRACE_S)
            if stuck.is_alive():
                with _stuck_lock:
                    _stuck_connects.setdefault(key, stuck)
                raise unreachable(self.bootstrap_servers, waited_s + CONNECT_GRACE_S)
        outcome: dict[str, BaseException | None] = {}

        def reach() -> None:
            try:
                self._admin_client()
            except BaseException as exc:  # handed to the caller below
                outcome["error"] = exc
            else:
                outcome["error"] = None

        thread = threading.Thread(target=reach, name="streamwatch-kafka-connect", daemon=True)
        thread.start()
        thread.join(waited_s + CONNECT_GRACE_S)
        if "error" not in outcome:
            with _stuck_lock:
                _stuck_connects[key] = thread
            raise unreachable(self.bootstrap_servers, waited_s + CONNECT_GRACE_S)
        if outcome["error"] is not None:
            raise outcome["error"]
        return self

    def _build(self, factory: Callable[..., Any], config: Mapping[str, Any]) -> Any:
        timeout_ms = config.get("bootstrap_timeout_ms", 5000)
        try:
            return factory(bootstrap_servers=self.bootstrap_servers, **config)
        except (kerrors.KafkaTimeoutError, kerrors.KafkaConnectionError) as exc:
            raise unreachable(self.bootstrap_servers, timeout_ms / 1000) from exc
        except kerrors.KafkaConfigurationError as exc:
            raise ConfigError(f"kafka-python rejected the client config: {exc}") from exc

    def _admin_client(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = self._build(KafkaAdminClient, self.admin_config)
        return self._admin

    # -- Transport protocol ---------------------------------------------------------------
    def producer(self) -> KafkaProducerTransport:
        config = {"partitioner": CachedKeyPartitioner(), **self.producer_config}
        native = self._build(KafkaProducer, config)
        return KafkaProducerTransport(native, self.bootstrap_servers)

    def consumer(self, group_id: str | None = None) -> KafkaConsumerTransport:
        if group_id is not None and not group_id:
            raise ConfigError("group_id must be a non-empty string or None")
        config = {
            "auto_offset_reset": self.auto_offset_reset,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": max(100, self.session_timeout_ms // 4),
            **self.consumer_config,
            "group_id": group_id,
        }
        native = self._build(KafkaConsumer, config)
        if group_id is not None:
            keep_unclaimed_join_result(native)
        probe_config = {**config, "group_id": None, "max_partition_fetch_bytes": 1}
        return KafkaConsumerTransport(
            native, group_id, lambda: self._build(KafkaConsumer, probe_config)
        )

    def create_topics(
        self, topics: Mapping[str, int], configs: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        for name, partitions in topics.items():
            check_partitions(name, partitions)
        admin = self._admin_client()
        existing = set(admin.list_topics())
        configs = configs or {}
        new = [NewTopic(name, n, -1, topic_configs=dict(configs.get(name, {})))
               for name, n in topics.items() if name not in existing]
        for topic in new:
            try:
                admin.create_topics([topic])
                logger.info("topic created name=%s partitions=%d", topic.name, topic.num_partitions)
            except kerrors.TopicAlreadyExistsError:
                logger.debug("topic already exists name=%s", topic.name)
            except kerrors.KafkaError as exc:
                raise TransportError(f"could not create topic {topic.name!r}: {exc}") from exc
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
        try:
            described = self._admin_client().describe_topics([topic])
        except kerrors.KafkaError as exc:
            raise TransportError(f"could not describe topic {topic!r}: {exc}") from exc
        if not described or described[0].get("error_code", 0) != 0:
            raise TransportError(f"unknown topic {topic!r}: create it with create_topics()")
        return len(described[0]["partitions"])

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


class CachedKeyPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner, with each key's partition remembered.

    The default hashes every key with a pure-Python murmur2 and sorts the topic's
    partitions on every record: about 6 us per record, a third of ``send``'s cost (measured
    with 1,000 stream ids). The partition a key maps to depends only on the key and the
    topic's partition count, so it is cached per (topic, count, key): the same choice as
    the Java client and kafka-python, and a change of the partition count is seen on the
    next record. Records without a key go to the default (a random available partition).
    """

    def __init__(self, max_keys: int = 200_000) -> None:
        self.max_keys = max_keys
        self._cache: dict[tuple[str, int, bytes], int] = {}

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: Any, cluster: Any) -> int:  # fmt: skip
        if serialized_key is None:
            return int(super().partition(topic, key, serialized_key, value, serialized_value,
                                         cluster))  # fmt: skip
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        slot = (topic, len(partitions), serialized_key)
        found = self._cache.get(slot)
        if found is None:
            if len(self._cache) >= self.max_keys:
                self._cache.clear()
            found = self._cache[slot] = int(super().partition(
                topic, key, serialized_key, value, serialized_value, cluster))  # fmt: skip
        return found


class KafkaProducerTransport:
    """A kafka-python producer; delivery failures are raised by :meth:`flush`."""

    def __init__(self, producer: KafkaProducer, bootstrap: str) -> None:
        self._producer = producer
        self._bootstrap = bootstrap
        self._max_bytes = int(producer.config["max_request_size"])
        self._errors = DeliveryErrors()

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        check_record(value, key, self._max_bytes)
        try:
            future = self._producer.send(topic, value=value, key=key)
        except kerrors.KafkaTimeoutError as exc:
            raise TransportError(
                f"send to {topic!r} blocked for max_block_ms: broker {self._bootstrap} "
                f"unreachable, topic missing, or the send buffer is full ({exc})"
            ) from exc
        except (kerrors.KafkaError, AssertionError) as exc:
            raise TransportError(f"send to {topic!r} failed: {exc}") from exc
        future.add_errback(self._errors.add, topic)

    def flush(self, timeout: float | None = None) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except kerrors.KafkaTimeoutError as exc:
            raise FlushTimeoutError(
                f"flush: records not acknowledged within {timeout} s by {self._bootstrap} "
                "(broker slow or unreachable); they stay queued, a later flush() may succeed"
            ) from exc
        self._errors.raise_if_any()

    def close(self) -> None:
        """Flush (10 s), then close. Records the broker did not take by then are dropped,
        and the flush's error says so."""
        try:
            self.flush(timeout=10)
        finally:
            try:
                self._producer.close(timeout=5)
            except kerrors.KafkaTimeoutError:
                _force_close(self._producer)


def _force_close(producer: KafkaProducer) -> None:
    """kafka-python 3.0's ``close`` raises when records are still queued, before it
    force-closes its sender, and leaves the producer open: its ``__del__`` then raises the
    same again at exit (a traceback after a clean error line). Force the sender closed (it
    aborts what is queued) and close again, as ``close`` meant to."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5)
    try:
        producer.close(timeout=1)
    except kerrors.KafkaError as exc:  # still not closed: say so, once
        logger.warning("producer not closed cleanly", extra={"error": str(exc)})


class _Listener(AsyncConsumerRebalanceListener):
    """Runs the user's callbacks on a worker thread, awaited on kafka-python's IO loop."""

    def __init__(
        self,
        owner: KafkaConsumerTransport,
        on_assign: RebalanceCallback | None,
        on_revoke: RebalanceCallback | None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        self._owner = owner
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost if on_lost is not None else on_revoke

    async def _run(self, callback: RebalanceCallback | None, partitions: Iterable[Any]) -> None:
        if callback is None:
            return
        arg = _from_k(partitions)
        done = threading.Event()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                callback(arg)
            except BaseException as exc:  # handed to poll()'s caller below
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=work, name="streamwatch-rebalance", daemon=True).start()
        net = self._owner.native._net  # kafka-python's event loop: keep it turning
        while not done.is_set():
            await net.sleep(_CALLBACK_POLL_S)
        if failure:
            self._owner.callback_errors.add(failure[0])
            raise failure[0]

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            await self._run(self._on_revoke, revoked)

    async def on_partitions_lost(self, lost: Any) -> None:
        if lost:
            logger.warning("group membership lost; partitions %s lost", sorted(_from_k(lost)))
            await self._run(self._on_lost, lost)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        # kafka-python keeps the paused flag of a partition revoked and assigned again in
        # one rebalance; the transport's contract is that it starts unpaused
        native = self._owner.native
        paused = [tp for tp in assigned if tp in native.paused()]
        if paused:
            native.resume(*paused)
        await self._run(self._on_assign, assigned)


def unpark_resumed(fetcher: Any) -> None:
    """Work around a kafka-python 3.0 bug: a resumed partition can starve for good.

    Records fetched for a partition while it is paused are parked, and handed out again
    once it is resumed, but only while the fetcher's in-line slot is None. A slot whose
    records are all consumed stays set (an exhausted, falsy ``PartitionRecords``), so the
    parked records never come back, and the partition is not fetched again because it
    has parked records: seen here as a partition that returned nothing after resume for
    as long as the test polled (the contract test
    ``test_pause_holds_a_partition_back_and_resume_goes_on_exactly_after_it``). An
    exhausted slot means the same as None to the rest of the fetcher, so it is cleared
    before each poll while anything is parked.
    """
    slot = getattr(fetcher, "_next_partition_records", None)
    if slot is not None and not slot:
        fetcher._next_partition_records = None


def keep_unclaimed_join_result(native: KafkaConsumer) -> bool:
    """Work around a kafka-python 3.0 group-join bug, on this consumer only.

    ``join_group_async`` caches the JoinGroup+SyncGroup task across short ``poll`` calls,
    but when the task finishes while no ``poll`` is waiting on it, the next ``poll``
    finds it done and starts a *new* JoinGroup, dropping the result. With a poll timeout
    shorter than a join (about half the session timeout on Tansu) and work between polls,
    a member can rejoin forever. This keeps the unclaimed result and hands it to the
    next attempt instead of sending a new JoinGroup. Returns False (and logs) if the
    client's internals differ from what this expects.
    """
    coordinator = getattr(native, "_coordinator", None)
    join = getattr(coordinator, "_do_join_and_sync_async", None)
    complete = getattr(coordinator, "_on_join_complete_async", None)
    if coordinator is None or join is None or complete is None:
        logger.warning("kafka-python internals changed: group-join workaround not applied")
        return False
    unclaimed: list[Any] = []

    async def join_once() -> Any:
        if unclaimed:
            return unclaimed.pop()
        result = await join()
        unclaimed.append(result)
        return result

    async def on_join_complete(*args: Any) -> Any:
        unclaimed.clear()
        return await complete(*args)

    coordinator._do_join_and_sync_async = join_once
    coordinator._on_join_complete_async = on_join_complete
    return True


class KafkaConsumerTransport:
    """A kafka-python consumer (group member via ``subscribe`` or group-less ``assign``)."""

    def __init__(
        self, native: KafkaConsumer, group_id: str | None, probe_factory: Callable[[], Any]
    ) -> None:
        self.native = native
        self.group_id = group_id
        self.callback_errors = CallbackErrors()
        self._probe_factory = probe_factory
        self.commit_timeout_s = COMMIT_TIMEOUT_S
        self.close_timeout_s = CLOSE_TIMEOUT_S
        self._probe: Any = None
        fetcher = getattr(native, "_fetcher", None)  # for unpark_resumed
        self._parked: Any = fetcher if hasattr(fetcher, "_paused_partition_records") else None

    def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        if self.group_id is None:
            raise TransportError("subscribe() needs a group_id: use assign() without a group")
        listener = _Listener(self, on_assign, on_revoke, on_lost)
        try:
            self.native.subscribe(topics=list(topics), listener=listener)
        except (kerrors.KafkaError, AssertionError, ValueError) as exc:
            raise TransportError(f"subscribe failed: {exc}") from exc

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        try:
            self.native.assign([_to_k(tp) for tp in partitions])
        except (kerrors.KafkaError, AssertionError) as exc:
            raise TransportError(f"assign failed: {exc}") from exc

    def poll(self, timeout: float = 1.0, max_records: int = 10_000) -> list[Message]:
        check_poll_args(timeout, max_records)
        if self._parked is not None and self._parked._paused_partition_records:
            unpark_resumed(self._parked)
        try:
            batches = self.native.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except kerrors.KafkaError as exc:
            self.callback_errors.raise_if_any(exc)
            raise TransportError(f"poll failed: {exc}") from exc
        out: list[Message] = []
        for ktp, records in batches.items():
            topic, partition = ktp.topic, ktp.partition
            out.extend(
                [Message(topic, partition, r.offset, r.key, r.value, r.timestamp) for r in records]
            )
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.group_id is None:
            raise TransportError("commit() needs a group_id: this consumer has none")
        native = {_to_k(tp): OffsetAndMetadata(int(off), "", -1) for tp, off in offsets.items()}
        try:  # bounded: with the broker gone it waited the request timeout (30 s)
            self.native.commit(native, timeout_ms=round(self.commit_timeout_s * 1000))
        except kerrors.KafkaError as exc:
            raise TransportError(
                f"commit failed ({exc}); if the group rebalanced, the new owner resumes from "
                "the last committed offsets"
            ) from exc

    def committed(self, partition: TopicPartition) -> int | None:
        if self.group_id is None:
            return None
        try:
            value = self.native.committed(_to_k(partition))
        except kerrors.KafkaError as exc:
            raise TransportError(f"committed() failed: {exc}") from exc
        return None if value is None or value < 0 else int(value)

    def assignment(self) -> set[TopicPartition]:
        return _from_k(self.native.assignment())

    def seek(self, partition: TopicPartition, offset: int) -> None:
        if offset < 0:
            raise ConfigError(f"seek offset must be >= 0, got {offset}")
        try:
            self.native.seek(_to_k(partition), offset)
        except (kerrors.KafkaError, AssertionError) as exc:
            raise TransportError(f"seek({partition}, {offset}) failed: {exc}") from exc

    def position(self, partition: TopicPartition) -> int:
        try:
            return int(self.native.position(_to_k(partition), timeout_ms=10_000))
        except (kerrors.KafkaError, AssertionError) as exc:
            raise TransportError(f"position({partition}) failed: {exc}") from exc

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        # kafka-python >= 3.0 keeps what it already fetched for a paused partition
        # (KAFKA-7548) and hands it out after resume
        ktps = [_to_k(tp) for tp in partitions]
        assigned = self.native.assignment()
        missing = [tp for tp in ktps if tp not in assigned]
        if missing:
            raise TransportError(f"pause({missing[0]}): the partition is not assigned")
        if ktps:
            self.native.pause(*ktps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        assigned = self.native.assignment()  # a revoked partition has nothing to resume
        ktps = [k for k in (_to_k(tp) for tp in partitions) if k in assigned]
        if ktps:
            self.native.resume(*ktps)

    def _list_offsets(self, partitions: Iterable[TopicPartition], what: str
                      ) -> dict[TopicPartition, int]:
        """kafka-python's ``beginning_offsets`` or ``end_offsets`` (ListOffsets)."""
        wanted = [_to_k(tp) for tp in partitions]
        if not wanted:
            return {}
        try:
            listed = getattr(self.native, what)(wanted, timeout_ms=10_000)
        except kerrors.KafkaError as exc:
            raise TransportError(f"{what} failed: {exc}") from exc
        return {TopicPartition(k.topic, k.partition): int(v) for k, v in listed.items()}

    def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return self._list_offsets(partitions, "beginning_offsets")

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return self._confirm_ends(self._list_offsets(partitions, "end_offsets"))

    def highwater(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for tp in partitions:
            high = self.native.highwater(_to_k(tp))
            if high is not None:
                out[tp] = int(high)
        return out

    def _confirm_ends(self, listed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Replace each non-zero ListOffsets answer by the high watermark of a fetch at it - 1."""
        pending = {tp: off for tp, off in listed.items() if off > 0}
        if not pending:
            return listed
        if self._probe is None:
            self._probe = self._probe_factory()
        probe = self._probe
        probe.assign([_to_k(tp) for tp in pending])
        for tp, off in pending.items():
            probe.seek(_to_k(tp), off - 1)
        result = dict(listed)
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            for ktp in probe.poll(timeout_ms=200, max_records=10_000):
                tp = TopicPartition(ktp.topic, ktp.partition)
                high = probe.highwater(ktp)
                if tp in pending and high is not None:
                    result[tp] = max(pending.pop(tp), int(high))
        if pending:
            logger.warning("end offsets unconfirmed (no fetch answer) partitions=%s", pending)
        return result

    def close(self) -> None:
        try:
            if self._probe is not None:
                self._probe.close(autocommit=False)
        finally:
            try:
                # bounded: with the broker gone, leaving the group waited for the whole
                # request timeout (30 s) at every stop
                self.native.close(autocommit=False, timeout_ms=round(self.close_timeout_s * 1000))
            except kerrors.KafkaError as exc:
                self.callback_errors.raise_if_any(exc)
                raise TransportError(f"close failed: {exc}") from exc
