"""Where detector processes keep their state so any process can take over a partition.

Each detector process saves ONE self-consistent checkpoint at a time (``checkpoint``
bytes: its global model state and, per assigned partition, the state of that partition's
streams and the next offset to read). Model, stream state and offsets travel together, so
a restore never has to reconcile a changelog position with committed offsets.

When a process is assigned a partition it looks at the latest checkpoint of every process
and takes that partition's entry with the highest offset (the newest state of it, whichever
process wrote it); at its first assignment it also adopts the global model of the
checkpoint that has read furthest (``select``). Two stores keep those checkpoints:

* ``KafkaStateStore`` (default): a changelog topic (``streamwatch.detector-state``, created
  with ``cleanup.policy=compact``), as Kafka Streams and quixstreams keep state. Reachable
  by every process that reaches the cluster: no shared storage needed.
* ``FileStateStore``: one atomic file per process (``detector-<instance>.pt``) in a
  directory every process of the group sees (one host, or a shared volume).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from streamwatch.checkpoint import (
    dump_checkpoint,
    load_checkpoint,
    parse_checkpoint,
    save_checkpoint,
)
from streamwatch.errors import CheckpointError, TransportError
from streamwatch.transport.base import Consumer, Message, Producer, TopicPartition, Transport

log = logging.getLogger(__name__)

FORMAT = "streamwatch.detector-state/1"
HEAD_FORMAT = "streamwatch.detector-state-head/1"


@dataclass
class PartitionState:
    """State of one partition's streams and the next offset to read."""

    offset: int
    streams: dict[str, Any]


@dataclass
class Snapshot:
    """What one process restores: its model state and the partitions it asked for."""

    global_state: dict[str, Any] | None
    partitions: dict[TopicPartition, PartitionState]


class StateStore(Protocol):
    """What the service needs of a store (see module docstring)."""

    def save(
        self, global_state: dict[str, Any], partitions: dict[TopicPartition, PartitionState]
    ) -> None:
        """Make this process's checkpoint durable (replacing its previous one)."""

    def load(self, partitions: set[TopicPartition], *, fresh_start: bool = False) -> Snapshot:
        """The newest state of each requested partition and the newest global state."""

    def close(self) -> None: ...


def _tp_key(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


def _state(global_state: dict[str, Any],
           partitions: dict[TopicPartition, PartitionState]) -> dict[str, Any]:
    return {
        "global": global_state,
        "partitions": {
            _tp_key(tp): {"topic": tp.topic, "partition": tp.partition,
                          "offset": ps.offset, "streams": ps.streams}
            for tp, ps in partitions.items()
        },
    }


def select(checkpoints: Iterable[tuple[str, dict[str, Any], dict[str, Any]]],
           partitions: set[TopicPartition]) -> Snapshot:
    """From ``(source, state, meta)`` of each process's checkpoint: per requested partition
    the entry with the highest offset, and the global state of the checkpoint that has
    read furthest (summed over its partitions; the most trained model)."""
    best: dict[TopicPartition, PartitionState] = {}
    global_state: dict[str, Any] | None = None
    global_offsets = -1
    for source, state, meta in checkpoints:
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{source}: format {meta.get('format')!r}, expected {FORMAT!r}; delete it "
                "(or point the store elsewhere: --checkpoint-dir, --state-topic)"
            )
        total = 0
        for entry in state["partitions"].values():
            tp = TopicPartition(entry["topic"], int(entry["partition"]))
            total += int(entry["offset"])
            if tp in partitions and (tp not in best or entry["offset"] > best[tp].offset):
                best[tp] = PartitionState(int(entry["offset"]), entry["streams"])
        if state.get("global") is not None and total >= global_offsets:
            global_state, global_offsets = state["global"], total
    return Snapshot(global_state=global_state, partitions=best)


class FileStateStore:
    """Shared-directory state store (see module docstring): temp file + fsync + rename."""

    def __init__(self, directory: Path | str, instance: str) -> None:
        self.directory = Path(directory)
        self.instance = instance
        self.path = self.directory / f"detector-{instance}.pt"

    def __repr__(self) -> str:
        return f"FileStateStore({str(self.directory)!r})"

    def save(
        self, global_state: dict[str, Any], partitions: dict[TopicPartition, PartitionState]
    ) -> None:
        """Write this process's checkpoint atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.path, _state(global_state, partitions),
                        {"format": FORMAT, "instance": self.instance})

    def _files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("detector-*.pt"), key=lambda p: p.stat().st_mtime)

    def _checkpoints(self, fresh_start: bool) -> Iterable[tuple[str, dict[str, Any], dict[str, Any]]]:
        for path in self._files():
            try:
                state, meta = load_checkpoint(path)
            except CheckpointError:
                if not fresh_start:
                    raise
                log.warning("ignoring unreadable checkpoint (fresh start asked)",
                            extra={"path": str(path)})
                continue
            yield str(path), state, meta

    def load(self, partitions: set[TopicPartition], *, fresh_start: bool = False) -> Snapshot:
        """The newest state of each requested partition and the newest global state.

        A corrupt file raises ``CheckpointError`` unless ``fresh_start``, in which case it
        is logged and ignored (never silently).
        """
        return select(self._checkpoints(fresh_start), partitions)

    def remove(self) -> None:
        """Delete this instance's file (tests, explicit reset)."""
        if self.path.exists():
            os.remove(self.path)

    def close(self) -> None:
        """Nothing held open."""


_KAFKA_FIX = ("delete the state topic (or pass --state-topic with a new name) or pass "
              "--fresh-start to begin from scratch")


class KafkaStateStore:
    """Changelog-topic state store (see module docstring).

    A checkpoint is cut into chunks of at most ``chunk_bytes`` (Kafka's default record
    limit is 1 MB; a detector with 1,000 ICU streams checkpoints ~12 MB, mostly the replay
    buffer). Per save, with keys naming the process (``instance``):

    1. the chunks, under keys ``ckpt/<instance>/<set>/<i>`` (``set``: a fresh random id),
       then a flush;
    2. the head, key ``ckpt/<instance>/head``: JSON with the set, the chunk count, the size
       and the SHA-256 of the whole; then a flush. Only now is the checkpoint current;
    3. tombstones for the previous set's chunks (flushed with the next save or at close).

    A crash before 2 leaves the previous head and its chunks intact; a crash after 2 at
    worst leaves the previous set's chunks untombstoned (garbage no head names). So a
    reader that keeps the last value per key (what compaction keeps) always finds, per
    process, one complete checkpoint, and checks its SHA-256 before using it.

    The reader is one consumer of its own (no group) that reads the topic from its
    beginning once, then on each ``load`` what was added since, folding records into the
    last value per key (tombstones remove keys). That is correct on a compacting broker
    (Apache Kafka) and on one that keeps every record (Tansu, the demo's and the tests'
    broker: there the topic grows by one checkpoint per save, and the first read of a
    process replays all of it).
    """

    def __init__(self, transport: Transport, topic: str, instance: str, *,
                 chunk_bytes: int = 512 * 1024, read_timeout_s: float = 60.0) -> None:
        if "/" in instance:
            raise CheckpointError(f"instance name {instance!r} must not contain '/'")
        if chunk_bytes < 1024:
            raise CheckpointError(f"chunk_bytes must be >= 1024, got {chunk_bytes}")
        self.transport = transport
        self.topic = topic
        self.instance = instance
        self.chunk_bytes = chunk_bytes
        self.read_timeout_s = read_timeout_s
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._tps: list[TopicPartition] = []
        self._log: dict[bytes, bytes] = {}  # last value per key
        self._previous: tuple[str, int] | None = None  # (set id, chunks) of our last save
        self._topic_ready = False

    def __repr__(self) -> str:
        return f"KafkaStateStore({self.topic!r})"

    def _head_key(self, instance: str) -> bytes:
        return f"ckpt/{instance}/head".encode()

    @staticmethod
    def _chunk_key(instance: str, set_id: str, i: int) -> bytes:
        return f"ckpt/{instance}/{set_id}/{i}".encode()

    def ensure_topic(self) -> None:
        """Create the changelog topic (one partition, compacted) if it does not exist."""
        if not self._topic_ready:
            self.transport.create_topics({self.topic: 1},
                                         configs={self.topic: {"cleanup.policy": "compact"}})
            self._topic_ready = True

    # -- writing -----------------------------------------------------------------------
    def save(
        self, global_state: dict[str, Any], partitions: dict[TopicPartition, PartitionState]
    ) -> None:
        """Send this process's checkpoint (chunks, flush, head, flush; see class docstring).

        Raises ``TransportError`` if the broker does not take it: the previous checkpoint
        then stays the current one, and the caller must not commit offsets."""
        data = dump_checkpoint(_state(global_state, partitions),
                               {"format": FORMAT, "instance": self.instance})
        if self._producer is None:
            self.ensure_topic()
            self._producer = self.transport.producer()
        producer, size = self._producer, self.chunk_bytes
        set_id = uuid.uuid4().hex[:16]
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        for i, chunk in enumerate(chunks):
            producer.send(self.topic, chunk, self._chunk_key(self.instance, set_id, i))
        producer.flush()
        head = {"format": HEAD_FORMAT, "instance": self.instance, "set": set_id,
                "chunks": len(chunks), "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "saved_at": time.time()}
        producer.send(self.topic, json.dumps(head).encode(), self._head_key(self.instance))
        producer.flush()
        if self._previous is not None:
            old_set, old_n = self._previous
            for i in range(old_n):
                producer.send(self.topic, None, self._chunk_key(self.instance, old_set, i))
        self._previous = (set_id, len(chunks))
        log.debug("checkpoint sent to the state topic",
                  extra={"topic": self.topic, "bytes": len(data), "chunks": len(chunks)})

    # -- reading -----------------------------------------------------------------------
    def fold(self, messages: Iterable[Message]) -> None:
        """Fold changelog records into the last value per key (a tombstone removes it)."""
        last = self._log
        for msg in messages:
            if msg.key is None:
                log.warning("state topic record without a key ignored",
                            extra={"topic": msg.topic, "offset": msg.offset})
            elif msg.value is None:
                last.pop(msg.key, None)
            else:
                last[msg.key] = msg.value

    def _catch_up(self) -> None:
        """Read the topic up to its end offsets as of now."""
        if self._consumer is None:
            self.ensure_topic()
            consumer = self.transport.consumer(None)
            tps = [TopicPartition(self.topic, p)
                   for p in range(self.transport.partitions_for(self.topic))]
            consumer.assign(tps)
            for tp, offset in consumer.beginning_offsets(tps).items():
                consumer.seek(tp, offset)
            self._consumer, self._tps = consumer, tps
        consumer = self._consumer
        ends = consumer.end_offsets(self._tps)
        deadline = time.monotonic() + self.read_timeout_s
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TransportError(
                    f"could not read the state topic {self.topic!r} to its end within "
                    f"{self.read_timeout_s:g} s; check the broker, then restart")
            self.fold(consumer.poll(0.5, 10_000))

    def checkpoints(self, *, fresh_start: bool = False
                    ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """``(source, state, meta)`` of every process's current checkpoint on the topic.

        One that is incomplete or damaged raises ``CheckpointError`` unless
        ``fresh_start``, in which case it is logged and skipped (never silently)."""
        self._catch_up()
        out = []
        for key, value in sorted(self._log.items()):
            if not (key.startswith(b"ckpt/") and key.endswith(b"/head")):
                continue
            source = f"{self.topic}:{key.decode(errors='replace')}"
            try:
                data = self._assemble(source, value)
                state, meta = parse_checkpoint(data, source, fix=_KAFKA_FIX)
            except CheckpointError:
                if not fresh_start:
                    raise
                log.warning("ignoring unreadable checkpoint (fresh start asked)",
                            extra={"source": source})
                continue
            out.append((source, state, meta))
        return out

    def _assemble(self, source: str, value: bytes) -> bytes:
        try:
            head = json.loads(value)
            instance, set_id, n = str(head["instance"]), str(head["set"]), int(head["chunks"])
            if head.get("format") != HEAD_FORMAT:
                raise ValueError(f"format {head.get('format')!r}, expected {HEAD_FORMAT!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint head {source} is not readable ({exc}); "
                                  f"{_KAFKA_FIX}") from None
        parts = []
        for i in range(n):
            chunk = self._log.get(self._chunk_key(instance, set_id, i))
            if chunk is None:
                raise CheckpointError(
                    f"checkpoint {source} names {n} chunks of set {set_id} but chunk {i} is "
                    f"not on the topic (deleted by retention?); {_KAFKA_FIX}")
            parts.append(chunk)
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != head.get("sha256"):
            raise CheckpointError(f"checkpoint {source} is corrupt: its chunks do not match "
                                  f"the head's checksum; {_KAFKA_FIX}")
        return data

    def load(self, partitions: set[TopicPartition], *, fresh_start: bool = False) -> Snapshot:
        """The newest state of each requested partition and the newest global state."""
        return select(self.checkpoints(fresh_start=fresh_start), partitions)

    def close(self) -> None:
        """Flush pending tombstones, close the clients."""
        try:
            if self._producer is not None:
                self._producer.flush()
        finally:
            if self._producer is not None:
                self._producer.close()
            if self._consumer is not None:
                self._consumer.close()
            self._producer = self._consumer = None
