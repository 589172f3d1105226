"""Thin callbacks: each is a plain method of ``DashboardCallbacks`` (call it in tests),
wired to Dash by ``register``.

Live stream updates never lose or repeat a point: the browser keeps a cursor (the store
sequence number of the last point it drew) in a ``dcc.Store``; each tick returns a
``Patch`` extending the traces with exactly the points after the cursor, together with
the new cursor, in one response. A full figure is rebuilt when the window changes, when
the cursor fell out of the ring (``reset``), or after ``rebuild_after`` appended points
(so the browser's arrays stay bounded).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import dash
from dash import Input, Output, Patch, State, html

from dashboards import figures, layout
from dashboards.feed import Feed
from dashboards.status import STATUSES, StreamSummary
from dashboards.store import DashboardStore
from streamwatch.errors import ConfigError
from streamwatch.kinds import ICU, get_kind, known_kinds


@dataclass(frozen=True)
class ViewConfig:
    """Presentation settings.

    Parameters
    ----------
    interval_ms
        Refresh period of every live view, in [100, 60000] ms.
    stale_after_s
        A stream with no score for longer is "stale", in (0, 86400] s.
    page_size
        Streams per overview page, in [5, 500].
    alert_feed_size
        Alerts shown in the feed, in [1, 1000].
    rebuild_after
        Points appended by ``Patch`` before the stream figure is rebuilt, in [10, 100000].
    utc_offset_s
        Offset of displayed times from UTC; None uses the server's local time.
    """

    interval_ms: int = 1000
    stale_after_s: float = 30.0
    page_size: int = 25
    alert_feed_size: int = 50
    rebuild_after: int = 600
    utc_offset_s: float | None = None

    def __post_init__(self) -> None:
        for name, value, lo, hi in (("interval_ms", self.interval_ms, 100, 60_000),
                                    ("page_size", self.page_size, 5, 500),
                                    ("alert_feed_size", self.alert_feed_size, 1, 1000),
                                    ("rebuild_after", self.rebuild_after, 10, 100_000)):
            if not lo <= value <= hi:
                raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
        if not 0 < self.stale_after_s <= 86_400:
            raise ConfigError(f"stale_after_s must be in (0, 86400], got {self.stale_after_s}")

    def offset(self) -> float:
        if self.utc_offset_s is not None:
            return self.utc_offset_s
        return float(time.localtime().tm_gmtoff)


@dataclass(frozen=True)
class OverviewPage:
    rows: list[StreamSummary]
    page: int
    pages: int
    total: int
    counts: dict[str, int]


def filter_and_page(summaries: Sequence[StreamSummary], *, kind: str | None = None,
                    statuses: Sequence[str] = (), text: str = "", page: int = 0,
                    page_size: int = 25) -> OverviewPage:
    """Filter (kind, statuses, id substring), sort most severe first, cut one page."""
    counts: dict[str, int] = {status: 0 for status in STATUSES}
    for s in summaries:
        counts[s.status] += 1
    needle = (text or "").strip().lower()
    chosen = [s for s in summaries
              if (not kind or s.kind == kind) and (not statuses or s.status in statuses)
              and (not needle or needle in s.stream_id.lower())]
    chosen.sort(key=StreamSummary.sort_key)
    pages = max(1, math.ceil(len(chosen) / page_size))
    page = min(max(0, page), pages - 1)
    return OverviewPage(rows=chosen[page * page_size:(page + 1) * page_size], page=page,
                        pages=pages, total=len(chosen), counts=counts)


def units_of(kind: str) -> dict[str, str]:
    try:
        return dict(get_kind(kind).units)
    except ConfigError:
        return {}


class DashboardCallbacks:
    """The dashboard's behaviour as plain methods over a store (and optionally its feed)."""

    def __init__(self, store: DashboardStore, config: ViewConfig | None = None,
                 feed: Feed | None = None) -> None:
        self.store = store
        self.config = config or ViewConfig()
        self.feed = feed

    # ------------------------------------------------------------ routing and header
    def route(self, pathname: str | None, search: str | None) -> html.Div:
        path = (pathname or "/").rstrip("/") or "/"
        if path == "/":
            return layout.overview_page(self.kinds())
        if path == "/health":
            return layout.health_page()
        if path == "/stream":
            query = parse_qs((search or "").lstrip("?"))
            stream_id = (query.get("id") or [""])[0]
            if not stream_id:
                return layout.not_found(f"{path} (no stream id given)")
            try:
                at = float((query.get("at") or ["nan"])[0])
            except ValueError:
                at = math.nan
            return layout.stream_page(stream_id, None if math.isnan(at) else at)
        return layout.not_found(path)

    def kinds(self) -> list[str]:
        seen = {s.kind for s in self.store.summaries(self.config.stale_after_s)}
        return sorted(seen or set(known_kinds()))

    def feed_status(self) -> html.Span:
        age = self.store.freshest_age_s()
        streams = self.store.stats().streams
        if age is None:
            return html.Span("waiting for data…", className="sw-live sw-live-wait")
        tone = "sw-live-ok" if age <= self.config.stale_after_s else "sw-live-stale"
        return html.Span(f"live · {streams:,} streams · last data {layout.fmt_age(age)}",
                         className=f"sw-live {tone}")

    # ------------------------------------------------------------ overview
    def overview(self, kind: str | None, statuses: Sequence[str] | None, text: str | None,
                 page: int | None, trigger: str | None) -> tuple[Any, ...]:
        """Rows of the current page, pager state, KPI strip and kind options."""
        summaries = self.store.summaries(self.config.stale_after_s)
        page = page or 0
        if trigger == "page-prev":
            page -= 1
        elif trigger == "page-next":
            page += 1
        elif trigger in ("filter-kind", "filter-status", "filter-text"):
            page = 0
        result = filter_and_page(summaries, kind=kind, statuses=statuses or (), text=text or "",
                                 page=page, page_size=self.config.page_size)
        units = {k: units_of(k) for k in {s.kind for s in result.rows}}
        start = result.page * self.config.page_size
        label = (f"{start + 1}–{start + len(result.rows)} of {result.total}"
                 if result.total else "0 of 0")
        kinds = sorted({s.kind for s in summaries})
        return (layout.stream_rows(result.rows, units), label, result.page, result.page == 0,
                result.page >= result.pages - 1, self.kpis(result.counts, len(summaries)), kinds)

    def kpis(self, counts: dict[str, int], streams: int) -> list[html.Div]:
        open_alerts = len(self.store.alerts(open_only=True))
        latest = [h[-1] for h in self.store.health().values() if h]
        rate = sum(h.readings_per_s for h in latest)
        dead = sum(n for n, _ in self.store.dead_letters().values())
        return [
            layout.kpi("streams", f"{streams:,}"),
            layout.kpi("critical", f"{counts['critical']:,}",
                       "critical" if counts["critical"] else "neutral"),
            layout.kpi("warning", f"{counts['warning']:,}",
                       "warning" if counts["warning"] else "neutral"),
            layout.kpi("stale", f"{counts['stale']:,}", "stale" if counts["stale"] else "neutral"),
            layout.kpi("open alerts", f"{open_alerts:,}"),
            layout.kpi("readings/s", f"{rate:,.0f}" if latest else "–"),
            layout.kpi("dead letters", f"{dead:,}", "warning" if dead else "neutral"),
        ]

    def alert_feed(self, open_only: Sequence[str] | None) -> list[html.Div]:
        alerts = self.store.alerts(open_only=bool(open_only),
                                   limit=self.config.alert_feed_size)
        offset = self.config.offset()
        items = [layout.alert_item(a, offset, self.store.last_ts(a.stream_id)) for a in alerts]
        return items or [html.Div("No alerts.", className="sw-empty")]

    # ------------------------------------------------------------ stream view
    def stream_header(self, context: dict[str, Any] | None) -> tuple[Any, Any, Any, Any]:
        """Status badge, meta line, latest-value tiles and the alerts of one stream."""
        stream_id = (context or {}).get("stream_id", "")
        summary = self.store.summary(stream_id, self.config.stale_after_s)
        if summary is None:
            return (layout.badge("stale", "no data"), "no scores received for this stream yet",
                    [], [html.Div("No alerts.", className="sw-empty")])
        latest_model = f"{summary.kind} · last data {layout.fmt_age(summary.age_s)}"
        if summary.warming_up:
            latest_model += " · model still learning this stream"
        units = units_of(summary.kind)
        tiles = []
        for channel in summary.channels:
            value = summary.values.get(channel)
            alarm = channel in summary.hard_limit_channels
            tone = "alarm" if alarm else "warn" if layout.out_of_normal(channel, value) else "ok"
            expected = summary.expected.get(channel)
            tiles.append(html.Div(className=f"sw-vital sw-vital-{tone}", children=[
                html.Div(layout.CHANNEL_NAMES.get(channel, channel), className="sw-vital-name"),
                html.Div([html.Span(layout.fmt_value(value), className="sw-vital-value"),
                          html.Span(units.get(channel, ""), className="sw-vital-unit")]),
                html.Div("" if expected is None else f"expected {layout.fmt_value(expected)}",
                         className="sw-muted"),
            ]))
        offset = self.config.offset()
        alerts = [layout.alert_item(a, offset, summary.ts)
                  for a in self.store.alerts(stream_id, limit=20)]
        return (layout.badge(summary.status), latest_model, tiles,
                alerts or [html.Div("No alerts.", className="sw-empty")])

    def stream_figure(self, window_s: int | None, follow: Sequence[str] | None,
                      context: dict[str, Any] | None, cursor: dict[str, Any] | None,
                      trigger: str | None) -> tuple[Any, dict[str, Any] | None]:
        """A full figure (first call, window change, missed points) or a ``Patch``."""
        ctx = context or {}
        stream_id, at = ctx.get("stream_id", ""), ctx.get("at")
        window = float(window_s or layout.DEFAULT_WINDOW_S)
        live = "live" in (follow or [])
        last_ts = self.store.last_ts(stream_id)
        if last_ts is None:
            return _empty_figure("No scores for this stream yet."), None
        rebuild = (cursor is None or trigger in ("stream-window", "stream-follow")
                   or cursor.get("window") != window or cursor.get("live") != live
                   or cursor.get("appended", 0) >= self.config.rebuild_after)
        if not rebuild:
            assert cursor is not None
            points, reset = self.store.points_since(stream_id, int(cursor["seq"]))
            if not reset and points is not None:
                return self._patch(stream_id, points, cursor, window, live)
        return self._full(stream_id, window, live, at, cursor, last_ts)

    def _full(self, stream_id: str, window: float, live: bool, at: float | None,
              cursor: dict[str, Any] | None, last_ts: float) -> tuple[Any, dict[str, Any]]:
        if live:
            start, end = last_ts - window, last_ts
        elif at is not None and (cursor is None or cursor.get("window") != window):
            start = float(at) - window / 3
            end = start + window
        elif cursor is not None and cursor.get("range"):
            start, end = cursor["range"]
            if cursor.get("window") != window:
                start = end - window
        else:
            start, end = last_ts - window, last_ts
        view = self.store.view(stream_id, start)
        assert view is not None
        series, newest = view
        kind = self.store.summary(stream_id, self.config.stale_after_s)
        kind_name = kind.kind if kind is not None else ""
        spans = figures.alert_spans(self.store.alerts(stream_id))
        figure = figures.stream_figure(
            series, units=units_of(kind_name), spans=spans, start=start, end=end,
            utc_offset_s=self.config.offset(), news2=kind_name == ICU,
            uirevision=f"{stream_id}|{window}|{live}")
        seq_ts = float(series.ts[-1]) if len(series) else None
        return figure, {"seq": newest, "last_ts": seq_ts, "window": window, "live": live,
                        "appended": 0, "range": [start, end], "news2": kind_name == ICU,
                        "spans": _span_key(spans), "channels": len(series.channels),
                        "cap": figures.score_cap(series)}

    def _patch(self, stream_id: str, points: Any, cursor: dict[str, Any], window: float,
               live: bool) -> tuple[Any, dict[str, Any]]:
        spans = figures.alert_spans(self.store.alerts(stream_id))
        span_key = _span_key(spans)
        if len(points) == 0 and span_key == cursor.get("spans"):
            return dash.no_update, cursor
        offset = self.config.offset()
        patch = Patch()
        n = int(cursor["channels"])
        new_cursor = dict(cursor, spans=span_key)
        if len(points):
            columns = figures.trace_columns(points, offset, prev_ts=cursor.get("last_ts"),
                                            cap=cursor.get("cap"))
            for c in range(n):
                for role in figures.EXTENDED_ROLES:
                    _extend(patch, figures.trace_index(n, role, c), columns[(role, c)])
            for role in figures.SCORE_ROLES:
                _extend(patch, figures.trace_index(n, role), columns[(role, -1)])
            last = float(points.ts[-1])
            new_cursor.update(seq=int(points.seq[-1]), last_ts=last,
                              appended=int(cursor.get("appended", 0)) + len(points))
            if live:
                new_cursor["range"] = [last - window, last]
                patch["layout"]["xaxis"]["range"] = figures.to_x([last - window, last], offset)
        now_ts = new_cursor.get("last_ts") or 0.0
        channels = self._channels(stream_id)
        shapes = figures.news2_shapes(channels) if cursor.get("news2") else []
        patch["layout"]["shapes"] = shapes + figures.span_shapes(spans, now_ts, offset)
        return patch, new_cursor

    def _channels(self, stream_id: str) -> tuple[str, ...]:
        summary = self.store.summary(stream_id, self.config.stale_after_s)
        return summary.channels if summary is not None else ()

    # ------------------------------------------------------------ model health
    def health(self) -> tuple[Any, Any, Any, Any, Any]:
        history = self.store.health()
        latest = [h[-1] for h in history.values() if h]
        offset = self.config.offset()
        losses = [h.training_loss for h in latest if h.training_loss is not None]
        lags = [h.consumer_lag for h in latest if h.consumer_lag is not None]
        dead = self.store.dead_letters()
        kpis = [
            layout.kpi("detectors", f"{len(latest)}"),
            layout.kpi("readings/s", f"{sum(h.readings_per_s for h in latest):,.0f}"
                       if latest else "–"),
            layout.kpi("consumer lag", f"{sum(lags):,}" if lags else "–",
                       "warning" if lags and sum(lags) > 10_000 else "neutral"),
            layout.kpi("training loss", f"{sum(losses) / len(losses):.3f}" if losses else "–"),
            layout.kpi("training steps", f"{sum(h.training_steps for h in latest):,}"),
            layout.kpi("dead letters", f"{sum(n for n, _ in dead.values()):,}",
                       "warning" if dead else "neutral"),
        ]
        detectors = layout.simple_table(
            ("detector", "last report", "readings/s", "lag", "loss", "steps", "streams",
             "open alerts", "batch ms"),
            [(h.detector_id, layout.fmt_time(h.ts, offset), f"{h.readings_per_s:,.0f}",
              "–" if h.consumer_lag is None else f"{h.consumer_lag:,}",
              "–" if h.training_loss is None else f"{h.training_loss:.3f}",
              f"{h.training_steps:,}", f"{h.streams:,}", f"{h.open_alerts:,}",
              "–" if h.batch_latency_ms is None else f"{h.batch_latency_ms:.1f}")
             for h in sorted(latest, key=lambda h: h.detector_id)])
        reported: dict[str, int] = {}
        for h in latest:
            for code, n in h.dead_letters.items():
                reported[code] = reported.get(code, 0) + n
        codes = sorted(set(dead) | set(reported),
                       key=lambda c: -max(dead.get(c, (0, ""))[0], reported.get(c, 0)))
        dead_table = layout.simple_table(
            ("reason", "seen here", "reported by detectors", "latest"),
            [(code, f"{dead.get(code, (0, ''))[0]:,}", f"{reported.get(code, 0):,}",
              dead.get(code, (0, ""))[1]) for code in codes])
        return (kpis, figures.health_figure(history, offset), detectors, dead_table,
                self._feed_table())

    def _feed_table(self) -> html.Table:
        stats = self.store.stats()
        rows: list[tuple[str, str]] = [
            ("streams held", f"{stats.streams:,}"),
            ("store memory bound", f"{stats.memory_bound_bytes / 2**20:,.1f} MiB"),
            ("late or duplicate scores ignored", f"{stats.late_or_duplicate_scores:,}"),
            ("streams refused (store full)", f"{stats.refused_streams:,}"),
            ("replayed alert events ignored", f"{stats.stale_alert_events:,}"),
            ("undecodable records", f"{sum(stats.undecodable.values()):,}"),
        ]
        if stats.last_undecodable:
            rows.append(("last undecodable", stats.last_undecodable))
        if self.feed is not None:
            rows.insert(0, ("consumer group", self.feed.group_id))
            rows += [(f"consumed {topic}", f"{n:,}")
                     for topic, n in sorted(self.feed.consumed.items())]
            rows.append(("transport errors", f"{self.feed.transport_errors:,}"))
        return layout.simple_table(("", ""), rows)

    # ------------------------------------------------------------ wiring
    def register(self, app: dash.Dash) -> None:
        """Wire every method to its components (thin wrappers only)."""
        app.callback(Output("page", "children"), Input("url", "pathname"),
                     Input("url", "search"))(self.route)
        app.callback(Output("feed-status", "children"), Input("tick", "n_intervals"))(
            lambda _n: self.feed_status())
        app.callback(
            Output("stream-rows", "children"), Output("page-label", "children"),
            Output("page-index", "data"), Output("page-prev", "disabled"),
            Output("page-next", "disabled"), Output("kpi-strip", "children"),
            Output("filter-kind", "options"),
            Input("tick", "n_intervals"), Input("filter-kind", "value"),
            Input("filter-status", "value"), Input("filter-text", "value"),
            Input("page-prev", "n_clicks"), Input("page-next", "n_clicks"),
            State("page-index", "data"),
        )(lambda _n, kind, statuses, text, _p, _q, page: self.overview(
            kind, statuses, text, page, dash.ctx.triggered_id))
        app.callback(Output("alert-feed", "children"), Input("tick", "n_intervals"),
                     Input("alerts-open-only", "value"))(lambda _n, o: self.alert_feed(o))
        app.callback(
            Output("stream-status", "children"), Output("stream-meta", "children"),
            Output("stream-vitals", "children"), Output("stream-alerts", "children"),
            Input("tick", "n_intervals"), Input("stream-context", "data"),
        )(lambda _n, context: self.stream_header(context))
        app.callback(
            Output("stream-graph", "figure"), Output("stream-cursor", "data"),
            Input("tick", "n_intervals"), Input("stream-window", "value"),
            Input("stream-follow", "value"), State("stream-context", "data"),
            State("stream-cursor", "data"),
        )(lambda _n, window, follow, context, cursor: self.stream_figure(
            window, follow, context, cursor, dash.ctx.triggered_id))
        app.callback(
            Output("health-kpis", "children"), Output("health-graph", "figure"),
            Output("health-detectors", "children"), Output("health-deadletters", "children"),
            Output("health-feed", "children"), Input("tick", "n_intervals"),
        )(lambda _n: self.health())


def _extend(patch: Patch, index: int, xy: tuple[list[Any], list[Any]]) -> None:
    x, y = xy
    if x:
        patch["data"][index]["x"].extend(x)
        patch["data"][index]["y"].extend(y)


def _span_key(spans: Sequence[figures.AlertSpan]) -> str:
    return "|".join(f"{s.alert_id}:{s.end_ts}" for s in spans)


def _empty_figure(message: str) -> dict[str, Any]:
    return {"data": [], "layout": {
        "height": 300, "template": "plotly_white", "xaxis": {"visible": False},
        "yaxis": {"visible": False},
        "annotations": [{"text": message, "showarrow": False, "font": {"size": 16}}],
    }}

