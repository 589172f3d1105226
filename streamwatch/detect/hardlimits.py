"""Clinical hard limits for vital signs: NEWS2 bands plus life-threatening single values.

This layer does not depend on the model, so it works from a stream's first reading,
during the model's warm-up too. It is vectorised over a wave of readings.

Clinical mapping (Royal College of Physicians, NEWS2, 2017; defaults, all configurable):

- ``warning``: any single parameter scoring 3 (NEWS2 "red score": urgent ward-based
  response), an aggregate of 5-6 (urgent response threshold), or a value outside an
  optional monitor-style warning limit (``warning_limits``, e.g. HR < 50 or > 120; off
  by default, since the model flags deviations from each patient's own baseline and
  absolute yellow limits alarm all day on a patient whose normal HR is 46).
- ``critical``: aggregate >= 7 (emergency response), or any value beyond a monitor-style
  life-threatening limit (``HardLimitConfig.critical_limits``: HR < 40 or > 150, SpO2 < 85,
  RR < 6 or > 35, SBP < 80 or > 240, temp < 34 or > 41). A single red parameter is
  *not* critical by itself: NEWS2 ranks it with an aggregate of 5-6, and in an ICU most
  red values (say HR 132, RR 25) call for review, not an emergency call; the values for
  which one parameter alone is an emergency are the critical limits above.
- The aggregate here sums the channels present (HR, SpO2 scale 1, RR, SBP, temperature);
  consciousness and supplemental oxygen are not in the stream and count 0.
- A probe-off SpO2 (exactly 0, or missing) is an artefact, not a desaturation: it scores
  nothing (``probe_off_zero``); the detector also hides it from the model.

Persistence against alarm fatigue: a condition alerts only once it has held over at least
``min_readings`` readings spanning ``persist_s`` (warning, 30 s) or ``critical_persist_s``
(critical, 15 s) of event time. A reading with none of the scored channels present
neither breaks nor extends a run; any other reading below the level ends it.

>>> import numpy as np
>>> from streamwatch.detect.config import HardLimitConfig
>>> from streamwatch.kinds import get_kind
>>> hl = HardLimitBank(HardLimitConfig(), get_kind("icu_vitals"))
>>> #                   hr     spo2  rr    sbp    dbp   map   temp
>>> v = np.array([[ 72.0,  97.0, 16.0, 120.0, 70.0, 87.0, 37.0],
...               [135.0,  97.0, 16.0, 120.0, 70.0, 87.0, 37.0],
...               [135.0,  89.0, 26.0,  95.0, 60.0, 72.0, 37.0],
...               [ 72.0,   0.0, 16.0, 120.0, 70.0, 87.0, 37.0]])
>>> hl.evaluate(v).level.tolist()
[0, 1, 2, 0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from streamwatch.detect.config import HardLimitConfig
from streamwatch.detect.slots import SlotTable
from streamwatch.errors import CheckpointError
from streamwatch.kinds import KindSpec

NONE, WARNING, CRITICAL = 0, 1, 2
LEVEL_NAMES: dict[int, str | None] = {NONE: None, WARNING: "warning", CRITICAL: "critical"}


class Evaluation(NamedTuple):
    """Per-reading verdict, no persistence: ``level`` 0/1/2 per row."""

    level: np.ndarray  # (B,) int8
    points: np.ndarray  # (B, C) int8 NEWS2 points, 0 where not scored or missing
    beyond: np.ndarray  # (B, C) bool: outside a single-channel (warning or critical) limit
    neutral: np.ndarray  # (B,) bool: none of the scored channels present


class Step(NamedTuple):
    """``Evaluation`` plus the persisted (alerting) level and the run's onset per row."""

    level: np.ndarray
    points: np.ndarray
    beyond: np.ndarray
    confirmed: np.ndarray  # (B,) int8: level that has persisted long enough
    onset: np.ndarray  # (B,) float64: ts of the run's first reading, NaN if not confirmed


def _limits(limits: dict[str, tuple[float | None, float | None]],
            kind: KindSpec) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    pairs = [limits.get(name, (None, None)) for name in kind.channels]
    low = np.array([-np.inf if lo is None else lo for lo, _ in pairs])
    high = np.array([np.inf if hi is None else hi for _, hi in pairs])
    return low, high


class HardLimitBank:
    """Hard-limit evaluation for one kind, with per-stream persistence state."""

    def __init__(self, config: HardLimitConfig, kind: KindSpec) -> None:
        self.config = config
        self.kind = kind
        self._table = SlotTable({"start": ((2,), np.float64, np.nan), "count": ((2,), np.int64, 0)})
        # Band tables padded to one matrix, so a wave is scored in a few array operations.
        banded = [c for c, name in enumerate(kind.channels) if name in config.bands]
        width = max((len(config.bands[kind.channels[c]]) for c in banded), default=1)
        self._banded = np.array(banded, dtype=np.int64)
        self._bounds = np.full((len(banded), width), np.inf)
        self._points = np.zeros((len(banded), width), dtype=np.int8)
        for k, c in enumerate(banded):
            for b, (bound, pts) in enumerate(config.bands[kind.channels[c]]):
                self._bounds[k, b], self._points[k, b] = bound, pts
        self._low, self._high = _limits(config.critical_limits, kind)
        self._wlow, self._whigh = _limits(config.warning_limits, kind)
        self._scored = np.array(
            [name in config.bands or name in config.critical_limits
             or name in config.warning_limits for name in kind.channels]
        )  # fmt: skip
        self._probe_off = [kind.index(c) for c in config.probe_off_zero if c in kind.channels]

    @staticmethod
    def applies(config: HardLimitConfig, kind: KindSpec) -> bool:
        """Whether this layer runs for ``kind`` at all."""
        return config.enabled and kind.name in config.kinds

    # -- pure evaluation -------------------------------------------------------------
    def mask_probe_off(self, values: np.ndarray) -> np.ndarray:
        """``values`` with probe-off zeros replaced by NaN (a copy only when needed)."""
        cols = self._probe_off
        if not cols or not (values[:, cols] == 0).any():
            return values
        out = values.copy()
        sub = out[:, cols]
        sub[sub == 0] = np.nan
        out[:, cols] = sub
        return out

    def evaluate(self, values: np.ndarray) -> Evaluation:
        """NEWS2 points and level of each row of ``values`` (N, C); no state."""
        cfg = self.config
        values = self.mask_probe_off(values)
        n, c = values.shape
        points = np.zeros((n, c), dtype=np.int8)
        if len(self._banded):
            v = values[:, self._banded]
            band = (v[:, :, None] > self._bounds[None]).sum(axis=2)  # first bound >= v
            band = np.minimum(band, self._bounds.shape[1] - 1)
            pts = self._points[np.arange(len(self._banded))[None, :], band]
            points[:, self._banded] = np.where(np.isnan(v), 0, pts)
        beyond = (values < self._low) | (values > self._high)
        outside = (values < self._wlow) | (values > self._whigh)
        present = (~np.isnan(values) & self._scored).any(axis=1)
        aggregate = points.sum(axis=1)
        critical = (aggregate >= cfg.critical_aggregate) | beyond.any(axis=1)
        warning = (
            (points >= cfg.warning_points).any(axis=1)
            | (aggregate >= cfg.warning_aggregate)
            | outside.any(axis=1)
        )
        level = np.where(critical, CRITICAL, np.where(warning, WARNING, NONE)).astype(np.int8)
        return Evaluation(level, points, beyond | outside, ~present)

    def channels(self, points: np.ndarray, beyond: np.ndarray) -> list[str]:
        """Channels behind one row's verdict (``beyond``: outside a single-channel limit),
        most severe first."""
        names = self.kind.channels
        hit = [(bool(beyond[c]), int(points[c]), -c) for c in range(len(names))]
        ranked = sorted((h for h in hit if h[0] or h[1] > 0), reverse=True)
        return [names[-neg] for _, _, neg in ranked]

    def direction(self, channel: str, value: float) -> Literal["low", "high"] | None:
        """Which side of its limits ``value`` of ``channel`` lies: ``"low"`` or ``"high"``
        when below or above a single-channel (critical or warning) limit or outside the
        channel's 0-point NEWS2 band; None within them or for a channel not scored.

        >>> from streamwatch.detect.config import HardLimitConfig
        >>> from streamwatch.kinds import get_kind
        >>> hl = HardLimitBank(HardLimitConfig(), get_kind("icu_vitals"))
        >>> hl.direction("spo2", 82.0), hl.direction("hr", 190.0), hl.direction("hr", 72.0)
        ('low', 'high', None)
        """
        if channel not in self.kind.channels or value != value:
            return None
        c = self.kind.index(channel)
        if value < self._low[c] or value < self._wlow[c]:
            return "low"
        if value > self._high[c] or value > self._whigh[c]:
            return "high"
        bands = self.config.bands.get(channel, ())
        band = sum(value > bound for bound, _ in bands)  # first bound >= value, as evaluated
        normal = [i for i, (_, points) in enumerate(bands) if points == 0]
        if band >= len(bands) or bands[band][1] == 0 or not normal:
            return None
        return "low" if band < min(normal) else "high"

    # -- persistence -----------------------------------------------------------------
    def slots(self, stream_ids: Sequence[str]) -> np.ndarray:
        return self._table.slots(stream_ids)

    def step_at(
        self, slots: np.ndarray, ts: np.ndarray, values: np.ndarray, update: np.ndarray
    ) -> Step:
        """Evaluate one wave (distinct streams) and advance the runs where ``update``."""
        cfg = self.config
        ev = self.evaluate(values)
        arrays = self._table.arrays
        start, count = arrays["start"][slots], arrays["count"][slots]
        for j, lvl in enumerate((WARNING, CRITICAL)):
            cond = ev.level >= lvl
            new = cond & np.isnan(start[:, j])
            start[new, j] = ts[new]
            count[new, j] = 0
            count[cond, j] += 1
            broken = ~cond & ~ev.neutral
            start[broken, j] = np.nan
            count[broken, j] = 0
        held = ts[:, None] - start >= np.array([cfg.persist_s, cfg.critical_persist_s])
        ok = held & (count >= cfg.min_readings)
        confirmed = np.where(ok[:, 1], CRITICAL, np.where(ok[:, 0], WARNING, NONE))
        confirmed = np.where(update, confirmed, NONE).astype(np.int8)
        onset = np.where(confirmed > 0, start[:, 0], np.nan)
        arrays["start"][slots[update]] = start[update]
        arrays["count"][slots[update]] = count[update]
        return Step(ev.level, ev.points, ev.beyond, confirmed, onset)

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"streams": self._table.export_rows()}

    def export_streams(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        return {"streams": self._table.export_rows(stream_ids)}

    def import_streams(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "streams" not in state:
            raise CheckpointError("hard-limit state lacks 'streams'")
        self._table.import_rows(state["streams"])

    def clear(self) -> None:
        """Forget every stream's runs."""
        self._table.clear()

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        self._table.forget(stream_ids)
