"""The transport alone, for ``streamwatch bench kafka --relay``: the stack's ceiling.

:class:`Relay` does what the detector service does to a reading minus the detector: it
polls the readings topic in a consumer group (same client, same settings), decodes each
record with the service's ``ReadingDecoder``, produces one record per reading (the reading
re-encoded, keyed by its stream id) to its own topic, and flushes the producer once per
poll, as the service flushes once per batch. Offsets are committed every
``commit_every_s`` and before partitions are given up. A record that does not decode is
counted as a dead letter (``stats.dead_letters``) and relayed nowhere: the bench's
pre-fill holds none. After its first poll it freezes the heap (``heap.freeze_heap``)
as the service does. Without it, each of the two relay processes of a 2026-12-07 run
spent 2.6-2.7 s of ~14 s in 29-31 full collections of ~189k objects (docs/bench.md): a
cost the service does not pay, which made the transport's ceiling look lower.

What that rate is: how many readings per second this broker, this client and CPython's
per-record work carry on this machine when nothing is scored. The detector cannot go
faster than that (it does all of it and the model too), so a target above the relay's
rate is out of reach on this machine whatever the detector does. It has the surface the
bench's runners sample (``run``, ``stop``, ``stats``, ``metrics``, ``detector``,
``assigned_partitions``), so :class:`~streamwatch.bench.measure.ServiceRun` and
:class:`~streamwatch.bench.group.GroupRun` measure it exactly as they measure the service.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from streamwatch.errors import SchemaError, TransportError
from streamwatch.heap import freeze_heap
from streamwatch.metrics import ServiceMetrics
from streamwatch.pipeline import RunStats
from streamwatch.schema import ReadingDecoder, encode
from streamwatch.transport.base import Message, TopicPartition, Transport

log = logging.getLogger(__name__)


class Relay:
    """Consume, decode, produce one record per reading, flush per poll (module docstring)."""

    def __init__(self, transport: Transport, readings_topic: str, out_topic: str,
                 group_id: str, *, max_poll_records: int, poll_timeout_s: float = 0.5,
                 commit_every_s: float = 30.0) -> None:  # fmt: skip
        self.transport = transport
        self.readings_topic = readings_topic
        self.out_topic = out_topic
        self.group_id = group_id
        self.poll_timeout_s = poll_timeout_s
        self.max_poll_records = max_poll_records
        self.commit_every_s = commit_every_s
        self.stats = RunStats()
        self.metrics = ServiceMetrics()
        self.detector = None  # no model: no training steps to report
        self._stop = threading.Event()
        self._assigned: set[TopicPartition] = set()
        self._next: dict[TopicPartition, int] = {}
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._consumer: Any = None

    @property
    def assigned_partitions(self) -> frozenset[TopicPartition]:
        return frozenset(self._assigned)

    held_readings = 0  # no event-time merge: each poll goes straight on
    paused_partitions: frozenset[TopicPartition] = frozenset()

    def stop(self) -> None:
        self._stop.set()

    def _commit(self) -> None:
        if self._next:
            self._consumer.commit(dict(self._next))
            self._next.clear()

    def _on_assign(self, partitions: set[TopicPartition]) -> None:
        self._assigned |= set(partitions)

    def _on_revoke(self, partitions: set[TopicPartition]) -> None:
        self._commit()
        self._assigned -= set(partitions)

    def run(self) -> RunStats:
        decoder, out_topic = ReadingDecoder(), self.out_topic
        producer = self.transport.producer()
        self._consumer = consumer = self.transport.consumer(group_id=self.group_id)
        consumer.subscribe([self.readings_topic], on_assign=self._on_assign,
                           on_revoke=self._on_revoke)  # fmt: skip
        last_commit, frozen = time.monotonic(), False
        try:
            while not self._stop.is_set():
                try:
                    messages: list[Message] = consumer.poll(self.poll_timeout_s,
                                                            self.max_poll_records)
                    if messages:
                        self._relay(messages, decoder, producer, out_topic)
                        if not frozen:  # as the service does once it has read
                            freeze_heap()
                            frozen = True
                    if time.monotonic() - last_commit >= self.commit_every_s:
                        self._commit()
                        last_commit = time.monotonic()
                except TransportError as exc:
                    log.warning("relay: broker error; retrying", extra={"error": str(exc)})
                    self._stop.wait(0.5)
            producer.flush()
            self._commit()
        finally:
            if frozen:
                gc.unfreeze()
            try:
                consumer.close()
            except TransportError as exc:  # bounded: the group's session timeout frees them
                log.warning("relay: consumer did not close cleanly", extra={"error": str(exc)})
            producer.close()
        return self.stats

    def _relay(self, messages: list[Message], decoder: ReadingDecoder, producer: Any,
               out_topic: str) -> None:  # fmt: skip
        started = time.perf_counter()
        send, dead, nxt, tps = producer.send, 0, self._next, self._tps
        for m in messages:
            try:
                send(out_topic, encode(decoder.decode(m.value)), m.key)
            except SchemaError:
                dead += 1
            key = (m.topic, m.partition)
            tp = tps.get(key)
            if tp is None:
                tp = tps[key] = TopicPartition(m.topic, m.partition)
            nxt[tp] = m.offset + 1
        producer.flush()
        self.stats.readings += len(messages) - dead
        self.stats.dead_letters += dead
        self.stats.batches += 1
        self.metrics.batch_latency.observe(time.perf_counter() - started)


def relay_for(settings: Any, transport: Transport, out_topic: str) -> Relay:
    """A relay with the service's settings: its readings topic, its consumer group's name
    + ``-relay`` (a group of its own: it reads the topic from the start), its poll."""
    svc = settings.service
    return Relay(transport, settings.topics.readings, out_topic, f"{svc.group_id}-relay",
                 poll_timeout_s=svc.poll_timeout_s, max_poll_records=svc.max_poll_records,
                 commit_every_s=svc.checkpoint_every_s)  # fmt: skip
