"""``examples/alerts_consumer.py`` against the real broker: one line per event, duplicates dropped."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamwatch import schema
from streamwatch.schema import Alert, ChannelExplanation, Explanation
from streamwatch.transport import open_transport

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "alerts_consumer.py"
STREAM = "icu/bed-42"


def _alert(event: str, seq: int, ts: float, end_ts: float | None) -> Alert:
    onset = 1_767_226_200.0
    hr = ChannelExplanation(channel="hr", observed=170.5, expected=72.0, lower=67.4,
                            upper=76.5, score=2149.1, direction="high")
    summary = ("critical for 1 s: hr high 170.5" if event == "open"
               else "resolved after 49 s: hr high 170.5")
    return Alert(
        alert_id=schema.alert_id_for(STREAM, onset), event=event,  # type: ignore[arg-type]
        stream_id=STREAM, kind="icu_vitals", ts=ts, onset_ts=onset, end_ts=end_ts,
        severity="critical", peak_score=2195.0,
        explanation=Explanation(summary=summary, channels=[hr], duration_s=ts - onset,
                                reasons=["model", "hard_limit"]),
        model_version=2, seq=seq,
    )


def test_example_consumer_prints_each_alert_event_once_and_drops_replayed_duplicates(
    kafka_bootstrap: str, unique_topic: str, unique_group: str
) -> None:
    opened = schema.encode(_alert("open", 0, 1_767_226_201.0, None))
    closed = schema.encode(_alert("close", 1, 1_767_226_309.0, 1_767_226_249.0))
    transport = open_transport(kafka_bootstrap, "kafka-python")
    try:
        transport.create_topics({unique_topic: 2})
        producer = transport.producer()
        for value in (opened, closed, opened):  # the last: an at-least-once replay of the open
            producer.send(unique_topic, value, STREAM.encode())
        producer.flush()
        producer.close()
    finally:
        transport.close()

    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap-servers", kafka_bootstrap,
         "--topic", unique_topic, "--group", unique_group, "--from-beginning",
         "--max-records", "3"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    open_lines = [ln for ln in lines if ln.split()[0] == "open"]
    close_lines = [ln for ln in lines if ln.split()[0] == "close"]
    assert len(open_lines) == 1 and len(close_lines) == 1, result.stdout
    for ln in (*open_lines, *close_lines):
        assert STREAM in ln and "critical" in ln and schema.alert_id_for(STREAM, 1_767_226_200.0) in ln
    assert "resolved after 49 s" in close_lines[0]
    assert "refused" not in result.stderr, result.stderr


def test_example_consumer_with_no_broker_says_what_to_do_and_exits_2() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap-servers", f"127.0.0.1:{port}",
         "--connect-timeout-s", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in result.stderr
    assert "--bootstrap-servers" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("flag", [["--connect-timeout-s", "0"], ["--connect-timeout-s", "nan"],
                                  ["--max-records", "0"]])
def test_example_consumer_refuses_a_meaningless_argument(flag: list[str]) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLE), *flag],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2 and flag[0] in result.stderr, result.stderr
