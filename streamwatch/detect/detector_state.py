"""State of the detection engine: the per-kind holder and checkpoint / hand-over methods.

Split from ``detector`` to keep modules small. ``StreamDetector`` inherits
``DetectorState``; see ``streamwatch.detect.detector`` for what the state covers.

State dicts hold torch tensors, lists and numbers only (``torch.load(weights_only=True)``).
They may share tensors with the live detector (a scorer's optimiser state, as torch's
``state_dict`` does): serialise a state dict before processing more readings or before
loading it into a second detector.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from streamwatch.alerts import AlertBook
from streamwatch.detect.base import Scorer
from streamwatch.detect.config import DetectorConfig
from streamwatch.detect.hardlimits import HardLimitBank
from streamwatch.detect.slots import SlotTable
from streamwatch.detect.thresholds import ThresholdBank
from streamwatch.errors import CheckpointError, SchemaError
from streamwatch.kinds import KindSpec
from streamwatch.schema import ScoreEncoder

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "streamwatch.detector", 1
COUNTERS = (
    "readings", "anomalous", "warming_up", "hard_limit_readings", "late_readings",
    "duplicate_readings", "unscored_readings", "ignored_channels", "alerts_opened",
    "alerts_updated", "alerts_closed", "regimes_accepted", "burst_readings", "clock_resets",
)  # fmt: skip


def _one_channel(channel: str) -> Callable[[Mapping[str, float | None]], tuple[float | None]]:
    """``itemgetter`` of one key returns the value, not a 1-tuple: this returns the tuple."""
    return lambda values: (values[channel],)


class KindState:
    """Everything the detector keeps for one kind."""

    def __init__(self, spec: KindSpec, scorer: Scorer, config: DetectorConfig) -> None:
        self.spec, self.scorer = spec, scorer
        self.channel_set = frozenset(spec.channels)
        # a values dict -> its channels in the kind's order (KeyError if one is absent)
        self.row_of: Callable[[Mapping[str, float | None]], Any] = operator.itemgetter(
            *spec.channels) if len(spec.channels) > 1 else _one_channel(spec.channels[0])
        self.thresholds = ThresholdBank(config.thresholds)
        self.hard = (HardLimitBank(config.hard_limits, spec)
                     if HardLimitBank.applies(config.hard_limits, spec) else None)  # fmt: skip
        alert_config = config.alerts_for(spec.name)
        self.extreme_factor = alert_config.extreme_factor
        self.observe_during_alert = alert_config.observe_during_alert
        self.alerts = AlertBook(spec.name, spec.channels, alert_config, config.drift,
                                self.hard.direction if self.hard is not None else None)
        # behind: consecutive readings clock_reset_s or more behind the stream's last
        self.table = SlotTable({"last_ts": ((), np.float64, np.nan),
                                "n_seen": ((), np.int64, 0),
                                "active": ((), np.bool_, False),
                                "behind": ((), np.int64, 0)},
                               optional=frozenset({"behind"}))  # fmt: skip
        lo = [spec.range_of(c)[0] for c in spec.channels]
        hi = [spec.range_of(c)[1] for c in spec.channels]
        self.low, self.high = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
        self.scorer_warming: Callable[[Sequence[str]], np.ndarray] | None = getattr(
            scorer, "warming_up", None)  # fmt: skip
        self.score_encoder = ScoreEncoder(spec.name, spec.channels, scorer.name)
        # Event-time training ticks: a scorer that can defer its training (``ForecastScorer``)
        # stages what it learns and trains only when the event time enters a new tick
        # (``TRAIN_TICK_S``), so its parameters change at the same points of the stream
        # however the readings are split into micro-batches or polls: a replay after a
        # crash or a rebalance scores as the uninterrupted run did. ``tick`` is the last
        # tick entered (None before the first reading); it is checkpointed.
        self.deferred = callable(getattr(scorer, "train_pending", None))
        if self.deferred:
            scorer.defer_training = True  # type: ignore[attr-defined]
        self.tick: int | None = None
        # whether a restore has logged that its hard-limit state did not fit (once per kind)
        self.hard_mismatch_logged = False


class DetectorState:
    """Checkpoint and per-stream hand-over for ``StreamDetector`` (a mixin)."""

    _kinds: dict[str, KindState]
    _kind_of: dict[str, str]
    _counters: dict[str, int]

    def _kind(self, name: str) -> KindState:  # pragma: no cover - provided by the detector
        raise NotImplementedError

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything (scorers, thresholds, hard limits, alert machines, counters)."""
        kinds = {}
        for name, ks in self._kinds.items():
            kinds[name] = {"scorer": ks.scorer.state_dict(), "train_tick": ks.tick,
                           **self._banks(ks, None)}  # fmt: skip
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "counters": dict(self._counters), "kinds": kinds}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_format(state)
        self._restore_counters(state)
        for name, kstate in state["kinds"].items():
            ks = self._kind_for_restore(name)
            ks.scorer.load_state_dict(kstate["scorer"])
            ks.tick = kstate.get("train_tick")
            for sid in list(ks.table.ids):
                self._kind_of.pop(sid, None)
            ks.table.clear()
            ks.alerts.machines.clear()
            ks.thresholds.load_state_dict(kstate["thresholds"])
            if ks.hard is not None:
                ks.hard.clear()
            self._import_hard(name, ks, kstate)
            self._import_banks(name, ks, kstate)

    def global_state_dict(self) -> dict[str, Any]:
        """Scorers without their per-stream state, plus counters (per-stream state goes
        through ``export_streams``). A scorer may offer ``global_state_dict()``; otherwise
        a ``"streams"`` entry of its ``state_dict`` is replaced by an empty export."""
        kinds = {}
        for name, ks in self._kinds.items():
            fn = getattr(ks.scorer, "global_state_dict", None)
            if callable(fn):
                scorer_state = fn()
            else:
                scorer_state = ks.scorer.state_dict()
                if "streams" in scorer_state:
                    scorer_state = {**scorer_state, "streams": ks.scorer.export_streams([])}
            kinds[name] = {"scorer": scorer_state, "train_tick": ks.tick}
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "counters": dict(self._counters), "kinds": kinds}  # fmt: skip

    def load_global_state(self, state: dict[str, Any]) -> None:
        """Restore ``global_state_dict()`` output (per-stream state comes by import)."""
        self._check_format(state)
        self._restore_counters(state)
        for name, kstate in state["kinds"].items():
            ks = self._kind_for_restore(name)
            fn = getattr(ks.scorer, "load_global_state", None)
            (fn if callable(fn) else ks.scorer.load_state_dict)(kstate["scorer"])
            ks.tick = kstate.get("train_tick")

    def export_streams(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        """Per-stream state of these streams (unknown ids are left out)."""
        by_kind: dict[str, list[str]] = {}
        for sid in stream_ids:
            kind = self._kind_of.get(sid)
            if kind is not None:
                by_kind.setdefault(kind, []).append(sid)
        kinds = {}
        for name, ids in by_kind.items():
            ks = self._kinds[name]
            kinds[name] = {"scorer": ks.scorer.export_streams(ids), **self._banks(ks, ids)}
        return {"stream_ids": [s for ids in by_kind.values() for s in ids], "kinds": kinds}

    def import_streams(self, state: dict[str, Any]) -> None:
        """Create or overwrite the streams of an ``export_streams`` result."""
        if not isinstance(state, dict) or "kinds" not in state:
            raise CheckpointError("stream state lacks 'kinds': not an export_streams result")
        for name, kstate in state["kinds"].items():
            ks = self._kind_for_restore(name)
            ks.scorer.import_streams(kstate["scorer"])
            ks.thresholds.import_streams(kstate["thresholds"])
            self._import_hard(name, ks, kstate)
            self._import_banks(name, ks, kstate)

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        """Drop every trace of these streams (e.g. their partition was revoked)."""
        by_kind: dict[str, list[str]] = {}
        for sid in stream_ids:
            kind = self._kind_of.pop(sid, None)
            if kind is not None:
                by_kind.setdefault(kind, []).append(sid)
        for name, ids in by_kind.items():
            ks = self._kinds[name]
            ks.scorer.forget_streams(ids)
            ks.thresholds.forget_streams(ids)
            if ks.hard is not None:
                ks.hard.forget_streams(ids)
            ks.alerts.forget_streams(ids)
            ks.table.forget(ids)

    def _banks(self, ks: KindState, ids: Sequence[str] | None) -> dict[str, Any]:
        if ids is None:
            return {"thresholds": ks.thresholds.state_dict(), "alerts": ks.alerts.state_dict(),
                    "hard_limits": ks.hard.state_dict() if ks.hard is not None else None,
                    "streams": ks.table.export_rows()}  # fmt: skip
        return {"thresholds": ks.thresholds.export_streams(ids),
                "alerts": ks.alerts.export_streams(ids),
                "hard_limits": ks.hard.export_streams(ids) if ks.hard is not None else None,
                "streams": ks.table.export_rows(ids)}  # fmt: skip

    @staticmethod
    def _import_hard(name: str, ks: KindState, kstate: dict[str, Any]) -> None:
        """Restore the hard-limit runs of a kind's streams. A state written with hard limits
        off (``"hard_limits": None``) gives its streams fresh runs here (a condition then
        needs its persistence time again before it alerts); one written with them on, read
        with them off, has its runs ignored. Either is logged once per kind."""
        state = kstate.get("hard_limits")
        if ks.hard is not None and state is not None:
            ks.hard.import_streams(state)
            return
        if ks.hard is not None:
            ids = (kstate.get("streams") or {}).get("ids", [])
            ks.hard.forget_streams(ids)  # overwritten streams lose their old runs too
        if (ks.hard is None) == (state is None) or ks.hard_mismatch_logged:
            return
        ks.hard_mismatch_logged = True
        if ks.hard is not None:
            log.info("checkpoint has no hard-limit state (written with hard limits off): the "
                     "restored streams start fresh hard-limit runs", extra={"kind": name})
        else:
            log.info("checkpoint hard-limit state ignored: hard limits are off for this kind",
                     extra={"kind": name})

    def _import_banks(self, name: str, ks: KindState, kstate: dict[str, Any]) -> None:
        try:
            ks.alerts.import_streams(kstate["alerts"])
            ks.table.import_rows(kstate["streams"])
        except KeyError as exc:
            raise CheckpointError(f"state of kind {name!r} lacks {exc.args[0]!r}") from None
        self._kind_of.update(dict.fromkeys(ks.table.ids, name))

    def _kind_for_restore(self, name: str) -> KindState:
        try:
            return self._kind(name)
        except SchemaError as exc:
            raise CheckpointError(f"the state holds kind {name!r}, which this detector "
                                  f"cannot run: {exc.problem}") from None  # fmt: skip

    @staticmethod
    def _check_format(state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError("not a streamwatch detector state")
        if state.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"detector state format version {state.get('format_version')!r}"
                                  f", this version reads {FORMAT_VERSION}")  # fmt: skip

    def _restore_counters(self, state: dict[str, Any]) -> None:
        saved = state.get("counters", {})
        self._counters = {k: int(saved.get(k, 0)) for k in COUNTERS}
