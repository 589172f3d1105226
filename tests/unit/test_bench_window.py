"""The throughput window refuses to report a rate when no batch ended inside it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streamwatch.bench.measure import Sample, Sampled
from streamwatch.bench.options import BenchOptions
from streamwatch.bench.runner import ClientBench
from streamwatch.errors import StreamwatchError


class _Scripted(Sampled):
    """A run whose counters follow ``readings(seconds since start)``; training goes on."""

    def __init__(self, readings: Callable[[float], int]) -> None:
        self.t0 = time.monotonic()
        self.readings = readings

    def check(self) -> None:
        pass

    def sample(self) -> Sample:
        t = time.monotonic()
        since = t - self.t0
        return Sample(t=t, readings=self.readings(since), batches=1 + int(since * 10),
                      dead_letters=0, checkpoints=0, cpu_s=since, thread_cpu_s=since,
                      training_steps=int(since * 100), batch_seconds_sum=0.0, batch_count=1.0)


def _bench(tmp_path: Path) -> ClientBench:
    opts = BenchOptions(clients=("confluent",), streams=40, seconds=0.3, warmup_s=0.1,
                        progress=False)
    return ClientBench(opts, "confluent", "unused:0", tmp_path, None, "confluent")


def test_a_window_in_which_no_batch_ended_is_a_clear_error(tmp_path: Path) -> None:
    # one long batch (heavy training) spans the whole window: the readings counter, which
    # moves when a batch ends, stands still while optimiser steps go on
    with pytest.raises(StreamwatchError, match=r"no batch finished within the 0\.3 s .*"
                       r"raise --seconds, or --train-every"):
        _bench(tmp_path)._throughput_window(_Scripted(lambda s: 2000), 10**9)


def test_a_window_with_batches_reports_their_rate(tmp_path: Path) -> None:
    figures = _bench(tmp_path)._throughput_window(
        _Scripted(lambda s: 2000 * (1 + int(s * 10))), 10**9)
    assert figures["readings"] > 0 and figures["readings_per_s"] > 0
    assert figures["training_steps"] > 0
