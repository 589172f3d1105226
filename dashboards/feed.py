"""Consume the detector's output topics into a ``DashboardStore``, in a background thread.

The feed reads ``streamwatch.scores``, ``streamwatch.alerts``, ``streamwatch.health`` and
``streamwatch.deadletter`` through the ``Transport``/``Consumer`` protocol, so it runs
the same on the in-memory transport (demo, tests) and on Kafka. It is a read-only view:
it never commits offsets. On every partition assignment it starts at most ``backfill``
records before the end of the partition, so a fresh dashboard shows recent history
without replaying a week of scores. A record it cannot decode is counted in the store
and logged (the first few per topic at WARNING, then every 1000th), never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dashboards.store import DashboardStore
from streamwatch.errors import ConfigError, SchemaError, StreamwatchError
from streamwatch.schema import decode
from streamwatch.transport.base import (
    ALERTS,
    DEADLETTER,
    HEALTH,
    SCORES,
    Consumer,
    Message,
    TopicPartition,
    Transport,
)

log = logging.getLogger(__name__)

FEED_TOPICS: tuple[str, ...] = (SCORES, ALERTS, HEALTH, DEADLETTER)
_LOUD_ERRORS = 5


@dataclass(frozen=True)
class FeedTopics:
    """Names of the topics the feed reads (the product's names by default)."""

    scores: str = SCORES
    alerts: str = ALERTS
    health: str = HEALTH
    deadletter: str = DEADLETTER

    def names(self) -> tuple[str, ...]:
        return (self.scores, self.alerts, self.health, self.deadletter)

    @classmethod
    def from_settings(cls, topics: Any) -> FeedTopics:
        """From ``streamwatch.config.Settings.topics`` (anything with the four names)."""
        return cls(scores=topics.scores, alerts=topics.alerts, health=topics.health,
                   deadletter=topics.deadletter)


def default_group_id() -> str:
    """A group of its own per dashboard process: every dashboard must see every partition."""
    return f"streamwatch-dashboard-{uuid.uuid4().hex[:12]}"


class Feed:
    """Reads the detector's topics into ``store``.

    Parameters
    ----------
    transport
        Any ``Transport`` (``MemoryTransport`` or Kafka).
    store
        Where records go.
    group_id
        Consumer group; ``None`` makes a fresh one per process (``default_group_id``).
    topics
        Topic names (``FeedTopics()``: the product's names).
    backfill
        Records per partition read from before the end at assignment, in [0, 10**9];
        ``None`` reads each partition from where the consumer would start anyway
        (the transport's ``auto_offset_reset``).
    poll_timeout_s, max_records
        One ``poll`` call: timeout in (0, 60] s, at most ``max_records`` in [1, 1000000].
    """

    def __init__(
        self,
        transport: Transport,
        store: DashboardStore,
        group_id: str | None = None,
        *,
        topics: FeedTopics | None = None,
        backfill: int | None = 200_000,
        poll_timeout_s: float = 0.2,
        max_records: int = 10_000,
    ) -> None:
        if backfill is not None and not 0 <= backfill <= 10**9:
            raise ConfigError(f"backfill must be in [0, 1000000000] records or None, got {backfill}")
        if not 0 < poll_timeout_s <= 60:
            raise ConfigError(f"poll_timeout_s must be in (0, 60], got {poll_timeout_s}")
        if not 1 <= max_records <= 1_000_000:
            raise ConfigError(f"max_records must be in [1, 1000000], got {max_records}")
        self.transport = transport
        self.store = store
        self.group_id = group_id or default_group_id()
        self.topics = topics or FeedTopics()
        self.backfill = backfill
        self.poll_timeout_s = poll_timeout_s
        self.max_records = max_records
        self.consumed: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.transport_errors = 0
        self.last_record_at: float | None = None
        self._consumer: Consumer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        t = self.topics
        self._records: dict[str, tuple[str, Callable[[Any], object]]] = {
            t.scores: ("score", store.add_score),
            t.alerts: ("alert", store.add_alert),
            t.health: ("health", store.add_health),
            t.deadletter: ("deadletter", store.add_dead_letter),
        }
        if len(self._records) != 4:
            raise ConfigError(f"the feed's four topics must differ, got {t.names()}")

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Create the consumer and subscribe (done by ``start``/``run_once`` when needed)."""
        if self._consumer is not None:
            return
        consumer = self.transport.consumer(self.group_id)
        consumer.subscribe(self.topics.names(), on_assign=self._on_assign)
        self._consumer = consumer
        log.info("dashboard feed subscribed group_id=%s topics=%s backfill=%s",
                 self.group_id, ",".join(self.topics.names()), self.backfill)

    def _on_assign(self, partitions: set[TopicPartition]) -> None:
        if self.backfill is None or not partitions or self._consumer is None:
            return
        ends = self._consumer.end_offsets(partitions)
        for tp, end in ends.items():
            self._consumer.seek(tp, max(0, end - self.backfill))
        log.info("dashboard feed assigned partitions=%d backfill=%d", len(partitions),
                 self.backfill)

    def start(self) -> Feed:
        """Run the feed in a daemon thread until ``stop``."""
        if self._thread is not None:
            raise StreamwatchError("the feed is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dashboard-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (if any) and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("dashboard feed thread did not stop within %.1f s", timeout)
            self._thread = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.run_once()
                backoff = 0.5
            except StreamwatchError as exc:
                self.transport_errors += 1
                log.warning("dashboard feed: transport error, retrying in %.1f s: %s",
                            backoff, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                self.transport_errors += 1
                log.exception("dashboard feed: unexpected error, retrying in %.1f s", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    # ------------------------------------------------------------------ work
    def run_once(self) -> int:
        """Poll once and store what arrived; returns the number of records handled."""
        self.open()
        assert self._consumer is not None
        messages = self._consumer.poll(timeout=self.poll_timeout_s, max_records=self.max_records)
        for message in messages:
            self.handle(message)
        if messages:
            self.last_record_at = time.time()
        return len(messages)

    def handle(self, message: Message) -> None:
        """Decode one message into the store; undecodable ones are counted and logged."""
        topic = message.topic
        known = self._records.get(topic)
        if known is None:
            self._bad(message, "not a dashboard topic")
            return
        name, add = known
        if message.value is None:
            self._bad(message, "empty value (tombstone)")
            return
        try:
            record = decode(name, message.value)
        except SchemaError as exc:
            self._bad(message, str(exc))
            return
        self.consumed[topic] += 1
        add(record)

    def _bad(self, message: Message, reason: str) -> None:
        self.errors[message.topic] += 1
        self.store.count_undecodable(message.topic, reason)
        n = self.errors[message.topic]
        level = logging.WARNING if n <= _LOUD_ERRORS or n % 1000 == 0 else logging.DEBUG
        log.log(level, "dashboard feed: undecodable record topic=%s partition=%d offset=%d "
                "count=%d reason=%s", message.topic, message.partition, message.offset, n, reason)
