"""Several detector processes in one consumer group, measured as one (``--detectors N``).

The service scales out the Kafka way: more processes in the group, the partitions split
between them (each process keeps the state of its own streams; see ``state_store``).
:class:`GroupRun` starts N such processes (``multiprocessing`` with ``spawn``: no shared
torch or client threads), each running the real service in a thread of its own, exactly
as :class:`~streamwatch.bench.measure.ServiceRun` does in the bench process, and publishing
that run's counters every ``SAMPLE_EVERY_S`` into shared memory. :meth:`GroupRun.sample`
sums them, so the bench's phases measure a group exactly as they measure one process.

CPU figures of a group are sums over its processes (``cpu_share_of_one_core`` can exceed 1).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
from typing import Any

from streamwatch.bench.measure import SAMPLE_EVERY_S, Sample, Sampled
from streamwatch.errors import StreamwatchError

log = logging.getLogger(__name__)

#: Sample fields published by each child, in this order, then an "alive" flag.
FIELDS = ("readings", "batches", "dead_letters", "checkpoints", "cpu_s", "thread_cpu_s",
          "training_steps", "batch_seconds_sum", "batch_count", "members_assigned", "held",
          "paused")  # fmt: skip


def _child(settings: Any, instance: str, restore: Any, shared: Any, stop: Any, errors: Any,
           log_level: str, relay_topic: str | None = None,
           ) -> None:  # fmt: skip  # pragma: no cover - runs in the child process
    import torch

    from streamwatch.cli import setup_logging

    setup_logging(log_level)

    from streamwatch.bench.measure import ServiceRun
    from streamwatch.bench.relay import relay_for
    from streamwatch.bench.runner import _restore_factory
    from streamwatch.commands.detect import build_service, open_kafka

    torch.set_num_threads(settings.service.torch_threads)
    transport = open_kafka(settings)
    run = None

    def publish(s: Sample) -> None:
        shared[: len(FIELDS)] = [float(-1 if getattr(s, f) is None else getattr(s, f))
                                 for f in FIELDS]  # fmt: skip

    try:
        if relay_topic is not None:
            service: Any = relay_for(settings, transport, relay_topic)
        else:
            service = build_service(settings, transport, instance=instance)
        if restore is not None:
            service.detector_factory = _restore_factory(settings, restore)
        run = ServiceRun(service).start()
        while True:
            run.check()
            publish(run.sample())
            if stop.wait(SAMPLE_EVERY_S):
                break
        run.stop()
        publish(run.sample())  # the final counts
    except BaseException as exc:
        errors.put(f"{instance}: {exc!r}")
        if run is not None:
            run.service.stop()
        raise
    finally:
        shared[len(FIELDS)] = 0.0
        transport.close()


class GroupRun(Sampled):
    """N detector processes in one group (see module docstring); with ``relay_topic``,
    N :class:`~streamwatch.bench.relay.Relay` processes instead (the transport alone)."""

    def __init__(self, settings: Any, instances: list[str], restore: Any = None,
                 relay_topic: str | None = None) -> None:  # fmt: skip
        if len(instances) < 2:
            raise StreamwatchError("a group run needs at least 2 detector processes")
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._errors = ctx.Queue()
        self._shared = [ctx.Array("d", len(FIELDS) + 1, lock=False) for _ in instances]
        for arr in self._shared:
            arr[len(FIELDS)] = 1.0
        self._procs = [ctx.Process(target=_child, name=f"streamwatch-bench-{name}", daemon=True,
                                   args=(settings, name, restore, arr, self._stop, self._errors,
                                         logging.getLevelName(logging.getLogger().level).lower(),
                                         relay_topic))
                       for name, arr in zip(instances, self._shared, strict=True)]  # fmt: skip

    def start(self) -> GroupRun:
        for p in self._procs:
            p.start()
        return self

    def check(self) -> None:
        if not self._errors.empty():
            raise StreamwatchError(f"a detector process failed: {self._errors.get()}")
        for p, arr in zip(self._procs, self._shared, strict=True):
            if not p.is_alive() and not self._stop.is_set():
                raise StreamwatchError(f"detector process {p.name} stopped by itself "
                                       f"(exit code {p.exitcode})")  # fmt: skip
            if arr[len(FIELDS)] == 0.0 and not self._stop.is_set():
                raise StreamwatchError(f"detector process {p.name} stopped by itself")

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for p in self._procs:
            p.join(max(0.1, deadline - time.monotonic()))
        stuck = [p.name for p in self._procs if p.is_alive()]
        for p in self._procs:
            if p.is_alive():
                p.kill()
        if stuck:
            raise StreamwatchError(f"detector processes {stuck} did not stop within {timeout:.0f} s")
        if not self._errors.empty():
            raise StreamwatchError(f"a detector process failed: {self._errors.get()}")

    def per_member(self) -> list[int]:
        """Readings scored by each process so far (the partitions' split)."""
        return [int(arr[0]) for arr in self._shared]

    def sample(self) -> Sample:
        totals = [sum(arr[i] for arr in self._shared) for i in range(len(FIELDS))]
        values = dict(zip(FIELDS, totals, strict=True))
        steps = None if any(arr[FIELDS.index("training_steps")] < 0 for arr in self._shared) \
            else int(values["training_steps"])  # fmt: skip
        return Sample(
            t=time.monotonic(), readings=int(values["readings"]), batches=int(values["batches"]),
            dead_letters=int(values["dead_letters"]), checkpoints=int(values["checkpoints"]),
            cpu_s=values["cpu_s"], thread_cpu_s=values["thread_cpu_s"], training_steps=steps,
            batch_seconds_sum=values["batch_seconds_sum"], batch_count=values["batch_count"],
            members_assigned=int(values["members_assigned"]), held=int(values["held"]),
            paused=int(values["paused"]))  # fmt: skip
