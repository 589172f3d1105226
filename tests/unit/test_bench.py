"""Smoke run of ``streamwatch bench kafka`` on the session broker: tiny sizes, no timing asserts.

Checks the JSON's structure and that its figures come from what really crossed the broker:
an independent consumer counts the throughput phase's Scores and recomputes the latency
join and percentiles from the latency phase's topics.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from streamwatch.bench import TARGETS
from streamwatch.cli import main
from streamwatch.transport import open_transport
from streamwatch.transport.base import TopicPartition

# many processes each (load, relay, detectors): on one xdist worker, one at a time
pytestmark = [pytest.mark.kafka, pytest.mark.xdist_group("cpu-heavy")]


class _Key(msgspec.Struct):
    stream_id: str
    ts: float


def _records(bootstrap: str, topic: str, partitions: int) -> list[tuple[str, float, int]]:
    transport = open_transport(bootstrap, "confluent")
    consumer = transport.consumer(None)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    want = sum(consumer.end_offsets(tps).values())
    out: list[tuple[str, float, int]] = []
    for _ in range(200):
        if len(out) >= want:
            break
        for m in consumer.poll(0.2, 100_000):
            assert m.value is not None
            k = msgspec.json.decode(m.value, type=_Key)
            out.append((k.stream_id, k.ts, m.timestamp_ms))
    consumer.close()
    transport.close()
    return out


@pytest.mark.timeout(280)
def test_bench_reports_both_clients_side_by_side_from_what_crossed_the_broker(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    # --train-every 128: a 2,000-reading batch of 40 streams takes ~16 optimiser steps, so
    # batches end well inside the 2 s windows on a loaded machine (with 32, ~62 steps: one
    # batch outlasted the window while the other xdist worker ran, and none was counted)
    code = main(["--log-level", "warning", "bench", "kafka", "--streams", "40", "--seconds", "2",
                 "--warmup-s", "0.5", "--prefill-rate", "4000", "--train-every", "128",
                 "--partitions", "3", "--session-timeout-ms", "2000",
                 "--bootstrap-servers", kafka_bootstrap, "--json", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "config", "runs", "targets", "verdict", "detector_alone"}
    assert result["targets"] == TARGETS
    # The detector alone (no Kafka), once for both clients: every reading of its window
    # processed, a Score record each, training on.
    alone = result["detector_alone"]
    assert alone["streams"] == 40 and alone["emit_scores"] == "all" and alone["refused"] == 0
    assert alone["readings"] == alone["records"] == 40 * alone["measured_steps"] > 0
    assert alone["training_steps"] > 0 and alone["cpu_s"] > 0
    assert alone["cpu_us_per_reading"] == pytest.approx(
        alone["cpu_s"] / alone["readings"] * 1e6, rel=1e-2)
    assert "detector alone" in printed
    assert list(result["runs"]) == ["kafka-python", "confluent"]
    assert result["config"]["model"]["train_every"] == 128 and result["config"]["streams"] == 40
    for key in ("cpu_model", "cores", "python", "torch", "kafka-python", "confluent-kafka",
                "load_average_start", "load_average_end", "env"):
        assert key in result["machine"]
    for client, run in result["runs"].items():
        assert client in printed
        tp, lat = run["throughput"], run["latency"]
        # Throughput: a real window of real batches, with training and CPU time.
        assert tp["readings"] > 0 and tp["batches"] > 0 and tp["elapsed_s"] > 0
        assert tp["readings_per_s"] == pytest.approx(tp["readings"] / tp["elapsed_s"], rel=1e-2)
        assert tp["training_steps"] > 0 and tp["cpu_s"] > 0 and tp["dead_letters"] == 0
        assert tp["scored_total"] >= tp["readings"]
        scores = _records(kafka_bootstrap, tp["scores_topic"], 3)
        assert len(scores) == tp["scored_total"]
        # The relay (transport alone) on the same pre-fill: each record it counts is on its
        # topic once, and is one of the pre-filled readings.
        relay = tp["relay"]
        assert relay["readings"] > 0 and relay["batches"] > 0 and relay["dead_letters"] == 0
        assert relay["processes"] == 1 and "training_steps" not in relay
        relayed = {(sid, ts) for sid, ts, _ms in _records(kafka_bootstrap, relay["out_topic"], 3)}
        assert len(relayed) == relay["relayed_total"] >= relay["readings"]
        assert relayed <= {(sid, ts) for sid, ts, _ms in _records(kafka_bootstrap, tp["topic"], 3)}
        # Latency: every reading joined; figures recomputed from the topics themselves.
        readings = _records(kafka_bootstrap, lat["topic"], 3)
        assert lat["readings"] == len(readings) == lat["producer"]["sent"] == lat["joined"]
        assert lat["missing"] == 0 and lat["measured"] > 0 and lat["emit_scores"] == "all"
        assert lat["unmatched_scores"] == 0
        first: dict[tuple[str, float], int] = {}
        for sid, ts, ms in _records(kafka_bootstrap, lat["scores_topic"], 3):
            first[sid, ts] = min(ms, first.get((sid, ts), ms))
        cut = lat["measure_from_ms"]  # the warm-up ends 0.5 s after pacing starts
        assert abs(cut - (lat["producer"]["paced_start_epoch"] + 0.5) * 1000) <= 1
        mine = np.array([first[sid, ts] - ms for sid, ts, ms in readings if ms >= cut], float)
        assert len(mine) == lat["measured"]
        assert lat["p99_ms"] == round(float(np.percentile(mine, 99)), 1)
        assert lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        sent = np.array([ms for _sid, _ts, ms in readings if ms >= cut])
        by_second = (sent - cut) // 1000
        assert [p["second"] for p in lat["per_second"]] == sorted(set(by_second.tolist()))
        for p in lat["per_second"]:
            part = mine[by_second == p["second"]]
            assert p["readings"] == part.size and p["max_ms"] == round(float(part.max()), 1)
        assert lat["rate"] == pytest.approx(0.5 * tp["readings_per_s"], rel=1e-2)
        assert lat["training_steps"] > 0, "the latency phase must train too"
        v = result["verdict"][client]
        assert v["throughput_met"] == (tp["readings_per_s"] >= TARGETS[client])
        assert v["latency_met"] == (lat["p99_ms"] < TARGETS["p99_ms"])
        # far below the targets here: the latency phase ran at half the sustained rate
        assert v["latency_rate"] == lat["rate"]
        assert v["latency_rate_needed"] == pytest.approx(
            0.5 * min(tp["readings_per_s"], TARGETS[client]))
        assert v["trained"] is True and v["latency_emit_scores"] == "all"
        assert v["all_scores_joined"] is True and v["all_readings_processed"] is True
        assert v["met"] == (v["throughput_met"] and v["latency_met"])
        assert v["relay_readings_per_s"] == relay["readings_per_s"] > 0
        assert v["target_above_relay"] == (TARGETS[client] > relay["readings_per_s"])
        # The ceiling: the cores over the relay's and the detector's CPU per reading, or
        # the one relay thread's and the detector's if lower (the broker is the session's,
        # not started by the bench: its CPU is not counted).
        assert relay["broker_cpu_s"] is None and v["ceiling_counts_broker"] is False
        assert v["detector_alone_cpu_us_per_reading"] == alone["cpu_us_per_reading"]
        by_cores = result["machine"]["cores"] * 1e6 / (
            relay["cpu_us_per_reading"] + alone["cpu_us_per_reading"])
        by_thread = 1e6 / (relay["detector_thread_cpu_us_per_reading"]
                           + alone["cpu_us_per_reading"])
        assert v["ceiling_readings_per_s"] == pytest.approx(min(by_cores, by_thread), rel=1e-4)
        assert v["ceiling_bound"] == ("threads" if by_thread < by_cores else "cores")
        assert v["target_above_ceiling"] == (TARGETS[client] > v["ceiling_readings_per_s"])


@pytest.mark.timeout(280)
def test_bench_measures_a_group_of_detector_processes_as_one(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--detectors 2``: two processes in one group split the partitions; the figures are
    the group's, and every Score on the topics is counted. The latency phase runs with
    Scores only around alerts (``--latency-emit-scores alerts``)."""
    out = tmp_path / "bench.json"
    code = main(["--log-level", "warning", "bench", "kafka", "--clients", "confluent",
                 "--detectors", "2", "--streams", "40", "--seconds", "2", "--warmup-s", "3",
                 "--prefill-rate", "12000", "--train-every", "128", "--partitions", "3",
                 "--session-timeout-ms", "2000", "--bootstrap-servers", kafka_bootstrap,
                 "--latency-emit-scores", "alerts",
                 "--no-detector-alone", "--json", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert result["config"]["detectors"] == 2
    assert "detector_alone" not in result  # turned off: no ceiling either
    assert result["verdict"]["confluent"]["ceiling_readings_per_s"] is None
    tp, lat = result["runs"]["confluent"]["throughput"], result["runs"]["confluent"]["latency"]
    split = tp["per_detector_scored"]
    assert len(split) == 2 and all(n > 0 for n in split) and sum(split) == tp["scored_total"]
    assert tp["readings"] > 0 and tp["training_steps"] > 0
    assert len(_records(kafka_bootstrap, tp["scores_topic"], 3)) >= tp["scored_total"]
    relay = tp["relay"]
    assert relay["processes"] == 2 and sum(relay["per_process_relayed"]) == relay["relayed_total"]
    assert len(_records(kafka_bootstrap, relay["out_topic"], 3)) >= relay["relayed_total"] > 0
    # Scores only around alerts: the mode reached both detectors (fewer Scores than
    # readings, each one of a sent reading), and every sent reading was processed.
    assert result["config"]["service"]["emit_scores"] == {"throughput": "all", "latency": "alerts"}
    assert lat["emit_scores"] == "alerts" and lat["missing"] == 0
    sent = {(sid, ts) for sid, ts, _ms in _records(kafka_bootstrap, lat["topic"], 3)}
    scored = {(sid, ts) for sid, ts, _ms in _records(kafka_bootstrap, lat["scores_topic"], 3)}
    assert lat["readings"] == len(sent) == lat["producer"]["sent"] > 0
    assert scored <= sent and len(scored) == lat["joined"] < lat["readings"]
    # every 25th stream watched (the default): each of its readings has its Score
    watched = {"icu/bed-01", "icu/bed-26"}
    of_watched = {(sid, ts) for sid, ts in sent if sid in watched}
    assert lat["watched_streams"] == 2 and lat["watched_missing"] == 0
    assert lat["watched_readings"] == len(of_watched) > 0 and of_watched <= scored
    assert result["verdict"]["confluent"]["watched_scores_joined"] is True
    assert lat["unmatched_scores"] == 0 and sum(lat["per_detector_scored"]) >= lat["readings"]
    v = result["verdict"]["confluent"]
    assert v["latency_emit_scores"] == "alerts" and v["all_scores_joined"] is None
    assert v["all_readings_processed"] is True
    # both held partitions before the paced load began, so both scored some of it
    assert len(lat["per_detector_scored"]) == 2 and all(n > 0 for n in lat["per_detector_scored"])
    assert lat["training_steps"] > 0


@pytest.mark.timeout(280)
def test_bench_repeat_reports_every_round_and_the_median_one(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--repeat 2``: each round runs the phases again on topics of its own; ``runs`` is
    the median round's (of two, the slower), and the verdict counts the rounds that met."""
    out = tmp_path / "bench.json"
    code = main(["--log-level", "warning", "bench", "kafka", "--clients", "confluent",
                 "--repeat", "2", "--streams", "40", "--seconds", "2", "--warmup-s", "0.5",
                 "--prefill-rate", "4000", "--train-every", "128", "--partitions", "3",
                 "--session-timeout-ms", "2000", "--bootstrap-servers", kafka_bootstrap,
                 "--no-relay", "--no-detector-alone", "--json", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    runs = [r["runs"]["confluent"] for r in rounds]
    assert runs[0]["throughput"]["topic"] != runs[1]["throughput"]["topic"]
    for run in runs:  # each round a real run: its Scores are on its own topic
        tp = run["throughput"]
        assert tp["readings"] > 0 and run["latency"]["missing"] == 0
        assert len(_records(kafka_bootstrap, tp["scores_topic"], 3)) == tp["scored_total"]
    slower = min((0, 1), key=lambda i: runs[i]["throughput"]["readings_per_s"])
    assert result["runs"]["confluent"] == runs[slower]
    v = result["verdict"]["confluent"]
    assert v["round"] == slower + 1 and v["median_of_rounds"] == 2
    assert v["met_in_rounds"] == sum(r["verdict"]["confluent"]["met"] for r in rounds)
    assert v["readings_per_s"] == runs[slower]["throughput"]["readings_per_s"]
    for label in ("confluent #1", "confluent #2", "confluent med"):
        assert label in printed
    assert f"confluent: targets met in {v['met_in_rounds']} of 2 rounds" in printed
