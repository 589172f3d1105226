"""``streamwatch bench dashboard`` run small through the CLI: JSON structure and consistent counts.

No timing assertions: speed is what the benchmark reports, not what a test checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamwatch.bench.dashboard import DEEP_HISTORY_S, TARGETS_MS, DashboardBenchOptions
from streamwatch.cli import main
from streamwatch.errors import ConfigError

STREAMS, SECONDS, HISTORY_MIN, HTTP_CALLS = 50, 3, 2, 3
PER_TICK = ("feed_status", "overview", "alert_feed", "stream_header", "stream_patch",
            "stream_window", "health")


# one worker runs the module, so the bench behind its fixture runs once under pytest-xdist
pytestmark = pytest.mark.xdist_group("bench-dashboard")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "dashboard.json"
    code = main(["--log-level", "warning", "bench", "dashboard", "--streams", str(STREAMS),
                 "--seconds", str(SECONDS), "--history-min", str(HISTORY_MIN),
                 "--http-calls", str(HTTP_CALLS), "--no-progress", "--json", str(out)])
    assert code == 0
    return json.loads(Path(out).read_text())


def test_bench_dashboard_writes_machine_config_callbacks_memory_http_targets_verdict(
    result: dict[str, Any],
) -> None:
    assert {"machine", "config", "callbacks", "memory", "http", "targets", "verdict"} <= set(result)
    machine = result["machine"]
    assert len(machine["load_average_start"]) == len(machine["load_average_end"]) == 3
    assert machine["cores"] >= 1
    assert result["config"]["streams"] == STREAMS and result["config"]["interval_ms"] == 1000
    assert result["targets"]["p95_callback_ms"] == 1000
    assert result["targets"]["p95_ms"] == TARGETS_MS
    assert set(result["verdict"]["callbacks_met"]) == set(TARGETS_MS)
    assert all(isinstance(v, bool) for v in result["verdict"]["callbacks_met"].values())
    assert isinstance(result["verdict"]["met"], bool)


def test_bench_dashboard_calls_every_callback_once_per_tick_and_feeds_every_second(
    result: dict[str, Any],
) -> None:
    ticks = result["ticks"]["count"]
    assert ticks == SECONDS  # one tick per interval_s = 1 s
    cbs = result["callbacks"]
    for name in PER_TICK:
        assert cbs[name]["ms"]["count"] == cbs[name]["bytes"]["count"] == ticks, name
        assert cbs[name]["ms"]["p50"] <= cbs[name]["ms"]["max"], name
        assert cbs[name]["bytes"]["p50"] > 0 or name == "stream_patch", name
    assert cbs["stream_open"]["ms"]["count"] == 1
    assert cbs["stream_open"]["results"] == {"dict": 1}  # a full figure on page load
    assert cbs["stream_window"]["results"] == {"dict": ticks}  # a window change redraws
    assert sum(cbs["stream_patch"]["results"].values()) == ticks
    assert set(cbs["stream_patch"]["results"]) <= {"patch", "no_update"}
    windows = result["config"]["windows_s"]
    assert [int(w) for w in cbs["stream_window"]["by_window_ms"]] == windows[:ticks]
    feed = result["feed"]
    assert feed["seconds_fed"] == SECONDS and feed["undecodable"] == {}
    assert feed["records"]["streamwatch.scores"] == STREAMS * SECONDS
    assert feed["records"]["streamwatch.health"] == SECONDS


def test_bench_dashboard_store_holds_every_stream_and_every_point_fed(
    result: dict[str, Any],
) -> None:
    store = result["store"]
    history = HISTORY_MIN * 60
    assert store["streams"] == STREAMS
    assert store["refused_streams"] == store["late_or_duplicate_scores"] == 0
    deep = DEEP_HISTORY_S - history  # the selected stream's longer history
    assert store["points"] == STREAMS * (history + SECONDS) + deep
    assert result["config"]["selected_history_s"] == DEEP_HISTORY_S
    assert store["alerts"] >= 2


def test_bench_dashboard_reports_positive_memory_and_http_round_trips(
    result: dict[str, Any],
) -> None:
    mem = result["memory"]
    assert all(v > 0 for v in mem["rss_mib"].values())
    assert mem["store_array_bound_mib"] > 0
    assert len(mem["rss_per_tick_mib"]) == result["ticks"]["count"]
    http = result["http"]
    for name in ("overview", "stream_open"):
        assert http[name]["ms"]["count"] == http[name]["bytes"]["count"] == HTTP_CALLS
        assert http[name]["bytes"]["p50"] > 0
    assert "stream-rows.children" in http["overview"]["output"]


@pytest.mark.parametrize("field, value", [("streams", 0), ("seconds", 0.5),
                                          ("history_min", 0), ("interval_s", 0.05)])
def test_bench_dashboard_options_name_the_allowed_range(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"{field} must be in"):
        DashboardBenchOptions(**{field: value})  # type: ignore[arg-type]
