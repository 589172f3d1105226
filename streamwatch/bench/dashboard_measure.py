"""Measuring tools of ``streamwatch bench dashboard``: RSS, timed callback calls, HTTP.

:class:`Timings` times a callback call and serialises its return value as Dash does
(``plotly.io.json.to_json_plotly``): the bytes the browser parses. :func:`payload`
builds the body the Dash renderer POSTs to ``/_dash-update-component`` from the app's
``callback_map``, so the HTTP round trips use exactly the registered ids.

>>> stats([1.0, 2.0, 3.0, 4.0])["p50"], stats([])
(2.5, {'count': 0})
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

from streamwatch.errors import StreamwatchError

log = logging.getLogger(__name__)


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``, else psutil)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError as exc:
        try:
            import psutil
        except ImportError:
            raise StreamwatchError(f"cannot read this process's memory ({exc}): install psutil "
                                   "(pip install psutil)") from exc  # fmt: skip
        return int(psutil.Process().memory_info().rss)


def stats(xs: list[float], digits: int = 2) -> dict[str, Any]:
    a = np.asarray(xs, dtype=np.float64)
    if not a.size:
        return {"count": 0}
    p = np.percentile(a, [50, 95, 99])
    return {"count": int(a.size), "p50": round(float(p[0]), digits),
            "p95": round(float(p[1]), digits), "p99": round(float(p[2]), digits),
            "max": round(float(a.max()), digits), "mean": round(float(a.mean()), digits)}


class Timings:
    """Per callback: call time, serialisation time and response bytes of every call."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}
        self.encode_ms: dict[str, list[float]] = {}
        self.bytes: dict[str, list[float]] = {}
        self.kinds: dict[str, dict[str, int]] = {}

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        import dash
        from plotly.io.json import to_json_plotly

        t0 = time.perf_counter()
        out = fn(*args)
        t1 = time.perf_counter()
        parts = out if isinstance(out, tuple) else (out,)
        size = len(to_json_plotly([p for p in parts if p is not dash.no_update]))
        t2 = time.perf_counter()
        self.ms.setdefault(name, []).append((t1 - t0) * 1e3)
        self.encode_ms.setdefault(name, []).append((t2 - t1) * 1e3)
        self.bytes.setdefault(name, []).append(float(size))
        kind = ("no_update" if parts[0] is dash.no_update else type(parts[0]).__name__.lower())
        counts = self.kinds.setdefault(name, {})
        counts[kind] = counts.get(kind, 0) + 1
        return out, (t2 - t0) * 1e3

    def summary(self, name: str) -> dict[str, Any]:
        return {"ms": stats(self.ms[name]), "encode_ms": stats(self.encode_ms[name]),
                "bytes": stats(self.bytes[name], 0), "results": self.kinds[name]}


def payload(app: Any, key: str, values: dict[str, Any], changed: list[str]) -> bytes:
    """The JSON body the Dash renderer POSTs for callback ``key`` with these prop values."""
    cb = app.callback_map[key]
    outputs = cb["output"] if isinstance(cb["output"], list) else [cb["output"]]

    def deps(items: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [{**d, "value": values[f"{d['id']}.{d['property']}"]} for d in items]

    outs = [{"id": o.component_id, "property": o.component_property} for o in outputs]
    body = {"output": key, "outputs": outs if isinstance(cb["output"], list) else outs[0],
            "inputs": deps(cb["inputs"]), "state": deps(cb["state"]), "changedPropIds": changed}
    return json.dumps(body).encode()


def http_round_trips(store: Any, config: Any, calls: int, context: dict[str, Any],
          progress: Any) -> dict[str, Any]:
    from dashboards.app import create_app, serve_in_thread

    app = create_app(store, config=config)
    server = serve_in_thread(app, "127.0.0.1", 0)
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)  # one INFO line per POST otherwise
    values = {"tick.n_intervals": 1, "filter-kind.value": None, "filter-status.value": [],
              "filter-text.value": "", "page-prev.n_clicks": 0, "page-next.n_clicks": 0,
              "page-index.data": 0, "stream-window.value": 900, "stream-follow.value": ["live"],
              "stream-context.data": context, "stream-cursor.data": None}  # fmt: skip
    wanted = {"overview": "stream-rows.children", "stream_open": "stream-graph.figure"}
    out: dict[str, Any] = {"url": server.url, "calls_per_callback": calls}
    try:
        for name, prop in wanted.items():
            key = next(k for k in app.callback_map if f".{prop}." in f".{k}.")
            body = payload(app, key, values, ["tick.n_intervals"])
            ms, sizes = [], []
            for _ in range(calls):
                req = urllib.request.Request(f"{server.url}/_dash-update-component", data=body,
                                             headers={"Content-Type": "application/json"})
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=30) as resp:
                    data = resp.read()
                ms.append((time.perf_counter() - t0) * 1e3)
                if resp.status != 200 or b'"response"' not in data:
                    raise StreamwatchError(f"{name}: the dashboard answered HTTP {resp.status} "
                                           f"{data[:200]!r}")  # fmt: skip
                sizes.append(float(len(data)))
                progress.update(1)
            out[name] = {"output": key, "ms": stats(ms), "bytes": stats(sizes, 0)}
    finally:
        access_log.setLevel(level)
        server.stop()
    return out
