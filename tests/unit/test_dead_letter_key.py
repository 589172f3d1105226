"""A dead letter keeps the refused record's Kafka key whole: text when it is UTF-8, base64
(``key_encoding``) when it is not, so the bytes come back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamwatch import schema
from streamwatch.commands.detect import build_service
from streamwatch.transport import MemoryTransport
from streamwatch.transport.base import DEADLETTER, READINGS, TopicPartition
from tests.scenarios import service_settings


def _letter(key: bytes | None) -> schema.DeadLetter:
    return schema.dead_letter(b"{bad", "not_json", "bad", field=None, topic="t", partition=0,
                              offset=3, ts=1.0, key=key)  # fmt: skip


def _validator() -> jsonschema.Draft202012Validator:
    shipped = json.loads((schema.SCHEMA_DIR / "deadletter.v1.json").read_text())
    return jsonschema.Draft202012Validator(shipped)


@pytest.mark.parametrize(("key", "text", "encoding"), [
    (b"\xff\xfeicu/bed-1\x00", "//5pY3UvYmVkLTEA", "base64"),
    ("icu/bett-\u00e9".encode(), "icu/bett-\u00e9", "utf-8"),
    (b"", "", "utf-8"),
    (None, None, None),
])  # fmt: skip
def test_the_key_survives_encoding_exactly(key: bytes | None, text: str | None,
                                           encoding: str | None) -> None:  # fmt: skip
    raw = schema.encode(_letter(key))
    assert not list(_validator().iter_errors(json.loads(raw)))
    back = schema.decode("deadletter", raw)
    assert (back.key, back.key_encoding) == (text, encoding)
    assert schema.dead_letter_key(back) == key


@settings(max_examples=200, deadline=None)
@given(key=st.binary(max_size=64))
def test_any_key_bytes_come_back(key: bytes) -> None:
    raw = schema.encode(_letter(key))
    assert schema.dead_letter_key(schema.decode("deadletter", raw)) == key


def test_a_dead_letter_written_before_key_encoding_still_decodes() -> None:
    old = json.loads(schema.encode(_letter(b"icu/bed-1")))
    del old["key_encoding"]
    back = schema.decode("deadletter", json.dumps(old).encode())
    assert back.key_encoding is None and schema.dead_letter_key(back) == b"icu/bed-1"


def test_the_service_dead_letters_a_non_utf8_key_with_its_bytes(tmp_path: Path) -> None:
    transport = MemoryTransport()
    transport.create_topics({READINGS: 6})
    producer = transport.producer()
    producer.send(READINGS, b"{not json", b"\xffbed\x80")
    producer.flush()
    stats = build_service(service_settings(tmp_path), transport, instance="a").run(
        timeout=60, count=1)
    assert stats.dead_letters == 1
    consumer = transport.consumer(None)
    consumer.assign([TopicPartition(DEADLETTER, 0)])
    (msg,) = consumer.poll(1.0, 10)
    consumer.close()
    letter = schema.decode("deadletter", msg.value)
    assert letter.code == "not_json" and letter.key_encoding == "base64"
    assert schema.dead_letter_key(letter) == b"\xffbed\x80"
    assert msg.key == b"\xffbed\x80"  # the dead letter's Kafka key: the record's own bytes
