"""The dashboard in real headless Chromium, fed live by the real pipeline.

Seeded ICU vitals from ``simulators.icu``, with a desaturation injected on one bed, go
to ``streamwatch.readings`` on the in-memory transport; the real detector service
(``streamwatch detect``'s ``DetectorService``: GRU forecaster, adaptive thresholds, NEWS2
hard limits, alert state machine) turns them into ``Score``/``Alert``/``Health``
records; the dashboard's ``Feed`` thread reads those into its store while the browser
watches.

Chromium stays off the network (``--host-resolver-rules``) and keeps its profile and
caches in a temp dir. Screenshots go to ``test-results/``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from dashboards import figures
from dashboards.app import create_app, serve_in_thread
from dashboards.callbacks import ViewConfig
from dashboards.feed import Feed
from dashboards.store import DashboardStore
from simulators.icu import IcuSimulator
from streamwatch.commands.detect import build_service
from streamwatch.config import load_settings
from streamwatch.kinds import get_kind
from streamwatch.schema import Reading, encode
from streamwatch.transport import READINGS, MemoryTransport

# one worker runs the module, so its pipeline fixture starts once under pytest-xdist
pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

RESULTS = Path(__file__).resolve().parents[2] / "test-results"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BEDS, EPISODE_BED, HISTORY_S = 12, "icu/bed-07", 900
CHANNELS = get_kind("icu_vitals").channels


def desaturate(r: Reading, onset: float) -> Reading:
    """Inject a desaturation with compensatory tachycardia and tachypnoea on one bed."""
    if r.stream_id != EPISODE_BED or r.ts < onset:
        return r
    k = min(1.0, (r.ts - onset) / 40.0)
    v = dict(r.values)
    v["spo2"] = (v["spo2"] or 97.0) - 13.0 * k
    v["hr"] = (v["hr"] or 80.0) + 42.0 * k
    v["rr"] = (v["rr"] or 16.0) + 11.0 * k
    return Reading(stream_id=r.stream_id, kind=r.kind, ts=r.ts, values=v)


class LiveSource:
    """Simulated bedside monitors: history at once, then one reading per bed a second."""

    def __init__(self, bus: MemoryTransport, now: float) -> None:
        self.sim = IcuSimulator(patients=BEDS, seed=11, start_ts=now - HISTORY_S,
                                episodes=False, artefacts=False)
        self.steps = self.sim.readings(HISTORY_S + 3600)
        self.producer = bus.producer()
        self.onset = now - 150.0
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def step(self) -> None:
        for reading in next(self.steps):
            r = desaturate(reading, self.onset)
            self.producer.send(READINGS, encode(r), key=r.stream_id.encode())
        self.producer.flush()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            if not self.paused.is_set():
                self.step()


def chrome(tmp: Path) -> webdriver.Chrome:
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "xdg-config")
    os.environ["XDG_CACHE_HOME"] = str(tmp / "xdg-cache")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1440,1000",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
                f"--user-data-dir={tmp / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DashboardStore,
                                                                          LiveSource]]:
    """Simulator -> detector service -> feed -> dashboard server, shared by the module."""
    tmp = tmp_path_factory.mktemp("pipeline")
    bus = MemoryTransport(session_timeout_ms=2000)
    settings = load_settings(overrides={
        "topics": {"partitions": 4},
        "service": {"checkpoint_dir": str(tmp / "detector"), "metrics_port": 0,
                    "health_every_s": 1.0, "poll_timeout_s": 0.1},
    })
    detector = build_service(settings, bus, instance="detector-1")
    source = LiveSource(bus, time.time())
    for _ in range(HISTORY_S):
        source.step()
    store = DashboardStore()
    feed = Feed(bus, store, poll_timeout_s=0.1).start()
    detecting = threading.Thread(target=detector.run, daemon=True)
    detecting.start()
    server = serve_in_thread(create_app(store, config=ViewConfig(utc_offset_s=0.0), feed=feed),
                             "127.0.0.1", 0)
    source.thread.start()
    deadline = time.monotonic() + 180  # the detector catches up with the history first
    while not store.alerts(EPISODE_BED, open_only=True) and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        if not store.alerts(EPISODE_BED, open_only=True):
            pytest.fail(f"no alert for {EPISODE_BED} reached the dashboard store within "
                        f"180 s ({store.stats().points} scores so far)", pytrace=False)
        yield server.url, store, source
    finally:
        source.stop.set()
        server.stop()
        detector.stop()
        detecting.join(30)
        feed.stop()


@pytest.fixture
def live(pipeline: tuple[str, DashboardStore, LiveSource],
         tmp_path: Path) -> Iterator[tuple[Any, str, DashboardStore, LiveSource]]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make system-deps` "
                    "(apt-get install chromium chromium-driver)", pytrace=False)
    driver = chrome(tmp_path)
    try:
        yield (driver, *pipeline)
    finally:
        driver.quit()


def plot(driver: Any, selector: str) -> dict[str, Any] | None:
    """The live plotly figure of a dcc.Graph, as the browser holds it."""
    result: dict[str, Any] | None = driver.execute_script(
        "const g = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        "if (!g || !g.data || !g.data.length) return null;"
        "return {data: g.data.map(t => ({meta: t.meta || null, fill: t.fill || null,"
        "  x: Array.from(t.x || []), y: Array.from(t.y || [])})),"
        "  shapes: (g.layout.shapes || []).map(s => s.name || ''),"
        "  range: g.layout.xaxis.range};", selector)
    return result


def click(driver: Any, css: str, tries: int = 10) -> None:
    """Click the first element matching ``css``, again if a live re-render replaced it."""
    for attempt in range(tries):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            if attempt == tries - 1:
                raise
            time.sleep(0.1)


def text(driver: Any, css: str) -> str:
    """The text of the first element matching ``css`` ('' if none), read atomically in JS."""
    value: str = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css)
    return value


def severe(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_critical_episode_shows_on_the_overview_and_in_its_live_stream_view(live) -> None:
    driver, url, store, source = live
    RESULTS.mkdir(exist_ok=True)
    wait = WebDriverWait(driver, 60, poll_frequency=0.25)
    driver.get(url + "/")
    first_row = "#stream-rows tr:first-child"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, first_row + " .sw-critical"))
    rows = driver.execute_script(  # read in one go: the table re-renders every second
        "return Array.from(document.querySelectorAll('#stream-rows tr')).map(r => ["
        "r.querySelector('.sw-badge').textContent, r.querySelector('.sw-stream-link').textContent]);")
    assert rows[0] == ["critical", EPISODE_BED]
    assert len(rows) == BEDS and "critical" not in {r[0] for r in rows[1:]}
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#alert-feed .sw-alert-open"))
    driver.save_screenshot(str(RESULTS / "dashboard-overview.png"))

    click(driver, first_row + " .sw-stream-link")
    wait.until(lambda d: (plot(d, "#stream-graph") or {}).get("shapes"))
    fig = plot(driver, "#stream-graph")
    assert fig is not None
    bands = [t for t in fig["data"] if (t["meta"] or {}).get("role") == "band_lo"]
    assert [t["meta"]["channel"] for t in bands] == list(CHANNELS)
    assert all(t["fill"] == "tonexty" and sum(y is not None for y in t["y"]) > 100
               for t in bands)
    assert any(name.startswith("alert:critical:open:") for name in fig["shapes"])
    assert {f"news2:{c}" for c in ("hr", "spo2", "rr", "sbp", "temp")} <= set(fig["shapes"])
    assert text(driver, "#stream-title") == EPISODE_BED

    # live: points arrive once a second; none lost, none repeated
    observed = figures.trace_index(len(CHANNELS), "observed", 0)
    before = len(fig["data"][observed]["x"])
    wait.until(lambda d: len((plot(d, "#stream-graph") or fig)["data"][observed]["x"])
               >= before + 3)
    for _ in range(2):  # the page grows once the figure is taller: fit it twice
        driver.set_window_size(1440, driver.execute_script(
            "return document.documentElement.scrollHeight") + 200)
        time.sleep(1.5)
    driver.save_screenshot(str(RESULTS / "dashboard.png"))
    source.paused.set()
    time.sleep(5.0)  # the detector, the feed and one more tick catch up with the last step
    fig = plot(driver, "#stream-graph")
    assert fig is not None
    xs = [x for x, y in zip(fig["data"][observed]["x"], fig["data"][observed]["y"], strict=True)
          if y is not None]
    held = store.series(EPISODE_BED, 0.0)
    assert held is not None
    raw = figures.to_x(held.ts[held.res == 0])  # the full-rate points the store still holds
    lo = max(xs[0], raw[0])
    drawn = [x for x in xs if x >= lo]
    assert len(drawn) > 100 and len(xs) > before
    assert drawn == [x for x in raw if x >= lo]  # every point, once, in order
    source.paused.clear()
    assert severe(driver) == []


def test_selecting_an_alert_opens_its_stream_at_that_time(live) -> None:
    driver, url, store, _source = live
    wait = WebDriverWait(driver, 60, poll_frequency=0.25)
    driver.get(url + "/")
    link = "#alert-feed .sw-alert-open .sw-stream-link"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, link))
    (alert,) = store.alerts(open_only=True)
    click(driver, link)
    wait.until(lambda d: (plot(d, "#stream-graph") or {}).get("shapes"))
    assert "at=" in driver.current_url and EPISODE_BED.replace("/", "%2F") in driver.current_url
    fig = plot(driver, "#stream-graph")
    assert fig is not None
    start, end = figures.to_x([alert.onset_ts - 300, alert.onset_ts + 600])
    assert [r[:19] for r in fig["range"]] == [start[:19], end[:19]]
    # looking back at the alert, not following live
    assert not driver.execute_script("return document.querySelector('#stream-follow input').checked;")
    assert severe(driver) == []


def test_overview_and_health_pages_render_without_console_errors(live) -> None:
    driver, url, _store, _source = live
    wait = WebDriverWait(driver, 60, poll_frequency=0.25)
    driver.get(url + "/health")
    wait.until(lambda d: "detector-1" in text(d, "#health-detectors"))
    assert "streams held" in text(driver, "#health-feed")
    assert "consumed streamwatch.scores" in text(driver, "#health-feed")
    wait.until(lambda d: len((plot(d, "#health-graph") or {"data": []})["data"]) == 2)
    driver.save_screenshot(str(RESULTS / "dashboard-health.png"))
    driver.get(url + "/nowhere")
    wait.until(lambda d: "Page not found" in text(d, "#page"))
    assert severe(driver) == []

