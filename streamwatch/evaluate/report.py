"""The plotly HTML report of an evaluation: tables, then a few streams per detector.

Each stream figure has one row per channel (observed values, the forecast mean and its
+-2 std band where the detector forecasts) and a last row with the anomaly score against
the adaptive threshold. Alert spans are shaded red on every row; labelled episodes are
shaded green (clinical events, machine faults) or grey (artefacts). Long runs are
bucketed to at most ``max_points`` points per trace (values and forecasts averaged per
bucket, the score's maximum kept so spikes stay visible). Figure builders are pure.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from streamwatch.evaluate.events import AlertSpan
from streamwatch.evaluate.runner import Trace
from streamwatch.schema import Episode

log = logging.getLogger(__name__)

EPISODE_COLOURS = {"clinical": "rgba(40,160,60,0.18)", "fault": "rgba(40,160,60,0.18)",
                   "artefact": "rgba(120,120,120,0.22)"}
ALERT_COLOUR = "rgba(220,40,40,0.22)"


def _bucket(x: np.ndarray, edges: np.ndarray, how: str) -> np.ndarray:
    if len(edges) == len(x):
        return x
    groups = np.searchsorted(edges, np.arange(len(x)), side="right") - 1
    grouped = pd.DataFrame(x.reshape(len(x), -1)).groupby(groups)
    out = grouped.max() if how == "max" else grouped.mean()
    return out.to_numpy().reshape((len(edges), *x.shape[1:]))


def _downsample(trace: Trace, max_points: int) -> dict[str, np.ndarray]:
    n = len(trace.ts)
    edges = np.arange(n) if n <= max_points else np.linspace(0, n, max_points, endpoint=False).astype(int)
    cols = {
        "values": _bucket(np.asarray(trace.values, dtype=float), edges, "mean"),
        "mean": _bucket(np.asarray(trace.mean, dtype=float), edges, "mean"),
        "std": _bucket(np.asarray(trace.std, dtype=float), edges, "mean"),
        "score": _bucket(np.asarray(trace.score, dtype=float), edges, "max"),
        "threshold": _bucket(np.asarray(trace.threshold, dtype=float), edges, "mean"),
    }
    # float32 halves the embedded arrays; time stays float64 (epoch ms needs 41 bits)
    return {"ts": np.asarray(trace.ts, dtype=np.float64)[edges],
            **{k: v.astype(np.float32) for k, v in cols.items()}}


def _time(ts: np.ndarray | float) -> Any:
    """Epoch milliseconds (a date axis reads them; numpy arrays travel as compact binary)."""
    return np.asarray(ts, dtype=np.float64) * 1000.0 if isinstance(ts, np.ndarray) else float(ts) * 1000.0


def _shade(fig: go.Figure, start: float, stop: float, colour: str, label: str | None = None) -> None:
    """One rectangle over the whole figure height (the subplots share the x axis)."""
    fig.add_shape(type="rect", xref="x", yref="paper", x0=_time(start), x1=_time(stop), y0=0, y1=1,
                  fillcolor=colour, line_width=0, layer="below")
    if label:
        fig.add_annotation(x=_time(start), xref="x", y=1.0, yref="paper", text=label,
                           showarrow=False, xanchor="left", yanchor="bottom", font={"size": 10})


def _score_range(score: np.ndarray, threshold: np.ndarray) -> list[float] | None:
    """Keep the threshold in view: a few start-up scores can be thousands of times larger."""
    finite = score[np.isfinite(score)]
    if not finite.size:
        return None
    top = float(np.quantile(finite, 0.995))
    if np.isfinite(threshold).any():
        top = max(top, 2.0 * float(np.nanmax(threshold)))
    return [0.0, 1.05 * top] if top > 0 else None


def stream_figure(
    trace: Trace,
    title: str,
    alerts: Sequence[AlertSpan] = (),
    episodes: Sequence[Episode] = (),
    windows: Sequence[tuple[float, float]] = (),
    max_points: int = 1500,
) -> go.Figure:
    """One stream as one detector saw it (see module docstring). ``windows`` are extra
    labelled spans (NAB anomaly windows), shaded like true episodes."""
    if not trace.ts:
        raise ValueError(f"stream {trace.stream_id} has no scores to plot")
    cols = _downsample(trace, max_points)
    n_ch = len(trace.channels)
    fig = make_subplots(rows=n_ch + 1, cols=1, shared_xaxes=True, vertical_spacing=0.02,
                        subplot_titles=[*trace.channels, "score vs threshold"])
    t = _time(cols["ts"])
    for c in range(n_ch):
        row = c + 1
        mean, std = cols["mean"][:, c], cols["std"][:, c]
        if np.isfinite(mean).any():
            fig.add_trace(go.Scatter(x=t, y=mean + 2 * std, line={"width": 0}, showlegend=False,
                                     hoverinfo="skip"), row=row, col=1)
            fig.add_trace(go.Scatter(x=t, y=mean - 2 * std, line={"width": 0}, fill="tonexty",
                                     fillcolor="rgba(60,110,220,0.18)", name="forecast ±2σ",
                                     showlegend=c == 0, hoverinfo="skip"), row=row, col=1)
            fig.add_trace(go.Scatter(x=t, y=mean, line={"color": "rgb(60,110,220)", "width": 1},
                                     name="forecast", showlegend=c == 0), row=row, col=1)
        fig.add_trace(go.Scatter(x=t, y=cols["values"][:, c], line={"color": "black", "width": 1},
                                 name="observed", showlegend=c == 0), row=row, col=1)
    fig.add_trace(go.Scatter(x=t, y=cols["score"], line={"color": "rgb(200,90,0)", "width": 1},
                             name="score (bucket max)"), row=n_ch + 1, col=1)
    fig.add_trace(go.Scatter(x=t, y=cols["threshold"], line={"color": "rgb(120,0,160)", "dash": "dash"},
                             name="threshold"), row=n_ch + 1, col=1)
    for ep in episodes:
        _shade(fig, ep.onset_ts, ep.end_ts, EPISODE_COLOURS.get(ep.category, EPISODE_COLOURS["clinical"]),
               label=ep.type if ep.category != "artefact" else None)
    for start, stop in windows:
        _shade(fig, start, stop, EPISODE_COLOURS["clinical"])
    for span in alerts:
        _shade(fig, span.onset_ts, span.end_ts, ALERT_COLOUR)
    fig.update_yaxes(range=_score_range(cols["score"], cols["threshold"]), row=n_ch + 1, col=1)
    fig.update_xaxes(type="date")
    fig.update_layout(title=title, height=170 * (n_ch + 1) + 80, margin={"l": 60, "r": 20, "t": 60, "b": 30},
                      legend={"orientation": "h", "y": -0.03})
    return fig


def table_html(title: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain HTML table; every cell escaped (stream ids and labels are data)."""
    if not rows:
        return f"<h2>{html.escape(title)}</h2><p>(empty)</p>"
    header = list(rows[0])
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(k)))}</td>" for k in header) + "</tr>"
        for row in rows
    )
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in header)
    return f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if np.isnan(value) else f"{value:.4g}"
    return "—" if value is None else str(value)


STYLE = ("body{font-family:sans-serif;margin:24px} table{border-collapse:collapse;margin:8px 0 24px}"
         " td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f0f0f0}")


def write_report(
    path: str | Path,
    title: str,
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    figures: Sequence[go.Figure],
) -> Path:
    """Write one self-contained HTML file (plotly.js embedded once, no network needed)."""
    path = Path(path)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [table_html(name, rows) for name, rows in tables.items()]
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    log.info("report written path=%s figures=%d bytes=%d", path, len(figures), path.stat().st_size)
    return path
