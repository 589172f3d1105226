"""Pure figure builders: plain data in (``Series``, alert spans), plotly figure dicts out.

Figures are plain dicts (no ``go.Figure`` validation on the 1 Hz path) with Python lists,
never numpy arrays: plotly encodes arrays as base64 typed arrays, which a ``Patch``
cannot extend. Every trace carries ``meta`` = ``{"role": ..., "channel": ...}`` so tests
and callbacks find traces by role, and the trace order is fixed (``trace_index``) so a
``Patch`` can extend them by index.

Text that comes from data (channel or detector names) is HTML-escaped before it reaches
plotly, whose labels accept a subset of HTML.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dashboards.buffers import Series
from streamwatch.kinds import NEWS2_NORMAL
from streamwatch.schema import Alert, Health

CHANNEL_LABELS = {"hr": "HR", "spo2": "SpO₂", "rr": "RR", "sbp": "SBP", "dbp": "DBP",
                  "map": "MAP", "temp": "Temp"}
ROLES = ("band_hi", "band_lo", "forecast", "range_hi", "range_lo", "observed")
"""Traces per channel, in order; the score panel follows with ``SCORE_ROLES``."""
SCORE_ROLES = ("threshold", "score", "anomalous")
EXTENDED_ROLES = ("band_hi", "band_lo", "forecast", "observed")
"""Channel traces a live update extends (bucket ranges come only with a full rebuild)."""

COLOURS = {
    "observed": "#1d3f72", "forecast": "#6b7280", "band": "rgba(59,130,246,0.20)",
    "range": "rgba(29,63,114,0.16)", "score": "#6d28d9", "threshold": "#d97706",
    "anomalous": "#dc2626", "news2": "rgba(16,185,129,0.10)",
    "critical": "rgba(220,38,38,0.16)", "warning": "rgba(245,158,11,0.20)",
}
ROW_PX, SCORE_PX, GAP_PX, TOP_PX, BOTTOM_PX = 104, 120, 16, 36, 36
MIN_GAP_S = 15.0


@dataclass(frozen=True)
class AlertSpan:
    """The time span of one alert; ``end_ts`` is None while it is open."""

    alert_id: str
    severity: str
    onset_ts: float
    end_ts: float | None


def alert_spans(alerts: Sequence[Alert]) -> list[AlertSpan]:
    return [AlertSpan(a.alert_id, a.severity, a.onset_ts,
                      a.end_ts if a.event == "close" else None) for a in alerts]


def label(channel: str) -> str:
    """Display name of a channel, safe for plotly text."""
    return html.escape(CHANNEL_LABELS.get(channel, channel))


def trace_index(n_channels: int, role: str, channel: int = 0) -> int:
    """Index in ``figure["data"]`` of a channel trace (or a score-panel trace)."""
    if role in SCORE_ROLES:
        return n_channels * len(ROLES) + SCORE_ROLES.index(role)
    return channel * len(ROLES) + ROLES.index(role)


def to_x(ts: np.ndarray | Sequence[float], utc_offset_s: float = 0.0) -> list[str]:
    """Epoch seconds to plotly date strings (wall time at ``utc_offset_s``), ms precision."""
    arr = np.asarray(ts, dtype=float)
    ms = np.round((arr + utc_offset_s) * 1000.0).astype("int64").astype("datetime64[ms]")
    return [s.replace("T", " ") for s in np.datetime_as_string(ms, unit="ms").tolist()]


def _nums(a: np.ndarray, digits: int = 3) -> list[float | None]:
    return [None if math.isnan(v) else v for v in np.round(a.astype(float), digits).tolist()]


def gap_breaks(ts: np.ndarray, res: np.ndarray, prev_ts: float | None = None,
               min_gap_s: float = MIN_GAP_S) -> np.ndarray:
    """True before each point that follows a gap (a line must not bridge it).

    A gap is a step longer than ``min_gap_s`` and 1.5x the wider of the two points'
    bucket widths. ``prev_ts`` is the last point already drawn (for live appends).
    """
    if len(ts) == 0:
        return np.zeros(0, dtype=bool)
    before = np.concatenate([[math.nan if prev_ts is None else prev_ts], ts[:-1]])
    before_res = np.concatenate([[0.0], res[:-1]])
    limit = np.maximum(min_gap_s, 1.5 * np.maximum(res, before_res))
    with np.errstate(invalid="ignore"):
        return (ts - before) > limit


def _broken(values: list[Any], breaks: np.ndarray, *, none: bool) -> list[Any]:
    """Insert a point before each position flagged in ``breaks``.

    With ``none`` the inserted value is None (a y value: the line breaks there);
    otherwise it repeats the next value (an x value plotly needs beside the None).
    """
    where = np.flatnonzero(breaks)
    if not len(where):
        return values
    out: list[Any] = []
    last = 0
    for i in where.tolist():
        out.extend(values[last:i])
        out.append(None if none else values[i])
        last = i
    out.extend(values[last:])
    return out


Columns = dict[tuple[str, int], tuple[list[Any], list[Any]]]


def score_cap(series: Series) -> float | None:
    """Top of the score panel: 3x the threshold or the 99th percentile score, if higher.

    One huge score must not flatten the rest of the panel; anomalous markers above the
    cap are drawn at the cap.
    """
    thr = series.threshold[np.isfinite(series.threshold)]
    scores = series.score[np.isfinite(series.score)]
    if not len(thr) or not len(scores):
        return None
    cap = max(3.0 * float(thr.max()), 1.2 * float(np.percentile(scores, 99)))
    return cap if cap > 0 else None


def score_floor(series: Series) -> float | None:
    """Bottom of the score panel: the 2nd percentile score (or the lowest threshold).

    Scores of a stream the model is still warming up on can be hugely negative (a
    likelihood-based score); a few of them must not squash the panel either.
    """
    thr = series.threshold[np.isfinite(series.threshold)]
    scores = series.score[np.isfinite(series.score)]
    if not len(scores):
        return None
    low = float(np.percentile(scores, 2))
    if len(thr):
        low = min(low, float(thr.min()))
    return low - 0.1 * abs(low) - 0.5


def trace_columns(series: Series, utc_offset_s: float = 0.0,
                  prev_ts: float | None = None, cap: float | None = None) -> Columns:
    """Per-role (x, y) lists of a series, with line breaks at gaps.

    Keys are ``(role, channel_index)`` for channel traces and ``(role, -1)`` for the
    score panel; values are ``(x, y)`` pairs of lists. Anomalous markers are drawn at
    ``min(score, cap)``.
    """
    breaks = gap_breaks(series.ts, series.res, prev_ts)
    x = _broken(to_x(series.ts, utc_offset_s), breaks, none=False)

    def make(values: np.ndarray) -> list[float | None]:
        return _broken(_nums(values), breaks, none=True)

    out: Columns = {}
    for c in range(len(series.channels)):
        mean, std = series.mean[:, c], series.std[:, c]
        out[("band_hi", c)] = (x, make(mean + 2 * std))
        out[("band_lo", c)] = (x, make(mean - 2 * std))
        out[("forecast", c)] = (x, make(mean))
        out[("observed", c)] = (x, make(series.values[:, c]))
    out[("threshold", -1)] = (x, make(series.threshold))
    out[("score", -1)] = (x, make(series.score))
    hits = np.flatnonzero(series.anomalous)
    marks = series.score[hits] if cap is None else np.minimum(series.score[hits], cap)
    out[("anomalous", -1)] = (to_x(series.ts[hits], utc_offset_s), _nums(marks))
    bucketed = np.flatnonzero(series.res > 0)
    if len(bucketed):
        b_ts, b_res = series.ts[bucketed], series.res[bucketed]
        b_breaks = gap_breaks(b_ts, b_res)
        bx = _broken(to_x(b_ts, utc_offset_s), b_breaks, none=False)
        for c in range(len(series.channels)):
            for role, arr in (("range_hi", series.high), ("range_lo", series.low)):
                out[(role, c)] = (bx, _broken(_nums(arr[bucketed, c]), b_breaks, none=True))
    return out


def _trace(role: str, c: int, axis: int, columns: Columns, channel: str,
           unit: str, first: bool) -> dict[str, Any]:
    x, y = columns.get((role, c), ([], []))
    suffix = "" if axis == 1 else str(axis)
    name = {"band_hi": "forecast +2σ", "band_lo": "forecast ±2σ band", "forecast": "forecast mean",
            "range_hi": "observed max", "range_lo": "observed range (bucket)",
            "observed": "observed"}[role]
    trace: dict[str, Any] = {
        "type": "scatter", "mode": "lines", "x": x, "y": y, "name": name,
        "xaxis": f"x{suffix}", "yaxis": f"y{suffix}", "legendgroup": role,
        "showlegend": first and role not in ("band_hi", "range_hi"),
        "meta": {"role": role, "channel": channel},
        "hovertemplate": f"%{{y:.1f}} {html.escape(unit)}<extra>{label(channel)} {name}</extra>",
    }
    if role in ("band_hi", "range_hi"):
        trace.update(line={"width": 0}, hoverinfo="skip")
        trace.pop("hovertemplate")
    elif role in ("band_lo", "range_lo"):
        colour = COLOURS["band" if role == "band_lo" else "range"]
        trace.update(line={"width": 0}, fill="tonexty", fillcolor=colour)
    elif role == "forecast":
        trace["line"] = {"color": COLOURS["forecast"], "width": 1.2, "dash": "dash"}
    else:
        trace.update(mode="lines+markers", line={"color": COLOURS["observed"], "width": 1.6},
                     marker={"size": 3, "color": COLOURS["observed"]})
    return trace


def stream_figure(
    series: Series,
    *,
    units: Mapping[str, str],
    spans: Sequence[AlertSpan] = (),
    start: float,
    end: float,
    utc_offset_s: float = 0.0,
    news2: bool = False,
    uirevision: str | None = None,
) -> dict[str, Any]:
    """One stream's channels (observed, forecast mean, ±2σ band) and its score panel.

    ``start``/``end`` (epoch seconds) set the time axis; alert spans are shaded over
    every panel; with ``news2`` the NEWS2 normal band of each scored vital is drawn.
    """
    channels = series.channels
    cap = score_cap(series)
    columns = trace_columns(series, utc_offset_s, cap=cap)
    n = len(channels)
    height = TOP_PX + BOTTOM_PX + n * ROW_PX + SCORE_PX + n * GAP_PX
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "height": height, "margin": {"l": 78, "r": 16, "t": TOP_PX, "b": BOTTOM_PX},
        "template": "plotly_white", "hovermode": "x unified", "dragmode": "zoom",
        "uirevision": uirevision, "font": {"size": 12, "family": "Inter, system-ui, sans-serif"},
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom",
                   "font": {"size": 11}},
        "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff",
    }
    plot_px = height - TOP_PX - BOTTOM_PX
    top = plot_px
    for axis in range(1, n + 2):
        rows_px = ROW_PX if axis <= n else SCORE_PX
        domain = [max(0.0, (top - rows_px) / plot_px), top / plot_px]
        top -= rows_px + GAP_PX
        suffix = "" if axis == 1 else str(axis)
        is_score = axis == n + 1
        channel = "" if is_score else channels[axis - 1]
        unit = "" if is_score else units.get(channel, "")
        title = "score" if is_score else (f"{label(channel)} ({html.escape(unit)})" if unit
                                          else label(channel))
        layout[f"yaxis{suffix}"] = {
            "domain": domain, "anchor": f"x{suffix}", "fixedrange": True,
            "title": {"text": title, "font": {"size": 12}}, "gridcolor": "#eef0f3",
            "zeroline": False, "automargin": False,
        }
        layout[f"xaxis{suffix}"] = {
            "anchor": f"y{suffix}", "type": "date", "showticklabels": is_score,
            "gridcolor": "#eef0f3", "showline": True, "linecolor": "#d1d5db",
            **({} if axis == 1 else {"matches": "x"}),
        }
        if not is_score:
            for role in ROLES:
                data.append(_trace(role, axis - 1, axis, columns, channel, unit, axis == 1))
    score_axis = f"{n + 1}"
    for role in SCORE_ROLES:
        x, y = columns[(role, -1)]
        trace: dict[str, Any] = {
            "type": "scatter", "x": x, "y": y, "xaxis": f"x{score_axis}",
            "yaxis": f"y{score_axis}", "meta": {"role": role, "channel": None},
            "legendgroup": role, "showlegend": True,
        }
        if role == "threshold":
            trace.update(mode="lines", name="threshold", line={"color": COLOURS["threshold"],
                         "width": 1.4, "dash": "dot", "shape": "hv"})
        elif role == "score":
            trace.update(mode="lines", name="anomaly score",
                         line={"color": COLOURS["score"], "width": 1.4})
        else:
            trace.update(mode="markers", name="anomalous",
                         marker={"color": COLOURS["anomalous"], "size": 5, "symbol": "x",
                                 "opacity": 0.8})
        data.append(trace)
    floor = score_floor(series)
    limits = {"maxallowed": cap, "minallowed": floor}
    layout[f"yaxis{n + 1}"]["autorangeoptions"] = {k: v for k, v in limits.items()
                                                   if v is not None}
    layout["shapes"] = news2_shapes(channels) if news2 else []
    layout["shapes"] += span_shapes(spans, end, utc_offset_s)
    layout["xaxis"]["range"] = to_x([start, end], utc_offset_s)
    return {"data": data, "layout": layout}


def news2_shapes(channels: Sequence[str]) -> list[dict[str, Any]]:
    """The NEWS2 normal band (0 points) of each scored vital, across its panel."""
    shapes = []
    for axis, channel in enumerate(channels, start=1):
        band = NEWS2_NORMAL.get(channel)
        if band is None:
            continue
        suffix = "" if axis == 1 else str(axis)
        shapes.append({
            "type": "rect", "xref": f"x{suffix} domain", "x0": 0, "x1": 1,
            "yref": f"y{suffix}", "y0": band[0], "y1": band[1], "layer": "below",
            "fillcolor": COLOURS["news2"], "line": {"width": 0}, "name": f"news2:{channel}",
        })
    return shapes


def span_shapes(spans: Sequence[AlertSpan], now_ts: float,
                utc_offset_s: float = 0.0) -> list[dict[str, Any]]:
    """Shaded rectangles over all panels, one per alert (open alerts run to ``now_ts``)."""
    shapes = []
    for span in spans:
        end = span.end_ts if span.end_ts is not None else max(now_ts, span.onset_ts)
        x0, x1 = to_x([span.onset_ts, end], utc_offset_s)
        shapes.append({
            "type": "rect", "xref": "x", "yref": "paper", "x0": x0, "x1": x1, "y0": 0,
            "y1": 1, "layer": "below", "line": {"width": 0},
            "fillcolor": COLOURS.get(span.severity, COLOURS["warning"]),
            "name": f"alert:{span.severity}:{'open' if span.end_ts is None else 'closed'}:"
                    f"{span.alert_id}",
        })
    return shapes


def health_figure(history: Mapping[str, Sequence[Health]],
                  utc_offset_s: float = 0.0) -> dict[str, Any]:
    """Readings/s and training loss over time, one line per detector process."""
    data: list[dict[str, Any]] = []
    for detector, records in sorted(history.items()):
        name = html.escape(detector)
        x = to_x([h.ts for h in records], utc_offset_s)
        data.append({"type": "scatter", "mode": "lines", "x": x, "name": name,
                     "legendgroup": name, "y": [h.readings_per_s for h in records],
                     "xaxis": "x", "yaxis": "y", "meta": {"role": "readings_per_s"}})
        data.append({"type": "scatter", "mode": "lines", "x": x, "name": name,
                     "legendgroup": name, "showlegend": False, "xaxis": "x2", "yaxis": "y2",
                     "y": [h.training_loss for h in records], "meta": {"role": "training_loss"}})
    return {"data": data, "layout": {
        "height": 320, "template": "plotly_white", "margin": {"l": 70, "r": 16, "t": 28, "b": 36},
        "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        "xaxis": {"type": "date", "anchor": "y", "showticklabels": False},
        "xaxis2": {"type": "date", "anchor": "y2", "matches": "x"},
        "yaxis": {"domain": [0.55, 1.0], "title": {"text": "readings/s"}, "rangemode": "tozero"},
        "yaxis2": {"domain": [0.0, 0.45], "title": {"text": "training loss"}},
        "font": {"size": 12, "family": "Inter, system-ui, sans-serif"},
    }}
