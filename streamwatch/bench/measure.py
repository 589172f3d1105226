"""Measuring a running ``DetectorService`` and joining Scores to Readings.

:class:`ServiceRun` runs the real service loop in a thread of the bench process (the main
thread only samples its counters every 50 ms and sleeps), and takes :class:`Sample`
snapshots: readings and batches scored, CPU time of the whole process (every thread,
librdkafka's and kafka-python's I/O threads included) and of the detector thread alone,
training steps, checkpoints, and the service's own batch-time histogram.

:func:`latency_stats` joins each Reading to its Score by ``(stream_id, ts)`` and takes
``Score CreateTime - Reading CreateTime`` per reading.

>>> s = latency_stats([("a", 1.0, 1000), ("a", 2.0, 2000), ("b", 1.0, 1000)],
...                   [("a", 1.0, 1010), ("a", 2.0, 2030), ("a", 2.0, 2050)], measure_from_ms=0)
>>> s["readings"], s["joined"], s["missing"], s["duplicate_scores"], s["p50_ms"], s["max_ms"]
(3, 2, 1, 1, 20.0, 30.0)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamwatch.errors import StreamwatchError

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 0.05


@dataclass(frozen=True)
class Sample:
    """Counters of the service at one instant (``t`` = ``time.monotonic()``)."""

    t: float
    readings: int
    batches: int
    dead_letters: int
    checkpoints: int
    cpu_s: float
    thread_cpu_s: float
    training_steps: int | None
    batch_seconds_sum: float
    batch_count: float
    members_assigned: int = 0  # detector processes that hold partitions now
    held: int = 0  # readings waiting in the event-time merge (all processes)
    paused: int = 0  # partitions paused by flow control (all processes)


class Sampled:
    """Something that runs the service and can be sampled (one process or a group)."""

    def check(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def sample(self) -> Sample:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def wait_until(self, done: Any, timeout: float, what: str, tick: Any = None) -> Sample:
        """Sample until ``done(sample)`` is true; raise after ``timeout`` s naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            s = self.sample()
            if tick is not None:
                tick(s)
            if done(s):
                return s
            if s.t > deadline:
                raise StreamwatchError(
                    f"timed out after {timeout:.0f} s waiting for {what} (readings scored: "
                    f"{s.readings}); the machine may be overloaded or the broker stuck")  # fmt: skip
            time.sleep(SAMPLE_EVERY_S)


class ServiceRun(Sampled):
    """The service loop in a worker thread, sampled from the calling thread."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="streamwatch-bench-detector",
                                         daemon=True)  # fmt: skip
        self.thread_id: int | None = None
        self._clock: int | None = None
        self._final_cpu: float | None = None

    def _main(self) -> None:
        self.thread_id = threading.get_native_id()
        self._clock = time.pthread_getcpuclockid(threading.get_ident())
        try:
            self.service.run()
        except BaseException as exc:  # handed to the sampling thread by check()
            log.exception("detector service failed")
            self.error = exc
        finally:  # a finished thread's CPU clock is gone: keep its last reading
            self._final_cpu = time.thread_time()

    def start(self) -> ServiceRun:
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise if the service thread died."""
        if self.error is not None:
            raise StreamwatchError(f"the detector service failed: {self.error!r}") from self.error
        if not self._thread.is_alive():
            raise StreamwatchError("the detector service stopped by itself")

    def stop(self, timeout: float = 60.0) -> None:
        self.service.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise StreamwatchError(f"the detector service did not stop within {timeout:.0f} s")
        if self.error is not None:
            raise StreamwatchError(f"the detector service failed: {self.error!r}") from self.error

    def _training_steps(self) -> int | None:
        detector = self.service.detector
        if detector is None:
            return None
        for _ in range(3):  # the detector thread may add a kind while we read
            try:
                return int(detector.counters["training_steps"])
            except RuntimeError as exc:
                log.debug("training steps not readable this time: %s", exc)
        return None

    def thread_cpu(self) -> float:
        """CPU seconds of the detector thread alone (0 before it started)."""
        if self._final_cpu is not None:
            return self._final_cpu
        if self._clock is None:
            return 0.0
        try:
            return time.clock_gettime(self._clock)
        except OSError:  # the thread ended between the two checks
            return self._final_cpu if self._final_cpu is not None else 0.0

    def sample(self) -> Sample:
        stats, registry = self.service.stats, self.service.metrics.registry
        return Sample(
            t=time.monotonic(), readings=stats.readings, batches=stats.batches,
            dead_letters=stats.dead_letters, checkpoints=stats.checkpoints,
            cpu_s=time.process_time(), thread_cpu_s=self.thread_cpu(),
            training_steps=self._training_steps(),
            batch_seconds_sum=registry.get_sample_value("streamwatch_batch_seconds_sum") or 0.0,
            batch_count=registry.get_sample_value("streamwatch_batch_seconds_count") or 0.0,
            members_assigned=1 if self.service.assigned_partitions else 0,
            held=self.service.held_readings, paused=len(self.service.paused_partitions),
        )  # fmt: skip

def window_figures(start: Sample, end: Sample) -> dict[str, Any]:
    """Throughput figures between two samples."""
    elapsed = end.t - start.t
    readings = end.readings - start.readings
    batches = end.batches - start.batches
    cpu = end.cpu_s - start.cpu_s
    thread_cpu = end.thread_cpu_s - start.thread_cpu_s
    n_batch = end.batch_count - start.batch_count
    steps = (None if start.training_steps is None or end.training_steps is None
             else end.training_steps - start.training_steps)  # fmt: skip
    return {
        "elapsed_s": round(elapsed, 3),
        "readings": readings,
        "readings_per_s": round(readings / elapsed, 1) if elapsed > 0 else None,
        "batches": batches,
        "mean_batch_size": round(readings / batches, 1) if batches else None,
        "mean_batch_ms": round((end.batch_seconds_sum - start.batch_seconds_sum) / n_batch * 1e3, 3)
        if n_batch else None,
        "training_steps": steps,
        "checkpoints": end.checkpoints - start.checkpoints,
        "dead_letters": end.dead_letters - start.dead_letters,
        "cpu_s": round(cpu, 3),
        "cpu_share_of_one_core": round(cpu / elapsed, 3) if elapsed > 0 else None,
        "cpu_us_per_reading": round(cpu / readings * 1e6, 2) if readings else None,
        "detector_thread_cpu_s": round(thread_cpu, 3),
        "detector_thread_cpu_us_per_reading": round(thread_cpu / readings * 1e6, 2)
        if readings else None,
        "other_threads_cpu_s": round(cpu - thread_cpu, 3),
        # Not a measurement: the rate if the detector thread had a core to itself and
        # never waited (a bound for comparing runs made under different machine load).
        "estimate_cpu_bound_readings_per_s": round(readings / thread_cpu, 1)
        if thread_cpu > 0 else None,
        "wall_us_per_reading": round(elapsed / readings * 1e6, 2) if readings else None,
    }


def per_second(samples: list[Sample]) -> list[float]:
    """Readings/s in consecutive whole seconds of a list of samples."""
    out: list[float] = []
    if not samples:
        return out
    anchor = samples[0]
    for s in samples[1:]:
        if s.t - anchor.t >= 1.0:
            out.append(round((s.readings - anchor.readings) / (s.t - anchor.t), 1))
            anchor = s
    return out


def latency_stats(
    readings: Iterable[tuple[str, float, int]],
    scores: Iterable[tuple[str, float, int]],
    measure_from_ms: int,
    *,
    every_reading: bool = True,
    watched: Collection[str] = (),
) -> dict[str, Any]:
    """Join ``(stream_id, ts, create_ms)`` readings to scores; latency per reading.

    Every reading is looked up (``missing`` counts those without a Score); the percentiles
    cover the readings produced at or after ``measure_from_ms`` (after the warm-up), and
    ``per_second`` gives them per second of produce time (to see when a tail happens). A
    reading scored twice (at-least-once replay) counts its first Score.

    With ``every_reading=False`` (a service that emits Scores only around alerts) a
    reading without a Score is expected: the percentiles cover the readings that have
    one, ``missing`` is None (the caller knows from the detectors' counts whether each
    reading was processed) and ``unmatched_scores`` counts Scores of no sent reading.
    Except for the ``watched`` streams' readings (``service.watch_streams``): each must
    have its Score, and ``watched_missing`` counts those without.

    >>> s = latency_stats([("a", 1.0, 1000), ("a", 2.0, 2000), ("b", 1.0, 1000)],
    ...                   [("a", 2.0, 2030), ("c", 1.0, 1500)], 0, every_reading=False,
    ...                   watched={"b"})
    >>> s["readings"], s["joined"], s["missing"], s["unmatched_scores"], s["p50_ms"]
    (3, 1, None, 1, 30.0)
    >>> s["watched_readings"], s["watched_missing"], s["missing_examples"]
    (1, 1, ['b@1.0'])
    """
    watched = frozenset(watched)
    watched_total = watched_missing = 0
    first: dict[tuple[str, float], int] = {}
    duplicates = 0
    for sid, ts, ms in scores:
        key = (sid, ts)
        if key in first:
            duplicates += 1
            if ms < first[key]:
                first[key] = ms
        else:
            first[key] = ms
    total = joined = 0
    lat: list[int] = []
    sent: list[int] = []
    missing_examples: list[str] = []
    for sid, ts, ms in readings:
        total += 1
        got = first.get((sid, ts))
        if sid in watched:
            watched_total += 1
            watched_missing += got is None
        if got is None:
            if (every_reading or sid in watched) and len(missing_examples) < 5:
                missing_examples.append(f"{sid}@{ts}")
            continue
        joined += 1
        if ms >= measure_from_ms:
            lat.append(got - ms)
            sent.append(ms)
    arr = np.asarray(lat, dtype=np.float64)
    second = (np.asarray(sent, dtype=np.int64) - measure_from_ms) // 1000
    per_second = [
        {"second": int(sec), "readings": int(part.size),
         "p50_ms": round(float(np.percentile(part, 50)), 1),
         "p99_ms": round(float(np.percentile(part, 99)), 1), "max_ms": round(float(part.max()), 1)}
        for sec in np.unique(second) for part in (arr[second == sec],)
    ]

    def pct(q: float) -> float | None:
        return round(float(np.percentile(arr, q)), 1) if arr.size else None

    return {
        "readings": total, "joined": joined,
        "missing": total - joined if every_reading else None,
        "missing_examples": missing_examples, "duplicate_scores": duplicates,
        "watched_readings": watched_total, "watched_missing": watched_missing,
        "unmatched_scores": len(first) - joined,
        "measured": int(arr.size), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "max_ms": round(float(arr.max()), 1) if arr.size else None,
        "mean_ms": round(float(arr.mean()), 1) if arr.size else None,
        "min_ms": round(float(arr.min()), 1) if arr.size else None,
        "per_second": per_second,
    }  # fmt: skip


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
