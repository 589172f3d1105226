"""``streamwatch bench dashboard``: callback time per update and memory with N streams at 1 Hz.

Issue 5: "with 1,000 streams at 1 Hz the page stays responsive". Phases:

1. **Pre-fill.** A real ``DashboardStore`` takes ``history_min`` minutes of Scores of
   ``streams`` ICU beds (``IcuSimulator`` values, forecasts from
   :mod:`streamwatch.bench.dashboard_data`), so the full-rate rings are full (steady
   state); the selected stream (bed 1, with an open critical alert) has 24 h, so every
   window from 5 min to 24 h draws full history tiers. Alerts of a few streams, Health
   records and dead letters are loaded too.
2. **Run.** For ``seconds`` of wall time a feeder thread adds one simulated second
   (a Score per stream, encoded to JSON and taken in by ``Feed.handle``: decode + store,
   what the feed thread does per record) every wall second, with alert events and a
   Health record; meanwhile the main thread calls the real callbacks every
   ``interval_s``, as the browser's ``dcc.Interval`` tick does: header status, overview
   (first page, KPIs), alert feed, stream header, stream figure (live ``Patch`` after
   the cursor) and a full redraw with another window each tick, model health. Each call
   is timed (``perf_counter``), and its return value is serialised as Dash does
   (``plotly.io.json.to_json_plotly``): bytes the browser parses, and the encode time.
3. **HTTP.** The app (``create_app``) on a free loopback port (werkzeug, as
   ``streamwatch dashboard``) answers ``http_calls`` POSTs to ``/_dash-update-component``
   per callback, with the payload the browser sends (built from ``app.callback_map``).

Memory: RSS (``/proc/self/statm``) before the store exists, after the pre-fill and at the
end, with the store's own array bound. See ``docs/bench.md``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from streamwatch.bench.dashboard_measure import Timings, http_round_trips, rss_bytes, stats
from streamwatch.bench.measure import load_average
from streamwatch.errors import ConfigError, StreamwatchError

log = logging.getLogger(__name__)

#: p95 targets in ms at 1,000 streams: each well under one 1-s tick, and one tick's
#: callbacks together (three tabs open: overview, stream, health) under the tick.
TARGETS_MS: dict[str, float] = {
    "feed_status": 50, "overview": 250, "alert_feed": 100, "stream_header": 100,
    "stream_patch": 100, "stream_window": 500, "health": 250,
}  # fmt: skip
#: RSS the run may add after its first cycle through the windows (rings full, every
#: figure size built once): a bounded store does not grow with time.
GROWTH_TARGET_MIB = 16.0
DEEP_HISTORY_S = 86_400.0


@dataclass(frozen=True)
class DashboardBenchOptions:
    """Sizes of one run (ranges are checked; see the module doc)."""

    streams: int = 1000
    seconds: float = 30.0
    history_min: float = 15.0
    interval_s: float = 1.0
    seed: int = 1
    http_calls: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        for name, value, lo, hi in (("streams", self.streams, 1, 20_000),
                                    ("seconds", self.seconds, 1, 3600),
                                    ("history_min", self.history_min, 1, 1440),
                                    ("interval_s", self.interval_s, 0.1, 60),
                                    ("http_calls", self.http_calls, 0, 10_000)):
            if not lo <= value <= hi:
                raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
        if self.seconds < self.interval_s:
            raise ConfigError(f"seconds ({self.seconds}) must be >= interval_s ({self.interval_s})")


def _warm_up(callbacks: Any, ids: list[str], channels: Any, kind: str, ts: Any,
             values: Any) -> None:
    """Every callback once over a throwaway one-stream store (what the first page load does)."""
    from streamwatch.bench.dashboard_data import ScoreMaker, health

    maker = ScoreMaker(ids, channels, kind, values[0, :1])
    for i in range(1, 60):
        callbacks.store.add_score(maker.step(float(ts[i]), values[i, :1])[0])
        callbacks.store.add_health(health(float(ts[i]), 1, i, 0))
    ctx = {"stream_id": ids[0], "at": None}
    timings = Timings()
    timings.call("", callbacks.overview, None, [], "", 0, "tick")
    timings.call("", callbacks.alert_feed, [])
    timings.call("", callbacks.stream_header, ctx)
    timings.call("", callbacks.stream_figure, 900, ["live"], ctx, None, None)
    timings.call("", callbacks.health)


def run_dashboard_bench(opts: DashboardBenchOptions) -> dict[str, Any]:
    """Run the phases (module doc); returns the JSON-ready result."""
    from tqdm import tqdm

    from dashboards.callbacks import DashboardCallbacks, ViewConfig
    from dashboards.feed import Feed
    from dashboards.layout import WINDOWS
    from dashboards.store import DashboardStore
    from simulators.icu import IcuSimulator
    from streamwatch.bench.dashboard_data import AlertPlan, ScoreMaker, health
    from streamwatch.bench.report import machine_info
    from streamwatch.schema import dead_letter, encode
    from streamwatch.transport.base import ALERTS, HEALTH, SCORES, Message
    from streamwatch.transport.memory import MemoryTransport

    load_start = load_average()
    bar = {"disable": not opts.progress, "leave": False}
    history, steps = round(opts.history_min * 60), math.ceil(opts.seconds)
    sim = IcuSimulator(patients=opts.streams, seed=opts.seed)
    ts, values, _ = sim.arrays(float(history + steps + 1))  # row 0 seeds the forecasts
    sid = sim.stream_ids[0]
    deep_s = max(0.0, DEEP_HISTORY_S - history)
    deep = IcuSimulator(patients=1, seed=opts.seed, start_ts=sim.start_ts - deep_s - 1)
    deep_ts, deep_values, _ = deep.arrays(deep_s + 1)

    config = ViewConfig(interval_ms=round(opts.interval_s * 1000))
    _warm_up(DashboardCallbacks(DashboardStore(), config), sim.stream_ids[:1], sim.channels,
             sim.kind, ts, values)  # lazy imports and first-call caches: not the store's memory
    rss = {"before_store": rss_bytes()}
    store = DashboardStore(max_streams=max(5_000, opts.streams))
    feed = Feed(MemoryTransport(), store)  # only handle(): decode + add, per record
    callbacks = DashboardCallbacks(store, config, feed)
    maker = ScoreMaker(sim.stream_ids, sim.channels, sim.kind, values[0], opts.seed)
    plan = AlertPlan(sim.stream_ids, 0, opts.seed)
    t_fill = time.perf_counter()
    one = ScoreMaker([sid], sim.channels, sim.kind, deep_values[0, :1], opts.seed)
    for i in tqdm(range(1, len(deep_ts)), desc="pre-fill 24 h of the selected stream", **bar):
        store.add_score(one.step(float(deep_ts[i]), deep_values[i, :1])[0])
    for i in tqdm(range(1, history + 1), desc=f"pre-fill {opts.history_min:g} min", **bar):
        for score in maker.step(float(ts[i]), values[i]):
            store.add_score(score)
        store.add_health(health(float(ts[i]), opts.streams, i, len(plan.open)))
    for a in plan.history(float(ts[1]), float(ts[history + 1])):
        store.add_alert(a)
    for i, code in enumerate(("not_json", "schema", "schema", "non_finite")):
        store.add_dead_letter(dead_letter(b"{bad", code, f"bench dead letter {i}", field=None,
                                          topic="streamwatch.readings", partition=0, offset=i,
                                          ts=float(ts[history])))  # fmt: skip
    prefill_s = time.perf_counter() - t_fill
    rss["after_prefill"] = rss_bytes()

    timings = Timings()
    ctx = {"stream_id": sid, "at": None}
    (_, live), _ = timings.call("stream_open", callbacks.stream_figure, 900, ["live"], ctx,
                                None, None)
    window_cursor: dict[str, Any] | None = None
    by_window: dict[int, list[float]] = {}
    feed_ms: list[float] = []
    late: list[float] = []
    failed: list[BaseException] = []
    stop = threading.Event()
    t0 = time.perf_counter() + 0.1

    def feeder() -> None:
        try:
            for k in range(steps):
                if stop.wait(max(0.0, t0 + k - time.perf_counter())):
                    return
                late.append(max(0.0, time.perf_counter() - (t0 + k)) * 1e3)
                start, i = time.perf_counter(), history + 1 + k
                step_ts = float(ts[i])
                records = [(SCORES, encode(s)) for s in maker.step(step_ts, values[i])]
                records += [(ALERTS, encode(a)) for a in plan.at(k, step_ts)]
                records.append((HEALTH, encode(health(step_ts, opts.streams, i, len(plan.open)))))
                for n, (topic, value) in enumerate(records):
                    feed.handle(Message(topic, 0, i * 10_000 + n, None, value, int(step_ts * 1e3)))
                feed_ms.append((time.perf_counter() - start) * 1e3)
        except BaseException as exc:  # handed to the main thread, which raises it
            log.exception("bench feeder failed")
            failed.append(exc)

    thread = threading.Thread(target=feeder, name="bench-dashboard-feeder", daemon=True)
    thread.start()
    ticks, overruns = int(opts.seconds / opts.interval_s), 0
    tick_ms: list[float] = []
    tick_rss: list[int] = []
    windows = [w for _, w in WINDOWS]
    try:
        for j in tqdm(range(ticks), desc="run (ticks)", **bar):
            wait = t0 + (j + 0.5) * opts.interval_s - time.perf_counter()
            overruns += wait < 0
            time.sleep(max(0.0, wait))
            if failed:
                break
            total = timings.call("feed_status", callbacks.feed_status)[1]
            total += timings.call("overview", callbacks.overview, None, [], "", 0, "tick")[1]
            total += timings.call("alert_feed", callbacks.alert_feed, [])[1]
            total += timings.call("stream_header", callbacks.stream_header, ctx)[1]
            (_, live), ms = timings.call("stream_patch", callbacks.stream_figure, 900, ["live"],
                                         ctx, live, "tick")  # fmt: skip
            total += ms
            window = windows[j % len(windows)]
            (_, window_cursor), ms = timings.call("stream_window", callbacks.stream_figure, window,
                                                  ["live"], ctx, window_cursor, "stream-window")  # fmt: skip
            by_window.setdefault(window, []).append(timings.ms["stream_window"][-1])
            total += ms + timings.call("health", callbacks.health)[1]
            tick_ms.append(total)
            tick_rss.append(rss_bytes())
        thread.join(steps + 30.0)  # the feeder's last second, if it is behind
    finally:
        stop.set()
        thread.join(10)
    if failed:
        raise StreamwatchError(f"the bench feeder failed: {failed[0]!r}") from failed[0]
    rss["end"] = rss_bytes()
    held = store.stats()
    http: dict[str, Any] = {"skipped": "http_calls=0"}
    if opts.http_calls:
        with tqdm(total=2 * opts.http_calls, desc="http round trips", **bar) as progress:
            http = http_round_trips(store, config, opts.http_calls, ctx, progress)
    rss["after_http"] = rss_bytes()

    machine = machine_info()  # imports torch: only now, so it is not in the RSS figures
    machine["load_average_start"], machine["load_average_end"] = load_start, load_average()
    names = ["feed_status", "overview", "alert_feed", "stream_header", "stream_patch",
             "stream_window", "health", "stream_open"]
    cbs = {n: timings.summary(n) for n in names if n in timings.ms}
    cbs["stream_window"]["by_window_ms"] = {str(w): stats(v) for w, v in by_window.items()}
    mib = {k: round(v / 2**20, 1) for k, v in rss.items()}
    cycle = len(windows)
    bound = held.memory_bound_bytes / 2**20
    memory = {
        "rss_mib": mib, "store_rss_mib": round(mib["after_prefill"] - mib["before_store"], 1),
        "store_array_bound_mib": round(bound, 1),
        "rss_per_stream_kib": round((rss["after_prefill"] - rss["before_store"]) / 1024
                                    / opts.streams, 1),
        "growth_during_run_mib": round(mib["end"] - mib["after_prefill"], 1),
        # after one tick per window (the largest figures built once): allocator high water
        # reached, so what grows after it would grow with time
        "growth_after_first_window_cycle_mib": round((rss["end"] - tick_rss[cycle - 1]) / 2**20, 1)
        if len(tick_rss) > cycle else None,
        "rss_per_tick_mib": [round(r / 2**20, 1) for r in tick_rss],
        "method": "RSS from /proc/self/statm; the simulator's arrays exist before 'before_store'",
    }  # fmt: skip
    result = {
        "machine": machine,
        "config": {**asdict(opts), "selected_stream": sid, "selected_history_s": deep_s + history,
                   "interval_ms": config.interval_ms, "page_size": config.page_size,
                   "recent_points": store.buffers.recent_points,
                   "tiers": [list(t) for t in store.buffers.tiers], "windows_s": windows,
                   "ticks_planned": ticks, "prefill_s": round(prefill_s, 1)},
        "callbacks": cbs,
        "ticks": {"count": len(tick_ms), "overruns": int(overruns), "total_ms": stats(tick_ms)},
        "feed": {"seconds_fed": len(feed_ms), "ms_per_second": stats(feed_ms),
                 "start_late_ms": stats(late), "records": dict(feed.consumed),
                 "undecodable": dict(feed.errors)},
        "store": {"streams": held.streams, "points": held.points, "alerts": held.alerts,
                  "late_or_duplicate_scores": held.late_or_duplicate_scores,
                  "refused_streams": held.refused_streams},
        "memory": memory,
        "http": http,
        "targets": {"p95_callback_ms": config.interval_ms, "p95_ms": dict(TARGETS_MS),
                    "tick_total_p95_ms": config.interval_ms,
                    "growth_after_first_window_cycle_mib": GROWTH_TARGET_MIB},
    }  # fmt: skip
    result["verdict"] = verdict(result)
    return result


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Targets met: each callback's p95, the page keeping up (one tick), bounded memory."""
    targets, cbs = result["targets"], result["callbacks"]
    per = {n: cbs[n]["ms"]["p95"] <= t for n, t in targets["p95_ms"].items() if n in cbs}
    tick = result["ticks"]["total_ms"].get("p95", math.inf)
    keeps_up = (all(c["ms"]["p95"] < targets["p95_callback_ms"] for c in cbs.values())
                and tick < targets["tick_total_p95_ms"])
    mem = result["memory"]
    growth = mem["growth_after_first_window_cycle_mib"]
    growth = mem["growth_during_run_mib"] if growth is None else growth
    memory = growth <= targets["growth_after_first_window_cycle_mib"]
    return {"callbacks_met": per, "page_keeps_up": keeps_up, "memory_bounded": memory,
            "met": all(per.values()) and keeps_up and memory}


def table(result: dict[str, Any]) -> str:
    """The callbacks side by side, then memory, HTTP and the machine's load."""
    head = (f"{'callback':<14} {'calls':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'max ms':>8} {'target':>7} {'enc p95':>8} {'kB p50':>8} {'kB max':>8} {'met':>4}")
    lines = [head, "-" * len(head)]
    met = result["verdict"]["callbacks_met"]
    for name, c in result["callbacks"].items():
        m, b = c["ms"], c["bytes"]
        target = result["targets"]["p95_ms"].get(name)
        lines.append(
            f"{name:<14} {m['count']:>5} {m['p50']:>8.1f} {m['p95']:>8.1f} {m['p99']:>8.1f} "
            f"{m['max']:>8.1f} {'-' if target is None else f'{target:g}':>7} "
            f"{c['encode_ms']['p95']:>8.1f} {b['p50'] / 1e3:>8.1f} {b['max'] / 1e3:>8.1f} "
            f"{'-' if name not in met else 'yes' if met[name] else 'NO':>4}")  # fmt: skip
    t, mem, v = result["ticks"], result["memory"], result["verdict"]
    lines.append(f"one tick, all callbacks: p50 {t['total_ms']['p50']:.1f} ms, p95 "
                 f"{t['total_ms']['p95']:.1f} ms, max {t['total_ms']['max']:.1f} ms over "
                 f"{t['count']} ticks ({t['overruns']} late)")  # fmt: skip
    lines.append(f"memory: RSS {mem['rss_mib']} MiB; store {mem['store_rss_mib']} MiB "
                 f"({mem['rss_per_stream_kib']} KiB/stream, array bound "
                 f"{mem['store_array_bound_mib']} MiB); run added {mem['growth_during_run_mib']} "
                 f"MiB, {mem['growth_after_first_window_cycle_mib']} MiB after the first "
                 f"{len(result['config']['windows_s'])} ticks")
    for name in ("overview", "stream_open"):
        h = result["http"].get(name)
        if h:
            lines.append(f"http {name}: p50 {h['ms']['p50']:.1f} ms, p95 {h['ms']['p95']:.1f} ms, "
                         f"max {h['ms']['max']:.1f} ms, {h['bytes']['p50'] / 1e3:.1f} kB "
                         f"({h['ms']['count']} POSTs)")  # fmt: skip
    m = result["machine"]
    lines.append(f"page keeps up: {v['page_keeps_up']}; memory bounded: {v['memory_bounded']}; "
                 f"all targets met: {v['met']}")
    lines.append(f"load average start {m['load_average_start']} end {m['load_average_end']}; "
                 f"{m['cores']} cores, {m['cpu_model']}")
    return "\n".join(lines)
