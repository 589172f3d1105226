"""The detector service against the real broker: end to end, bad input, crashes, scale-out,
broker outage. Every test uses its own topics and group (uuid) on the session broker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamwatch import schema
from streamwatch.broker import TansuBroker
from streamwatch.commands.detect import build_detector, build_service
from streamwatch.config import load_settings
from streamwatch.errors import TransportError
from streamwatch.kinds import ICU, get_kind
from streamwatch.schema import Alert, Reading
from streamwatch.transport import open_transport
from streamwatch.transport.base import TopicPartition
from tests.scenarios import (
    alert_events,
    by_second,
    dead_letter_holds,
    icu_readings,
    opened,
    record_feed_order,
)
from tests.tls_proxy import TlsProxy

pytestmark = pytest.mark.kafka
PARTITIONS = 4


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def topics() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    names = ("readings", "scores", "alerts", "deadletter", "health", "state")
    return {name: f"sw-{tag}.{name}" for name in names}


#: Tansu answers a fetch only when its wait expires (500 ms by default), not when data
#: arrives: a short wait keeps the tests from idling (docs/bench.md, latency pitfalls).
CLIENT_CONFIG = {"fetch_max_wait_ms": 50}


def _transport(bootstrap: str, client: str = "kafka-python",
               client_config: dict[str, Any] | None = None) -> Any:  # fmt: skip
    return open_transport(bootstrap, client, session_timeout_ms=2000,  # type: ignore[arg-type]
                          client_config=client_config or CLIENT_CONFIG)


def _settings(bootstrap: str, topics: dict[str, str], ckpt: Path, *,
              client: str = "kafka-python", client_config: dict[str, Any] | None = None,
              **service: Any) -> Any:  # fmt: skip
    return load_settings(overrides={
        "kafka": {"bootstrap_servers": bootstrap, "session_timeout_ms": 2000, "client": client,
                  "client_config": client_config or CLIENT_CONFIG},
        "topics": {**topics, "partitions": PARTITIONS},
        "service": {"group_id": f"g-{uuid.uuid4().hex[:10]}", "checkpoint_dir": ckpt,
                    "metrics_port": 0, "poll_timeout_s": 0.2, "checkpoint_every_s": 0.5,
                    **service},
    })


def _env(s: Any) -> dict[str, str]:
    """The same settings for a ``streamwatch detect`` child process (environment)."""
    env = dict(os.environ)
    env.update({
        "STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "STREAMWATCH_KAFKA__SESSION_TIMEOUT_MS": str(s.kafka.session_timeout_ms),
        "STREAMWATCH_KAFKA__CLIENT": s.kafka.client,
        "STREAMWATCH_SERVICE__GROUP_ID": s.service.group_id,
        "STREAMWATCH_SERVICE__CHECKPOINT_DIR": str(s.service.checkpoint_dir),
        "STREAMWATCH_SERVICE__STATE_STORE": s.service.state_store,
        "STREAMWATCH_SERVICE__METRICS_PORT": "0",
        "STREAMWATCH_SERVICE__POLL_TIMEOUT_S": "0.2",
        "STREAMWATCH_SERVICE__CHECKPOINT_EVERY_S": str(s.service.checkpoint_every_s),
        "STREAMWATCH_SERVICE__MAX_POLL_RECORDS": str(s.service.max_poll_records),
        "STREAMWATCH_TOPICS__PARTITIONS": str(PARTITIONS),
        "STREAMWATCH_KAFKA__CLIENT_CONFIG": json.dumps(s.kafka.client_config),
    })
    for name in ("readings", "scores", "alerts", "deadletter", "health", "state"):
        env[f"STREAMWATCH_TOPICS__{name.upper()}"] = getattr(s.topics, name)
    return env


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    transport = _transport(bootstrap)
    transport.create_topics({topic: PARTITIONS})
    producer = transport.producer()
    for key, value in records:
        producer.send(topic, value, key)
    producer.flush()
    transport.close()


def _readings_records(readings: list[Reading]) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.stream_id.encode(), schema.encode(r)) for r in readings]


def _read_all(bootstrap: str, topic: str, name: str, *, expect: int | None = None,
              timeout: float = 60.0, client_config: dict[str, Any] | None = None) -> list[Any]:
    """Everything on ``topic`` (decoded), read with assign(); waits for ``expect`` records."""
    transport = _transport(bootstrap, client_config=client_config)
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(topic, p) for p in range(transport.partitions_for(topic))])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    idle = 0
    while time.monotonic() < deadline:
        batch = consumer.poll(0.5, 50_000)
        out.extend(schema.decode(name, m.value) for m in batch)
        idle = 0 if batch else idle + 1
        if (expect is not None and len(out) >= expect and idle >= 2) or (expect is None and idle >= 4):
            break
    consumer.close()
    transport.close()
    return out


def _state_heads(bootstrap: str, topic: str) -> set[bytes]:
    """Keys of the checkpoint heads on the state topic (one per detector process)."""
    transport = _transport(bootstrap)
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(topic, 0)])
    heads: set[bytes] = set()
    while batch := consumer.poll(1.0, 50_000):
        heads |= {m.key for m in batch if m.key and m.key.endswith(b"/head")}
    consumer.close()
    transport.close()
    return heads


def _raw(bootstrap: str, topic: str) -> dict[tuple[int, int], tuple[bytes | None, bytes | None]]:
    """Every record on ``topic`` by its position: (partition, offset) -> (key, value)."""
    transport = _transport(bootstrap)
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(topic, p) for p in range(transport.partitions_for(topic))])
    out: dict[tuple[int, int], tuple[bytes | None, bytes | None]] = {}
    idle = 0
    while idle < 4:
        batch = consumer.poll(0.5, 50_000)
        out.update({(m.partition, m.offset): (m.key, m.value) for m in batch})
        idle = 0 if batch else idle + 1
    consumer.close()
    transport.close()
    return out


def _direct_alerts(readings: list[Reading], ckpt: Path) -> set[tuple[str, str, int]]:
    """The alert events of the plain detector fed one simulated second at a time."""
    detector = build_detector(load_settings(overrides={"service": {"checkpoint_dir": ckpt}}))
    alerts: list[Alert] = []
    for second in by_second(readings):
        alerts.extend(detector.process(second)[1])
    return alert_events(alerts)


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_simulated_patients_through_kafka_raise_the_same_alerts_as_the_memory_path(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, client: str
) -> None:
    from streamwatch.cli import main

    rc = main(["simulate", "icu", "--patients", "10", "--duration", "25m", "--seed", "8",
               "--warmup", "8m", "--episodes-per-day", "150", "--speedup", "0", "--quiet",
               "--bootstrap-servers", kafka_bootstrap, "--topic", topics["readings"],
               "--truth-topic", f"{topics['readings']}.truth", "--partitions", str(PARTITIONS)])
    assert rc == 0
    readings = _read_all(kafka_bootstrap, topics["readings"], "reading", expect=15_000)
    assert len(readings) == 15_000
    want = _direct_alerts(readings, tmp_path / "direct")
    assert len(opened(want)) >= 3, "the scenario must raise alerts"
    assert {event for _, event, _ in want} == {"open", "update", "close"}

    s = _settings(kafka_bootstrap, topics, tmp_path / "ckpt", client=client)
    transport = _transport(kafka_bootstrap, client)
    stats = build_service(s, transport).run(timeout=240, count=len(readings))
    transport.close()
    assert stats.readings == len(readings)
    # every event (open, each update, close), not only the opens
    assert alert_events(_read_all(kafka_bootstrap, topics["alerts"], "alert")) == want


# --------------------------------------------------------------------------- bad input
CHANNELS = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp")
SIDS = [f"icu/bed-{i:02d}" for i in range(1, 6)]


#: Broken-record recipes (``_broken``); a drawn kind of ``BROKEN_KINDS`` or more is valid.
BROKEN_KINDS = 13


def _value(rnd: random.Random, low: float, high: float) -> float | None:
    """A channel value: null, a bound of the plausible range, or anything between."""
    pick = rnd.randrange(5)
    return None if pick == 0 else low if pick == 1 else high if pick == 2 else rnd.uniform(low, high)


def _valid(rnd: random.Random, i: int) -> tuple[bytes, bytes, bool]:
    sid = rnd.choice(SIDS)
    plausible = get_kind(ICU).plausible
    channels = rnd.sample(CHANNELS, rnd.randrange(len(CHANNELS) + 1))
    values = {ch: _value(rnd, *plausible[ch]) for ch in channels}
    reading = Reading(stream_id=sid, kind="icu_vitals", ts=1_767_225_600.0 + i, values=values)
    return sid.encode(), schema.encode(reading), True


def _broken(rnd: random.Random, how: int, i: int) -> tuple[bytes | None, bytes | None, bool]:
    import json

    sid = rnd.choice(SIDS)
    ts = 1_767_225_600.0 + i
    good = {"v": 1, "stream_id": sid, "kind": "icu_vitals", "ts": ts, "values": {"hr": 80.0}}
    if how == 0:
        return sid.encode(), rnd.randbytes(rnd.randrange(201)).replace(b"{", b"("), False
    if how == 1:
        return sid.encode(), None, False
    if how == 2:
        # "v" may be left out: a Reading without it is read as v1 (reading.v1.json does not
        # require it), so leaving it out is not a broken record
        missing = rnd.choice(sorted(set(good) - {"v"}))
        return sid.encode(), json.dumps({k: v for k, v in good.items() if k != missing}).encode(), False
    if how == 3:
        bad = rnd.choice(["", "80", "x" * rnd.randrange(1, 6), True, False, [], [1, 2]])
        return sid.encode(), json.dumps({**good, "values": {"hr": bad}}).encode(), False
    if how == 4:
        return sid.encode(), json.dumps({**good, "values": {"hr": float("nan")}}).encode(), False
    if how == 5:
        return sid.encode(), json.dumps({**good, "values": {"spo2": 1e300}}).encode(), False
    if how == 6:
        return sid.encode(), json.dumps({**good, "kind": rnd.choice(["reactor", "x1"])}).encode(), False
    if how == 7:
        return sid.encode(), json.dumps({**good, "ts": ts + 10 * 365 * 86400.0 + time.time()}).encode(), False
    if how == 8:
        return sid.encode(), json.dumps({**good, "pad": "x" * 70_000}).encode(), False
    if how == 9:
        return b"icu/other", json.dumps(good).encode(), False
    if how == 10:
        return sid.encode(), json.dumps({**good, "stream_id": "bad id!"}).encode(), False
    if how == 11:  # an integer too large for a float
        return sid.encode(), json.dumps({**good, "values": {"hr": 10**400}}).encode(), False
    return sid.encode(), json.dumps({**good, "values": {"hr": -5.0}}).encode(), False


@st.composite
def _mixed_records(draw: Any) -> tuple[list[tuple[bytes | None, bytes | None, bool]], list[int]]:
    """1,000 records: hypothesis draws each one's recipe (a broken kind, or valid: about
    half), a seeded Random fills in the details. Drawing every detail through hypothesis
    (floats of 7 channels per reading) overran its 8 KB choice buffer: it then ran only
    its all-zero first example (1,000 identical broken records) and spent minutes failing
    to generate a second."""
    kinds = draw(st.lists(st.integers(0, 2 * BROKEN_KINDS - 1), min_size=1000, max_size=1000))
    rnd = draw(st.randoms(use_true_random=True))
    records = [_valid(rnd, i) if kind >= BROKEN_KINDS else _broken(rnd, kind, i)
               for i, kind in enumerate(kinds)]  # fmt: skip
    return records, kinds


def test_mixed_valid_and_broken_records_are_all_scored_or_dead_lettered(
    kafka_bootstrap: str, tmp_path_factory: Any
) -> None:
    covered: dict[str, Any] = {"examples": 0, "valid": 0, "kinds": set()}

    @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)  # fmt: skip
    @given(mix=_mixed_records())
    def check(mix: tuple[list[tuple[bytes | None, bytes | None, bool]], list[int]]) -> None:
        records, kinds = mix
        tag = uuid.uuid4().hex[:10]
        topics = {name: f"sw-{tag}.{name}" for name in ("readings", "scores", "alerts", "deadletter", "health")}
        _produce(kafka_bootstrap, topics["readings"], [(k, v) for k, v, _ in records])
        s = _settings(kafka_bootstrap, topics, tmp_path_factory.mktemp("bad"))
        transport = _transport(kafka_bootstrap)
        stats = build_service(s, transport).run(timeout=120, count=len(records))
        transport.close()
        n_valid = sum(ok for *_, ok in records)
        assert (stats.readings, stats.dead_letters) == (n_valid, len(records) - n_valid)
        letters = _read_all(kafka_bootstrap, topics["deadletter"], "deadletter",
                            expect=len(records) - n_valid)
        assert len(letters) == len(records) - n_valid
        assert all(letter.reason and letter.code for letter in letters)
        # each letter names the position of a broken record and carries its bytes, and
        # the letters' positions hold exactly the broken records
        raw = _raw(kafka_bootstrap, topics["readings"])
        at = [raw[(d.partition, d.offset)] for d in letters]
        assert all(d.topic == topics["readings"] for d in letters)
        assert all(dead_letter_holds(d, value) for d, (_, value) in zip(letters, at, strict=True))
        assert len({(d.partition, d.offset) for d in letters}) == len(letters)
        assert Counter(at) == Counter((k, v) for k, v, ok in records if not ok)
        scores = _read_all(kafka_bootstrap, topics["scores"], "score", expect=n_valid)
        assert len(scores) == n_valid
        covered["examples"] += 1
        covered["valid"] += n_valid
        covered["kinds"] |= {k for k in kinds if k < BROKEN_KINDS}

    check()
    # the examples really were a mix: valid records and every broken recipe went through
    assert covered["examples"] == 4 and covered["valid"] >= 1000
    assert covered["kinds"] == set(range(BROKEN_KINDS))


# --------------------------------------------------------------------------- crash + restart
def _spawn_detector(s: Any, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamwatch.cli", "detect"], env=_env(s),
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


def _count(bootstrap: str, topic: str) -> int:
    """Records on ``topic``; 0 while the detector child has not created it yet."""
    transport = _transport(bootstrap)
    try:
        partitions = transport.partitions_for(topic)
    except TransportError:
        transport.close()
        return 0
    consumer = transport.consumer(None)
    ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    consumer.close()
    transport.close()
    return sum(ends.values())


def _has_topic(bootstrap: str, topic: str, client_config: dict[str, Any]) -> bool:
    transport = _transport(bootstrap, client_config=client_config)
    try:
        transport.partitions_for(topic)
        return True
    except TransportError:
        return False
    finally:
        transport.close()


def _scored(bootstrap: str, topic: str) -> set[tuple[str, float]]:
    return {(s.stream_id, s.ts) for s in _read_all(bootstrap, topic, "score")}


class _Scored:
    """The distinct readings scored so far on a topic, read as they arrive (the topic's
    record count would include the Scores a restart sends again)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.seen: set[tuple[str, float]] = set()
        self._transport: Any = None
        self._consumer: Any = None

    def count(self) -> int:
        if self._consumer is None:
            transport = _transport(self.bootstrap)
            try:
                partitions = transport.partitions_for(self.topic)
            except TransportError:  # the detector child has not created it yet
                transport.close()
                return 0
            self._transport, self._consumer = transport, transport.consumer(None)
            self._consumer.assign([TopicPartition(self.topic, p) for p in range(partitions)])
        while batch := self._consumer.poll(0.05, 50_000):
            for m in batch:
                score = schema.decode("score", m.value)
                self.seen.add((score.stream_id, score.ts))
        return len(self.seen)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._transport.close()


def _restart_until_every_reading_is_scored(s: Any, log: Path, bootstrap: str, topic: str,
                                           readings: list[Reading]) -> None:  # fmt: skip
    """A new detector process runs until every reading has a Score on ``topic``, then
    stops gracefully (SIGTERM, exit code 0)."""
    proc = _spawn_detector(s, log)
    try:
        want = {(r.stream_id, r.ts) for r in readings}
        _wait_until(lambda: _scored(bootstrap, topic) >= want, 240,
                    "every reading to have a score")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-3000:]


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """The process, killed on the way out if it is still running (a failed test)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# the directory store (same selection rules, also tested on the memory bus in tests/unit)
# is marked slow: `make test` (CI) leaves it out, `make test-all` runs it
# flush_every_batches 8: outputs acknowledged every 8 batches and before each checkpoint;
# a kill -9 between loses the unflushed ones, which the restart must produce again
@pytest.mark.xdist_group("cpu-heavy")  # detector processes: one such test at a time
@pytest.mark.parametrize(("store", "flush_every", "client"), [
    ("kafka", 1, "kafka-python"), ("kafka", 8, "kafka-python"), ("kafka", 8, "confluent"),
    pytest.param("directory", 1, "kafka-python", marks=pytest.mark.slow)])
def test_kill_9_at_random_points_then_restart_loses_nothing_and_keeps_alert_ids(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, store: str, flush_every: int,
    client: str,
) -> None:
    readings, _ = icu_readings()
    _produce(kafka_bootstrap, topics["readings"], _readings_records(readings))
    want = _direct_alerts(readings, tmp_path / "direct")
    assert len(opened(want)) >= 3
    s = _settings(kafka_bootstrap, topics, tmp_path / "ckpt", client=client,
                  max_poll_records=500, state_store=store, flush_every_batches=flush_every)
    log = tmp_path / "detector.log"
    rng = random.Random(4)
    scored = _Scored(kafka_bootstrap, topics["scores"])
    at_kill: list[int] = []
    try:
        for kill in range(3):  # kill -9 three times at random points, restart each time
            target = len(readings) * (kill + 1) // 4 + rng.randint(-800, 800)
            # past the last kill point, which a slow first checkpoint may have pushed on
            target = max(target, at_kill[-1] + 300) if at_kill else target
            proc = _spawn_detector(s, log)
            # the first process also lives to its first checkpoint, so a restart restores
            # one (a fast detector reached its kill point before that in some runs)
            written = (lambda: "msg='checkpoint written'" in log.read_text()) if kill == 0 \
                else (lambda: True)
            try:
                _wait_until(lambda t=target, p=proc, w=written: (
                    scored.count() >= t and w()) or p.poll() is not None,
                    180, f"{target} readings scored")
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
            at_kill.append(scored.count())
    finally:
        scored.close()
    # several points mid-stream, each after new readings were scored since the last one (a
    # slow first checkpoint on a loaded machine can push the last kill past the stream's end)
    mid = [k for k in at_kill if k < len(readings)]
    assert len(mid) >= 2 and mid == sorted(set(mid)), at_kill
    _restart_until_every_reading_is_scored(s, log, kafka_bootstrap, topics["scores"], readings)
    # every event of the uninterrupted run, same ids and seq (replays add duplicates only)
    assert alert_events(_read_all(kafka_bootstrap, topics["alerts"], "alert")) == want
    if store == "kafka":  # the state went through the changelog, not the directory
        assert not (tmp_path / "ckpt").exists()
        # the last process and each killed one that lived to its first checkpoint
        assert len(_state_heads(kafka_bootstrap, topics["state"])) >= 2
        assert re.search(r"msg='partitions assigned' .*restored=[1-9]", log.read_text())


@pytest.mark.xdist_group("cpu-heavy")
def test_kill_9_before_the_first_checkpoint_then_restart_scores_every_reading(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path
) -> None:
    """Offsets are committed only once a checkpoint covers them: a detector killed before
    its first checkpoint has committed nothing, so its successor starts from the first
    reading. (Committing what was polled would skip what the dead one had scored.)"""
    readings, _ = icu_readings()
    _produce(kafka_bootstrap, topics["readings"], _readings_records(readings))
    s = _settings(kafka_bootstrap, topics, tmp_path / "ckpt", max_poll_records=500,
                  checkpoint_every_s=3600.0)
    log = tmp_path / "detector.log"
    scored = _Scored(kafka_bootstrap, topics["scores"])
    proc = _spawn_detector(s, log)
    try:
        _wait_until(lambda: scored.count() >= len(readings) // 3 or proc.poll() is not None,
                    180, "a third of the readings scored")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        scored.close()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert "checkpoint written" not in log.read_text()
    _restart_until_every_reading_is_scored(s, log, kafka_bootstrap, topics["scores"], readings)


# --------------------------------------------------------------------------- scale-out
# the directory store (same selection rules, also tested on the memory bus in tests/unit)
# is marked slow: `make test` (CI) leaves it out, `make test-all` runs it
@pytest.mark.xdist_group("cpu-heavy")
@pytest.mark.parametrize(("store", "client"), [
    ("kafka", "kafka-python"), ("kafka", "confluent"),
    pytest.param("directory", "kafka-python", marks=pytest.mark.slow)])
def test_two_detectors_in_one_group_one_killed_mid_stream_every_reading_scored(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, store: str, client: str
) -> None:
    readings, _ = icu_readings()
    _produce(kafka_bootstrap, topics["readings"], _readings_records(readings))
    s = _settings(kafka_bootstrap, topics, tmp_path / "ckpt", client=client,
                  max_poll_records=300, state_store=store)
    log = tmp_path / "detectors.log"
    a, b = _spawn_detector(s, log), _spawn_detector(s, log)
    try:
        _wait_until(lambda: _count(kafka_bootstrap, topics["scores"]) >= len(readings) // 3
                    or a.poll() is not None, 180, "a third of the scores")
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        want_scores = {(r.stream_id, r.ts) for r in readings}
        _wait_until(lambda: _scored(kafka_bootstrap, topics["scores"]) >= want_scores, 240,
                    "the survivor to score every reading")
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    assert a.returncode == -signal.SIGKILL, log.read_text()[-3000:]  # killed, not died
    assert b.returncode == 0, log.read_text()[-3000:]


# --------------------------------------------------------------------------- outage
@pytest.fixture
def private_broker() -> Iterator[TansuBroker]:
    """A broker of this test's own, since it is paused for 20 s."""
    with TansuBroker() as broker:
        yield broker


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_broker_paused_20s_then_resumed_the_detector_carries_on_by_itself(
    private_broker: TansuBroker, topics: dict[str, str], tmp_path: Path,
    caplog: pytest.LogCaptureFixture, client: str,
) -> None:
    """Paused with work in flight: a backlog left to read and outputs to deliver, and
    readings produced only after the pause. All of them end with a Score."""
    caplog.set_level(logging.INFO, logger="streamwatch.pipeline")
    readings, _ = icu_readings(patients=8, minutes=12)
    records = _readings_records(readings)
    early = len(records) * 3 // 4
    bootstrap = private_broker.bootstrap
    _produce(bootstrap, topics["readings"], records[:early])
    s = _settings(bootstrap, topics, tmp_path / "ckpt", client=client, max_poll_records=50)
    transport = _transport(bootstrap, client)
    service = build_service(s, transport)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(stats=service.run(timeout=240, count=len(records))))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while service.stats.readings < 300 and time.monotonic() < deadline:
            time.sleep(0.005)
        private_broker.pause()
        at_pause = service.stats.readings
        assert 300 <= at_pause < early, "the pause must come with a backlog left to read"
        paused = len(caplog.records)
        time.sleep(20)
        # the outage is in the log while it lasts, not only after it
        during = [r.getMessage() for r in caplog.records[paused:]]
        assert any(m.startswith(("outputs not acknowledged yet; waiting for the broker",
                                 "could not deliver the outputs; resending",
                                 "broker error; retrying")) for m in during), during
        private_broker.resume()
        _produce(bootstrap, topics["readings"], records[early:])
        worker.join(240)
    finally:
        service.stop()
        worker.join(30)
        transport.close()
    assert not worker.is_alive()
    assert result["stats"].readings == len(records)
    assert _scored(bootstrap, topics["scores"]) == {(r.stream_id, r.ts) for r in readings}
    assert any(r.getMessage().startswith("broker answers again") for r in caplog.records)


def test_a_detector_started_before_its_broker_waits_for_it(
    topics: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port nobody listens on yet
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bootstrap = f"127.0.0.1:{port}"
    s = _settings(bootstrap, topics, tmp_path / "ckpt")
    log = tmp_path / "detector.log"
    with _reaped(_spawn_detector(s, log)) as proc:
        _wait_until(lambda: log.read_text().count("no broker answers yet; retrying") >= 2
                    or proc.poll() is not None, 60, "two retry lines")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert bootstrap in log.read_text() and "STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS" in log.read_text()
        with TansuBroker(port) as _broker:
            readings, _ = icu_readings(patients=2, minutes=4)
            _produce(bootstrap, topics["readings"], _readings_records(readings))
            _wait_until(lambda: _count(bootstrap, topics["scores"]) >= len(readings) or
                        proc.poll() is not None, 120, "a score per reading")
            scored = _scored(bootstrap, topics["scores"])
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert scored == {(r.stream_id, r.ts) for r in readings}


@pytest.mark.parametrize(("client", "store", "second_signal"), [
    ("kafka-python", "kafka", False), ("kafka-python", "kafka", True),
    ("confluent", "kafka", False), ("confluent", "directory", False),
    pytest.param("kafka-python", "directory", False, marks=pytest.mark.slow)])
def test_a_stop_while_the_broker_is_paused_ends_soon_and_says_what_it_could_not_do(
    private_broker: TansuBroker, topics: dict[str, str], tmp_path: Path, client: str,
    store: str, second_signal: bool,
) -> None:
    """SIGTERM with the broker gone ends within a minute, and a second signal at once.

    With the state on Kafka, the last checkpoint cannot be written: the exit status says so
    (the next start replays). With it in a directory, the checkpoint is written and only
    its offset commit fails, after the commit's own bound: a background checkpoint's commit
    then a final one. (A stop used to wait for the client's delivery timeout, ~155 s, and
    with confluent-kafka for as long as the broker was gone: its commit had no bound.)"""
    bootstrap = private_broker.bootstrap
    readings, _ = icu_readings(patients=2, minutes=4)
    _produce(bootstrap, topics["readings"], _readings_records(readings))
    s = _settings(bootstrap, topics, tmp_path / "ckpt", client=client, state_store=store)
    log = tmp_path / "detector.log"
    env = {**_env(s), "STREAMWATCH_SERVICE__FLUSH_TIMEOUT_S": "2",
           "STREAMWATCH_SERVICE__HEALTH_EVERY_S": "3600"}  # nothing left to flush at the stop
    with _reaped(subprocess.Popen([sys.executable, "-m", "streamwatch.cli", "detect"], env=env,
                                  stdout=log.open("ab"), stderr=subprocess.STDOUT)) as proc:
        _wait_until(lambda: _count(bootstrap, topics["scores"]) >= len(readings)
                    or proc.poll() is not None, 120, "a score per reading")
        private_broker.pause()
        try:
            if store == "directory":  # a background checkpoint's commit is waiting
                time.sleep(1)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            if second_signal:
                _wait_until(lambda: "signal again to exit at once" in log.read_text(), 10,
                            "the stop to begin")
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
            else:
                proc.wait(60)
            took = time.monotonic() - started
        finally:
            private_broker.resume()
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    if second_signal:
        assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
        assert "second signal: exiting now without a final checkpoint" in text
        assert took < 10
    elif store == "kafka":
        assert proc.returncode == 1, text[-3000:]
        assert "could not checkpoint on shutdown" in text
        assert took < 60
    else:
        assert proc.returncode == 0, text[-3000:]
        assert "offset commit failed" in text and "final_checkpoint=True" in text
        assert "could not checkpoint on shutdown" not in text
        assert took < 60


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_the_detector_runs_over_tls_with_the_client_settings_passed_through(
    topics: dict[str, str], tmp_path: Path, client: str
) -> None:
    """``kafka.client_config`` (``security_protocol``, ``ssl_cafile``; librdkafka's names
    for confluent-kafka) reaches every client the detector opens: consumer, producer, state
    store, admin. The broker is reachable only through TLS (``tests/tls_proxy.py``), so a
    reading gets its Score and the stop its final checkpoint only if all of them use it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    tls = {**CLIENT_CONFIG, "security_protocol": "SSL", "ssl_cafile": str(cafile)}
    readings, _ = icu_readings(patients=2, minutes=3)
    with TlsProxy(context) as proxy, TansuBroker(advertised=proxy.address) as broker:
        proxy.upstream = broker.bootstrap
        bus = _transport(proxy.address, client, tls)
        bus.create_topics({topics["readings"]: PARTITIONS})
        producer = bus.producer()
        for key, value in _readings_records(readings):
            producer.send(topics["readings"], value, key)
        producer.flush(30)
        producer.close()
        bus.close()
        s = _settings(proxy.address, topics, tmp_path / "ckpt", client=client,
                      client_config=tls)
        log = tmp_path / "detector.log"
        with _reaped(_spawn_detector(s, log)) as proc:
            _wait_until(lambda: _has_topic(proxy.address, topics["scores"], tls)
                        or proc.poll() is not None, 60, "the detector to create its topics")
            scores = _read_all(proxy.address, topics["scores"], "score", expect=len(readings),
                               timeout=120, client_config=tls)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert {(x.stream_id, x.ts) for x in scores} == {(r.stream_id, r.ts) for r in readings}
    assert "final_checkpoint=True" in text and "ssl_cafile" in text  # the effective config
    assert proxy.handshakes >= 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_sigint_or_a_hangup_stops_gracefully_with_a_final_checkpoint(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, sig: int
) -> None:
    readings, _ = icu_readings(patients=2, minutes=3)
    _produce(kafka_bootstrap, topics["readings"], _readings_records(readings))
    s = _settings(kafka_bootstrap, topics, tmp_path / "ckpt", checkpoint_every_s=3600.0)
    log = tmp_path / "detector.log"
    with _reaped(_spawn_detector(s, log)) as proc:
        _wait_until(lambda: _count(kafka_bootstrap, topics["scores"]) >= len(readings)
                    or proc.poll() is not None, 120, "a score per reading")
        proc.send_signal(sig)
        proc.wait(60)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "msg='checkpoint written'" in text and "final_checkpoint=True" in text


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_consumer_lag_counts_every_reading_not_yet_scored_and_asks_the_broker_nothing(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, client: str
) -> None:
    """The lag of the metrics and health records is the readings of this process's
    partitions not scored yet, held in the event-time merge or not fetched (it read 3,300
    of a 57,600 backlog), worked out from cached offsets: confluent's position() of an
    empty partition asked the broker and stalled the loop ~0.5 s per partition a tick."""
    readings, _ = icu_readings(patients=3, minutes=30)  # 3 streams: some partitions empty
    _produce(kafka_bootstrap, topics["readings"], _readings_records(readings))
    s = _settings(kafka_bootstrap, topics, tmp_path / "ckpt", client=client,
                  max_poll_records=50, health_every_s=0.05)
    transport = _transport(kafka_bootstrap, client)
    service = build_service(s, transport)
    seen: list[tuple[int | None, int]] = []  # (lag, readings scored) with partitions held
    asked: list[str] = []
    lag = service._lag

    def recorded() -> int | None:
        consumer = service._consumer
        calls = {name: getattr(consumer, name) for name in ("position", "end_offsets")}
        for name, call in calls.items():
            setattr(consumer, name, lambda *a, _n=name, _c=call: asked.append(_n) or _c(*a))
        try:
            value = lag()
        finally:
            for name, call in calls.items():
                setattr(consumer, name, call)
        if service._assigned:
            seen.append((value, service.stats.readings))
        return value

    service._lag = recorded  # type: ignore[method-assign]
    try:
        assert service.run(timeout=120, count=len(readings)).readings == len(readings)
    finally:
        transport.close()
    known = [(value, done) for value, done in seen if value is not None]
    # (how many ticks fall in the backlog depends on the machine: the merge may hold a
    # partition's readings until the others have shown theirs, then score them at once)
    assert len(known) >= 2 and not asked, (len(known), asked)
    assert all(value == len(readings) - done for value, done in known), known[:10]
    assert any(value > len(readings) // 2 for value, _ in known)  # measured during the backlog


# --------------------------------------------------------------------------- flow control
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_partition_running_ahead_is_paused_and_every_reading_comes_in_event_time_order(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, client: str
) -> None:
    """The service's flow control on the real clients: one stream on one partition, five
    on another, so the first runs ahead in event time as the client hands it out. It is
    paused (a real ``pause`` on the client) and resumed when drained: every reading is
    scored, and the detector sees them in event-time order although the merge could hold
    only 400 (beyond which readings would leave out of order). A resume that never
    delivers again (kafka-python 3.0.12's parked records, ``transport.kafka.unpark_resumed``)
    fails here as readings left unscored."""
    from streamwatch.transport import partition_for_key

    readings, _ = icu_readings(patients=30, minutes=25)
    ids = sorted({r.stream_id for r in readings})
    part = {s: partition_for_key(s.encode(), PARTITIONS) for s in ids}
    ahead = next(s for s in ids if part[s] == 0)
    behind = [s for s in ids if part[s] == 1][:5]
    assert len(behind) == 5
    keep = {ahead, *behind}
    readings = [r for r in readings if r.stream_id in keep]
    _produce(kafka_bootstrap, topics["readings"], _readings_records(readings))

    s = _settings(kafka_bootstrap, topics, tmp_path / "ckpt", client=client,
                  max_poll_records=100, buffered_per_partition=40)
    transport = _transport(kafka_bootstrap, client)
    service = build_service(s, transport)
    service._merge.max_held = 400
    seen, paused = record_feed_order(service)
    stats = service.run(timeout=120, count=len(readings))
    transport.close()
    assert stats.readings == len(readings) == len(seen)
    assert seen == sorted(seen)
    assert any(paused), "the scenario must make the service pause a partition"


@pytest.mark.xdist_group("cpu-heavy")
@pytest.mark.parametrize("client", [
    "kafka-python", pytest.param("confluent", marks=pytest.mark.slow)])
def test_a_detector_frozen_past_its_session_drops_what_it_lost_without_a_checkpoint(
    kafka_bootstrap: str, topics: dict[str, str], tmp_path: Path, client: str
) -> None:
    """A detector stopped (SIGSTOP: a paused VM, a stuck host) for longer than its session
    loses its partitions to the other member while it is away. Back (SIGCONT), it finds
    them lost: it drops their state without a checkpoint or a commit (the other member
    owns them and has moved on: a checkpoint of them now would put an older line of their
    state in the store beside the new owner's), rejoins, and every reading ends with a
    Score. (Not asserted: what it sent between its return and its noticing the loss, which
    with kafka-python included an alert's open that the new owner's line never closes;
    see the README. Two processes train two models, so their alerts are not compared
    with one process's.)"""
    readings, _ = icu_readings()
    _produce(kafka_bootstrap, topics["readings"], _readings_records(readings))
    s = _settings(kafka_bootstrap, topics, tmp_path / "ckpt", client=client,
                  max_poll_records=300)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    scored = _Scored(kafka_bootstrap, topics["scores"])
    with _reaped(_spawn_detector(s, log_a)) as a, _reaped(_spawn_detector(s, log_b)) as b:
        try:
            _wait_until(lambda: ("msg='checkpoint written'" in log_a.read_text()
                                 and scored.count() >= len(readings) // 4)
                        or a.poll() is not None, 180, "a checkpoint of a and a quarter scored")
            assigned_b = log_b.read_text().count("partitions assigned")
            a.send_signal(signal.SIGSTOP)
            # the session (2 s) ends, the group rebalances: b is given a's partitions
            _wait_until(lambda: log_b.read_text().count("partitions assigned") > assigned_b
                        or b.poll() is not None, 60, "b to be given a's partitions")
            a.send_signal(signal.SIGCONT)

            def since_loss() -> str:
                text = log_a.read_text()
                return text[text.index("partitions lost"):] if "partitions lost" in text else ""

            _wait_until(lambda: "partitions assigned" in since_loss() or a.poll() is not None,
                        60, "a to find its partitions lost and rejoin")
            want_scores = {(r.stream_id, r.ts) for r in readings}
            _wait_until(lambda: _scored(kafka_bootstrap, topics["scores"]) >= want_scores, 240,
                        "every reading to have a score")
        finally:
            scored.close()
            for proc in (a, b):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            a.wait(30)
            b.wait(30)
    text_a = log_a.read_text()
    assert a.returncode == 0 and b.returncode == 0, text_a[-3000:] + log_b.read_text()[-3000:]
    assert "Traceback" not in text_a + log_b.read_text()
    # from the loss to its next assignment a wrote no checkpoint of its own
    after_loss = text_a[text_a.index("partitions lost"):]
    assert "synchronous=True" not in after_loss.split("partitions assigned")[0], after_loss[:3000]
