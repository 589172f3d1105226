"""Adaptive per-stream thresholds without labels: SPOT, peaks over threshold.

Siffer, Fouque, Termier, Largouët, "Anomaly detection in streams with extreme value
theory", KDD 2017. Per stream:

1. *Warm-up*: collect ``warmup`` scores; the threshold is NaN meanwhile (no model alert).
2. *Initialise*: the tail's base level ``t`` is the ``init_quantile`` (0.98) empirical
   quantile of the warm-up scores; the excesses ``y = s - t`` of the scores above it are
   the first *peaks*.
3. *Fit* a Generalised Pareto distribution GPD(shape gamma, scale sigma) to the peaks:
   profile maximum likelihood in Grimshaw's parametrisation ``theta = gamma / sigma``
   (for fixed theta, gamma = mean(log(1 + theta*y)) is explicit, so the likelihood is
   searched over one variable on a log grid, then refined), or the method of moments.
   Numerical safety: fewer than ``min_peaks_gpd`` peaks -> exponential tail (gamma = 0,
   sigma = mean excess); gamma is kept in [-1, 0.5] (-1 is a uniform tail: bounded scores
   such as HalfSpaceTrees' in [0, 1]); sigma >= ``min_scale``.
4. *Threshold* for risk q: ``z_q = t + sigma/gamma * ((q*n/N_t)^(-gamma) - 1)``
   (``t - sigma*log(q*n/N_t)`` when gamma = 0), never below t. ``N_t`` peaks were seen in
   the last ``n`` observations.
5. *Update*: only scores the caller marks as learnable count (in the detector: not inside
   an open alert). A learnable score above ``t`` is a new peak. A learnable score above
   the threshold in force is an exceedance: its value is *not* used, only the fact that
   its excess is at least ``z_q - t`` (a right-censored peak), so an anomaly never pulls
   the tail up by its own size. Plain SPOT drops exceedances altogether, which truncates
   the tail and lowers the threshold step after step (on iid exponential scores that
   ends at ~2.5x the intended false-positive rate); with censoring the likelihood stays
   correct and, in Grimshaw's parametrisation, still has a closed-form profile:
   gamma(theta) = (sum_obs log(1+theta*y) + sum_cens log(1+theta*c)) / k_obs.
   The last ``max_peaks`` peaks are kept (a ring per stream, so ``n`` is the span of
   observations those peaks come from); the GPD is refitted every ``refit_every`` new
   peaks, the threshold itself is recomputed on every update.

6. *Burst guard*: peaks normally arrive at rate ``1 - init_quantile`` (one in 50). When
   ``burst_peaks`` of the last ``burst_window`` observations are peaks, they are evidence
   of a change (an anomaly hovering just under the bar), not tail data: they are not
   learned, otherwise the bar climbs with the anomaly and it is never flagged. A burst
   ends when the count falls below half of ``burst_peaks``; one lasting more than
   ``burst_patience`` observations is accepted as a lasting change.
   With ``burst_pause_scorer`` peaks in the window the detector pauses the scorer's
   learning too (``pause_scorer_at``).

Memory: ~2.3 KB per stream with the defaults (peaks as float32, their positions as
int32), plus 1.2 KB of warm-up scores. Cost: a wave of B streams is a few dozen numpy
operations on length-B arrays; fitting
happens once per stream at the end of warm-up and every ``refit_every`` peaks (about
every ``refit_every / (1 - init_quantile)`` = 500 readings by default).

>>> import numpy as np
>>> from streamwatch.detect.config import ThresholdConfig
>>> bank = ThresholdBank(ThresholdConfig(warmup=100, risk=1e-3))
>>> rng = np.random.default_rng(0)
>>> for s in rng.exponential(size=99):
...     bank.update_many(["s1"], np.array([s]), np.array([True]))
>>> bool(np.isnan(bank.thresholds(["s1"])[0]))
True
>>> bank.update_many(["s1"], np.array([1.0]), np.array([True]))
>>> 4.0 < float(bank.thresholds(["s1"])[0]) < 12.0
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamwatch.detect.config import ThresholdConfig
from streamwatch.detect.slots import SlotTable
from streamwatch.errors import CheckpointError

log = logging.getLogger(__name__)

GAMMA_MIN, GAMMA_MAX = -1.0, 0.5
_GRID = 48


def fit_gpd(
    excesses: np.ndarray,
    censored: np.ndarray | None = None,
    *,
    estimator: str = "mle",
    min_peaks: int = 10,
    min_scale: float = 1e-9,
) -> tuple[float, float]:
    """Fit GPD(shape, scale) to positive excesses; returns ``(gamma, sigma)``.

    ``censored[i]`` True means the excess is only known to be >= ``excesses[i]``.

    >>> rng = np.random.default_rng(1)
    >>> g, s = fit_gpd(rng.exponential(2.0, size=2000))
    >>> abs(g) < 0.06, abs(s - 2.0) < 0.2
    (True, True)
    """
    if censored is None:
        censored = np.zeros(len(excesses), dtype=bool)
    ok = np.isfinite(excesses) & (excesses > 0)
    y, c = excesses[ok & ~censored], excesses[ok & censored]
    k = len(y)
    total = float(y.sum() + c.sum())
    if k == 0:
        return 0.0, max(total, min_scale)
    if k < min_peaks:  # censored exponential MLE: sigma = (sum y + sum c) / k_obs
        return 0.0, max(total / k, min_scale)
    if estimator == "mom":
        gamma, sigma = _mom(np.concatenate([y, c]))
    else:
        gamma, sigma = _mle(y, c, total / k)
    return gamma, max(sigma, min_scale)


def _mom(y: np.ndarray) -> tuple[float, float]:
    """Moments; censored peaks count at their bound (a slightly light tail)."""
    mean, var = float(y.mean()), float(y.var(ddof=1))
    gamma = 0.5 * (1.0 - mean * mean / var) if var > 0 else GAMMA_MIN
    gamma = min(max(gamma, GAMMA_MIN), GAMMA_MAX)
    return gamma, mean * (1.0 - gamma)  # GPD mean = sigma / (1 - gamma)


def _profile(theta: np.ndarray, y: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Profile log-likelihood per theta (divided by k_obs) and the gamma achieving it."""
    k = len(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        obs = np.log1p(theta[:, None] * y[None, :]).sum(axis=1)
        cens = np.log1p(theta[:, None] * c[None, :]).sum(axis=1) if len(c) else 0.0
        gamma = (obs + cens) / k
        ll = np.log(theta / gamma) - obs / k - 1.0
    ok = np.isfinite(ll) & (gamma >= GAMMA_MIN) & (gamma <= GAMMA_MAX) & (theta != 0)
    return np.where(ok, ll, -np.inf), gamma


def _mle(y: np.ndarray, c: np.ndarray, sigma_exp: float) -> tuple[float, float]:
    top = float(max(y.max(), c.max() if len(c) else 0.0))
    best_ll, best = -(math.log(sigma_exp) + 1.0), (0.0, sigma_exp)  # exponential, theta -> 0
    theta = np.concatenate(
        [
            -np.geomspace(1e-4, 1.0 - 1e-6, _GRID) / top,  # gamma < 0 (bounded tail)
            np.geomspace(1e-4, 1e4, _GRID) / sigma_exp,  # gamma > 0 (heavy tail)
        ]
    )
    theta.sort()
    ll, gamma = _profile(theta, y, c)
    i = int(np.argmax(ll))
    if np.isfinite(ll[i]):
        lo, hi = theta[max(i - 1, 0)], theta[min(i + 1, len(theta) - 1)]
        fine = np.linspace(lo, hi, 17)
        fine = fine[(fine != 0) & (fine > -1.0 / top)]
        fll, fgamma = _profile(fine, y, c)
        j = int(np.argmax(fll))
        cand_ll, cand_theta, cand_gamma = (
            (fll[j], fine[j], fgamma[j]) if fll[j] > ll[i] else (ll[i], theta[i], gamma[i])
        )
        if cand_ll > best_ll:
            best_ll, best = float(cand_ll), (float(cand_gamma), float(cand_gamma / cand_theta))
    return best


class ThresholdBank:
    """SPOT thresholds for many streams, updated a wave (distinct streams) at a time.

    Stream-id API: ``thresholds``, ``levels``, ``update_many``. Slot API (no dict lookups
    after ``slots``), used by the detector: ``slots``, ``thresholds_at``, ``levels_at``,
    ``update_at``.
    """

    def __init__(self, config: ThresholdConfig | None = None) -> None:
        self.config = config if config is not None else ThresholdConfig()
        cfg = self.config
        self._table = SlotTable(
            {
                "n_obs": ((), np.int64, 0),
                "warm": ((cfg.warmup,), np.float32, np.nan),
                "fitted": ((), np.bool_, False),
                "level": ((), np.float64, np.nan),
                "peaks": ((cfg.max_peaks,), np.float32, np.nan),
                "peak_obs": ((cfg.max_peaks,), np.int32, 0),
                "censored": ((cfg.max_peaks,), np.bool_, False),
                "head": ((), np.int64, 0),
                "count": ((), np.int64, 0),
                "since_fit": ((), np.int64, 0),
                "gamma": ((), np.float64, 0.0),
                "sigma": ((), np.float64, np.nan),
                "z": ((), np.float64, np.nan),
                "recent": ((), np.uint64, 0),  # bit i: observation i back was a peak
                "burst_run": ((), np.int64, 0),
                "frozen": ((), np.bool_, False),
            }
        )

    # -- stream-id API ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._table)

    def thresholds(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Current threshold per stream; NaN while warming up or for an unknown stream."""
        return self.thresholds_at(self._table.lookup(stream_ids))

    def levels(self, stream_ids: Sequence[str]) -> np.ndarray:
        """The tail's base level t per stream (NaN while warming up)."""
        return self.levels_at(self._table.lookup(stream_ids))

    def update_many(
        self, stream_ids: Sequence[str], scores: np.ndarray, learn_mask: np.ndarray
    ) -> None:
        """Learn from ``scores`` where ``learn_mask`` is True (and the score is finite).

        A stream appearing several times is updated in order of appearance.
        """
        if len(stream_ids) != len(scores) or len(scores) != len(learn_mask):
            raise ValueError("stream_ids, scores and learn_mask must have the same length")
        scores, learn_mask = np.asarray(scores, dtype=np.float64), np.asarray(learn_mask, bool)
        if len(set(stream_ids)) == len(stream_ids):
            self.update_at(self.slots(stream_ids), scores, learn_mask)
            return
        seen: dict[str, int] = {}
        ranks = []
        for sid in stream_ids:
            seen[sid] = seen.get(sid, -1) + 1
            ranks.append(seen[sid])
        rank = np.array(ranks)
        for k in range(int(rank.max()) + 1):
            rows = np.flatnonzero(rank == k)
            ids = [stream_ids[i] for i in rows.tolist()]
            self.update_at(self.slots(ids), scores[rows], learn_mask[rows])

    # -- slot API ----------------------------------------------------------------------
    def slots(self, stream_ids: Sequence[str]) -> np.ndarray:
        return self._table.slots(stream_ids)

    def thresholds_at(self, slots: np.ndarray) -> np.ndarray:
        z = self._table.arrays["z"][slots]
        return np.where(slots >= 0, z, np.nan)

    def levels_at(self, slots: np.ndarray) -> np.ndarray:
        a = self._table.arrays
        return np.where((slots >= 0) & a["fitted"][slots], a["level"][slots], np.nan)

    def update_at(self, slots: np.ndarray, scores: np.ndarray, learn_mask: np.ndarray) -> None:
        """Like ``update_many`` for distinct slots from ``slots()``."""
        m = learn_mask & np.isfinite(scores)
        if not m.any():
            return
        a = self._table.arrays
        s, x = slots[m], scores[m]
        fitted = a["fitted"][s]
        n = a["n_obs"][s] + 1
        a["n_obs"][s] = n
        if not fitted.all():
            ws, wn = s[~fitted], n[~fitted]
            a["warm"][ws, wn - 1] = x[~fitted]
            for slot in ws[wn >= self.config.warmup].tolist():
                self._initialise(slot)
        if fitted.any():
            fs, fx = s[fitted], x[fitted]
            level = a["level"][fs]
            bound = a["z"][fs] - level
            excess = fx - level
            peak = excess > 0
            frozen = self._burst_guard(fs, peak)
            learn = peak & ~frozen
            if learn.any():
                over = excess > bound  # an exceedance: censored at the bar in force
                self._add_peaks(fs[learn], np.where(over, bound, excess)[learn], over[learn])
            self._recompute(fs)

    def frozen_at(self, slots: np.ndarray) -> np.ndarray:
        """True where the stream is in a burst of peaks (not learned, see ``ThresholdConfig``)."""
        return np.where(slots >= 0, self._table.arrays["frozen"][slots], False)

    def pause_scorer_at(self, slots: np.ndarray) -> np.ndarray:
        """True where the burst is strong enough (``burst_pause_scorer`` peaks in the
        window) that the detector keeps the scorer from learning too."""
        a = self._table.arrays
        strong = np.bitwise_count(a["recent"][slots]) >= self.config.burst_pause_scorer
        return np.where(slots >= 0, a["frozen"][slots] & strong, False)

    def _burst_guard(self, fs: np.ndarray, peak: np.ndarray) -> np.ndarray:
        cfg, a = self.config, self._table.arrays
        mask = np.uint64((1 << cfg.burst_window) - 1)
        bits = ((a["recent"][fs] << np.uint64(1)) | peak.astype(np.uint64)) & mask
        a["recent"][fs] = bits
        count, run = np.bitwise_count(bits), a["burst_run"][fs]
        # hysteresis: a burst, once started, lasts until the count falls below half
        bursting = (count >= cfg.burst_peaks) | ((run > 0) & (count >= cfg.burst_peaks // 2))
        run = np.where(bursting, run + 1, 0)
        a["burst_run"][fs] = run
        frozen = bursting & (run <= cfg.burst_patience)
        a["frozen"][fs] = frozen
        return frozen

    # -- internals ---------------------------------------------------------------------
    def _add_peaks(self, ps: np.ndarray, excess: np.ndarray, censored: np.ndarray) -> None:
        a, cap = self._table.arrays, self.config.max_peaks
        head = a["head"][ps]
        a["peaks"][ps, head] = excess
        a["censored"][ps, head] = censored
        a["peak_obs"][ps, head] = a["n_obs"][ps]
        a["head"][ps] = (head + 1) % cap
        a["count"][ps] = np.minimum(a["count"][ps] + 1, cap)
        since = a["since_fit"][ps] + 1
        a["since_fit"][ps] = since
        due = ps[since >= self.config.refit_every]
        if len(due):
            self._fit(due)

    def _initialise(self, slot: int) -> None:
        a, cfg = self._table.arrays, self.config
        warm = a["warm"][slot].copy()
        level = float(np.quantile(warm, cfg.init_quantile))
        pos = np.flatnonzero(warm > level)[-cfg.max_peaks :]
        k = len(pos)
        a["level"][slot] = level
        a["peaks"][slot, :k] = warm[pos] - level
        a["peak_obs"][slot, :k] = pos + 1
        a["censored"][slot, :k] = False
        a["count"][slot], a["head"][slot] = k, k % cfg.max_peaks
        a["fitted"][slot] = True
        a["warm"][slot] = np.nan
        self._fit(np.array([slot]))
        if k == 0:  # a constant warm-up: any higher score is beyond the tail
            a["sigma"][slot] = max(cfg.min_scale, 1e-6 * max(1.0, abs(level)))
        self._recompute(np.array([slot]))
        log.debug(
            "threshold fitted slot=%d level=%.6g peaks=%d gamma=%.3f sigma=%.6g z=%.6g",
            slot,
            level,
            k,
            a["gamma"][slot],
            a["sigma"][slot],
            a["z"][slot],
        )

    def _fit(self, slots: np.ndarray) -> None:
        a, cfg = self._table.arrays, self.config
        a["since_fit"][slots] = 0
        for slot in slots.tolist():
            k = int(a["count"][slot])
            gamma, sigma = fit_gpd(
                a["peaks"][slot, :k].astype(np.float64),
                a["censored"][slot, :k],
                estimator=cfg.estimator,
                min_peaks=cfg.min_peaks_gpd,
                min_scale=cfg.min_scale,
            )
            a["gamma"][slot], a["sigma"][slot] = gamma, sigma

    def _recompute(self, s: np.ndarray) -> None:
        a, cap = self._table.arrays, self.config.max_peaks
        count, n, t = a["count"][s], a["n_obs"][s], a["level"][s]
        oldest = a["peak_obs"][s, a["head"][s]]
        n_eff = np.where(count < cap, n, n - oldest + 1).astype(np.float64)
        ratio = self.config.risk * n_eff / np.maximum(count, 1)
        gamma, sigma = a["gamma"][s], a["sigma"][s]
        safe_g = np.where(np.abs(gamma) < 1e-9, 1.0, gamma)
        z = np.where(
            np.abs(gamma) < 1e-9,
            t - sigma * np.log(ratio),
            t + sigma / safe_g * (ratio ** (-gamma) - 1.0),
        )
        a["z"][s] = np.maximum(z, t)

    # -- state -----------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {"warmup": self.config.warmup, "max_peaks": self.config.max_peaks}

    def _check_params(self, state: dict[str, Any]) -> None:
        if state.get("params") != self._params():
            raise CheckpointError(
                f"threshold state was written with {state.get('params')}, this bank has "
                f"{self._params()}: use the same warmup and max_peaks, or start fresh"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"params": self._params(), "streams": self._table.export_rows()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_params(state)
        self._table.clear()
        self._table.import_rows(state["streams"])

    def export_streams(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        return {"params": self._params(), "streams": self._table.export_rows(stream_ids)}

    def import_streams(self, state: dict[str, Any]) -> None:
        self._check_params(state)
        self._table.import_rows(state["streams"])

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        self._table.forget(stream_ids)
