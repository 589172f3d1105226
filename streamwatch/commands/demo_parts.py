"""The pieces ``streamwatch demo`` supervises: child processes, worker threads, simulators
and the alert lines it prints.

Everything here uses the other packages' public API only: the ``simulate`` command line
for child processes, and ``simulators.runner.run`` with a stop-aware step iterator (and an
interruptible sleep) for simulators running as threads.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

from streamwatch.errors import SchemaError, StreamwatchError
from streamwatch.schema import Alert, Reading, decode
from streamwatch.transport.base import Consumer, Message, TopicPartition, Transport

log = logging.getLogger(__name__)

EPISODES_PER_DAY = {"icu": 12.0, "sensors": 6.0}
"""Demo episode rates per stream-day: ICU clinical episodes, machine faults (busier than
the simulators' defaults of 2 and 3, so a short demo shows several alerts)."""
_PR_SET_PDEATHSIG = 1


# -- child processes -------------------------------------------------------------------
@functools.cache
def _prctl() -> Any:
    """libc's ``prctl`` (resolved in the parent, before any fork), or None off Linux."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as exc:
        log.info("no prctl here (%s): children are not tied to the demo's life", exc)
        return None


def _parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when the demo dies."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def hook() -> None:  # pragma: no cover - runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the demo died before prctl took effect
            os._exit(1)

    return hook


class Child:
    """One ``streamwatch`` command run as a child process, its output relayed to stderr.

    Parameters
    ----------
    name
        Short name used as the log prefix (``[detect] ...``).
    argv
        The command line.
    may_finish
        True for a finite job (a simulator): exiting with 0 is not a failure.
    """

    def __init__(self, name: str, argv: Sequence[str], *, may_finish: bool = False) -> None:
        self.name = name
        self.argv = list(argv)
        self.may_finish = may_finish
        self.finished = False
        self.proc: subprocess.Popen[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._reader: threading.Thread | None = None
        self.relay_errors = 0

    def start(self) -> None:
        """Start the process in a session of its own (a terminal Ctrl-C reaches only the
        demo, which stops the children in order), killed by the kernel if the demo dies."""
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_parent_death_hook(),  # prctl only; libc resolved before the fork
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.info("child started", extra={"child": self.name, "pid": self.proc.pid})
        self._reader = threading.Thread(target=self._relay, name=f"demo-{self.name}-output",
                                        daemon=True)
        self._reader.start()

    def _relay(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:  # ends when the child closes its output (exit)
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._tail.append(line)
            try:
                sys.stderr.write(f"[{self.name}] {line}\n")
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is gone: keep draining the pipe
                self.relay_errors += 1

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def tail(self) -> str:
        return "\n".join(f"  [{self.name}] {line}" for line in self._tail) or "  (no output)"

    def interrupt(self) -> None:
        """Ask the process to stop (SIGINT, as a Ctrl-C would)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)

    def wait_or_kill(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the exit, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("did not stop in time: killing", extra={"child": self.name,
                                                                "pid": self.proc.pid})
            self.proc.kill()
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        log.info("child stopped", extra={"child": self.name, "exit_code": self.proc.returncode})
        return self.proc.returncode


# -- threads ---------------------------------------------------------------------------
class Worker(threading.Thread):
    """A piece of the demo in a thread; remembers the exception that ended it, if any."""

    def __init__(self, piece: str, target: Callable[..., object], *, may_finish: bool = False,
                 args: tuple[Any, ...] = ()) -> None:
        super().__init__(name=f"demo-{piece}", daemon=True)
        self.piece = piece
        self.may_finish = may_finish
        self.finished = False
        self.error: BaseException | None = None
        self._target_fn = target
        self._target_args = args

    def run(self) -> None:
        try:
            self._target_fn(*self._target_args)
        except BaseException as exc:  # reported by the supervisor, which stops the demo
            self.error = exc
            log.exception("demo piece failed", extra={"piece": self.piece})


# -- simulators ------------------------------------------------------------------------
def simulate_argv(source: str, streams: int, args: argparse.Namespace, warmup_s: float,
                  topics: Any) -> list[str]:
    """``simulate icu|sensors ...`` arguments for the demo (Kafka flags added by the caller)."""
    count = "--patients" if source == "icu" else "--machines"
    return ["simulate", source, count, str(streams), "--duration", f"{args.duration}s",
            "--speedup", str(args.speedup), "--seed", str(args.seed),
            "--warmup", f"{warmup_s}s", "--episodes-per-day", str(EPISODES_PER_DAY[source]),
            "--topic", topics.readings, "--truth-topic", topics.truth,
            "--partitions", str(topics.partitions), "--quiet"]


def build_simulator(source: str, streams: int, seed: int, warmup_s: float) -> Any:
    """The simulator the ``simulate_argv`` command line builds, for in-process runs."""
    if source == "icu":
        from simulators.icu import IcuSimulator

        return IcuSimulator(streams, seed, warmup_s=warmup_s,
                            clinical_per_day=EPISODES_PER_DAY["icu"])
    from simulators.sensors import SensorSimulator

    return SensorSimulator(streams, seed, warmup_s=warmup_s,
                           faults_per_day=EPISODES_PER_DAY["sensors"])


def first_acute_onset(patients: int, seed: int, warmup_s: float, duration_s: float) -> float | None:
    """Simulated seconds from the start to the first acute clinical episode (planned from
    the seed, no readings generated), or None if the run has none."""
    from simulators.episodes import ACUTE_TYPES

    sim = build_simulator("icu", patients, seed, warmup_s)
    onsets = [e.onset_ts for e in sim.episodes(duration_s) if e.type in ACUTE_TYPES]
    return min(onsets) - sim.start_ts if onsets else None


def icu_warmup(patients: int, seed: int, duration_s: float, target_s: float) -> float:
    """The ICU simulator's ``warmup_s`` that puts the first acute episode near ``target_s``.

    Episode onsets are spread over the free time after the warm-up, so the first one may
    come long after it; a few fixed-point steps shift the warm-up (never below 0) until
    the first acute episode starts within 30 s of the target. Deterministic per seed.
    """
    warmup = target_s
    for _ in range(6):
        first = first_acute_onset(patients, seed, warmup, duration_s)
        if first is None or abs(first - target_s) <= 30.0:
            break
        new = max(0.0, warmup - (first - target_s))
        if new == warmup:
            break
        warmup = new
    return warmup


class SimulationStopped(StreamwatchError):
    """Raised through the runner when the demo stops a simulator thread (like a Ctrl-C)."""


def _until(steps: Iterable[list[Reading]], stop: threading.Event) -> Iterator[list[Reading]]:
    for step in steps:
        if stop.is_set():
            raise SimulationStopped("stopped by the demo")
        yield step


def _pause(stop: threading.Event, seconds: float) -> None:
    """The runner's sleep, cut short when the demo stops."""
    stop.wait(seconds)


def simulate_in_thread(transport: Transport, topics: Any, source: str, streams: int,
                       args: argparse.Namespace, warmup_s: float, stop: threading.Event) -> None:
    """Run one simulator into ``transport`` paced by ``args.speedup`` until done or ``stop``."""
    from simulators.runner import run
    from simulators.sink import KafkaSink

    sim = build_simulator(source, streams, args.seed, warmup_s)
    producer = transport.producer()
    rate = sim.rate_hz
    try:
        run(_until(sim.readings(args.duration), stop), KafkaSink(producer, topics.readings,
                                                                 topics.truth),
            step_offsets=lambda k, _step: k / rate, episodes=sim.episodes(args.duration),
            start_ts=sim.start_ts, speedup=args.speedup, desc=f"simulate {source}",
            sleep=lambda seconds: _pause(stop, seconds))
    except SimulationStopped:
        log.info("simulator stopped", extra={"source": source})
    finally:
        producer.close()


# -- alert lines -----------------------------------------------------------------------
def format_alert(alert: Alert) -> str:
    """``alert open icu/bed-03 critical: <summary>`` (one line, for people)."""
    return (f"alert {alert.event} {alert.stream_id} {alert.severity}: "
            f"{alert.explanation.summary}")


class AlertPrinter:
    """Prints one line per alert that opens or closes (updates are skipped).

    Reads every partition of ``topic`` with ``assign()`` (no consumer group), from the
    beginning (``from_start``) or from the end, in a daemon thread.
    """

    def __init__(self, transport: Transport, topic: str, *, from_start: bool,
                 out: TextIO | None = None) -> None:
        self.transport = transport
        self.topic = topic
        self.from_start = from_start
        self.out = out
        self.printed = 0
        self.undecodable = 0
        self._consumer: Consumer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        consumer = self.transport.consumer(None)
        parts = [TopicPartition(self.topic, p)
                 for p in range(self.transport.partitions_for(self.topic))]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        for tp in parts:
            consumer.seek(tp, 0 if self.from_start else ends[tp])
        self._consumer = consumer
        self._thread = threading.Thread(target=self._loop, name="demo-alerts", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            try:
                messages = self._consumer.poll(0.5, 1000)
            except StreamwatchError as exc:
                log.warning("alert printer: broker error, retrying in 1 s: %s", exc)
                self._stop.wait(1.0)
                continue
            for message in messages:
                self.show(message)

    def show(self, message: Message) -> None:
        if message.value is None:
            self._bad(message, "empty value")
            return
        try:
            alert: Alert = decode("alert", message.value)
        except SchemaError as exc:
            self._bad(message, str(exc))
            return
        if alert.event == "update":
            return
        self.printed += 1
        print(format_alert(alert), file=self.out or sys.stdout, flush=True)

    def _bad(self, message: Message, reason: str) -> None:
        self.undecodable += 1
        log.warning("alert printer: undecodable record partition=%d offset=%d reason=%s",
                    message.partition, message.offset, reason)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                consumer.close()
            except StreamwatchError as exc:  # the demo is ending: say so, go on
                log.warning("alert printer: consumer did not close cleanly: %s", exc)
