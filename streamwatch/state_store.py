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

import errno
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import crc32c

from streamwatch.checkpoint import (
    compress_parts,
    decode_checkpoint,
    encode_checkpoint,
    load_checkpoint,
    parse_checkpoint,
    save_checkpoint,
)
from streamwatch.errors import CheckpointError, StreamwatchError, TransportError
from streamwatch.transport.base import Consumer, Message, Producer, TopicPartition, Transport

log = logging.getLogger(__name__)

FORMAT = "streamwatch.detector-state/1"
HEAD_FORMAT = "streamwatch.detector-state-head/2"
"""Heads name the chunks' ``encoding`` (``ENCODINGS``); a reader of format 1 refuses them
with a clear error instead of misreading compressed chunks."""
HEAD_FORMATS = {"streamwatch.detector-state-head/1": "identity", HEAD_FORMAT: None}
"""Head formats read, and the chunks' encoding of the older one (it names none)."""
ENCODING = "tensors+zlib"
"""What ``save`` sends: ``checkpoint.encode_checkpoint`` (the tree, then each tensor's
bytes), zlib-compressed. Read too: ``zlib`` (``dump_checkpoint``, i.e. ``torch.save``,
compressed: streamwatch before 2026-12-07) and ``identity`` (format-1 heads). A process of
a version before 2026-12-07 refuses ``tensors+zlib`` heads with a clear error: upgrade
every process of a group together."""
ENCODINGS = ("identity", "zlib", ENCODING)
ZLIB_LEVEL = 1
"""A checkpoint of 1,000 ICU streams, 19.7 MB, compresses to 4.7 MB in ~130 ms (zlib
releases the GIL meanwhile): a quarter of the bytes for the broker to take in and to pace."""


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
    own: frozenset[TopicPartition] = frozenset()
    """The partitions this process's own current checkpoint holds (one written under its
    instance name, perhaps by an earlier run): its next save replaces them all."""


class StateStore(Protocol):
    """What the service needs of a store (see module docstring)."""

    def save(
        self, global_state: dict[str, Any], partitions: dict[TopicPartition, PartitionState],
        *, background: bool = False,
    ) -> None:
        """Make this process's checkpoint durable (replacing its previous one).
        ``background``: the loop goes on meanwhile, so the store may pace the write.
        Keeps no reference to the tensors handed in once it returns: the service copies
        its next snapshot into them."""

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


def _os_problem(exc: OSError) -> str:
    """The OS error without its path (the caller's message names the directory):
    ``No space left on device (ENOSPC)``."""
    if not exc.strerror:
        return str(exc)
    code = errno.errorcode.get(exc.errno or 0)
    return f"{exc.strerror} ({code})" if code else exc.strerror


class FileStateStore:
    """Shared-directory state store (see module docstring): temp file + fsync + rename."""

    def __init__(self, directory: Path | str, instance: str) -> None:
        self.directory = Path(directory)
        self.instance = instance
        self.path = self.directory / f"detector-{instance}.pt"

    def __repr__(self) -> str:
        return f"FileStateStore({str(self.directory)!r})"

    def save(
        self, global_state: dict[str, Any], partitions: dict[TopicPartition, PartitionState],
        *, background: bool = False,
    ) -> None:
        """Write this process's checkpoint atomically (never paced: a local write).

        Raises ``CheckpointError`` naming the directory if it cannot be written (not a
        directory any more, read-only, disk full): the previous checkpoint stays intact."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.path, _state(global_state, partitions),
                            {"format": FORMAT, "instance": self.instance})
        except OSError as exc:
            problem = ("it is not a directory" if self.directory.exists()
                       and not self.directory.is_dir() else _os_problem(exc))  # fmt: skip
            raise CheckpointError(f"cannot write the checkpoint to directory "
                                  f"{str(self.directory)!r}: {problem}") from exc

    def check_directory(self) -> None:
        """Create the directory if missing and check that it is a directory this process can
        write (a probe file is created and removed); ``CheckpointError`` if not."""
        where = f"checkpoint directory {str(self.directory)!r}"
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"{where} is not a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"{where} cannot be created: {_os_problem(exc)}") from None
        try:
            with tempfile.TemporaryFile(dir=self.directory, prefix=".probe-"):
                pass
        except OSError as exc:
            raise CheckpointError(f"{where} is not writable: {_os_problem(exc)}") from None

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
        own: set[TopicPartition] = set()

        def noting_own() -> Iterable[tuple[str, dict[str, Any], dict[str, Any]]]:
            for source, state, meta in self._checkpoints(fresh_start):
                if meta.get("instance") == self.instance:
                    own.update(TopicPartition(e["topic"], int(e["partition"]))
                               for e in state["partitions"].values())
                yield source, state, meta

        snap = select(noting_own(), partitions)
        snap.own = frozenset(own)
        return snap

    def remove(self) -> None:
        """Delete this instance's file (tests, explicit reset)."""
        if self.path.exists():
            os.remove(self.path)

    def close(self) -> None:
        """Nothing held open."""


_KAFKA_FIX = ("delete the state topic (or pass --state-topic with a new name) or pass "
              "--fresh-start to begin from scratch")


def _crc(data: bytes) -> str:
    return f"{crc32c.crc32c(data):08x}"


def _checksum_of(data: bytes, kind: str) -> str:
    return _crc(data) if kind == "crc32c" else hashlib.sha256(data).hexdigest()


def _checksum(raw: dict[str, Any]) -> tuple[str, str]:
    """The head's checksum: CRC-32C (hardware-fast), or SHA-256 in older heads."""
    for kind in ("crc32c", "sha256"):
        if kind in raw:
            return kind, str(raw[kind])
    raise KeyError("crc32c")


@dataclass(frozen=True)
class _Head:
    """A process's current checkpoint as its head record describes it."""

    key: bytes
    instance: str
    set_id: str
    chunks: int
    checksum: tuple[str, str]  # ("crc32c", hex) or, in heads written before, ("sha256", hex)
    saved_at: float
    offsets: dict[TopicPartition, int]
    encoding: str = "identity"  # of the joined chunks (their checksum is of these bytes)

    @property
    def source(self) -> str:
        return self.key.decode(errors="replace")


class KafkaStateStore:
    """Changelog-topic state store (see module docstring).

    A checkpoint is cut into chunks of at most ``chunk_bytes`` (Kafka's default record
    limit is 1 MB; a detector with 1,000 ICU streams checkpoints ~17-20 MB, mostly the replay
    buffer, ~5 MB compressed). Per save, with keys naming the process (``instance``):

    1. the chunks, under keys ``ckpt/<instance>/<set>/<i>`` (``set``: a fresh random id),
       then a flush;
    2. the head, key ``ckpt/<instance>/head``: JSON with the set, the chunk count, the
       chunks' encoding, the CRC-32C of the whole, the time, and the next offset of each
       partition it holds; then a flush. Only now is the checkpoint current;
    3. tombstones for the previous set's chunks (flushed with the next save or at close).

    The chunks carry the checkpoint compressed with zlib (level 1: 19.7 -> 4.7 MB for
    1,000 ICU streams), encoded by ``encode_checkpoint`` (``ENCODING``): the writer thread
    holds the GIL ~5 ms per save instead of the 20-50 ms ``torch.save`` took, time the
    detector thread beside it could not run (docs/bench.md). The older encodings are still
    read: ``torch.save`` bytes compressed, and format-1 heads' uncompressed chunks. The
    CRC-32C of the head, over the bytes on the topic, is the checkpoint's checksum.

    A crash before 2 leaves the previous head and its chunks intact; a crash after 2 at
    worst leaves the previous set's chunks untombstoned (garbage no head names). So a
    reader that keeps the last record per key (what compaction keeps) always finds, per
    process, one complete checkpoint, and checks its CRC-32C before using it.

    The reader tails the topic with a consumer of its own (no group): from the beginning
    once, then on each ``load`` what was added since. It keeps every head and, of each
    chunk, only where it is (partition, offset): memory stays small however many processes
    wrote. A ``load`` chooses from the heads alone (per partition the highest offset, the
    global model of the head that has read furthest; ``select``'s rules) and fetches and
    parses only the checkpoints chosen. That is correct on a compacting broker (Apache
    Kafka: the last record of a key keeps its offset) and on one that keeps every record
    (Tansu, the demo's and the tests' broker: there the topic grows by one checkpoint per
    save, and the first read of a process scans all of it).

    Checkpoints of processes that are gone stay until superseded: a head older than
    ``forget_after_s`` whose every partition has a newer entry in another head (and whose
    model is not the one chosen) is tombstoned with its chunks by the next ``load``. A live
    process checkpoints every ``checkpoint_every_s``, so its head is never that old.

    A background save sends its chunks at ``write_bytes_per_s`` at most (0: no limit), as
    RocksDB rate-limits its background writes: a checkpoint was ~17 MB with 1,000 streams
    before compression, and sent at once it held the broker and both cores long enough to
    put 350-500 ms on the p99 latency of the seconds around it (docs/bench.md). Saves on a
    rebalance or at shutdown are not paced: the group waits for them.
    """

    def __init__(self, transport: Transport, topic: str, instance: str, *,
                 chunk_bytes: int = 512 * 1024, read_timeout_s: float = 60.0,
                 forget_after_s: float = 3600.0, write_bytes_per_s: float = 0.0,
                 flush_timeout_s: float = 30.0) -> None:  # fmt: skip
        if "/" in instance:
            raise CheckpointError(f"instance name {instance!r} must not contain '/'")
        if chunk_bytes < 1024:
            raise CheckpointError(f"chunk_bytes must be >= 1024, got {chunk_bytes}")
        if write_bytes_per_s < 0:
            raise CheckpointError(f"write_bytes_per_s must be >= 0, got {write_bytes_per_s}")
        self.transport = transport
        self.topic = topic
        self.instance = instance
        self.chunk_bytes = chunk_bytes
        self.read_timeout_s = read_timeout_s
        self.forget_after_s = forget_after_s
        self.write_bytes_per_s = write_bytes_per_s
        # the longest a save (or close) waits for the broker to acknowledge its records:
        # with the broker gone it raises (FlushTimeoutError) instead of blocking a stop for
        # the client's delivery timeout (librdkafka: 300 s)
        self.flush_timeout_s = flush_timeout_s
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None  # tails the topic
        self._fetcher: Consumer | None = None  # reads chosen chunks back
        self._tps: list[TopicPartition] = []
        self._heads: dict[bytes, bytes] = {}  # head key -> its last value
        self._chunks: dict[bytes, tuple[int, int]] = {}  # chunk key -> (partition, offset)
        self._previous: tuple[str, int] | None = None  # (set id, chunks) of our last save
        self._topic_ready = False

    def __repr__(self) -> str:
        return f"KafkaStateStore({self.topic!r})"

    @staticmethod
    def _head_key(instance: str) -> bytes:
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

    def _send(self) -> Producer:
        if self._producer is None:
            self.ensure_topic()
            self._producer = self.transport.producer()
        return self._producer

    # -- writing -----------------------------------------------------------------------
    def save(
        self, global_state: dict[str, Any], partitions: dict[TopicPartition, PartitionState],
        *, background: bool = False,
    ) -> None:
        """Send this process's checkpoint (chunks, flush, head, flush; see class docstring);
        ``background``: paced at ``write_bytes_per_s``.

        Raises ``TransportError`` if the broker does not take it: the previous checkpoint
        then stays the current one, and the caller must not commit offsets."""
        parts = encode_checkpoint(_state(global_state, partitions),
                                  {"format": FORMAT, "instance": self.instance})
        raw_bytes = sum(memoryview(part).nbytes for part in parts)
        data = compress_parts(parts, ZLIB_LEVEL)
        producer, size = self._send(), self.chunk_bytes
        set_id = uuid.uuid4().hex[:16]
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        rate = self.write_bytes_per_s if background else 0.0
        started, sent = time.monotonic(), 0
        for i, chunk in enumerate(chunks):
            if rate and (ahead := started + sent / rate - time.monotonic()) > 0:
                time.sleep(ahead)  # the chunks sent so far are due at `rate`
            producer.send(self.topic, chunk, self._chunk_key(self.instance, set_id, i))
            sent += len(chunk)
        producer.flush(self.flush_timeout_s)
        head = {"format": HEAD_FORMAT, "instance": self.instance, "set": set_id,
                "chunks": len(chunks), "encoding": ENCODING, "bytes": len(data),
                "raw_bytes": raw_bytes, "crc32c": _crc(data), "saved_at": time.time(),
                "partitions": [[tp.topic, tp.partition, ps.offset]
                               for tp, ps in sorted(partitions.items())]}
        producer.send(self.topic, json.dumps(head).encode(), self._head_key(self.instance))
        producer.flush(self.flush_timeout_s)
        if self._previous is not None:
            self._forget(self.instance, *self._previous)
        self._previous = (set_id, len(chunks))
        log.debug("checkpoint sent to the state topic",
                  extra={"topic": self.topic, "bytes": len(data), "raw_bytes": raw_bytes,
                         "chunks": len(chunks)})

    def _forget(self, instance: str, set_id: str, chunks: int, *, head: bool = False) -> None:
        """Tombstone a set's chunks (and the head naming it)."""
        producer = self._send()
        keys = [self._chunk_key(instance, set_id, i) for i in range(chunks)]
        if head:
            keys.append(self._head_key(instance))
        for key in keys:
            producer.send(self.topic, None, key)
            self._chunks.pop(key, None)
            self._heads.pop(key, None)

    # -- reading -----------------------------------------------------------------------
    def fold(self, messages: Iterable[Message]) -> None:
        """Fold changelog records into the last record per key (a tombstone removes it):
        heads by value, chunks by where they are."""
        for msg in messages:
            key = msg.key
            if key is None:
                log.warning("state topic record without a key ignored",
                            extra={"topic": msg.topic, "offset": msg.offset})
            elif msg.value is None:
                self._heads.pop(key, None)
                self._chunks.pop(key, None)
            elif key.endswith(b"/head"):
                self._heads[key] = msg.value
            else:
                self._chunks[key] = (msg.partition, msg.offset)

    def _reader(self) -> Consumer:
        self.ensure_topic()
        consumer = self.transport.consumer(None)
        if not self._tps:
            self._tps = [TopicPartition(self.topic, p)
                         for p in range(self.transport.partitions_for(self.topic))]
        consumer.assign(self._tps)
        return consumer

    def _catch_up(self) -> None:
        """Read the topic up to its end offsets as of now."""
        if self._consumer is None:
            consumer = self._reader()
            for tp, offset in consumer.beginning_offsets(self._tps).items():
                consumer.seek(tp, offset)
            self._consumer = consumer
        consumer = self._consumer
        ends = consumer.end_offsets(self._tps)
        deadline = time.monotonic() + self.read_timeout_s
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                raise TransportError(
                    f"could not read the state topic {self.topic!r} to its end within "
                    f"{self.read_timeout_s:g} s; check the broker, then restart")
            self.fold(consumer.poll(0.5, 10_000))

    def _parse_heads(self, fresh_start: bool) -> list[_Head]:
        heads = []
        for key, value in sorted(self._heads.items()):
            try:
                raw = json.loads(value)
                if raw.get("format") not in HEAD_FORMATS:
                    raise ValueError(f"format {raw.get('format')!r}, expected one of "
                                     f"{sorted(HEAD_FORMATS)}")
                encoding = HEAD_FORMATS[raw["format"]] or str(raw["encoding"])
                if encoding not in ENCODINGS:
                    raise ValueError(f"encoding {encoding!r}, expected one of {ENCODINGS}")
                head = _Head(key, str(raw["instance"]), str(raw["set"]), int(raw["chunks"]),
                             _checksum(raw), float(raw["saved_at"]),
                             {TopicPartition(str(t), int(p)): int(o) for t, p, o in raw["partitions"]},
                             encoding)
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                error = CheckpointError(
                    f"checkpoint head {self.topic}:{key.decode(errors='replace')} is not "
                    f"readable ({type(exc).__name__}: {str(exc)[:200]}); {_KAFKA_FIX}")
                if not fresh_start:
                    raise error from None
                # removed, not only skipped: the next start without the flag would stop on it
                log.warning("removing an unreadable checkpoint (fresh start asked)",
                            extra={"error": str(error)})
                self._send().send(self.topic, None, key)
                self._heads.pop(key, None)
                continue
            heads.append(head)
        return heads

    def _fetch(self, head: _Head) -> bytes:
        """The bytes of ``head``'s checkpoint, read back from the topic and checked."""
        where: dict[tuple[int, int], int] = {}  # (partition, offset) -> chunk index
        for i in range(head.chunks):
            at = self._chunks.get(self._chunk_key(head.instance, head.set_id, i))
            if at is None:
                raise CheckpointError(
                    f"checkpoint {self.topic}:{head.source} names {head.chunks} chunks of set "
                    f"{head.set_id} but chunk {i} is not on the topic (deleted by retention?); "
                    f"{_KAFKA_FIX}")
            where[at] = i
        if self._fetcher is None:
            self._fetcher = self._reader()
        fetcher, parts = self._fetcher, [b""] * head.chunks
        last = {}  # per partition, the offset of its last chunk
        for partition in {p for p, _o in where}:
            offsets = [o for p, o in where if p == partition]
            last[TopicPartition(self.topic, partition)] = max(offsets)
            fetcher.seek(TopicPartition(self.topic, partition), min(offsets))
        deadline = time.monotonic() + self.read_timeout_s
        while where:
            if time.monotonic() > deadline:
                raise TransportError(
                    f"could not read checkpoint {head.source} back from {self.topic!r} within "
                    f"{self.read_timeout_s:g} s; check the broker, then restart")
            for msg in fetcher.poll(0.5, 100):
                at = (msg.partition, msg.offset)
                if at in where and msg.value is not None:
                    parts[where.pop(at)] = msg.value
            if where and all(fetcher.position(tp) > end for tp, end in last.items()):
                raise CheckpointError(
                    f"checkpoint {self.topic}:{head.source}: {len(where)} of its chunks are "
                    f"gone from the topic (deleted by retention?); {_KAFKA_FIX}")
        data = b"".join(parts)
        if _checksum_of(data, head.checksum[0]) != head.checksum[1]:
            raise CheckpointError(f"checkpoint {self.topic}:{head.source} is corrupt: its chunks "
                                  f"do not match the head's checksum; {_KAFKA_FIX}")
        if head.encoding in ("zlib", ENCODING):
            try:
                return zlib.decompress(data)
            except zlib.error as exc:
                raise CheckpointError(f"checkpoint {self.topic}:{head.source} does not "
                                      f"decompress ({exc}); {_KAFKA_FIX}") from None
        return data

    def _parsed(self, head: _Head) -> tuple[str, dict[str, Any], dict[str, Any]]:
        source = f"{self.topic}:{head.source}"
        parse = decode_checkpoint if head.encoding == ENCODING else parse_checkpoint
        state, meta = parse(self._fetch(head), source, fix=_KAFKA_FIX)
        return source, state, meta

    def checkpoints(self, *, fresh_start: bool = False
                    ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """``(source, state, meta)`` of every process's current checkpoint on the topic
        (all of them fetched and parsed: for tools and tests; ``load`` reads fewer).

        One that is incomplete or damaged raises ``CheckpointError`` unless
        ``fresh_start``, in which case it is logged and skipped (never silently)."""
        self._catch_up()
        return self._all_parsed(self._parse_heads(fresh_start), fresh_start)

    def _all_parsed(self, heads: list[_Head], fresh_start: bool
                    ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        out = []
        for head in heads:
            try:
                out.append(self._parsed(head))
            except CheckpointError as exc:
                if not fresh_start:
                    raise
                log.warning("removing an unreadable checkpoint (fresh start asked)",
                            extra={"error": str(exc)})
                self._forget(head.instance, head.set_id, head.chunks, head=True)
        return out

    def load(self, partitions: set[TopicPartition], *, fresh_start: bool = False) -> Snapshot:
        """The newest state of each requested partition and the newest global state,
        fetching only the checkpoints that hold them (``select``'s rules on the heads)."""
        self._catch_up()
        heads = self._parse_heads(fresh_start)
        mine = next((h for h in heads if h.instance == self.instance), None)
        if mine is not None and self._previous is None:  # a restart under the same name
            self._previous = (mine.set_id, mine.chunks)
        best: dict[TopicPartition, _Head] = {}
        furthest: _Head | None = None
        for head in heads:
            for tp, offset in head.offsets.items():
                if tp in partitions and (tp not in best or offset > best[tp].offsets[tp]):
                    best[tp] = head
            if furthest is None or sum(head.offsets.values()) >= sum(furthest.offsets.values()):
                furthest = head
        chosen = {h.key for h in best.values()} | ({furthest.key} if furthest else set())
        self._forget_gone(heads, furthest)
        snap = select(self._all_parsed([h for h in heads if h.key in chosen], fresh_start),
                      partitions)
        if fresh_start and furthest is not None and snap.global_state is None:
            log.warning("no readable model checkpoint on the state topic; starting the model "
                        "fresh (fresh start asked)", extra={"topic": self.topic})
        snap.own = frozenset(mine.offsets) if mine is not None else frozenset()
        return snap

    def _forget_gone(self, heads: list[_Head], furthest: _Head | None) -> None:
        """Tombstone the checkpoints of processes gone for ``forget_after_s`` whose every
        partition another head holds at a newer offset (see class docstring)."""
        now = time.time()
        for head in heads:
            if head.instance == self.instance or head is furthest:
                continue
            if now - head.saved_at < self.forget_after_s:
                continue
            if all(any(o.offsets.get(tp, -1) > offset for o in heads if o is not head)
                   for tp, offset in head.offsets.items()):
                log.info("removing the superseded checkpoint of a detector gone since "
                         "its last save", extra={"topic": self.topic, "head": head.source,
                                                 "age_s": round(now - head.saved_at)})
                self._forget(head.instance, head.set_id, head.chunks, head=True)

    def close(self) -> None:
        """Flush pending tombstones, close the clients."""
        errors: list[StreamwatchError] = []
        try:
            if self._producer is not None:
                self._producer.flush(self.flush_timeout_s)
        except StreamwatchError as exc:
            errors.append(exc)
        for client in (self._producer, self._consumer, self._fetcher):
            if client is not None:
                try:  # each one closed, whatever the others do
                    client.close()
                except StreamwatchError as exc:
                    errors.append(exc)
        self._producer = self._consumer = self._fetcher = None
        if errors:
            raise errors[0]
