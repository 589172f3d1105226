"""``streamwatch demo`` as a real process: broker, children, dashboard, alerts, clean Ctrl-C.

Each test starts the demo in a session of its own (so a failing test can kill the whole
group), waits for the dashboard to answer, for an alert (read by an independent Kafka
consumer, or printed by the in-memory demo) and for the dashboard to show that alert,
then sends SIGINT and checks that the demo and every process it started are gone.
Small runs (4 beds, 2 machines, 20x) keep the two shared cores free.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kafka import KafkaConsumer, TopicPartition

from streamwatch.broker import free_port
from streamwatch.schema import Alert, decode
from streamwatch.transport import ALERTS

# the whole demo (broker, simulators, detector, dashboard) each: with the other
# "cpu-heavy" tests on one xdist worker, one at a time
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150), pytest.mark.xdist_group("cpu-heavy")]

STREAMWATCH = Path(sys.executable).with_name("streamwatch")
SMALL = ["--patients", "4", "--machines", "2", "--speedup", "20"]
ALERT_FEED = {
    "output": "alert-feed.children",
    "outputs": {"id": "alert-feed", "property": "children"},
    "inputs": [{"id": "tick", "property": "n_intervals", "value": 1},
               {"id": "alerts-open-only", "property": "value", "value": []}],
    "changedPropIds": ["tick.n_intervals"],
}


class Demo:
    """A running ``streamwatch demo``: its stdout lines as they come, its stderr in a file."""

    def __init__(self, extra: list[str], tmp_path: Path) -> None:
        self.port = free_port()
        self.err_path = tmp_path / "demo.stderr"
        self._err = self.err_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(STREAMWATCH), "demo", "--port", str(self.port), *SMALL, *extra],
            stdout=subprocess.PIPE, stderr=self._err, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")[-6000:]

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            assert self.proc.poll() is None, (
                f"demo exited with {self.proc.returncode}\nstdout: {self.lines}\n{self.stderr()}")
            time.sleep(0.2)
        raise AssertionError(f"no stdout line matching {pattern!r} within {timeout} s\n"
                             f"stdout: {self.lines}\nstderr: {self.stderr()}")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self, timeout: float = 45.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill_everything(self, also: list[psutil.Process]) -> None:
        """On the way out of a test (passed or failed): nothing of the demo may survive."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for process in also:
            if process.is_running():
                process.kill()
        self._err.close()


@pytest.fixture
def demo_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[Demo, list[psutil.Process]]] = []

    def start(*extra: str) -> tuple[Demo, list[psutil.Process]]:
        demo = Demo(list(extra), tmp_path)
        started.append((demo, []))
        return demo, started[-1][1]

    yield start
    for demo, seen in started:
        demo.kill_everything(seen)


def wait_dashboard(url: str, demo: Demo, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                assert reply.status == 200
                return
        except (urllib.error.URLError, ConnectionError):
            assert demo.proc.poll() is None, demo.stderr()
            time.sleep(0.3)
    raise AssertionError(f"dashboard {url} did not answer within {timeout} s\n{demo.stderr()}")


def dashboard_shows(url: str, needle: str, demo: Demo, timeout: float = 30.0) -> None:
    """Poll the dashboard's alert-feed callback until ``needle`` appears in it."""
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(url + "/_dash-update-component",
                                         data=json.dumps(ALERT_FEED).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = json.dumps(json.loads(reply.read()))  # plain '/' (Dash escapes it)
        if needle in text:
            return
        time.sleep(0.5)
    raise AssertionError(f"the dashboard's alert feed never showed {needle!r}: {text[:2000]}"
                         f"\n{demo.stderr()}")


def metrics_count_readings(url: str, demo: Demo, timeout: float = 30.0) -> float:
    """Poll the detector's Prometheus endpoint until it has counted a reading; the count."""
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                text = reply.read().decode()
        except (urllib.error.URLError, ConnectionError):
            assert demo.proc.poll() is None, demo.stderr()
        found = re.search(r"^streamwatch_readings_total (\S+)$", text, re.MULTILINE)
        if found and float(found.group(1)) > 0:
            return float(found.group(1))
        time.sleep(0.5)
    raise AssertionError(f"{url} never counted a reading: {text[:2000]}\n{demo.stderr()}")


def first_alert(bootstrap: str, demo: Demo, timeout: float) -> Alert:
    """The first ``open`` alert on streamwatch.alerts, read with assign() (no group)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=500)
    try:
        partitions = consumer.partitions_for_topic(ALERTS)
        assert partitions, f"topic {ALERTS} does not exist on {bootstrap}"
        consumer.assign([TopicPartition(ALERTS, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert demo.proc.poll() is None, demo.stderr()
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    alert: Alert = decode("alert", record.value)
                    if alert.event == "open":
                        return alert
        raise AssertionError(f"no alert on {ALERTS} within {timeout} s\n{demo.stderr()}")
    finally:
        consumer.close()


def assert_all_gone(demo: Demo, processes: list[psutil.Process]) -> None:
    assert demo.proc.returncode is not None
    _gone, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, f"left behind: {[(p.pid, p.cmdline()) for p in alive]}"


def test_demo_over_kafka_shows_an_alert_to_any_consumer_and_ctrl_c_leaves_nothing(
        demo_factory: Any) -> None:
    demo, processes = demo_factory()
    bootstrap = demo.wait_line(r"^kafka: (\S+:\d+) ", timeout=30).group(1)
    url = demo.wait_line(r"^dashboard: (http://\S+)$", timeout=60).group(1)
    assert url == f"http://127.0.0.1:{demo.port}"
    metrics = demo.wait_line(r"^metrics: (http://127\.0\.0\.1:\d+/metrics)$", timeout=5).group(1)
    wait_dashboard(url, demo)
    metrics_count_readings(metrics, demo)
    alert = first_alert(bootstrap, demo, timeout=75)
    assert alert.stream_id.startswith(("icu/bed-", "plant/machine-"))
    dashboard_shows(url, alert.alert_id, demo)
    demo.wait_line(rf"^alert open {re.escape(alert.stream_id)} ", timeout=10)

    processes.extend(demo.descendants())  # before the signal: the broker and the children
    names = [" ".join(p.cmdline()) for p in processes]
    assert any(n.split()[0].endswith("tansu") for n in names), names
    for piece in (" detect ", " dashboard ", " simulate icu ", " simulate sensors "):
        assert sum(piece in n + " " for n in names) == 1, (piece, names)
    elapsed = time.monotonic() - demo.started

    code = demo.interrupt()
    assert code in (0, 130), demo.stderr()
    assert_all_gone(demo, processes)
    assert "demo stopped cleanly" in demo.stderr()
    print(f"alert seen and dashboard checked after {elapsed:.1f} s")


def test_demo_in_memory_needs_no_broker_shows_an_alert_and_ctrl_c_leaves_nothing(
        demo_factory: Any) -> None:
    demo, processes = demo_factory("--transport", "memory")
    demo.wait_line(r"^kafka: none ", timeout=30)
    url = demo.wait_line(r"^dashboard: (http://\S+)$", timeout=60).group(1)
    metrics = demo.wait_line(r"^metrics: (http://127\.0\.0\.1:(\d+)/metrics)$", timeout=5)
    wait_dashboard(url, demo)
    metrics_count_readings(metrics.group(1), demo)
    match = demo.wait_line(r"^alert open (\S+) (warning|critical): ", timeout=75)
    dashboard_shows(url, match.group(1), demo)

    processes.extend(demo.descendants())
    assert processes == [], [p.cmdline() for p in processes]  # no broker, no children
    listening = [c.laddr for c in psutil.Process(demo.proc.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    assert sorted((a.ip, a.port) for a in listening) == sorted(
        [("127.0.0.1", demo.port), ("127.0.0.1", int(metrics.group(2)))])  # nothing else
    elapsed = time.monotonic() - demo.started

    code = demo.interrupt()
    assert code in (0, 130), demo.stderr()
    assert_all_gone(demo, processes)
    assert "demo stopped cleanly" in demo.stderr()
    print(f"alert seen and dashboard checked after {elapsed:.1f} s")


def test_demo_stops_everything_with_exit_1_when_a_child_dies(demo_factory: Any) -> None:
    demo, processes = demo_factory()
    demo.wait_line(r"^dashboard: http://", timeout=60)
    processes.extend(demo.descendants())
    detector = next(p for p in processes if "detect" in p.cmdline())
    detector.kill()

    code = demo.proc.wait(45)
    assert code == 1, demo.stderr()
    assert "detect exited with code -9; stopping everything" in demo.stderr()
    assert_all_gone(demo, processes)


def test_killing_the_demo_takes_its_broker_and_children_with_it(demo_factory: Any) -> None:
    demo, processes = demo_factory()
    demo.wait_line(r"^dashboard: http://", timeout=60)
    processes.extend(demo.descendants())
    assert len(processes) == 5, [p.cmdline() for p in processes]  # broker + 4 commands

    demo.proc.kill()  # no chance to clean up: the kernel's parent-death signal must
    demo.proc.wait(10)
    assert_all_gone(demo, processes)
