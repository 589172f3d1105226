"""The transport interface every other module uses: Kafka or in-memory, same contract.

Offsets follow Kafka's rule: ``commit`` takes the *next* offset to read (last processed + 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

# Topic names of the product (DESIGN.md).
READINGS = "streamwatch.readings"
TRUTH = "streamwatch.truth"
SCORES = "streamwatch.scores"
ALERTS = "streamwatch.alerts"
DEADLETTER = "streamwatch.deadletter"
HEALTH = "streamwatch.health"
STATE = "streamwatch.detector-state"
ALL_TOPICS = (READINGS, TRUTH, SCORES, ALERTS, DEADLETTER, HEALTH, STATE)


@dataclass(frozen=True, order=True)
class TopicPartition:
    topic: str
    partition: int


class Message(NamedTuple):
    """One consumed record (a named tuple: made for every record polled, it must be cheap;
    a frozen dataclass costs ~1 us more per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


RebalanceCallback = Callable[[set[TopicPartition]], None]


@runtime_checkable
class Producer(Protocol):
    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """Queue one record; partition chosen by key hash (or round robin without key)."""

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued record is acknowledged; raise ``TransportError`` if not."""

    def close(self) -> None: ...


@runtime_checkable
class Consumer(Protocol):
    def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        """Join the consumer group for ``topics``; callbacks run inside ``poll``.

        ``on_lost`` gets partitions taken away because this member was out of the group
        (its session expired: a long pause, a stopped process): another member may own
        and have moved on with them already, so they must not be checkpointed or
        committed. Without it, ``on_revoke`` gets them."""

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Read these partitions without a group (no rebalancing)."""

    def poll(self, timeout: float = 1.0, max_records: int = 10_000) -> list[Message]:
        """Up to ``max_records`` messages, in offset order within each partition."""

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the next offset to read for each partition (synchronously)."""

    def committed(self, partition: TopicPartition) -> int | None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None: ...

    def position(self, partition: TopicPartition) -> int: ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop returning (and fetching) records of these assigned partitions until
        ``resume``; their position stays at the next record not yet returned. A partition
        that is revoked and assigned again starts unpaused."""

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Undo ``pause`` (a partition that is not paused is left as it is)."""

    def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The first offset still in the log per partition (asks the broker)."""

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The exact next offset to be written per partition (asks the broker: slow)."""

    def highwater(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The last high watermark this consumer saw in its fetch answers, per partition
        (no request; partitions it has not fetched yet are left out). For lag metrics on
        the hot path."""

    def close(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """A factory for producers and consumers on one cluster (or one in-memory bus)."""

    def producer(self) -> Producer: ...

    def consumer(self, group_id: str | None = None) -> Consumer: ...

    def create_topics(
        self, topics: Mapping[str, int], configs: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        """Create each topic with its partition count and, if given, its topic configs
        (e.g. ``{"cleanup.policy": "compact"}``); existing topics are left alone."""

    def partitions_for(self, topic: str) -> int: ...

    def close(self) -> None: ...
