"""The online forecaster: network (``forecaster``), settings (``config``), per-stream
state (``state``), pure input/normaliser helpers (``features``), score arithmetic
(``scoring``) and training (``trainer``). The ``Scorer`` built from them is ``streamwatch.detect.forecast_scorer``.
"""

from __future__ import annotations

from streamwatch.model.config import ModelConfig

__all__ = ["ModelConfig"]
