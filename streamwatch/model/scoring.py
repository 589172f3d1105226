"""Pure score arithmetic of the forecast scorer (numpy in, numpy out).

Let ``z_c = (y_c - mean_c) / std_c`` for each observed channel with a forecast (the same
in original and normalised units), and ``k`` the number of such channels.

- forecast surprise: the chi-square surprise ``S_f = -ln P(chi2_k >= sum_c z_c**2)``,
  i.e. minus the log tail probability of the reading's joint likelihood under the
  forecast. For a calibrated forecast it is Exponential(1) whatever ``k``, so it is
  scale-free, does not change distribution when a channel drops out, and one extreme
  channel is not diluted by the quiet ones (as a mean over channels would be).
- level surprise (``ModelConfig.level_score``, on by default): the same statistic with
  ``z_c`` taken against the stream's own baseline, the normaliser's mean and std (which
  learn only from readings the detector lets through). A one-step forecast follows any
  change slow enough per step, e.g. blood pressure falling 60 mmHg over two minutes at
  1 Hz (measured on the ICU simulator, 10 beds x 6 h, seed 1, ``train_every=1024``: the
  forecast surprise of all three hypotension episodes had a median of 0.1-0.3); the
  baseline does not. Neither term sees a steady ramp over hours: the exponentially
  weighted baseline absorbs it (its z-score tends to ~1), which is what hard limits and
  a longer ``norm_halflife`` are for.
- channel groups (``KindSpec.groups``): channels one sensor measures together, e.g. the
  blood-pressure triplet, enter the sum as one term, the group's largest ``z**2``, with
  one degree of freedom (:func:`grouped_sum_sq`). Summed channel by channel, one ordinary
  2.5-sigma swing of blood pressure counts three times (measured on the ICU simulator,
  20 beds x 24 h, seed 1: every one of the GRU detector's 23 false alerts showed sbp, dbp
  and map off together, 20 of them as the leading channels).
- combined score: ``max(S_f, S_l)`` (0 when nothing is observed or the stream has no
  forecast yet, e.g. its first two readings). Each term is about Exponential(1) under
  normal behaviour, so the tail of the max is below ``2 exp(-x)``: measured on the ICU
  simulator (10 beds x 6 h, seed 1, default config, after the first 2 h), normal
  periods score mean 1.5, p99 7.5, p99.9 12.3; the forecast term alone 1.0 / 6.0 / 10.8.
- per-channel score: the Gaussian negative log-likelihood in normalised units,
  ``0.5 * (log(2 pi) + logvar_c + z_c**2)``, or with the level term the larger of that
  and the baseline's ``0.5 * (log(2 pi) + zl_c**2)`` (NaN where missing or not forecast).

>>> import numpy as np
>>> channel, score = forecast_scores(np.array([[1.0, np.nan]]), np.zeros((1, 2)),
...                                  np.ones((1, 2)), np.zeros((1, 2)))
>>> round(float(channel[0, 0]), 4), bool(np.isnan(channel[0, 1])), round(float(score[0]), 3)
(1.4189, True, 1.148)
"""

from __future__ import annotations

import numpy as np
import torch

from streamwatch.model.forecaster import LOG_2PI


def chi2_surprise(sum_sq: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``-ln P(chi2_k >= sum_sq)``, 0 where ``k == 0``; accurate far into the tail.

    >>> [round(float(v), 3) for v in chi2_surprise(np.array([0.0, 1.0, 9.0]), np.array([1, 1, 1]))]
    [0.0, 1.148, 5.915]
    """
    k = np.asarray(k)
    a = np.maximum(k, 1) / 2.0
    y = np.maximum(np.asarray(sum_sq, dtype=np.float64), 0.0) / 2.0
    q = torch.special.gammaincc(torch.from_numpy(a), torch.from_numpy(y)).numpy()
    with np.errstate(divide="ignore"):
        surprise = -np.log(q)
    far = q <= 1e-200
    if far.any():  # q underflows: Gamma(a, y) ~ y^(a-1) e^-y (1 + (a-1)/y), y large
        af, yf = torch.from_numpy(a[far]), torch.from_numpy(y[far])
        tail = yf - (af - 1) * torch.log(yf) + torch.lgamma(af) - torch.log1p((af - 1) / yf)
        surprise[far] = tail.numpy()
    return np.where(k > 0, surprise, 0.0) + 0.0  # + 0.0 turns -0.0 into 0.0


def grouped_sum_sq(
    z_sq: np.ndarray, present: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of squared z-scores over channel groups and the degrees of freedom ``k``.

    ``groups`` gives each channel's group number (``KindSpec.group_index``); within a group
    the largest present ``z**2`` stands for the group, so channels that move together (one
    blood-pressure cuff gives systolic, diastolic and MAP) count once, as one degree of
    freedom, instead of tripling the evidence of one deviation. ``None``: every channel
    is its own group (the plain chi-square sum).

    >>> zsq = np.array([[4.0, 4.0, 4.0, 1.0]]); present = np.ones((1, 4), dtype=bool)
    >>> grouped_sum_sq(zsq, present)
    (array([13.]), array([4]))
    >>> grouped_sum_sq(zsq, present, np.array([0, 0, 0, 1]))
    (array([5.]), array([2]))
    """
    if groups is None:
        return np.where(present, z_sq, 0.0).sum(axis=1), present.sum(axis=1)
    members = np.bincount(groups)
    alone = members[groups] == 1  # single-channel groups: the plain sum
    total = np.where(present[:, alone], z_sq[:, alone], 0.0).sum(axis=1)
    k = present[:, alone].sum(axis=1)
    for g in np.flatnonzero(members > 1):  # the few multi-channel groups: their max
        cols = groups == g
        here = present[:, cols]
        total = total + np.where(here, z_sq[:, cols], 0.0).max(axis=1)
        k = k + here.any(axis=1)
    return total, k


def forecast_scores(
    values: np.ndarray, mean: np.ndarray, std: np.ndarray, logvar: np.ndarray,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel NLL (normalised units) and the combined chi-square surprise of readings
    ``values`` (N, C) under forecasts ``mean``/``std`` (original units) and ``logvar``
    (normalised units). NaN anywhere in a channel's inputs makes that channel NaN and
    leaves it out of the combined score; ``groups``: see :func:`grouped_sum_sq`."""
    with np.errstate(invalid="ignore"):
        z = (values - mean) / std
    channel = 0.5 * (LOG_2PI + logvar + z * z)
    finite = np.isfinite(channel)
    score = chi2_surprise(*grouped_sum_sq(z * z, finite, groups))
    return np.where(finite, channel, np.nan), score


def level_scores(
    values: np.ndarray, base_mean: np.ndarray, base_std: np.ndarray, usable: np.ndarray,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel NLL and chi-square surprise of ``values`` against each stream's
    baseline ``N(base_mean, base_std**2)``, over the ``usable`` entries only."""
    z = np.where(usable, (np.where(usable, values, 0.0) - base_mean) / base_std, 0.0)
    channel = np.where(usable, 0.5 * (LOG_2PI + z * z), np.nan)
    return channel, chi2_surprise(*grouped_sum_sq(z * z, usable, groups))
