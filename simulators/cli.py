"""``streamwatch simulate icu|sensors`` and ``streamwatch replay FILE.csv``.

With ``--bootstrap-servers`` (or ``STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS`` when no
``--output`` is given) records go to Kafka: Readings to ``streamwatch.readings`` (key =
stream_id), episode labels to ``streamwatch.truth``. Otherwise JSON lines go to
``--output`` (default stdout) and labels to ``--truth-output`` (default ``FILE.truth.jsonl``
next to an output file; none for stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

from streamwatch.argtypes import finite
from streamwatch.errors import ConfigError
from streamwatch.outputs import check_writable

log = logging.getLogger(__name__)

ENV_BOOTSTRAP = "STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|min|s|m|h|d)")
_START_AHEAD_S = 86_400.0
"""``--start`` may lie at most this far in the future (clock skew; later is dead-lettered)."""


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``10m``, ``1h``, ``2d``, ``1h30m`` or a plain number of seconds.

    >>> parse_duration("1h"), parse_duration("90s"), parse_duration("1h30m"), parse_duration("2.5")
    (3600.0, 90.0, 5400.0, 2.5)
    """
    seconds = _seconds(text)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(f"duration must be >= 0, got {text!r}")
    return seconds


def _run_duration(text: str) -> float:
    """``simulate --duration``: a duration within the simulators' range, (0 s, 366 d]."""
    from simulators.base import check_duration

    seconds = _seconds(text)
    try:
        check_duration(seconds)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return seconds


def _seconds(text: str) -> float:
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(
                f"invalid duration {text!r}: use e.g. 30s, 10m, 1h, 2d or 1h30m") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    return seconds


def parse_start(text: str) -> float:
    """Epoch seconds from ISO 8601 (``2026-01-01T00:00:00Z``; naive = UTC) or a number.

    From 1970-01-01 to one day from now: the detector dead-letters readings stamped
    further in the future (``service.max_future_s``) as ``future_timestamp``.

    >>> parse_start("2026-01-01T00:00:00Z"), parse_start("1767225600")
    (1767225600.0, 1767225600.0)
    """
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid start {text!r}: use ISO 8601 like 2026-01-01T00:00:00Z or epoch seconds"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    latest = time.time() + _START_AHEAD_S
    if not (math.isfinite(value) and 0 <= value <= latest):
        until = datetime.fromtimestamp(latest, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise argparse.ArgumentTypeError(
            f"start must be between 1970-01-01T00:00:00Z and one day from now ({until}), "
            f"got {text!r}: use e.g. 2026-01-01T00:00:00Z or epoch seconds in that range")
    return value


def _add_output(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("output (Kafka, or JSON lines when no broker is given)")
    out.add_argument("--bootstrap-servers", metavar="HOST:PORT",
                     help=f"Kafka cluster; default ${ENV_BOOTSTRAP} unless --output is given")
    out.add_argument("--kafka-client", choices=["kafka-python", "confluent"],
                     default="kafka-python", help="Kafka client library (default kafka-python)")
    out.add_argument("--topic", default="streamwatch.readings",
                     help="topic for Readings (default streamwatch.readings)")
    out.add_argument("--partitions", type=int, default=None,
                     help="partitions when the readings topic must be created (default: the "
                          "topics.partitions default of 'streamwatch detect', so both agree)")
    out.add_argument("--output", metavar="FILE|-",
                     help="write JSON lines here instead of Kafka ('-' = stdout, the default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: Any) -> None:
    """Add the ``simulate`` and ``replay`` commands to the ``streamwatch`` parser."""
    sim = subparsers.add_parser(
        "simulate", help="stream simulated ICU vitals or machine sensors with labelled episodes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sim.add_argument("source", choices=["icu", "sensors"], help="what to simulate")
    sim.add_argument("--patients", type=int, help="ICU beds (icu; default 10)")
    sim.add_argument("--machines", type=int, help="machines (sensors; default 5)")
    sim.add_argument("--duration", type=_run_duration, default=3600.0,
                     help="simulated time: 30s, 10m, 1h, 2d ... (default 1h)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--speedup", type=finite(0), default=1.0,
                     help="simulated seconds per wall second: 1 = wall speed (default), "
                          "60 = a minute per second, 0 = as fast as possible")
    sim.add_argument("--rate-hz", type=float, default=1.0,
                     help="readings per second per stream (default 1)")
    sim.add_argument("--start", type=parse_start, default=None,
                     help="simulated time of the first reading, at most one day from now "
                          "(default 2026-01-01T00:00:00Z)")
    sim.add_argument("--no-episodes", action="store_true",
                     help="inject nothing: no clinical episodes, artefacts or faults")
    sim.add_argument("--no-artefacts", action="store_true", help="icu: clinical episodes only")
    sim.add_argument("--dropouts", action="store_true",
                     help="icu: also drop samples (readings then number fewer than "
                          "patients x duration x rate)")
    sim.add_argument("--episodes-per-day", type=finite(0),
                     help="clinical episodes (icu, default 2) or faults (sensors, default 3) "
                          "per stream-day")
    sim.add_argument("--artefacts-per-day", type=finite(0),
                     help="icu artefacts per patient-day (default 4)")
    sim.add_argument("--warmup", type=parse_duration, default=7200.0,
                     help="no episode starts earlier (default 2h; a run of 1h has none)")
    sim.add_argument("--truth-topic", default="streamwatch.truth",
                     help="topic for episode labels (default streamwatch.truth)")
    sim.add_argument("--truth-output", metavar="FILE",
                     help="also/instead write labels here (default FILE.truth.jsonl for --output FILE)")
    _add_output(sim)
    sim.set_defaults(func=run_simulate)

    rep = subparsers.add_parser(
        "replay", help="replay a CSV file (timestamp,value[,value...]) as one stream",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("csv", type=Path, help="CSV file, e.g. a NAB data file")
    rep.add_argument("--stream-id", help="stream id (default replay/<file stem>)")
    rep.add_argument("--kind", help="stream kind (default univariate for one value column, "
                                    "csv_<stem> registered here for several)")
    pace = rep.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=finite(0), default=0.0,
                      help="readings per wall second (default 0 = as fast as possible)")
    pace.add_argument("--speedup", type=finite(0),
                      help="follow the file's timestamps, this many times faster than real time")
    rep.add_argument("--skip-bad-rows", action="store_true",
                     help="skip rows with a bad timestamp or field count (default: error)")
    _add_output(rep)
    rep.set_defaults(func=run_replay)


# -- shared output handling --------------------------------------------------------------
def _bootstrap(args: argparse.Namespace) -> str | None:
    if args.bootstrap_servers and args.output is not None:
        raise ConfigError("give either --bootstrap-servers or --output, not both")
    if args.bootstrap_servers:
        return str(args.bootstrap_servers)
    if args.output is None:
        return os.environ.get(ENV_BOOTSTRAP) or None
    return None


@contextlib.contextmanager
def _files(outputs: list[tuple[str, str | None]]) -> Iterator[list[BinaryIO | None]]:
    """Open every output (``(flag, path)``; ``None`` = none, ``-`` = stdout) or none.

    Files a failed open of a later one leaves behind are removed again. On exit every
    file is closed; an ``OSError`` then (disk full) is a ``ConfigError`` naming the file,
    unless an error is already on its way.
    """
    from simulators.sink import write_error

    opened: list[tuple[str, BinaryIO]] = []
    handles: list[BinaryIO | None] = []
    created: list[str] = []
    try:
        for flag, path in outputs:
            if path is None or path == "-":
                handles.append(None if path is None else sys.stdout.buffer)
                continue
            existed = os.path.lexists(path)
            try:
                handle = cast(BinaryIO, open(path, "wb"))  # noqa: SIM115 - closed below
            except OSError as exc:
                raise ConfigError(f"cannot write {flag} {path}: {exc.strerror}; "
                                  "choose another path") from None
            opened.append((path, handle))
            handles.append(handle)
            if not existed:
                created.append(path)
    except BaseException:
        for _path, handle in opened:
            with contextlib.suppress(OSError):
                handle.close()
        for path in created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    try:
        yield handles
    except BaseException:
        for _path, handle in opened:
            with contextlib.suppress(OSError):  # the error on its way says more
                handle.close()
        raise
    failure: Exception | None = None
    for path, handle in opened:
        try:
            handle.close()
        except BrokenPipeError as exc:
            failure = failure or exc
        except OSError as exc:
            failure = failure or write_error(path, exc)
    if failure is not None:
        raise failure


@contextlib.contextmanager
def _sink(args: argparse.Namespace, truth_path: str | None, topics: dict[str, int]) -> Iterator[Any]:
    """A sink for ``args``' output; ``topics`` besides the readings topic (``args.topic``)."""
    from simulators.sink import FileSink, KafkaSink

    servers = _bootstrap(args)
    paths = [("--truth-output", truth_path)]
    if servers is None:
        paths.insert(0, ("--output", args.output))
    for flag, path in paths:  # all of them before anything is opened, created or sent
        if path is not None and path != "-":
            check_writable(flag, path, make_parents=False)
    if servers is not None:
        from streamwatch.transport import open_transport

        topics = {args.topic: _readings_partitions(args), **topics}
        transport = open_transport(servers, args.kafka_client)
        try:
            transport.create_topics(topics)
            producer = transport.producer()
            try:
                with _files(paths) as (truth,):
                    log.info("publishing", extra={"bootstrap_servers": servers,
                                                  "topics": ",".join(topics)})
                    yield KafkaSink(producer, args.topic, getattr(args, "truth_topic", ""), truth,
                                    truth_name=str(truth_path))
            finally:
                producer.close()
        finally:
            transport.close()
        return
    with _files(paths) as (out, truth):
        yield FileSink(out or sys.stdout.buffer, truth,
                       out_name=args.output if args.output not in (None, "-") else "stdout",
                       truth_name=str(truth_path))


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _check_partitions(args: argparse.Namespace) -> None:
    if args.partitions is not None and not 1 <= args.partitions <= 10_000:
        raise ConfigError(f"--partitions must be in [1, 10000], got {args.partitions}")


def _readings_partitions(args: argparse.Namespace) -> int:
    """``--partitions``, else the count ``streamwatch detect`` creates the topic with."""
    if args.partitions is not None:
        return int(args.partitions)
    from streamwatch.config import TopicSettings

    return TopicSettings().partitions


# -- commands ---------------------------------------------------------------------------
def _simulator(args: argparse.Namespace) -> Any:
    from simulators.base import DEFAULT_START

    start = DEFAULT_START if args.start is None else args.start
    enabled = not args.no_episodes
    if args.source == "icu":
        from simulators.icu import IcuSimulator

        if args.machines is not None:
            raise ConfigError("--machines is for 'simulate sensors'; use --patients for icu")
        options: dict[str, Any] = {"dropouts": args.dropouts, "warmup_s": args.warmup}
        if args.episodes_per_day is not None:
            options["clinical_per_day"] = args.episodes_per_day
        if args.artefacts_per_day is not None:
            options["artefacts_per_day"] = args.artefacts_per_day
        patients = 10 if args.patients is None else args.patients
        return IcuSimulator(patients, args.seed, start, args.rate_hz, episodes=enabled,
                            artefacts=enabled and not args.no_artefacts, **options)
    from simulators.sensors import SensorSimulator

    if args.patients is not None:
        raise ConfigError("--patients is for 'simulate icu'; use --machines for sensors")
    if args.dropouts or args.artefacts_per_day is not None or args.no_artefacts:
        raise ConfigError("--dropouts, --no-artefacts and --artefacts-per-day are for "
                          "'simulate icu'; machines have faults (--episodes-per-day)")
    options = {"warmup_s": args.warmup}
    if args.episodes_per_day is not None:
        options["faults_per_day"] = args.episodes_per_day
    machines = 5 if args.machines is None else args.machines
    return SensorSimulator(machines, args.seed, start, args.rate_hz, faults=enabled, **options)


def _closed_output(command: str) -> int:
    """The reader of stdout went away (e.g. ``| head``): stop quietly, like other tools."""
    with contextlib.suppress(OSError):  # stdout is gone: point it at /dev/null for exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    log.info("output closed by its reader; stopped", extra={"command": command})
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    try:
        return _simulate(args)
    except BrokenPipeError:
        return _closed_output("simulate")


def run_replay(args: argparse.Namespace) -> int:
    try:
        return _replay(args)
    except BrokenPipeError:
        return _closed_output("replay")


def _simulate(args: argparse.Namespace) -> int:
    from simulators.base import n_steps
    from simulators.runner import run

    _check_partitions(args)
    sim = _simulator(args)
    duration = args.duration
    episodes = sim.episodes(duration)
    steps = sim.readings(duration)
    total = len(sim.stream_ids) * n_steps(duration, sim.rate_hz)
    total -= sum(round((e.end_ts - e.onset_ts) * sim.rate_hz) for e in episodes if e.type == "dropout")
    truth_path = args.truth_output
    if truth_path is None and args.output not in (None, "-") and _bootstrap(args) is None:
        truth_path = args.output + ".truth.jsonl"
    log.info("simulate", extra={"source": args.source, "streams": len(sim.stream_ids),
                                "duration_s": duration, "seed": args.seed,
                                "speedup": args.speedup, "episodes": len(episodes)})
    rate = sim.rate_hz
    with _sink(args, truth_path, {args.truth_topic: 1}) as sink:
        stats = run(steps, sink, step_offsets=lambda k, _step: k / rate, episodes=episodes,
                    start_ts=sim.start_ts, speedup=args.speedup, total=total,
                    progress=_progress(args), desc=f"simulate {args.source}")
    if stats.readings != total:  # pragma: no cover - would be a simulator bug
        log.warning("readings differ from the plan", extra={"planned": total, "sent": stats.readings})
    return 0


def _replay(args: argparse.Namespace) -> int:
    from simulators.replay import load_csv
    from simulators.runner import run

    _check_partitions(args)
    loaded = load_csv(args.csv, args.stream_id, args.kind, skip_bad_rows=args.skip_bad_rows)
    for line in loaded.report.problems():
        print(f"streamwatch replay: warning: {args.csv}: {line}", file=sys.stderr)
    readings = loaded.readings
    if not readings:
        raise ConfigError(f"{args.csv} has no rows to replay")
    first_ts = readings[0].ts
    if args.speedup is not None and args.speedup > 0:
        speedup = args.speedup

        def offsets(k: int, step: list[Any]) -> float:
            return float(step[0].ts - first_ts)
    else:
        speedup = 1.0 if args.rate > 0 else 0.0
        per = 1.0 / args.rate if args.rate > 0 else 0.0

        def offsets(k: int, step: list[Any]) -> float:
            return k * per

    with _sink(args, None, {}) as sink:
        stats = run(([r] for r in readings), sink, step_offsets=offsets, speedup=speedup,
                    total=len(readings), progress=_progress(args), desc="replay")
    log.info("replay done", extra={"stream_id": readings[0].stream_id, "kind": loaded.kind.name,
                                   "readings": stats.readings})
    return 0
