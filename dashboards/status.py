"""A stream's status at a glance: ok, warning, critical or stale, and how to sort by it.

Status rules, worst first:

- ``critical``: an open critical alert, or the latest score crossed a critical clinical
  hard limit (shown at once, even before the alert state machine opens an alert);
- ``warning``: an open warning alert, or a warning hard limit on the latest score;
- ``stale``: no score arrived for more than ``stale_after_s`` seconds;
- ``ok`` otherwise.

A stream with an open alert that also went quiet keeps its alert status and has
``stale=True`` (the overview shows both).

>>> STATUS_RANK["critical"] > STATUS_RANK["warning"] > STATUS_RANK["stale"] > STATUS_RANK["ok"]
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from streamwatch.schema import SEVERITY_RANK, Alert, Score

Status = Literal["critical", "warning", "stale", "ok"]
STATUSES: tuple[Status, ...] = ("critical", "warning", "stale", "ok")
STATUS_RANK: dict[str, int] = {"ok": 0, "stale": 1, "warning": 2, "critical": 3}


@dataclass(frozen=True)
class StreamSummary:
    """What the overview shows for one stream (plain data)."""

    stream_id: str
    kind: str
    channels: tuple[str, ...]
    status: Status
    stale: bool
    age_s: float
    ts: float
    values: dict[str, float | None]
    expected: dict[str, float]
    score: float
    threshold: float | None
    anomalous: bool
    warming_up: bool
    hard_limit: str | None
    hard_limit_channels: tuple[str, ...]
    open_alerts: int
    worst_open: str | None
    headline: str | None
    """Summary of the most severe open alert (newest first among equals)."""

    @property
    def score_ratio(self) -> float:
        """Score over threshold (0 when there is no threshold yet)."""
        if self.threshold is None or not self.threshold > 0 or math.isnan(self.score):
            return 0.0
        return self.score / self.threshold

    def sort_key(self) -> tuple[int, int, float, str]:
        """Most severe first: status, open alerts, score/threshold, then stream id."""
        return (-STATUS_RANK[self.status], -self.open_alerts, -self.score_ratio, self.stream_id)


def summarise(
    stream_id: str,
    kind: str,
    channels: tuple[str, ...],
    latest: Score,
    age_s: float,
    alerts: Sequence[Alert],
    stale_after_s: float,
) -> StreamSummary:
    """Build a stream's summary from its latest score and its alerts (any state)."""
    open_alerts = [a for a in alerts if a.event != "close"]
    top = max(open_alerts, key=lambda a: (SEVERITY_RANK[a.severity], a.onset_ts), default=None)
    worst = top.severity if top is not None else None
    stale = age_s > stale_after_s
    status: Status
    if worst == "critical" or latest.hard_limit == "critical":
        status = "critical"
    elif worst == "warning" or latest.hard_limit == "warning":
        status = "warning"
    elif stale:
        status = "stale"
    else:
        status = "ok"
    return StreamSummary(
        stream_id=stream_id,
        kind=kind,
        channels=channels,
        status=status,
        stale=stale,
        age_s=age_s,
        ts=latest.ts,
        values={c: latest.values.get(c) for c in channels},
        expected={c: f.mean for c, f in latest.forecast.items()},
        score=latest.score,
        threshold=latest.threshold,
        anomalous=latest.anomalous,
        warming_up=latest.warming_up,
        hard_limit=latest.hard_limit,
        hard_limit_channels=tuple(latest.hard_limit_channels),
        open_alerts=len(open_alerts),
        worst_open=worst,
        headline=top.explanation.summary if top is not None else None,
    )
