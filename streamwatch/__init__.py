"""streamwatch: streaming time-series anomaly detection with an online-learning forecaster."""

from __future__ import annotations

__version__ = "0.1.0"
