"""NAB's windowed-Gaussian reference detector, re-implemented to validate our NAB scorer.

NAB publishes this detector's results; it is deterministic, so scoring its output with
``streamwatch.evaluate.nab`` must give NAB's published per-file scores and the reference
normalised scores of ``../shared/data/nab/README.md``. It is also a cheap baseline
(``--detectors gaussian``).

The detector (NAB ``windowedGaussian``): the score of row ``i`` is the Gaussian CDF of
its value under the mean and standard deviation of a window of earlier values; the window
grows to 6,400 values, then slides forward 100 values at a time. Causal: row ``i`` sees
rows ``< i`` only.

NAB's published results were produced by a version whose tail for values below the
window mean is the lower one, so the score is ``Phi(z)`` (``one_sided=True``: only rises
are anomalous); NAB's current code uses ``1 - Q(|z|)`` (``one_sided=False``). Its results
files hold scores printed by Python 2, 12 significant digits: ``storage_digits=12``
reproduces that rounding, which decides which near-1 scores tie at exactly 1.0.

>>> s = windowed_gaussian(np.array([1.0, 1.0, 1.1, 0.9, 50.0]))
>>> float(s[0]), bool(s[-1] > 0.999)
(0.0, True)
"""

from __future__ import annotations

import math

import numpy as np

WINDOW = 6400
STEP = 100


def _round_significant(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}")


def windowed_gaussian(
    values: np.ndarray,
    window: int = WINDOW,
    step: int = STEP,
    one_sided: bool = True,
    storage_digits: int | None = None,
) -> np.ndarray:
    """Per-row anomaly scores in [0, 1] of NAB's windowed Gaussian detector."""
    if window < 1 or step < 1 or step > window:
        raise ValueError(f"need 1 <= step <= window, got window={window} step={step}")
    x = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(x))
    start, end = 0, 0  # the window is x[start:end]
    pending = 0  # values buffered since the last slide
    mean, std = 0.0, 1.0
    for i, value in enumerate(x):
        if end > start:
            z = (value - mean) / std
            if one_sided:
                score = 0.5 * math.erfc(-z / math.sqrt(2.0))
            else:
                score = 1.0 - 0.5 * math.erfc(abs(z) / math.sqrt(2.0))
            out[i] = score if storage_digits is None else _round_significant(score, storage_digits)
        if end - start < window:
            end += 1
        else:
            pending += 1
            if pending < step:
                continue
            start, end, pending = start + step, end + step, 0
        current = x[start:end]
        mean = float(np.mean(current))
        std = float(np.std(current)) or 0.000001
    return out
