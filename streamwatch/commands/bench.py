"""``streamwatch bench kafka|dashboard|simulate``: the detector's speed through Kafka, the
dashboard's callback time and memory, the simulators' speed to a file.

``kafka``: sustained readings/s and produce -> Score latency per client. ``dashboard``:
callback time per update and memory with N streams at 1 Hz (:mod:`streamwatch.bench.dashboard`).

Speed targets are checked here, by a benchmark on a quiet machine, never by timed tests.
See ``docs/bench.md`` and :mod:`streamwatch.bench`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: the detector through Kafka, the dashboard's callbacks (JSON output)",
        description="Speed targets are measured here, with the machine and the run side by "
        "side in the JSON, never by timed tests. See docs/bench.md.",
    )
    what = bench.add_subparsers(dest="target", metavar="WHAT", required=True)
    p = what.add_parser(
        "kafka",
        help="the detector service through Kafka (readings/s, latency)",
        description="Throughput (pre-filled topic, readings/s sustained after a warm-up) and "
        "latency (live load at a fraction of that rate, Reading CreateTime -> Score "
        "CreateTime) of the real detector service, for each Kafka client, side by side.",
    )
    p.add_argument("--clients", type=_csv, default=("kafka-python", "confluent"),
                   help="comma-separated: kafka-python,confluent (default both)")
    p.add_argument("--streams", type=int, default=1000, help="ICU beds at 1 Hz (default 1000)")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="measurement window per phase (default 30)")
    p.add_argument("--warmup-s", type=float, default=5.0,
                   help="excluded before each window (default 5)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float,
                      help="latency phase at this many readings/s for every client")
    rate.add_argument("--max", action="store_true",
                      help="latency phase at --latency-rate-fraction x the measured sustained "
                      "rate however high (default: x the measured rate or the client's "
                      "throughput target, whichever is lower)")
    p.add_argument("--latency-rate-fraction", type=float, default=0.5,
                   help="fraction of the measured rate for the latency phase (default 0.5)")
    p.add_argument("--train-every", type=int,
                   help="learned readings per optimiser step (default: the model settings', 256)")
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                   help="Kafka cluster (default: start a Tansu broker for the run)")
    p.add_argument("--partitions", type=int, help="partitions of the bench topics (default 6)")
    p.add_argument("--prefill-rate", type=float,
                   help="pre-fill for this many readings/s over the window (default 1.5 x the "
                   "client's target); raise it if the window ends early (drained_early)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--producer-client", choices=["kafka-python", "confluent"],
                   help="client of the load process (default confluent if installed)")
    p.add_argument("--session-timeout-ms", type=int,
                   help="consumer-group session timeout (default: settings, 6000)")
    p.add_argument("--fetch-max-wait-ms", type=int,
                   help="the detector consumer's fetch wait (default: the client's, 500); Tansu "
                   "answers fetches only when it expires, so lower it (e.g. 50) for latency there")
    p.add_argument("--load-linger-ms", type=int, default=5,
                   help="latency phase: the load producer's linger_ms (default 5, the "
                   "product's); counts in the latency. On Tansu fewer, larger batches cost "
                   "the broker less (docs/bench.md)")
    p.add_argument("--emit-scores", choices=["all", "alerts"], default="all",
                   help="throughput phase: a Score per reading (default) or only around alerts")
    p.add_argument("--latency-emit-scores", choices=["all", "alerts"], default="all",
                   help="latency phase: a Score per reading, each joined to its reading "
                   "(default), or only around alerts (latency of those Scores)")
    p.add_argument("--latency-watch-every", type=int, default=25, metavar="N",
                   help="with --latency-emit-scores alerts, every Nth stream still gets a "
                   "Score per reading (service.watch_streams), each joined to its reading: "
                   "a sample for the percentiles across all partitions (default 25; 0 = none)")
    p.add_argument("--config", type=Path, help="settings file (TOML/JSON): model, detector, service")
    p.add_argument("--detectors", type=int, default=1,
                   help="detector processes in the consumer group (default 1); with more, each "
                   "runs in its own process and the figures are the group's")
    p.add_argument("--state-store", choices=["kafka", "directory"],
                   help="where the detectors checkpoint (default: the settings', kafka)")
    p.add_argument("--relay", action=argparse.BooleanOptionalAction, default=True,
                   help="before the detectors, measure the transport alone on the same pre-fill "
                   "(consume, decode, produce a record per reading, as many processes): the "
                   "ceiling of this broker, client and machine (default on)")
    p.add_argument("--detector-alone", action=argparse.BooleanOptionalAction, default=True,
                   help="before the clients, measure the detector alone with no Kafka (validate "
                   "and process the same readings, one process's share of the streams): with the "
                   "relay, the ceiling of this machine (default on)")
    p.add_argument("--profile", action="store_true",
                   help="sample the detector thread with py-spy during the throughput window "
                   "(pip install -e .[bench]); raw stacks kept next to --json")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="rounds (1-20): the table shows each, the verdict the median round's "
                        "and in how many rounds the targets were met (default 1)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the full result here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    _register_dashboard(what)
    _register_simulate(what)


def _register_simulate(what: Any) -> None:
    p = what.add_parser(
        "simulate",
        help="the simulators' speed to a file (readings/s)",
        description="Runs `streamwatch simulate icu|sensors --speedup 0 --output FILE` in "
        "this process, times each run and counts the readings in the file (see "
        "streamwatch.bench.simulate).",
    )
    p.add_argument("--sources", type=_csv, default=("icu", "sensors"),
                   help="comma-separated: icu,sensors (default both)")
    p.add_argument("--streams", type=int, default=50,
                   help="beds or machines (default 50: the issue's 50 patients x 1 h)")
    p.add_argument("--duration", default="1h", help="simulated time per run (default 1h)")
    p.add_argument("--repeats", type=int, default=3, help="runs per source (default 3)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the full result here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_simulate)


def _write_json(result: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        log.info("bench result written", extra={"path": str(path)})


def run_simulate(args: argparse.Namespace) -> int:
    from streamwatch.bench.simulate import SimulateBenchOptions, run_simulate_bench, table

    opts = SimulateBenchOptions(sources=args.sources, streams=args.streams,
                                duration=args.duration, repeats=args.repeats, seed=args.seed,
                                progress=not args.no_progress)  # fmt: skip
    result = run_simulate_bench(opts)
    _write_json(result, args.json)
    print(table(result))
    return 0


def _register_dashboard(what: Any) -> None:
    p = what.add_parser(
        "dashboard",
        help="the dashboard's callback time per update and memory (N streams at 1 Hz)",
        description="Pre-fills a real dashboard store (full rings), feeds N ICU streams at "
        "1 Hz while calling the real callbacks on every tick as the browser does; reports "
        "time and response size per callback, RSS, and HTTP round trips through the Dash "
        "server.",
    )
    p.add_argument("--streams", type=int, default=1000, help="ICU beds at 1 Hz (default 1000)")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="wall seconds of live feeding and ticks (default 30)")
    p.add_argument("--history-min", type=float, default=15.0,
                   help="minutes of data loaded before the run (default 15: full 1-Hz rings)")
    p.add_argument("--interval-s", type=float, default=1.0,
                   help="browser tick period, as the app's dcc.Interval (default 1)")
    p.add_argument("--http-calls", type=int, default=20,
                   help="POSTs to /_dash-update-component per callback (default 20; 0: none)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the full result here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    from streamwatch.bench.dashboard import DashboardBenchOptions, run_dashboard_bench, table

    opts = DashboardBenchOptions(
        streams=args.streams, seconds=args.seconds, history_min=args.history_min,
        interval_s=args.interval_s, seed=args.seed, http_calls=args.http_calls,
        progress=not args.no_progress,
    )  # fmt: skip
    result = run_dashboard_bench(opts)
    _write_json(result, args.json)
    print(table(result))
    return 0


def run(args: argparse.Namespace) -> int:
    from streamwatch.bench import BenchOptions, run_bench, table
    from streamwatch.bench.report import labelled_runs

    opts = BenchOptions(
        clients=args.clients, streams=args.streams, seconds=args.seconds,
        warmup_s=args.warmup_s, rate=args.rate,
        latency_rate_fraction=args.latency_rate_fraction, latency_rate_cap=not args.max,
        train_every=args.train_every,
        bootstrap_servers=args.bootstrap_servers, partitions=args.partitions,
        prefill_rate=args.prefill_rate, seed=args.seed, producer_client=args.producer_client,
        profile=args.profile, progress=not args.no_progress,
        profile_dir=(args.json.parent if args.json else Path.cwd()) if args.profile else None,
        session_timeout_ms=args.session_timeout_ms, config_file=args.config,
        fetch_max_wait_ms=args.fetch_max_wait_ms, throughput_emit_scores=args.emit_scores,
        latency_emit_scores=args.latency_emit_scores,
        latency_watch_every=args.latency_watch_every,
        detectors=args.detectors, state_store=args.state_store,
        load_linger_ms=args.load_linger_ms, relay=args.relay, detector_alone=args.detector_alone,
        repeat=args.repeat,
    )  # fmt: skip
    result = run_bench(opts)
    _write_json(result, args.json)
    print(table(result))
    every = labelled_runs(result)
    for label, run_, _verdict in every:
        if "error" in run_:
            print(f"{label}: FAILED: {run_['error']}")
    for client, run_ in result["runs"].items():
        profile = (run_.get("throughput") or {}).get("profile")
        if profile:
            print(f"\n{client}: detector thread CPU per reading by stage (us; "
                  f"{profile['samples']} py-spy samples)")  # fmt: skip
            for cat, fig in profile["categories"].items():
                print(f"  {cat:<45} {fig['us_per_reading']:>8.2f}  {fig['share']:>6.1%}")
    return 0 if all("error" not in run_ for _, run_, _ in every) else 1
