"""``streamwatch dashboard`` as a real process reading a real Kafka-protocol broker.

The test gets a broker of its own (Tansu, milliseconds to start) because the dashboard
reads the product's fixed topic names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from dashboards.feed import FEED_TOPICS
from streamwatch.broker import TansuBroker, free_port
from streamwatch.schema import encode
from streamwatch.transport import ALERTS, SCORES, open_transport
from tests.unit.test_dashboard_store import alert, score

pytestmark = pytest.mark.kafka

STREAMWATCH = Path(sys.executable).with_name("streamwatch")


@pytest.fixture
def broker() -> Iterator[TansuBroker]:
    own = TansuBroker().start()
    try:
        yield own
    finally:
        own.stop()


def post_callback(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url + "/_dash-update-component",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        response: dict[str, Any] = json.loads(reply.read())["response"]
    return response


OVERVIEW = {
    "output": "..stream-rows.children...page-label.children...page-index.data..."
              "page-prev.disabled...page-next.disabled...kpi-strip.children..."
              "filter-kind.options..",
    "outputs": [{"id": i, "property": p} for i, p in (
        ("stream-rows", "children"), ("page-label", "children"), ("page-index", "data"),
        ("page-prev", "disabled"), ("page-next", "disabled"), ("kpi-strip", "children"),
        ("filter-kind", "options"))],
    "inputs": [{"id": "tick", "property": "n_intervals", "value": 1},
               {"id": "filter-kind", "property": "value", "value": None},
               {"id": "filter-status", "property": "value", "value": []},
               {"id": "filter-text", "property": "value", "value": None},
               {"id": "page-prev", "property": "n_clicks", "value": 0},
               {"id": "page-next", "property": "n_clicks", "value": 0}],
    "state": [{"id": "page-index", "property": "data", "value": 0}],
    "changedPropIds": ["tick.n_intervals"],
}


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for n in node for s in strings(n)]
    if isinstance(node, dict):
        return strings(node.get("props", {}).get("children"))
    return []


def test_dashboard_command_consumes_kafka_and_serves_on_loopback_only(
        broker: TansuBroker, tmp_path: Path) -> None:
    transport = open_transport(broker.bootstrap, "kafka-python")
    transport.create_topics({topic: 2 for topic in FEED_TOPICS})
    producer = transport.producer()
    beds = ["icu/bed-01", "icu/bed-02", "icu/bed-03"]
    for i in range(20):
        for bed in beds:
            producer.send(SCORES, encode(score(bed, 1000.0 + i)), key=bed.encode())
    producer.send(ALERTS, encode(alert("icu/bed-02", 1010.0)), key=b"icu/bed-02")
    producer.flush()
    port = free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    proc = subprocess.Popen(
        [str(STREAMWATCH), "dashboard", "--bootstrap-servers", broker.bootstrap,
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, rows = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                rows = post_callback(url, OVERVIEW)["stream-rows"]["children"]
            except (urllib.error.URLError, ConnectionError):
                rows = []
            if len(rows) == 3 and "critical" in strings(rows[0]):
                break
            time.sleep(0.5)
        assert [strings(r)[1] for r in rows] == ["icu/bed-02", "icu/bed-01", "icu/bed-03"]
        assert strings(rows[0])[0] == "critical"
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", port)]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            # a clean stop leaves the consumer group; on Tansu about 1 group join in 8 takes
            # 2-4 cycles of half the session timeout (STACK.md), so allow for one such
            proc.wait(40)
        except subprocess.TimeoutExpired:
            raise AssertionError("the dashboard did not stop within 40 s of Ctrl-C:\n"
                                 + (tmp_path / "dashboard.log").read_text()[-4000:]) from None
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            transport.close()
    output = (tmp_path / "dashboard.log").read_text()
    assert proc.returncode == 0, output  # Ctrl-C is a clean stop
    assert "dashboard stopped" in output
