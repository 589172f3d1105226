"""Every record the detector service and the simulators write validates against the shipped
JSON Schema (what other services check their input with), not only against the Python types
it was generated from: the Score goes through its own encoder on the hot path."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch

from streamwatch import schema
from streamwatch.commands.detect import build_service
from streamwatch.transport import MemoryTransport
from streamwatch.transport.base import ALERTS, DEADLETTER, HEALTH, READINGS, SCORES, TopicPartition
from tests.scenarios import icu_readings, service_settings
from tests.unit.test_service_memory import BAD_RECORDS


def _validator(name: str) -> jsonschema.Draft202012Validator:
    shipped = json.loads((schema.SCHEMA_DIR / f"{name}.v{schema.SCHEMA_VERSION}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(shipped)
    return jsonschema.Draft202012Validator(shipped)


def _raw(transport: MemoryTransport, topic: str) -> list[bytes]:
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(topic, p) for p in range(transport.partitions_for(topic))])
    out: list[bytes] = []
    while batch := consumer.poll(0.05, 100_000):
        out.extend(m.value for m in batch if m.value is not None)
    consumer.close()
    return out


def _errors(name: str, payloads: list[bytes]) -> list[str]:
    validator = _validator(name)
    return [f"{name}: {err.message} in {p[:200]!r}" for p in payloads
            for err in validator.iter_errors(json.loads(p))]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    """One service run with episodes and bad records: the raw bytes of every output topic."""
    torch.set_num_threads(1)
    readings, episodes = icu_readings()  # eight beds, five episodes
    transport = MemoryTransport()
    transport.create_topics({READINGS: 3})
    producer = transport.producer()
    for r in readings:
        producer.send(READINGS, schema.encode(r), r.stream_id.encode())
    for key, value, _code in BAD_RECORDS:
        producer.send(READINGS, value, key)
    producer.send(READINGS, b"\xff\xfe not utf-8", b"icu/bed-01")
    producer.flush()
    settings = service_settings(tmp_path_factory.mktemp("ckpt"), health_every_s=0.05)
    build_service(settings, transport, instance="contract").run(
        timeout=120, count=len(readings) + len(BAD_RECORDS) + 1)
    return {
        "reading": [schema.encode(r) for r in readings],
        "episode": [schema.encode(e) for e in episodes],
        "score": _raw(transport, SCORES),
        "alert": _raw(transport, ALERTS),
        "deadletter": _raw(transport, DEADLETTER),
        "health": _raw(transport, HEALTH),
    }


def test_the_run_wrote_every_kind_of_record(written: dict[str, list[bytes]]) -> None:
    events = {json.loads(a)["event"] for a in written["alert"]}
    assert {"open", "close"} <= events, "the scenario must open and close alerts"
    encodings = {json.loads(d)["payload_encoding"] for d in written["deadletter"]}
    assert encodings == {"utf-8", "base64"}, encodings
    for name, payloads in written.items():
        assert payloads, f"no {name} record written"


@pytest.mark.parametrize("name", sorted(schema.RECORD_TYPES))
def test_every_written_record_validates_against_its_shipped_schema(
    name: str, written: dict[str, list[bytes]]
) -> None:
    errors = _errors(name, written[name])
    assert not errors, f"{len(errors)} invalid, first: {errors[:3]}"


@pytest.mark.parametrize("name", sorted(schema.WRITTEN_ONLY))
def test_a_written_record_without_its_version_is_invalid(
    name: str, written: dict[str, list[bytes]]
) -> None:
    record: dict[str, Any] = json.loads(written[name][0])
    assert record["v"] == schema.SCHEMA_VERSION
    del record["v"]
    assert not _validator(name).is_valid(record)


def test_a_reading_without_a_version_is_valid_and_read_as_version_one(
    written: dict[str, list[bytes]],
) -> None:
    record = json.loads(written["reading"][0])
    del record["v"]
    assert _validator("reading").is_valid(record)
    assert schema.decode("reading", json.dumps(record).encode()).v == 1


def test_a_score_that_breaks_the_contract_is_caught(written: dict[str, list[bytes]]) -> None:
    """The check can fail: a Score with a string threshold is refused by the schema."""
    record = json.loads(written["score"][0])
    record["threshold"] = "high"
    assert _errors("score", [json.dumps(record).encode()])
