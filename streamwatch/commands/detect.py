"""``streamwatch detect``: the detector service over Kafka (consumer group, at-least-once)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from streamwatch.argtypes import finite, whole

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "detect",
        help="run the detector service on streamwatch.readings",
        description="Consume Readings in a consumer group, score them with the online "
        "forecaster, produce Scores, Alerts and dead letters; at-least-once with checkpoints.",
    )
    p.add_argument("--config", type=Path, help="TOML or JSON settings file (see README)")
    add_service_arguments(p)
    p.add_argument("--timeout", type=finite(0, above=True, unit="seconds"),
                   help="stop after this many seconds (default: run until stopped)")
    p.add_argument("--count", type=whole(1), help="stop after handling this many records")
    p.set_defaults(func=run)


def add_service_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``detect`` and ``demo``; each overrides file and environment."""
    k = p.add_argument_group("Kafka")
    k.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                   help="Kafka cluster (default: $STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS)")
    k.add_argument("--kafka-client", choices=["kafka-python", "confluent"],
                   help="Kafka client library (default kafka-python)")
    k.add_argument("--session-timeout-ms", type=int,
                   help="consumer group session timeout, 1000-300000 (default 6000; a group "
                   "join takes about half of it on Tansu)")
    k.add_argument("--group-id", help="consumer group (default streamwatch-detector)")
    s = p.add_argument_group("service")
    s.add_argument("--state-store", choices=["kafka", "directory"],
                   help="keep checkpoints on the changelog topic (default kafka) or in "
                   "--checkpoint-dir, a directory every detector process must see")
    s.add_argument("--state-topic", help="changelog topic (default streamwatch.detector-state)")
    s.add_argument("--checkpoint-dir", type=Path,
                   help="state directory for --state-store directory (default runs/detector)")
    s.add_argument("--checkpoint-every-batches", type=int,
                   help="checkpoint after this many micro-batches (default 1000)")
    s.add_argument("--checkpoint-every-s", type=float,
                   help="or after at most this many seconds (default 30)")
    s.add_argument("--max-poll-records", type=int, help="micro-batch size (default 2000)")
    s.add_argument("--emit-scores", choices=["all", "alerts"],
                   help="produce a Score for every reading (default) or only for the "
                   "anomalous, hard-limited or in-alert ones")
    s.add_argument("--watch-stream", action="append", metavar="ID_OR_PATTERN",
                   help="with --emit-scores alerts, this stream still gets a Score for every "
                   "reading (a stream id or fnmatch pattern such as 'icu/bed-0*'; repeat for "
                   "more)")
    s.add_argument("--fresh-start", action="store_true", default=None,
                   help="skip (log, and remove) unreadable checkpoints and those of other "
                   "model settings instead of failing; go on from the committed offsets")
    s.add_argument("--metrics-host", help="Prometheus endpoint address (default 127.0.0.1)")
    s.add_argument("--metrics-port", type=int, help="Prometheus endpoint port (default 9308, 0 = off)")
    s.add_argument("--cell", choices=["gru", "lstm"], help="recurrent cell (default gru)")


def settings_from_args(args: argparse.Namespace) -> Any:
    from streamwatch.config import load_settings

    overrides: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": args.bootstrap_servers,
            "client": args.kafka_client,
            "session_timeout_ms": args.session_timeout_ms,
        },
        "topics": {"state": args.state_topic},
        "service": {
            "group_id": args.group_id,
            "state_store": args.state_store,
            "checkpoint_dir": args.checkpoint_dir,
            "checkpoint_every_batches": args.checkpoint_every_batches,
            "checkpoint_every_s": args.checkpoint_every_s,
            "max_poll_records": args.max_poll_records,
            "emit_scores": args.emit_scores,
            "watch_streams": tuple(args.watch_stream) if args.watch_stream else None,
            "fresh_start": args.fresh_start,
            "metrics_host": args.metrics_host,
            "metrics_port": args.metrics_port,
        },
        "model": {"cell": args.cell},
    }
    return load_settings(getattr(args, "config", None), overrides)


def build_detector(settings: Any) -> Any:
    """The production detector: one online forecaster per kind behind thresholds + alerts."""
    from streamwatch.detect.detector import StreamDetector
    from streamwatch.detect.forecast_scorer import ForecastScorer

    model = settings.model
    return StreamDetector(lambda kind: ForecastScorer(kind, model, name=model.cell),
                          settings.detector)


def open_kafka(settings: Any) -> Any:
    """The transport to the cluster ``settings.kafka`` names (client, timeouts, client config)."""
    from streamwatch.transport import open_transport

    k = settings.kafka
    return open_transport(k.bootstrap_servers, k.client, session_timeout_ms=k.session_timeout_ms,
                          client_config=k.client_config)


def build_service(settings: Any, transport: Any, *, instance: str | None = None) -> Any:
    """A ``DetectorService`` wired from settings (topics created if missing)."""
    from streamwatch.errors import CheckpointError, ConfigError
    from streamwatch.metrics import ServiceMetrics
    from streamwatch.pipeline import DetectorService, ServiceOptions
    from streamwatch.state_store import FileStateStore, KafkaStateStore, StateStore

    topics, svc = settings.topics, settings.service
    options = ServiceOptions(
        readings_topic=topics.readings, scores_topic=topics.scores, alerts_topic=topics.alerts,
        deadletter_topic=topics.deadletter, health_topic=topics.health, group_id=svc.group_id,
        max_poll_records=svc.max_poll_records, poll_timeout_s=svc.poll_timeout_s,
        emit_scores=svc.emit_scores, watch_streams=tuple(svc.watch_streams),
        checkpoint_every_batches=svc.checkpoint_every_batches,
        flush_every_batches=svc.flush_every_batches,
        checkpoint_every_s=svc.checkpoint_every_s, checkpoint_jitter=svc.checkpoint_jitter,
        health_every_s=svc.health_every_s,
        max_future_s=svc.max_future_s, payload_cap=svc.payload_cap, fresh_start=svc.fresh_start,
        buffered_per_partition=svc.buffered_per_partition, flush_timeout_s=svc.flush_timeout_s,
    )
    if instance is not None:
        options = ServiceOptions(**{**options.__dict__, "instance": instance})
    store: StateStore
    if svc.state_store == "kafka":
        store = KafkaStateStore(transport, topics.state, options.instance,
                                chunk_bytes=svc.state_chunk_bytes,
                                forget_after_s=svc.state_forget_after_s,
                                write_bytes_per_s=svc.state_write_bytes_per_s,
                                flush_timeout_s=svc.flush_timeout_s)
    else:
        store = FileStateStore(svc.checkpoint_dir, options.instance)
        try:  # now, not at the first checkpoint after a whole run's scoring
            store.check_directory()
        except CheckpointError as exc:
            raise ConfigError(f"{exc}: pass --checkpoint-dir DIR (or set "
                              "STREAMWATCH_SERVICE__CHECKPOINT_DIR) naming a writable "
                              "directory, or use --state-store kafka") from None
    transport.create_topics({
        topics.readings: topics.partitions, topics.scores: topics.partitions,
        topics.alerts: topics.partitions, topics.deadletter: 1, topics.health: 1,
    })  # the state topic: by its store (KafkaStateStore.ensure_topic), compacted
    metrics = ServiceMetrics()
    if svc.metrics_port:
        metrics.serve(svc.metrics_port, svc.metrics_host)
    return DetectorService(transport, lambda: build_detector(settings), store, options, metrics)


#: Seconds between attempts to reach the broker at start-up: doubling from the first to the
#: second (each attempt itself waits several seconds for an answer).
CONNECT_BACKOFF_S = (1.0, 30.0)


def _connect(settings: Any, deadline: float | None) -> Any:
    """``open_kafka``, retried while no broker answers: a service started before its broker
    (a host's boot, a cluster restart) waits for it, saying so, rather than exiting. It
    gives up, with the error, only at ``deadline`` (``--timeout``); Ctrl-C stops it."""
    from streamwatch.errors import BrokerUnavailableError

    backoff = CONNECT_BACKOFF_S[0]
    while True:
        try:
            return open_kafka(settings)
        except BrokerUnavailableError as exc:
            if deadline is not None and time.monotonic() + backoff >= deadline:
                raise
            log.warning("no broker answers yet; retrying", extra={"error": str(exc),
                                                                  "retry_in_s": backoff})
            time.sleep(backoff)
            backoff = min(backoff * 2, CONNECT_BACKOFF_S[1])


def run(args: argparse.Namespace) -> int:
    import torch

    from streamwatch.config import masked
    from streamwatch.errors import ConfigError

    settings = settings_from_args(args)
    torch.set_num_threads(settings.service.torch_threads)
    if not settings.kafka.bootstrap_servers:
        raise ConfigError("no Kafka cluster given: pass --bootstrap-servers HOST:PORT, set "
                          "STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS, or run `streamwatch demo`")
    log.info("effective config", extra={"config": masked(settings)})
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    transport = _connect(settings, deadline)
    try:
        service = build_service(settings, transport)
        service.install_signal_handlers()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        stats = service.run(timeout=left, count=args.count)
    finally:
        transport.close()
    log.info("detector finished", extra={"readings": stats.readings,
                                         "dead_letters": stats.dead_letters,
                                         "alerts": stats.alerts,
                                         "final_checkpoint": stats.final_checkpoint})
    # 1: stopped without its final checkpoint (the broker gone); the next start replays
    return 0 if stats.final_checkpoint else 1
