"""How ``streamwatch demo`` runs its pieces: child processes around Kafka, or threads on
an in-memory bus; both supervised until a stop signal or the failure of a piece."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from streamwatch.commands.demo_parts import (
    AlertPrinter,
    Child,
    Worker,
    simulate_argv,
    simulate_in_thread,
)
from streamwatch.errors import StreamwatchError

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 20.0
"""Children get this long after SIGINT (the detector checkpoints) before SIGKILL."""
READY_TIMEOUT_S = 90.0
"""How long the dashboard may take to answer HTTP at start-up."""


# -- signals ---------------------------------------------------------------------------
class StopFlag:
    """Set by SIGINT/SIGTERM (handlers installed by ``install``, restored by ``restore``)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            log.warning("already stopping; waiting for the pieces to finish")
            return
        self.signal = signum
        self.event.set()

    def wait(self, seconds: float) -> bool:
        return self.event.wait(seconds)

    def is_set(self) -> bool:
        return self.event.is_set()


def say(line: str) -> None:
    print(line, flush=True)


def _wait_http(url: str, stop: StopFlag, alive: Callable[[], bool],
               timeout: float = READY_TIMEOUT_S) -> bool:
    """True once ``url`` answers 200; False if stopped; raises if ``alive()`` turns False."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if not alive():
            raise StreamwatchError("the dashboard stopped while starting (see its log above)")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            log.debug("dashboard not ready yet: %s", exc)
        if time.monotonic() > deadline:
            raise StreamwatchError(f"the dashboard did not answer on {url} within "
                                   f"{timeout:.0f} s; the machine may be overloaded")
        stop.wait(0.3)
    return False


def _probe_url(host: str, port: int) -> str:
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{probe_host}:{port}/"


def _announce_dashboard(args: argparse.Namespace, settings: Any) -> None:
    say(f"dashboard: http://{args.host}:{args.port}")
    service = settings.service
    if service.metrics_port:
        say(f"metrics: http://{service.metrics_host}:{service.metrics_port}/metrics")
    say("press Ctrl-C to stop everything")


# -- Kafka mode: child processes -------------------------------------------------------
def run_kafka(args: argparse.Namespace, settings: Any, topics: dict[str, int],
              warmups: dict[str, float], workdir: Path, stop: StopFlag) -> int:
    """Broker (unless given), topics, children; supervise until stopped; tidy up."""
    from streamwatch.broker import TansuBroker
    from streamwatch.transport import open_transport

    broker: TansuBroker | None = None
    transport: Any = None
    children: list[Child] = []
    printer: AlertPrinter | None = None
    client = settings.kafka.client
    try:
        if settings.kafka.bootstrap_servers:
            bootstrap = settings.kafka.bootstrap_servers
        else:
            broker = TansuBroker(die_with_parent=True).start()
            bootstrap = broker.bootstrap
        transport = open_transport(bootstrap, client,
                                   session_timeout_ms=settings.kafka.session_timeout_ms,
                                   client_config=settings.kafka.client_config)
        transport.create_topics(topics)
        owner = "started by the demo" if broker is not None else "given by --bootstrap-servers"
        say(f"kafka: {bootstrap} ({owner}; topics {', '.join(sorted(topics))})")
        if stop.is_set():
            return 0
        children = _start_children(args, settings, warmups, workdir, bootstrap)
        dashboard = next(c for c in children if c.name == "dashboard")
        if not _wait_http(_probe_url(args.host, args.port), stop, dashboard.alive):
            return 0
        _announce_dashboard(args, settings)
        printer = AlertPrinter(transport, settings.topics.alerts, from_start=broker is not None)
        printer.start()
        return _supervise(children, stop)
    finally:
        if printer is not None:
            printer.stop()
        _stop_children(children)
        if transport is not None:
            transport.close()
        if broker is not None:
            broker.stop()


def _start_children(args: argparse.Namespace, settings: Any, warmups: dict[str, float],
                    workdir: Path, bootstrap: str) -> list[Child]:
    config_file = workdir / "detector.json"
    config_file.write_text(json.dumps(settings.model_dump(mode="json")))
    base = [sys.executable, "-m", "streamwatch.cli", "--log-level", args.log_level]
    kafka = ["--bootstrap-servers", bootstrap, "--kafka-client", settings.kafka.client]
    children: list[Child] = []
    try:
        children.append(Child("detect", [*base, "detect", "--config", str(config_file), *kafka]))
        children.append(Child("dashboard", [*base, "dashboard", *kafka, "--host", args.host,
                                            "--port", str(args.port)]))
        for source, streams in (("icu", args.patients), ("sensors", args.machines)):
            if streams > 0:
                argv = simulate_argv(source, streams, args, warmups[source], settings.topics)
                children.append(Child(source, [*base, *argv, *kafka], may_finish=True))
        for child in children:
            child.start()
    except BaseException:
        _stop_children(children)
        raise
    return children


def _supervise(children: list[Child], stop: StopFlag) -> int:
    """Wait for a stop signal (0) or an unexpected exit of a child (1)."""
    while not stop.wait(0.25):
        for child in children:
            code = child.exit_code()
            if code is None or child.finished:
                continue
            if child.may_finish and code == 0:
                child.finished = True
                log.info("simulator finished; the rest keeps running (Ctrl-C stops)",
                         extra={"child": child.name})
                continue
            log.error("a demo process exited unexpectedly: stopping the demo",
                      extra={"child": child.name, "exit_code": code})
            print(f"streamwatch demo: {child.name} exited with code {code}; stopping "
                  f"everything. Its last output:\n{child.tail()}", file=sys.stderr, flush=True)
            return 1
    return 0


def _stop_children(children: list[Child]) -> None:
    """SIGINT to every live child, wait up to ``STOP_TIMEOUT_S``, SIGKILL what is left."""
    for child in children:
        child.interrupt()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        child.wait_or_kill(max(0.1, deadline - time.monotonic()))


# -- memory mode: threads in this process ----------------------------------------------
def run_memory(args: argparse.Namespace, settings: Any, topics: dict[str, int],
               warmups: dict[str, float], stop: StopFlag) -> int:
    """Everything as threads on one ``MemoryTransport``; supervise until stopped."""
    import torch

    from dashboards.app import create_app, serve_in_thread
    from dashboards.feed import Feed
    from dashboards.store import DashboardStore
    from streamwatch.commands.detect import build_service
    from streamwatch.transport import open_transport

    torch.set_num_threads(settings.service.torch_threads)
    transport = open_transport(None, "memory",
                               session_timeout_ms=settings.kafka.session_timeout_ms)
    transport.create_topics(topics)
    say("kafka: none (--transport memory: every piece runs in this process, no broker)")
    service = build_service(settings, transport, instance="demo")
    store = DashboardStore()
    feed = Feed(transport, store)
    printer = AlertPrinter(transport, settings.topics.alerts, from_start=True)
    sim_stop = threading.Event()
    workers = [Worker("detector", service.run)]
    for source, streams in (("icu", args.patients), ("sensors", args.machines)):
        if streams > 0:
            workers.append(Worker(source, simulate_in_thread, may_finish=True, args=(
                transport, settings.topics, source, streams, args, warmups[source], sim_stop)))
    server = None
    try:
        feed.start()
        server = serve_in_thread(create_app(store, feed=feed), args.host, args.port)
        for worker in workers:
            worker.start()
        if _wait_http(_probe_url(args.host, args.port), stop, lambda: True):
            _announce_dashboard(args, settings)
            printer.start()
            return _supervise_workers(workers, stop)
        return 0
    finally:
        sim_stop.set()
        for worker in workers[1:]:
            worker.join(STOP_TIMEOUT_S)
        service.stop()
        workers[0].join(STOP_TIMEOUT_S)
        printer.stop()
        feed.stop()
        if server is not None:
            server.stop()
        transport.close()


def _supervise_workers(workers: list[Worker], stop: StopFlag) -> int:
    while not stop.wait(0.25):
        for worker in workers:
            if worker.is_alive() or worker.finished:
                continue
            if worker.may_finish and worker.error is None:
                worker.finished = True
                log.info("simulator finished; the rest keeps running (Ctrl-C stops)",
                         extra={"worker": worker.name})
                continue
            print(f"streamwatch demo: {worker.name} stopped unexpectedly ({worker.error!r}); "
                  "stopping everything", file=sys.stderr, flush=True)
            return 1
    return 0
