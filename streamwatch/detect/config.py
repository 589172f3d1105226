"""Settings of the detection layer: thresholds, clinical hard limits, alerts, drift.

One frozen pydantic model, ``DetectorConfig``, nests the settings of each part. It is a
plain ``BaseModel`` (not ``BaseSettings``) so that the service's settings object can nest
it and read it from ``STREAMWATCH_DETECTOR__...`` environment variables or a config file.

>>> cfg = DetectorConfig()
>>> cfg.thresholds.risk, cfg.alerts.persist_m, cfg.alerts.persist_n
(0.0001, 5, 10)
>>> cfg.alerts_for("icu_vitals").extreme_confirm, cfg.alerts_for("machine").extreme_confirm
(2, 1)
>>> DetectorConfig(thresholds={"risk": 0.5})
Traceback (most recent call last):
...
streamwatch.errors.ConfigError: thresholds.risk: Input should be less than 0.01 (got 0.5)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamwatch.errors import ConfigError
from streamwatch.kinds import ICU, MACHINE, NEWS2_BANDS

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ThresholdConfig(BaseModel):
    """Adaptive per-stream threshold: SPOT, peaks over threshold (Siffer et al., KDD 2017)."""

    model_config = _FROZEN

    risk: float = Field(
        default=1e-4,
        gt=0,
        lt=0.01,
        description="Risk q: probability that a normal "
        "score exceeds the threshold (one false exceedance per 1/q readings).",
    )
    warmup: int = Field(
        default=300,
        ge=20,
        le=100_000,
        description="Scores collected before the "
        "first fit; the threshold is NaN (no model alert) until then.",
    )
    init_quantile: float = Field(
        default=0.98,
        gt=0.5,
        lt=1.0,
        description="Empirical quantile of the warm-up scores used as the tail's base level t.",
    )
    max_peaks: int = Field(
        default=250,
        ge=10,
        le=100_000,
        description="Peaks (excesses over t) "
        "kept per stream; older ones are forgotten (bounded memory).",
    )
    refit_every: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Refit the Generalised Pareto tail every this many new peaks.",
    )
    estimator: Literal["mle", "mom"] = Field(
        default="mle",
        description="'mle': profile likelihood (Grimshaw's reparametrisation); 'mom': moments.",
    )
    min_peaks_gpd: int = Field(
        default=30,
        ge=2,
        description="With fewer peaks the tail is fitted as "
        "exponential (shape 0), the numerically safe choice.",
    )
    min_scale: float = Field(default=1e-9, gt=0, description="Floor of the tail's scale parameter.")
    burst_window: int = Field(
        default=50,
        ge=10,
        le=63,
        description="Burst guard: look at the peaks among this many latest observations.",
    )
    burst_peaks: int = Field(
        default=12,
        ge=2,
        description="With at least this many peaks in the window (1 expected at the default "
        "0.98 level), peaks come far faster than the tail allows: an anomaly hovering near "
        "the bar, not tail data. They are not learned, so the bar cannot climb away from "
        "the anomaly.",
    )
    burst_pause_scorer: int = Field(
        default=25,
        ge=2,
        description="With at least this many peaks in the window (half of it: a sustained "
        "run of unusual scores), the scorer stops learning from the stream too. Higher than "
        "burst_peaks: pausing the model on mild bursts keeps it from following normal "
        "physiological drift.",
    )
    burst_patience: int = Field(
        default=1800,
        ge=0,
        description="A burst lasting longer than this many observations is a lasting change: "
        "its peaks are learned again.",
    )

    @model_validator(mode="after")
    def _check(self) -> ThresholdConfig:
        if self.warmup * (1.0 - self.init_quantile) < 1.0:
            raise ValueError(
                f"warmup * (1 - init_quantile) must be >= 1 to leave at least one peak; "
                f"got {self.warmup} * {1 - self.init_quantile:.4g}"
            )
        if self.risk >= 1.0 - self.init_quantile:
            raise ValueError(f"risk must be below 1 - init_quantile = {1 - self.init_quantile:.4g}")
        if self.burst_pause_scorer < self.burst_peaks:
            raise ValueError("burst_pause_scorer must be >= burst_peaks")
        return self


class AlertConfig(BaseModel):
    """Alert state machine: debounce (m of n), extreme scores, quiet close, cooldown."""

    model_config = _FROZEN

    persist_m: int = Field(default=5, ge=1, le=1000, description="Open when at least m ...")
    persist_n: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="... of the last n readings are anomalous (at 1 Hz: 5 of 10 s).",
    )
    extreme_factor: float = Field(
        default=3.0,
        gt=1.0,
        le=1000.0,
        description="A score is extreme "
        "when its excess over the tail level t is this many times the "
        "threshold's: score > t + factor * (threshold - t).",
    )
    extreme_confirm: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Consecutive extreme readings "
        "that open an alert at once (1 = a single extreme score).",
    )
    quiet_s: float = Field(
        default=60.0,
        ge=0,
        description="Close after this long with no anomalous "
        "reading and no hard-limit condition (event time).",
    )
    cooldown_s: float = Field(
        default=120.0,
        ge=0,
        description="After a close, no new alert for the "
        "stream for this long, except a critical hard limit.",
    )
    update_min_interval_s: float = Field(
        default=60.0, ge=0, description="Minimum time between 'update' events for a higher peak."
    )
    update_peak_ratio: float = Field(
        default=0.5,
        gt=0,
        description="A peak is a material change when "
        "it exceeds the last reported peak by this fraction of "
        "the reported excess over the threshold.",
    )
    critical_after_s: float = Field(
        default=600.0, gt=0, description="An alert lasting this long becomes critical."
    )
    explain_top_k: int = Field(
        default=3, ge=1, le=64, description="Channels named in an explanation."
    )
    band_k: float = Field(
        default=3.0, gt=0, description="Expected band = forecast mean +- k * std."
    )
    observe_during_alert: bool = Field(
        default=False,
        description="Feed readings that are anomalous or inside an open alert to the "
        "forecaster's recurrent state (never to training, the normaliser or the "
        "thresholds): the forecast then follows the stream, and the alert closes once its "
        "short-term behaviour is normal again. Off (default): they are fed as missing, so "
        "the alert lasts while the stream stays away from the model's normal.",
    )

    @model_validator(mode="after")
    def _check(self) -> AlertConfig:
        if self.persist_m > self.persist_n:
            raise ValueError(
                f"persist_m must be <= persist_n (got {self.persist_m} > {self.persist_n})"
            )
        return self


# Monitor-style single-channel critical limits (strictly below low / above high). NEWS2
# gives 3 points well before these; on an ICU a value this far out is an emergency on its
# own, whatever the other vitals show.
DEFAULT_CRITICAL_LIMITS: dict[str, tuple[float | None, float | None]] = {
    "hr": (40.0, 150.0),
    "spo2": (85.0, None),
    "rr": (6.0, 35.0),
    "sbp": (80.0, 240.0),
    "temp": (34.0, 41.0),
}


# Monitor-style single-channel warning limits (strictly below low / above high), e.g.
# {"hr": (50.0, 120.0)}: a sustained HR of 45 scores 1 NEWS2 point only. Off by default:
# the model already flags deviations from each patient's own baseline, while absolute
# yellow limits alarm all day for a patient whose normal HR is 46 (measured: the one
# hard-limit false alert of a 5-patient, 12 h scenario, seed 2).
DEFAULT_WARNING_LIMITS: dict[str, tuple[float | None, float | None]] = {}


class HardLimitConfig(BaseModel):
    """NEWS2-style clinical hard limits for vital-sign kinds (see ``hardlimits``)."""

    model_config = _FROZEN

    enabled: bool = True
    kinds: tuple[str, ...] = (ICU,)
    bands: dict[str, tuple[tuple[float, int], ...]] = Field(
        default_factory=lambda: dict(NEWS2_BANDS),
        description="Per channel: (upper bound inclusive, points), first bound >= value wins.",
    )
    warning_points: int = Field(
        default=3,
        ge=1,
        le=3,
        description="One channel with at least this many points ('red score') is a warning.",
    )
    warning_aggregate: int = Field(
        default=5,
        ge=1,
        le=21,
        description="Aggregate NEWS2 >= this is a warning (urgent response).",
    )
    critical_aggregate: int = Field(
        default=7,
        ge=1,
        le=21,
        description="Aggregate NEWS2 >= this is critical (emergency response).",
    )
    critical_limits: dict[str, tuple[float | None, float | None]] = Field(
        default_factory=lambda: dict(DEFAULT_CRITICAL_LIMITS)
    )
    warning_limits: dict[str, tuple[float | None, float | None]] = Field(
        default_factory=lambda: dict(DEFAULT_WARNING_LIMITS)
    )
    persist_s: float = Field(
        default=30.0,
        ge=0,
        description="A warning condition must hold this long "
        "(first to latest reading of the run) before it alerts.",
    )
    critical_persist_s: float = Field(
        default=15.0, ge=0, description="Same for a critical condition."
    )
    min_readings: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="... and over at least this many readings, so one reading never alerts.",
    )
    probe_off_zero: tuple[str, ...] = Field(
        default=("spo2",),
        description="Channels whose value of exactly 0 is a detached probe: treated as missing.",
    )

    @model_validator(mode="after")
    def _check(self) -> HardLimitConfig:
        if self.critical_aggregate < self.warning_aggregate:
            raise ValueError("critical_aggregate must be >= warning_aggregate")
        for channel, bands in self.bands.items():
            bounds = [b for b, _ in bands]
            if not bands or bounds != sorted(bounds) or bounds[-1] != float("inf"):
                raise ValueError(f"bands.{channel}: bounds must increase and end with inf")
        return self


class DriftConfig(BaseModel):
    """Accepting a lasting change of regime instead of alerting forever."""

    model_config = _FROZEN

    accept_regime: bool = True
    accept_regime_after_s: float = Field(
        default=1800.0,
        gt=0,
        description="A model-based alert still "
        "persisting this long after onset is closed as "
        "'regime change accepted' and the scorer adapts.",
    )


_DEFAULT_ALERT_OVERRIDES: dict[str, dict[str, Any]] = {
    ICU: {"extreme_confirm": 2},
    MACHINE: {"observe_during_alert": True},
}


class DetectorConfig(BaseModel):
    """Everything the detection engine needs besides the scorer itself."""

    model_config = _FROZEN

    warmup_readings: int = Field(
        default=60,
        ge=0,
        le=1_000_000,
        description="Readings of a stream "
        "before its scores feed the threshold; no model-based alert "
        "before this plus the threshold warm-up.",
    )
    unknown_channels: Literal["reject", "ignore"] = Field(
        default="reject",
        description="A channel the kind does not have: refuse the reading, or ignore it (counted).",
    )
    thresholds: ThresholdConfig = Field(default_factory=lambda: ThresholdConfig())
    alerts: AlertConfig = Field(default_factory=lambda: AlertConfig())
    alert_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in _DEFAULT_ALERT_OVERRIDES.items()},
        description="Per kind, fields of 'alerts' to override. ICU default: an extreme score "
        "must be confirmed by the next reading (a 1-sample alarm delay against "
        "single-sample artefacts). Machines: observe_during_alert (a machine's channels "
        "follow its load, which moves on its own: with the readings fed as missing, the "
        "free-running forecast lost the load and a false alarm lasted until the regime "
        "bound; evaluate sensors, seed 1: 10.9 -> 0.4 false alerts per machine-day).",
    )
    hard_limits: HardLimitConfig = Field(default_factory=lambda: HardLimitConfig())
    drift: DriftConfig = Field(default_factory=lambda: DriftConfig())
    clock_reset_s: float = Field(
        default=300.0, gt=0, description="A reading this many seconds or more before its "
        "stream's latest is a clock that stepped back (a device reset, a replaced monitor), "
        "not a late reading: the stream starts afresh (an open alert is closed, saying so) "
        "so that its readings are stepped again, hard limits included, instead of being "
        "scored but ignored as late until event time catches up. It takes "
        "clock_reset_after such readings in a row: one stale reading is only late.")
    clock_reset_after: int = Field(default=3, ge=1, le=1000)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @model_validator(mode="after")
    def _check(self) -> DetectorConfig:
        for kind in self.alert_overrides:
            self.alerts_for(kind)
        return self

    def alerts_for(self, kind: str) -> AlertConfig:
        """The alert settings of ``kind``: ``alerts`` with that kind's overrides applied."""
        override = self.alert_overrides.get(kind)
        if not override:
            return self.alerts
        try:
            return AlertConfig(**{**self.alerts.model_dump(), **override})
        except ValidationError as exc:
            raise _config_error(exc, prefix=f"alert_overrides.{kind}") from None


def _config_error(exc: ValidationError, prefix: str = "") -> ConfigError:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        got = (
            f" (got {err['input']!r})"
            if "input" in err and not isinstance(err["input"], dict)
            else ""
        )
        parts.append(f"{loc}: {err['msg']}{got}" if loc else f"{err['msg']}")
    return ConfigError("; ".join(parts))
