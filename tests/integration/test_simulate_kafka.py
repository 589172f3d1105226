"""``streamwatch simulate`` / ``replay`` against the real broker, counted by an independent consumer."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from simulators.icu import IcuSimulator
from streamwatch.cli import main
from streamwatch.evaluate.corpus import resolve_nab_dir
from streamwatch.schema import decode, decode_reading

pytestmark = pytest.mark.kafka

CONSOLE = Path(sys.executable).with_name("streamwatch")
NAB = resolve_nab_dir() / "data"  # ../shared/data/nab or $STREAMWATCH_NAB_DIR


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` points the root logger at this test's captured stderr: undo that after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _topic(tag: str) -> str:
    return f"test-sim-{tag}-{uuid.uuid4().hex[:12]}"


def _consume_all(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[tuple[int, bytes, bytes]]:
    """Every record of ``topic`` as (partition, key, value), read with assign() (no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=20_000,
                             fetch_max_bytes=64 * 1024 * 1024)
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"only {len(records)} records read in {timeout_s} s"
            for tp, batch in consumer.poll(timeout_ms=500).items():
                records.extend((tp.partition, m.key, m.value) for m in batch)
        return records
    finally:
        consumer.close()


def test_simulate_50_patients_for_an_hour_puts_180000_readings_on_the_topic(
    kafka_bootstrap: str,
) -> None:
    topic, truth = _topic("readings"), _topic("truth")
    assert CONSOLE.exists(), f"console script not installed at {CONSOLE}"
    done = subprocess.run(
        [str(CONSOLE), "simulate", "icu", "--patients", "50", "--duration", "1h",
         "--speedup", "0", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
         "--truth-topic", truth],
        capture_output=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr.decode()
    records = _consume_all(kafka_bootstrap, topic)
    assert len(records) == 180_000
    per_stream: dict[str, list[float]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for partition, key, value in records:
        reading = decode_reading(value)
        assert key == reading.stream_id.encode()
        per_stream[reading.stream_id].append(reading.ts)
        partition_of[key].add(partition)
    assert len(per_stream) == 50
    for ts in per_stream.values():  # one partition per stream keeps its readings in order
        assert len(ts) == 3600 and ts == sorted(ts) and len(set(ts)) == 3600
    assert all(len(p) == 1 for p in partition_of.values())
    assert len({p for ps in partition_of.values() for p in ps}) > 1  # spread over partitions


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_simulate_publishes_episode_labels_to_the_truth_topic(
    kafka_bootstrap: str, client: str
) -> None:
    topic, truth = _topic("readings"), _topic("truth")
    rc = main(["simulate", "icu", "--patients", "3", "--duration", "3h", "--seed", "4",
               "--speedup", "0", "--quiet", "--warmup", "10m", "--episodes-per-day", "48",
               "--bootstrap-servers", kafka_bootstrap, "--kafka-client", client,
               "--topic", topic, "--truth-topic", truth])
    assert rc == 0
    expected = IcuSimulator(3, 4, warmup_s=600, clinical_per_day=48).episodes(3 * 3600)
    labels = _consume_all(kafka_bootstrap, truth)
    episodes = [decode("episode", value) for _, _, value in labels]
    assert expected and sorted(episodes, key=lambda e: e.episode_id) == sorted(
        expected, key=lambda e: e.episode_id)
    assert all(key == decode("episode", value).stream_id.encode() for _, key, value in labels)
    assert len(_consume_all(kafka_bootstrap, topic)) == 3 * 3 * 3600


def test_replay_puts_every_csv_row_on_the_topic(kafka_bootstrap: str) -> None:
    csv = NAB / "realKnownCause" / "ambient_temperature_system_failure.csv"
    topic = _topic("replay")
    assert main(["replay", str(csv), "--stream-id", "nab/ambient", "--quiet",
                 "--bootstrap-servers", kafka_bootstrap, "--topic", topic]) == 0
    records = _consume_all(kafka_bootstrap, topic)
    rows = sum(1 for _ in csv.open()) - 1
    assert len(records) == rows
    assert Counter(key for _, key, _ in records) == {b"nab/ambient": rows}


def test_unreachable_broker_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["simulate", "icu", "--duration", "10s", "--speedup", "0",
               "--bootstrap-servers", "127.0.0.1:9"])
    assert rc == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
