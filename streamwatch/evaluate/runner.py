"""Run detectors over a simulator scenario or a NAB corpus through the production path.

Every detector sees exactly what ``streamwatch detect`` would: ``Reading`` records in
micro-batches handed to ``Detector.process`` (test-then-train inside), returning
``Score`` records and alert lifecycle events. Several detectors run side by side over
the same generated readings in one pass.

- Scenario: each micro-batch holds ``batch_steps`` simulated time steps of every stream
  (one step = one reading per stream at the simulator's rate). Alerts are matched to the
  simulator's labelled episodes (``streamwatch.evaluate.events``).
- NAB: each file is one stream of kind ``univariate``, with a fresh detector per file
  (as NAB requires), fed ``batch_rows`` rows per micro-batch. The raw score is squashed
  causally to [0, 1] (``streamwatch.evaluate.squash``), written in NAB's results layout
  and scored (``streamwatch.evaluate.nab``). The rows of the detector's own warm-up
  (``DetectorConfig.warmup_readings``: an immature normaliser, huge raw scores) stay out of
  the squash's statistics; the threshold's longer warm-up does not matter there, as NAB
  tunes its own threshold. (Ignoring every row without a threshold, as before, zeroed the
  first ~400 rows of every file: NAB's probation is 15%, so windows right after it on the
  short files could never be detected.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from streamwatch.detect.base import Detector
from streamwatch.errors import StreamwatchError
from streamwatch.evaluate.corpus import NabCorpus, write_results
from streamwatch.evaluate.events import EventConfig, EventMetrics, alert_spans, event_metrics
from streamwatch.evaluate.nab import LabelledFile, ProfileResult, score_corpus
from streamwatch.evaluate.reference import windowed_gaussian
from streamwatch.evaluate.squash import SquashMethod, episodes, squash
from streamwatch.kinds import UNIVARIATE
from streamwatch.schema import Alert, Episode, Reading, Score

log = logging.getLogger(__name__)

DetectorFactory = Callable[[], Detector]
"""Builds a fresh detector (new model, new per-stream state)."""
REFERENCE = "nab-gaussian"
"""NAB's windowed-Gaussian reference (NAB runs only): scores rows directly, no alerts."""


class Scenario(Protocol):
    """What the runner needs of a simulator (``IcuSimulator``, ``SensorSimulator``)."""

    stream_ids: list[str]
    start_ts: float
    rate_hz: float

    def episodes(self, duration_s: float) -> list[Episode]: ...

    def readings(self, duration_s: float) -> Iterable[list[Reading]]: ...


@dataclass
class Trace:
    """Per-reading columns of one stream as one detector saw it (for the report)."""

    stream_id: str
    channels: tuple[str, ...]
    ts: list[float] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    mean: list[list[float]] = field(default_factory=list)
    std: list[list[float]] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    anomalous: list[bool] = field(default_factory=list)

    def add(self, s: Score) -> None:
        nan = float("nan")
        self.ts.append(s.ts)
        self.values.append([nan if s.values.get(c) is None else float(s.values[c])  # type: ignore[arg-type]
                            for c in self.channels])
        forecast = [s.forecast.get(c) for c in self.channels]
        self.mean.append([f.mean if f is not None else nan for f in forecast])
        self.std.append([f.std if f is not None else nan for f in forecast])
        self.score.append(s.score)
        self.threshold.append(nan if s.threshold is None else s.threshold)
        self.anomalous.append(s.anomalous)


@dataclass
class DetectorRun:
    """What one detector produced over a run (alerts all, scores of kept streams only)."""

    name: str
    kept: frozenset[str] = frozenset()
    alerts: list[Alert] = field(default_factory=list)
    traces: dict[str, Trace] = field(default_factory=dict)
    readings: int = 0
    seconds: float = 0.0

    def record(self, scores: Sequence[Score], alerts: Sequence[Alert], batch: Sequence[Reading],
               channels: tuple[str, ...]) -> None:
        if len(scores) != len(batch):
            raise StreamwatchError(
                f"detector {self.name} returned {len(scores)} scores for {len(batch)} readings")
        self.readings += len(batch)
        self.alerts.extend(alerts)
        for s in scores:
            if s.stream_id in self.traces:
                self.traces[s.stream_id].add(s)
            elif s.stream_id in self.kept:
                self.traces[s.stream_id] = Trace(s.stream_id, channels)
                self.traces[s.stream_id].add(s)


@dataclass
class ScenarioResult:
    """Event metrics per detector, plus what the report needs."""

    description: dict[str, Any]
    metrics: dict[str, EventMetrics]
    runs: dict[str, DetectorRun]
    episodes: list[Episode]
    run_end_ts: float


def _channels(readings: Sequence[Reading]) -> tuple[str, ...]:
    from streamwatch.kinds import get_kind

    return get_kind(readings[0].kind).channels if readings else ()


def run_scenario(
    scenario: Scenario,
    duration_s: float,
    detectors: Mapping[str, DetectorFactory],
    *,
    batch_steps: int = 1,
    keep_streams: Sequence[str] = (),
    event_config: EventConfig | None = None,
    progress: bool = True,
    description: Mapping[str, Any] | None = None,
) -> ScenarioResult:
    """Run every detector over the same readings, ``batch_steps`` time steps per batch."""
    if batch_steps < 1:
        raise StreamwatchError(f"batch_steps must be >= 1, got {batch_steps}")
    if not detectors:
        raise StreamwatchError("no detectors to run")
    built = {name: factory() for name, factory in detectors.items()}
    runs = {name: DetectorRun(name, kept=frozenset(keep_streams)) for name in built}
    episodes = scenario.episodes(duration_s)
    total = round(duration_s * scenario.rate_hz)
    channels: tuple[str, ...] = ()
    batch: list[Reading] = []
    steps_in_batch = 0

    def flush() -> None:
        for name, det in built.items():
            t0 = time.perf_counter()
            scores, alerts = det.process(batch)
            runs[name].seconds += time.perf_counter() - t0
            runs[name].record(scores, alerts, batch, channels)

    bar = tqdm(total=total, unit="step", desc="evaluate", disable=not progress, leave=False)
    for step in scenario.readings(duration_s):
        if step and not channels:
            channels = _channels(step)
        batch.extend(step)
        steps_in_batch += 1
        if steps_in_batch == batch_steps:
            flush()
            bar.update(steps_in_batch)
            batch, steps_in_batch = [], 0
    if batch:
        flush()
    bar.update(steps_in_batch)
    bar.close()

    run_end = scenario.start_ts + duration_s
    stream_days = len(scenario.stream_ids) * duration_s / 86400.0
    metrics = {
        name: event_metrics(episodes, alert_spans(run.alerts, run_end), stream_days=stream_days,
                            config=event_config)
        for name, run in runs.items()
    }
    for name, run in runs.items():
        log.info("evaluated detector=%s readings=%d alerts=%d seconds=%.1f",
                 name, run.readings, len(alert_spans(run.alerts, run_end)), run.seconds)
    return ScenarioResult(dict(description or {}), metrics, runs, episodes, run_end)


# -- NAB ---------------------------------------------------------------------------------


def nab_stream_id(key: str) -> str:
    """Stream id of a NAB file: ``nab/<category>/<file>`` (without ``.csv``)."""
    return "nab/" + key.removesuffix(".csv")


def nab_readings(file: LabelledFile, values: np.ndarray) -> list[Reading]:
    """One ``univariate`` Reading per row, in file order (NaN values become null)."""
    stream_id = nab_stream_id(file.key)
    ts = file.timestamps.astype("datetime64[ns]").astype(np.int64) / 1e9
    return [
        Reading(stream_id=stream_id, kind=UNIVARIATE, ts=float(t),
                values={"value": None if np.isnan(v) else float(v)})
        for t, v in zip(ts, values, strict=True)
    ]


@dataclass
class NabFileRun:
    """One detector on one file: raw and squashed scores, alerts, optional trace."""

    raw: np.ndarray
    threshold: np.ndarray
    anomaly_score: np.ndarray
    alerts: list[Alert]
    trace: Trace | None
    seconds: float


def run_nab_file(
    factory: DetectorFactory | None,
    file: LabelledFile,
    values: np.ndarray,
    *,
    squash_method: SquashMethod = "recent",
    batch_rows: int = 1,
    keep_trace: bool = False,
    hold_s: float = 0.0,
) -> NabFileRun:
    """Stream one file through a fresh detector (``None``: the NAB reference, scored as
    NAB ships it). ``hold_s``: see ``streamwatch.evaluate.squash.episodes``."""
    t0 = time.perf_counter()
    if factory is None:
        score = windowed_gaussian(values, one_sided=False)
        return NabFileRun(score, np.full(len(score), np.nan), score, [], None,
                          time.perf_counter() - t0)
    detector = factory()
    readings = nab_readings(file, values)
    run = DetectorRun("nab", kept=frozenset({nab_stream_id(file.key)} if keep_trace else ()))
    raw = np.empty(len(readings))
    threshold = np.empty(len(readings))
    warming = np.arange(len(readings)) < detector.warmup_readings
    for start in range(0, len(readings), batch_rows):
        batch = readings[start : start + batch_rows]
        scores, alerts = detector.process(batch)
        run.record(scores, alerts, batch, ("value",))
        for j, s in enumerate(scores):
            raw[start + j] = s.score
            threshold[start + j] = np.nan if s.threshold is None else s.threshold
    anomaly = squash(squash_method, raw, threshold, ignore=warming)
    if hold_s > 0:
        ts = np.fromiter((r.ts for r in readings), dtype=np.float64, count=len(readings))
        anomaly = episodes(anomaly, ts, hold_s)
    trace = run.traces.get(nab_stream_id(file.key))
    return NabFileRun(raw, threshold, anomaly, run.alerts, trace, time.perf_counter() - t0)


@dataclass
class NabResult:
    """NAB figures per detector and profile, plus what the report needs."""

    results_dir: Path
    profiles: dict[str, dict[str, ProfileResult]]
    traces: dict[str, dict[str, Trace]]
    alerts: dict[str, list[Alert]]
    seconds: dict[str, float]


def run_nab(
    corpus: NabCorpus,
    detectors: Mapping[str, DetectorFactory | None],
    *,
    results_dir: str | Path,
    squash_method: SquashMethod = "recent",
    batch_rows: int = 1,
    keep_files: Sequence[str] = (),
    progress: bool = True,
    hold_s: float = 0.0,
) -> NabResult:
    """Score every file with every detector, write NAB results files, compute NAB scores."""
    results_dir = Path(results_dir)
    profiles: dict[str, dict[str, ProfileResult]] = {}
    traces: dict[str, dict[str, Trace]] = {}
    alerts: dict[str, list[Alert]] = {}
    seconds: dict[str, float] = {}
    total = len(corpus.files) * len(detectors)
    with tqdm(total=total, unit="file", desc="nab", disable=not progress, leave=False) as bar:
        for name, factory in detectors.items():
            scores: dict[str, np.ndarray] = {}
            traces[name], alerts[name], seconds[name] = {}, [], 0.0
            for f in corpus.files:
                bar.set_postfix_str(f"{name} {f.key}")
                out = run_nab_file(factory, f, corpus.values[f.key], squash_method=squash_method,
                                   batch_rows=batch_rows, keep_trace=f.key in keep_files,
                                   hold_s=hold_s)
                write_results(results_dir, name, f, corpus.values[f.key], out.anomaly_score,
                              extra={"raw_score": out.raw})
                scores[f.key] = out.anomaly_score
                alerts[name].extend(out.alerts)
                seconds[name] += out.seconds
                if out.trace is not None:
                    traces[name][f.key] = out.trace
                bar.update(1)
            profiles[name] = score_corpus(corpus.files, scores)
            log.info("nab detector=%s standard=%.2f seconds=%.1f", name,
                     profiles[name]["standard"].normalized, seconds[name])
    return NabResult(results_dir, profiles, traces, alerts, seconds)
