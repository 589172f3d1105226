"""Alert state machine per stream: debounce, extreme scores, update, quiet close, cooldown.

One ``AlertMachine`` per stream that has ever had something to say; plain Python, stepped
by the detector only for readings that are anomalous, hard-limited, or of a stream whose
machine is active (an open alert or anomalies still inside its m-of-n window), so a
normal stream costs nothing here.

Rules (``AlertConfig``, event time = reading timestamps, so a replay is identical):

- **Open** when m of the last n readings are anomalous (default 5 of 10), or after
  ``extreme_confirm`` consecutive extreme scores (default 1; 2 for ICU vitals), or when a
  hard limit has persisted (``hardlimits``). A single noisy reading never opens one.
  Onset = timestamp of the first anomalous reading still in the window (or the start of
  the hard-limit run, whichever is earlier); ``alert_id = alert_id_for(stream, onset)``,
  so the same data gives the same id, whether run in one go or resumed from a state dict.
- **Severity** ``critical`` when a hard limit is critical, a score was extreme, or the
  alert has lasted ``critical_after_s``; otherwise ``warning``. It only escalates.
- **Update** at once on escalation; on a materially higher peak at most every
  ``update_min_interval_s``.
- **Close** after ``quiet_s`` without an anomalous reading or hard-limit condition
  (``end_ts`` = last abnormal reading), or by the drift rule: a model alert that still
  meets its m-of-n condition ``accept_regime_after_s`` after onset, with no hard-limit
  condition on the current reading, closes as "regime change accepted" and the caller
  re-seeds the scorer for that stream (``step`` returns ``accepted=True``).
- **Cooldown**: no new alert for ``cooldown_s`` after a close, except a critical hard
  limit (a clinically critical value is never held back).

Every event carries an explanation: the hard-limit channels and the model's top channels
by channel score, observed vs the expected band (forecast mean +- ``band_k`` std), the
direction, the duration and a one-line summary. A hard-limit channel's direction is the
side of the limit it breached (SpO2 82 is "low" even when the forecast, having learned that
level, expects 82); a model channel's is observed vs forecast. A stream that stops sending readings keeps
its alert open (closing needs event time); the dashboard marks such a stream stale.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

from streamwatch.detect.config import AlertConfig, DriftConfig
from streamwatch.errors import CheckpointError
from streamwatch.kinds import NEWS2_NORMAL
from streamwatch.schema import Alert, ChannelExplanation, Explanation, alert_id_for

log = logging.getLogger(__name__)

WARNING, CRITICAL = 1, 2
_SEVERITY = {WARNING: "warning", CRITICAL: "critical"}

LimitSide = Callable[[str, float], Literal["low", "high"] | None]
"""(channel, value) -> the side of its hard limits the value lies on, None within them
(``HardLimitBank.direction``)."""


def _news2_side(channel: str, value: float) -> Literal["low", "high"] | None:
    """``LimitSide`` of the default NEWS2 normal ranges: for an alert restored into a
    detector whose hard limits are now off."""
    if channel not in NEWS2_NORMAL:
        return None
    lo, hi = NEWS2_NORMAL[channel]
    return "high" if value > hi else "low" if value < lo else None


class Snapshot(NamedTuple):
    """One reading as the explanation needs it (lists in the kind's channel order)."""

    ts: float
    score: float
    observed: list[float]  # NaN = missing
    mean: list[float]
    std: list[float]
    channel_scores: list[float]
    hard_limit_channels: list[str]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class AlertMachine:
    """The alert lifecycle of one stream (see the module docstring for the rules)."""

    __slots__ = (
        "alert_id", "anom", "channels", "closed_at", "config", "cooldown_until", "drift",
        "event_seq", "extreme_run", "hard", "hl_level", "hl_snap", "is_open", "kind",
        "last_abnormal", "last_update_ts", "limit_side", "model", "onset", "open_threshold",
        "peak", "peak_snap", "reported_peak", "reported_severity", "seq", "severity",
        "stream_id",
    )  # fmt: skip

    def __init__(self, stream_id: str, kind: str, channels: Sequence[str],
                 config: AlertConfig, drift: DriftConfig,
                 limit_side: LimitSide | None = None) -> None:  # fmt: skip
        self.stream_id, self.kind, self.channels = stream_id, kind, tuple(channels)
        self.config, self.drift = config, drift
        self.limit_side = limit_side or _news2_side
        self.seq = 0
        self.anom: deque[tuple[int, float]] = deque()
        self.extreme_run = 0
        self.cooldown_until = -math.inf
        self.closed_at = -math.inf
        self._reset_open()

    def _reset_open(self) -> None:
        self.is_open = False
        self.alert_id: str | None = None
        self.onset = self.last_abnormal = self.last_update_ts = math.nan
        self.peak = self.reported_peak = self.open_threshold = math.nan
        self.severity = self.reported_severity = self.hl_level = self.event_seq = 0
        self.model = self.hard = False
        self.peak_snap: Snapshot | None = None
        self.hl_snap: Snapshot | None = None

    @property
    def active(self) -> bool:
        """Whether the next reading of this stream must be stepped even if it is normal."""
        return self.is_open or bool(self.anom)

    def step(
        self,
        ts: float,
        score: float,
        threshold: float,
        anomalous: bool,
        extreme: bool,
        hl_level: int,
        hl_confirmed: int,
        hl_onset: float,
        snapshot: Callable[[], Snapshot],
        model_version: int,
    ) -> tuple[list[Alert], bool]:
        """Advance by one reading; returns the events it causes and whether the drift
        rule accepted a new regime (the caller then adapts the scorer for this stream)."""
        cfg = self.config
        self.seq += 1
        if anomalous:
            self.anom.append((self.seq, ts))
        while self.anom and self.anom[0][0] <= self.seq - cfg.persist_n:
            self.anom.popleft()
        self.extreme_run = self.extreme_run + 1 if extreme else 0
        if not self.is_open:
            return self._maybe_open(ts, score, threshold, extreme, hl_level, hl_confirmed,
                                    hl_onset, snapshot, model_version), False  # fmt: skip
        return self._step_open(ts, score, anomalous, extreme, hl_level, hl_confirmed,
                               snapshot, model_version)  # fmt: skip

    def _maybe_open(self, ts: float, score: float, threshold: float, extreme: bool,
                    hl_level: int, hl_confirmed: int, hl_onset: float,
                    snapshot: Callable[[], Snapshot], model_version: int) -> list[Alert]:  # fmt: skip
        cfg = self.config
        by_model = len(self.anom) >= cfg.persist_m or self.extreme_run >= cfg.extreme_confirm
        by_limit = hl_confirmed > 0
        if not (by_model or by_limit):
            return []
        if ts < self.cooldown_until and hl_confirmed < CRITICAL:
            return []
        onsets = ([self.anom[0][1]] if by_model and self.anom else []) + (
            [hl_onset] if by_limit and math.isfinite(hl_onset) else [])  # fmt: skip
        onset = min(onsets) if onsets else ts
        if onset <= self.closed_at:  # never reuse the onset (and id) of the previous alert
            onset = ts
        self.is_open, self.onset, self.last_abnormal = True, onset, ts
        self.alert_id = alert_id_for(self.stream_id, onset)
        self.model, self.hard = by_model, by_limit
        self.open_threshold = threshold
        self.peak = score if math.isfinite(score) else math.nan
        self.peak_snap = snap = snapshot()
        if hl_level > 0:
            self.hl_snap, self.hl_level = snap, hl_level
        self.severity = self._severity(ts, extreme, hl_confirmed)
        self.reported_peak, self.reported_severity, self.last_update_ts = self.peak, 0, ts
        return [self._event("open", ts, None, model_version)]

    def _step_open(self, ts: float, score: float, anomalous: bool, extreme: bool,
                   hl_level: int, hl_confirmed: int, snapshot: Callable[[], Snapshot],
                   model_version: int) -> tuple[list[Alert], bool]:  # fmt: skip
        cfg, drift = self.config, self.drift
        self.model |= anomalous
        self.hard |= hl_confirmed > 0
        if anomalous or hl_level > 0:
            self.last_abnormal = ts
        self.severity = max(self.severity, self._severity(ts, extreme, hl_confirmed))
        snap = None
        if math.isfinite(score) and not score <= self.peak:  # also when peak is NaN
            self.peak = score
            self.peak_snap = snap = snapshot()
        if hl_level > self.hl_level:
            self.hl_snap, self.hl_level = snap or snapshot(), hl_level
        if (
            drift.accept_regime
            and self.model
            and hl_level == 0
            and ts - self.onset >= drift.accept_regime_after_s
            and len(self.anom) >= cfg.persist_m
        ):
            return [self._close(ts, ts, model_version, regime=True)], True
        if not (anomalous or hl_level > 0) and ts - self.last_abnormal >= cfg.quiet_s:
            return [self._close(ts, self.last_abnormal, model_version, regime=False)], False
        if self.severity > self.reported_severity or (
            self._peak_is_material() and ts - self.last_update_ts >= cfg.update_min_interval_s
        ):
            return [self._event("update", ts, None, model_version)], False
        return [], False

    def _severity(self, ts: float, extreme: bool, hl_confirmed: int) -> int:
        if hl_confirmed >= CRITICAL or extreme or ts - self.onset >= self.config.critical_after_s:
            return CRITICAL
        return WARNING

    def _peak_is_material(self) -> bool:
        if not math.isfinite(self.peak):
            return False
        if not math.isfinite(self.reported_peak):
            return True
        ref = self.open_threshold if math.isfinite(self.open_threshold) else 0.0
        scale = max(abs(self.reported_peak - ref), 1e-9)
        return self.peak - self.reported_peak >= self.config.update_peak_ratio * scale

    def close_on_clock_reset(self, back_s: float, model_version: int) -> Alert:
        """Close the open alert of a stream whose clock stepped back by ``back_s`` seconds
        (its state starts afresh): at the last event time it reached, saying why. A
        condition that persists opens a new alert on the new clock."""
        ts = self.last_abnormal if math.isfinite(self.last_abnormal) else self.onset
        ts = max(ts, self.last_update_ts) if math.isfinite(self.last_update_ts) else ts
        return self._close(ts, ts, model_version, regime=False, clock_back_s=back_s)

    def _close(self, ts: float, end: float, model_version: int, *, regime: bool,
               clock_back_s: float | None = None) -> Alert:  # fmt: skip
        event = self._event("close", ts, end, model_version, regime=regime,
                            clock_back_s=clock_back_s)
        reason = ("regime_accepted" if regime else
                  "quiet" if clock_back_s is None else "clock_reset")  # fmt: skip
        log.info("alert closed stream=%s alert_id=%s reason=%s", self.stream_id,
                 self.alert_id, reason)
        self._reset_open()
        self.anom.clear()
        self.extreme_run = 0
        self.cooldown_until = ts + self.config.cooldown_s
        self.closed_at = ts
        return event

    def _event(self, event: str, ts: float, end: float | None, model_version: int,
               *, regime: bool = False, clock_back_s: float | None = None) -> Alert:  # fmt: skip
        assert self.alert_id is not None
        if event != "open":
            self.event_seq += 1
        self.reported_peak, self.reported_severity = self.peak, self.severity
        self.last_update_ts = ts
        if event == "open":
            log.info("alert opened stream=%s alert_id=%s severity=%s", self.stream_id,
                     self.alert_id, _SEVERITY[self.severity])  # fmt: skip
        return Alert(
            alert_id=self.alert_id,
            event=event,  # type: ignore[arg-type]
            stream_id=self.stream_id,
            kind=self.kind,
            ts=ts,
            onset_ts=self.onset,
            end_ts=end,
            severity=_SEVERITY[self.severity],  # type: ignore[arg-type]
            peak_score=self.peak if math.isfinite(self.peak) else 0.0,
            explanation=self.explain(ts if end is None else end, event, regime, clock_back_s),
            model_version=int(model_version),
            seq=self.event_seq,
        )

    # -- explanation -----------------------------------------------------------------
    def _channel(self, snap: Snapshot, c: int, *, hard: bool = False) -> ChannelExplanation:
        """One channel's explanation; ``hard``: a channel behind the hard-limit verdict,
        whose direction is the side of the limit it breached, not observed vs forecast
        (the forecast may have learned the abnormal level already)."""
        name = self.channels[c]
        observed, mean, std = snap.observed[c], snap.mean[c], snap.std[c]
        expected = _finite(mean)
        half = self.config.band_k * std if math.isfinite(std) and expected is not None else None
        lower = expected - half if half is not None and expected is not None else None
        upper = expected + half if half is not None and expected is not None else None
        direction: Any = None
        if not math.isfinite(observed):
            direction = "missing"
        elif hard and (side := self.limit_side(name, observed)) is not None:
            direction = side
        elif expected is not None:
            direction = "high" if observed > expected else "low"
        else:
            direction = _news2_side(name, observed)
        return ChannelExplanation(
            channel=name,
            observed=_finite(observed),
            expected=expected,
            lower=lower,
            upper=upper,
            score=_finite(snap.channel_scores[c]),
            direction=direction,
        )

    def explain(self, until: float, event: str = "open", regime: bool = False,
                clock_back_s: float | None = None) -> Explanation:
        """The explanation of the current alert, as of ``until``."""
        entries: list[ChannelExplanation] = []
        used: set[str] = set()
        if self.hard and self.hl_snap is not None:
            for name in self.hl_snap.hard_limit_channels:
                entries.append(self._channel(self.hl_snap, self.channels.index(name),
                                             hard=True))
                used.add(name)
        hard_names = frozenset(used)
        snap = self.peak_snap
        if snap is not None and (self.model or not entries):
            ranked = sorted(
                (c for c, s in enumerate(snap.channel_scores) if math.isfinite(s)),
                key=lambda c: -snap.channel_scores[c],
            )
            for c in ranked[: self.config.explain_top_k]:
                if self.channels[c] not in used:
                    entries.append(self._channel(snap, c))
                    used.add(self.channels[c])
        duration = max(0.0, until - self.onset)
        reasons: list[Any] = (["model"] if self.model else []) + (
            ["hard_limit"] if self.hard else [])  # fmt: skip
        return Explanation(
            summary=self._summary(entries, duration, event, regime, clock_back_s,
                                  hard=hard_names),
            channels=entries,
            duration_s=duration,
            reasons=reasons,
        )

    def _summary(self, entries: list[ChannelExplanation], duration: float, event: str,
                 regime: bool, clock_back_s: float | None = None,
                 hard: frozenset[str] = frozenset()) -> str:  # fmt: skip
        """One line. A hard-limit channel (``hard``) is set against its NEWS2 normal range:
        the forecast may have learned the abnormal level already ("spo2 low 82 (expected 82,
        ...)" told a clinician nothing)."""
        parts = []
        for e in entries[:4]:
            text = f"{e.channel} {e.direction or 'abnormal'}"
            if e.observed is not None:
                text += f" {_fmt(e.observed)}"
            if e.channel in hard and e.channel in NEWS2_NORMAL:
                lo, hi = NEWS2_NORMAL[e.channel]
                text += f" (normal {_fmt(lo)}-{_fmt(hi)})"
            elif e.expected is not None:
                band = (f", band {_fmt(e.lower)}-{_fmt(e.upper)}"
                        if e.lower is not None and e.upper is not None else "")  # fmt: skip
                text += f" (expected {_fmt(e.expected)}{band})"
            parts.append(text)
        what = "; ".join(parts) or "anomalous score"
        if self.hard and self.hl_snap is not None:
            what += f"; NEWS2 {_SEVERITY.get(self.hl_level, 'warning')} limit"
        if regime:
            return f"regime change accepted after {_duration(duration)}: {what}"
        if clock_back_s is not None:
            return (f"closed after {_duration(duration)}: the stream's clock stepped back "
                    f"{_duration(clock_back_s)}, its state starts afresh: {what}")
        if event == "close":
            return f"resolved after {_duration(duration)}: {what}"
        return f"{_SEVERITY[self.severity]} for {_duration(duration)}: {what}"

    # -- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in _PLAIN}
        state["anom"] = [list(a) for a in self.anom]
        state["peak_snap"] = list(self.peak_snap) if self.peak_snap is not None else None
        state["hl_snap"] = list(self.hl_snap) if self.hl_snap is not None else None
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            for name in _PLAIN:
                setattr(self, name, state[name])
            self.anom = deque((int(s), float(t)) for s, t in state["anom"])
            self.peak_snap = Snapshot(*state["peak_snap"]) if state["peak_snap"] else None
            self.hl_snap = Snapshot(*state["hl_snap"]) if state["hl_snap"] else None
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"alert state of stream {self.stream_id!r} is unusable: "
                                  f"{exc!r}") from exc  # fmt: skip


_PLAIN = (
    "seq", "extreme_run", "cooldown_until", "closed_at", "is_open", "alert_id", "onset",
    "last_abnormal", "last_update_ts", "peak", "reported_peak", "open_threshold",
    "severity", "reported_severity", "hl_level", "event_seq", "model", "hard",
)  # fmt: skip


class AlertBook:
    """The alert machines of one kind's streams, created on first need."""

    def __init__(self, kind: str, channels: Sequence[str], config: AlertConfig,
                 drift: DriftConfig, limit_side: LimitSide | None = None) -> None:  # fmt: skip
        self.kind, self.channels = kind, tuple(channels)
        self.config, self.drift = config, drift
        self.limit_side = limit_side
        self.machines: dict[str, AlertMachine] = {}

    def machine(self, stream_id: str) -> AlertMachine:
        m = self.machines.get(stream_id)
        if m is None:
            m = self.machines[stream_id] = AlertMachine(
                stream_id, self.kind, self.channels, self.config, self.drift,
                self.limit_side)  # fmt: skip
        return m

    def open_count(self) -> int:
        return sum(m.is_open for m in self.machines.values())

    def state_dict(self) -> dict[str, Any]:
        return {"machines": {sid: m.state_dict() for sid, m in self.machines.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.machines.clear()
        self.import_streams(state)

    def export_streams(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        return {"machines": {s: self.machines[s].state_dict() for s in stream_ids
                             if s in self.machines}}  # fmt: skip

    def import_streams(self, state: dict[str, Any]) -> None:
        if "machines" not in state:
            raise CheckpointError("alert state lacks 'machines'")
        for sid, machine_state in state["machines"].items():
            self.machine(sid).load_state_dict(machine_state)

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        for sid in stream_ids:
            self.machines.pop(sid, None)
