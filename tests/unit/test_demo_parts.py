"""The demo's pieces that need no process: episode timing, argument checks, alert lines."""

from __future__ import annotations

import argparse
import io
import threading
import time

import pytest

from streamwatch.cli import build_parser
from streamwatch.commands.demo import _check_args
from streamwatch.commands.demo_parts import (
    AlertPrinter,
    first_acute_onset,
    icu_warmup,
    simulate_argv,
)
from streamwatch.errors import ConfigError
from streamwatch.schema import Alert, ChannelExplanation, Explanation, alert_id_for, encode
from streamwatch.transport import ALERTS, MemoryTransport


def make_alert(stream_id: str, event: str) -> Alert:
    return Alert(
        alert_id=alert_id_for(stream_id, 100.0), event=event, stream_id=stream_id,  # type: ignore[arg-type]
        kind="icu_vitals", ts=130.0, onset_ts=100.0, end_ts=None, severity="critical",
        peak_score=9.0, model_version=1,
        explanation=Explanation(summary="SpO2 low 84", channels=[ChannelExplanation(
            channel="spo2", observed=84.0, expected=97.0, lower=95.0, upper=99.0, score=9.0,
            direction="low")], duration_s=30.0, reasons=["hard_limit"]),
    )


@pytest.mark.parametrize("seed", [0, 1, 7, 12])
def test_icu_warmup_moves_the_first_acute_episode_next_to_the_target(seed: int) -> None:
    target = 360.0
    default_first = first_acute_onset(8, seed, target, 86_400.0)
    warmup = icu_warmup(8, seed, 86_400.0, target)
    first = first_acute_onset(8, seed, warmup, 86_400.0)
    assert default_first is not None and first is not None
    assert 0.0 <= warmup <= target
    assert abs(first - target) <= 30.0 or (warmup == 0.0 and first < default_first)
    assert icu_warmup(8, seed, 86_400.0, target) == warmup  # deterministic per seed


def test_icu_warmup_keeps_the_target_when_a_run_is_too_short_for_episodes() -> None:
    assert first_acute_onset(3, 0, 360.0, 600.0) is None
    assert icu_warmup(3, 0, 600.0, 360.0) == 360.0


def demo_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["demo", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (["--patients", "-1"], "--patients must be in [0, 10000]"),
    (["--patients", "0", "--machines", "0"], "nothing to simulate"),
    (["--speedup", "0"], "--speedup must be in (0, 10000]"),
    (["--duration", "0"], "--duration must be > 0"),
    (["--port", "70000"], "--port must be in [0, 65535]"),
    (["--transport", "memory", "--bootstrap-servers", "h:1"], "memory mode has no broker"),
])
def test_demo_arguments_out_of_range_are_clear_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _check_args(demo_args(*argv))


def test_simulate_argv_is_a_valid_simulate_command_line() -> None:
    args = demo_args("--patients", "3", "--speedup", "10", "--seed", "4")
    topics = argparse.Namespace(readings="r.topic", truth="t.topic", partitions=6)
    argv = simulate_argv("icu", 3, args, 78.5, topics)
    parsed = build_parser().parse_args(argv)
    assert (parsed.source, parsed.patients, parsed.speedup, parsed.seed) == ("icu", 3, 10.0, 4)
    assert (parsed.warmup, parsed.duration, parsed.episodes_per_day) == (78.5, 86_400.0, 12.0)
    assert (parsed.topic, parsed.truth_topic, parsed.partitions) == ("r.topic", "t.topic", 6)


def test_alert_printer_prints_opens_and_closes_skips_updates_and_counts_bad_records() -> None:
    bus = MemoryTransport()
    bus.create_topics({ALERTS: 3})
    out = io.StringIO()
    printer = AlertPrinter(bus, ALERTS, from_start=True, out=out)
    producer = bus.producer()
    producer.send(ALERTS, encode(make_alert("icu/bed-01", "open")), b"icu/bed-01")
    printer.start()
    try:
        for event in ("update", "close"):
            producer.send(ALERTS, encode(make_alert("icu/bed-01", event)), b"icu/bed-01")
        producer.send(ALERTS, b"not json", b"icu/bed-02")
        producer.flush()
        deadline = time.monotonic() + 10
        while (printer.printed < 2 or printer.undecodable < 1) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        printer.stop()
    assert out.getvalue().splitlines() == [
        "alert open icu/bed-01 critical: SpO2 low 84",
        "alert close icu/bed-01 critical: SpO2 low 84",
    ]
    assert (printer.printed, printer.undecodable) == (2, 1)
    assert not any(t.name == "demo-alerts" for t in threading.enumerate())
