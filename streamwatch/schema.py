"""Versioned event records and their JSON (de)serialisation: the public contracts.

Every record carries ``"v"``, the schema version. Consumers in other services read
``Score`` and ``Alert`` from Kafka; their JSON Schemas ship in ``streamwatch/schemas/``
(regenerate with ``python -m streamwatch.schema``; a test checks they match).

>>> r = decode_reading(b'{"v":1,"stream_id":"icu/bed-07","kind":"icu_vitals",'
...                    b'"ts":1700000000.0,"values":{"hr":82.0,"spo2":null}}')
>>> r.stream_id, r.values["hr"], r.values["spo2"]
('icu/bed-07', 82.0, None)
>>> decode_reading(b'{"v":1,"stream_id":"x","kind":"k","ts":1.0,"values":{"hr":"high"}}')
Traceback (most recent call last):
...
streamwatch.errors.SchemaError: values.hr: Expected `float | null`, got `str`
"""

from __future__ import annotations

import base64
import inspect
import json
import math
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from itertools import chain, repeat
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import msgspec
import numpy as np

from streamwatch.errors import SchemaError

SCHEMA_VERSION = 1
"""Current version of every record type; bumped on any incompatible change."""

STREAM_ID_MAX = 128
STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
CHANNEL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
KIND_PATTERN = r"^[a-z][a-z0-9_]*$"
MAX_CHANNELS = 64
MAX_RECORD_BYTES = 64 * 1024
"""A Reading larger than this is refused before it is parsed."""

StreamId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=STREAM_ID_MAX,
        pattern=STREAM_ID_PATTERN,
        description="Stable id of one stream, e.g. 'icu/bed-07'. Also the Kafka key.",
    ),
]
Channel = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=CHANNEL_PATTERN)]
Kind = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=64, pattern=KIND_PATTERN),
]
EpochSeconds = Annotated[float, msgspec.Meta(ge=0, description="Epoch seconds (UTC).")]
Severity = Literal["warning", "critical"]
AlertEvent = Literal["open", "update", "close"]
Version = Literal[1]

SEVERITY_RANK: dict[str, int] = {"warning": 1, "critical": 2}


class _CheckedReading(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One observation of one stream (topic ``streamwatch.readings``, key = stream_id).

    A channel may be missing or ``null`` (sensor dropout).
    """

    stream_id: StreamId
    kind: Kind
    ts: EpochSeconds
    values: Annotated[dict[Channel, float | None], msgspec.Meta(max_length=MAX_CHANNELS)]
    v: Version = 1


# the shipped JSON Schema (and its $defs key) names the record type Reading
_CheckedReading.__name__ = _CheckedReading.__qualname__ = "Reading"


class Reading(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """One observation of one stream (topic ``streamwatch.readings``, key = stream_id).

    A channel may be missing or ``null`` (sensor dropout).

    The patterns and lengths of ``stream_id``, ``kind`` and the channel names (the JSON
    Schema's, ``StreamId``, ``Kind``, ``Channel``) are checked when a record is decoded
    (``decode_reading``, ``decode("reading", ...)``, ``ReadingDecoder``), not carried by
    this type: the service's decoder then decodes straight into it, with no second
    object per record, once those names have passed the check (``ReadingDecoder``).
    Like any Struct, a Reading built in Python is not validated.
    """

    stream_id: str
    kind: str
    ts: EpochSeconds
    values: Annotated[dict[str, float | None], msgspec.Meta(max_length=MAX_CHANNELS)]
    v: Version = 1


class ChannelForecast(msgspec.Struct, frozen=True):
    """Forecast of one channel for the reading it is attached to."""

    mean: float
    std: float


class Score(msgspec.Struct, frozen=True):
    """The detector's verdict on one accepted reading (topic ``streamwatch.scores``)."""

    stream_id: StreamId
    kind: Kind
    ts: EpochSeconds
    values: dict[str, float | None]
    forecast: dict[str, ChannelForecast]
    channel_scores: dict[str, float | None]
    score: float
    threshold: float | None
    anomalous: bool
    warming_up: bool
    model: str
    model_version: int
    hard_limit: Severity | None = None
    hard_limit_channels: list[str] = msgspec.field(default_factory=list)
    v: Version = 1


class ChannelExplanation(msgspec.Struct, frozen=True):
    """Why one channel takes part in an alert: observed versus the expected band."""

    channel: str
    observed: float | None
    expected: float | None
    lower: float | None
    upper: float | None
    score: float | None
    direction: Literal["high", "low", "missing", "flat"] | None = None


class Explanation(msgspec.Struct, frozen=True):
    summary: str
    channels: list[ChannelExplanation]
    duration_s: float
    reasons: list[Literal["model", "hard_limit"]]


class Alert(msgspec.Struct, frozen=True):
    """One lifecycle event of an alert (topic ``streamwatch.alerts``, key = stream_id).

    ``alert_id`` is deterministic: the same stream and the same onset give the same id,
    and ``seq`` numbers the events of one alert (0 for ``open``, then 1, 2, ... for each
    ``update`` and the ``close``), so a replay after a crash produces duplicates a consumer
    can drop by (alert_id, event, seq).
    """

    alert_id: str
    event: AlertEvent
    stream_id: StreamId
    kind: Kind
    ts: EpochSeconds
    onset_ts: EpochSeconds
    end_ts: EpochSeconds | None
    severity: Severity
    peak_score: float
    explanation: Explanation
    model_version: int
    seq: int = 0
    v: Version = 1


DeadLetterCode = Literal[
    "oversize",
    "empty",
    "not_json",
    "schema",
    "non_finite",
    "unknown_kind",
    "out_of_range",
    "future_timestamp",
    "key_mismatch",
    "internal_error",
]


class DeadLetter(msgspec.Struct, frozen=True):
    """A record the detector refused, with a precise reason (topic ``streamwatch.deadletter``).

    ``code`` is a small fixed vocabulary (for metrics and routing); ``reason`` is the
    precise human-readable text; ``field`` the dotted path of the offending field.
    ``key`` is the record's Kafka key as ``key_encoding`` says: UTF-8 text, or base64 when
    the key's bytes are not UTF-8; both None when the record had no key. Records written
    before ``key_encoding`` existed lack it: their ``key`` is text, a non-UTF-8 key's
    bytes replaced by U+FFFD.
    """

    code: DeadLetterCode
    reason: str
    field: str | None
    topic: str
    partition: int
    offset: int
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    payload_size: int
    payload_truncated: bool
    ts: EpochSeconds
    key: str | None = None
    key_encoding: Literal["utf-8", "base64"] | None = None
    v: Version = 1


class Episode(msgspec.Struct, frozen=True):
    """A labelled injected episode (topic ``streamwatch.truth``), for evaluation only."""

    episode_id: str
    stream_id: StreamId
    kind: Kind
    type: str
    category: Literal["clinical", "artefact", "fault"]
    onset_ts: EpochSeconds
    end_ts: EpochSeconds
    channels: list[str]
    v: Version = 1


class Health(msgspec.Struct, frozen=True):
    """Periodic model/service health of one detector process (topic ``streamwatch.health``).

    Not part of DESIGN.md's original four contracts: added so the dashboard (and any
    monitoring service) can show model health across scaled-out detector processes
    without scraping each process's metrics endpoint.
    """

    detector_id: str
    ts: EpochSeconds
    readings_per_s: float
    consumer_lag: int | None
    training_loss: float | None
    training_steps: int
    dead_letters: dict[str, int]
    open_alerts: int
    streams: int
    batch_latency_ms: float | None = None
    v: Version = 1


RECORD_TYPES: dict[str, type[msgspec.Struct]] = {
    "reading": _CheckedReading,  # decoded as such, then held as a Reading (``decode``)
    "score": Score,
    "alert": Alert,
    "deadletter": DeadLetter,
    "episode": Episode,
    "health": Health,
}

_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(t) for name, t in RECORD_TYPES.items()
}
_AT_PATH = re.compile(r" - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")


def alert_id_for(stream_id: str, onset_ts: float) -> str:
    """Deterministic alert id: same stream + same onset => same id.

    >>> alert_id_for("icu/bed-07", 1700000000.0) == alert_id_for("icu/bed-07", 1700000000.0)
    True
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"streamwatch:{stream_id}|{onset_ts:.6f}"))


def encode(record: msgspec.Struct) -> bytes:
    """Serialise any record to compact UTF-8 JSON."""
    return _encoder.encode(record)


def _schema_error(exc: msgspec.DecodeError | msgspec.ValidationError) -> SchemaError:
    text = str(exc)
    match = _AT_PATH.search(text)
    absent = _MISSING.match(text)
    if absent is not None:
        return SchemaError("required field is missing", field=absent.group("name"))
    if match is None:
        if isinstance(exc, msgspec.ValidationError):
            return SchemaError(text)
        return SchemaError(f"not valid JSON: {text}", code="not_json")
    path = match.group("path").lstrip(".")
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\[\.\.\.\]", ".<key>", path)
    problem = text[: match.start()]
    if problem == "Number out of range":
        finite = "must be a finite number" + ("" if path == "ts" else " or null")
        return SchemaError(finite, field=path or None, code="non_finite")
    if match.group("key"):
        problem = f"bad channel name: {problem}"
    if problem.startswith("Object missing required field"):
        missing = problem.split("`")[1]
        path = f"{path}.{missing}" if path else missing
        problem = "required field is missing"
    return SchemaError(problem, field=path or None)


def decode(name: str, data: bytes | str) -> Any:
    """Decode one record of type ``name`` (see ``RECORD_TYPES``); raises ``SchemaError``."""
    try:
        record = _decoders[name].decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _schema_error(exc) from None
    except RecursionError:
        raise _too_deep() from None
    if name != "reading":
        return record
    reading = _held(record)
    _check_line_end(reading)
    return reading


def _too_deep() -> SchemaError:
    """msgspec and the stdlib parser raise ``RecursionError`` on deeply nested JSON (~1,000
    levels fit in a 2 KB record): a bad record like any other, not a crash."""
    return SchemaError("not valid JSON for this record: nested too deeply", code="not_json")


_NAME_FIELDS = (("stream_id", STREAM_ID_PATTERN), ("kind", KIND_PATTERN))


def _check_line_end(reading: Reading) -> None:
    """The name patterns end in ``$``, which also matches before a final newline (Python's
    rule; JSON Schema's regex, where the contract's consumers check them, has no such
    exception): a stream id, kind or channel name ending in one is refused here."""
    for name, pattern in _NAME_FIELDS:
        if getattr(reading, name).endswith("\n"):
            raise SchemaError(f"Expected `str` matching regex {pattern!r} (it ends in a "
                              "newline)", field=name)
    for channel in reading.values:
        if channel.endswith("\n"):
            raise SchemaError(f"bad channel name: Expected `str` matching regex "
                              f"{CHANNEL_PATTERN!r} (it ends in a newline)", field="values")


def _held(checked: _CheckedReading) -> Reading:
    """The ``Reading`` of a record that passed the checked shape."""
    return Reading(checked.stream_id, checked.kind, checked.ts, checked.values, checked.v)


def _bad_value_key(data: bytes | str) -> str:
    """On the error path only: name the channel whose value has the wrong type."""
    try:  # the stdlib parser reads 1e999 as inf where msgspec refuses it
        values = json.loads(data).get("values", {})
    except (ValueError, AttributeError, RecursionError):
        return "values"
    for channel, value in values.items() if isinstance(values, dict) else ():
        if value is None:
            continue
        if not _finite_number(value):
            return f"values.{channel}"
    return "values"


def _finite_number(value: object) -> bool:
    """A JSON number a float holds: not a bool, not inf/NaN, and not an integer too large
    for a float (``math.isfinite`` raises ``OverflowError`` on one: compared exactly here).

    >>> [_finite_number(v) for v in (1, 2.5, True, float("inf"), 10**400, "1")]
    [True, True, False, False, False, False]
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= sys.float_info.max
    return isinstance(value, float) and math.isfinite(value)


def decode_reading(data: bytes | str) -> Reading:
    """Decode and validate one Reading; raises ``SchemaError`` naming the field.

    Values must be finite numbers or null; ``stream_id`` is bounded in length and
    charset; the whole record is at most ``MAX_RECORD_BYTES``.
    """
    if len(data) > MAX_RECORD_BYTES:
        raise SchemaError(
            f"record is {len(data)} bytes, more than the {MAX_RECORD_BYTES} allowed", code="oversize"
        )
    if not data:
        raise SchemaError("record value is empty (0 bytes)", code="empty")
    try:
        reading = _held(_decoders["reading"].decode(data))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        error = _schema_error(exc)
        if error.field == "values.<key>":
            error = SchemaError(error.problem, field=_bad_value_key(data), code=error.code)
        raise error from None
    except RecursionError:
        raise _too_deep() from None
    _check_line_end(reading)
    if not math.isfinite(reading.ts):
        raise SchemaError("must be a finite number", field="ts", code="non_finite")
    for channel, value in reading.values.items():
        if value is not None and not math.isfinite(value):
            raise SchemaError(
                "must be a finite number or null", field=f"values.{channel}", code="non_finite"
            )
    return reading


_SID, _KIND, _VALUES = map(attrgetter, ("stream_id", "kind", "values"))


_ONCE = ('"stream_id"', '"kind"')
_ONCE_B = tuple(k.encode() for k in _ONCE)


def _names_once(data: bytes | str, records: int = 1) -> bool:
    """Whether ``stream_id`` and ``kind`` are surely given once in each record of ``data``
    (one record, or ``records`` of them joined by newlines, every one holding both keys):
    no escape, and each key's quoted name found ``records`` times. Only then are the
    unchecked parse's values the only ones. JSON allows a key twice, and both decoders
    keep the last value, but the strict one checks every value it parses against the
    pattern: a record whose first ``stream_id`` is bad and whose last one is known would
    be refused by it and accepted by the fast path. When this says no, the strict
    decoder decides.

    >>> _names_once(b'{"stream_id":"a","kind":"k"}'), _names_once(b'{"kind":"x","kind":"k"}')
    (True, False)
    >>> _names_once('{"\\u006bind":"x","kind":"k"}')  # an escaped key: the strict one decides
    False
    """
    if isinstance(data, str):
        return "\\" not in data and all(data.count(k) == records for k in _ONCE)
    return b"\\" not in data and all(data.count(k) == records for k in _ONCE_B)


class ReadingDecoder:
    """``decode_reading`` for a stream of records, ~5x faster on the hot path.

    Most of ``decode_reading``'s time goes into matching the stream id, the kind and every
    channel name against their patterns, and a service sees the same few thousand
    strings over and over. This decoder parses without the patterns, and accepts the
    result when its stream id, kind and channel names have all passed the strict
    decoder before (kept in bounded sets). Anything else, or anything the unchecked parse
    refuses, goes through ``decode_reading``, so a record is accepted or refused, with the
    same error, exactly as ``decode_reading`` would.

    >>> dec = ReadingDecoder()
    >>> raw = b'{"stream_id":"icu/bed-01","kind":"icu_vitals","ts":5,"values":{"hr":80}}'
    >>> dec.decode(raw) == dec.decode(raw) == decode_reading(raw)
    True
    >>> dec.decode(raw.replace(b"bed-01", b"bed 01"))
    Traceback (most recent call last):
    ...
    streamwatch.errors.SchemaError: stream_id: Expected `str` matching regex ...
    """

    def __init__(self, max_known: int = 200_000) -> None:
        self.max_known = max_known
        self._unchecked = msgspec.json.Decoder(Reading)  # (no name patterns in the type)
        self._ids: set[str] = set()
        self._kinds: set[str] = set()
        self._channels: set[str] = set()

    def decode(self, data: bytes | str | None) -> Reading:
        """One record's Reading, or ``SchemaError``; a record with no value (a tombstone)
        is refused too."""
        if data is None:
            raise SchemaError("record has no value (tombstone)", code="empty")
        if len(data) > MAX_RECORD_BYTES:
            return decode_reading(data)  # raises the oversize error
        try:
            r = self._unchecked.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return decode_reading(data)  # raises the precise error
        # JSON has no NaN or infinity and msgspec refuses numbers that overflow a float,
        # so the finiteness checks of decode_reading cannot fail here
        if r.stream_id in self._ids and r.kind in self._kinds \
                and self._channels.issuperset(r.values) and _names_once(data):
            return r
        reading = decode_reading(data)
        for known in (self._ids, self._kinds, self._channels):
            if len(known) >= self.max_known:
                known.clear()
        self._ids.add(reading.stream_id)
        self._kinds.add(reading.kind)
        self._channels.update(reading.values)
        return reading

    def decode_many(self, records: Sequence[bytes | None]) -> list[Reading] | None:
        """``[self.decode(r) for r in records]`` when every record takes the fast path of
        ``decode`` (parsed without the patterns, every stream id, kind and channel name
        seen before), done with C-level maps: no Python per record. ``None`` when one
        does not (a value missing, too big or refused, a name not seen yet): the caller
        then decodes record by record, which accepts or refuses each one exactly.

        >>> dec = ReadingDecoder()
        >>> raw = b'{"stream_id":"icu/bed-01","kind":"icu_vitals","ts":5,"values":{"hr":80}}'
        >>> dec.decode_many([raw]) is None  # nothing seen yet
        True
        >>> _ = dec.decode(raw)  # now seen
        >>> dec.decode_many([raw, raw]) == [decode_reading(raw)] * 2
        True
        >>> dec.decode_many([raw, b"{"]) is None
        True
        """
        if not records:
            return []
        if None in records:
            return None
        data = cast("Sequence[bytes]", records)
        if max(map(len, data)) > MAX_RECORD_BYTES:
            return None
        try:
            rs = list(map(self._unchecked.decode, data))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        if not (self._ids.issuperset(map(_SID, rs)) and self._kinds.issuperset(map(_KIND, rs))
                and self._channels.issuperset(chain.from_iterable(map(_VALUES, rs)))):
            return None
        if not _names_once(b"\n".join(data), len(data)):
            return None  # a name given twice, or maybe: the strict decoder decides
        return rs


class _ForecastRow(msgspec.Struct, gc=False):
    """``ChannelForecast``'s JSON shape, untracked by the garbage collector (cheaper to make)."""

    mean: float
    std: float


class _ScoreRow(msgspec.Struct, gc=False):
    """``Score``'s fields in ``Score``'s order (a test holds them equal), without types:
    msgspec encodes by value, so the JSON is ``Score``'s; untracked by the collector."""

    stream_id: Any
    kind: Any
    ts: Any
    values: Any
    forecast: Any
    channel_scores: Any
    score: Any
    threshold: Any
    anomalous: Any
    warming_up: Any
    model: Any
    model_version: Any
    hard_limit: Any
    hard_limit_channels: Any
    v: Any = SCHEMA_VERSION


_NOT_A_FIELD_NAME = re.compile(r'["\\\x00-\x1f]')
"""Characters msgspec refuses in a renamed field (it writes field names unescaped)."""


def _channel_object(channels: tuple[str, ...]) -> Callable[..., Any]:
    """A factory of one JSON object keyed by ``channels`` in order, from positional values:
    a Struct whose fields are renamed to the channels (made and encoded in C), or, for
    names a field cannot carry (a quote, a backslash, a control character, a repeat), a
    dict built as ``dict(zip(channels, values))``, which is what a ``Score`` holds."""
    if len(set(channels)) == len(channels) \
            and not any(_NOT_A_FIELD_NAME.search(c) for c in channels):
        fields = [(f"c{i}", Any) for i in range(len(channels))]
        rename = {f"c{i}": c for i, c in enumerate(channels)}
        return msgspec.defstruct("_ChannelRow", fields, rename=rename, gc=False)

    def as_dict(*values: Any) -> dict[str, Any]:
        return dict(zip(channels, values, strict=True))

    return as_dict


class ScoreEncoder:
    """Score JSON for a batch of one kind, straight from the detector's arrays.

    Byte for byte what ``encode(Score(...))`` gives (tests hold it to that), without
    building a ``Score`` and its dicts of ``ChannelForecast`` per reading: the arrays'
    columns become lists of floats (``tolist``), C-level ``map`` calls lay them into
    small untracked Structs shaped like the record (a ``forecast`` and a
    ``channel_scores`` object whose fields are renamed to the kind's channels, one
    ``{"mean","std"}`` per channel, and a row with ``Score``'s fields in ``Score``'s
    order), and msgspec encodes each row. msgspec writes NaN and infinity as ``null``, as
    it does for a ``Score``'s ``None`` threshold or channel score. A reading whose
    forecast lacks a channel (non-finite mean or std, which the record leaves out) is not
    in this shape: it gets None, and the caller builds its ``Score``.

    >>> import numpy as np
    >>> enc = ScoreEncoder("univariate", ("value",), "gru")
    >>> row = enc.encode_rows(["u/1"], [{"value": 1.5}], np.array([7.0]), np.array([[1.0]]),
    ...     np.array([[0.5]]), np.array([[2.0]]), np.array([1.0]), np.array([3.0]),
    ...     np.array([False]), np.array([True]), np.array([4]), np.array([0]))[0]
    >>> row == encode(Score("u/1", "univariate", 7.0, {"value": 1.5},
    ...     {"value": ChannelForecast(1.0, 0.5)}, {"value": 2.0}, 1.0, 3.0, False, True, "gru", 4))
    True
    """

    #: ``Score.hard_limit`` by hard-limit level (0 none, 1 warning, 2 critical)
    HARD_LIMIT: tuple[Severity | None, ...] = (None, "warning", "critical")

    def __init__(self, kind: str, channels: tuple[str, ...], model: str) -> None:
        self.kind = kind
        self.channels = channels
        self.model = model
        self._per_channel = _channel_object(channels)

    def encode_rows(
        self, stream_ids: Sequence[str], values: Sequence[dict[str, float | None]],
        ts: np.ndarray, mean: np.ndarray, std: np.ndarray, channel_scores: np.ndarray,
        score: np.ndarray, threshold: np.ndarray, anomalous: np.ndarray,
        warming_up: np.ndarray, model_version: np.ndarray, hard_limit: np.ndarray,
        hard_limit_channels: dict[int, list[str]] | None = None,
    ) -> list[bytes | None]:  # fmt: skip
        """One record per reading (rows of the arrays; NaN = null, channel columns in the
        kind's order; ``hard_limit`` = level 0/1/2); None where a mean or std is not finite."""
        n = len(stream_ids)
        if n == 0:
            return []
        f64 = np.float64
        mean, std = np.asarray(mean, f64), np.asarray(std, f64)
        channel_scores = np.asarray(channel_scores, f64)
        self._check_shapes(n, values, ts, mean, std, channel_scores, score, threshold,
                           anomalous, warming_up, model_version, hard_limit)  # fmt: skip
        whole = (np.isfinite(mean) & np.isfinite(std)).all(axis=1)
        k = int(np.count_nonzero(whole))
        if k == 0:
            return [None] * n
        empty: tuple[str, ...] = ()  # encodes as [], like Score's default
        names: list[Sequence[str]] = [empty] * n
        for j, chans in (hard_limit_channels or {}).items():
            if 0 <= j < n:
                names[j] = chans
        # every map below loops in C; each nested map is consumed row by row by the next
        per_channel = self._per_channel
        forecast = map(per_channel, *[map(_ForecastRow, mu, sd) for mu, sd
                                      in zip(mean.T.tolist(), std.T.tolist(), strict=True)])
        scores = map(per_channel, *channel_scores.T.tolist())
        rows = list(map(
            _ScoreRow, stream_ids, repeat(self.kind), np.asarray(ts, f64).tolist(), values,
            forecast, scores, np.asarray(score, f64).tolist(),
            np.asarray(threshold, f64).tolist(), np.asarray(anomalous, bool).tolist(),
            np.asarray(warming_up, bool).tolist(), repeat(self.model), model_version.tolist(),
            map(self.HARD_LIMIT.__getitem__, hard_limit.tolist()), names,
        ))  # fmt: skip
        enc = _encoder.encode
        if k == n:
            return list(map(enc, rows))
        out: list[bytes | None] = [None] * n
        for j in np.flatnonzero(whole).tolist():
            out[j] = enc(rows[j])
        return out

    def _check_shapes(self, n: int, values: Sequence[object], *arrays: np.ndarray) -> None:
        """``ValueError`` unless there is one row per reading (``map`` would stop silently
        at the shortest input) and, in the per-channel arrays, one column per channel."""
        c = len(self.channels)
        names = ("ts", "mean", "std", "channel_scores", "score", "threshold", "anomalous",
                 "warming_up", "model_version", "hard_limit")
        per_channel = {"mean", "std", "channel_scores"}
        if len(values) != n:
            raise ValueError(f"values has {len(values)} readings, expected {n} (one per stream id)")
        for name, array in zip(names, arrays, strict=True):
            want = (n, c) if name in per_channel else (n,)
            if np.shape(array) != want:
                raise ValueError(
                    f"{name} has shape {np.shape(array)}, expected {want} (one row per reading"
                    + (f", one column per channel of {self.kind!r})" if name in per_channel
                       else ")"))


def dead_letter(
    payload: bytes | None,
    code: str,
    reason: str,
    *,
    field: str | None,
    topic: str,
    partition: int,
    offset: int,
    ts: float,
    key: bytes | None = None,
    cap: int = 4096,
) -> DeadLetter:
    """Build a DeadLetter for raw bytes, capping the payload at ``cap`` bytes (the key is
    kept whole: ``dead_letter_key`` gives its bytes back).

    >>> letter = dead_letter(b"{", "not_json", "bad", field=None, topic="t", partition=0,
    ...                      offset=1, ts=0.0, key=b"\\xff\\x00")
    >>> letter.key, letter.key_encoding, dead_letter_key(letter)
    ('/wA=', 'base64', b'\\xff\\x00')
    """
    raw = payload or b""
    text, encoding = _text_or_base64(raw[:cap])
    key_text, key_encoding = _text_or_base64(key) if key is not None else (None, None)
    return DeadLetter(
        code=code,  # type: ignore[arg-type]
        reason=reason,
        field=field,
        topic=topic,
        partition=partition,
        offset=offset,
        payload=text,
        payload_encoding=encoding,  # type: ignore[arg-type]
        payload_size=len(raw),
        payload_truncated=len(raw) > cap,
        ts=ts,
        key=key_text,
        key_encoding=key_encoding,  # type: ignore[arg-type]
    )


def _text_or_base64(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def dead_letter_key(letter: DeadLetter) -> bytes | None:
    """The refused record's Kafka key, its exact bytes (None when it had none)."""
    if letter.key is None:
        return None
    if letter.key_encoding == "base64":
        return base64.b64decode(letter.key, validate=True)
    return letter.key.encode("utf-8")


SCHEMA_DIR = Path(__file__).parent / "schemas"


def _clean_descriptions(node: Any) -> Any:
    """Docstring-derived descriptions dedented the same way whatever msgspec's version
    (0.19 keeps the docstring's indentation, 0.23 dedents it)."""
    if isinstance(node, dict):
        return {k: inspect.cleandoc(v) if k == "description" and isinstance(v, str)
                else _clean_descriptions(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node


WRITTEN_ONLY = frozenset(RECORD_TYPES) - {"reading"}
"""Record types only streamwatch writes, always with ``v``: their schemas require it (a
Reading from another producer may leave ``v`` out and is then read as version 1)."""


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of record type ``name`` as shipped to other services."""
    schema = _clean_descriptions(msgspec.json.schema(RECORD_TYPES[name]))
    if name in WRITTEN_ONLY:
        record = schema["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
        record["required"] = [*record["required"], "v"]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"streamwatch/{name}/v{SCHEMA_VERSION}"
    schema["title"] = f"streamwatch {name} v{SCHEMA_VERSION}"
    return schema


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """(Re)write the shipped JSON Schema files; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in RECORD_TYPES:
        path = directory / f"{name}.v{SCHEMA_VERSION}.json"
        path.write_text(json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    for written in write_schemas():
        print(written)
