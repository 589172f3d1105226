"""Data for ``streamwatch bench dashboard``: Score, Alert and Health records of ICU beds.

Values come from :class:`simulators.icu.IcuSimulator` arrays (episodes and artefacts
included). The detector's forecast is stood in for by an online exponentially weighted
mean and variance per stream and channel (the forecast for step ``t`` uses steps before
``t`` only), so the forecast band follows the signal and episodes or spikes score high:
``channel score = z**2 / 2``, ``score`` = the largest channel score, a fixed threshold
per stream. These records have every field the dashboard reads, at the detector's rate.

>>> maker = ScoreMaker(["icu/bed-01"], ("hr", "spo2"), "icu_vitals", [[80.0, 97.0]])
>>> s = maker.step(1000.0, [[81.0, float("nan")]])[0]
>>> s.values, round(s.forecast["hr"].mean, 1), s.channel_scores["spo2"]
({'hr': 81.0, 'spo2': None}, 80.0, None)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from streamwatch.schema import (
    Alert,
    ChannelExplanation,
    ChannelForecast,
    Explanation,
    Health,
    Score,
    alert_id_for,
)

log = logging.getLogger(__name__)

#: Typical beat-to-beat spread per ICU channel (hr, spo2, rr, sbp, dbp, map, temp); the
#: forecast std never falls below half of it (monitors round to integers).
_BASE_STD = {"hr": 3.0, "spo2": 1.0, "rr": 1.5, "sbp": 6.0, "dbp": 4.0, "map": 4.0,
             "temp": 0.1}
_ALPHA = 0.05
DETECTOR_ID = "bench-detector-1"


class ScoreMaker:
    """Turns one simulated step (``rows[s]`` = channel values of stream ``s``) into Scores.

    Parameters
    ----------
    stream_ids, channels, kind
        Streams in row order, channel order of a row, and their kind.
    first
        Values of the step before the first one (the forecasts start there).
    seed
        Draws each stream's threshold in [6, 10].
    """

    def __init__(self, stream_ids: Sequence[str], channels: Sequence[str], kind: str,
                 first: Any, seed: int = 0) -> None:
        self.stream_ids = list(stream_ids)
        self.channels = tuple(channels)
        self.kind = kind
        base = np.array([_BASE_STD.get(c, 1.0) for c in self.channels])
        self._floor = (base / 2) ** 2
        self.mean = np.nan_to_num(np.asarray(first, dtype=np.float64), nan=0.0)
        self.var = np.broadcast_to(base**2, self.mean.shape).copy()
        rng = np.random.default_rng(seed)
        self.threshold = rng.uniform(6.0, 10.0, len(self.stream_ids)).round(2).tolist()

    def step(self, ts: float, rows: Any) -> list[Score]:
        """Scores of every stream at ``ts`` (NaN values become null); then learn the step."""
        x = np.asarray(rows, dtype=np.float64)
        mean, std = self.mean, np.sqrt(self.var)
        z = (x - mean) / std
        ch = 0.5 * z * z
        seen = ~np.isnan(x)
        score = np.where(seen, ch, -np.inf).max(axis=1)
        score = np.where(np.isfinite(score), score, 0.0)
        out = []
        chans, kind, thr = self.channels, self.kind, self.threshold
        for s, (sid, v, m, sd, c) in enumerate(zip(self.stream_ids, x.tolist(), mean.tolist(),
                                                   std.tolist(), ch.tolist(), strict=True)):
            values = {k: (None if a != a else a) for k, a in zip(chans, v, strict=True)}
            out.append(Score(
                stream_id=sid, kind=kind, ts=ts, values=values,
                forecast={k: ChannelForecast(mean=a, std=b)
                          for k, a, b in zip(chans, m, sd, strict=True)},
                channel_scores={k: (None if a != a else a) for k, a in zip(chans, c, strict=True)},
                score=float(score[s]), threshold=thr[s], anomalous=bool(score[s] > thr[s]),
                warming_up=False, model="gru", model_version=1))
        d = np.where(seen, x - mean, 0.0)
        self.mean = mean + _ALPHA * d
        self.var = np.maximum(np.where(seen, (1 - _ALPHA) * (self.var + _ALPHA * d * d),
                                       self.var), self._floor)
        return out


def alert(stream_id: str, onset: float, ts: float, event: str, severity: str,
          seq: int) -> Alert:
    """One lifecycle event of a desaturation-like alert (``close`` ends at ``ts``)."""
    return Alert(
        alert_id=alert_id_for(stream_id, onset), event=event,  # type: ignore[arg-type]
        stream_id=stream_id, kind="icu_vitals", ts=ts, onset_ts=onset,
        end_ts=ts if event == "close" else None, severity=severity,  # type: ignore[arg-type]
        peak_score=14.0,
        explanation=Explanation(
            summary="SpO2 low, RR high", duration_s=ts - onset, reasons=["model"],
            channels=[ChannelExplanation(channel="spo2", observed=86.0, expected=97.0,
                                         lower=95.0, upper=99.0, score=14.0, direction="low"),
                      ChannelExplanation(channel="rr", observed=27.0, expected=16.0,
                                         lower=12.0, upper=20.0, score=9.0, direction="high")]),
        model_version=1, seq=seq)


def health(ts: float, streams: int, step: int, open_alerts: int) -> Health:
    """The detector's periodic health record, as it reports at ``streams`` readings/s."""
    return Health(detector_id=DETECTOR_ID, ts=ts, readings_per_s=float(streams),
                  consumer_lag=int(streams * 0.2), training_loss=0.8 + 0.2 / (1 + step / 600),
                  training_steps=step * streams // 256, dead_letters={"schema": 3, "non_finite": 1},
                  open_alerts=open_alerts, streams=streams, batch_latency_ms=12.5)


class AlertPlan:
    """Alert events of the run: a few streams alerting in the history, more during the run.

    ``alerting`` streams (``selected`` among them) each get one closed warning alert and
    one open alert (critical for the selected stream and every third other) in the
    history; during the run a new alert opens every 5 s on the next quiet stream and the
    oldest open one (never the selected stream's) closes every 7 s.
    """

    def __init__(self, stream_ids: Sequence[str], selected: int, seed: int) -> None:
        rng = np.random.default_rng(seed + 7)
        n = len(stream_ids)
        count = max(2, n // 50)
        others = [int(i) for i in rng.permutation(n) if i != selected]
        self.ids = list(stream_ids)
        self.selected = selected
        self.alerting = [selected, *others[:count - 1]]
        self.quiet = others[count - 1:]
        self.open: dict[int, tuple[float, str]] = {}  # stream -> (onset, severity)

    def history(self, start_ts: float, end_ts: float) -> list[Alert]:
        """Events to load before the run (time order), history spans [start_ts, end_ts)."""
        span = end_ts - start_ts
        events = []
        for j, s in enumerate(self.alerting):
            sid = self.ids[s]
            t0 = start_ts + span * 0.1
            events += [alert(sid, t0, t0 + 1, "open", "warning", 0),
                       alert(sid, t0, t0 + span * 0.1, "close", "warning", 1)]
            onset = end_ts - min(300.0, span / 3) - j % 60
            severity = "critical" if s == self.selected or j % 3 == 0 else "warning"
            events.append(alert(sid, onset, onset + 1, "open", severity, 0))
            self.open[s] = (onset, severity)
        return sorted(events, key=lambda a: a.ts)

    def at(self, k: int, ts: float) -> list[Alert]:
        """Events at run second ``k`` (simulated time ``ts``)."""
        events = []
        if k % 5 == 0 and self.quiet:
            s = self.quiet.pop(0)
            severity = "critical" if k % 10 else "warning"
            self.open[s] = (ts, severity)
            events.append(alert(self.ids[s], ts, ts, "open", severity, 0))
        closable = [s for s in self.open if s != self.selected]
        if k % 7 == 6 and closable:
            s = closable[0]
            onset, severity = self.open.pop(s)
            events.append(alert(self.ids[s], onset, ts, "close", severity, 1))
        return events
