"""The NAB score (Numenta Anomaly Benchmark v1.1), as NAB's own sweeper computes it.

A detector streams each file once, causally, and writes an ``anomaly_score`` in [0, 1]
per row. Scoring, per profile (weights A_TP, A_FP, A_FN):

1. The first ``P = min(floor(0.15 N), 750)`` rows of a file are probation: not scored.
   A window whose rows all fall in probation is not scored either.
2. Each row gets a *sweep weight*. Inside a window of rows ``a..b`` (``W = b - a + 1``):
   ``A_TP * s(-(b - i + 1) / W) / s(-1)`` with ``s(y) = 2 / (1 + exp(5 y)) - 1`` (and
   ``s(y) = -1`` when ``y > 3``): the first row of a window is worth exactly ``A_TP``.
   Outside every window: ``-A_FP`` when no window has ended before the row, otherwise
   ``A_FP * s(|b' - i| / (W' - 1))`` for the last window ``a'..b'`` that ended before it.
3. For a threshold ``t`` a row is a detection when ``anomaly_score >= t``. A window with
   detections earns the weight of its earliest detection; one with none costs ``-A_FN``;
   every detection outside the windows adds its (negative) weight.
4. One threshold per profile for the whole corpus: the one with the highest total raw
   score among every distinct score value (NAB's sweep; ties go to the higher threshold).
5. Normalised score ``100 * (S - S_null) / (S_perfect - S_null)``; ``S_null`` is what a
   detector that never fires gets (``-A_FN`` per scored window), ``S_perfect`` is
   ``A_TP`` per window of the scored files.

Differences from NAB's code, all on inputs NAB itself would crash or mis-handle on: a
window start or end missing from a file, overlapping windows, or a score outside [0, 1]
or NaN are clear errors here; after a one-row window (``W' = 1``, a division by zero in
NAB) a false positive gets the farthest weight ``-A_FP``; ``S_perfect`` counts the windows
of the scored files only (NAB counts every window of its label file), so a subset of a
corpus is normalised within itself.

>>> round(float(scaled_sigmoid(-1.0)), 5), float(scaled_sigmoid(0.0)), float(scaled_sigmoid(3.5))
(0.98661, 0.0, -1.0)
>>> probation_rows(4032), probation_rows(22695)
(604, 750)
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from streamwatch.errors import StreamwatchError

log = logging.getLogger(__name__)

PROBATION_FRACTION = 0.15
PROBATION_CAP_ROWS = 750
"""NAB caps probation at ``0.15 * 5000`` rows."""
NEVER_FIRES = 1.1
"""The threshold NAB reports for "no row is a detection" (scores live in [0, 1])."""


class NabError(StreamwatchError):
    """A NAB corpus, label file or results file is malformed or does not fit."""


@dataclass(frozen=True)
class Profile:
    """NAB application profile: the weights of its cost matrix."""

    name: str
    tp: float
    fp: float
    fn: float
    tn: float = 1.0


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
}


def scaled_sigmoid(y: float | np.ndarray) -> np.ndarray:
    """NAB's ``s(y) = 2 / (1 + exp(5 y)) - 1``, and ``-1`` where ``y > 3``."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):
        value = 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0
    return np.where(y > 3.0, -1.0, value)


def probation_rows(n_rows: int, fraction: float = PROBATION_FRACTION) -> int:
    """Number of leading rows NAB ignores: ``min(floor(fraction * n), fraction * 5000)``."""
    if not 0.0 <= fraction < 1.0:
        raise NabError(f"probation fraction must be in [0, 1), got {fraction}")
    limit = min(math.floor(fraction * n_rows), fraction * 5000)
    return math.ceil(limit)  # NAB scores rows with index >= limit


@dataclass(frozen=True)
class LabelledFile:
    """One data file of a corpus: its key, timestamps and anomaly windows as row ranges.

    ``windows`` holds inclusive ``(first_row, last_row)`` pairs, sorted, not overlapping.
    """

    key: str
    timestamps: np.ndarray  # datetime64[ns], file order (may repeat or go back in time)
    windows: tuple[tuple[int, int], ...]

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    @classmethod
    def from_limits(
        cls, key: str, timestamps: Sequence[object] | np.ndarray, limits: Sequence[Sequence[str]]
    ) -> LabelledFile:
        """Turn NAB window limits (timestamp strings) into row ranges.

        As NAB's sweeper does, a window starts at the first row whose timestamp equals its
        start and ends at the first row whose timestamp equals its end.
        """
        ts = pd.to_datetime(pd.Series(timestamps)).to_numpy(dtype="datetime64[ns]")
        first: dict[np.datetime64, int] = {}
        for i, t in enumerate(ts):
            first.setdefault(t, i)
        rows = []
        for n, limit in enumerate(limits):
            if len(limit) != 2:
                raise NabError(f"{key}: window {n} must be [start, end], got {limit!r}")
            ends = []
            for edge in limit:
                try:
                    t = pd.Timestamp(edge).to_datetime64().astype("datetime64[ns]")
                except (ValueError, TypeError) as exc:
                    raise NabError(f"{key}: window {n} has a bad timestamp {edge!r}: {exc}") from None
                if t not in first:
                    raise NabError(
                        f"{key}: window {n} edge {edge!r} is not a timestamp of the file; "
                        "NAB windows must start and end on rows of their file"
                    )
                ends.append(first[t])
            if ends[1] < ends[0]:
                raise NabError(f"{key}: window {n} ends (row {ends[1]}) before it starts (row {ends[0]})")
            rows.append((ends[0], ends[1]))
        rows.sort()
        for (_, b), (a2, _) in itertools.pairwise(rows):
            if a2 <= b:
                raise NabError(f"{key}: windows overlap (one ends at row {b}, the next starts at row {a2})")
        return cls(key=key, timestamps=ts, windows=tuple(rows))

    def labels(self) -> np.ndarray:
        """0/1 per row: 1 inside a window (the ``label`` column of NAB's results files)."""
        label = np.zeros(self.n_rows, dtype=np.int8)
        for a, b in self.windows:
            label[a : b + 1] = 1
        return label


@dataclass(frozen=True)
class Sweep:
    """Per-row sweep weights of one file for one profile (see module docstring)."""

    weight: np.ndarray  # (N,) float64
    window: np.ndarray  # (N,) int: window index in the file, -1 outside every window
    scored: np.ndarray  # (N,) bool: False in probation


def sweep(file: LabelledFile, profile: Profile, probation_fraction: float = PROBATION_FRACTION) -> Sweep:
    """NAB's per-row sweep weights of ``file`` under ``profile``."""
    n = file.n_rows
    idx = np.arange(n)
    weight = np.full(n, -profile.fp, dtype=np.float64)  # before any window: -A_FP
    window = np.full(n, -1, dtype=np.int64)
    max_tp = float(scaled_sigmoid(-1.0))
    for k, (a, b) in enumerate(file.windows):
        width = b - a + 1
        inside = idx[a : b + 1]
        weight[a : b + 1] = profile.tp * scaled_sigmoid(-(b - inside + 1) / width) / max_tp
        window[a : b + 1] = k
        stop = file.windows[k + 1][0] if k + 1 < len(file.windows) else n
        after = idx[b + 1 : stop]
        if width > 1:
            weight[b + 1 : stop] = profile.fp * scaled_sigmoid(np.abs(b - after) / (width - 1))
        else:
            weight[b + 1 : stop] = -profile.fp
    scored = idx >= probation_rows(n, probation_fraction)
    return Sweep(weight=weight, window=window, scored=scored)


def check_scores(key: str, scores: np.ndarray, n_rows: int) -> np.ndarray:
    """Anomaly scores as float64, or ``NabError`` naming the file and the first bad row."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n_rows,):
        raise NabError(f"{key}: {arr.shape[0] if arr.ndim else 0} anomaly scores for {n_rows} rows")
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        i = int(np.argmax(bad))
        raise NabError(f"{key}: anomaly_score must be a number in [0, 1]; row {i} has {arr[i]!r}")
    return arr


@dataclass(frozen=True)
class FileScore:
    """One file at one threshold: raw score and NAB's row counts, plus window counts."""

    key: str
    raw: float
    tp: int
    tn: int
    fp: int
    fn: int
    rows: int
    windows: int
    windows_detected: int


@dataclass(frozen=True)
class ProfileResult:
    """The NAB result of one detector for one profile over a corpus."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    normalized: float
    files: list[FileScore] = field(default_factory=list)


def _corpus_rows(
    files: Sequence[LabelledFile], scores: Mapping[str, np.ndarray], profile: Profile,
    probation_fraction: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Scored rows of every file: score, weight, corpus-wide window id (-1 outside)."""
    parts_s, parts_w, parts_g = [], [], []
    offset = 0
    for f in files:
        sw = sweep(f, profile, probation_fraction)
        s = check_scores(f.key, scores[f.key], f.n_rows)
        g = np.where(sw.window >= 0, sw.window + offset, -1)
        parts_s.append(s[sw.scored])
        parts_w.append(sw.weight[sw.scored])
        parts_g.append(g[sw.scored])
        offset += len(f.windows)
    s = np.concatenate(parts_s) if parts_s else np.zeros(0)
    w = np.concatenate(parts_w) if parts_w else np.zeros(0)
    g = np.concatenate(parts_g) if parts_g else np.zeros(0, dtype=np.int64)
    scored_windows = len(np.unique(g[g >= 0]))
    return s, w, g, scored_windows


def threshold_sweep(
    files: Sequence[LabelledFile], scores: Mapping[str, np.ndarray], profile: Profile,
    probation_fraction: float = PROBATION_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Total raw score of the corpus at every candidate threshold (NAB's sweep).

    Returns ``(thresholds, totals)``, thresholds descending, starting with
    ``NEVER_FIRES`` (no detection: every scored window a false negative).
    """
    s, w, g, n_windows = _corpus_rows(files, scores, profile, probation_fraction)
    null = -profile.fn * n_windows
    order = np.argsort(-s, kind="stable")
    s, w, g = s[order], w[order], g[order]
    delta = np.where(g < 0, w, 0.0)
    inside = g >= 0
    if inside.any():
        frame = pd.DataFrame({"g": g[inside], "w": w[inside]})
        best = frame.groupby("g")["w"].cummax()
        before = best.groupby(frame["g"]).shift(1).fillna(-profile.fn)
        delta[inside] = (best - before).to_numpy()
    totals = null + np.cumsum(delta)
    last_of_value = np.ones(len(s), dtype=bool)
    last_of_value[:-1] = s[:-1] != s[1:]
    thresholds = np.concatenate([[NEVER_FIRES], s[last_of_value]])
    return thresholds, np.concatenate([[null], totals[last_of_value]])


def score_file(
    file: LabelledFile, scores: np.ndarray, profile: Profile, threshold: float,
    probation_fraction: float = PROBATION_FRACTION,
) -> FileScore:
    """Raw NAB score and counts of one file at ``threshold`` (detection: score >= threshold)."""
    sw = sweep(file, profile, probation_fraction)
    s = check_scores(file.key, scores, file.n_rows)
    detected = (s >= threshold) & sw.scored
    outside = sw.window < 0
    raw = float(sw.weight[detected & outside].sum())
    windows = detected_windows = 0
    for k in range(len(file.windows)):
        rows = (sw.window == k) & sw.scored
        if not rows.any():
            continue
        windows += 1
        hits = np.flatnonzero(rows & detected)
        if hits.size:
            detected_windows += 1
            raw += float(sw.weight[hits[0]])
        else:
            raw -= profile.fn
    return FileScore(
        key=file.key, raw=raw,
        tp=int((detected & ~outside).sum()), fp=int((detected & outside).sum()),
        fn=int((~detected & ~outside & sw.scored).sum()),
        tn=int((~detected & outside & sw.scored).sum()),
        rows=file.n_rows, windows=windows, windows_detected=detected_windows,
    )


def score_corpus(
    files: Sequence[LabelledFile], scores: Mapping[str, np.ndarray],
    profiles: Mapping[str, Profile] = PROFILES, probation_fraction: float = PROBATION_FRACTION,
) -> dict[str, ProfileResult]:
    """Optimise the threshold per profile over the corpus, then score every file with it.

    ``scores`` maps each file's key to its per-row anomaly scores in [0, 1].
    """
    if not files:
        raise NabError("no files to score")
    missing = [f.key for f in files if f.key not in scores]
    if missing:
        raise NabError(f"no anomaly scores for {len(missing)} file(s), e.g. {missing[0]}")
    results: dict[str, ProfileResult] = {}
    n_windows = sum(len(f.windows) for f in files)
    for name, profile in profiles.items():
        thresholds, totals = threshold_sweep(files, scores, profile, probation_fraction)
        best = int(np.argmax(totals))
        threshold = float(thresholds[best])
        per_file = [score_file(f, scores[f.key], profile, threshold, probation_fraction) for f in files]
        raw = float(sum(fs.raw for fs in per_file))
        null = -profile.fn * float(sum(fs.windows for fs in per_file))
        perfect = profile.tp * n_windows
        normalized = 100.0 * (raw - null) / (perfect - null) if perfect != null else float("nan")
        log.debug("nab profile=%s threshold=%s raw=%.4f normalized=%.2f", name, threshold, raw, normalized)
        results[name] = ProfileResult(
            profile=name, threshold=threshold, raw=raw, null=null, perfect=perfect,
            normalized=normalized, files=per_file,
        )
    return results
