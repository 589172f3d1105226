"""Event-level metrics of alerts against labelled simulator episodes (pure).

Episodes of category ``clinical`` (ICU) or ``fault`` (machines) are the events a detector
should find; ``artefact`` episodes change what a sensor shows, not the patient, and
alerts on them are counted apart. An alert is one ``alert_id``: its open/update/close
events collapse to a span ``[onset_ts, end_ts]``; an alert still open when the run ends
lasts until ``run_end_ts``.

- an episode is *detected* when an alert of the same stream overlaps
  ``[onset, end + grace_s]``; its delay is the first such alert's onset minus the
  episode onset, clamped at 0 (an alert already open at onset has delay 0);
- an alert is *true* when it overlaps a true episode (same window), else an *artefact
  alert* when it overlaps an artefact episode, else a *false alert*;
- recall = detected / true episodes; precision = true alerts / all alerts (artefact
  alerts count against it); F1 from those two; false (and artefact) alerts per
  stream-day; median and p90 delay over the detected *acute* episodes (types not in
  ``slow_types``, e.g. not the hours-long sepsis-like deterioration).

>>> from streamwatch.evaluate.events import AlertSpan, event_metrics
>>> from streamwatch.schema import Episode
>>> ep = Episode(episode_id="e1", stream_id="s", kind="k", type="desaturation",
...              category="clinical", onset_ts=100.0, end_ts=200.0, channels=["spo2"])
>>> m = event_metrics([ep], [AlertSpan("a1", "s", 130.0, 190.0)], stream_days=1.0)
>>> m.recall, m.precision, m.false_alerts_per_stream_day, m.delay_median_s
(1.0, 1.0, 0.0, 30.0)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streamwatch.errors import ConfigError
from streamwatch.schema import Alert, Episode

log = logging.getLogger(__name__)

TRUE_CATEGORIES = frozenset({"clinical", "fault"})
SLOW_TYPES = frozenset({"sepsis", "slow_drift"})


@dataclass(frozen=True)
class AlertSpan:
    """One alert as an interval of one stream."""

    alert_id: str
    stream_id: str
    onset_ts: float
    end_ts: float
    severity: str = "warning"
    peak_score: float = float("nan")


def alert_spans(alerts: Iterable[Alert], run_end_ts: float) -> list[AlertSpan]:
    """Collapse alert lifecycle events (any order, duplicates allowed) to one span per id."""
    by_id: dict[str, list[Alert]] = defaultdict(list)
    for alert in alerts:
        by_id[alert.alert_id].append(alert)
    spans = []
    for alert_id, events in by_id.items():
        onset = min(e.onset_ts for e in events)
        ends = [e.end_ts for e in events if e.event == "close" and e.end_ts is not None]
        end = max(ends) if ends else max(run_end_ts, onset)
        severity = "critical" if any(e.severity == "critical" for e in events) else "warning"
        spans.append(AlertSpan(alert_id, events[0].stream_id, onset, end, severity,
                               max(e.peak_score for e in events)))
    return sorted(spans, key=lambda s: (s.stream_id, s.onset_ts))


@dataclass(frozen=True)
class EventConfig:
    """How alerts are matched to episodes. ``grace_s``: an alert may open this long after
    an episode ends and still count for it; ``slow_types``: episode types left out of the
    delay statistics."""

    grace_s: float = 300.0
    slow_types: frozenset[str] = SLOW_TYPES
    true_categories: frozenset[str] = TRUE_CATEGORIES

    def __post_init__(self) -> None:
        if not 0.0 <= self.grace_s <= 86400.0:
            raise ConfigError(f"grace_s must be in [0, 86400] seconds, got {self.grace_s!r}")


@dataclass(frozen=True)
class TypeMetrics:
    """Per episode type: how many, how many detected, and their delays."""

    episodes: int
    detected: int
    recall: float
    delay_median_s: float | None
    delay_p90_s: float | None


@dataclass(frozen=True)
class EventMetrics:
    """Event-level figures of one detector on one scenario."""

    episodes: int
    detected: int
    recall: float
    alerts: int
    true_alerts: int
    artefact_alerts: int
    false_alerts: int
    precision: float
    f1: float
    stream_days: float
    false_alerts_per_stream_day: float
    artefact_alerts_per_stream_day: float
    acute_detected: int
    delay_median_s: float | None
    delay_p90_s: float | None
    by_type: dict[str, TypeMetrics] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _overlaps(span: AlertSpan, start: float, stop: float) -> bool:
    return span.onset_ts <= stop and span.end_ts >= start


def _delays(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(np.median(arr)), float(np.percentile(arr, 90))


def event_metrics(
    episodes: Sequence[Episode],
    alerts: Sequence[AlertSpan],
    *,
    stream_days: float,
    config: EventConfig | None = None,
) -> EventMetrics:
    """Match alert spans to episodes (see module docstring); ``stream_days`` is the
    observed time summed over streams, in days (the false-alert rate's denominator)."""
    config = config or EventConfig()
    if not stream_days > 0:
        raise ConfigError(f"stream_days must be > 0, got {stream_days!r}")
    by_stream: dict[str, list[AlertSpan]] = defaultdict(list)
    for span in alerts:
        by_stream[span.stream_id].append(span)
    true_eps = [e for e in episodes if e.category in config.true_categories]
    other_eps = [e for e in episodes if e.category not in config.true_categories]

    detected_by_type: dict[str, list[float | None]] = defaultdict(list)
    true_alert_ids: set[str] = set()
    for ep in true_eps:
        hits = [s for s in by_stream.get(ep.stream_id, ())
                if _overlaps(s, ep.onset_ts, ep.end_ts + config.grace_s)]
        true_alert_ids.update(s.alert_id for s in hits)
        delay = max(0.0, min(s.onset_ts for s in hits) - ep.onset_ts) if hits else None
        detected_by_type[ep.type].append(delay)
    artefact_ids = {
        s.alert_id
        for ep in other_eps
        for s in by_stream.get(ep.stream_id, ())
        if s.alert_id not in true_alert_ids and _overlaps(s, ep.onset_ts, ep.end_ts + config.grace_s)
    }

    by_type = {}
    acute: list[float] = []
    for kind, delays in sorted(detected_by_type.items()):
        found = [d for d in delays if d is not None]
        if kind not in config.slow_types:
            acute.extend(found)
        median, p90 = _delays(found)
        by_type[kind] = TypeMetrics(len(delays), len(found), len(found) / len(delays), median, p90)

    n_alerts = len(alerts)
    n_true = len(true_alert_ids)
    n_artefact = len(artefact_ids)
    n_false = n_alerts - n_true - n_artefact
    detected = sum(t.detected for t in by_type.values())
    recall = detected / len(true_eps) if true_eps else float("nan")
    precision = n_true / n_alerts if n_alerts else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if n_alerts and true_eps and precision + recall > 0 else 0.0)
    median, p90 = _delays(acute)
    return EventMetrics(
        episodes=len(true_eps), detected=detected, recall=recall,
        alerts=n_alerts, true_alerts=n_true, artefact_alerts=n_artefact, false_alerts=n_false,
        precision=precision, f1=f1, stream_days=stream_days,
        false_alerts_per_stream_day=n_false / stream_days,
        artefact_alerts_per_stream_day=n_artefact / stream_days,
        acute_detected=len(acute), delay_median_s=median, delay_p90_s=p90, by_type=by_type,
    )
