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
        # an integer too large for a float (math.isfinite raised OverflowError on it)
        (_reading(values={"hr": 10**400}), "values.hr", "non_finite"),
        (_reading(ts=10**400), "ts", "non_finite"),
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
    if field == "ts":  # a timestamp may not be null
        assert "null" not in caught.value.problem


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


# ------------------------------------------------------------- the service's fast decoder
def _mostly(good: list[object], bad: list[object]) -> st.SearchStrategy[object]:
    """Valid most of the time, so that names get cached before they turn up in bad records."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good),
                     st.sampled_from(bad))


_names = _mostly(["hr", "spo2", "temp", "ok.name-2"], ["h r", "", "x" * 40, "9lives"])
_ids = _mostly(["icu/bed-01", "icu/bed-02", "m/1"], ["bad id!", "", "-lead", "a" * 129])
_json_value = st.one_of(st.none(), finite, finite, st.integers(-10**20, 10**20), st.text(max_size=3),
                        st.booleans(), st.just(1e999), st.just(10**400),
                        st.lists(st.integers(), max_size=2))


@st.composite
def _raw_records(draw: st.DrawFn) -> bytes:
    record: dict[str, object] = {
        "v": draw(st.sampled_from([1, 1, 1, 2])),
        "stream_id": draw(_ids),
        "kind": draw(_mostly(["icu_vitals", "machine"], ["Bad", "x-1"])),
        "ts": draw(_mostly([5.0, 1.7e9], [-5.0, 1e999, 10**400, "x"])),
        "values": draw(st.dictionaries(_names, _json_value, max_size=4)),
    }
    if draw(st.integers(0, 10)) == 0:
        del record[draw(st.sampled_from(sorted(record)))]
    raw = json.dumps(record).encode()
    if draw(st.integers(0, 3)) == 0:  # a key given twice (JSON allows it: the last wins)
        key = draw(st.sampled_from(['"stream_id"', '"kind"', '"\\u0073tream_id"', '"k\\u0069nd"']))
        first = draw(st.sampled_from(['"bad id!"', '"Bad"', '"x-1"', '"icu_vitals"', "7"]))
        raw = b"{" + f"{key}: {first}, ".encode() + raw[1:]
    if draw(st.integers(0, 20)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]  # truncated: not JSON
    return raw


def _outcome(decode, raw: bytes) -> object:  # type: ignore[no-untyped-def]
    try:
        return decode(raw)
    except SchemaError as exc:
        return ("error", str(exc), exc.code, exc.field)


@settings(max_examples=300, deadline=None)
@given(st.lists(_raw_records(), min_size=1, max_size=20))
def test_reading_decoder_accepts_and_refuses_exactly_as_decode_reading(raws: list[bytes]) -> None:
    """The fast decoder caches names that passed the strict one: whatever the order of
    records (a name first seen valid, then in a broken record), outcomes must not differ."""
    decoder = schema.ReadingDecoder(max_known=3)  # small: the caches are also cleared
    for raw in raws + raws:
        assert _outcome(decoder.decode, raw) == _outcome(schema.decode_reading, raw)


_valid_records = st.builds(
    lambda sid, kind, ts, values: json.dumps(
        {"v": 1, "stream_id": sid, "kind": kind, "ts": ts, "values": values}).encode(),
    st.sampled_from(["icu/bed-01", "icu/bed-02", "m/1"]), st.sampled_from(["icu_vitals", "machine"]),
    st.sampled_from([5.0, 1.7e9]),
    st.dictionaries(st.sampled_from(["hr", "spo2", "temp", "ok.name-2"]), st.none() | finite,
                    max_size=4),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_raw_records(), max_size=20), st.lists(_valid_records, min_size=1, max_size=20),
       st.none() | st.tuples(st.integers(0, 20), _raw_records()))
def test_decode_many_is_decode_of_each_or_declines(
    seen: list[bytes], valid: list[bytes], insert: tuple[int, bytes] | None
) -> None:
    """``decode_many`` gives what ``decode`` gives record by record, or declines (None)
    when one record would not take the fast path: it never accepts a record that
    ``decode`` refuses. Once every name was seen, valid records are never declined (but for
    a stream_id or kind key given twice or escaped)."""
    decoder = schema.ReadingDecoder()
    for raw in seen:
        _outcome(decoder.decode, raw)
    raws = list(valid)
    if insert is not None:  # maybe broken, maybe not
        raws.insert(insert[0], insert[1])
    many = decoder.decode_many(raws)
    one_by_one = [_outcome(decoder.decode, raw) for raw in raws]
    if many is not None:
        assert many == one_by_one
        assert all(type(r) is schema.Reading for r in many)
    if not any(isinstance(o, tuple) for o in one_by_one):  # all valid, all names now seen
        again = decoder.decode_many(raws)
        # (unless a key is given twice or escaped: the strict decoder decides, one by one)
        assert again == one_by_one or (again is None and not all(map(schema._names_once, raws)))
    else:
        assert many is None
        assert decoder.decode_many(raws) is None
    assert decoder.decode_many([*raws, None]) is None  # a tombstone: record by record


def test_decode_many_declines_an_oversize_record() -> None:
    decoder = schema.ReadingDecoder()
    ok = _reading()
    decoder.decode(ok)
    assert decoder.decode_many([ok, ok]) == [decoder.decode(ok)] * 2
    padded = ok[:-1] + b" " * schema.MAX_RECORD_BYTES + b"}"
    assert decoder.decode_many([ok, padded]) is None
    with pytest.raises(SchemaError, match="more than"):
        decoder.decode(padded)


@pytest.mark.parametrize("change", [
    {"stream_id": "bad id!"}, {"stream_id": "a" * 129}, {"kind": "Bad"},
    {"values": {"hr": 80.0, "h r": 1.0}}, {"values": {"x" * 33: 1.0}}, {"values": {"9lives": 1.0}},
    {"ts": -1.0}, {"values": {"hr": "80"}}, {"v": 2},
])
def test_reading_decoder_refuses_a_bad_name_even_after_the_rest_was_seen_valid(
    change: dict[str, object],
) -> None:
    decoder = schema.ReadingDecoder()
    decoder.decode(_reading(values={"hr": 80.0, "spo2": 97.0, "ok_name": 1.0}))
    bad = _reading(**change)
    assert _outcome(decoder.decode, bad) == _outcome(schema.decode_reading, bad)
    assert isinstance(_outcome(schema.decode_reading, bad), tuple)


_GOOD = b'{"stream_id":"u/1","kind":"univariate","ts":5,"values":{"value":1}}'


@pytest.mark.parametrize(("data", "code", "field", "says"), [
    (b"", "empty", None, "empty"),
    # nested ~1,000 deep in 2 KB: msgspec and json raise RecursionError, which escaped
    (_GOOD[:-1] + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}", "not_json", None, "nested"),
    (_GOOD.replace(b'{"value":1}', b'{"value":' + b"[" * 3000 + b"]" * 3000 + b"}"),
     "schema", "values", "got `array`"),
    # the patterns end in `$`, which Python also matches before a final newline
    (_GOOD.replace(b'"u/1"', b'"u/1\\n"'), "schema", "stream_id", "newline"),
    (_GOOD.replace(b'"univariate"', b'"univariate\\n"'), "schema", "kind", "newline"),
    (_GOOD.replace(b'"value"', b'"value\\n"'), "schema", "values", "newline"),
    # a key twice: both decoders keep the last value, the strict one checks the first too
    (b'{"stream_id":"u 1",' + _GOOD[1:], "schema", "stream_id", "regex"),
    (b'{"kind":"Uni",' + _GOOD[1:], "schema", "kind", "regex"),
    (b'{"\\u0073tream_id":"u 1",' + _GOOD[1:], "schema", "stream_id", "regex"),
])
def test_records_that_broke_the_decoders_are_refused_alike_by_both(
    data: bytes, code: str, field: str | None, says: str
) -> None:
    fast = schema.ReadingDecoder()
    fast.decode(_GOOD)  # its names known: the fast path is tried first
    for decoder in (schema.decode_reading, fast.decode):
        with pytest.raises(SchemaError) as err:
            decoder(data)
        assert (err.value.code, err.value.field) == (code, field)
        assert says in str(err.value)
    assert fast.decode_many([_GOOD, data]) is None  # declined: record by record
