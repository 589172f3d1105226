"""The detector alone, for ``streamwatch bench kafka``: its floor, with no Kafka at all.

:func:`detector_alone` feeds the production detector (``build_detector``: GRU
``ForecastScorer``, SPOT thresholds, hard limits, alerts, online training with the
configured ``train_every``) the bench's own ICU readings in poll-sized batches, in this
thread, and times what the service's detector does to each batch: ``validate_many`` and
``process_encoded`` (model step, scoring, learning, training, the Score records' JSON in
the configured emit mode). Decoding is left out of the timing: the relay
(:mod:`streamwatch.bench.relay`) already counts it.

It runs with the stream count one detector process has in the bench (``streams /
detectors``, rounded up: with more processes each holds fewer streams, and a wave of
fewer readings costs more per reading), warms up until every stream's threshold is
fitted (``detector.warmup_readings + detector.thresholds.warmup`` readings, plus a
margin), then measures ``measure_steps`` simulated seconds.

The relay's CPU per reading (its processes and the broker) plus this one is what a
reading costs the machine before the service's own work (event-time merge, bookkeeping,
the Score's produce beyond the relay's smaller record): ``report.verdict`` turns the two
into ``ceiling_readings_per_s``, the rate the machine's cores would carry at best.

>>> from streamwatch.config import load_settings
>>> s = load_settings(None, {"model": {"train_every": 64},
...                          "detector": {"warmup_readings": 2, "thresholds": {"warmup": 50}}})
>>> out = detector_alone(s, streams=3, seed=1, start_ts=1.7e9, emit="all", measure_steps=30,
...                      progress=False)
>>> out["streams"], out["readings"], out["records"], out["warmup_steps"]
(3, 90, 90, 92)
>>> out["cpu_us_per_reading"] > 0 and out["training_steps"] >= 1
True
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

#: Simulated seconds measured once every threshold is fitted.
MEASURE_STEPS = 200
#: Steps past the warm-up before the window starts (the first fits, the first alerts).
WARMUP_MARGIN_STEPS = 40


def detector_alone(settings: Any, *, streams: int, seed: int, start_ts: float, emit: str,
                   measure_steps: int = MEASURE_STEPS, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Thread CPU per reading of ``validate_many`` + ``process_encoded`` (module doc)."""
    from streamwatch.bench.load import simulated_steps
    from streamwatch.commands.detect import build_detector
    from streamwatch.schema import ReadingDecoder

    det = build_detector(settings)
    warm = (settings.detector.warmup_readings + settings.detector.thresholds.warmup
            + WARMUP_MARGIN_STEPS)  # fmt: skip
    steps = warm + measure_steps
    ts, values, enc = simulated_steps(streams, seed, start_ts, steps)
    decode = ReadingDecoder().decode
    batch_size = settings.service.max_poll_records
    cpu_s, readings, records, dead, steps_before = 0.0, 0, 0, 0, 0
    pending: list[Any] = []

    def run(batch: list[Any], timed: bool) -> None:
        nonlocal cpu_s, readings, records, dead
        t0 = time.thread_time()
        errors = det.validate_many(batch)
        ok = [r for r, e in zip(batch, errors, strict=True) if e is None]
        encoded, _alerts = det.process_encoded(ok, emit=emit)
        if timed:
            cpu_s += time.thread_time() - t0
            readings += len(ok)
            records += sum(rec is not None for rec in encoded.records)
            dead += len(batch) - len(ok)

    with tqdm(total=steps, desc="detector alone (no Kafka)", unit="step", leave=False,
              disable=not progress, dynamic_ncols=True, mininterval=0.5) as bar:  # fmt: skip
        for t in range(steps):
            if t == warm:  # the window starts on a step boundary, with nothing pending
                if pending:
                    run(pending, timed=False)
                    pending = []
                steps_before = det.counters["training_steps"]
            pending.extend(decode(raw) for raw in enc.step(ts[t], values[t].tolist()))
            while len(pending) >= batch_size:
                run(pending[:batch_size], timed=t >= warm)
                pending = pending[batch_size:]
            bar.update(1)
        if pending:
            run(pending, timed=True)
    if dead:  # the simulator's readings are all valid: a refusal here is a bench defect
        log.warning("detector alone: %d simulated readings were refused", dead)
    return {
        "streams": streams, "warmup_steps": warm, "measured_steps": measure_steps,
        "batch_size": batch_size, "emit_scores": emit, "readings": readings,
        "records": records, "refused": dead, "cpu_s": round(cpu_s, 3),
        "cpu_us_per_reading": round(cpu_s / readings * 1e6, 2) if readings else None,
        "training_steps": det.counters["training_steps"] - steps_before,
        "estimate_readings_per_s_one_core":
            round(readings / cpu_s, 1) if cpu_s > 0 else None,
    }  # fmt: skip


def streams_per_process(streams: int, processes: int) -> int:
    """What one detector process of the group holds (streams spread over partitions).

    >>> streams_per_process(1000, 3)
    334
    """
    return math.ceil(streams / processes)
