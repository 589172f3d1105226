"""Configuration of the online forecaster: one frozen, validated settings object.

Every field has a range; an out-of-range value raises ``ConfigError`` naming the field
and the allowed range (pydantic's own ``ValidationError`` is translated by
``ModelConfig.build``; constructing ``ModelConfig(...)`` directly raises pydantic's
error, whose message also names the field and the bound).

Training cost per learned reading is bounded by ``batch_size * window / train_every``
recurrent cell evaluations (forward and backward): one optimiser step on ``batch_size``
windows of ``window`` steps every ``train_every`` learned readings. Measured here (one
thread, GRU, hidden 32, 128 windows x 32 steps): ~13 ms per step, so ~50 us per learned
reading at the defaults; a high-throughput service raises ``train_every`` (e.g. 2048).

>>> cfg = ModelConfig(hidden_size=16, window=8)
>>> cfg.cell, cfg.hidden_size, cfg.window
('gru', 16, 8)
>>> ModelConfig.build(cell="lstm", burn_in=64)
Traceback (most recent call last):
...
streamwatch.errors.ConfigError: model config: burn_in=64 must be in [0, window-2=30]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamwatch.errors import ConfigError
from streamwatch.kinds import MACHINE

Cell = Literal["gru", "lstm"]


def _describe(err: Any) -> str:
    loc = ".".join(str(part) for part in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


class ModelConfig(BaseModel):
    """Settings of the per-kind forecaster, its online trainer and per-stream state.

    Parameters
    ----------
    cell
        Recurrent cell: ``"gru"`` (default) or ``"lstm"``.
    layers
        Stacked recurrent layers, 1-4.
    hidden_size
        Units per layer, 2-1024.
    dropout
        Dropout between stacked layers during training only, [0, 0.9].
    window
        Truncated-BPTT length: training steps per replayed window, 2-1024. The per-stream
        recent window holds ``window + 1`` readings (inputs plus the next-step targets).
    burn_in
        Leading steps of a training window that only warm the hidden state (which starts
        at zero) and carry no loss, [0, window-2].
    batch_size
        Windows per optimiser step, 1-4096.
    train_every
        Learned readings (summed over all streams) per optimiser step, >= 1.
    replay_capacity
        Windows kept in the replay buffer (oldest replaced first), >= 1.
    replay_every
        A stream adds the window ending at its reading to the replay buffer on every
        ``replay_every``-th learned reading (consecutive windows overlap almost entirely;
        taking every one only costs copying), >= 1.
    lr
        Adam learning rate, (0, 1].
    weight_decay
        Adam L2 penalty, [0, 1).
    grad_clip
        Maximum global gradient norm, > 0.
    norm_halflife
        Half-life, in learned readings, of the per-stream exponentially weighted mean and
        variance used to normalise each channel, >= 1.
    warmup
        Readings a stream must have seen before its scores are trusted and before its
        windows enter the replay buffer, >= 0.
    min_std
        Absolute floor of the normaliser's standard deviation, > 0.
    rel_min_std
        Floor of the normaliser's standard deviation relative to ``|mean|``, >= 0.
    min_variance
        Floor of the forecast variance in normalised units (the Gaussian head), > 0.
    input_clip
        Normalised inputs and training targets are clipped to ``[-input_clip, input_clip]``
        (scores use the unclipped value), > 0.
    max_gap_s
        Time gaps longer than this (seconds) are clipped before the gap feature
        ``log1p(gap) / log1p(max_gap_s)`` is formed, > 0.
    level_score
        Also score each reading against its stream's baseline (normaliser mean and std)
        and report the larger surprise; catches changes slow enough per step for the
        one-step forecast to follow them (see ``streamwatch.detect.forecast_scorer``).
    season_s
        Period of a known seasonality in seconds (e.g. 86400 for a daily pattern), 0 = off
        (default). When on, each stream keeps a profile of its learned values over the
        period in ``season_bins`` phase bins, and every step also gets the profile's change
        from this phase to the next step's phase (the seasonal-naive forecast of the next
        change), the profile level at the next phase and a mask; a learnable per-channel
        gain adds that change to the forecast mean (see ``streamwatch.model.forecaster``).
        Anomalous readings never enter the profile, as they never enter training.
    season_bins
        Phase bins of the seasonal profile, 2-100000 (``season_s / season_bins`` seconds
        each; 288 = 5-minute bins of a day).
    season_alpha
        Weight of a new value in its phase bin of the profile, (0, 1] (1 = the latest
        value; 0.5 blends the last periods, damping noise).
    kind_overrides
        Per stream kind, fields of these settings that differ for that kind (applied by
        ``for_kind``; ``ForecastScorer`` does it for its kind). Default: machines score
        without the level term, since a machine's channels follow its load, whose level
        moves on its own (day shifts, a 30-minute process): against a 17-minute baseline
        that is a surprise in normal operation.
    seed
        Seed of parameter initialisation, dropout and replay sampling, >= 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cell: Cell = "gru"
    layers: int = Field(default=1, ge=1, le=4)
    hidden_size: int = Field(default=32, ge=2, le=1024)
    dropout: float = Field(default=0.0, ge=0.0, le=0.9)
    window: int = Field(default=32, ge=2, le=1024)
    burn_in: int = Field(default=4, ge=0)
    batch_size: int = Field(default=128, ge=1, le=4096)
    train_every: int = Field(default=256, ge=1)
    replay_capacity: int = Field(default=4096, ge=1)
    replay_every: int = Field(default=4, ge=1)
    lr: float = Field(default=3e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    grad_clip: float = Field(default=1.0, gt=0.0)
    norm_halflife: float = Field(default=1000.0, ge=1.0)
    warmup: int = Field(default=30, ge=0)
    min_std: float = Field(default=1e-6, gt=0.0)
    rel_min_std: float = Field(default=1e-4, ge=0.0)
    min_variance: float = Field(default=1e-4, gt=0.0)
    input_clip: float = Field(default=10.0, gt=0.0)
    max_gap_s: float = Field(default=3600.0, gt=0.0)
    level_score: bool = True
    season_s: float = Field(default=0.0, ge=0.0)
    season_bins: int = Field(default=288, ge=2, le=100_000)
    season_alpha: float = Field(default=0.5, gt=0.0, le=1.0)
    kind_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {MACHINE: {"level_score": False}})
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _check_cross_field(self) -> ModelConfig:
        if self.burn_in > self.window - 2:
            raise ValueError(
                f"burn_in={self.burn_in} must be in [0, window-2={self.window - 2}]"
            )
        for kind, fields in self.kind_overrides.items():
            if "kind_overrides" in fields:
                raise ValueError(f"kind_overrides.{kind} cannot hold kind_overrides")
            try:
                self.for_kind(kind)
            except ConfigError as exc:
                raise ValueError(f"kind_overrides.{kind}: {exc}") from None
        return self

    def for_kind(self, kind: str) -> ModelConfig:
        """The effective settings of ``kind``: ``kind_overrides[kind]`` applied, and no
        overrides left (so the result describes one kind's model exactly)."""
        fields = self.kind_overrides.get(kind)
        if not fields and not self.kind_overrides:
            return self
        return ModelConfig.build(**{**self.model_dump(), **(fields or {}), "kind_overrides": {}})

    @classmethod
    def build(cls, **fields: Any) -> ModelConfig:
        """Construct, turning validation failures into one ``ConfigError``."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            problems = "; ".join(_describe(err) for err in exc.errors())
            raise ConfigError(f"model config: {problems}") from None

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ModelConfig:
        """Rebuild from ``model_dump()`` output (e.g. a checkpoint)."""
        return cls.build(**dict(fields))

    @property
    def state_layers(self) -> int:
        """Tensors of recurrent state per layer: 1 for GRU (h), 2 for LSTM (h, c)."""
        return 2 if self.cell == "lstm" else 1

    @property
    def seasonal(self) -> bool:
        """True when the seasonal inputs are on (``season_s > 0``)."""
        return self.season_s > 0.0
