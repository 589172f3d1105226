"""Dash components: the page shells and the pieces callbacks fill in (from plain data).

Everything from data (stream ids, channel names, explanations) goes into components as
text children or ``urlencode``d link targets, never as markup.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from dash import dcc, html

from dashboards.figures import CHANNEL_LABELS
from dashboards.status import STATUSES, StreamSummary
from streamwatch.kinds import NEWS2_NORMAL
from streamwatch.schema import Alert

WINDOWS: tuple[tuple[str, int], ...] = (
    ("5 min", 300), ("15 min", 900), ("1 h", 3600), ("3 h", 10_800), ("6 h", 21_600),
    ("12 h", 43_200), ("24 h", 86_400),
)
DEFAULT_WINDOW_S = 900
CHANNEL_NAMES = CHANNEL_LABELS


def stream_href(stream_id: str, at: float | None = None) -> str:
    """Link to a stream's view (``at``: centre the view on that time)."""
    query: dict[str, str] = {"id": stream_id}
    if at is not None:
        query["at"] = f"{at:.3f}"
    return "/stream?" + urlencode(query)


def fmt_value(value: float | None) -> str:
    """Compact clinical number: 151, 36.4, 65 (not 65.0), 2.35; a dash when missing."""
    if value is None or math.isnan(value):
        return "–"
    if abs(value) >= 100:
        return f"{value:.0f}"
    text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def fmt_age(age_s: float) -> str:
    if age_s < 1:
        return "now"
    if age_s < 90:
        return f"{age_s:.0f} s ago"
    if age_s < 5400:
        return f"{age_s / 60:.0f} min ago"
    return f"{age_s / 3600:.1f} h ago"


def fmt_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def fmt_time(ts: float, utc_offset_s: float = 0.0) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts + utc_offset_s))


def badge(status: str, text: str | None = None) -> html.Span:
    return html.Span(text or status, className=f"sw-badge sw-{status}")


def out_of_normal(channel: str, value: float | None) -> bool:
    band = NEWS2_NORMAL.get(channel)
    return band is not None and value is not None and not band[0] <= value <= band[1]


# ---------------------------------------------------------------- shell
def app_shell(interval_ms: int) -> html.Div:
    return html.Div(className="sw-app", children=[
        dcc.Location(id="url", refresh=False),
        dcc.Interval(id="tick", interval=interval_ms, n_intervals=0),
        html.Header(className="sw-header", children=[
            html.Div(className="sw-brand", children=[
                html.Span("streamwatch", className="sw-logo"),
                html.Span("live anomaly monitor", className="sw-tagline"),
            ]),
            html.Nav(className="sw-nav", children=[
                dcc.Link("Overview", href="/", className="sw-navlink"),
                dcc.Link("Model health", href="/health", className="sw-navlink"),
            ]),
            html.Div(id="feed-status", className="sw-feed-status"),
        ]),
        html.Main(id="page", className="sw-main"),
    ])


def overview_page(kinds: Sequence[str]) -> html.Div:
    return html.Div(className="sw-overview", children=[
        html.Div(id="kpi-strip", className="sw-kpis"),
        html.Div(className="sw-columns", children=[
            html.Section(className="sw-card sw-streams", children=[
                html.Div(className="sw-card-head", children=[
                    html.H2("Streams"),
                    html.Div(className="sw-filters", children=[
                        dcc.Dropdown(id="filter-kind", options=list(kinds), value=None,
                                     placeholder="All kinds", clearable=True,
                                     className="sw-kind"),
                        dcc.Checklist(id="filter-status", options=list(STATUSES), value=[],
                                      inline=True, className="sw-status-filter"),
                        dcc.Input(id="filter-text", type="search", placeholder="Find stream id",
                                  debounce=True, className="sw-search"),
                    ]),
                ]),
                html.Table(className="sw-table", children=[
                    html.Thead(html.Tr([html.Th(h) for h in (
                        "Status", "Stream", "Kind", "Latest values", "Score / threshold",
                        "Open alerts", "Last data")])),
                    html.Tbody(id="stream-rows"),
                ]),
                html.Div(className="sw-pager", children=[
                    html.Button("‹ Prev", id="page-prev", n_clicks=0, className="sw-button"),
                    html.Span(id="page-label", className="sw-page-label"),
                    html.Button("Next ›", id="page-next", n_clicks=0, className="sw-button"),
                    dcc.Store(id="page-index", data=0),
                ]),
            ]),
            html.Section(className="sw-card sw-alerts", children=[
                html.Div(className="sw-card-head", children=[
                    html.H2("Alerts"),
                    dcc.Checklist(id="alerts-open-only", options=[{"label": "open only",
                                                                   "value": "open"}],
                                  value=[], inline=True),
                ]),
                html.Div(id="alert-feed", className="sw-alert-feed"),
            ]),
        ]),
    ])


def stream_page(stream_id: str, at: float | None) -> html.Div:
    window = DEFAULT_WINDOW_S
    return html.Div(className="sw-stream", children=[
        dcc.Store(id="stream-context", data={"stream_id": stream_id, "at": at}),
        dcc.Store(id="stream-cursor", data=None),
        html.Div(className="sw-stream-head", children=[
            dcc.Link("‹ Overview", href="/", className="sw-back"),
            html.H2(stream_id, id="stream-title", className="sw-stream-title"),
            html.Span(id="stream-status"),
            html.Span(id="stream-meta", className="sw-muted"),
        ]),
        html.Div(id="stream-vitals", className="sw-vitals"),
        html.Div(className="sw-card", children=[
            html.Div(className="sw-card-head", children=[
                dcc.RadioItems(id="stream-window",
                               options=[{"label": k, "value": v} for k, v in WINDOWS],
                               value=window, inline=True, className="sw-windows"),
                dcc.Checklist(id="stream-follow", options=[{"label": "follow live",
                                                            "value": "live"}],
                              value=[] if at is not None else ["live"], inline=True),
                html.Span(id="stream-legend-note", className="sw-muted", children=(
                    "shaded: red = critical alert, amber = warning alert, "
                    "green = NEWS2 normal range")),
            ]),
            dcc.Graph(id="stream-graph", config={"displaylogo": False, "responsive": True},
                      figure={"data": [], "layout": {"height": 400}}),
        ]),
        html.Section(className="sw-card", children=[
            html.H2("Alerts of this stream"),
            html.Div(id="stream-alerts", className="sw-alert-feed"),
        ]),
    ])


def health_page() -> html.Div:
    return html.Div(className="sw-health", children=[
        html.Div(id="health-kpis", className="sw-kpis"),
        html.Div(className="sw-columns", children=[
            html.Section(className="sw-card sw-wide", children=[
                html.H2("Detector throughput and training"),
                dcc.Graph(id="health-graph", config={"displaylogo": False},
                          figure={"data": [], "layout": {"height": 320}}),
                html.H2("Detector processes"),
                html.Div(id="health-detectors"),
            ]),
            html.Section(className="sw-card sw-narrow", children=[
                html.H2("Dead letters by reason"),
                html.Div(id="health-deadletters"),
                html.H2("Dashboard feed"),
                html.Div(id="health-feed"),
            ]),
        ]),
    ])


def not_found(path: str) -> html.Div:
    return html.Div(className="sw-card", children=[
        html.H2("Page not found"), html.P(["No page at ", html.Code(path), "."]),
        dcc.Link("Back to the overview", href="/"),
    ])


# ---------------------------------------------------------------- pieces
def kpi(label: str, value: str, tone: str = "neutral") -> html.Div:
    return html.Div(className=f"sw-kpi sw-kpi-{tone}", children=[
        html.Div(value, className="sw-kpi-value"), html.Div(label, className="sw-kpi-label"),
    ])


def value_chips(summary: StreamSummary, units: Mapping[str, str]) -> list[html.Span]:
    chips = []
    limits = set(summary.hard_limit_channels)
    for channel in summary.channels:
        value = summary.values.get(channel)
        tone = ("sw-chip-alarm" if channel in limits else
                "sw-chip-warn" if out_of_normal(channel, value) else "")
        chips.append(html.Span(className=f"sw-chip {tone}", title=units.get(channel, ""),
                               children=[html.Span(CHANNEL_NAMES.get(channel, channel),
                                                   className="sw-chip-name"),
                                         fmt_value(value)]))
    return chips


def stream_rows(rows: Sequence[StreamSummary],
                units_of: Mapping[str, Mapping[str, str]]) -> list[html.Tr]:
    out = []
    for s in rows:
        ratio = f"{fmt_value(s.score)} / {fmt_value(s.threshold)}"
        if s.warming_up:
            ratio += " (learning)"
        alerts: list[Any] = []
        if s.open_alerts:
            alerts = [badge(s.worst_open or "warning", str(s.open_alerts)),
                      html.Span(s.headline or "", className="sw-headline",
                                title=s.headline or "")]
        age_class = "sw-age sw-age-stale" if s.stale else "sw-age"
        out.append(html.Tr(key=s.stream_id, className=f"sw-row sw-row-{s.status}", children=[
            html.Td(badge(s.status)),
            html.Td(dcc.Link(s.stream_id, href=stream_href(s.stream_id), className="sw-stream-link")),
            html.Td(s.kind, className="sw-muted"),
            html.Td(value_chips(s, units_of.get(s.kind, {})), className="sw-chips"),
            html.Td(ratio, className="sw-num"),
            html.Td(alerts),
            html.Td(fmt_age(s.age_s), className=age_class),
        ]))
    if not out:
        out.append(html.Tr(html.Td("No streams match (yet).", colSpan=7, className="sw-empty")))
    return out


def alert_item(alert: Alert, utc_offset_s: float = 0.0, now_ts: float | None = None) -> html.Div:
    """One alert: severity, stream (link to its view at onset), explanation, open/closed."""
    is_open = alert.event != "close"
    duration = alert.explanation.duration_s
    if is_open and now_ts is not None:
        duration = max(duration, now_ts - alert.onset_ts)
    details = []
    for ch in alert.explanation.channels:
        expected = ("" if ch.expected is None else
                    f" vs {fmt_value(ch.expected)} expected"
                    + (f" ({fmt_value(ch.lower)}–{fmt_value(ch.upper)})"
                       if ch.lower is not None and ch.upper is not None else ""))
        direction = f", {ch.direction}" if ch.direction else ""
        details.append(html.Li(f"{CHANNEL_NAMES.get(ch.channel, ch.channel)} "
                               f"{fmt_value(ch.observed)}{expected}{direction}"))
    reasons = " + ".join("clinical limit" if r == "hard_limit" else "model"
                         for r in alert.explanation.reasons)
    return html.Div(key=alert.alert_id, className=f"sw-alert sw-alert-{alert.severity}"
                              f"{' sw-alert-open' if is_open else ''}", children=[
        html.Div(className="sw-alert-head", children=[
            badge(alert.severity),
            dcc.Link(alert.stream_id, href=stream_href(alert.stream_id, alert.onset_ts),
                     className="sw-stream-link"),
            html.Span("open" if is_open else "closed",
                      className="sw-state " + ("sw-state-open" if is_open else "sw-state-closed")),
            html.Span(f"{fmt_time(alert.onset_ts, utc_offset_s)} · {fmt_duration(duration)}",
                      className="sw-muted"),
        ]),
        html.Div(alert.explanation.summary, className="sw-alert-summary"),
        html.Ul(details, className="sw-alert-channels") if details else None,
        html.Div(f"peak score {fmt_value(alert.peak_score)} · {reasons}", className="sw-muted"),
    ])


def simple_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> html.Table:
    body = [html.Tr([html.Td(cell) for cell in row]) for row in rows]
    if not body:
        body = [html.Tr(html.Td("none yet", colSpan=len(header), className="sw-empty"))]
    head = [html.Thead(html.Tr([html.Th(h) for h in header]))] if any(header) else []
    return html.Table(className="sw-table sw-compact", children=[*head, html.Tbody(body)])
