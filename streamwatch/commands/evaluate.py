"""``streamwatch evaluate icu|sensors|nab``: detectors side by side on labelled data.

- ``icu`` / ``sensors``: a seeded simulator scenario streamed through each detector
  exactly as ``streamwatch detect`` processes it; event-level metrics per detector.
- ``nab``: a NAB-format corpus (``--data-dir``, ``--labels``), one fresh detector per
  file; results files in NAB's layout under ``--results-dir`` and the NAB score.

Prints the side-by-side table; ``--json PATH`` writes every table, ``--report PATH.html``
a plotly report of a few streams.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamwatch.outputs import check_writable

log = logging.getLogger(__name__)

SCENARIO_DETECTORS = "gru,lstm,hst,zscore"
NAB_DETECTORS = "gru,lstm,hst,zscore,nab-gaussian"
EPISODE_HOLD_H = 12.0
"""Default of ``evaluate nab --episode-hold-h`` (``streamwatch.evaluate.squash.episodes``)."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate detectors on a simulator scenario or a NAB corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", choices=["icu", "sensors", "nab"], help="what to evaluate on")
    p.add_argument("--detectors", default=None,
                   help=f"comma-separated detectors (default: {SCENARIO_DETECTORS} for "
                        f"scenarios, {NAB_DETECTORS} for nab)")
    p.add_argument("--seed", type=int, default=1, help="scenario and model seed (default 1)")
    s = p.add_argument_group("scenario (icu, sensors)")
    s.add_argument("--patients", "--machines", "--streams", dest="streams", type=int, default=20,
                   help="number of beds or machines (default 20)")
    s.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    s.add_argument("--batch-seconds", type=int, default=1,
                   help="simulated seconds of all streams per micro-batch (default 1)")
    s.add_argument("--grace-min", type=float, default=5.0,
                   help="an alert up to this many minutes after an episode ends still "
                        "detects it (default 5)")
    s.add_argument("--slow-types", default="sepsis,slow_drift",
                   help="episode types left out of the delay statistics (default sepsis,slow_drift)")
    n = p.add_argument_group("nab")
    n.add_argument("--data-dir", default=None,
                   help="NAB-format corpus: <category>/<file>.csv files, or a directory holding "
                        "data/ and combined_windows.json (default: $STREAMWATCH_NAB_DIR, else "
                        "../shared/data/nab beside the checkout)")
    n.add_argument("--labels", "--windows", dest="labels", default=None,
                   help="NAB windows file (combined_windows.json; default: found beside the data)")
    n.add_argument("--files", default=None,
                   help="comma-separated file keys to score (e.g. realKnownCause/nyc_taxi.csv); "
                        "the NAB score is then normalised within those files")
    n.add_argument("--results-dir", default="nab-results",
                   help="where to write <detector>/<category>/<detector>_<file>.csv (default nab-results)")
    n.add_argument("--batch-rows", type=int, default=1, help="rows per micro-batch (default 1)")
    n.add_argument("--squash", choices=["recent", "likelihood", "ratio"], default="recent",
                   help="causal map of raw scores to [0, 1] (default recent; see "
                        "streamwatch.evaluate.squash)")
    n.add_argument("--episode-hold-h", type=float, default=EPISODE_HOLD_H,
                   help="a row keeps its score only if it beats every score of the preceding "
                        f"H hours, as an alert opens once (default {EPISODE_HOLD_H:g}; 0 = off)")
    o = p.add_argument_group("output")
    o.add_argument("--json", dest="json_path", default=None, help="write every table as JSON here")
    o.add_argument("--report", default=None, help="write a plotly HTML report here")
    o.add_argument("--report-streams", type=int, default=3,
                   help="streams (or NAB files) per detector in the report (default 3)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _detectors(args: argparse.Namespace, default: str) -> list[str]:
    from streamwatch.errors import ConfigError

    names = [d.strip() for d in (args.detectors or default).split(",") if d.strip()]
    if not names:
        raise ConfigError("--detectors is empty; name at least one detector")
    if len(set(names)) != len(names):
        raise ConfigError(f"--detectors lists a detector twice: {','.join(names)}")
    return names


def _check_outputs(args: argparse.Namespace) -> None:
    for flag, path in (("--json", args.json_path), ("--report", args.report)):
        if path:
            check_writable(flag, path)


def _save(failures: list[str], what: str, flag: str, path: str, write: Callable[[], object]) -> None:
    """Run ``write``; an ``OSError`` (disk full, ...) is noted so the other outputs still go."""
    try:
        write()
    except OSError as exc:
        failures.append(f"cannot write {flag} {path}: {exc.strerror or exc}")
        return
    print(f"{what} written to {path}")


def _saved(failures: list[str]) -> None:
    from streamwatch.errors import ConfigError

    if failures:
        raise ConfigError("; ".join(failures) + " (the tables printed above are the results; "
                          "free space or choose another path and run again)")


def _write_json(path: str, payload: dict[str, Any]) -> None:
    from streamwatch.evaluate.tables import clean

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(payload), indent=2, allow_nan=False) + "\n")


def _pick_streams(episodes: list[Any], stream_ids: list[str], n: int) -> list[str]:
    """The ``n`` streams with the most distinct true-episode types (ties: most episodes)."""
    types: dict[str, set[str]] = {sid: set() for sid in stream_ids}
    counts = dict.fromkeys(stream_ids, 0)
    for ep in episodes:
        if ep.category != "artefact" and ep.stream_id in types:
            types[ep.stream_id].add(ep.type)
            counts[ep.stream_id] += 1
    ranked = sorted(stream_ids, key=lambda s: (-len(types[s]), -counts[s], s))
    return ranked[:n]


def _evaluate_scenario(args: argparse.Namespace, names: list[str]) -> int:
    from simulators.icu import IcuSimulator
    from simulators.sensors import SensorSimulator
    from streamwatch.errors import ConfigError
    from streamwatch.evaluate.detectors import scenario_factories
    from streamwatch.evaluate.events import EventConfig, alert_spans
    from streamwatch.evaluate.runner import run_scenario
    from streamwatch.evaluate.tables import by_type_table, event_table, fmt_table, text_rows

    if not 0 < args.hours <= 24 * 30:
        raise ConfigError(f"--hours must be in (0, 720], got {args.hours}")
    if args.batch_seconds < 1:
        raise ConfigError(f"--batch-seconds must be >= 1, got {args.batch_seconds}")
    _check_outputs(args)
    sim: Any = (IcuSimulator(patients=args.streams, seed=args.seed) if args.target == "icu"
                else SensorSimulator(machines=args.streams, seed=args.seed))
    duration_s = args.hours * 3600.0
    factories = scenario_factories(names, sim.kind, args.seed)
    keep = _pick_streams(sim.episodes(duration_s), sim.stream_ids, args.report_streams) if args.report else []
    config = EventConfig(grace_s=args.grace_min * 60.0,
                         slow_types=frozenset(t.strip() for t in args.slow_types.split(",") if t.strip()))
    description = {"target": args.target, "streams": args.streams, "hours": args.hours,
                   "seed": args.seed, "batch_seconds": args.batch_seconds,
                   "grace_min": args.grace_min, "slow_types": sorted(config.slow_types)}
    result = run_scenario(sim, duration_s, factories, batch_steps=args.batch_seconds,
                          keep_streams=keep, event_config=config, progress=not args.no_progress,
                          description=description)
    tables = {"summary": event_table(result.metrics), "by episode type": by_type_table(result.metrics)}
    print(f"{args.target} scenario: {args.streams} streams x {args.hours:g} h, seed {args.seed}")
    for title, rows in tables.items():
        print(f"\n{title}\n{fmt_table(text_rows(rows))}")
    failures: list[str] = []
    if args.json_path:
        _save(failures, "tables", "--json", args.json_path, lambda: _write_json(args.json_path, {
            "scenario": description, "tables": tables,
            "detectors": {d: m.to_dict() for d, m in result.metrics.items()},
            "seconds": {d: r.seconds for d, r in result.runs.items()},
        }))
    if args.report:
        from streamwatch.evaluate.report import stream_figure, write_report

        figures = []
        for d, run in result.runs.items():
            spans = alert_spans(run.alerts, result.run_end_ts)
            for sid in keep:
                if sid in run.traces:
                    figures.append(stream_figure(
                        run.traces[sid], f"{d}: {sid}", [s for s in spans if s.stream_id == sid],
                        [e for e in result.episodes if e.stream_id == sid]))
        title = f"streamwatch evaluate {args.target}"
        _save(failures, "report", "--report", args.report,
              lambda: write_report(args.report, title, tables, figures))
    _saved(failures)
    return 0


def _evaluate_nab(args: argparse.Namespace, names: list[str]) -> int:
    from streamwatch.errors import ConfigError
    from streamwatch.evaluate.corpus import load_corpus
    from streamwatch.evaluate.detectors import nab_factories
    from streamwatch.evaluate.runner import run_nab
    from streamwatch.evaluate.tables import fmt_table, nab_file_table, nab_table

    if args.batch_rows < 1:
        raise ConfigError(f"--batch-rows must be >= 1, got {args.batch_rows}")
    if not args.episode_hold_h >= 0:
        raise ConfigError(f"--episode-hold-h must be >= 0 hours, got {args.episode_hold_h}")
    _check_outputs(args)
    check_writable("--results-dir", args.results_dir, directory=True)
    only = [k.strip() for k in args.files.split(",") if k.strip()] if args.files else None
    corpus = load_corpus(args.data_dir, args.labels, only)
    factories = nab_factories(names, args.seed)
    keep = [f.key for f in corpus.files if f.windows][: args.report_streams] if args.report else []
    try:
        result = run_nab(corpus, factories, results_dir=args.results_dir, squash_method=args.squash,
                         batch_rows=args.batch_rows, keep_files=keep, progress=not args.no_progress,
                         hold_s=args.episode_hold_h * 3600.0)
    except OSError as exc:  # writing a results file (disk full, ...)
        raise ConfigError(f"cannot write {exc.filename or args.results_dir}: {exc.strerror or exc}; "
                          "free space or choose another --results-dir") from None
    tables = {"NAB score": nab_table(result.profiles), "per file (standard)": nab_file_table(result.profiles)}
    print(f"NAB: {len(corpus.files)} files, {corpus.n_windows} windows from {corpus.data_dir}; "
          f"results in {result.results_dir}")
    print(f"\n{fmt_table(tables['NAB score'])}")
    failures: list[str] = []
    if args.json_path:
        _save(failures, "tables", "--json", args.json_path, lambda: _write_json(args.json_path, {
            "corpus": {"data_dir": str(corpus.data_dir), "labels": str(corpus.windows_path),
                       "files": len(corpus.files), "windows": corpus.n_windows},
            "squash": args.squash, "episode_hold_h": args.episode_hold_h,
            "batch_rows": args.batch_rows, "tables": tables,
            "seconds": result.seconds,
        }))
    if args.report:
        from streamwatch.evaluate.events import alert_spans
        from streamwatch.evaluate.report import stream_figure, write_report

        by_key = {f.key: f for f in corpus.files}
        figures = []
        for d, traces in result.traces.items():
            for key, trace in traces.items():
                f = by_key[key]
                ts = f.timestamps.astype("datetime64[ns]").astype("int64") / 1e9
                spans = [s for s in alert_spans(result.alerts[d], float(ts[-1]))
                         if s.stream_id == trace.stream_id]
                figures.append(stream_figure(trace, f"{d}: {key}", spans,
                                             windows=[(ts[a], ts[b]) for a, b in f.windows]))
        _save(failures, "report", "--report", args.report,
              lambda: write_report(args.report, "streamwatch evaluate nab", tables, figures))
    _saved(failures)
    return 0


def _one_thread(names: list[str]) -> list[str]:
    """The forecasters run best on one torch thread here (STACK.md); set it before use."""
    if {"gru", "lstm"} & set(names):
        import torch

        torch.set_num_threads(1)
    return names


def run(args: argparse.Namespace) -> int:
    from streamwatch.errors import ConfigError

    if logging.getLogger().level > logging.DEBUG:
        # one log line per alert open/close would drown the tables; the JSON has them all
        logging.getLogger("streamwatch.alerts").setLevel(logging.WARNING)

    if args.report_streams < 0:
        raise ConfigError(f"--report-streams must be >= 0, got {args.report_streams}")
    if args.target == "nab":
        return _evaluate_nab(args, _one_thread(_detectors(args, NAB_DETECTORS)))
    return _evaluate_scenario(args, _one_thread(_detectors(args, SCENARIO_DETECTORS)))
