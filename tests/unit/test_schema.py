"""The public record contracts: decoding errors name the field; shipped schemas are current."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamwatch import schema
from streamwatch.errors import SchemaError


def _reading(**overrides: object) -> bytes:
    record: dict[str, object] = {
        "v": 1,
        "stream_id": "icu/bed-01",
        "kind": "icu_vitals",
        "ts": 1_700_000_000.5,
        "values": {"hr": 80.0, "spo2": 97.0},
    }
    record.update(overrides)
    return json.dumps(record).encode()


def test_valid_reading_round_trips_through_encode() -> None:
    reading = schema.decode_reading(_reading())
    assert schema.decode_reading(schema.encode(reading)) == reading


@pytest.mark.parametrize(
    ("payload", "field", "code"),
    [
        (b"not json", None, "not_json"),
        (b"[1, 2]", None, "schema"),
        (_reading(values={"hr": "fast"}), "values.hr", "schema"),
        (_reading(values={"hr": True}), "values.hr", "schema"),
        (_reading(ts="yesterday"), "ts", "schema"),
        (_reading(ts=-5), "ts", "schema"),
        (_reading(stream_id=""), "stream_id", "schema"),
        (_reading(stream_id="bed 7; drop table"), "stream_id", "schema"),
        (_reading(stream_id="x" * 129), "stream_id", "schema"),
        (_reading(v=2), "v", "schema"),
        (b'{"v":1,"stream_id":"a","kind":"icu_vitals","ts":1}', "values", "schema"),
        (b'{"v":1,"stream_id":"a","kind":"k","ts":1,"values":{"hr":1e999}}', "values.hr", "non_finite"),
        (b'{"v":1,"stream_id":"a","kind":"icu_vitals","ts":1,"values":{"hr":NaN}}', None, "not_json"),
        (b" " * (schema.MAX_RECORD_BYTES + 1), None, "oversize"),
    ],
)
def test_bad_reading_raises_schema_error_naming_field(
    payload: bytes, field: str | None, code: str
) -> None:
    with pytest.raises(SchemaError) as caught:
        schema.decode_reading(payload)
    assert caught.value.field == field
    assert caught.value.code == code
    assert caught.value.problem


def test_null_channel_is_accepted_as_dropout() -> None:
    reading = schema.decode_reading(_reading(values={"hr": None, "spo2": 95.0}))
    assert reading.values["hr"] is None


def test_alert_id_depends_only_on_stream_and_onset() -> None:
    a = schema.alert_id_for("icu/bed-01", 1000.0)
    assert a == schema.alert_id_for("icu/bed-01", 1000.0)
    assert a != schema.alert_id_for("icu/bed-01", 1001.0)
    assert a != schema.alert_id_for("icu/bed-02", 1000.0)


def test_dead_letter_caps_payload_and_base64_encodes_binary() -> None:
    letter = schema.dead_letter(
        b"\xff\xfe" * 5000, "not_json", "bad", field=None, topic="t", partition=1, offset=9, ts=1.0
    )
    assert letter.payload_encoding == "base64"
    assert letter.payload_truncated and letter.payload_size == 10000
    assert schema.decode("deadletter", schema.encode(letter)) == letter


def test_shipped_json_schemas_match_the_record_types(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for path in schema.write_schemas(tmp_path):
        shipped = schema.SCHEMA_DIR / path.name
        assert shipped.exists(), f"{shipped} missing: run python -m streamwatch.schema"
        assert json.loads(shipped.read_text()) == json.loads(path.read_text()), (
            f"{shipped.name} is stale: run python -m streamwatch.schema"
        )


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(
    stream_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,40}", fullmatch=True),
    ts=st.floats(min_value=0, max_value=4e9),
    values=st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True), st.none() | finite, max_size=8
    ),
)
def test_any_valid_reading_survives_a_round_trip(
    stream_id: str, ts: float, values: dict[str, float | None]
) -> None:
    reading = schema.Reading(stream_id=stream_id, kind="icu_vitals", ts=ts, values=values)
    decoded = schema.decode_reading(schema.encode(reading))
    assert decoded.stream_id == stream_id and math.isclose(decoded.ts, ts)
    assert decoded.values == values
