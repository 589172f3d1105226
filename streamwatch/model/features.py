"""Pure, vectorised helpers: per-stream normaliser statistics and model inputs.

Normaliser
----------
Each stream normalises each channel with an exponentially weighted mean and variance,
kept as ``(rows, C)`` numpy arrays and updated for a whole wave at once. river's
``stats.EWMean``/``EWVar`` compute the same thing, but as one Python object per
stream-channel (70,000 objects for 10,000 ICU beds) updated one scalar at a time: far too
slow for the batched path, hence these few array operations.

Update for an observed value ``x`` (``n`` = observed values so far, including ``x``)::

    a     = max(1 / n, alpha)          # warm start: plain running mean/variance first
    d     = x - mean
    mean += a * d
    var   = (1 - a) * (var + a * d * d)

with ``alpha = 1 - 0.5 ** (1 / halflife)``. The ``1 / n`` term gives the exact sample
mean and (population) variance of the first readings, so a new stream is usable after a
handful of readings instead of after several half-lives.

>>> import numpy as np
>>> mean, var, n = np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1), dtype=np.int64)
>>> for x in (1.0, 3.0):
...     mean, var, n = ew_update(mean, var, n, np.array([[x]]), np.array([[True]]), 0.01)
>>> float(mean[0, 0]), float(var[0, 0]), int(n[0, 0])
(2.0, 1.0, 2)
>>> round(float(gap_feature(np.array([3600.0]), 3600.0)[0]), 3)
1.0
"""

from __future__ import annotations

import numpy as np


def ew_alpha(halflife: float) -> float:
    """Per-reading weight of an exponential average with this half-life (in readings)."""
    return float(1.0 - 0.5 ** (1.0 / halflife))


def ew_update(
    mean: np.ndarray,
    var: np.ndarray,
    n: np.ndarray,
    x: np.ndarray,
    observed: np.ndarray,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New ``(mean, var, n)`` after the observed entries of ``x`` (all arrays (rows, C)).

    Entries where ``observed`` is False (missing, or not allowed to teach) are unchanged.
    """
    n_new = n + observed
    a = np.where(observed, np.maximum(1.0 / np.maximum(n_new, 1), alpha), 0.0)
    d = np.where(observed, x - mean, 0.0)
    mean_new = mean + a * d
    var_new = np.where(observed, (1.0 - a) * (var + a * d * d), var)
    return mean_new, var_new, n_new


def ew_scale(mean: np.ndarray, var: np.ndarray, min_std: float, rel_min_std: float) -> np.ndarray:
    """Standard deviation used to normalise: ``sqrt(var)`` floored at
    ``max(min_std, rel_min_std * |mean|)`` so a flat channel cannot divide by zero."""
    floor = np.maximum(min_std, rel_min_std * np.abs(mean))
    return np.maximum(np.sqrt(np.maximum(var, 0.0)), floor)


def gap_feature(gap_s: np.ndarray, max_gap_s: float) -> np.ndarray:
    """Time-gap input feature in [0, 1]: ``log1p(clip(gap, 0, max)) / log1p(max)``.

    Negative gaps (late or duplicated timestamps) count as 0; NaN (a stream's first
    reading) counts as 0.
    """
    gap = np.nan_to_num(gap_s, nan=0.0)
    return np.log1p(np.clip(gap, 0.0, max_gap_s)) / np.log1p(max_gap_s)


def season_bin(ts: np.ndarray, period_s: float, bins: int) -> np.ndarray:
    """Phase bin in ``[0, bins)`` of each epoch-seconds timestamp within ``period_s``."""
    phase = np.mod(np.asarray(ts, dtype=np.float64), period_s) / period_s
    return np.minimum((phase * bins).astype(np.int64), bins - 1)


def season_columns(s_now: np.ndarray, s_next: np.ndarray, clip: float) -> np.ndarray:
    """Seasonal input columns ``[change, level, mask]``: (N, 3C) from the normalised
    profile values at this step's phase and at the next step's phase (NaN where a phase
    bin has no value yet). ``change = s_next - s_now`` and ``level = s_next`` are 0 where
    the mask (both known) is 0."""
    ok = ~(np.isnan(s_now) | np.isnan(s_next))
    change = np.where(ok, np.clip(np.nan_to_num(s_next - s_now), -clip, clip), 0.0)
    level = np.where(ok, np.clip(np.nan_to_num(s_next), -clip, clip), 0.0)
    return np.concatenate([change, level, ok], axis=1)


def step_inputs(
    z: np.ndarray, in_mask: np.ndarray, gap: np.ndarray, clip: float,
    season: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Model input rows ``[values (0 where masked), mask, gap]``: (N, 2C+1) float32, and
    with ``season = (s_now, s_next)`` (normalised, (N, C)) the ``season_columns`` after
    them: (N, 5C+1).

    ``z`` (N, C) normalised values (NaN where missing), ``in_mask`` (N, C) True where the
    value is fed to the model, ``gap`` (N,) the gap feature.
    """
    values = np.where(in_mask, np.clip(np.nan_to_num(z, nan=0.0), -clip, clip), 0.0)
    parts = [values, in_mask, gap[:, None]]
    if season is not None:
        parts.append(season_columns(season[0], season[1], clip))
    return np.concatenate(parts, axis=1).astype(np.float32)


def build_windows(
    z: np.ndarray,
    gap: np.ndarray,
    observed: np.ndarray,
    trainable: np.ndarray,
    valid: np.ndarray,
    clip: float,
    burn_in: int,
    season: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Training windows from per-stream recent windows, oldest step first.

    Parameters
    ----------
    z
        (n, R, C) normalised values, NaN where missing.
    gap
        (n, R) gap features.
    observed
        (n, R) the reading was fed to the model as observed when it arrived.
    trainable
        (n, R) the reading was allowed to teach (``learn_many`` mask True).
    valid
        (n, R) the entry holds a reading (False before a stream's first readings).
    clip, burn_in
        See ``ModelConfig.input_clip`` and ``ModelConfig.burn_in``.
    season
        ``(s_now, s_next)``, each (n, R, C): the normalised seasonal-profile values each
        step was given (``step_inputs``), or None when the seasonal inputs are off.

    Returns
    -------
    x, y
        Inputs (n, R-1, F) float32 (F = 2C+1, or 5C+1 with ``season``) from entries
        0..R-2, exactly as the scoring path fed them (non-observed readings as missing); targets (n, R-1, C) float32 from entries
        1..R-1, NaN where missing, not trainable, padding, or inside the burn-in.
    """
    n, r, c = z.shape
    finite = ~np.isnan(z)
    in_mask = finite & (observed & valid)[:, :, None]
    flat_season = None
    if season is not None:
        flat_season = (season[0][:, :-1].reshape(-1, c), season[1][:, :-1].reshape(-1, c))
    flat = step_inputs(
        z[:, :-1].reshape(-1, c), in_mask[:, :-1].reshape(-1, c),
        np.where(valid, gap, 0.0)[:, :-1].reshape(-1), clip, flat_season,
    )
    x = flat.reshape(n, r - 1, flat.shape[1])
    ok = finite & (trainable & valid)[:, :, None]
    y = np.where(ok, np.clip(z, -clip, clip), np.nan)[:, 1:].astype(np.float32)
    y[:, :burn_in] = np.nan
    return x, y
