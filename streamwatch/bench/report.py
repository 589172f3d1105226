"""The bench's machine description, targets, verdict and printed table.

>>> v = verdict({"kafka-python": {"throughput": {"readings_per_s": 25000.0, "training_steps": 9},
...     "latency": {"p99_ms": 120.0, "missing": 0, "measured": 10, "training_steps": 4}}})
>>> v["kafka-python"]["throughput_met"], v["kafka-python"]["latency_met"], v["kafka-python"]["met"]
(True, True, True)

A phase that took no optimiser step was not measured with training on: not met.

>>> v = verdict({"kafka-python": {"throughput": {"readings_per_s": 25000.0, "training_steps": 9},
...     "latency": {"p99_ms": 120.0, "missing": 0, "measured": 10, "training_steps": 0}}})
>>> v["kafka-python"]["trained"], v["kafka-python"]["met"]
(False, False)

With the relay and the detector alone measured, the ceiling: the machine's cores over what
a reading costs them in the relay (its processes and the broker) plus the detector alone,
or, if lower, the processes' threads, each of at most one core, over the relay thread's
and the detector's cost. Two processes: 2 cores / (5 + 3 + 15 us) = 86,956.5 readings/s
(the threads would carry 2 / (4.5 + 15 us) = 102,564), below a 100,000 target.

>>> relay = {"readings_per_s": 250000.0, "readings": 1_000_000, "cpu_us_per_reading": 5.0,
...          "detector_thread_cpu_us_per_reading": 4.5, "broker_cpu_s": 3.0, "processes": 2}
>>> run = {"throughput": {"readings_per_s": 50000.0, "training_steps": 9, "relay": relay}}
>>> v = verdict({"confluent": run}, {"cpu_us_per_reading": 15.0}, cores=2)["confluent"]
>>> v["ceiling_readings_per_s"], v["ceiling_bound"], v["ceiling_counts_broker"]
(86956.5, 'cores', True)
>>> v["target_above_ceiling"]
True

One process: its thread carries at most 1 / (4.5 + 15 us).

>>> relay["processes"] = 1
>>> v = verdict({"confluent": run}, {"cpu_us_per_reading": 15.0}, cores=2)["confluent"]
>>> v["ceiling_readings_per_s"], v["ceiling_bound"]
(51282.1, 'threads')
"""

from __future__ import annotations

import logging
import math
import os
import platform
from importlib import metadata
from typing import Any

from streamwatch.bench.measure import load_average

log = logging.getLogger(__name__)

#: Issue 4: sustained readings/s per client (1,000 ICU streams, training on), and the p99
#: of produce -> Score latency at half that rate.
TARGETS: dict[str, float] = {"kafka-python": 20_000, "confluent": 100_000, "p99_ms": 250}
LATENCY_FRACTION = 0.5
"""The latency target holds "at half that rate": half the rate the client sustains, and no
more than half its throughput target (past the target, half the target is that rate)."""


PACE_DECIMALS = 1
"""The latency phase's pace is recorded rounded to this many decimals (of readings/s)."""


def latency_rate_needed(client: str, sustained: float | None) -> float | None:
    """The slowest latency phase that shows the latency target for ``client`` (None for a
    client with no target or no measured rate).

    >>> latency_rate_needed("confluent", 114_000.0), latency_rate_needed("confluent", 44_000.0)
    (50000.0, 22000.0)
    """
    target = TARGETS.get(client)
    if sustained is None or target is None:
        return None
    return LATENCY_FRACTION * min(sustained, target)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError as exc:  # not Linux: fall back to platform's answer below
        log.debug("no /proc/cpuinfo: %s", exc)
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (load average is added at start and end)."""
    import torch

    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        memory = None
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "kafka-python": _version("kafka-python"),
        "crc32c": _version("crc32c"),
        "confluent-kafka": _version("confluent-kafka"),
        "msgspec": _version("msgspec"),
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                               "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")},
        "load_average_start": load_average(),
    }  # fmt: skip


def ceiling(relay: dict[str, Any] | None, alone: dict[str, Any] | None,
            cores: int | None) -> tuple[float | None, str | None, bool | None]:
    """The most readings/s the machine could carry if the service added nothing of its
    own (merge, bookkeeping, checkpoints, the Score's produce beyond the relay's record):
    ``cores`` over the CPU a reading costs in the relay (its processes, plus the broker
    when the bench started it) and in the detector alone, or, if lower, the processes'
    threads (one core each at most) over the relay thread's and the detector's cost.
    Returns it, which bound set it (``cores`` or ``threads``), and whether the broker's
    CPU is in it."""
    relay = relay or {}
    relay_us, alone_us = relay.get("cpu_us_per_reading"), (alone or {}).get("cpu_us_per_reading")
    if relay_us is None or alone_us is None or not cores:
        return None, None, None
    broker_s, readings = relay.get("broker_cpu_s"), relay.get("readings")
    broker_us = broker_s / readings * 1e6 if broker_s is not None and readings else None
    by_cores = cores * 1e6 / (relay_us + alone_us + (broker_us or 0.0))
    thread_us = relay.get("detector_thread_cpu_us_per_reading")
    by_threads = (relay.get("processes", 1) * 1e6 / (thread_us + alone_us)
                  if thread_us is not None else math.inf)  # fmt: skip
    bound = "threads" if by_threads < by_cores else "cores"
    return round(min(by_cores, by_threads), 1), bound, broker_us is not None


def verdict(runs: dict[str, dict[str, Any]], alone: dict[str, Any] | None = None,
            cores: int | None = None) -> dict[str, dict[str, Any]]:
    """Per client: throughput target met, latency target met (p99 and nothing missing, with the
    latency phase at no less than :func:`latency_rate_needed`),
    training on in both phases (each took optimiser steps; the targets are for a
    detector that learns), and, when the relay ran, its rate and whether the target lies
    above it (then no detector reaches it on this machine: the transport alone does not);
    with the detector alone measured too, the machine's ceiling (:func:`ceiling`) and
    whether the target lies above that."""
    out: dict[str, dict[str, Any]] = {}
    for client, run in runs.items():
        rate = (run.get("throughput") or {}).get("readings_per_s")
        relay = ((run.get("throughput") or {}).get("relay") or {}).get("readings_per_s")
        lat = run.get("latency") or {}
        emit = lat.get("emit_scores", "all") if lat else None
        target = TARGETS.get(client)
        t_met = None if rate is None or target is None else rate >= target
        p99 = lat.get("p99_ms")
        # a p99 shows the target only at (at least) the rate it is stated at
        lat_rate, need = lat.get("rate"), latency_rate_needed(client, rate)
        # the pace is recorded to 0.1 readings/s (half of 1,000.3 is recorded as 500.1)
        at_rate = (None if lat_rate is None or need is None
                   else lat_rate >= need - 0.5 * 10**-PACE_DECIMALS - 1e-9)  # fmt: skip
        l_met = None if p99 is None else (p99 < TARGETS["p99_ms"] and lat.get("missing", 1) == 0
                                          and lat.get("watched_missing", 0) == 0
                                          and at_rate is not False)  # fmt: skip
        steps = [(phase or {}).get("training_steps") for phase in (run.get("throughput"), lat)]
        trained = all(n is not None and n > 0 for n in steps)
        out[client] = {
            "readings_per_s": rate, "target_readings_per_s": target, "throughput_met": t_met,
            "p99_ms": p99, "target_p99_ms": TARGETS["p99_ms"],
            "latency_rate": lat_rate, "latency_rate_needed": need,
            "latency_emit_scores": emit,
            # a Score per reading: each one joined; Scores around alerts only: each
            # reading processed (``missing`` counts the others either way)
            "all_scores_joined": None if emit != "all" else lat.get("missing") == 0,
            "all_readings_processed": None if not lat else lat.get("missing") == 0,
            # Scores only around alerts, with watched streams: each of their readings joined
            "watched_scores_joined": (None if not lat.get("watched_streams")
                                      else lat.get("watched_missing") == 0),
            "latency_met": l_met,
            # a run that ended in an error met nothing, whatever it measured before
            "trained": trained,
            "met": bool(t_met) and bool(l_met) and trained and "error" not in run,
            "relay_readings_per_s": relay,
            "target_above_relay": None if relay is None or target is None else target > relay,
        }  # fmt: skip
        cap, bound, with_broker = ceiling((run.get("throughput") or {}).get("relay"), alone,
                                          cores)  # fmt: skip
        out[client].update(
            detector_alone_cpu_us_per_reading=(alone or {}).get("cpu_us_per_reading"),
            ceiling_readings_per_s=cap, ceiling_bound=bound, ceiling_counts_broker=with_broker,
            target_above_ceiling=None if cap is None or target is None else target > cap)  # fmt: skip
    return out


def labelled_runs(result: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every run of ``result`` as (label, run, verdict): ``client #k`` for each round of
    ``--repeat``, else the client's name."""
    if "rounds" not in result:
        return [(client, run, result["verdict"][client])
                for client, run in result["runs"].items()]
    return [(f"{client} #{r['round']}", run, r["verdict"][client])
            for r in result["rounds"] for client, run in r["runs"].items()]


def table(result: dict[str, Any]) -> str:
    """A short side-by-side table of the runs."""
    head = (f"{'client':<16} {'readings/s':>11} {'relay rd/s':>10} {'ceiling':>8} {'target':>8} "
            f"{'thr cpu us/rd':>13} {'train':>6} "
            f"{'lat rate':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'joined':>14} {'verdict':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]

    def f(x: Any, spec: str = ".0f") -> str:
        return "-" if x is None else format(x, spec)

    rows = labelled_runs(result)
    if "rounds" in result:  # and the median round's, as the result
        rows += [(f"{client} med", run, result["verdict"][client])
                 for client, run in result["runs"].items()]
    for label, run, v in rows:
        tp, lat = run.get("throughput") or {}, run.get("latency") or {}
        joined = f"{lat.get('joined', '-')}/{lat.get('readings', '-')}" if lat else "-"
        if lat.get("emit_scores", "all") != "all":
            joined += "*"
        lines.append(
            f"{label:<16} {f(tp.get('readings_per_s')):>11} "
            f"{f(v.get('relay_readings_per_s')):>10} {f(v.get('ceiling_readings_per_s')):>8} "
            f"{f(v['target_readings_per_s']):>8} "
            f"{f(tp.get('detector_thread_cpu_us_per_reading'), '.1f'):>13} "
            f"{f(tp.get('training_steps'), 'd'):>6} "
            f"{f(lat.get('rate'))!s:>9} {f(lat.get('p50_ms'), '.1f'):>7} "
            f"{f(lat.get('p95_ms'), '.1f'):>7} {f(lat.get('p99_ms'), '.1f'):>7} "
            f"{f(lat.get('max_ms'), '.1f'):>7} {joined:>14} "
            f"{'met' if v['met'] else 'NOT met':>8}")  # fmt: skip
    if any((run.get("latency") or {}).get("emit_scores", "all") != "all"
           for run in result["runs"].values()):
        lines.append("* latency phase with Scores only around alerts (and every Score of "
                     "the watched streams): the percentiles are those readings'; the others "
                     "were processed without a Score")
    for client, v in result["verdict"].items():
        if "met_in_rounds" in v:
            lines.append(f"{client}: targets met in {v['met_in_rounds']} of "
                         f"{v['median_of_rounds']} rounds; 'med' is the median round by "
                         f"readings/s (#{v['round']})")  # fmt: skip
    alone = result.get("detector_alone")
    if alone:
        lines.append(f"detector alone (no Kafka, {alone['streams']} streams, emit "
                     f"{alone['emit_scores']}): {f(alone['cpu_us_per_reading'], '.1f')} us CPU "
                     f"per reading; ceiling = cores / (relay + broker + detector alone), or "
                     f"the processes' threads if lower")  # fmt: skip
    m = result["machine"]
    lines.append(f"load average start {m['load_average_start']} end {m.get('load_average_end')}"
                 f"; {m['cores']} cores, {m['cpu_model']}")  # fmt: skip
    return "\n".join(lines)
