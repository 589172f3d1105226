"""Causal maps from a detector's raw anomaly score to NAB's ``anomaly_score`` in [0, 1].

NAB needs one score per row in [0, 1] and tunes one threshold for the whole corpus, so
the scores of different files must be comparable. A forecaster's raw score (a negative
log-likelihood) has a different scale on every file; two maps fix that, both causal
(the output at row ``i`` depends on rows ``<= i`` only, so a prefix of a file gets the
same outputs as the whole file):

``likelihood`` (default; the anomaly-likelihood idea of Numenta's HTM detector):
    the mean of the last ``short`` raw scores is compared with the mean and standard
    deviation of the ``long`` raw scores before them; the Gaussian upper-tail
    probability ``q`` of that short mean becomes ``log(q + 1e-10) / log(1e-10)``,
    which is 0 for ordinary rows and approaches 1 as ``q`` falls to 1e-10. Rows with
    fewer than ``min_history`` earlier raw scores get 0.
``ratio``:
    ``r / (1 + r)`` with ``r`` the raw score over the detector's own adaptive threshold
    at that row (0.5 exactly at the threshold); 0 where there is no threshold yet.

NaN raw scores (no score for that row) give 0 and do not enter the statistics.

``episodes`` (applied after either map by ``streamwatch evaluate nab``, ``--episode-hold-h``)
keeps a row's score only if it is higher than every squashed score of the preceding
``hold_s`` seconds of event time, and sets the others to 0: the NAB counterpart of the
alert machine, which opens once and then updates. NAB counts every detection outside a
window as a false positive, so the rows that follow a surprise while it fades would
otherwise cost one each, and a sustained change would be reported many times over.

>>> raw = np.r_[np.random.default_rng(0).normal(1.0, 0.1, 300), [9.0]]
>>> out = likelihood(raw)
>>> bool(out[:-1].max() < 0.5), bool(out[-1] > 0.9)
(True, True)
>>> out = recent(raw)
>>> bool(out[:-1].max() < 0.85), bool(out[-1] > 0.98)
(True, True)
>>> ratio(np.array([0.5, 2.0, 1.0]), np.array([1.0, 1.0, np.nan])).tolist()
[0.3333333333333333, 0.6666666666666666, 0.0]
>>> episodes(np.array([0.1, 0.9, 0.8, 0.95, 0.2, 0.7]), np.arange(6.0) * 60, hold_s=150).tolist()
[0.1, 0.9, 0.0, 0.95, 0.0, 0.0]
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

import numpy as np
import pandas as pd

SquashMethod = Literal["recent", "likelihood", "ratio"]
LOG_FLOOR = 1e-10


def recent(
    raw: np.ndarray, long: int = 500, min_history: int = 50, ignore: np.ndarray | None = None
) -> np.ndarray:
    """Standard score against the recent raw scores, mapped to [0, 1) (module docstring)."""
    if not 2 <= min_history <= long:
        raise ValueError(f"need 2 <= min_history <= long, got {min_history} and {long}")
    x = np.asarray(raw, dtype=np.float64)
    history = pd.Series(np.where(ignore, np.nan, x) if ignore is not None else x)
    window = history.shift(1).rolling(long, min_periods=min_history)
    z = ((x - window.mean()) / window.std(ddof=0).clip(lower=1e-9)).to_numpy()
    z = np.where(np.isfinite(z) & (z > 0), z, 0.0)
    return z / (1.0 + z)


def likelihood(
    raw: np.ndarray, short: int = 10, long: int = 1000, min_history: int = 100
) -> np.ndarray:
    """Anomaly likelihood of each row's recent raw scores (see module docstring)."""
    if not 1 <= short <= long:
        raise ValueError(f"need 1 <= short <= long, got short={short} long={long}")
    if not 2 <= min_history <= long:
        raise ValueError(f"min_history must be in [2, long={long}], got {min_history}")
    series = pd.Series(np.asarray(raw, dtype=np.float64))
    recent = series.rolling(short, min_periods=1).mean()
    history = series.shift(1).rolling(long, min_periods=min_history)
    mean, std = history.mean(), history.std(ddof=0)
    z = ((recent - mean) / std.clip(lower=1e-6)).to_numpy()
    q = 0.5 * np.vectorize(math.erfc, otypes=[float])(np.nan_to_num(z, nan=-np.inf) / math.sqrt(2.0))
    out = np.log(q + LOG_FLOOR) / math.log(LOG_FLOOR)
    out[np.isnan(z) | series.isna().to_numpy()] = 0.0
    return np.clip(out, 0.0, 1.0)


def episodes(score: np.ndarray, ts: np.ndarray, hold_s: float) -> np.ndarray:
    """Each row's score where it exceeds every score of the ``hold_s`` seconds before it
    (event time, ``ts`` in seconds; a clock that goes back counts as standing still),
    else 0 (module docstring). Causal; ``hold_s = 0`` returns the scores unchanged."""
    if hold_s < 0:
        raise ValueError(f"hold_s must be >= 0, got {hold_s}")
    x = np.asarray(score, dtype=np.float64)
    if hold_s == 0 or x.size == 0:
        return x.copy()
    t = np.maximum.accumulate(np.asarray(ts, dtype=np.float64))
    out = np.zeros_like(x)
    window: deque[int] = deque()  # earlier rows within hold_s, scores decreasing
    for i in range(x.size):
        while window and t[window[0]] <= t[i] - hold_s:
            window.popleft()
        if not window or x[i] > x[window[0]]:
            out[i] = x[i]
        while window and x[window[-1]] <= x[i]:
            window.pop()
        window.append(i)
    return out


def ratio(raw: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """``r / (1 + r)`` of the raw score over the adaptive threshold at the same row."""
    r = np.asarray(raw, dtype=np.float64) / np.asarray(threshold, dtype=np.float64)
    ok = np.isfinite(r) & (r > 0)
    out = np.zeros(len(r))
    out[ok] = r[ok] / (1.0 + r[ok])
    return out


def squash(
    method: SquashMethod, raw: np.ndarray, threshold: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
) -> np.ndarray:
    """Dispatch to ``recent``, ``likelihood`` or ``ratio`` (which needs the per-row
    thresholds); ``ignore`` marks warm-up rows for ``recent``."""
    if method == "recent":
        return recent(raw, ignore=ignore)
    if method == "likelihood":
        return likelihood(raw)
    if method == "ratio":
        if threshold is None:
            raise ValueError("the ratio squash needs the detector's per-row thresholds")
        return ratio(raw, threshold)
    raise ValueError(f"unknown squash method {method!r}; choose recent, likelihood or ratio")
