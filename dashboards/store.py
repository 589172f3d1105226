"""The dashboard's bounded, thread-safe store: scores, alerts, health and dead letters.

The feed thread writes (``add_score``, ``add_alert``, ``add_health``, ``add_dead_letter``);
Dash callbacks read. Every full-rate point gets a store-wide, strictly increasing
sequence number, so a browser can ask for "everything after my cursor" and receive each
point exactly once (``points_since``).

Memory bound: ``max_streams`` streams of at most ``BufferConfig.bytes_per_stream(C)``
array bytes each (about 169 KiB for a 7-channel ICU stream and 110 KiB for a 4-channel
machine stream with the defaults: 15 min at 1 Hz full rate, 1-min buckets for 3 h and
5-min buckets for 24 h), plus ``max_alerts`` alerts, ``max_detectors`` x
``health_history`` Health records and a fixed vocabulary of dead-letter codes.

>>> from streamwatch.schema import ChannelForecast, Score
>>> store = DashboardStore()
>>> s = Score(stream_id="icu/bed-01", kind="icu_vitals", ts=100.0, values={"hr": 80.0},
...           forecast={"hr": ChannelForecast(mean=79.0, std=2.0)}, channel_scores={},
...           score=0.5, threshold=3.0, anomalous=False, warming_up=False, model="gru",
...           model_version=1)
>>> store.add_score(s), store.add_score(s)  # the second is a replayed duplicate
(True, False)
>>> points, reset = store.points_since("icu/bed-01", cursor=0)
>>> points.ts.tolist(), points.seq.tolist(), reset
([100.0], [1], False)
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dashboards.buffers import BucketRing, BufferConfig, RecentRing, Series
from dashboards.status import StreamSummary, summarise
from streamwatch.errors import ConfigError
from streamwatch.kinds import get_kind
from streamwatch.schema import Alert, DeadLetter, Health, Score

log = logging.getLogger(__name__)

_EVENT_RANK = {"open": 0, "update": 1, "close": 2}
_REASON_CHARS = 300


@dataclass
class _Stream:
    stream_id: str
    kind: str
    channels: tuple[str, ...]
    recent: RecentRing
    tiers: list[BucketRing]
    latest: Score
    last_ts: float
    arrived: float
    points: int = 0
    alert_ids: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class StoreStats:
    """Counters of what the store took in and what it refused (and why)."""

    streams: int
    points: int
    alerts: int
    cursor: int
    late_or_duplicate_scores: int
    refused_streams: int
    stale_alert_events: int
    undecodable: dict[str, int]
    last_undecodable: str | None
    memory_bound_bytes: int


class DashboardStore:
    """Bounded in-memory view of the detector's output, safe across threads.

    Parameters
    ----------
    buffers
        Per-stream buffer sizes (see ``BufferConfig``).
    max_streams
        Streams kept, in [1, 100000]; scores of further streams are refused, counted
        and logged.
    max_alerts
        Alerts kept by id, in [10, 1000000]; the oldest closed alerts are evicted first.
    max_detectors, health_history
        Detector processes tracked, in [1, 10000], and Health records kept per detector,
        in [1, 100000].
    clock
        Monotonic clock for arrival times (staleness), injectable for tests.
    """

    def __init__(
        self,
        buffers: BufferConfig | None = None,
        *,
        max_streams: int = 5_000,
        max_alerts: int = 5_000,
        max_detectors: int = 64,
        health_history: int = 720,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value, lo, hi in (("max_streams", max_streams, 1, 100_000),
                                    ("max_alerts", max_alerts, 10, 1_000_000),
                                    ("max_detectors", max_detectors, 1, 10_000),
                                    ("health_history", health_history, 1, 100_000)):
            if not lo <= value <= hi:
                raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
        self.buffers = buffers or BufferConfig()
        self.max_streams = max_streams
        self.max_alerts = max_alerts
        self.max_detectors = max_detectors
        self.health_history = health_history
        self.clock = clock
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}
        self._alerts: OrderedDict[str, Alert] = OrderedDict()
        self._health: dict[str, deque[Health]] = {}
        self._dead_letters: Counter[str] = Counter()
        self._dead_letter_reason: dict[str, str] = {}
        self._undecodable: Counter[str] = Counter()
        self._last_undecodable: str | None = None
        self._seq = 0
        self._late = 0
        self._refused = 0
        self._stale_alert_events = 0
        self._memory = 0
        self._last_arrival: float | None = None

    # ------------------------------------------------------------------ writes
    def add_score(self, score: Score) -> bool:
        """Append one score; False when refused (late/duplicate timestamp, or too many streams).

        Scores of one stream must arrive with increasing ``ts``: a replayed or late score
        (``ts`` not after the stream's last one) is counted, not drawn twice.
        """
        with self._lock:
            stream = self._streams.get(score.stream_id)
            if stream is None:
                stream = self._new_stream(score)
                if stream is None:
                    return False
            elif score.ts <= stream.last_ts:
                self._late += 1
                log.debug("late or duplicate score ignored stream_id=%s ts=%s last_ts=%s",
                          score.stream_id, score.ts, stream.last_ts)
                return False
            channels = stream.channels
            values = _row(score.values, channels)
            fc = score.forecast
            mean = [fc[c].mean if c in fc else math.nan for c in channels]
            std = [fc[c].std if c in fc else math.nan for c in channels]
            threshold = math.nan if score.threshold is None else score.threshold
            self._seq += 1
            stream.recent.append(score.ts, self._seq, values, mean, std, score.score, threshold,
                                 score.anomalous)
            tiers = stream.tiers
            if tiers:
                closed = tiers[0].add(score.ts, values, mean, std, score.score, threshold,
                                      score.anomalous)
                for tier in tiers[1:]:
                    if closed is None:
                        break
                    closed = tier.add_bucket(*closed)
            stream.latest, stream.last_ts, stream.arrived = score, score.ts, self.clock()
            self._last_arrival = stream.arrived
            stream.points += 1
            return True

    def _new_stream(self, score: Score) -> _Stream | None:
        if len(self._streams) >= self.max_streams:
            self._refused += 1
            if self._refused == 1 or self._refused % 1000 == 0:
                log.warning("stream refused: the dashboard store is full; raise --max-streams "
                            "max_streams=%d refused=%d stream_id=%s", self.max_streams,
                            self._refused, score.stream_id)
            return None
        try:
            channels = get_kind(score.kind).channels
        except ConfigError:
            channels = tuple(sorted(set(score.values) | set(score.forecast)))[:64]
        cfg = self.buffers
        stream = _Stream(
            stream_id=score.stream_id,
            kind=score.kind,
            channels=channels,
            recent=RecentRing(cfg.recent_points, len(channels)),
            tiers=[BucketRing(w, n, len(channels)) for w, n in cfg.tiers],
            latest=score,
            last_ts=-math.inf,
            arrived=self.clock(),
        )
        stream.alert_ids.update(a.alert_id for a in self._alerts.values()
                                if a.stream_id == score.stream_id)
        self._streams[score.stream_id] = stream
        self._memory += cfg.bytes_per_stream(len(channels))
        return stream

    def add_alert(self, alert: Alert) -> bool:
        """Keep the latest lifecycle event of an alert; False for an older (replayed) event."""
        with self._lock:
            old = self._alerts.get(alert.alert_id)
            if old is not None and _event_key(alert) < _event_key(old):
                self._stale_alert_events += 1
                return False
            self._alerts[alert.alert_id] = alert
            self._alerts.move_to_end(alert.alert_id)
            stream = self._streams.get(alert.stream_id)
            if stream is not None:
                stream.alert_ids.add(alert.alert_id)
            if len(self._alerts) > self.max_alerts:
                self._evict_alert()
            return True

    def _evict_alert(self) -> None:
        victim = next((k for k, a in self._alerts.items() if a.event == "close"),
                      next(iter(self._alerts)))
        gone = self._alerts.pop(victim)
        stream = self._streams.get(gone.stream_id)
        if stream is not None:
            stream.alert_ids.discard(victim)

    def add_health(self, health: Health) -> None:
        """Keep the recent Health records of each detector process, in time order."""
        with self._lock:
            history = self._health.get(health.detector_id)
            if history is None:
                if len(self._health) >= self.max_detectors:
                    oldest = min(self._health, key=lambda d: self._health[d][-1].ts)
                    log.warning("too many detectors; forgetting detector_id=%s", oldest)
                    del self._health[oldest]
                history = self._health[health.detector_id] = deque(maxlen=self.health_history)
            if not history or health.ts >= history[-1].ts:
                history.append(health)
            else:  # reports from several partitions may interleave: keep time order
                if len(history) == history.maxlen:
                    history.popleft()
                at = bisect.bisect_right([h.ts for h in history], health.ts)
                history.insert(at, health)

    def add_dead_letter(self, record: DeadLetter) -> None:
        """Count a dead letter by its code and remember the latest precise reason."""
        with self._lock:
            self._dead_letters[record.code] += 1
            self._dead_letter_reason[record.code] = record.reason[:_REASON_CHARS]

    def count_undecodable(self, topic: str, reason: str) -> None:
        """Count a record the feed could not decode (the feed logs it)."""
        with self._lock:
            self._undecodable[topic] += 1
            self._last_undecodable = f"{topic}: {reason}"[:_REASON_CHARS]

    # ------------------------------------------------------------------ reads
    @property
    def cursor(self) -> int:
        """Sequence number of the newest point in the store (0 when empty)."""
        with self._lock:
            return self._seq

    def freshest_age_s(self) -> float | None:
        """Seconds since the last score arrived (None before the first)."""
        with self._lock:
            last = self._last_arrival
        return None if last is None else self.clock() - last

    def summaries(self, stale_after_s: float) -> list[StreamSummary]:
        """One summary per stream (status, latest values, open alerts), unsorted."""
        now = self.clock()
        with self._lock:
            return [summarise(s.stream_id, s.kind, s.channels, s.latest, now - s.arrived,
                              [self._alerts[i] for i in s.alert_ids if i in self._alerts],
                              stale_after_s)
                    for s in self._streams.values()]

    def summary(self, stream_id: str, stale_after_s: float) -> StreamSummary | None:
        now = self.clock()
        with self._lock:
            s = self._streams.get(stream_id)
            if s is None:
                return None
            return summarise(s.stream_id, s.kind, s.channels, s.latest, now - s.arrived,
                             [self._alerts[i] for i in s.alert_ids if i in self._alerts],
                             stale_after_s)

    def last_ts(self, stream_id: str) -> float | None:
        with self._lock:
            s = self._streams.get(stream_id)
            return None if s is None else s.last_ts

    def series(self, stream_id: str, start: float, end: float = math.inf) -> Series | None:
        """The stream over [start, end]: full-rate points where held, coarser buckets before.

        Each tier covers only the time before the next finer tier's first point, so the
        joined series has increasing timestamps. ``None`` for an unknown stream.
        """
        with self._lock:
            s = self._streams.get(stream_id)
            return None if s is None else _series(s, start, end)

    def view(self, stream_id: str, start: float) -> tuple[Series, int] | None:
        """Everything from ``start`` on, and the cursor to continue from with ``points_since``.

        Read under one lock, so every later point has a sequence number above the cursor
        and every point in the series is at or below it.
        """
        with self._lock:
            s = self._streams.get(stream_id)
            if s is None:
                return None
            series = _series(s, start, math.inf)
            newest = int(s.recent.seq[(s.recent.head - 1) % s.recent.capacity])
            return series, newest

    def points_since(self, stream_id: str, cursor: int,
                     start: float = -math.inf) -> tuple[Series | None, bool]:
        """Full-rate points with ``seq > cursor`` (and ``ts >= start``), oldest first.

        ``reset`` is True when points after ``cursor`` have already left the ring: the
        caller missed some and must rebuild from ``series``.
        """
        with self._lock:
            s = self._streams.get(stream_id)
            if s is None:
                return None, False
            reset = s.recent.evicted_seq > cursor
            idx = s.recent.select(start=start, after_seq=cursor)
            return s.recent.series(s.channels, idx), reset

    def alerts(self, stream_id: str | None = None, *, open_only: bool = False,
               limit: int | None = None) -> list[Alert]:
        """Latest state of each alert, newest onset first."""
        with self._lock:
            if stream_id is not None:
                s = self._streams.get(stream_id)
                ids = s.alert_ids if s is not None else set()
                pool = [self._alerts[i] for i in ids if i in self._alerts]
                if s is None:
                    pool = [a for a in self._alerts.values() if a.stream_id == stream_id]
            else:
                pool = list(self._alerts.values())
        if open_only:
            pool = [a for a in pool if a.event != "close"]
        pool.sort(key=lambda a: (a.onset_ts, a.alert_id), reverse=True)
        return pool if limit is None else pool[:limit]

    def alert(self, alert_id: str) -> Alert | None:
        with self._lock:
            return self._alerts.get(alert_id)

    def health(self) -> dict[str, list[Health]]:
        """Recent Health records per detector, oldest first."""
        with self._lock:
            return {d: list(h) for d, h in self._health.items()}

    def dead_letters(self) -> dict[str, tuple[int, str]]:
        """Dead letters seen by the dashboard: code -> (count, latest reason)."""
        with self._lock:
            return {c: (n, self._dead_letter_reason[c]) for c, n in self._dead_letters.items()}

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(
                streams=len(self._streams),
                points=sum(s.points for s in self._streams.values()),
                alerts=len(self._alerts),
                cursor=self._seq,
                late_or_duplicate_scores=self._late,
                refused_streams=self._refused,
                stale_alert_events=self._stale_alert_events,
                undecodable=dict(self._undecodable),
                last_undecodable=self._last_undecodable,
                memory_bound_bytes=self._memory,
            )


def _series(s: _Stream, start: float, end: float) -> Series:
    parts = []
    limit = s.recent.first_ts() if s.recent.size else math.inf
    recent = s.recent.series(s.channels, s.recent.select(start, end))
    for tier in s.tiers:  # finest first
        parts.append(tier.series(s.channels, start, min(end, limit - tier.width_s / 2)))
        first = tier.first_ts()
        if not math.isnan(first):
            limit = min(limit, first)
    parts.reverse()
    parts.append(recent)
    return Series.concat([p for p in parts if len(p)] or [recent])


def _row(values: dict[str, float | None], channels: tuple[str, ...]) -> list[float]:
    out = []
    for c in channels:
        v = values.get(c)
        out.append(math.nan if v is None else v)
    return out


def _event_key(alert: Alert) -> tuple[int, int, float]:
    return (alert.seq, _EVENT_RANK[alert.event], alert.ts)
