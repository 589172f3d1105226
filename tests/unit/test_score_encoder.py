"""``ScoreEncoder.encode_rows`` writes, byte for byte, what ``encode(Score(...))`` writes."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamwatch import schema
from streamwatch.schema import ChannelForecast, Score, ScoreEncoder

_LEVELS: tuple[Any, ...] = (None, "warning", "critical")
# shortest-repr edge cases: exponents, negative zero, subnormals, the largest double
_EDGE = [1e-7, 1e21, 1e16, 1e-5, -0.0, 0.1, 123456789.0, 5e-324, 1.7976931348623157e308, 80.0]
_floats = st.floats() | st.sampled_from(_EDGE)  # st.floats() includes NaN and +-infinity
_mostly_finite = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [*_EDGE, math.nan, math.inf, -math.inf])
# channel names a renamed Struct field cannot carry (quote, backslash, control) included
_channel = st.sampled_from(["hr", "spo2", "é", "a b", 'q"uote', "back\\slash", "tab\t", ""]) \
    | st.text(max_size=6)


def _score(enc: ScoreEncoder, j: int, sid: str, values: dict[str, Any], arrays: dict[str, Any],
           hl_channels: dict[int, list[str]]) -> bytes | None:  # fmt: skip
    """The reference: one ``Score`` built field by field, as the detector's Score path does."""
    mu, sd, cs = arrays["mean"][j], arrays["std"][j], arrays["cs"][j]
    if not all(math.isfinite(x) for x in [*mu.tolist(), *sd.tolist()]):
        return None
    t, chans = float(arrays["threshold"][j]), enc.channels
    return schema.encode(Score(
        stream_id=sid, kind=enc.kind, ts=float(arrays["ts"][j]), values=values,
        forecast={c: ChannelForecast(float(m), float(s)) for c, m, s in zip(chans, mu, sd, strict=True)},
        channel_scores={c: float(x) if math.isfinite(x) else None
                        for c, x in zip(chans, cs, strict=True)},
        score=float(arrays["score"][j]), threshold=t if t == t else None,
        anomalous=bool(arrays["anomalous"][j]), warming_up=bool(arrays["warming_up"][j]),
        model=enc.model, model_version=int(arrays["model_version"][j]),
        hard_limit=_LEVELS[int(arrays["hard_limit"][j])], hard_limit_channels=hl_channels.get(j, []),
    ))  # fmt: skip


@st.composite
def _batches(draw: st.DrawFn) -> tuple[ScoreEncoder, list[Any], dict[str, Any], dict[int, Any]]:
    channels = tuple(draw(st.lists(_channel, min_size=1, max_size=4)))  # repeats possible
    enc = ScoreEncoder(draw(st.text(max_size=8)), channels, draw(st.text(max_size=8)))
    n, c = draw(st.integers(0, 6)), len(channels)
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    rows = st.lists(st.lists(_mostly_finite, min_size=c, max_size=c), min_size=n, max_size=n)

    def column(elements: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(elements, min_size=n, max_size=n))

    with np.errstate(over="ignore"):  # a double beyond float32's range becomes infinite
        cast = {k: np.array(draw(rows), dtype=dtype).reshape(n, c) for k in ("mean", "std")}
        cast["cs"] = np.array(draw(st.lists(st.lists(_floats, min_size=c, max_size=c),
                                            min_size=n, max_size=n)), dtype=dtype).reshape(n, c)
    arrays = {
        "ts": np.array(column(_floats), dtype=np.float64).reshape(n),
        **cast,
        "score": np.array(column(_floats), dtype=np.float64).reshape(n),
        "threshold": np.array(column(_floats), dtype=np.float64).reshape(n),
        "anomalous": np.array(column(st.booleans()), dtype=bool).reshape(n),
        "warming_up": np.array(column(st.booleans()), dtype=bool).reshape(n),
        "model_version": np.array(column(st.integers(0, 2**62)), dtype=np.int64).reshape(n),
        "hard_limit": np.array(column(st.integers(0, 2)), dtype=np.int8).reshape(n),
    }
    readings = column(st.tuples(
        st.text(max_size=12),  # any unicode, quotes and control characters included
        st.dictionaries(_channel, st.none() | _floats | st.integers(-10**6, 10**6), max_size=5),
    ))  # fmt: skip
    hl_channels = draw(st.dictionaries(st.integers(0, max(n - 1, 0)),
                                       st.lists(st.text(max_size=4), max_size=3), max_size=n))
    return enc, readings, arrays, hl_channels


@settings(max_examples=400, deadline=None)
@given(_batches())
def test_encode_rows_gives_the_bytes_of_encode_score_for_any_batch(
    batch: tuple[ScoreEncoder, list[Any], dict[str, Any], dict[int, Any]],
) -> None:
    """NaN or infinite thresholds and channel scores (null), None values, partial forecasts
    (None), hard-limit levels and channels, unicode ids and names, odd floats."""
    enc, readings, a, hl_channels = batch
    sids, values = [sid for sid, _ in readings], [v for _, v in readings]
    got = enc.encode_rows(
        sids, values, a["ts"], a["mean"], a["std"], a["cs"], a["score"], a["threshold"],
        a["anomalous"], a["warming_up"], a["model_version"], a["hard_limit"], hl_channels)  # fmt: skip
    want = [_score(enc, j, sid, v, a, hl_channels) for j, (sid, v) in enumerate(readings)]
    assert got == want
    # and again: nothing the first call cached or built changes the second one's output
    assert enc.encode_rows(
        sids, values, a["ts"], a["mean"], a["std"], a["cs"], a["score"], a["threshold"],
        a["anomalous"], a["warming_up"], a["model_version"], a["hard_limit"], hl_channels) == want


def test_the_encoders_row_has_the_fields_of_score_in_scores_order() -> None:
    row = [(f.name, f.default) for f in msgspec.structs.fields(schema._ScoreRow)]
    score = [(f.name, f.default) for f in msgspec.structs.fields(Score)]
    assert [name for name, _ in row] == [name for name, _ in score]
    assert row[-1] == score[-1] == ("v", schema.SCHEMA_VERSION)
    forecast = [f.name for f in msgspec.structs.fields(schema._ForecastRow)]
    assert forecast == [f.name for f in msgspec.structs.fields(ChannelForecast)]


def test_encode_rows_of_the_icu_kind_matches_a_realistic_batch() -> None:
    """Seven channels, a thousand readings, some beyond hard limits, a few without a whole
    forecast and a few dropouts: every record equal to the Score path's."""
    channels = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp")
    enc, n, c = ScoreEncoder("icu_vitals", channels, "gru"), 1000, len(channels)
    rng = np.random.default_rng(7)
    values: list[dict[str, Any]] = [
        {ch: float(round(rng.normal(80, 5), 1)) for ch in channels} for _ in range(n)]
    for j in range(0, n, 37):
        values[j]["spo2"] = None
    mean, std = rng.normal(80, 20, (n, c)), rng.random((n, c))
    mean[rng.random((n, c)) < 0.002] = np.nan
    threshold = rng.random(n) * 5
    threshold[:50] = np.nan
    hard_limit = rng.integers(0, 3, n) * (rng.random(n) < 0.05)
    arrays = {
        "ts": 1.7e9 + np.arange(n) * 0.5, "mean": mean, "std": std, "cs": rng.random((n, c)) * 4,
        "score": rng.random(n) * 6, "threshold": threshold, "anomalous": rng.random(n) < 0.1,
        "warming_up": np.arange(n) < 100, "model_version": np.arange(n) // 100,
        "hard_limit": hard_limit,
    }
    hl_channels = {int(j): ["hr"] for j in np.flatnonzero(hard_limit)}
    sids = [f"icu/bed-{j % 40:02d}" for j in range(n)]
    got = enc.encode_rows(
        sids, values, arrays["ts"], mean, std, arrays["cs"], arrays["score"], threshold,
        arrays["anomalous"], arrays["warming_up"], arrays["model_version"], hard_limit,
        hl_channels)  # fmt: skip
    want = [_score(enc, j, sids[j], values[j], arrays, hl_channels) for j in range(n)]
    assert got == want
    assert 0 < got.count(None) < n // 10 and hl_channels  # both paths were exercised


def test_encode_rows_refuses_arrays_without_one_row_per_reading() -> None:
    """``map`` stops at its shortest input: a short array must not drop records silently."""
    enc = ScoreEncoder("univariate", ("value",), "gru")
    one, two = np.array([1.0]), np.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"threshold has shape \(1,\), expected \(2,\)"):
        enc.encode_rows(["a", "b"], [{}, {}], two, np.ones((2, 1)), np.ones((2, 1)),
                        np.ones((2, 1)), two, one, np.zeros(2, bool), np.zeros(2, bool),
                        np.zeros(2, int), np.zeros(2, int))  # fmt: skip
    with pytest.raises(ValueError, match=r"mean has shape \(2, 2\), expected \(2, 1\)"):
        enc.encode_rows(["a", "b"], [{}, {}], two, np.ones((2, 2)), np.ones((2, 1)),
                        np.ones((2, 1)), two, two, np.zeros(2, bool), np.zeros(2, bool),
                        np.zeros(2, int), np.zeros(2, int))  # fmt: skip
