"""Load generation for ``streamwatch bench``: ICU Readings from a separate OS process.

The load runs in its own process (``multiprocessing`` with ``spawn``, so it shares no
torch or client threads with the detector) so that the detector's process is measured
alone. Values come from :class:`simulators.icu.IcuSimulator` arrays, generated before
anything is sent, and are encoded with msgspec (NaN becomes ``null``).

Two modes:

* **as fast as possible** (``rate=None``): the throughput phase pre-fills the readings
  topic, step by step (one reading per stream per simulated second);
* **paced** (``rate`` readings/s): the latency phase first sends ``primer_steps`` steps,
  reports ``primed`` and waits for the ``go`` event, then sends the rest on schedule.

Each reading's Kafka timestamp (CreateTime) is set by the client when ``send`` is called:
that is the produce time the latency phase measures from.

>>> enc = StepEncoder(["icu/bed-01"], ("hr", "spo2"), "icu_vitals")
>>> enc.step(1.0, [[80.0, float("nan")]])
[b'{"v":1,"stream_id":"icu/bed-01","kind":"icu_vitals","ts":1.0,"values":{"hr":80.0,"spo2":null}}']
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

from streamwatch.errors import ConfigError, StreamwatchError
from streamwatch.heap import freeze_heap

log = logging.getLogger(__name__)

PROGRESS_EVERY = 50_000
PACE_TICK_S = 0.001
"""The paced load wakes at most this often and sends everything due. Waking for each
record (every 20 us at 50,000 readings/s) cost the load process ~4 us of CPU per reading
in sleeps, 0.2 of a core taken from the detectors on the same 2 cores."""


@dataclass(frozen=True)
class LoadSpec:
    """What one load process sends.

    Parameters
    ----------
    bootstrap
        ``host:port`` of the cluster.
    client
        Producer client: ``kafka-python`` or ``confluent``.
    topic
        Readings topic (created beforehand).
    streams
        ICU beds, 1-100,000.
    seed
        Simulator seed (same seed, same values).
    start_ts
        Epoch seconds of the first step; steps are 1 s apart.
    steps
        Simulated seconds to send (``streams * steps`` readings), >= 1.
    rate
        Readings/s, or ``None`` for as fast as possible.
    primer_steps
        Paced mode only: steps sent at once before waiting for ``go``, >= 0.
    linger_ms
        The load producer's ``linger_ms`` (0-1,000): how long it gathers a partition's
        records into one batch. The time waited counts in the latency (CreateTime is set at
        ``send``).
    """

    bootstrap: str
    client: str
    topic: str
    streams: int
    seed: int
    start_ts: float
    steps: int
    rate: float | None = None
    primer_steps: int = 0
    linger_ms: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.streams <= 100_000:
            raise ConfigError(f"streams must be in 1..100000, got {self.streams}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate must be > 0 readings/s or None, got {self.rate}")
        if not 0 <= self.primer_steps < self.steps:
            raise ConfigError(f"primer_steps must be in [0, steps), got {self.primer_steps}")
        if not 0 <= self.linger_ms <= 1000:
            raise ConfigError(f"linger_ms must be in 0..1000, got {self.linger_ms}")

    @property
    def readings(self) -> int:
        return self.streams * self.steps


class StepEncoder:
    """Encodes one simulated step (all streams) to Reading JSON, as fast as msgspec goes."""

    def __init__(self, stream_ids: Sequence[str], channels: Sequence[str], kind: str) -> None:
        self.stream_ids = list(stream_ids)
        self.keys = [sid.encode() for sid in self.stream_ids]
        self.channels = tuple(channels)
        self.kind = kind
        self._encode = msgspec.json.Encoder().encode

    def step(self, ts: float, rows: Sequence[Sequence[float]]) -> list[bytes]:
        """``rows[s]`` = channel values of stream ``s`` (NaN = null)."""
        enc, kind, chans = self._encode, self.kind, self.channels
        return [
            enc({"v": 1, "stream_id": sid, "kind": kind, "ts": ts,
                 "values": dict(zip(chans, row, strict=True))})
            for sid, row in zip(self.stream_ids, rows, strict=True)
        ]  # fmt: skip


def simulated_steps(streams: int, seed: int, start_ts: float, steps: int
                    ) -> tuple[list[float], Any, StepEncoder]:  # fmt: skip
    """The bench's ICU readings: each step's timestamp, the (steps, streams, channels)
    values and the encoder of one step's records (same arguments, same readings)."""
    from simulators.icu import IcuSimulator

    sim = IcuSimulator(patients=streams, seed=seed, start_ts=start_ts)
    ts, values, _present = sim.arrays(float(steps))
    return ts.tolist(), values, StepEncoder(sim.stream_ids, sim.channels, sim.kind)


def simulated_stream_ids(streams: int, seed: int) -> list[str]:
    """The stream ids of ``simulated_steps``' readings, in the encoder's order."""
    from simulators.icu import IcuSimulator

    return list(IcuSimulator(patients=streams, seed=seed).stream_ids)


def _generate(spec: LoadSpec) -> tuple[list[float], Any, StepEncoder]:
    return simulated_steps(spec.streams, spec.seed, spec.start_ts, spec.steps)


def _send_fast(spec: LoadSpec, producer: Any, queue: Any) -> dict[str, float]:
    ts, values, enc = _generate(spec)
    started, sent, reported = time.perf_counter(), 0, 0
    send, topic, keys = producer.send, spec.topic, enc.keys
    for t in range(spec.steps):
        for value, key in zip(enc.step(ts[t], values[t].tolist()), keys, strict=True):
            send(topic, value, key)
        sent += len(keys)
        if sent - reported >= PROGRESS_EVERY:
            queue.put(("progress", sent))
            reported = sent
    producer.flush()
    elapsed = time.perf_counter() - started
    return {"sent": sent, "elapsed_s": elapsed, "rate": sent / elapsed if elapsed else 0.0}


def _send_paced(spec: LoadSpec, producer: Any, queue: Any, go: Any) -> dict[str, float]:
    ts, values, enc = _generate(spec)
    records = [(v, k) for t in range(spec.steps)
               for v, k in zip(enc.step(ts[t], values[t].tolist()), enc.keys, strict=True)]  # fmt: skip
    primer = spec.primer_steps * spec.streams
    send, topic = producer.send, spec.topic
    for value, key in records[:primer]:
        send(topic, value, key)
    producer.flush()
    queue.put(("primed", primer))
    freeze_heap()  # the records made above: a full collection of them took 75-85 ms
    try:
        return _pace(spec, producer, queue, go, records[primer:], primer)
    finally:
        gc.unfreeze()


def _pace(spec: LoadSpec, producer: Any, queue: Any, go: Any, rest: list[tuple[bytes, bytes]],
          primer: int) -> dict[str, float]:
    """Once ``go`` is set, send ``rest`` at ``spec.rate`` (bursts of what is due)."""
    assert spec.rate is not None
    send, topic = producer.send, spec.topic
    go.wait()
    rate, n, sent, worst_behind, report_at = spec.rate, len(rest), 0, 0.0, PROGRESS_EVERY
    started_epoch, t0 = time.time(), time.perf_counter()
    while sent < n:
        elapsed = time.perf_counter() - t0
        due = min(n, int(rate * elapsed) + 1)
        if due <= sent:
            time.sleep(min(0.002, max(PACE_TICK_S, (sent + 1) / rate - elapsed)))
            continue
        worst_behind = max(worst_behind, (due - sent - 1) / rate)
        for value, key in rest[sent:due]:
            send(topic, value, key)
        sent = due
        if sent >= report_at:
            queue.put(("progress", primer + sent))
            report_at = sent + PROGRESS_EVERY
    producer.flush()
    elapsed = time.perf_counter() - t0
    return {"sent": primer + sent, "paced": sent, "elapsed_s": elapsed,
            "rate": sent / elapsed if elapsed else 0.0, "paced_start_epoch": started_epoch,
            "worst_behind_schedule_s": worst_behind}  # fmt: skip


def load_main(spec_fields: dict[str, Any], queue: Any, go: Any) -> None:
    """Entry point of the load process: messages on ``queue`` are
    ``("progress", sent)``, ``("primed", n)``, ``("done", summary)`` or ``("error", text)``."""
    from streamwatch.transport import open_transport

    spec = LoadSpec(**spec_fields)
    cpu0 = time.process_time()
    try:
        transport = open_transport(spec.bootstrap, spec.client,  # type: ignore[arg-type]
                                   client_config={"linger_ms": spec.linger_ms})
        producer = transport.producer()
        try:
            if spec.rate is None:
                summary = _send_fast(spec, producer, queue)
            else:
                summary = _send_paced(spec, producer, queue, go)
        finally:
            producer.close()
            transport.close()
        summary["cpu_s"] = time.process_time() - cpu0
        summary["client"] = spec.client  # type: ignore[assignment]
        queue.put(("done", summary))
    except Exception as exc:  # reported to the parent, which raises it there
        log.exception("load process failed")
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


class LoadProcess:
    """Starts :func:`load_main` in a spawned process and relays its messages."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        ctx = mp.get_context("spawn")
        self._queue: Any = ctx.Queue()
        self._go: Any = ctx.Event()
        self._proc = ctx.Process(target=load_main, args=(asdict(spec), self._queue, self._go),
                                 name="streamwatch-bench-load", daemon=True)  # fmt: skip
        self.pid: int | None = None

    def start(self) -> LoadProcess:
        self._proc.start()
        self.pid = self._proc.pid
        return self

    def go(self) -> None:
        """Paced mode: start sending after the primer."""
        self._go.set()

    def next_message(self, timeout: float) -> tuple[str, Any] | None:
        """The next message, or ``None`` after ``timeout`` s; raises if the process died."""
        import queue as queue_mod

        try:
            kind, payload = self._queue.get(timeout=timeout)
        except queue_mod.Empty:
            if self._proc.is_alive():
                return None
            try:  # it has exited: its last message may still be in the pipe
                kind, payload = self._queue.get(timeout=1.0)
            except queue_mod.Empty:
                raise StreamwatchError(
                    f"the load process exited with code {self._proc.exitcode} without "
                    "reporting; run with --log-level debug to see its log") from None  # fmt: skip
        if kind == "error":
            raise StreamwatchError(f"the load process failed: {payload}")
        return kind, payload

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for the process to end; terminate it (and say so) if it does not."""
        self._go.set()
        self._proc.join(timeout)
        if self._proc.is_alive():
            log.warning("load process pid=%s still running after %.0f s: terminating",
                        self.pid, timeout)  # fmt: skip
            self._proc.terminate()
            self._proc.join(5)
