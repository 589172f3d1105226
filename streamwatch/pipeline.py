"""The detector service loop: consume -> validate -> score -> emit -> learn -> checkpoint -> commit.

At-least-once with state (DESIGN.md):

* every polled record ends as exactly one Score (when accepted) or one DeadLetter;
* per micro-batch the producer is flushed before anything is considered done;
* state is checkpointed on a schedule (every N batches or T seconds) and offsets are
  committed only *after* the checkpoint that covers them is on disk;
* on restart (or on being assigned a partition) the newest checkpoint of each partition is
  restored and reading resumes at the checkpoint's offset, so every reading after it is
  re-scored from the exact state that first scored it: same scores, same alert ids.

Runs over any ``Transport`` (Kafka or in-memory); ``run(timeout=, count=)`` makes runs finite.
"""

from __future__ import annotations

import gc
import logging
import operator
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, groupby, repeat
from typing import Any

import torch

from streamwatch import schema
from streamwatch.detect.detector import EmitScores, EncodedScores
from streamwatch.detect.watch import WatchedStreams
from streamwatch.errors import (
    CheckpointError,
    FlushTimeoutError,
    SchemaError,
    StreamwatchError,
    TransportError,
)
from streamwatch.heap import freeze_heap
from streamwatch.merge import EventTimeMerge
from streamwatch.metrics import ServiceMetrics
from streamwatch.schema import Alert, DeadLetter, Health, Reading
from streamwatch.state_store import PartitionState, Snapshot, StateStore
from streamwatch.transport.base import Consumer, Message, Producer, TopicPartition, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceOptions:
    """What the service loop needs to know (built from ``config.ServiceSettings``)."""

    readings_topic: str = "streamwatch.readings"
    scores_topic: str = "streamwatch.scores"
    alerts_topic: str = "streamwatch.alerts"
    deadletter_topic: str = "streamwatch.deadletter"
    health_topic: str = "streamwatch.health"
    group_id: str = "streamwatch-detector"
    max_poll_records: int = 2000
    poll_timeout_s: float = 0.5
    emit_scores: EmitScores = "all"
    # with emit_scores "alerts": streams (ids or fnmatch patterns) that still get a Score
    # for every reading (``detect.watch``)
    watch_streams: tuple[str, ...] = ()
    checkpoint_every_batches: int = 1000
    # wait for the broker's acknowledgement of the outputs every this many batches (and
    # always before a checkpoint, a rebalance and shutdown); 1: after every batch
    flush_every_batches: int = 1
    checkpoint_every_s: float = 30.0
    # each interval is drawn from [(1 - jitter) * every_s, every_s], so that the processes
    # of a group, started together, do not all checkpoint at the same moment
    checkpoint_jitter: float = 0.25
    health_every_s: float = 2.0
    max_future_s: float = 300.0
    payload_cap: int = 4096
    fresh_start: bool = False
    # a partition holding more readings than this in the event-time merge is paused until
    # it holds half as many (``DetectorService._flow_control``); 0: never pause
    buffered_per_partition: int = 20_000
    retry_backoff_s: tuple[float, float] = (0.5, 10.0)
    # the longest one wait for the broker to acknowledge the outputs: an outage is logged
    # (and a stop honoured) at this pace, and a shutdown's last flush gives up after it
    flush_timeout_s: float = 10.0
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


#: The longest a partition known to have unread data holds the others back while it sends
#: nothing (``DetectorService._pending_partitions``), seconds of wall time.
PENDING_HOLD_S = 60.0


_TS, _SID = operator.attrgetter("ts"), operator.attrgetter("stream_id")
_OFFSET, _KEY = operator.attrgetter("offset"), operator.attrgetter("key")
_VALUE, _TOPIC_PARTITION = operator.attrgetter("value"), operator.attrgetter("topic", "partition")


def _keys_match(messages: Sequence[Message],
                groups: dict[TopicPartition, tuple[list[int], list[Reading]]]) -> bool:
    """Whether every decoded record's Kafka key is its stream id (UTF-8); False when one
    differs or is None (``_accept_each`` then tells them apart)."""
    for at, rds in groups.values():
        if list(map(_KEY, map(messages.__getitem__, at))) != list(
                map(str.encode, map(_SID, rds))):
            return False
    return True


class _SnapshotCopies:
    """Checkpoint state copied off the live detector, which goes on changing while it is
    written: every tensor cloned, every dict and list rebuilt (``copied``). A tensor of
    ``MIN_BYTES`` or more goes into a tensor of the same shape and dtype from the last
    snapshot once that one is written (``release``; a store keeps nothing of what it
    saved), not into fresh memory: the page faults of ~15 MB of fresh memory were most of
    a snapshot's time on a busy machine (``heap.SpareArrays``, docs/bench.md).

    >>> copies = _SnapshotCopies()
    >>> live = {"w": torch.zeros(_SnapshotCopies.MIN_BYTES // 4), "n": [1]}
    >>> first = copies.copied(live)
    >>> first["w"] is live["w"], first["n"] == live["n"]
    (False, True)
    >>> copies.release(first)
    >>> copies.copied(live)["w"] is first["w"]
    True
    """

    MIN_BYTES = 64 * 1024

    def __init__(self) -> None:
        self._free: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}

    def copied(self, tree: Any) -> Any:
        if isinstance(tree, torch.Tensor):
            t = tree.detach()
            free = self._free.get((tuple(t.shape), t.dtype)) if t.nbytes >= self.MIN_BYTES else None
            return free.pop().copy_(t) if free else t.clone()
        if isinstance(tree, Mapping):
            return {k: self.copied(v) for k, v in tree.items()}
        if isinstance(tree, list | tuple):
            return type(tree)(self.copied(v) for v in tree)
        return tree

    def release(self, *trees: Any) -> None:
        """``trees`` (``copied`` results) are written: their large tensors are the ones
        the next snapshot copies into (any left from before are let go)."""
        free: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}
        stack = list(trees)
        while stack:
            node = stack.pop()
            if isinstance(node, torch.Tensor):
                if node.nbytes >= self.MIN_BYTES and node.is_contiguous():
                    free.setdefault((tuple(node.shape), node.dtype), []).append(node)
            elif isinstance(node, Mapping):
                stack.extend(node.values())
            elif isinstance(node, list | tuple):
                stack.extend(node)
            elif isinstance(node, PartitionState):
                stack.append(node.streams)
        self._free = free


@dataclass
class RunStats:
    readings: int = 0
    dead_letters: int = 0
    batches: int = 0
    alerts: int = 0
    checkpoints: int = 0
    # False when the stop could not flush, checkpoint and commit (the broker gone): the
    # next start replays from the last checkpoint, so nothing is lost
    final_checkpoint: bool = True


class DetectorService:
    """One detector process in the consumer group (see module docstring)."""

    def __init__(
        self,
        transport: Transport,
        detector_factory: Callable[[], Any],
        store: StateStore,
        options: ServiceOptions | None = None,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.detector_factory = detector_factory
        self.store = store
        self.options = options or ServiceOptions()
        self.metrics = metrics or ServiceMetrics()
        self.clock = clock
        self.stats = RunStats()
        self._stop = threading.Event()
        self.detector: Any = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._next_offsets: dict[TopicPartition, int] = {}  # safe to commit
        self._polled_next: dict[TopicPartition, int] = {}
        self._assigned: set[TopicPartition] = set()
        # per assigned partition (``_pending_partitions``): its log end as asked of the
        # broker before a fetch answer gave one, and where reading it began when nothing of
        # it has been polled yet
        self._end_hints: dict[TopicPartition, int] = {}
        self._start_positions: dict[TopicPartition, int] = {}
        self._merge = EventTimeMerge()
        self._paused: set[TopicPartition] = set()  # by _flow_control
        self._decoder = schema.ReadingDecoder()
        self._watched = WatchedStreams(self.options.watch_streams)
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._keys: dict[str, bytes] = {}  # stream_id -> Kafka key
        self._stream_partition: dict[str, TopicPartition] = {}
        self._batches_since_ckpt = 0
        # outputs sent since the last acknowledged flush (sent again if a flush fails)
        self._unflushed: list[tuple[str, bytes, bytes | None]] = []
        self._unflushed_batches = 0
        # a delivery failed since the last flush: every flush first sends all of
        # ``_unflushed`` again (the client dropped the failed records, and says so once)
        self._resend = False
        self._last_ckpt = 0.0
        self._ckpt_rng = random.Random()  # from OS entropy: differs across processes
        self._ckpt_interval = self._next_interval()
        self._last_health = 0.0
        self._restored_global = False
        # The partitions of this process's current checkpoint (None: none saved in this
        # run; the store then tells what an earlier run under this name saved)
        self._saved_tps: frozenset[TopicPartition] | None = None
        self._gc_frozen = False
        self._closing = False  # the consumer is closing: its revoke needs no checkpoint
        self._polled_since_health = False  # records came in since the last health tick
        self._outage_since: float | None = None  # a broker error, and no answer since
        # checkpoints are written on a thread of their own while the loop goes on, one at
        # a time (made by run(), shut down with it)
        self._writer: ThreadPoolExecutor | None = None
        # (the write, the offsets it covers, the snapshot's seconds, what it writes)
        self._pending: tuple[Future[float], dict[TopicPartition, int], float, tuple[Any, Any]
                             ] | None = None  # fmt: skip
        self._copies = _SnapshotCopies()

    # -- lifecycle -------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint, commit and return."""
        self._stop.set()

    @property
    def held_readings(self) -> int:
        """Readings waiting in the event-time merge."""
        return self._merge.held

    @property
    def paused_partitions(self) -> frozenset[TopicPartition]:
        """Partitions paused by flow control (``_flow_control``)."""
        return frozenset(self._paused)

    @property
    def assigned_partitions(self) -> frozenset[TopicPartition]:
        """The partitions this process holds now (between rebalances)."""
        return frozenset(self._assigned)

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM/SIGHUP: a graceful stop. A second one while it is under way exits at
        once, as a kill would (the next start replays from the last checkpoint)."""
        def handle(signum: int, _frame: Any) -> None:
            if not self._stop.is_set():
                log.info("stopping: flushing, checkpointing, committing (signal again to "
                         "exit at once)", extra={"signal": signal.Signals(signum).name})
                self.stop()
                return
            log.warning("second signal: exiting now without a final checkpoint; the next "
                        "start replays from the last one",
                        extra={"signal": signal.Signals(signum).name})
            logging.shutdown()
            os._exit(128 + signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # HUP: a closed terminal
            signal.signal(sig, handle)

    def run(self, *, timeout: float | None = None, count: int | None = None) -> RunStats:
        """Process until stopped, ``timeout`` seconds pass, or ``count`` records are handled."""
        opts = self.options
        self.detector = self.detector_factory()
        self._closing = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamwatch-checkpoint")
        self._producer = self.transport.producer()
        self._consumer = self.transport.consumer(group_id=opts.group_id)
        self._consumer.subscribe([opts.readings_topic], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = opts.retry_backoff_s[0]
        self._last_ckpt = time.monotonic()
        log.info("detector started", extra={"group": opts.group_id, "instance": opts.instance})
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if count is not None and self.stats.readings + self.stats.dead_letters >= count:
                    break
                try:
                    messages = self._consumer.poll(opts.poll_timeout_s, opts.max_poll_records)
                    if messages:
                        self._polled_since_health = True
                        if self._outage_since is not None:
                            self._broker_answered()
                    if messages or self._merge.held:
                        left = None if count is None else count - self.stats.readings - self.stats.dead_letters
                        pending = self._pending_partitions() | self._paused
                        self._process(messages, caught_up=not messages and not pending,
                                      budget=left, pending=pending)  # fmt: skip
                        if not self._gc_frozen and self.stats.readings:
                            self._freeze_heap()
                    if self._paused or self._merge.held > opts.buffered_per_partition > 0:
                        self._flow_control()
                    self._maybe_checkpoint()
                    self._maybe_health()
                    backoff = opts.retry_backoff_s[0]
                except TransportError as exc:
                    self.metrics.transport_errors.inc()
                    if self._outage_since is None:
                        self._outage_since = time.monotonic()
                    log.warning("broker error; retrying", extra={"error": str(exc),
                                                                "retry_in_s": backoff})
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, opts.retry_backoff_s[1])
        finally:
            self._shutdown()
        return self.stats

    def _freeze_heap(self) -> None:
        """Once the detector's long-lived state exists, make the memory checkpoints copy
        into (``_SnapshotCopies``: its page faults, ~100 ms of the thread on a busy
        machine, are paid here, not in the first checkpoint mid-stream), then take
        everything alive out of the cyclic GC's reach (:func:`freeze_heap`). Undone at
        shutdown so a process running services one after another can collect them."""
        copies = self._state_copies()
        if copies is not None:
            self._copies.release(*copies[:2])
        freeze_heap()
        self._gc_frozen = True

    def _shutdown(self) -> None:
        assert self._consumer is not None and self._producer is not None
        if self._gc_frozen:
            gc.unfreeze()
            self._gc_frozen = False
        try:
            self._checkpoint_and_commit()
        except StreamwatchError as exc:
            self.stats.final_checkpoint = False
            log.error("could not checkpoint on shutdown; the next start replays from the "
                      "last checkpoint", extra={"error": str(exc)})
        finally:
            self._closing = True
            try:
                self._consumer.close()
            except StreamwatchError as exc:  # the group's session timeout frees the partitions
                log.warning("consumer did not close cleanly", extra={"error": str(exc)})
            try:
                self._producer.close()
            except StreamwatchError as exc:  # outputs of uncommitted batches: replayed
                log.warning("outputs left unacknowledged at exit; the next start produces "
                            "them again", extra={"error": str(exc)})
            if self._writer is not None:
                self._writer.shutdown(wait=True)
            try:
                self.store.close()
            except StreamwatchError as exc:
                log.warning("state store did not close cleanly", extra={"error": str(exc)})
            log.info("detector stopped", extra={"readings": self.stats.readings,
                                                "dead_letters": self.stats.dead_letters})

    # -- rebalance ---------------------------------------------------------------------
    def _on_assign(self, partitions: set[TopicPartition]) -> None:
        assert self._consumer is not None
        self._finish_pending(block=True)  # never read the store while writing to it
        snapshot = self._load_state(set(partitions))
        # the stored model is adopted once, and only before this process has scored
        # anything: after that it trains its own copy (a swap would change its scores)
        if (snapshot.global_state is not None and not self._restored_global
                and self.stats.readings == 0):
            try:
                self.detector.load_global_state(snapshot.global_state)
            except CheckpointError as exc:
                self._unfit(exc, "the models")
                self.detector = self.detector_factory()  # nothing half-loaded stays
                snapshot = Snapshot(None, {})
            self._restored_global = True
        for tp in partitions:
            state = snapshot.partitions.get(tp)
            if state is not None:
                try:
                    self.detector.import_streams(state.streams)
                except CheckpointError as exc:
                    self._unfit(exc, f"the streams of {tp.topic}/{tp.partition}")
                    self.detector.forget_streams(list(state.streams.get("stream_ids", [])))
                    continue  # from the committed offset, with fresh state
                for sid in state.streams.get("stream_ids", []):
                    self._stream_partition[sid] = tp
                self._consumer.seek(tp, state.offset)
                self._next_offsets[tp] = state.offset
                self._polled_next[tp] = state.offset
        self._assigned |= set(partitions)
        self._paused -= set(partitions)  # the transport starts them unpaused
        self.metrics.paused_partitions.set(len(self._paused))
        for tp in partitions:
            self._end_hints.pop(tp, None)
            self._start_positions.pop(tp, None)
        self._merge.assign(set(partitions), time.monotonic())
        log.info("partitions assigned", extra={
            "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in partitions),
            "restored": len(snapshot.partitions)})
        saved = snapshot.own if self._saved_tps is None else self._saved_tps
        if (snapshot.partitions and not self._closing
                and saved <= self._assigned):
            # The restored state may be in another process's checkpoint only (the previous
            # owner's), which that process's next one replaces without these partitions:
            # until this process writes its own, a crash would leave no state for them.
            # Not when this save would drop a partition of this process's own checkpoint
            # that it no longer holds (it kept some in an eager rebalance, or restarted
            # under its old name with fewer): the new owner may be loading it from there
            # at this moment (every member of an eager rebalance is assigned at once).
            try:
                self._checkpoint_and_commit()
            except StreamwatchError as exc:
                log.error("could not checkpoint the restored partitions; the next checkpoint "
                          "writes them", extra={"error": str(exc)})

    def _unfit(self, exc: CheckpointError, what: str) -> None:
        """A checkpoint this configuration cannot take (another cell, window, threshold
        setting ...): with ``fresh_start`` logged and skipped, else an error saying how."""
        if not self.options.fresh_start:
            raise CheckpointError(
                f"{exc}. To keep the new settings, start once with --fresh-start (or "
                "STREAMWATCH_SERVICE__FRESH_START=true): the checkpoint is skipped, scoring "
                "goes on from the committed offsets with fresh state, and the next checkpoint "
                "replaces it") from None
        log.warning("checkpoint does not fit these settings; skipped (--fresh-start), "
                    "fresh state from the committed offsets", extra={"state": what,
                                                                    "error": str(exc)})

    def _load_state(self, partitions: set[TopicPartition]) -> Snapshot:
        """The store's snapshot of these partitions, retried while the store's broker is
        unreachable: scoring them from cold state would change their scores and alert ids."""
        backoff = self.options.retry_backoff_s[0]
        while True:
            try:
                return self.store.load(partitions, fresh_start=self.options.fresh_start)
            except TransportError as exc:
                if self._stop.is_set():
                    raise
                self.metrics.transport_errors.inc()
                log.warning("could not read the state store; retrying", extra={
                    "store": repr(self.store), "error": str(exc), "retry_in_s": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.options.retry_backoff_s[1])

    def _on_revoke(self, partitions: set[TopicPartition]) -> None:
        # Closing the consumer hands its partitions back through this callback; the
        # shutdown checkpointed and committed just before, and nothing was polled since (a
        # second checkpoint there wrote the same state again, and its commit, made while
        # the client was being torn down, failed with confluent-kafka's _DESTROY).
        if not self._closing:
            try:
                self._checkpoint_and_commit()
            except StreamwatchError as exc:  # the partitions go anyway
                log.error("could not checkpoint on revoke; the next owner replays from the "
                          "last checkpoint", extra={"error": str(exc)})
        gone = self._drop(partitions)
        log.info("partitions revoked", extra={"partitions": len(partitions), "streams": gone})

    def _on_lost(self, partitions: set[TopicPartition]) -> None:
        """Partitions taken while this process was out of the group (its session expired:
        a pause, a stopped host). Another member may already own them and have moved on
        from the last checkpoint: a checkpoint of them now would put this process's
        older line of their state beside the new owner's (and could win a later restore,
        ``state_store.select``), and the commit would be refused. So their state is
        dropped as it is; what this process scored since its last checkpoint is scored
        again by the new owner (at-least-once: duplicates)."""
        gone = self._drop(partitions)
        log.warning("partitions lost (this process was out of the group); their state is "
                    "dropped without a checkpoint: the new owner goes on from the last one",
                    extra={"partitions": len(partitions), "streams": gone})

    def _drop(self, partitions: set[TopicPartition]) -> int:
        """Forget the partitions and their streams; the number of streams dropped."""
        gone = [sid for sid, tp in self._stream_partition.items() if tp in partitions]
        self.detector.forget_streams(gone)
        for sid in gone:
            del self._stream_partition[sid]
        for tp in partitions:
            self._next_offsets.pop(tp, None)
            self._polled_next.pop(tp, None)
            self._end_hints.pop(tp, None)
            self._start_positions.pop(tp, None)
        self._assigned -= set(partitions)
        self._paused -= set(partitions)
        self.metrics.paused_partitions.set(len(self._paused))
        self._merge.drop(partitions)
        return len(gone)

    # -- the batch ---------------------------------------------------------------------
    def _check(self, msg: Message, reading: Reading, now: float) -> None:
        """The service's own rules, after the detector's (``validate_many``): a timestamp
        past ``max_future_s``, a key other than the stream id. ``_process`` tests them for
        the whole poll at once and calls ``_accept_each`` (this, per reading) only when the
        poll fails: a new rule goes into both."""
        if reading.ts > now + self.options.max_future_s:
            raise SchemaError(
                f"timestamp {reading.ts:.3f} is more than {self.options.max_future_s:g} s "
                "in the future (check the producer's clock)", field="ts", code="future_timestamp")
        if msg.key is not None and msg.key != reading.stream_id.encode():
            raise SchemaError(
                f"Kafka key {msg.key[:64]!r} differs from stream_id {reading.stream_id!r}; the key "
                "must be the stream_id so a stream stays on one partition",
                field="stream_id", code="key_mismatch")

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def _pending_partitions(self) -> frozenset[TopicPartition]:
        """Assigned partitions with data on the broker that this process has not polled
        yet. Such a partition holds the others back (``EventTimeMerge.release``), and an
        empty poll means "caught up" only when there is none. Without this, a partition
        whose first records come late (kafka-python on Tansu delivers the partitions of a
        backlog one after another, the last ones 10-15 s after the first) was taken for
        idle after ``idle_s``, the others' later readings went ahead of its earlier ones,
        and the shared model learned in another order than an uninterrupted in-order run:
        other alert onsets, other alert ids after a restart.

        The end of each partition is the consumer's cached high watermark (no request),
        or, until a fetch answer has brought one, the log end asked of the broker once per
        assignment. A partition stays pending at most ``PENDING_HOLD_S`` of silence (a
        watermark no fetch reaches, such as transaction markers at the end of the log,
        must not hold the others for good)."""
        assert self._consumer is not None
        if not self._assigned:
            return frozenset()
        try:
            high = self._consumer.highwater(self._assigned)
            unknown = [tp for tp in self._assigned
                       if tp not in high and tp not in self._end_hints]  # fmt: skip
            if unknown:
                self._end_hints.update(self._consumer.end_offsets(unknown))
        except TransportError as exc:
            log.debug("partition ends unknown this time: %s", exc)
            return frozenset()
        now, pending = time.monotonic(), set()
        for tp, end in self._partition_ends(high).items():
            at = self._polled_next.get(tp)
            if at is None:
                at = self._start_positions.get(tp)
            if at is None:
                try:
                    at = self._start_positions[tp] = self._consumer.position(tp)
                except TransportError:
                    continue
            if end > at and now - self._merge.last_seen(tp, now) < PENDING_HOLD_S:
                pending.add(tp)
        return frozenset(pending)

    def _partition_ends(self, high: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The log end of each assigned partition that has one known: its cached high
        watermark ``high``, else the end asked of the broker once per assignment."""
        ends = {}
        for tp in self._assigned:
            end = high.get(tp, self._end_hints.get(tp))
            if end is not None:
                ends[tp] = end
        return ends

    def _flow_control(self) -> None:
        """Pause the partitions that run ahead in event time; resume them when drained.

        A partition whose readings the merge holds (they wait for the slower partitions'
        data to reach their timestamps) beyond ``buffered_per_partition`` is paused, and
        resumed when it holds half as many, as Kafka Streams pauses a partition whose
        buffer exceeds ``buffered.records.per.partition``. Without it a backlog read
        unevenly (librdkafka prefetches whole partitions) filled the merge to its
        ``max_held`` (200,000 readings, seen in ``streamwatch bench kafka``), whose escape
        lets readings go before the watermark, out of event-time order: a replay could
        then train in another order than the first run. The partition that sets the
        watermark is never paused (its held readings are all at or below it, so they
        left with the last release), and a paused one counts as pending, so it is never
        taken for idle."""
        assert self._consumer is not None
        cap, merge = self.options.buffered_per_partition, self._merge
        resume = [tp for tp in self._paused if merge.held_of(tp) <= cap // 2]
        pause = ([tp for tp in self._assigned - self._paused if merge.held_of(tp) > cap]
                 if cap > 0 else [])  # fmt: skip
        if resume:
            self._consumer.resume(resume)
            self._paused.difference_update(resume)
        if pause:
            self._consumer.pause(pause)
            self._paused.update(pause)
        if pause or resume:
            self.metrics.paused_partitions.set(len(self._paused))
            log.debug("flow control", extra={
                "paused": sorted(f"{tp.topic}/{tp.partition}" for tp in pause),
                "resumed": sorted(f"{tp.topic}/{tp.partition}" for tp in resume),
                "held": merge.held})

    def _process(self, messages: Sequence[Message], caught_up: bool,
                 budget: int | None = None,
                 pending: frozenset[TopicPartition] = frozenset()) -> None:
        started = time.perf_counter()
        assert self._producer is not None
        now, wall = self.clock(), time.monotonic()
        # decode each record, then validate the decoded ones as a batch; every refused
        # record becomes a dead letter, in the order of the poll. Per partition: the poll
        # positions of its decoded records and the readings. A poll brings each
        # partition's records one after another, in offset order: each such run is
        # decoded at once when it can be (``decode_many``), else record by record
        refused: dict[int, SchemaError] = {}
        groups: dict[TopicPartition, tuple[list[int], list[Reading]]] = {}
        polled = self._polled_next
        start = 0
        for (topic, partition), run in groupby(map(_TOPIC_PARTITION, messages)):
            end = start + len(list(run))
            tp = self._tp(topic, partition)
            at, rds = groups.setdefault(tp, ([], []))
            polled[tp] = messages[end - 1].offset + 1
            try:
                fast = self._decoder.decode_many(list(map(_VALUE, messages[start:end])))
            except Exception:  # a decoder bug: record by record, which dead-letters it
                log.exception("decoding a poll's records at once failed; one at a time")
                fast = None
            if fast is not None:
                at.extend(range(start, end))
                rds.extend(fast)
            else:
                self._decode_each(messages, start, end, at, rds, refused)
            start = end
        decoded = list(chain.from_iterable(rds for _at, rds in groups.values()))
        verdicts = self.detector.validate_many(decoded)
        latest = now + self.options.max_future_s
        where = self._stream_partition
        if (decoded and verdicts.count(None) == len(verdicts)
                and max(map(_TS, decoded)) <= latest and _keys_match(messages, groups)):
            # the usual poll: every decoded record passes (checked in C, as a whole)
            for tp, (at, rds) in groups.items():
                if rds:
                    self._merge.add_many(tp, list(map(_OFFSET, map(messages.__getitem__, at))),
                                         rds, wall)  # fmt: skip
                    where.update(zip(map(_SID, rds), repeat(tp)))
        else:
            self._accept_each(messages, groups, verdicts, now, wall, refused)
        dead = [self._dead_letter(messages[i], exc.code, str(exc), exc.field, now)
                for i, exc in sorted(refused.items())]
        if budget is not None:
            budget = max(0, budget - len(dead))
        accepted = self._merge.release(wall, everything=caught_up, max_n=budget,
                                       pending=pending)  # fmt: skip
        self._next_offsets = self._merge.safe_offsets(self._polled_next)
        size = self.options.max_poll_records
        for start in range(0, max(len(accepted), 1 if dead else 0), size):
            self._score_and_emit(accepted[start:start + size], dead, now, started, start)
            dead, started = [], time.perf_counter()

    def _decode_each(self, messages: Sequence[Message], start: int, end: int, at: list[int],
                     rds: list[Reading], refused: dict[int, SchemaError]) -> None:
        """Decode ``messages[start:end]`` one by one: each reading and its poll position go
        to ``rds`` and ``at``, each refused record's error to ``refused``."""
        decode = self._decoder.decode
        for i in range(start, end):
            try:
                rds.append(decode(messages[i].value))
            except SchemaError as exc:
                refused[i] = exc
                continue
            except Exception as exc:  # a decoder bug must not kill the loop: a dead letter
                log.exception("decoder failed on a record", extra={"offset": messages[i].offset})
                refused[i] = SchemaError(f"decoder error: {type(exc).__name__}: {exc}",
                                         code="internal_error")
                continue
            at.append(i)

    def _accept_each(self, messages: Sequence[Message],
                     groups: dict[TopicPartition, tuple[list[int], list[Reading]]],
                     verdicts: Sequence[SchemaError | None], now: float, wall: float,
                     refused: dict[int, SchemaError]) -> None:
        """``_process`` for a poll with a refused or suspect record: each decoded reading
        is checked on its own (the detector's verdict, then ``_check``); the accepted ones
        go to the merge, the others to ``refused``."""
        where, k = self._stream_partition, 0
        for tp, (at, rds) in groups.items():
            offsets: list[int] = []
            readings: list[Reading] = []
            for i, reading in zip(at, rds, strict=True):
                error, msg = verdicts[k], messages[i]
                k += 1
                try:
                    if error is not None:
                        raise error
                    self._check(msg, reading, now)
                except SchemaError as exc:
                    refused[i] = exc
                    continue
                offsets.append(msg.offset)
                readings.append(reading)
                where[reading.stream_id] = tp
            if readings:
                self._merge.add_many(tp, offsets, readings, wall)

    def _score_and_emit(self, accepted: list[Reading], dead: list[DeadLetter], now: float,
                        started: float, first: int = 0) -> None:  # fmt: skip
        """One micro-batch (readings ``first`` on of the merge's last release): score,
        deliver outputs, count."""
        scores, alerts, failed = self._score(accepted, now, first)
        dead = dead + failed
        self._deliver(self._outputs(scores, alerts, dead))
        self.stats.readings += len(scores)
        self.stats.dead_letters += len(dead)
        self.stats.batches += 1
        self.stats.alerts += len(alerts)
        self._batches_since_ckpt += 1
        m = self.metrics
        m.readings.inc(len(scores))
        m.batches.inc()
        for letter in dead:
            m.count_dead_letter(letter.code)
        for alert in alerts:
            m.alert_events.labels(event=alert.event).inc()
        elapsed = time.perf_counter() - started
        m.batch_latency.observe(elapsed)
        m.last_batch_ms = elapsed * 1000.0

    def _score(
        self, readings: list[Reading], now: float, first: int = 0
    ) -> tuple[EncodedScores, list[Alert], list[DeadLetter]]:
        """Score the batch; should the detector refuse or fail on a record, dead-letter it
        and score the others (``first``: where the batch starts in the merge's last
        release, for each record's position)."""
        if not readings:
            return EncodedScores([], [], []), [], []
        emit, watched = self.options.emit_scores, self._watched
        dead: list[DeadLetter] = []
        keep = list(range(len(readings)))
        try:
            scores, alerts = self.detector.process_encoded(readings, emit=emit, watched=watched)
            return scores, alerts, []
        except SchemaError:
            # Validated when polled, refused now: a stream's reading of another kind than
            # its first one, which the merge still held then (the detector did not know
            # the stream's kind yet). Nothing of the batch was processed (the detector
            # validates a whole batch first): refuse what it refuses, score the rest.
            errors = self.detector.validate_many(readings)
            dead = [self._refused(readings[i], first + i, exc, now)
                    for i, exc in enumerate(errors) if exc is not None]  # fmt: skip
            keep = [i for i, exc in enumerate(errors) if exc is None]
            if not dead:
                log.exception("detector refused a batch it had accepted; retrying record by record")
        except Exception:  # a bug must not kill the loop: find the record that triggers it
            log.exception("detector failed on a batch; retrying record by record")
        if dead:
            log.warning("readings refused when scored; dead-lettered",
                        extra={"count": len(dead), "codes": sorted({d.code for d in dead})})
            try:
                scores, alerts = self.detector.process_encoded(
                    [readings[i] for i in keep], emit=emit, watched=watched)
                return scores, alerts, dead
            except Exception:  # (one reading at a time, below)
                log.exception("detector failed on a batch; retrying record by record")
        # One at a time. After a failure other than a refusal, readings of the batch the
        # detector had processed before it failed are processed again: as late readings
        # (scored, changing nothing), so their Scores may differ from the first pass.
        scores = EncodedScores([], [], [])
        alerts = []
        for i in keep:
            reading = readings[i]
            try:
                s, a = self.detector.process_encoded([reading], emit=emit, watched=watched)
            except SchemaError as exc:
                dead.append(self._refused(reading, first + i, exc, now))
                continue
            except Exception as exc:  # reported as a dead letter with its reason
                log.exception("detector failed on one reading", extra={"stream": reading.stream_id})
                dead.append(self._refused(reading, first + i, SchemaError(
                    f"detector error: {type(exc).__name__}: {exc}", code="internal_error"), now))
                continue
            scores.extend(s)
            alerts.extend(a)
        return scores, alerts, dead

    def _refused(self, reading: Reading, position: int, exc: SchemaError, now: float
                 ) -> DeadLetter:  # fmt: skip
        """The dead letter of a released reading (``position`` in the merge's last release),
        refused or failed on when scored: its bytes re-encoded, at its Kafka position."""
        topic, partition, offset = self._merge.released_position(position)
        return schema.dead_letter(
            schema.encode(reading), exc.code, str(exc), field=exc.field, topic=topic,
            partition=partition, offset=offset, ts=now, key=reading.stream_id.encode(),
            cap=self.options.payload_cap)

    def _dead_letter(
        self, msg: Message, code: str, reason: str, fld: str | None, now: float
    ) -> DeadLetter:
        log.debug("dead letter", extra={"code": code, "offset": msg.offset, "reason": reason})
        return schema.dead_letter(msg.value, code, reason, field=fld, topic=msg.topic,
                                  partition=msg.partition, offset=msg.offset, ts=now,
                                  key=msg.key, cap=self.options.payload_cap)

    def _outputs(
        self, scores: EncodedScores, alerts: list[Alert], dead: list[DeadLetter]
    ) -> list[tuple[str, bytes, bytes | None]]:
        opts = self.options
        topic = opts.scores_topic
        keys = self._keys
        out: list[tuple[str, bytes, bytes | None]] = []
        # the detector built only the records to send (``emit_scores``): None elsewhere
        for sid, record in zip(scores.stream_ids, scores.records, strict=True):
            if record is not None:
                key = keys.get(sid)
                if key is None:
                    if len(keys) >= 200_000:
                        keys.clear()
                    key = keys[sid] = sid.encode()
                out.append((topic, record, key))
        for alert in alerts:
            out.append((opts.alerts_topic, schema.encode(alert), alert.stream_id.encode()))
        for letter in dead:
            key = schema.dead_letter_key(letter)  # the refused record's own key bytes
            out.append((opts.deadletter_topic, schema.encode(letter), key))
        return out

    def _deliver(self, records: list[tuple[str, bytes, bytes | None]]) -> None:
        """Send a batch's outputs; every ``flush_every_batches`` batches wait until the
        broker has all sent since the last flush (``_flush_outputs``). A checkpoint, a
        rebalance and shutdown flush first, so no checkpoint or committed offset ever
        covers an output the broker has not acknowledged."""
        self._unflushed += records
        self._unflushed_batches += 1
        due = self._unflushed_batches >= self.options.flush_every_batches
        self._flush_outputs(records, wait=due)

    def _flush_outputs(self, records: Sequence[tuple[str, bytes, bytes | None]] = (), *,
                       wait: bool = True) -> None:  # fmt: skip
        """Send ``records``, then (``wait``) flush until the broker has every output sent
        since the last flush. Those batches' state changes have already happened, so their
        outputs must not be lost: on a failed send or flush all of them are sent again
        (consumers see at-least-once duplicates, same alert ids)."""
        backoff = self.options.retry_backoff_s[0]
        if self._resend:  # ``records`` are in ``_unflushed``: sent with the rest, in order
            records, wait = (), True
        while True:
            assert self._producer is not None
            try:
                send = self._producer.send
                for topic, value, key in records:
                    send(topic, value, key)
                records = ()
                if wait:
                    self._flush_once(self.options.flush_timeout_s)
                return
            except FlushTimeoutError as exc:
                # still queued in the client, none failed: wait again, sending nothing twice
                self.metrics.transport_errors.inc()
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                log.warning("outputs not acknowledged yet; waiting for the broker", extra={
                    "error": str(exc), "records": len(self._unflushed)})
                if self._stop.is_set():
                    return  # uncommitted: the next start (or owner) produces them again
                records, wait = (), True
            except TransportError as exc:
                self._resend = True
                self.metrics.transport_errors.inc()
                log.warning("could not deliver the outputs; resending", extra={
                    "error": str(exc), "records": len(self._unflushed), "retry_in_s": backoff})
                if self._stop.wait(backoff):
                    return  # the shutdown's flush sends them again, or it commits nothing
                backoff = min(backoff * 2, self.options.retry_backoff_s[1])
                records, wait = (), True

    def _flush_once(self, timeout: float) -> None:
        """One flush of every output since the last one, sending first again those of a
        failed delivery (``_resend``): a flush that returns has them all acknowledged. A
        failed delivery raises ``TransportError`` (once: the client forgets it) and marks
        them all to be sent again, so no later flush (a checkpoint's, a revoke's, the
        shutdown's, the health tick's) passes over them and lets a commit cover them."""
        assert self._producer is not None
        try:
            if self._resend:
                send = self._producer.send
                for topic, value, key in self._unflushed:
                    send(topic, value, key)
                self._resend = False
            self._producer.flush(timeout)
        except FlushTimeoutError:
            raise  # still queued in the client: nothing to send again
        except TransportError:
            self._resend = True
            raise
        self._flushed()

    def _flushed(self) -> None:
        """The broker has acknowledged every output sent so far."""
        self._unflushed.clear()
        self._unflushed_batches = 0

    # -- checkpoint + commit -----------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        opts = self.options
        if self._pending is not None and not self._finish_pending(block=False):
            return  # the previous checkpoint is still being written
        due = (self._batches_since_ckpt >= opts.checkpoint_every_batches
               or (self._batches_since_ckpt > 0
                   and time.monotonic() - self._last_ckpt >= self._ckpt_interval))
        if due:
            self._start_checkpoint()

    def _next_interval(self) -> float:
        """Seconds to the next checkpoint by time: at most ``checkpoint_every_s``, at least
        ``1 - checkpoint_jitter`` of it. Two detectors that checkpoint at once on 2 cores
        doubled the p99 latency (docs/bench.md); drawn apart, their writes rarely meet."""
        opts = self.options
        return opts.checkpoint_every_s * (1.0 - opts.checkpoint_jitter * self._ckpt_rng.random())

    def _snapshot(self) -> tuple[dict[str, Any], dict[TopicPartition, PartitionState],
                                 dict[TopicPartition, int], float] | None:
        """The state to checkpoint, the offsets it covers, copied (no tensor in it is shared
        with the live detector, which goes on changing while it is written), and the
        seconds the copy took (the loop's pause, also in the metrics)."""
        started = time.perf_counter()
        copies = self._state_copies()
        if copies is None:
            return None
        self._batches_since_ckpt = 0
        self._last_ckpt = time.monotonic()
        self._ckpt_interval = self._next_interval()
        snapshot_s = time.perf_counter() - started
        self.metrics.checkpoint_seconds.labels("snapshot").observe(snapshot_s)
        return (*copies, snapshot_s)

    def _state_copies(self) -> tuple[dict[str, Any], dict[TopicPartition, PartitionState],
                                     dict[TopicPartition, int]] | None:  # fmt: skip
        """The global state, each partition's, and the offsets they cover, copied off the
        live detector; None before there is anything to checkpoint."""
        if self.detector is None or not self._next_offsets:
            return None
        offsets = dict(self._next_offsets)
        by_partition: dict[TopicPartition, list[str]] = {tp: [] for tp in offsets}
        for sid, tp in self._stream_partition.items():
            if tp in by_partition:
                by_partition[tp].append(sid)
        partitions = {
            tp: PartitionState(offset, self._copies.copied(
                self.detector.export_streams(by_partition[tp])))
            for tp, offset in offsets.items()
        }
        return self._copies.copied(self.detector.global_state_dict()), partitions, offsets

    def _start_checkpoint(self) -> None:
        """Snapshot now (8-15 ms with 1,000 streams on an idle machine), write in the
        background (serialising and sending ~17-20 MB, ~5 MB compressed for the topic
        store: up to ~1 s when that store paces it; it would stall the loop), and commit
        the offsets it covers once it is durable (``_finish_pending``, on this thread: the
        consumer is not thread-safe)."""
        self._flush_outputs()  # the checkpoint covers these batches: their outputs first
        if self._unflushed:  # a stop came first: the shutdown's checkpoint (or none) it is
            return
        snap = self._snapshot()
        if snap is None:
            return
        global_state, partitions, offsets, snapshot_s = snap
        assert self._writer is not None
        future = self._writer.submit(self._timed_save, global_state, partitions,
                                     background=True)
        self._pending = (future, offsets, snapshot_s, (global_state, partitions))

    def _timed_save(self, global_state: dict[str, Any],
                    partitions: dict[TopicPartition, PartitionState],
                    background: bool = False) -> float:
        started = time.perf_counter()
        self.store.save(global_state, partitions, background=background)
        return time.perf_counter() - started

    def _finish_pending(self, *, block: bool) -> bool:
        """Commit after the background checkpoint once it is written; True when none is
        left pending. A broker error leaves the offsets uncommitted (the next checkpoint
        covers them); any other failure is raised here, as a synchronous save would."""
        if self._pending is None:
            return True
        future, offsets, snapshot_s, written = self._pending
        if not block and not future.done():
            return False
        self._pending = None
        try:
            write_s = future.result()
        except (TransportError, CheckpointError) as exc:
            # a broker error, or a disk full / a directory gone: scoring goes on (alerts
            # must), the offsets stay uncommitted, and the next checkpoint tries again
            if isinstance(exc, TransportError):
                self.metrics.transport_errors.inc()
            log.error("checkpoint not written; offsets stay uncommitted until the next one",
                      extra={"store": repr(self.store), "error": str(exc)})
            return True
        finally:  # the write is over, whatever its end: its tensors are free again
            self._copies.release(*written)
        self._saved_tps = frozenset(written[1])
        self._wrote(snapshot_s, write_s, synchronous=False)
        # only partitions still held: one revoked meanwhile (its revoke's checkpoint
        # failed, so this one stayed pending) has a new owner, whose committed offset a
        # commit made now could move back
        self._saved({tp: off for tp, off in offsets.items() if tp in self._assigned})
        return True

    def _wrote(self, snapshot_s: float, write_s: float, *, synchronous: bool) -> None:
        self.metrics.checkpoint_seconds.labels("write").observe(write_s)
        log.info("checkpoint written", extra={"snapshot_ms": round(snapshot_s * 1000, 1),
                                              "write_ms": round(write_s * 1000, 1),
                                              "synchronous": synchronous})

    def _checkpoint_and_commit(self) -> None:
        """Flush the outputs, then checkpoint and commit now, waiting for all three
        (rebalance, shutdown). One flush attempt: a failure raises, unlike the loop's
        resending ``_flush_outputs``, so a shutdown with the broker gone still ends."""
        assert self._consumer is not None and self._producer is not None
        self._flush_once(self.options.flush_timeout_s)
        self._finish_pending(block=True)
        snap = self._snapshot()
        if snap is None:
            return
        global_state, partitions, offsets, snapshot_s = snap
        try:
            write_s = self._timed_save(global_state, partitions)
        finally:
            self._copies.release(global_state, partitions)
        self._saved_tps = frozenset(partitions)
        self._wrote(snapshot_s, write_s, synchronous=True)
        self._saved(offsets)

    def _saved(self, offsets: dict[TopicPartition, int]) -> None:
        """A checkpoint covering ``offsets`` is durable: count it and commit them."""
        assert self._consumer is not None
        self.stats.checkpoints += 1
        self.metrics.checkpoints.inc()
        try:
            self._consumer.commit(offsets)
        except TransportError as exc:
            # The checkpoint holds the offsets too: a restart resumes from it regardless.
            self.metrics.transport_errors.inc()
            log.warning("offset commit failed; the next checkpoint commits again",
                        extra={"error": str(exc)})
            return
        self.metrics.commits.inc()
        log.debug("checkpoint + commit", extra={"partitions": len(offsets)})

    def _maybe_health(self) -> None:
        now = time.monotonic()
        if now - self._last_health < self.options.health_every_s:
            return
        self._last_health = now
        assert self._consumer is not None and self._producer is not None
        m = self.metrics
        rate = m.record_rate(now, self.stats.readings)
        lag = self._lag()
        info = self.detector.health()
        m.open_alerts.set(info["open_alerts"])
        m.streams.set(info["streams"])
        m.training_steps.set(info["training_steps"])
        if info.get("training_loss") is not None:
            m.training_loss.set(info["training_loss"])
        if lag is not None:
            m.consumer_lag.set(lag)
        health = Health(
            detector_id=self.options.instance, ts=self.clock(), readings_per_s=rate,
            consumer_lag=lag, training_loss=info.get("training_loss"),
            training_steps=info["training_steps"], dead_letters=dict(m.dead_letter_counts),
            open_alerts=info["open_alerts"], streams=info["streams"],
            batch_latency_ms=m.last_batch_ms)
        self._producer.send(self.options.health_topic, schema.encode(health),
                            self.options.instance.encode())
        if not self._polled_since_health:
            # Nothing came in since the last tick: an idle topic, or a broker that stopped
            # answering (paused, partitioned away), which polls alone cannot tell apart.
            # The health record's acknowledgement does: a TransportError here is logged by
            # the loop, which retries with backoff until the broker answers again.
            self._flush_once(self.options.health_every_s)
            if self._outage_since is not None:
                self._broker_answered()
        self._polled_since_health = False

    def _broker_answered(self) -> None:
        """The broker answered after an error: say so, with how long it did not."""
        assert self._outage_since is not None
        log.info("broker answers again", extra={
            "after_s": round(time.monotonic() - self._outage_since, 1)})
        self._outage_since = None

    def _lag(self) -> int | None:
        """Records of this process's partitions not scored yet: each log end (the client's
        cached high watermark, else the end asked once per assignment) minus the next
        offset to score (``_next_offsets``: what the event-time merge still holds is not
        done; else the position at assignment). None when no end is known yet.

        No request to the broker: ``end_offsets`` stalled the loop 0.25-0.5 s per
        partition on Tansu (confluent), and so did confluent's ``position`` of a partition
        with nothing consumed, every health tick. Counting only partitions with a cached
        watermark, from the consumer's position, read 3,300 of a 57,600 backlog."""
        assert self._consumer is not None
        if not self._assigned:
            return 0  # this process holds no partition: no lag of its own
        total, known = 0, False
        for tp, end in self._partition_ends(self._consumer.highwater(self._assigned)).items():
            at = self._next_offsets.get(tp, self._start_positions.get(tp))
            if at is None:
                continue
            known = True
            total += max(0, end - at)
        return total if known else None
