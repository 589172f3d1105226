"""The bench verdict judges the latency target at the rate it is stated at."""

from __future__ import annotations

from typing import Any

import pytest

from streamwatch.bench.options import BenchOptions
from streamwatch.bench.report import PACE_DECIMALS, TARGETS, latency_rate_needed, verdict


def _run(rate: float, latency_rate: float, p99: float, missing: int = 0) -> dict[str, Any]:
    return {"throughput": {"readings_per_s": rate, "training_steps": 5},
            "latency": {"rate": latency_rate, "p99_ms": p99, "missing": missing,
                        "emit_scores": "all", "training_steps": 3}}  # fmt: skip


@pytest.mark.parametrize(("client", "sustained", "latency_rate", "p99", "met"), [
    # past the throughput target, half the target is the rate to hold the p99 at
    ("confluent", 114_000.0, 50_000.0, 120.0, True),
    ("confluent", 114_000.0, 57_000.0, 120.0, True),
    ("confluent", 114_000.0, 40_000.0, 120.0, False),  # a gentler load shows nothing
    ("confluent", 114_000.0, 50_000.0, 260.0, False),
    # below it, half the sustained rate
    ("confluent", 44_000.0, 22_000.0, 120.0, True),
    ("confluent", 44_000.0, 10_000.0, 120.0, False),
    ("kafka-python", 25_000.0, 10_000.0, 151.0, True),
    ("kafka-python", 25_000.0, 9_000.0, 151.0, False),
])
def test_latency_is_met_only_at_half_the_sustained_rate_or_half_the_target(
        client: str, sustained: float, latency_rate: float, p99: float, met: bool) -> None:
    v = verdict({client: _run(sustained, latency_rate, p99)})[client]
    assert v["latency_met"] is met
    assert v["latency_rate"] == latency_rate
    assert v["latency_rate_needed"] == 0.5 * min(sustained, TARGETS[client])
    assert v["met"] is (met and sustained >= TARGETS[client])


def test_the_pace_as_recorded_meets_the_rate_it_was_set_to() -> None:
    # CI, 7 December: 1,000.3 readings/s sustained, the phase paced at half that (500.15),
    # recorded rounded as 500.1, and judged below the rate it ran at
    sustained = 1000.3
    recorded = round(0.5 * sustained, PACE_DECIMALS)
    assert recorded < 0.5 * sustained
    assert verdict({"kafka-python": _run(sustained, recorded, 40.0)})["kafka-python"]["latency_met"]
    slower = recorded - 10**-PACE_DECIMALS
    v = verdict({"kafka-python": _run(sustained, slower, 40.0)})["kafka-python"]
    assert v["latency_met"] is False


def test_a_missing_reading_fails_the_latency_target_at_any_rate() -> None:
    v = verdict({"confluent": _run(114_000.0, 57_000.0, 100.0, missing=1)})["confluent"]
    assert v["latency_met"] is False and v["met"] is False


def test_a_watched_stream_reading_without_its_score_fails_the_latency_target() -> None:
    run = _run(114_000.0, 57_000.0, 100.0)
    run["latency"].update(emit_scores="alerts", watched_streams=100, watched_missing=0)
    v = verdict({"confluent": run})["confluent"]
    assert v["latency_met"] is True and v["watched_scores_joined"] is True
    run["latency"]["watched_missing"] = 1
    v = verdict({"confluent": run})["confluent"]
    assert v["latency_met"] is False and v["watched_scores_joined"] is False
    assert verdict({"confluent": _run(114_000.0, 57_000.0, 100.0)})["confluent"][
        "watched_scores_joined"] is None  # no stream watched


def test_the_needed_rate_is_none_without_a_target_or_a_rate() -> None:
    assert latency_rate_needed("some-other-client", 1000.0) is None
    assert latency_rate_needed("confluent", None) is None


def test_the_latency_rate_is_capped_at_the_target_by_default_and_not_with_max() -> None:
    assert BenchOptions().latency_rate_cap is True
    assert BenchOptions(latency_rate_cap=False).as_json()["latency_rate_cap"] is False


def test_repeat_picks_the_median_round_and_a_failed_round_fails_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rounds scripted (no broker): the median of the clean rounds is the result, a round
    that failed is printed and sets the exit code, whichever round is the median."""
    import streamwatch.bench as bench
    from streamwatch.cli import main

    scripted = iter([{"confluent": _run(120_000.0, 50_000.0, 120.0)},
                     {"confluent": {**_run(130_000.0, 50_000.0, 120.0), "error": "latency failed"}},
                     {"confluent": _run(90_000.0, 45_000.0, 120.0)},
                     {"confluent": _run(110_000.0, 50_000.0, 300.0)}])
    monkeypatch.setattr(bench, "_round", lambda *args: next(scripted))
    code = main(["bench", "kafka", "--clients", "confluent", "--repeat", "4",
                 "--no-detector-alone", "--no-progress", "--bootstrap-servers", "unused:1"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "confluent #2: FAILED: latency failed" in printed
    # the failed round met nothing and ranks lowest, under 90,000 < 110,000 < 120,000: of
    # four, the lower middle one is 90,000 (#3)
    assert "confluent: targets met in 1 of 4 rounds; 'med' is the median round by " \
           "readings/s (#3)" in printed
    med = [line for line in printed.splitlines() if line.startswith("confluent med")]
    assert len(med) == 1 and " 90000 " in med[0] and med[0].endswith("NOT met")
    failed = [line for line in printed.splitlines() if line.startswith("confluent #2")]
    assert failed[0].endswith("NOT met")
