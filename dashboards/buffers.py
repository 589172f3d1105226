"""Bounded per-stream buffers: full-rate recent points plus downsampled history tiers.

A stream keeps its last ``recent_points`` scores at full rate (``RecentRing``) and, for
the longer views, one ``BucketRing`` per history tier: fixed-width time buckets holding
the min / max / mean of each observed channel, the mean forecast and its mean std, the
highest anomaly score and the mean threshold. Every array is allocated when the stream
first appears, so a stream's memory is fixed from its first point on
(``BufferConfig.bytes_per_stream``).

>>> cfg = BufferConfig(recent_points=900, tiers=((60.0, 180), (300.0, 288)))
>>> round(cfg.bytes_per_stream(7) / 1024)
169
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from streamwatch.errors import ConfigError

F4 = np.float32
NAN = float("nan")

# Bytes per point / per bucket: see the array layouts below.
_RECENT_FIXED = 8 + 8 + 4 + 4 + 1  # ts, seq, score, threshold, anomalous
_RECENT_PER_CHANNEL = 3 * 4  # observed, forecast mean, forecast std (float32)
_BUCKET_FIXED = 8 + 4 + 4 + 4 + 1  # start, score max, threshold mean, count, anomalous
_BUCKET_PER_CHANNEL = 5 * 4  # low, high, mean, forecast mean, forecast std (float32)


@dataclass(frozen=True)
class BufferConfig:
    """Sizes of every stream's buffers.

    Parameters
    ----------
    recent_points
        Full-rate points kept per stream, in [10, 100000] (900 = 15 min at 1 Hz).
    tiers
        ``(bucket_seconds, buckets)`` per history tier, finest first; bucket widths in
        [1, 86400] s and strictly increasing, buckets per tier in [1, 100000]. The default
        keeps 1-min buckets for 3 h and 5-min buckets for 24 h.
    """

    recent_points: int = 900
    tiers: tuple[tuple[float, int], ...] = ((60.0, 180), (300.0, 288))

    def __post_init__(self) -> None:
        if not 10 <= self.recent_points <= 100_000:
            raise ConfigError(f"recent_points must be in [10, 100000], got {self.recent_points}")
        widths = [w for w, _ in self.tiers]
        if any(not (1.0 <= w <= 86_400.0) for w in widths) or widths != sorted(set(widths)):
            raise ConfigError(
                f"tier bucket widths must be in [1, 86400] s and strictly increasing, got {widths}"
            )
        if any(b % a for a, b in itertools.pairwise(widths)):
            raise ConfigError(f"each tier's bucket width must be a multiple of the finer one's, "
                              f"got {widths}")
        if any(not 1 <= n <= 100_000 for _, n in self.tiers):
            raise ConfigError(f"buckets per tier must be in [1, 100000], got {self.tiers}")

    def bytes_per_stream(self, channels: int) -> int:
        """Array memory of one stream with ``channels`` channels (Python overhead aside)."""
        recent = self.recent_points * (_RECENT_FIXED + _RECENT_PER_CHANNEL * channels)
        buckets = sum(n for _, n in self.tiers)
        return recent + buckets * (_BUCKET_FIXED + _BUCKET_PER_CHANNEL * channels)


@dataclass(frozen=True)
class Series:
    """Plain columns of one stream over a time range, oldest first (what figures draw).

    ``values`` is the observed value (bucket mean for downsampled points), ``low``/``high``
    the observed min/max of a bucket (NaN for full-rate points), ``seq`` the store
    sequence number of a full-rate point (-1 for buckets), ``res`` the bucket width in
    seconds (0 for full-rate points). Arrays of shape (N, C) follow ``channels``.
    """

    channels: tuple[str, ...]
    ts: np.ndarray
    seq: np.ndarray
    values: np.ndarray
    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    anomalous: np.ndarray
    res: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def empty(cls, channels: tuple[str, ...]) -> Series:
        c = len(channels)
        return cls(
            channels=channels,
            ts=np.empty(0),
            seq=np.empty(0, dtype=np.int64),
            values=np.empty((0, c)),
            low=np.empty((0, c)),
            high=np.empty((0, c)),
            mean=np.empty((0, c)),
            std=np.empty((0, c)),
            score=np.empty(0),
            threshold=np.empty(0),
            anomalous=np.empty(0, dtype=bool),
            res=np.empty(0),
        )

    @staticmethod
    def concat(parts: list[Series]) -> Series:
        """Join consecutive parts (same channels) into one series."""
        first = parts[0]
        if len(parts) == 1:
            return first
        return Series(
            channels=first.channels,
            **{
                name: np.concatenate([getattr(p, name) for p in parts])
                for name in ("ts", "seq", "values", "low", "high", "mean", "std", "score",
                             "threshold", "anomalous", "res")
            },
        )


class RecentRing:
    """The last ``capacity`` points of one stream at full rate, in arrival order."""

    def __init__(self, capacity: int, channels: int) -> None:
        self.capacity = capacity
        self.ts = np.full(capacity, NAN)
        self.seq = np.full(capacity, -1, dtype=np.int64)
        self.values = np.full((capacity, channels), NAN, dtype=F4)
        self.mean = np.full((capacity, channels), NAN, dtype=F4)
        self.std = np.full((capacity, channels), NAN, dtype=F4)
        self.score = np.full(capacity, NAN, dtype=F4)
        self.threshold = np.full(capacity, NAN, dtype=F4)
        self.anomalous = np.zeros(capacity, dtype=bool)
        self.head = 0
        self.size = 0
        self.evicted_seq = -1
        """Sequence number of the newest point that fell out of the ring (-1: none)."""

    def append(self, ts: float, seq: int, values: list[float], mean: list[float],
               std: list[float], score: float, threshold: float, anomalous: bool) -> None:
        i = self.head
        if self.size == self.capacity:
            self.evicted_seq = int(self.seq[i])
        else:
            self.size += 1
        self.ts[i], self.seq[i] = ts, seq
        self.values[i], self.mean[i], self.std[i] = values, mean, std
        self.score[i], self.threshold[i], self.anomalous[i] = score, threshold, anomalous
        self.head = (i + 1) % self.capacity

    def _order(self) -> np.ndarray:
        if self.size < self.capacity:
            return np.arange(self.size)
        return np.concatenate([np.arange(self.head, self.capacity), np.arange(self.head)])

    def first_ts(self) -> float:
        """Timestamp of the oldest point still held (NaN when empty)."""
        if self.size == 0:
            return NAN
        return float(self.ts[0 if self.size < self.capacity else self.head])

    def select(self, start: float = -math.inf, end: float = math.inf,
               after_seq: int = -1) -> np.ndarray:
        """Ring indices, oldest first, of points with start <= ts <= end and seq > after_seq."""
        order = self._order()
        ts, seq = self.ts[order], self.seq[order]
        lo = max(int(np.searchsorted(ts, start, "left")), int(np.searchsorted(seq, after_seq, "right")))
        hi = int(np.searchsorted(ts, end, "right"))
        return order[lo:hi] if hi > lo else order[:0]

    def series(self, channels: tuple[str, ...], idx: np.ndarray) -> Series:
        nan_c = np.full((len(idx), len(channels)), NAN)
        return Series(
            channels=channels,
            ts=self.ts[idx],
            seq=self.seq[idx],
            values=self.values[idx].astype(float),
            low=nan_c,
            high=nan_c,
            mean=self.mean[idx].astype(float),
            std=self.std[idx].astype(float),
            score=self.score[idx].astype(float),
            threshold=self.threshold[idx].astype(float),
            anomalous=self.anomalous[idx],
            res=np.zeros(len(idx)),
        )


class Accumulator:
    """Running aggregate of one bucket in plain Python floats (cheap per point for few channels).

    Per channel: observed count, sum, min, max; forecast count, sum of means, sum of stds.
    """

    __slots__ = (
        "anomalous",
        "count",
        "fc_n",
        "hi",
        "lo",
        "mean_sum",
        "n",
        "score_max",
        "std_sum",
        "sum",
        "thr_n",
        "thr_sum",
    )

    def __init__(self, channels: int) -> None:
        self.n = [0] * channels
        self.sum = [0.0] * channels
        self.lo = [math.inf] * channels
        self.hi = [-math.inf] * channels
        self.fc_n = [0] * channels
        self.mean_sum = [0.0] * channels
        self.std_sum = [0.0] * channels
        self.count = 0
        self.score_max = -math.inf
        self.thr_sum = 0.0
        self.thr_n = 0
        self.anomalous = False

    def add(self, values: list[float], mean: list[float], std: list[float], score: float,
            threshold: float, anomalous: bool) -> None:
        for c, x in enumerate(values):
            if x == x:  # not NaN
                self.n[c] += 1
                self.sum[c] += x
                if x < self.lo[c]:
                    self.lo[c] = x
                if x > self.hi[c]:
                    self.hi[c] = x
            m = mean[c]
            if m == m:
                self.fc_n[c] += 1
                self.mean_sum[c] += m
                sd = std[c]
                if sd == sd:
                    self.std_sum[c] += sd
        self.count += 1
        if score > self.score_max:
            self.score_max = score
        if threshold == threshold:
            self.thr_sum += threshold
            self.thr_n += 1
        self.anomalous = self.anomalous or anomalous

    def merge(self, other: Accumulator) -> None:
        for c in range(len(self.n)):
            self.n[c] += other.n[c]
            self.sum[c] += other.sum[c]
            self.lo[c] = min(self.lo[c], other.lo[c])
            self.hi[c] = max(self.hi[c], other.hi[c])
            self.fc_n[c] += other.fc_n[c]
            self.mean_sum[c] += other.mean_sum[c]
            self.std_sum[c] += other.std_sum[c]
        self.count += other.count
        self.score_max = max(self.score_max, other.score_max)
        self.thr_sum += other.thr_sum
        self.thr_n += other.thr_n
        self.anomalous = self.anomalous or other.anomalous

    def columns(self) -> tuple[list[float], ...]:
        """low, high, observed mean, forecast mean, forecast std (NaN where nothing seen)."""
        low, high, obs, fc, sd = [], [], [], [], []
        for c, n in enumerate(self.n):
            low.append(self.lo[c] if n else NAN)
            high.append(self.hi[c] if n else NAN)
            obs.append(self.sum[c] / n if n else NAN)
            k = self.fc_n[c]
            fc.append(self.mean_sum[c] / k if k else NAN)
            sd.append(self.std_sum[c] / k if k else NAN)
        return low, high, obs, fc, sd

    def score(self) -> float:
        return self.score_max if self.score_max > -math.inf else NAN

    def threshold(self) -> float:
        return self.thr_sum / self.thr_n if self.thr_n else NAN


class BucketRing:
    """Fixed-width time buckets of one stream (one history tier).

    The bucket being filled is an ``Accumulator``, written to the ring when data of a
    later bucket arrives. The finest tier takes every point (``add``); each coarser tier
    takes the finer tier's closed buckets (``add_bucket``), so a point costs one
    accumulator update whatever the number of tiers. Queries include the open bucket.
    """

    def __init__(self, width_s: float, capacity: int, channels: int) -> None:
        self.width_s = width_s
        self.capacity = capacity
        self.channels = channels
        c = channels
        self.start = np.full(capacity, NAN)
        self.low = np.full((capacity, c), NAN, dtype=F4)
        self.high = np.full((capacity, c), NAN, dtype=F4)
        self.values = np.full((capacity, c), NAN, dtype=F4)
        self.mean = np.full((capacity, c), NAN, dtype=F4)
        self.std = np.full((capacity, c), NAN, dtype=F4)
        self.score = np.full(capacity, NAN, dtype=F4)
        self.threshold = np.full(capacity, NAN, dtype=F4)
        self.count = np.zeros(capacity, dtype=np.int32)
        self.anomalous = np.zeros(capacity, dtype=bool)
        self.head = 0
        self.size = 0
        self._bucket: int | None = None
        self._acc = Accumulator(c)

    def _roll(self, ts: float) -> tuple[float, Accumulator] | None:
        """Start the bucket of ``ts`` if it is a new one; returns the bucket it closed."""
        bucket = math.floor(ts / self.width_s)
        if bucket == self._bucket:
            return None
        closed = None
        if self._bucket is not None:
            closed = (self._bucket * self.width_s, self._acc)
            self._write(*closed)
            self._acc = Accumulator(self.channels)
        self._bucket = bucket
        return closed

    def add(self, ts: float, values: list[float], mean: list[float], std: list[float],
            score: float, threshold: float, anomalous: bool) -> tuple[float, Accumulator] | None:
        """Add one point; returns ``(start, accumulator)`` of a bucket this closed."""
        closed = self._roll(ts)
        self._acc.add(values, mean, std, score, threshold, anomalous)
        return closed

    def add_bucket(self, start: float, acc: Accumulator) -> tuple[float, Accumulator] | None:
        """Fold a finer tier's closed bucket in; returns a bucket of this tier it closed."""
        closed = self._roll(start)
        self._acc.merge(acc)
        return closed

    def _write(self, start: float, acc: Accumulator) -> None:
        i = self.head
        self.start[i] = start
        (self.low[i], self.high[i], self.values[i], self.mean[i],
         self.std[i]) = acc.columns()
        self.score[i], self.threshold[i] = acc.score(), acc.threshold()
        self.count[i], self.anomalous[i] = acc.count, acc.anomalous
        self.head = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def first_ts(self) -> float:
        """Start of the oldest bucket held, the open one included (NaN when empty)."""
        if self.size:
            return float(self.start[0 if self.size < self.capacity else self.head])
        return NAN if self._bucket is None else self._bucket * self.width_s

    def series(self, channels: tuple[str, ...], start: float, end: float) -> Series:
        """Buckets whose centre lies in [start, end], oldest first (open bucket last).

        A bucket is drawn at its centre, so its timestamp is ``start + width / 2``.
        """
        order = (np.arange(self.size) if self.size < self.capacity else
                 np.concatenate([np.arange(self.head, self.capacity), np.arange(self.head)]))
        half = self.width_s / 2
        centre = self.start[order] + half
        keep = order[(centre >= start) & (centre <= end)]
        cols: dict[str, list[np.ndarray]] = {
            "ts": [self.start[keep] + half], "low": [self.low[keep].astype(float)],
            "high": [self.high[keep].astype(float)], "values": [self.values[keep].astype(float)],
            "mean": [self.mean[keep].astype(float)], "std": [self.std[keep].astype(float)],
            "score": [self.score[keep].astype(float)],
            "threshold": [self.threshold[keep].astype(float)],
            "anomalous": [self.anomalous[keep]],
        }
        if self._bucket is not None and self._acc.count:
            b0 = self._bucket * self.width_s
            if start <= b0 + half <= end:
                low, high, obs, fc, sd = self._acc.columns()
                for name, value in (("ts", [b0 + half]), ("low", [low]), ("high", [high]),
                                    ("values", [obs]), ("mean", [fc]), ("std", [sd]),
                                    ("score", [self._acc.score()]),
                                    ("threshold", [self._acc.threshold()]),
                                    ("anomalous", [self._acc.anomalous])):
                    cols[name].append(np.asarray(value))
        joined = {name: np.concatenate(parts) for name, parts in cols.items()}
        n = len(joined["ts"])
        return Series(channels=channels, seq=np.full(n, -1, dtype=np.int64),
                      res=np.full(n, self.width_s), **joined)
