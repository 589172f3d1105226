"""Prometheus metrics of the detector service (one registry per service instance)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streamwatch.errors import ConfigError
from streamwatch.schema import AlertEvent, DeadLetterCode

log = logging.getLogger(__name__)

CHECKPOINT_STAGES = ("snapshot", "write")
"""The ``stage`` labels of ``streamwatch_checkpoint_seconds`` (set in ``pipeline``)."""


class ServiceMetrics:
    """Counters and gauges of one detector process; optionally served over HTTP.

    Served on 127.0.0.1 by default (``/metrics``). Names follow Prometheus conventions.
    Every fixed label value (dead-letter codes, alert events, checkpoint stages) has its
    sample from the start, 0 until its first event, so ``rate()`` sees 0, not "absent".
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.readings = Counter("streamwatch_readings_total", "Readings accepted and scored", registry=r)
        self.dead_letters = Counter(
            "streamwatch_dead_letters_total", "Records refused, by reason code", ["code"], registry=r
        )
        self.alert_events = Counter(
            "streamwatch_alert_events_total", "Alert lifecycle events", ["event"], registry=r
        )
        self.batches = Counter("streamwatch_batches_total", "Micro-batches processed", registry=r)
        self.checkpoints = Counter("streamwatch_checkpoints_total", "Checkpoints written", registry=r)
        self.commits = Counter("streamwatch_commits_total", "Offset commits", registry=r)
        self.transport_errors = Counter(
            "streamwatch_transport_errors_total", "Broker errors survived (retried)", registry=r
        )
        self.consumer_lag = Gauge("streamwatch_consumer_lag", "Records of this process's partitions not scored yet (held in the merge or not fetched)", registry=r)
        self.paused_partitions = Gauge(
            "streamwatch_paused_partitions", "Partitions paused because they ran ahead in "
            "event time", registry=r)
        self.open_alerts = Gauge("streamwatch_open_alerts", "Alerts currently open", registry=r)
        self.streams = Gauge("streamwatch_streams", "Streams with state in this process", registry=r)
        self.training_steps = Gauge(
            "streamwatch_training_steps", "Optimiser steps taken (model version)", registry=r
        )
        self.training_loss = Gauge("streamwatch_training_loss", "Last training loss", registry=r)
        self.readings_per_s = Gauge(
            "streamwatch_readings_per_second", "Readings/s over the last ~10 s", registry=r
        )
        self.batch_latency = Histogram(
            "streamwatch_batch_seconds",
            "Time to process one micro-batch (decode to flush)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "streamwatch_checkpoint_seconds",
            "Checkpoint time by stage: snapshot (the loop pauses for it), write (serialise and "
            "send or store, on the checkpoint thread)",
            ["stage"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        for code in get_args(DeadLetterCode):
            self.dead_letters.labels(code=code)
        for event in get_args(AlertEvent):
            self.alert_events.labels(event=event)
        for stage in CHECKPOINT_STAGES:
            self.checkpoint_seconds.labels(stage=stage)
        self._rate_window: deque[tuple[float, int]] = deque(maxlen=64)
        self._lock = threading.Lock()
        self.dead_letter_counts: dict[str, int] = {}
        self.last_batch_ms: float | None = None

    def record_rate(self, now: float, total: int) -> float:
        """Update the readings/s gauge from the running total; returns the rate."""
        with self._lock:
            self._rate_window.append((now, total))
            while len(self._rate_window) > 2 and now - self._rate_window[0][0] > 10.0:
                self._rate_window.popleft()
            t0, n0 = self._rate_window[0]
            rate = (total - n0) / (now - t0) if now > t0 else 0.0
        self.readings_per_s.set(rate)
        return rate

    def count_dead_letter(self, code: str) -> None:
        self.dead_letters.labels(code=code).inc()
        with self._lock:
            self.dead_letter_counts[code] = self.dead_letter_counts.get(code, 0) + 1

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Start the ``/metrics`` HTTP endpoint in a daemon thread; returns the server."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror} (another detector on "
                "this host?): give each process its own --metrics-port, or 0 to turn the "
                "endpoint off"
            ) from None
        except (UnicodeError, ValueError) as exc:  # a host name the resolver refuses
            raise ConfigError(f"cannot serve metrics on {host!r}: not a valid host name "
                              f"({exc}); use an address such as 127.0.0.1") from None
        log.info("metrics endpoint started", extra={"url": f"http://{host}:{port}/metrics"})
        return server
