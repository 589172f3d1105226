"""The detector state stores: the changelog topic (``KafkaStateStore``, here on the in-memory
bus; against the real broker in tests/integration/test_state_store_kafka.py) and the shared
directory (``FileStateStore``): same selection rules, crash-safe writes, clear errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from streamwatch.errors import CheckpointError, TransportError
from streamwatch.state_store import FileStateStore, KafkaStateStore, PartitionState, StateStore
from streamwatch.transport import MemoryTransport
from streamwatch.transport.base import Message, TopicPartition

TOPIC = "streamwatch.detector-state"
A, B, C = (TopicPartition("readings", p) for p in range(3))


def _global(seed: int, rows: int = 8) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {"kinds": {"icu_vitals": {"w": torch.randn(rows, 16, generator=gen), "seed": seed}}}


def _streams(tag: str) -> dict[str, Any]:
    return {"stream_ids": [f"icu/{tag}"], "h": torch.full((1, 4), float(len(tag)))}


def _records(transport: MemoryTransport, topic: str = TOPIC) -> list[Message]:
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(topic, 0)])
    out: list[Message] = []
    while batch := consumer.poll(0.05, 100_000):
        out.extend(batch)
    consumer.close()
    return out


StoreFactory = Callable[[str], StateStore]


@pytest.fixture(params=["kafka", "directory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Stores of several processes sharing one place (one bus, or one directory)."""
    transport = MemoryTransport()
    if request.param == "kafka":
        return lambda instance: KafkaStateStore(transport, TOPIC, instance, chunk_bytes=1024)
    return lambda instance: FileStateStore(tmp_path / "ckpt", instance)


def test_another_process_restores_each_partition_from_whoever_read_it_furthest(
    make_store: StoreFactory,
) -> None:
    one, two = make_store("one"), make_store("two")
    one.save(_global(1), {A: PartitionState(100, _streams("a1")), B: PartitionState(50, _streams("b1"))})
    two.save(_global(2), {B: PartitionState(70, _streams("b2")), C: PartitionState(10, _streams("c2"))})
    # written last and named last, yet behind on B: not the newest state of B
    make_store("zz").save(_global(3), {B: PartitionState(60, _streams("b3"))})
    snap = make_store("three").load({A, B, C})
    assert {tp: ps.offset for tp, ps in snap.partitions.items()} == {A: 100, B: 70, C: 10}
    assert snap.partitions[A].streams["stream_ids"] == ["icu/a1"]
    assert snap.partitions[B].streams["stream_ids"] == ["icu/b2"]
    assert torch.equal(snap.partitions[B].streams["h"], _streams("b2")["h"])
    # the global model of the checkpoint that has read furthest (150 > 80 offsets)
    assert torch.equal(snap.global_state["kinds"]["icu_vitals"]["w"],  # type: ignore[index]
                       _global(1)["kinds"]["icu_vitals"]["w"])
    # only the partitions asked for
    assert set(make_store("four").load({C}).partitions) == {C}


def test_a_newer_save_replaces_the_same_process_checkpoint(make_store: StoreFactory) -> None:
    one = make_store("one")
    one.save(_global(1), {A: PartitionState(5, _streams("old"))})
    one.save(_global(2), {A: PartitionState(9, _streams("new"))})
    snap = make_store("reader").load({A})
    assert snap.partitions[A].offset == 9 and snap.partitions[A].streams["stream_ids"] == ["icu/new"]
    assert snap.global_state["kinds"]["icu_vitals"]["seed"] == 2  # type: ignore[index]


def test_nothing_saved_yet_restores_nothing(make_store: StoreFactory) -> None:
    snap = make_store("one").load({A, B})
    assert snap.global_state is None and snap.partitions == {}


# ------------------------------------------------------------------- the changelog topic
def test_a_large_checkpoint_is_cut_into_chunks_and_old_sets_are_tombstoned() -> None:
    transport = MemoryTransport()
    store = KafkaStateStore(transport, TOPIC, "one", chunk_bytes=4096)
    big = _global(1, rows=2400)  # ~154 kB of random floats (zlib keeps ~90 % of them)
    for offset in (10, 20, 30):
        store.save(big, {A: PartitionState(offset, _streams("a"))})
    store.close()  # flushes the last tombstones
    records = _records(transport)
    assert max(len(m.value) for m in records if m.value is not None) <= 4096
    heads = [m for m in records if m.key == b"ckpt/one/head"]
    assert len(heads) == 3
    # the topic keeps every record (no compaction here, as on Tansu), but folding it to
    # the last value per key leaves exactly the newest set and its head
    reader = KafkaStateStore(transport, TOPIC, "reader")
    reader.fold(records)
    assert set(reader._heads) == {b"ckpt/one/head"}
    sets = {k.rsplit(b"/", 1)[0] for k in reader._chunks}
    assert len(sets) == 1 and len(reader._chunks) > 30
    snap = KafkaStateStore(transport, TOPIC, "reader2").load({A})
    assert snap.partitions[A].offset == 30
    assert torch.equal(snap.global_state["kinds"]["icu_vitals"]["w"],  # type: ignore[index]
                       big["kinds"]["icu_vitals"]["w"])


@pytest.mark.parametrize("tombstones", ["kept", "expired"])
def test_a_compacted_topic_restores_the_same_state(tombstones: str) -> None:
    """What Apache Kafka keeps after compaction: the last record per key (tombstones
    too, until ``delete.retention.ms``); a store reading only that finds the same state."""
    transport = MemoryTransport()
    one, two = (KafkaStateStore(transport, TOPIC, n, chunk_bytes=2048) for n in ("one", "two"))
    for i in range(3):
        one.save(_global(i, rows=200), {A: PartitionState(10 * i, _streams(f"a{i}"))})
        two.save(_global(10 + i, rows=200), {B: PartitionState(5 * i, _streams(f"b{i}"))})
    one.close()
    two.close()
    last: dict[bytes, Message] = {}
    for m in _records(transport):
        assert m.key is not None
        last.pop(m.key, None)  # a key's survivor sits at its last offset
        last[m.key] = m
    compacted = MemoryTransport()
    compacted.create_topics({TOPIC: 1})
    producer = compacted.producer()
    for m in last.values():
        if m.value is not None or tombstones == "kept":
            producer.send(TOPIC, m.value, m.key)
    producer.flush()
    full = KafkaStateStore(transport, TOPIC, "r1").load({A, B})
    small = KafkaStateStore(compacted, TOPIC, "r2").load({A, B})
    assert {tp: ps.offset for tp, ps in small.partitions.items()} == {A: 20, B: 10}
    assert {tp: ps.offset for tp, ps in full.partitions.items()} == {A: 20, B: 10}
    kept = _records(compacted)
    assert len(kept) < len(_records(transport)) and len({m.key for m in kept}) == len(kept)


class _FailingProducer:
    """The broker refuses records after ``ok`` sends (a real client raises
    ``TransportError`` from send or flush, e.g. when the broker goes away mid-save)."""

    def __init__(self, inner: Any, ok: int) -> None:
        self.inner, self.ok = inner, ok

    def send(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        if self.ok <= 0:
            raise TransportError("broker refused the record (injected)")
        self.ok -= 1
        self.inner.send(topic, value, key)

    def flush(self, timeout: float | None = None) -> None:
        self.inner.flush(timeout)

    def close(self) -> None:
        self.inner.close()


def test_a_save_cut_short_leaves_the_previous_checkpoint_current() -> None:
    transport = MemoryTransport()
    store = KafkaStateStore(transport, TOPIC, "one", chunk_bytes=1024)
    store.save(_global(1, rows=100), {A: PartitionState(40, _streams("good"))})
    store._producer = _FailingProducer(store._producer, ok=3)  # 3 chunks of many, no head
    with pytest.raises(TransportError):
        store.save(_global(2, rows=100), {A: PartitionState(90, _streams("partial"))})
    snap = KafkaStateStore(transport, TOPIC, "reader").load({A})
    assert snap.partitions[A].offset == 40 and snap.partitions[A].streams["stream_ids"] == ["icu/good"]
    assert snap.global_state["kinds"]["icu_vitals"]["seed"] == 1  # type: ignore[index]


def test_a_reader_sees_what_was_saved_after_its_first_read() -> None:
    transport = MemoryTransport()
    writer, reader = (KafkaStateStore(transport, TOPIC, n) for n in ("writer", "reader"))
    writer.save(_global(1), {A: PartitionState(1, _streams("a"))})
    assert reader.load({A}).partitions[A].offset == 1
    writer.save(_global(1), {A: PartitionState(2, _streams("a"))})
    assert reader.load({A}).partitions[A].offset == 2


def _damage(transport: MemoryTransport, key: bytes, value: bytes | None) -> None:
    producer = transport.producer()
    producer.send(TOPIC, value, key)
    producer.flush()


def _chunk_keys(transport: MemoryTransport, instance: str) -> list[bytes]:
    reader = KafkaStateStore(transport, TOPIC, "probe")
    reader.fold(_records(transport))
    return sorted(k for k in reader._chunks if k.startswith(f"ckpt/{instance}/".encode()))


@pytest.mark.parametrize(("damage", "message"), [
    ("flip", "do not match the head's checksum"),
    ("drop", "is not on the topic"),
    ("head", "head streamwatch.detector-state:ckpt/one/head is not readable"),
])
def test_a_damaged_checkpoint_is_a_clear_error_or_a_logged_fresh_start(
    damage: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    transport = MemoryTransport()
    KafkaStateStore(transport, TOPIC, "one", chunk_bytes=1024).save(
        _global(1, rows=50), {A: PartitionState(7, _streams("a"))})
    KafkaStateStore(transport, TOPIC, "two", chunk_bytes=1024).save(
        _global(2, rows=50), {B: PartitionState(3, _streams("b"))})
    key = _chunk_keys(transport, "one")[1]
    if damage == "flip":
        _damage(transport, key, b"\x00" * 1024)
    elif damage == "drop":
        _damage(transport, key, None)
    else:
        _damage(transport, b"ckpt/one/head", b"{not json")
    with pytest.raises(CheckpointError, match=message) as err:
        KafkaStateStore(transport, TOPIC, "reader").load({A, B})
    assert "--fresh-start" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="streamwatch.state_store"):
        fresh = KafkaStateStore(transport, TOPIC, "reader2")
        snap = fresh.load({A, B}, fresh_start=True)
        fresh.close()  # sends the tombstones
    assert set(snap.partitions) == {B}  # the damaged one skipped, the other restored
    assert any("removing an unreadable checkpoint" in r.getMessage() for r in caplog.records)
    # removed, not only skipped: the next start needs no flag (it used to stop again)
    again = KafkaStateStore(transport, TOPIC, "reader3").load({A, B})
    assert set(again.partitions) == {B}


def test_a_head_nested_past_the_parser_depth_is_a_clear_error_not_a_crash() -> None:
    transport = MemoryTransport()
    KafkaStateStore(transport, TOPIC, "one", chunk_bytes=1024).save(
        _global(1, rows=5), {A: PartitionState(7, _streams("a"))})
    _damage(transport, b"ckpt/one/head", b"[" * 200_000)
    with pytest.raises(CheckpointError, match="RecursionError"):
        KafkaStateStore(transport, TOPIC, "reader").load({A})
    snap = KafkaStateStore(transport, TOPIC, "reader2").load({A}, fresh_start=True)
    assert snap.partitions == {}


def test_an_instance_name_with_a_slash_is_refused() -> None:
    with pytest.raises(CheckpointError, match="must not contain '/'"):
        KafkaStateStore(MemoryTransport(), TOPIC, "host/1")


def test_a_load_fetches_only_the_checkpoints_it_restores_from() -> None:
    """Chosen from the heads alone: a damaged checkpoint nobody needs does not matter."""
    transport = MemoryTransport()
    KafkaStateStore(transport, TOPIC, "one", chunk_bytes=1024).save(
        _global(1, rows=50), {A: PartitionState(100, _streams("a"))})
    KafkaStateStore(transport, TOPIC, "two", chunk_bytes=1024).save(
        _global(2, rows=50), {B: PartitionState(5, _streams("b"))})
    _damage(transport, _chunk_keys(transport, "two")[0], b"junk")
    snap = KafkaStateStore(transport, TOPIC, "reader").load({A})
    assert snap.partitions[A].offset == 100
    assert snap.global_state["kinds"]["icu_vitals"]["seed"] == 1  # type: ignore[index]
    with pytest.raises(CheckpointError, match="checksum"):
        KafkaStateStore(transport, TOPIC, "reader2").load({B})


def test_a_restart_under_the_same_name_tombstones_its_predecessor_s_chunks() -> None:
    transport = MemoryTransport()
    first = KafkaStateStore(transport, TOPIC, "host-1", chunk_bytes=1024)
    first.save(_global(1, rows=50), {A: PartitionState(10, _streams("a"))})
    old = set(_chunk_keys(transport, "host-1"))
    again = KafkaStateStore(transport, TOPIC, "host-1", chunk_bytes=1024)  # same container
    assert again.load({A}).partitions[A].offset == 10  # the service loads before it saves
    again.save(_global(2, rows=50), {A: PartitionState(20, _streams("a"))})
    again.close()
    now = set(_chunk_keys(transport, "host-1"))
    assert now and not now & old


def test_checkpoints_of_processes_long_gone_are_removed_once_superseded() -> None:
    transport = MemoryTransport()
    KafkaStateStore(transport, TOPIC, "gone", chunk_bytes=1024).save(
        _global(1, rows=20), {A: PartitionState(5, _streams("a")), C: PartitionState(7, _streams("c"))})
    KafkaStateStore(transport, TOPIC, "gone-too", chunk_bytes=1024).save(
        _global(2, rows=20), {A: PartitionState(6, _streams("a"))})
    KafkaStateStore(transport, TOPIC, "live", chunk_bytes=1024).save(
        _global(3, rows=20), {A: PartitionState(9, _streams("a")), B: PartitionState(3, _streams("b"))})
    # only a reader for whom every head is old enough removes anything
    KafkaStateStore(transport, TOPIC, "reader").load({A, B, C})
    assert len(KafkaStateStore(transport, TOPIC, "r").checkpoints()) == 3
    sweeper = KafkaStateStore(transport, TOPIC, "sweeper", forget_after_s=0.0)
    sweeper.load({A})
    sweeper.close()
    left = {source.rsplit(":", 1)[1] for source, _s, _m in
            KafkaStateStore(transport, TOPIC, "r2").checkpoints()}
    # "gone-too" was superseded on A; "gone" still holds the newest C; "live" read furthest
    assert left == {"ckpt/gone/head", "ckpt/live/head"}
    assert not _chunk_keys(transport, "gone-too")


def test_a_head_written_with_the_older_sha256_is_still_read_and_checked() -> None:
    """Heads named a SHA-256 of the chunks before they named a CRC-32C."""
    import hashlib
    import json

    transport = MemoryTransport()
    KafkaStateStore(transport, TOPIC, "one", chunk_bytes=1024).save(
        _global(1, rows=50), {A: PartitionState(7, _streams("a"))})
    head_msg = next(m for m in _records(transport) if m.key == b"ckpt/one/head")
    head = json.loads(head_msg.value)  # type: ignore[arg-type]
    reader = KafkaStateStore(transport, TOPIC, "probe")
    reader.fold(_records(transport))
    chunks = sorted(((k, at) for k, at in reader._chunks.items()), key=lambda kv: kv[1])
    by_offset = {m.offset: m.value for m in _records(transport)}
    data = b"".join(by_offset[at[1]] or b"" for _k, at in chunks)
    for digest, works in ((hashlib.sha256(data).hexdigest(), True), ("0" * 64, False)):
        old = {k: v for k, v in head.items() if k != "crc32c"} | {"sha256": digest}
        transport.producer().send(TOPIC, json.dumps(old).encode(), b"ckpt/one/head")
        if works:
            snap = KafkaStateStore(transport, TOPIC, "reader").load({A})
            assert snap.partitions[A].offset == 7
        else:
            with pytest.raises(CheckpointError, match="do not match the head's checksum"):
                KafkaStateStore(transport, TOPIC, "reader2").load({A})


def test_the_chunks_carry_the_checkpoint_compressed_and_the_head_says_so() -> None:
    """The chunks carry the checkpoint encoded by ``encode_checkpoint`` and zlib-compressed
    (a real one of 1,000 ICU streams: 19.7 -> 4.7 MB), the head names the encoding and both
    sizes, and the checksum is of the bytes on the topic."""
    import json
    import zlib

    import crc32c

    from streamwatch.checkpoint import TENSORS_MAGIC

    transport = MemoryTransport()
    state = {"kinds": {"icu_vitals": {"mask": torch.zeros(2000, 64), "seed": 1}}}  # ~512 kB
    KafkaStateStore(transport, TOPIC, "one", chunk_bytes=4096).save(
        state, {A: PartitionState(7, _streams("a"))})
    records = _records(transport)
    head = json.loads(next(m.value for m in records if m.key == b"ckpt/one/head"))  # type: ignore[arg-type]
    chunks = [m.value for m in records if m.key != b"ckpt/one/head" and m.value is not None]
    data = b"".join(chunks)  # type: ignore[arg-type]
    assert head["format"] == "streamwatch.detector-state-head/2"
    assert head["encoding"] == "tensors+zlib"
    assert head["bytes"] == len(data) < head["raw_bytes"] / 10 and head["chunks"] == len(chunks)
    assert head["crc32c"] == f"{crc32c.crc32c(data):08x}"
    raw = zlib.decompress(data)
    assert len(raw) == head["raw_bytes"] > 2000 * 64 * 4 and raw.startswith(TENSORS_MAGIC)
    snap = KafkaStateStore(transport, TOPIC, "reader").load({A})
    assert snap.partitions[A].offset == 7
    assert torch.equal(snap.global_state["kinds"]["icu_vitals"]["mask"],  # type: ignore[index]
                       state["kinds"]["icu_vitals"]["mask"])


@pytest.mark.parametrize("written", ["format 1, uncompressed", "zlib of torch.save",
                                     "zlib named, not zlib"])
def test_older_heads_are_still_read_and_chunks_that_do_not_decompress_are_an_error(
    written: str,
) -> None:
    """Heads of format 1 (before compression) name no encoding: their chunks are the
    checkpoint itself; heads naming zlib (before 2026-12-07) carry ``torch.save`` bytes
    compressed. A head naming zlib over chunks that are not is a clear error."""
    import json
    import zlib

    import crc32c

    from streamwatch.checkpoint import dump_checkpoint
    from streamwatch.state_store import FORMAT, _state

    transport = MemoryTransport()
    KafkaStateStore(transport, TOPIC, "reader").ensure_topic()
    producer = transport.producer()
    data = dump_checkpoint(_state(_global(3), {A: PartitionState(5, _streams("a"))}),
                           {"format": FORMAT, "instance": "old"})  # sent uncompressed
    if written == "zlib of torch.save":
        data = zlib.compress(data, 1)
    for i in range(0, len(data), 1024):
        producer.send(TOPIC, data[i:i + 1024], f"ckpt/old/s1/{i // 1024}".encode())
    head = {"instance": "old", "set": "s1", "chunks": -(-len(data) // 1024), "bytes": len(data),
            "crc32c": f"{crc32c.crc32c(data):08x}", "saved_at": 1.0, "partitions": [["readings", 0, 5]]}
    if written == "format 1, uncompressed":
        head["format"] = "streamwatch.detector-state-head/1"
    else:
        head |= {"format": "streamwatch.detector-state-head/2", "encoding": "zlib"}
    producer.send(TOPIC, json.dumps(head).encode(), b"ckpt/old/head")
    producer.flush()
    store = KafkaStateStore(transport, TOPIC, "reader")
    if written != "zlib named, not zlib":
        snap = store.load({A})
        assert snap.partitions[A].offset == 5
        assert torch.equal(snap.global_state["kinds"]["icu_vitals"]["w"],  # type: ignore[index]
                           _global(3)["kinds"]["icu_vitals"]["w"])
    else:
        with pytest.raises(CheckpointError, match=r"does not decompress.*--fresh-start"):
            store.load({A})


def test_a_background_save_is_paced_and_a_rebalance_save_is_not() -> None:
    """Background checkpoints go out at ``write_bytes_per_s`` (a 17 MB one sent at once
    held the broker and both cores, docs/bench.md); the group waits for the others."""
    import time

    transport = MemoryTransport()
    store = KafkaStateStore(transport, TOPIC, "one", chunk_bytes=4096,
                            write_bytes_per_s=200_000)
    state = _global(1, rows=2400)  # ~154 KB of random floats: ~35 chunks compressed
    started = time.monotonic()
    store.save(state, {A: PartitionState(5, _streams("a"))}, background=True)
    paced = time.monotonic() - started
    chunks = len(_chunk_keys(transport, "one"))
    assert chunks >= 30
    assert paced >= (chunks - 1) * 4096 / 200_000  # every chunk but the first waited its turn
    started = time.monotonic()
    store.save(state, {A: PartitionState(9, _streams("a"))})
    assert time.monotonic() - started < paced / 2
    snap = KafkaStateStore(transport, TOPIC, "reader").load({A})
    assert snap.partitions[A].offset == 9  # both complete checkpoints, the newer one read
    with pytest.raises(CheckpointError, match="write_bytes_per_s"):
        KafkaStateStore(transport, TOPIC, "bad", write_bytes_per_s=-1)


def test_a_load_says_which_partitions_the_loading_process_own_checkpoint_holds(
    make_store: StoreFactory,
) -> None:
    """``Snapshot.own``: what a save of this process (by its instance name, an earlier run
    included) would replace, whatever partitions the load asked for."""
    make_store("one").save(_global(1), {A: PartitionState(5, _streams("a")),
                                         B: PartitionState(6, _streams("b"))})
    make_store("two").save(_global(2), {C: PartitionState(7, _streams("c"))})
    assert make_store("one").load({C}).own == {A, B}  # a restart under the name "one"
    assert make_store("two").load({A}).own == {C}
    assert make_store("three").load({A, B, C}).own == frozenset()
