"""``streamwatch dashboard``: the live Dash dashboard over Kafka.

Consumes ``streamwatch.scores``, ``streamwatch.alerts``, ``streamwatch.health`` and
``streamwatch.deadletter`` with a consumer group of its own into a bounded in-memory
store and serves http://127.0.0.1:8050 (``--host 0.0.0.0`` to expose it).
Heavy imports (dash, numpy) happen inside ``run_dashboard``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from streamwatch.argtypes import whole
from streamwatch.errors import ConfigError

log = logging.getLogger(__name__)

ENV_BOOTSTRAP = "STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="live dashboard of scores, alerts and model health",
        description=(
            "Live dashboard: consumes the detector's scores, alerts, health and dead letters "
            "(a consumer group of its own) into a bounded in-memory store and serves it on "
            "http://HOST:PORT (127.0.0.1:8050 by default)."
        ),
    )
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML/JSON settings (kafka.*, topics.*), as for streamwatch detect")
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                   help=f"Kafka bootstrap servers (default: ${ENV_BOOTSTRAP} or the config)")
    p.add_argument("--kafka-client", choices=["kafka-python", "confluent"],
                   help="Kafka client library (default: kafka-python)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=whole(0), default=8050, help="HTTP port (default: 8050)")
    p.add_argument("--group-id", default=None,
                   help="consumer group (default: a fresh streamwatch-dashboard-<id>)")
    p.add_argument("--backfill", type=whole(0), default=200_000,
                   help="records per partition read from before the end at start-up (default: 200000)")
    p.add_argument("--max-streams", type=whole(0), default=5_000,
                   help="streams the store holds, about 170 KiB each for ICU vitals (default: 5000)")
    p.add_argument("--recent-points", type=whole(0), default=900,
                   help="full-rate points kept per stream (default: 900 = 15 min at 1 Hz)")
    p.add_argument("--stale-after", type=float, default=30.0, metavar="SECONDS",
                   help="a stream without data for longer is shown as stale (default: 30)")
    p.add_argument("--interval-ms", type=whole(0), default=1000,
                   help="browser refresh period (default: 1000)")
    p.set_defaults(func=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    """Open the transport, start the feed thread, serve until interrupted."""
    from dashboards.app import create_app, serve
    from dashboards.buffers import BufferConfig
    from dashboards.callbacks import ViewConfig
    from dashboards.feed import Feed, FeedTopics
    from dashboards.store import DashboardStore
    from streamwatch.config import load_settings, masked
    from streamwatch.transport import open_transport

    flags = {"bootstrap_servers": args.bootstrap_servers, "client": args.kafka_client}
    settings = load_settings(args.config, {"kafka": {k: v for k, v in flags.items() if v}})
    kafka, topics = settings.kafka, settings.topics
    if not kafka.bootstrap_servers:
        raise ConfigError(
            "no Kafka broker given: pass --bootstrap-servers HOST:PORT (or set "
            f"{ENV_BOOTSTRAP}); `streamwatch demo` runs everything locally without one"
        )
    effective = masked(settings)
    log.info("effective config", extra={"kafka": effective["kafka"],
                                        "topics": effective["topics"]})
    store = DashboardStore(BufferConfig(recent_points=args.recent_points),
                           max_streams=args.max_streams)
    config = ViewConfig(interval_ms=args.interval_ms, stale_after_s=args.stale_after)
    transport = open_transport(kafka.bootstrap_servers, kafka.client,
                               session_timeout_ms=kafka.session_timeout_ms,
                               client_config=kafka.client_config)
    feed = Feed(transport, store, args.group_id, backfill=args.backfill,
                topics=FeedTopics.from_settings(topics))
    app = create_app(store, config=config, feed=feed)
    log.info("dashboard starting bootstrap_servers=%s client=%s group_id=%s host=%s port=%d "
             "max_streams=%d recent_points=%d", kafka.bootstrap_servers, kafka.client,
             feed.group_id, args.host, args.port, args.max_streams, args.recent_points)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("dashboard exposed on host=%s: anyone who can reach it sees the data "
                    "(no authentication)", args.host)
    feed.start()
    try:
        serve(app, args.host, args.port)
    finally:
        feed.stop()
        transport.close()
    return 0
