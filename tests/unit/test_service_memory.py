"""The detector service over the in-memory transport: delivery rules and replays."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch

from streamwatch import schema
from streamwatch.commands.detect import build_detector, build_service
from streamwatch.pipeline import _SnapshotCopies
from streamwatch.schema import Alert, Reading
from streamwatch.state_store import PartitionState
from streamwatch.transport import MemoryTransport
from streamwatch.transport.base import ALERTS, DEADLETTER, READINGS, SCORES, TopicPartition
from tests.scenarios import (
    alert_events,
    by_second,
    dead_letter_holds,
    icu_readings,
    record_feed_order,
    service_settings,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _fill(transport: MemoryTransport, readings: list[Reading], extra: list[tuple[bytes | None, bytes | None]] = ()) -> int:  # type: ignore[assignment]
    transport.create_topics({READINGS: 3})
    producer = transport.producer()
    for r in readings:
        producer.send(READINGS, schema.encode(r), r.stream_id.encode())
    for key, value in extra:
        producer.send(READINGS, value, key)
    producer.flush()
    return len(readings) + len(extra)


def _drain(transport: MemoryTransport, topic: str, name: str) -> list:  # type: ignore[type-arg]
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(topic, p) for p in range(transport.partitions_for(topic))])
    out = []
    while batch := consumer.poll(0.05, 100_000):
        out.extend(schema.decode(name, m.value) for m in batch)
    consumer.close()
    return out


def _opened(alerts: list[Alert]) -> set[str]:
    return {a.alert_id for a in alerts if a.event == "open"}


def _positions(transport: MemoryTransport, topic: str) -> dict[tuple[int, int], bytes | None]:
    """Every record's value on ``topic`` by its (partition, offset)."""
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(topic, p) for p in range(transport.partitions_for(topic))])
    out: dict[tuple[int, int], bytes | None] = {}
    while batch := consumer.poll(0.05, 100_000):
        out.update({(m.partition, m.offset): m.value for m in batch})
    consumer.close()
    return out


def _check_positions(transport: MemoryTransport, letters: list[Any]) -> None:
    """Each dead letter names the position of the record it refused and carries its
    bytes; no two name the same record."""
    raw = _positions(transport, READINGS)
    for letter in letters:
        assert dead_letter_holds(letter, raw[(letter.partition, letter.offset)]), letter
    assert len({(d.partition, d.offset) for d in letters}) == len(letters)


BAD_RECORDS: list[tuple[bytes | None, bytes | None, str]] = [
    (b"icu/bed-01", b"{not json", "not_json"),
    (b"icu/bed-01", None, "empty"),
    (b"icu/bed-01", b'{"v":1,"stream_id":"icu/bed-01","kind":"icu_vitals","ts":5,"values":{"hr":"x"}}', "schema"),
    (b"icu/bed-01", b'{"v":1,"stream_id":"icu/bed-01","kind":"reactor","ts":5,"values":{"hr":1}}', "unknown_kind"),
    (b"icu/bed-01", b'{"v":1,"stream_id":"icu/bed-01","kind":"icu_vitals","ts":5,"values":{"hr":5000}}', "out_of_range"),
    (b"icu/bed-01", b'{"v":1,"stream_id":"icu/bed-01","kind":"icu_vitals","ts":9e12,"values":{"hr":80}}', "future_timestamp"),
    (b"icu/bed-02", b'{"v":1,"stream_id":"icu/bed-01","kind":"icu_vitals","ts":5,"values":{"hr":80}}', "key_mismatch"),
    (b"icu/bed-01", b'{"v":1,"stream_id":"icu/bed-01","kind":"icu_vitals","ts":5,"values":{"hr":1e999}}', "non_finite"),
    (b"icu/bed-01", b"", "empty"),
    # ~2 KB nested 1,000 deep: the parsers raise RecursionError (it once killed the loop)
    (b"icu/bed-01", b'{"v":1,"stream_id":"icu/bed-01","kind":"icu_vitals","ts":5,"values":{"hr":80},"x":'
     + b"[" * 1000 + b"]" * 1000 + b"}", "not_json"),
    (b"icu/bed-01\n", b'{"v":1,"stream_id":"icu/bed-01\\n","kind":"icu_vitals","ts":5,"values":{"hr":80}}', "schema"),
]


def test_every_record_ends_as_one_score_or_one_dead_letter_with_its_reason(tmp_path: Path) -> None:
    readings, _ = icu_readings(patients=2, minutes=5)
    transport = MemoryTransport()
    total = _fill(transport, readings, [(k, v) for k, v, _ in BAD_RECORDS])
    service = build_service(service_settings(tmp_path), transport, instance="a")
    stats = service.run(timeout=60, count=total)
    scores = _drain(transport, SCORES, "score")
    letters = _drain(transport, DEADLETTER, "deadletter")
    assert stats.readings == len(readings) and stats.dead_letters == len(BAD_RECORDS)
    assert sorted((s.stream_id, s.ts) for s in scores) == sorted((r.stream_id, r.ts) for r in readings)
    assert sorted(d.code for d in letters) == sorted(code for *_, code in BAD_RECORDS)
    for letter in letters:
        assert letter.reason and letter.topic == READINGS
    _check_positions(transport, letters)
    newline = [d for d in letters if (d.code, d.field) == ("schema", "stream_id")]
    assert len(newline) == 1 and "ends in a newline" in newline[0].reason
    by_code = {d.code: d for d in letters if d not in newline}
    assert by_code["out_of_range"].field == "values.hr"
    assert by_code["schema"].field == "values.hr"
    assert json.loads(by_code["key_mismatch"].payload)["stream_id"] == "icu/bed-01"


def test_bad_records_amid_good_ones_in_small_polls_each_become_one_dead_letter(
    tmp_path: Path,
) -> None:
    """Once the stream names are known, a partition's run of records in a poll is decoded
    at once (``ReadingDecoder.decode_many``); a run with a bad record in it is decoded
    record by record. Bad records spread through the stream, small polls: both paths
    are taken, and every record still ends as one Score or one dead letter."""
    readings, _ = icu_readings(patients=3, minutes=4)
    transport = MemoryTransport()
    transport.create_topics({READINGS: 3})
    producer = transport.producer()
    step = len(readings) // (len(BAD_RECORDS) + 1)
    for i, r in enumerate(readings):
        producer.send(READINGS, schema.encode(r), r.stream_id.encode())
        if i % step == step - 1 and i // step < len(BAD_RECORDS):
            key, value, _code = BAD_RECORDS[i // step]
            producer.send(READINGS, value, key)
    producer.flush()
    service = build_service(service_settings(tmp_path, max_poll_records=40), transport,
                            instance="a")  # fmt: skip
    runs = {"at_once": 0, "declined": 0}
    decode_many = service._decoder.decode_many

    def counting(records: Any) -> Any:
        out = decode_many(records)
        runs["at_once" if out is not None else "declined"] += 1
        return out

    service._decoder.decode_many = counting  # type: ignore[method-assign]
    stats = service.run(timeout=60, count=len(readings) + len(BAD_RECORDS))
    scores = _drain(transport, SCORES, "score")
    letters = _drain(transport, DEADLETTER, "deadletter")
    assert runs["at_once"] > 5 and runs["declined"] > 0
    assert stats.readings == len(readings) and stats.dead_letters == len(BAD_RECORDS)
    assert sorted((s.stream_id, s.ts) for s in scores) == sorted(
        (r.stream_id, r.ts) for r in readings)
    assert sorted(d.code for d in letters) == sorted(code for *_, code in BAD_RECORDS)
    _check_positions(transport, letters)


def test_readings_without_a_kafka_key_are_scored_beside_keyed_ones(tmp_path: Path) -> None:
    """A key is optional (a producer that sets none still has its readings scored); a key
    is checked against the stream id only when there is one. Keyed and unkeyed records
    in one poll: the poll-wide check fails, the per-record one accepts each."""
    readings, _ = icu_readings(patients=2, minutes=2)
    unkeyed = [r for i, r in enumerate(readings) if i % 3 == 0]
    transport = MemoryTransport()
    keyed = [r for i, r in enumerate(readings) if i % 3 != 0]
    total = _fill(transport, keyed, [(None, schema.encode(r)) for r in unkeyed])
    stats = build_service(service_settings(tmp_path), transport, instance="a").run(
        timeout=60, count=total)
    scores = _drain(transport, SCORES, "score")
    assert stats.dead_letters == 0 and stats.readings == len(readings)
    assert sorted((s.stream_id, s.ts) for s in scores) == sorted(
        (r.stream_id, r.ts) for r in readings)


def test_service_alerts_match_the_direct_detector_path(tmp_path: Path) -> None:
    """Partitioned, polled, checkpointed processing opens the same alerts (same ids)
    as feeding the detector one simulated second at a time."""
    readings, _episodes = icu_readings()
    direct = build_detector(service_settings(tmp_path / "unused"))
    expected: list[Alert] = []
    for start in range(0, len(readings), 8):  # 8 patients: one simulated second per call
        expected.extend(direct.process(readings[start:start + 8])[1])
    assert len(_opened(expected)) >= 4, "the scenario must raise several alerts"
    assert {a.event for a in expected} == {"open", "update", "close"}

    transport = MemoryTransport()
    total = _fill(transport, readings)
    build_service(service_settings(tmp_path, max_poll_records=700), transport).run(timeout=120, count=total)
    assert alert_events(_drain(transport, ALERTS, "alert")) == alert_events(expected)


@pytest.mark.parametrize("store", ["kafka", "directory"])
def test_restart_from_checkpoint_scores_every_reading_and_keeps_alert_ids(
    tmp_path: Path, store: str
) -> None:
    readings, _ = icu_readings()
    reference = MemoryTransport()
    total = _fill(reference, readings)
    build_service(service_settings(tmp_path / "ref"), reference).run(timeout=120, count=total)
    want = alert_events(_drain(reference, ALERTS, "alert"))
    assert len(_opened(_drain(reference, ALERTS, "alert"))) >= 4

    transport = MemoryTransport()
    _fill(transport, readings)
    settings = service_settings(tmp_path / "ckpt", checkpoint_every_batches=3, max_poll_records=500,
                                state_store=store)
    first = build_service(settings, transport, instance="first").run(timeout=120, count=total // 3)
    second = build_service(settings, transport, instance="second").run(
        timeout=120, count=total - first.readings)
    assert first.readings == total // 3 and second.readings == total - total // 3
    scores = _drain(transport, SCORES, "score")
    assert {(s.stream_id, s.ts) for s in scores} == {(r.stream_id, r.ts) for r in readings}
    assert alert_events(_drain(transport, ALERTS, "alert")) == want


class _SlowStore:
    """A real store behind a slow write (as a busy broker is): records, per save, a digest
    of what it was handed when the write began and when it ended, and how many batches
    the service had scored by then."""

    def __init__(self, inner: Any, service: Any = None) -> None:
        self.inner, self.service = inner, service
        self.saves: list[tuple[str, str, int, int]] = []
        self.background: list[bool] = []
        self.memory: list[set[int]] = []  # per save, where its larger tensors' bytes lie

    def save(self, global_state: Any, partitions: Any, *, background: bool = False) -> None:
        first, batches = _digest((global_state, partitions)), self.service.stats.batches
        self.background.append(background)
        # kept until the next save, so that no allocator could hand the same memory out
        # again: only the service's own reuse can
        self.kept = [t for t in _tensors((global_state, partitions)) if t.nbytes >= 1024]
        self.memory.append({t.data_ptr() for t in self.kept})
        time.sleep(0.4)
        self.inner.save(global_state, partitions, background=background)
        self.saves.append((first, _digest((global_state, partitions)), batches,
                           self.service.stats.batches))

    def load(self, partitions: Any, *, fresh_start: bool = False) -> Any:
        return self.inner.load(partitions, fresh_start=fresh_start)

    def close(self) -> None:
        self.inner.close()


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, PartitionState):
        return _tensors(tree.streams)
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list | tuple) else ()
    return [t for v in values for t in _tensors(v)]


def _digest(tree: Any) -> str:
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(f"{x.dtype}{tuple(x.shape)}".encode() + x.detach().contiguous().numpy().tobytes())
        elif isinstance(x, dict):
            for k, v in x.items():
                h.update(repr(k).encode())
                feed(v)
        elif isinstance(x, list | tuple):
            for v in x:
                feed(v)
        else:
            h.update(repr(x).encode())
    feed(tree)
    return h.hexdigest()


def test_the_loop_goes_on_while_a_checkpoint_is_written_and_the_checkpoint_does_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # snapshots copy tensors of 1 KiB or more into the last written snapshot's (the
    # default, 64 KiB, leaves this small scenario's per-stream tensors out)
    monkeypatch.setattr(_SnapshotCopies, "MIN_BYTES", 1024)
    readings, _ = icu_readings()
    transport = MemoryTransport()
    total = _fill(transport, readings)
    settings = service_settings(tmp_path, checkpoint_every_batches=4, max_poll_records=200,
                                state_store="directory")
    service = build_service(settings, transport, instance="slow")
    slow = _SlowStore(service.store, service)
    service.store = slow
    warmed: list[set[int]] = []  # memory released before any save: made ready at start
    release = service._copies.release

    def recording(*trees: Any) -> None:
        if not slow.memory:
            warmed.append({t.data_ptr() for t in _tensors(trees) if t.nbytes >= 1024})
        release(*trees)

    service._copies.release = recording  # type: ignore[method-assign]
    stats = service.run(timeout=120, count=total)
    assert stats.readings == total and stats.checkpoints == len(slow.saves) >= 3
    # the first checkpoint too was copied into memory made ready after the first batch
    assert len(warmed) == 1 and warmed[0] & slow.memory[0]
    background = slow.saves[:-1]  # the last one is the shutdown's, written synchronously
    assert slow.background[-1] is False and slow.background.count(True) >= 2
    # batches were scored (and the model trained) while checkpoints were being written...
    assert sum(after - before for _f, _l, before, after in background) >= 2
    # ...and no checkpoint shared a tensor with the detector that went on changing
    assert all(first == last for first, last, _b, _a in slow.saves)
    # each snapshot after the first was copied into the memory of the one written before
    assert slow.memory[0]
    assert all(before & after for before, after in pairwise(slow.memory))
    # the metrics tell the loop's pause from the write (>= the 0.4 s sleep)
    sample = service.metrics.registry.get_sample_value
    writes = sample("streamwatch_checkpoint_seconds_count", {"stage": "write"})
    assert writes == len(slow.saves)  # background and synchronous ones
    assert sample("streamwatch_checkpoint_seconds_sum", {"stage": "write"}) >= 0.4 * writes
    assert sample("streamwatch_checkpoint_seconds_count", {"stage": "snapshot"}) == writes
    assert sample("streamwatch_checkpoint_seconds_sum", {"stage": "snapshot"}) < 0.4 * writes


def test_a_graceful_stop_checkpoints_and_commits_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # closing the consumer hands the partitions back through on_revoke: right after the
    # shutdown's own checkpoint and commit, with nothing polled since, it writes none
    readings, _ = icu_readings()
    transport = MemoryTransport()
    total = _fill(transport, readings[:3000])
    settings = service_settings(tmp_path, checkpoint_every_batches=1000,
                                checkpoint_every_s=3600.0, state_store="directory")
    service = build_service(settings, transport, instance="a")
    saves: list[bool] = []
    save = service.store.save

    def counted(global_state: Any, partitions: Any, *, background: bool = False) -> None:
        saves.append(background)
        save(global_state, partitions, background=background)

    monkeypatch.setattr(service.store, "save", counted)
    stats = service.run(timeout=120, count=total)
    assert stats.readings == total
    assert saves == [False] and stats.checkpoints == 1  # the shutdown's, written in line
    consumer = transport.consumer(settings.service.group_id)
    parts = [TopicPartition(READINGS, p) for p in range(3)]
    assert {tp: consumer.committed(tp) for tp in parts} == consumer.end_offsets(parts)


def test_every_commit_is_of_offsets_a_finished_checkpoint_covers(tmp_path: Path) -> None:
    """At-least-once with state: an offset is committed only once a checkpoint holding
    the state up to it is durable, whether that checkpoint was written in the background
    (the loop's) or in line (a shutdown's). Two members one after the other, each store
    save and each commit recorded in order."""
    readings, _ = icu_readings()
    transport = MemoryTransport()
    total = _fill(transport, readings)
    settings = service_settings(tmp_path, checkpoint_every_batches=3, max_poll_records=500,
                                state_store="directory")
    saved: list[dict[TopicPartition, int]] = []  # each save's offsets, once it returned
    commits: list[tuple[dict[TopicPartition, int], int]] = []  # offsets, saves done by then
    open_consumer = transport.consumer

    def recording_consumer(group_id: Any = None) -> Any:
        consumer = open_consumer(group_id)
        commit = consumer.commit

        def recorded_commit(offsets: Any) -> None:
            commits.append((dict(offsets), len(saved)))
            commit(offsets)

        consumer.commit = recorded_commit
        return consumer

    transport.consumer = recording_consumer  # type: ignore[method-assign]
    scored = 0
    for instance, count in (("first", total // 3), ("second", None)):
        service = build_service(settings, transport, instance=instance)
        save = service.store.save

        def recorded_save(global_state: Any, partitions: Any, *, background: bool = False,
                          save: Any = save) -> None:  # fmt: skip
            save(global_state, partitions, background=background)
            saved.append({tp: state.offset for tp, state in partitions.items()})

        service.store.save = recorded_save  # type: ignore[method-assign]
        scored += service.run(timeout=120, count=count or total - scored).readings
    assert scored == total
    assert len({tuple(sorted(c.items())) for c, _ in commits}) >= 2  # one mid-stream
    for offsets, done in commits:
        assert offsets in saved[:done], "committed offsets no finished checkpoint covers"
    assert commits[-1][0] == saved[-1]


def test_a_member_joining_mid_stream_takes_over_where_the_other_checkpointed(
    tmp_path: Path,
) -> None:
    # a live rebalance: the running member checkpoints and commits on revoke, before it
    # gives partitions up, so the newcomer resumes each moved stream exactly where it
    # stopped (no periodic checkpoint in this run: only the revoke's can hand them over)
    readings, _ = icu_readings()
    transport = MemoryTransport()
    total = _fill(transport, readings)
    settings = service_settings(tmp_path, checkpoint_every_batches=1000,
                                checkpoint_every_s=3600.0, max_poll_records=200,
                                state_store="directory")
    a = build_service(settings, transport, instance="a")
    b = build_service(settings, transport, instance="b")
    runs = [threading.Thread(target=svc.run, kwargs={"timeout": 120}) for svc in (a, b)]
    runs[0].start()
    try:
        _until(lambda: a.stats.readings >= total // 4, "a quarter of the readings")
        runs[1].start()
        _until(lambda: len(a.assigned_partitions) and len(b.assigned_partitions),
               "both members to hold partitions")
        assert a.stats.checkpoints >= 1  # the revoke's
        _until(lambda: a.stats.readings + b.stats.readings >= total, "every reading")
    finally:
        a.stop()
        b.stop()
        for t in runs:
            t.join(60)
    assert b.stats.readings > 0 and a.stats.readings + b.stats.readings == total
    scores = _drain(transport, SCORES, "score")
    assert sorted((s.stream_id, s.ts) for s in scores) == sorted(
        (r.stream_id, r.ts) for r in readings)  # each exactly once


def _until(predicate: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_checkpoint_times_are_drawn_apart_within_the_configured_interval(tmp_path: Path) -> None:
    """Processes of a group started together must not checkpoint at the same moments (on
    2 cores two simultaneous writes doubled the p99), yet never wait longer than
    ``checkpoint_every_s``."""
    settings = service_settings(tmp_path, checkpoint_every_s=20.0, checkpoint_jitter=0.25)
    one, two = (build_service(settings, MemoryTransport(), instance=name) for name in "ab")
    first = [one._next_interval() for _ in range(200)]
    second = [two._next_interval() for _ in range(200)]
    assert all(15.0 <= s <= 20.0 for s in first + second)
    assert max(first) - min(first) > 3.0  # spread over the band, not one fixed phase
    # independent draws: ~162 of 200 pairs differ by > 0.5 s (one fixed phase: none)
    assert sum(abs(a - b) > 0.5 for a, b in zip(first, second, strict=True)) > 120
    steady = build_service(service_settings(tmp_path, checkpoint_every_s=20.0,
                                            checkpoint_jitter=0.0), MemoryTransport())
    assert {steady._next_interval() for _ in range(20)} == {20.0}


@pytest.mark.parametrize("buffered", [0, 40])
def test_a_partition_running_ahead_is_paused_so_readings_keep_event_time_order(
    tmp_path: Path, buffered: int
) -> None:
    """One stream on partition 0, eleven on partition 1: each poll of 100 records takes
    100 s of partition 0 but 9 s of partition 1, so partition 0 runs ahead and its
    readings wait in the merge. Above the merge's ``max_held`` (150 here) they would go
    out before the watermark, out of event-time order (``buffered=0``: no flow control,
    the case this test must catch); with flow control the partition is paused instead,
    the detector sees every reading in time order, and nothing stays paused."""
    from streamwatch.transport import partition_for_key

    readings, _ = icu_readings(patients=40, minutes=5)
    ids = sorted({r.stream_id for r in readings})
    by_partition = {p: [s for s in ids if partition_for_key(s.encode(), 2) == p] for p in (0, 1)}
    keep = set(by_partition[0][:1] + by_partition[1][:11])
    assert len(keep) == 12
    readings = [r for r in readings if r.stream_id in keep]
    transport = MemoryTransport()
    transport.create_topics({READINGS: 2})
    producer = transport.producer()
    for r in readings:
        producer.send(READINGS, schema.encode(r), r.stream_id.encode())
    producer.flush()
    service = build_service(service_settings(tmp_path, max_poll_records=100,
                                             buffered_per_partition=buffered), transport)  # fmt: skip
    service._merge.max_held = 150
    seen, paused = record_feed_order(service)
    stats = service.run(timeout=120, count=len(readings))
    assert stats.readings == len(readings) == len(seen)
    if buffered:
        assert seen == sorted(seen)
        assert any(paused) and not service.paused_partitions
    else:
        assert seen != sorted(seen), "the scenario must overflow the merge without pausing"


def test_emit_scores_alerts_sends_exactly_the_scores_around_alerts(tmp_path: Path) -> None:
    """``emit_scores = "alerts"``: the Scores of readings that are anomalous, beyond a hard
    limit or inside an open alert (from its open up to, not including, its close), each
    byte for byte as the full stream has it; the alerts are those of the full stream. With
    ``watch_streams`` (an id and a pattern), every reading of those streams has its Score
    as well."""
    readings, _ = icu_readings()
    watch = ("icu/bed-03", "icu/bed-0[67]")
    runs = {}
    for mode in ("all", "alerts", "watched"):
        transport = MemoryTransport()
        total = _fill(transport, readings)
        settings = service_settings(tmp_path / mode, max_poll_records=300,
                                    emit_scores="all" if mode == "all" else "alerts",
                                    watch_streams=watch if mode == "watched" else ())
        stats = build_service(settings, transport).run(timeout=120, count=total)
        assert stats.readings == len(readings)
        consumer = transport.consumer(None)
        consumer.assign([TopicPartition(SCORES, p) for p in range(transport.partitions_for(SCORES))])
        raw = []
        while batch := consumer.poll(0.05, 100_000):
            raw.extend(m.value for m in batch)
        consumer.close()
        runs[mode] = ({(s.stream_id, s.ts): v for v in raw
                       for s in [schema.decode("score", v)]}, _drain(transport, ALERTS, "alert"))
    (every, all_alerts), (around, alert_events) = runs["all"], runs["alerts"]
    watched, watched_alerts = runs["watched"]
    for events in (alert_events, watched_alerts):
        assert [(a.alert_id, a.event, a.seq) for a in events] == \
            [(a.alert_id, a.event, a.seq) for a in all_alerts]
    spans: dict[str, list[tuple[float, float]]] = {}
    opened: dict[str, float] = {}
    for a in sorted(all_alerts, key=lambda a: (a.ts, a.seq)):
        if a.event == "open":
            opened[a.alert_id] = a.ts
        elif a.event == "close":
            spans.setdefault(a.stream_id, []).append((opened.pop(a.alert_id), a.ts))
    for a in all_alerts:
        if a.alert_id in opened:
            spans.setdefault(a.stream_id, []).append((opened[a.alert_id], float("inf")))
    want = set()
    for (sid, ts), value in every.items():
        s = schema.decode("score", value)
        if s.anomalous or s.hard_limit is not None or any(
                lo <= ts < hi for lo, hi in spans.get(sid, [])):
            want.add((sid, ts))
    assert spans and 0 < len(want) < len(every) / 2
    assert set(around) == want
    assert all(around[k] == every[k] for k in around)
    of_watched = {k for k in every if k[0] in ("icu/bed-03", "icu/bed-06", "icu/bed-07")}
    assert of_watched - want and {k[0] for k in every} - {k[0] for k in of_watched}
    assert set(watched) == want | of_watched
    assert all(watched[k] == every[k] for k in watched)


def test_flush_every_batches_acknowledges_outputs_before_every_checkpoint(tmp_path: Path) -> None:
    """``flush_every_batches = 4``: a flush every 4 batches, never a checkpoint over an
    unacknowledged output; every reading scored and the alerts of the per-batch flush."""
    readings, _ = icu_readings()
    reference = MemoryTransport()
    total = _fill(reference, readings)
    build_service(service_settings(tmp_path / "ref", max_poll_records=100), reference).run(
        timeout=120, count=total)
    want = _opened(_drain(reference, ALERTS, "alert"))

    transport = MemoryTransport()
    _fill(transport, readings)
    service = build_service(service_settings(tmp_path / "new", max_poll_records=100,
                                             flush_every_batches=4), transport)  # fmt: skip
    flushes, unflushed_at_snapshot = [0], []
    make_producer, snapshot = transport.producer, service._snapshot

    def producer() -> Any:
        p = make_producer()
        flush = p.flush

        def counted(timeout: float | None = None) -> None:
            flushes[0] += 1
            flush(timeout)

        p.flush = counted  # type: ignore[method-assign]
        return p

    def checked() -> Any:
        unflushed_at_snapshot.append(len(service._unflushed))
        return snapshot()

    transport.producer = producer  # type: ignore[method-assign]
    service._snapshot = checked  # type: ignore[method-assign]
    stats = service.run(timeout=120, count=total)
    assert stats.readings == len(readings) and stats.checkpoints >= 2
    assert unflushed_at_snapshot and not any(unflushed_at_snapshot)
    assert stats.batches // 4 <= flushes[0] < stats.batches // 2
    scores = _drain(transport, SCORES, "score")
    assert {(s.stream_id, s.ts) for s in scores} == {(r.stream_id, r.ts) for r in readings}
    assert _opened(_drain(transport, ALERTS, "alert")) == want


@pytest.mark.parametrize("store", ["kafka", "directory"])
def test_a_checkpoint_of_other_settings_is_an_error_saying_how_or_with_fresh_start_skipped(
    tmp_path: Path, store: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart with another model (here an LSTM over a GRU's checkpoint) refuses the old
    state with an error that says how to go on; with --fresh-start it goes on from the
    committed offsets with fresh state, and its own checkpoint replaces the old one."""
    from streamwatch.config import load_settings
    from streamwatch.errors import CheckpointError

    readings, _ = icu_readings(patients=2, minutes=6)
    transport = MemoryTransport()
    total = _fill(transport, readings)
    service = {"checkpoint_dir": tmp_path, "metrics_port": 0, "poll_timeout_s": 0.2,
               "max_poll_records": 100, "state_store": store}

    def settings(**more: Any) -> Any:
        model = more.pop("model", {})
        return load_settings(overrides={"service": {**service, **more}, "model": model})

    first = build_service(settings(), transport, instance="a").run(timeout=60, count=total // 2)
    assert first.final_checkpoint
    with pytest.raises(CheckpointError, match=r"cell.*--fresh-start.*committed offsets"):
        build_service(settings(model={"cell": "lstm"}), transport, instance="b").run(
            timeout=60, count=total - first.readings)
    caplog.set_level("WARNING", logger="streamwatch.pipeline")
    fresh = build_service(settings(model={"cell": "lstm"}, fresh_start=True), transport,
                          instance="c").run(timeout=60, count=total - first.readings)
    assert fresh.readings == total - first.readings  # from the committed offsets on
    assert any(r.getMessage().startswith("checkpoint does not fit these settings")
               for r in caplog.records)
    # the fresh run's checkpoint is now the one a restart with the new settings finds
    again = build_service(settings(model={"cell": "lstm"}), transport, instance="d")
    assert again.run(timeout=5).readings == 0
    scored = _drain(transport, SCORES, "score")
    assert {(s.stream_id, s.ts) for s in scored} == {(r.stream_id, r.ts) for r in readings}


def test_a_checkpoint_directory_lost_mid_run_is_logged_and_scoring_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed background save (the directory replaced by a file, as a lost mount or a
    full disk fail) does not stop the detector: alerts must go on. Nothing is committed
    past the last written checkpoint, and the stop says it could not write its own."""
    import shutil

    readings, _ = icu_readings(patients=8, minutes=8)  # streams on every partition
    transport = MemoryTransport()
    total = _fill(transport, readings)
    directory = tmp_path / "ckpt"
    settings = service_settings(directory, checkpoint_every_batches=2, max_poll_records=100,
                                state_store="directory")
    service = build_service(settings, transport, instance="a")
    caplog.set_level("WARNING", logger="streamwatch.pipeline")
    save = service.store.save

    def failing_after_first(global_state: Any, partitions: Any, *, background: bool = False) -> None:
        if directory.is_dir() and any(directory.iterdir()):  # one checkpoint written
            shutil.rmtree(directory)
            directory.write_text("the mount is gone")
        save(global_state, partitions, background=background)

    service.store.save = failing_after_first  # type: ignore[method-assign]
    stats = service.run(timeout=120, count=total)
    assert stats.readings == total and stats.checkpoints == 1 and not stats.final_checkpoint
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("checkpoint not written") for m in messages), messages
    assert any(m.startswith("could not checkpoint on shutdown") for m in messages)
    consumer = transport.consumer(settings.service.group_id)
    parts = [TopicPartition(READINGS, p) for p in range(3)]
    ends = consumer.end_offsets(parts)
    committed = {tp: consumer.committed(tp) or 0 for tp in parts}
    assert all(committed[tp] < ends[tp] for tp in parts if ends[tp]), committed  # the 1st's


def test_a_reading_the_detector_fails_on_is_dead_lettered_at_its_position(tmp_path: Path) -> None:
    """A detector bug on one reading must not stop the loop nor lose the others: the batch
    is retried reading by reading, and the one that fails becomes an ``internal_error``
    dead letter naming its partition and offset, like any refused record."""
    readings, _ = icu_readings(patients=3, minutes=4)
    transport = MemoryTransport()
    total = _fill(transport, readings)
    poison = readings[len(readings) // 2]
    service = build_service(service_settings(tmp_path, max_poll_records=50), transport,
                            instance="a")  # fmt: skip
    factory = service.detector_factory

    def failing_on_poison() -> Any:
        detector = factory()
        process = detector.process_encoded

        def process_encoded(batch: list[Reading], **kwargs: Any) -> Any:
            if poison in batch:
                raise RuntimeError("a bug on this reading")
            return process(batch, **kwargs)

        detector.process_encoded = process_encoded
        return detector

    service.detector_factory = failing_on_poison
    stats = service.run(timeout=60, count=total)
    assert (stats.readings, stats.dead_letters) == (total - 1, 1)
    (letter,) = _drain(transport, DEADLETTER, "deadletter")
    assert letter.code == "internal_error" and "a bug on this reading" in letter.reason
    raw = _positions(transport, READINGS)
    assert raw[(letter.partition, letter.offset)] == schema.encode(poison)
    assert letter.key == poison.stream_id
    scored = {(s.stream_id, s.ts) for s in _drain(transport, SCORES, "score")}
    assert scored == {(r.stream_id, r.ts) for r in readings} - {(poison.stream_id, poison.ts)}


def _stream_on(partition: int, prefix: str, partitions: int = 3) -> str:
    """A stream id whose key hashes to ``partition``."""
    from streamwatch.transport._common import partition_for_key

    i = 0
    while partition_for_key(f"{prefix}-{i}".encode(), partitions) != partition:
        i += 1
    return f"{prefix}-{i}"


def test_a_reading_refused_only_when_scored_is_dead_lettered_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    """A stream's second reading, of another kind than its first, passes the poll's
    validation while the first is still held in the event-time merge (the detector does
    not know the stream's kind yet); the detector refuses it when the two are scored. It
    becomes a dead letter at its own position, the others are scored, the loop goes on and
    the commit covers every record (no record skipped, none lost)."""
    transport = MemoryTransport()
    transport.create_topics({READINGS: 3})
    dev, other = _stream_on(0, "dev"), _stream_on(1, "other")
    second = Reading(stream_id=dev, kind="machine", ts=101.0, values={"temperature": 20.0})
    records = [Reading(stream_id=dev, kind="univariate", ts=100.0, values={"value": 1.0}),
               second,
               Reading(stream_id=other, kind="univariate", ts=10.0, values={"value": 1.0}),
               Reading(stream_id=other, kind="univariate", ts=200.0, values={"value": 1.0})]
    producer = transport.producer()
    for r in records:
        producer.send(READINGS, schema.encode(r), r.stream_id.encode())
    producer.flush()
    settings = service_settings(tmp_path, max_poll_records=1, state_store="directory")
    stats = build_service(settings, transport, instance="a").run(timeout=30, count=len(records))
    assert (stats.readings, stats.dead_letters) == (3, 1)
    (letter,) = _drain(transport, DEADLETTER, "deadletter")
    assert (letter.code, letter.field, letter.partition, letter.offset) == ("schema", "kind", 0, 1)
    assert "keeps its kind" in letter.reason
    assert _positions(transport, READINGS)[(0, 1)] == schema.encode(second)
    scored = {(s.stream_id, s.ts) for s in _drain(transport, SCORES, "score")}
    assert scored == {(r.stream_id, r.ts) for r in records} - {(dev, 101.0)}
    consumer = transport.consumer(settings.service.group_id)
    parts = [TopicPartition(READINGS, p) for p in range(3)]
    ends = consumer.end_offsets(parts)
    assert {tp: consumer.committed(tp) or 0 for tp in parts} == ends


def test_outputs_of_a_failed_delivery_are_sent_again_before_any_later_commit(
    tmp_path: Path,
) -> None:
    """A delivery fails (the client reports it once, at the flush, and forgets it) and a
    stop comes during the retry's backoff. The shutdown's flush must send those outputs
    again before it commits: every reading the commit covers has its Score."""
    readings, _ = icu_readings(patients=2, minutes=3)
    transport = MemoryTransport()
    _fill(transport, readings)
    settings = service_settings(tmp_path, max_poll_records=50, checkpoint_every_s=3600.0,
                                checkpoint_every_batches=10_000, state_store="directory")
    service = build_service(settings, transport, instance="a")
    make = transport.producer
    state = {"flushes": 0, "failing": False, "dropped": 0}

    def producer() -> Any:
        p = make()
        send, flush = p.send, p.flush

        def failing_send(topic: str, value: bytes | None, key: bytes | None = None) -> None:
            if state["failing"] and topic == SCORES:  # the broker refuses these records
                state["dropped"] += 1
                p._errors.append("simulated: the broker refused the record")
                return
            send(topic, value, key)

        def flush_then_stop(timeout: float | None = None) -> None:
            state["flushes"] += 1
            if state["flushes"] == 3:
                state["failing"] = True  # the next batch's Scores fail
            try:
                flush(timeout)
            except Exception:
                state["failing"] = False
                service.stop()  # a SIGTERM during the outage's backoff
                raise

        p.send, p.flush = failing_send, flush_then_stop  # type: ignore[method-assign]
        return p

    transport.producer = producer  # type: ignore[method-assign]
    stats = service.run(timeout=60)
    assert state["dropped"] > 0 and stats.final_checkpoint
    consumer = transport.consumer(settings.service.group_id)
    parts = [TopicPartition(READINGS, p) for p in range(3)]
    committed = {tp: consumer.committed(tp) or 0 for tp in parts}
    raw = _positions(transport, READINGS)
    covered = [value for (p, offset), value in raw.items()
               if offset < committed[TopicPartition(READINGS, p)]]
    assert covered
    want = {(r.stream_id, r.ts) for r in (schema.decode("reading", v) for v in covered)}
    scored = {(s.stream_id, s.ts) for s in _drain(transport, SCORES, "score")}
    assert want <= scored, f"{len(want - scored)} committed readings have no Score"


def test_a_new_owner_checkpoints_the_partitions_it_restored_at_once(tmp_path: Path) -> None:
    """A moved partition's state is in the old owner's checkpoint, which that owner's next
    one replaces without it. The new owner writes its own checkpoint as soon as it has
    restored the partition, so the store never lacks it: a crash of the new owner before
    its first scheduled checkpoint leaves the state for whoever comes next."""
    from streamwatch.state_store import FileStateStore

    readings, _ = icu_readings(patients=6, minutes=6)
    half = len(readings) // 2
    transport = MemoryTransport()
    _fill(transport, readings[:half])
    a = build_service(service_settings(tmp_path, max_poll_records=100, checkpoint_every_s=0.5,
                                       checkpoint_jitter=0.0, state_store="directory"),
                      transport, instance="a")  # fmt: skip
    b = build_service(service_settings(tmp_path, max_poll_records=100, checkpoint_every_s=3600.0,
                                       checkpoint_every_batches=10**6, state_store="directory"),
                      transport, instance="b")  # fmt: skip
    everything = {TopicPartition(READINGS, p) for p in range(3)}
    stored_after_assign: list[set[TopicPartition]] = []
    assign = a._on_assign

    def assign_then_look(partitions: set[TopicPartition]) -> None:
        # the rebalance is eager: a gets back part of what it held; it must not save then
        # (its checkpoint would lose the partition b may be loading from it that moment)
        assign(partitions)
        stored_after_assign.append(set(FileStateStore(tmp_path, "probe").load(everything).partitions))

    a._on_assign = assign_then_look  # type: ignore[method-assign]
    runs = [threading.Thread(target=svc.run, kwargs={"timeout": 120}) for svc in (a, b)]
    runs[0].start()
    try:
        _until(lambda: a.stats.readings >= half, "a to score the first half")
        runs[1].start()
        _until(lambda: a.assigned_partitions and b.assigned_partitions, "both to hold partitions")
        moved = set(b.assigned_partitions)
        written = a.stats.checkpoints
        producer = transport.producer()
        for r in readings[half:]:  # more to score: a checkpoints again, without them
            producer.send(READINGS, schema.encode(r), r.stream_id.encode())
        producer.flush()
        _until(lambda: a.stats.checkpoints > written, "a's next checkpoint")
        assert b.stats.checkpoints >= 1  # the one right after its restore
        stored = FileStateStore(tmp_path, "probe").load(moved).partitions
        assert set(stored) == moved, sorted(stored)
        assert len(stored_after_assign) >= 2 and stored_after_assign[1:] == [everything] * (
            len(stored_after_assign) - 1), stored_after_assign
    finally:
        a.stop()
        b.stop()
        for t in runs:
            t.join(60)


def test_a_background_checkpoint_finished_after_a_revoke_commits_only_what_is_still_held(
    tmp_path: Path,
) -> None:
    """A checkpoint written in the background covers the partitions held when it was taken.
    If one was revoked meanwhile (its revoke's own checkpoint failed, so this one stayed
    pending), its new owner may have committed further: committing it now moved that back.
    (Rule-level: a rebalance and a failing flush at the right moments are hard to stage.)"""
    from concurrent.futures import Future

    service = build_service(service_settings(tmp_path), MemoryTransport(), instance="a")
    commits: list[dict[TopicPartition, int]] = []

    class Recording:
        def commit(self, offsets: dict[TopicPartition, int]) -> None:
            commits.append(dict(offsets))

    kept, revoked = TopicPartition(READINGS, 0), TopicPartition(READINGS, 1)
    service._consumer = Recording()  # type: ignore[assignment]
    service._assigned = {kept}
    written: Future[float] = Future()
    written.set_result(0.01)
    service._pending = (written, {kept: 5, revoked: 7}, 0.001, ({}, {}))
    assert service._finish_pending(block=True)
    assert commits == [{kept: 5}]


def _offline(service: Any) -> list[Any]:
    """Wire ``service`` for calling its rebalance callbacks directly, with no loop: a fresh
    detector, a consumer that records its commits (returned), a producer that drops
    everything, a checkpoint writer."""
    from concurrent.futures import ThreadPoolExecutor

    commits: list[Any] = []

    class Consumer:
        def seek(self, tp: TopicPartition, offset: int) -> None: ...
        def commit(self, offsets: Any) -> None:
            commits.append(offsets)

    class Producer:
        def send(self, *args: Any) -> None: ...
        def flush(self, timeout: float | None = None) -> None: ...

    service.detector = service.detector_factory()
    service._consumer, service._producer = Consumer(), Producer()
    service._writer = ThreadPoolExecutor(max_workers=1)
    return commits


def test_a_restart_under_the_same_name_with_fewer_partitions_keeps_the_others_stored(
    tmp_path: Path,
) -> None:
    """A process restarted under its old name (a container's hostname) gets fewer
    partitions than its last checkpoint holds. Saving at once after its restore would
    replace that checkpoint without them, before their new owner has loaded them: it
    does not save then."""
    from streamwatch.state_store import FileStateStore

    readings, _ = icu_readings(patients=6, minutes=2)
    transport = MemoryTransport()
    total = _fill(transport, readings)
    settings = service_settings(tmp_path, state_store="directory")
    build_service(settings, transport, instance="a").run(timeout=60, count=total)
    parts = [TopicPartition(READINGS, p) for p in range(3)]
    assert set(FileStateStore(tmp_path, "probe").load(set(parts)).partitions) == set(parts)

    again = build_service(settings, transport, instance="a")
    commits = _offline(again)
    again._on_assign({parts[0], parts[1]})  # p2 goes to another process
    assert again.assigned_partitions == {parts[0], parts[1]} and not commits
    assert set(FileStateStore(tmp_path, "probe").load({parts[2]}).partitions) == {parts[2]}


def test_outputs_after_a_failed_delivery_go_out_once_each_in_their_order(tmp_path: Path) -> None:
    """After a failed flush, the next batch's outputs go with the ones to send again, in
    the order they were made: not ahead of them, and not twice."""
    service = build_service(service_settings(tmp_path), MemoryTransport(), instance="a")
    sent: list[bytes] = []

    class Producer:
        def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
            sent.append(value or b"")

        def flush(self, timeout: float | None = None) -> None: ...

    service._producer = Producer()  # type: ignore[assignment]
    service._unflushed = [(SCORES, b"old-1", None), (SCORES, b"old-2", None)]
    service._resend = True  # their delivery failed
    service._deliver([(SCORES, b"new-1", None)])
    assert sent == [b"old-1", b"old-2", b"new-1"]
    assert not service._unflushed and not service._resend


def test_a_process_that_has_scored_keeps_its_own_model_at_a_later_assignment(
    tmp_path: Path,
) -> None:
    """The stored model is adopted once, before a process scores anything. A process that
    found none stored, then scored and trained, kept its model only until its next
    assignment, which swapped in another process's (changing its scores mid-run)."""
    readings, _ = icu_readings(patients=6, minutes=6)
    transport = MemoryTransport()
    total = _fill(transport, readings)
    settings = service_settings(tmp_path, state_store="directory")
    parts = [TopicPartition(READINGS, p) for p in range(3)]
    b = build_service(settings, transport, instance="b")
    _offline(b)
    b._on_assign({parts[0]})  # nothing stored yet
    for second in by_second(readings[: len(readings) // 2]):
        b.detector.process(second)  # b scores and trains on its own
    b.stats.readings = len(readings) // 2
    own = _digest(b.detector.global_state_dict())
    build_service(settings, transport, instance="a").run(timeout=60, count=total)  # stores one
    assert any(tmp_path.glob("detector-a.pt"))
    b._on_assign({parts[1]})
    assert _digest(b.detector.global_state_dict()) == own
