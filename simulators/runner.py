"""Drive a simulator (or a replay) into a sink at a chosen speed, with a progress bar.

Pacing: step ``k`` of a run belongs at wall time ``t0 + offset_k / speedup``, where
``offset_k`` is its simulated time since the first step. The runner sleeps only when it is
ahead, so a slow sink makes the run late but never drops or reorders anything.
``speedup=0`` runs as fast as possible.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from simulators.sink import Sink
from streamwatch.errors import ConfigError
from streamwatch.schema import Episode, Reading

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStats:
    readings: int
    episodes: int
    steps: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Readings per wall-clock second."""
        return self.readings / self.elapsed_s if self.elapsed_s > 0 else math.inf


def check_speedup(speedup: float) -> None:
    if not (math.isfinite(speedup) and 0 <= speedup <= 1e9):
        raise ConfigError(f"speedup must be in [0, 1e9] (0 = as fast as possible), got {speedup!r}")


def run(
    steps: Iterable[list[Reading]],
    sink: Sink,
    *,
    step_offsets: Callable[[int, list[Reading]], float],
    episodes: Sequence[Episode] = (),
    start_ts: float = 0.0,
    speedup: float = 0.0,
    total: int | None = None,
    progress: bool = False,
    desc: str = "simulate",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunStats:
    """Send every step to ``sink``, each label at its onset, paced by ``speedup``.

    Parameters
    ----------
    steps : one list of Readings per time step, in time order.
    step_offsets : ``(index, step) -> simulated seconds since the first step``.
    episodes : labels; each is sent just before the first step at or after its onset
        (labels left after the last step are sent at the end).
    start_ts : simulated time of the first step (to compare with episode onsets).
    total : expected number of readings (for the progress bar only).
    """
    check_speedup(speedup)
    pending = sorted(episodes, key=lambda e: (e.onset_ts, e.stream_id))
    next_ep = 0
    n_readings = n_steps = 0
    bar = tqdm(total=total, unit="readings", unit_scale=True, desc=desc, disable=not progress,
               mininterval=0.5, leave=False)
    t0 = clock()
    try:
        for k, step in enumerate(steps):
            offset = step_offsets(k, step)
            while next_ep < len(pending) and pending[next_ep].onset_ts <= start_ts + offset:
                sink.episode(pending[next_ep])
                next_ep += 1
            if speedup > 0:
                wait = t0 + offset / speedup - clock()
                if wait > 0:
                    sink.idle()
                    sleep(wait)
            sink.readings(step)
            n_readings += len(step)
            n_steps += 1
            bar.update(len(step))
        for episode in pending[next_ep:]:
            sink.episode(episode)
            next_ep += 1
    except BaseException as exc:
        bar.close()
        if not isinstance(exc, BrokenPipeError):  # a closed output cannot take the rest
            try:  # deliver what was produced before the interruption
                sink.close()
            except Exception as close_exc:  # the original error matters more; log this one
                log.warning("could not flush the output after an error: %s", close_exc)
        raise
    bar.close()
    sink.close()
    stats = RunStats(n_readings, next_ep, n_steps, clock() - t0)
    log.info("run done", extra={"readings": stats.readings, "episodes": stats.episodes,
                                "elapsed_s": round(stats.elapsed_s, 3),
                                "readings_per_s": round(min(stats.rate, 1e12))})
    return stats
