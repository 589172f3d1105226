"""The detection engine: any ``Scorer`` + SPOT thresholds + hard limits + alert machines.

``StreamDetector.process(readings)`` runs test-then-train over a micro-batch:

1. **Validate** the whole batch first (kind known, channels of the kind, values finite
   and inside the kind's plausible range) and raise ``SchemaError`` before any state
   changes; ``validate(reading)`` applies the same rules to one reading, so the service
   can dead-letter bad records and hand only good ones to ``process``. Codes:
   ``unknown_kind`` (field ``kind``), ``out_of_range`` / ``non_finite`` / ``schema``
   (field ``values.<channel>``), ``non_finite`` (field ``ts``).
2. **Group** by kind, then cut **waves**: the k-th reading of every stream in the batch
   forms wave k (arrival order within a stream; timestamps never reorder readings, so
   results do not depend on where batch boundaries fall and a replay gives the same ids).
3. **Per wave**: ``scorer.score_many`` (pure) -> per-stream threshold -> hard limits ->
   alert machines (only for streams with something to say) -> threshold update ->
   ``scorer.advance_many`` with ``observe = not anomalous and not inside an open alert``
   (every reading, for a kind with ``alerts.observe_during_alert``)
   -> ``scorer.learn_many`` with ``not anomalous and not inside an open alert``, minus
   streams in a strong burst of peaks.
4. One ``Score`` per reading, in input order, plus the alert events of the batch
   (``process_encoded``: each Score as its JSON, built from the arrays, for a service).

Warm-up: a stream's scores feed its threshold only after ``warmup_readings`` readings
(and after the scorer's own warm-up, when it has ``warming_up``), and no model-based alert
fires before the threshold has then seen ``thresholds.warmup`` scores. Hard limits work
from the first reading.

No poisoning: a reading inside an open alert never reaches ``learn_many`` nor the
threshold, and is fed to ``advance_many`` as missing, so the forecast is not dragged along
(with ``observe_during_alert`` it is fed to the recurrent state only, which then follows
the stream so the alert can close; still never to weights, normaliser or threshold).
Anomalous readings outside an alert reach the threshold only as censored peaks (known to
be above the bar, value unused; see ``thresholds``). While a stream's threshold sees a
burst of peaks (an anomaly hovering just under the bar) it does not learn them, and in a
strong burst the scorer does not learn either (``ThresholdConfig.burst_*``).

Drift: the model cannot learn a new regime from inside an alert, so the alert machine
bounds the time: a *model* alert whose m-of-n condition still holds
``drift.accept_regime_after_s`` after onset (with no hard-limit condition on the reading)
is closed with the summary "regime change accepted ..." and ``scorer.adapt_streams`` re-seeds
that stream from its recent readings (observed or not). A hard-limit condition is never
accepted: a critical vital stays alerted.

Late or duplicate timestamps: a reading whose ``ts`` is not after the stream's last
processed reading is scored against the current state and gets its ``Score`` (never
``anomalous``), but changes nothing: no model step, no learning, no threshold or alert
update. Counted in ``counters['late_readings']`` / ``counters['duplicate_readings']``.
``clock_reset_after`` readings in a row ``clock_reset_s`` or more behind their stream's
last are a clock that stepped back, not late readings: the stream starts afresh (``_restart_streams``: an open alert closed,
saying so; ``counters['clock_resets']``), so that its readings are stepped again.

Probe-off: for kinds under the hard-limit layer, a value of exactly 0 in a
``probe_off_zero`` channel (SpO2) is shown to the scorer as missing. ``Score.hard_limit``
is the reading's own NEWS2 verdict (no persistence); alerts use the persisted one.
A stream keeps the kind of its first reading (another kind later is a ``SchemaError``).

State: ``state_dict`` (everything), ``global_state_dict`` (scorers without per-stream
state + counters) and ``export_streams``/``import_streams``/``forget_streams`` for moving
a partition's streams. Baseline scorers are evaluation-only and refuse to checkpoint.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np

from streamwatch.alerts import Snapshot
from streamwatch.detect.base import KindBatch, Scorer
from streamwatch.detect.config import DetectorConfig
from streamwatch.detect.detector_state import COUNTERS, DetectorState, KindState
from streamwatch.detect.hardlimits import LEVEL_NAMES
from streamwatch.detect.watch import WatchedStreams
from streamwatch.errors import ConfigError, SchemaError
from streamwatch.kinds import KindSpec, get_kind
from streamwatch.schema import Alert, ChannelForecast, Reading, Score, encode

log = logging.getLogger(__name__)

_VALUES, _TS, _KIND = map(operator.attrgetter, ("values", "ts", "kind"))

#: Event-time length of a training tick (``KindState.tick``), seconds.
TRAIN_TICK_S = 1.0


def _occurrence(keys: Sequence[str]) -> np.ndarray:
    """Per position, how many times its key came before it (0 for a first occurrence).

    >>> _occurrence(["a", "b", "a", "c", "a", "b"]).tolist()
    [0, 0, 1, 0, 2, 1]
    """
    n = len(keys)
    index = {k: i for i, k in enumerate(keys)}  # any one int per key
    codes = np.fromiter(map(index.__getitem__, keys), np.intp, count=n)
    order = np.argsort(codes, kind="stable")  # each key's positions, in order
    ranks = np.arange(n)
    sorted_codes = codes[order]
    first = np.ones(n, dtype=bool)
    first[1:] = sorted_codes[1:] != sorted_codes[:-1]
    out = np.empty(n, dtype=np.intp)
    out[order] = ranks - np.maximum.accumulate(np.where(first, ranks, 0))
    return out


def _tick_breaks(readings: Sequence[Reading]) -> list[int]:
    """Positions where the batch enters a later training tick than any reading before it
    (late readings stay with the tick the batch has reached)."""
    if len(readings) < 2:
        return []
    ts = np.fromiter((r.ts for r in readings), dtype=np.float64, count=len(readings))
    with np.errstate(invalid="ignore"):
        ticks = np.fmax.accumulate(np.floor(ts / TRAIN_TICK_S))
        return (np.flatnonzero(ticks[1:] > ticks[:-1]) + 1).tolist()

ScorerSource = Mapping[str, Scorer] | Callable[[KindSpec], Scorer]
#: Which Scores ``process_encoded`` builds: every reading's, or only those around alerts.
EmitScores = Literal["all", "alerts"]


class StreamDetector(DetectorState):
    """Detector protocol implementation around any scorer (see module docstring).

    Parameters
    ----------
    scorers
        ``{kind name: Scorer}``, or a factory ``KindSpec -> Scorer`` called on the first
        reading of each kind.
    config
        Thresholds, alerts, hard limits, drift (default ``DetectorConfig()``).
    kinds
        Restrict (and define) the accepted kinds; by default every registered kind
        (``streamwatch.kinds``) that has a scorer.
    """

    def __init__(self, scorers: ScorerSource, config: DetectorConfig | None = None, *,
                 kinds: Sequence[KindSpec] | None = None) -> None:  # fmt: skip
        if not isinstance(scorers, Mapping) and not callable(scorers):
            raise ConfigError("scorers must be a mapping kind -> Scorer or a factory "
                              f"KindSpec -> Scorer, got {type(scorers).__name__}")  # fmt: skip
        if isinstance(scorers, Mapping):
            for name, scorer in scorers.items():
                if not isinstance(scorer, Scorer) or scorer.kind.name != name:
                    raise ConfigError(f"scorers[{name!r}] must be a Scorer of kind {name!r}")
        self.scorers = scorers
        self.config = config if config is not None else DetectorConfig()
        self.allowed = {k.name: k for k in kinds} if kinds is not None else None
        self._kinds: dict[str, KindState] = {}
        self._kind_of: dict[str, str] = {}
        self._counters = dict.fromkeys(COUNTERS, 0)

    # -- kinds and validation --------------------------------------------------------
    def _unknown(self, kind: str, why: str) -> SchemaError:
        return SchemaError(f"unknown stream kind {kind!r}; {why}", field="kind",
                           code="unknown_kind")  # fmt: skip

    def _kind(self, name: str) -> KindState:
        ks = self._kinds.get(name)
        if ks is not None:
            return ks
        if self.allowed is not None:
            spec = self.allowed.get(name)
            if spec is None:
                raise self._unknown(name, f"this detector accepts {sorted(self.allowed)}")
        else:
            try:
                spec = get_kind(name)
            except ConfigError as exc:  # its text names the kind and the known ones
                raise SchemaError(str(exc), field="kind", code="unknown_kind") from None
        if isinstance(self.scorers, Mapping):
            scorer = self.scorers.get(name)
            if scorer is None:
                raise self._unknown(name, f"no scorer configured; have {sorted(self.scorers)}")
        else:
            scorer = self.scorers(spec)
            if not isinstance(scorer, Scorer):
                raise ConfigError(f"the scorer factory returned {type(scorer).__name__} for "
                                  f"kind {name!r}, not a Scorer")  # fmt: skip
        ks = self._kinds[name] = KindState(spec, scorer, self.config)
        log.info("kind ready kind=%s scorer=%s hard_limits=%s", name, scorer.name,
                 ks.hard is not None)  # fmt: skip
        return ks

    @property
    def warmup_readings(self) -> int:
        """``DetectorConfig.warmup_readings`` (see ``Detector``)."""
        return self.config.warmup_readings

    def validate(self, reading: Reading) -> None:
        """Raise ``SchemaError`` (with field and code) if ``process`` would refuse it."""
        ks = self._kind(reading.kind)
        known = self._kind_of.get(reading.stream_id)
        if known is not None and known != reading.kind:
            raise self._kind_changed(reading, known)
        if not math.isfinite(reading.ts) or reading.ts < 0:
            raise SchemaError("must be a finite number >= 0", field="ts", code="non_finite")
        spec = ks.spec
        for channel, value in reading.values.items():
            if channel not in ks.channel_set:
                if self.config.unknown_channels == "reject":
                    raise self._unknown_channel(spec, channel)
                continue
            if value is None:
                continue
            c = spec.index(channel)
            if not math.isfinite(value):
                raise SchemaError("must be a finite number or null", field=f"values.{channel}",
                                  code="non_finite")  # fmt: skip
            if not ks.low[c] <= value <= ks.high[c]:
                raise self._out_of_range(spec, channel, value)

    @staticmethod
    def _kind_changed(reading: Reading, known: str) -> SchemaError:
        return SchemaError(f"stream {reading.stream_id!r} is of kind {known!r}, not "
                           f"{reading.kind!r}; a stream keeps its kind", field="kind",
                           code="schema")  # fmt: skip

    @staticmethod
    def _unknown_channel(spec: KindSpec, channel: str) -> SchemaError:
        return SchemaError(f"kind {spec.name!r} has no channel {channel!r}; its channels are "
                           f"{list(spec.channels)}", field=f"values.{channel}", code="schema")  # fmt: skip

    @staticmethod
    def _out_of_range(spec: KindSpec, channel: str, value: float) -> SchemaError:
        lo, hi = spec.range_of(channel)
        return SchemaError(f"{value:g} is outside the plausible range [{lo:g}, {hi:g}] of "
                           f"{channel!r} for kind {spec.name!r}", field=f"values.{channel}",
                           code="out_of_range")  # fmt: skip

    def validate_many(self, readings: Sequence[Reading]) -> list[SchemaError | None]:
        """``validate`` for a batch: per reading the error ``validate`` raises, or None.

        The checks run on arrays, one kind at a time; only readings that fail one of them
        go through ``validate`` for the precise error, so the result is the same as calling
        ``validate`` on each reading, at a fraction of the cost. One rule spans readings: a
        stream new to the detector that comes with two kinds in one batch keeps the kind of
        its first reading not refused, as when the readings are processed one at a time.
        """
        errors: list[SchemaError | None] = [None] * len(readings)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(readings):
            groups.setdefault(r.kind, []).append(i)
        for name, idx in groups.items():
            try:
                ks = self._kind(name)
            except SchemaError as exc:
                for i in idx:
                    errors[i] = exc
                continue
            rs = [readings[i] for i in idx]
            values, _ts, suspect = self._columns(ks, rs, count_ignored=False)
            # None and NaN are both NaN in the matrix; validate refuses a NaN value
            for j in np.flatnonzero(np.isnan(values).any(axis=1) & ~suspect).tolist():
                if any(v is not None and v != v for c, v in rs[j].values.items()
                       if c in ks.channel_set):  # fmt: skip
                    suspect[j] = True
            for j in np.flatnonzero(suspect).tolist():
                try:
                    self.validate(rs[j])
                except SchemaError as exc:
                    errors[idx[j]] = exc
        if len(groups) > 1:  # (with one kind, `_columns` checked the streams seen before)
            first: dict[str, str] = {}  # a stream's kind, from its first accepted reading
            kind_of = self._kind_of
            for i, r in enumerate(readings):
                error = errors[i]
                if error is not None and error.code == "unknown_kind":
                    continue  # validate's first check: it comes before the kind's
                kind = first.get(r.stream_id)
                if kind is None:
                    if error is None:
                        first[r.stream_id] = kind_of.get(r.stream_id, r.kind)
                elif kind != r.kind:  # validate's second check: before the values'
                    errors[i] = self._kind_changed(r, kind)
        return errors

    def _columns(self, ks: KindState, rs: Sequence[Reading], *, count_ignored: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """Values (N, C), timestamps, and which readings ``validate`` may refuse.

        The common batch (every reading carries every channel of its kind, some perhaps
        null) takes one ``itemgetter`` call per reading; a reading with more keys than the
        kind has channels then has unknown ones. A batch where some reading lacks a channel
        takes the per-channel path."""
        chans, name, kind_of, cs = ks.spec.channels, ks.spec.name, self._kind_of, ks.channel_set
        n, c = len(rs), len(chans)
        suspect = np.zeros(n, dtype=bool)
        reject = self.config.unknown_channels == "reject"
        if len(self._kinds) > 1:  # with one kind, every known stream is of this kind
            for j, r in enumerate(rs):
                if kind_of.get(r.stream_id, name) != name:
                    suspect[j] = True
        vals = list(map(_VALUES, rs))  # (the maps below loop in C)
        try:
            rows: list[Any] = list(map(ks.row_of, vals))
        except KeyError:
            rows = [[v.get(ch) for ch in chans] for v in vals]
            extra = [j for j, v in enumerate(vals) if not v.keys() <= cs]
        else:
            extra = np.flatnonzero(np.fromiter(map(len, vals), np.intp, count=n) != c).tolist()
        if extra:
            if reject:
                suspect[extra] = True
            elif count_ignored:
                self._counters["ignored_channels"] += sum(len(vals[j].keys() - cs)
                                                          for j in extra)  # fmt: skip
        # (None -> NaN, as np.array(rows) would, in half its time)
        values = np.fromiter(chain.from_iterable(rows), np.float64, count=n * c).reshape(n, c)
        ts = np.fromiter(map(_TS, rs), dtype=np.float64, count=n)
        suspect |= ((values < ks.low) | (values > ks.high) | np.isinf(values)).any(axis=1)
        suspect |= ~(np.isfinite(ts) & (ts >= 0))
        return values, ts, suspect

    def _matrix(self, ks: KindState, rs: Sequence[Reading]) -> tuple[np.ndarray, np.ndarray]:
        """Values (N, C) and timestamps of one kind's readings; raises on a bad reading."""
        values, ts, suspect = self._columns(ks, rs, count_ignored=True)
        for j in np.flatnonzero(suspect).tolist():
            self._validate_in_batch(rs[j])
        return values, ts

    def _validate_in_batch(self, reading: Reading) -> None:
        try:
            self.validate(reading)
        except SchemaError as exc:
            raise self._in_batch(reading, exc) from None

    @staticmethod
    def _in_batch(reading: Reading, exc: SchemaError) -> SchemaError:
        """``exc``, naming the reading and saying the batch was left alone."""
        return SchemaError(f"{exc.problem} (stream {reading.stream_id!r}, ts {reading.ts}; "
                           "nothing of this batch was processed: validate() each reading "
                           "to dead-letter the bad ones)", field=exc.field, code=exc.code)  # fmt: skip

    # -- the micro-batch ---------------------------------------------------------------
    def process(self, readings: Sequence[Reading]) -> tuple[list[Score], list[Alert]]:
        """Test-then-train over a micro-batch (see module docstring)."""
        scores: list[Any] = [None] * len(readings)
        alerts = self._run(readings, lambda ks, idx, rs, ts, out: self._emit(
            ks, idx, rs, out, scores))  # fmt: skip
        return scores, alerts

    def process_encoded(self, readings: Sequence[Reading], *, emit: EmitScores = "all",
                        watched: WatchedStreams | None = None,
                        ) -> tuple[EncodedScores, list[Alert]]:  # fmt: skip
        """``process``, with each Score handed back as its JSON (``schema.encode``'s bytes)
        instead of a ``Score``: what a service sends on, built from the arrays directly.

        ``emit="alerts"`` builds only the Scores "around alerts": of readings that are
        anomalous, beyond a hard limit, or inside an open alert once processed (the
        reading that closes an alert is outside it), plus every reading's of the
        ``watched`` streams; the other records are None and cost nothing to build."""
        if emit not in ("all", "alerts"):
            raise ConfigError(f"emit must be 'all' or 'alerts', got {emit!r}")
        n = len(readings)
        encoded = EncodedScores([""] * n, [None] * n, [False] * n)
        watch = watched if watched else None
        alerts = self._run(readings, lambda ks, idx, rs, ts, out: self._emit_encoded(
            ks, idx, rs, ts, out, encoded, emit, watch))  # fmt: skip
        return encoded, alerts

    def _run(self, readings: Sequence[Reading], emit: Callable[..., None]) -> list[Alert]:
        """Process the batch split at event-time training ticks (``KindState.tick``): the
        readings of one tick as one step, then the staged training before the next. Every
        part is validated before any is processed (a bad reading changes nothing).

        The batch is cut only at the tick boundaries where some kind may owe training: a
        boundary with fewer readings before it (in this batch) than the smallest
        ``training_room`` of the batch's kinds cannot owe any, ``train_pending`` would do
        nothing there, so one part scores as two would; from the first boundary that may,
        every one is cut (1,000 streams in batches of 997, train_every 2,048: 97 cuts in
        201 batches instead of 199)."""
        kinds = set(map(_KIND, readings))
        if len(kinds) > 1:
            self._check_kinds(readings)
        breaks = _tick_breaks(readings)
        if breaks:
            room = self._training_room(kinds, len(readings))
            breaks = [b for b in breaks if b >= room]
        parts, start = [], 0
        for end in [*breaks, len(readings)]:
            if end > start:
                parts.append(self._prepare(readings, start, end))
            start = end
        alerts: list[Alert] = []
        for prepared in parts:
            for ks, idx, rs, values, ts in prepared:
                if ks.deferred:
                    self._enter_tick(ks, ts)
                out = self._process_kind(ks, rs, values, ts, alerts)
                emit(ks, idx, rs, ts, out)
        self._counters["readings"] += len(readings)
        return alerts

    def _check_kinds(self, readings: Sequence[Reading]) -> None:
        """A batch of several kinds: raise if a stream comes with a kind other than its own
        (its kind so far, else that of its first reading in the batch). ``_matrix`` checks
        streams seen before one kind at a time, which misses a new stream met twice."""
        first: dict[str, str] = {}
        kind_of = self._kind_of
        for r in readings:
            kind = first.setdefault(r.stream_id, kind_of.get(r.stream_id, r.kind))
            if kind != r.kind:
                raise self._in_batch(r, self._kind_changed(r, kind))

    def _training_room(self, kinds: set[str], n: int) -> int:
        """The fewest readings any of the batch's ``kinds`` can learn before it owes
        training, at most the batch's ``n`` (0 for a kind not seen yet: its scorer does not
        exist to ask)."""
        room = n
        for name in kinds:
            ks = self._kinds.get(name)
            if ks is None:
                return 0
            if ks.deferred:
                room = min(room, ks.scorer.training_room())  # type: ignore[attr-defined]
        return room

    def _enter_tick(self, ks: KindState, ts: np.ndarray) -> None:
        """Before a part of the batch: if it reaches a new tick, train what was staged."""
        finite = ts[np.isfinite(ts)]
        if finite.size == 0:
            return
        tick = math.floor(float(finite.max()) / TRAIN_TICK_S)
        if ks.tick is None:
            ks.tick = tick
        elif tick > ks.tick:
            ks.scorer.train_pending()  # type: ignore[attr-defined]
            ks.tick = tick

    def _prepare(self, readings: Sequence[Reading], start: int, end: int
                 ) -> list[tuple[KindState, list[int], list[Reading], np.ndarray, np.ndarray]]:  # fmt: skip
        """Per kind: the positions, readings, value matrix and timestamps of a part
        (raises on a bad reading)."""
        groups: dict[str, list[int]] = {}
        kinds = {r.kind for r in readings[start:end]}
        if len(kinds) == 1:  # the usual part: one kind, no per-reading grouping
            groups[kinds.pop()] = list(range(start, end))
        else:
            for i in range(start, end):
                groups.setdefault(readings[i].kind, []).append(i)
        prepared = []
        for name, idx in groups.items():
            ks = self._kind(name)
            rs = (list(readings[start:end]) if len(idx) == end - start
                  else [readings[i] for i in idx])  # fmt: skip
            values, ts = self._matrix(ks, rs)
            prepared.append((ks, idx, rs, values, ts))
        return prepared

    def _process_kind(self, ks: KindState, rs: list[Reading], values: np.ndarray,
                      ts: np.ndarray, alerts: list[Alert]) -> _Outputs:  # fmt: skip
        sids = [r.stream_id for r in rs]
        n, c = values.shape
        scorer_values = ks.hard.mask_probe_off(values) if ks.hard is not None else values
        out = _Outputs(n, c)
        if len(set(sids)) == n:
            waves = [np.arange(n)]
        else:
            rank = _occurrence(sids)
            waves = [np.flatnonzero(rank == k) for k in range(int(rank.max()) + 1)]
        for w in waves:
            wsids = sids if len(w) == n else [sids[j] for j in w.tolist()]
            self._wave(ks, w, wsids, ts[w], values[w], scorer_values[w], out, alerts)
        return out

    def _wave(self, ks: KindState, w: np.ndarray, sids: list[str], ts: np.ndarray,
              raw: np.ndarray, values: np.ndarray, out: _Outputs, alerts: list[Alert]) -> None:  # fmt: skip
        cfg, cnt, scorer = self.config, self._counters, ks.scorer
        arrays = ks.table.arrays
        known = len(ks.table)
        slots = ks.table.slots(sids)
        if len(ks.table) != known:
            self._kind_of.update(dict.fromkeys(sids, ks.spec.name))
        last = arrays["last_ts"][slots]
        far = last - ts >= cfg.clock_reset_s  # NaN (a new stream): False
        behind = arrays["behind"]
        behind[slots] = np.where(far, behind[slots] + 1, 0)
        stepped_back = far & (behind[slots] >= cfg.clock_reset_after)
        if stepped_back.any():
            self._restart_streams(ks, sids, np.flatnonzero(stepped_back), last - ts, alerts)
            slots = ks.table.slots(sids)
            self._kind_of.update(dict.fromkeys(sids, ks.spec.name))
            arrays = ks.table.arrays
            last = arrays["last_ts"][slots]
        late = ts <= last
        batch = KindBatch(kind=ks.spec, stream_ids=sids, ts=ts, values=values)
        sb = scorer.score_many(batch)
        version = int(scorer.version)
        score = np.asarray(sb.score, dtype=np.float64)
        finite = np.isfinite(score)
        tslots = ks.thresholds.slots(sids)
        thr, level = ks.thresholds.thresholds_at(tslots), ks.thresholds.levels_at(tslots)
        ready = arrays["n_seen"][slots] >= cfg.warmup_readings
        if ks.scorer_warming is not None:
            ready &= ~np.asarray(ks.scorer_warming(sids), dtype=bool)
        has_thr = ready & ~np.isnan(thr)
        anomalous = has_thr & finite & (score > thr) & ~late
        extreme = anomalous & (score > level + ks.extreme_factor * (thr - level))
        nb = len(sids)
        hl_level = hl_conf = np.zeros(nb, dtype=np.int8)
        hl_onset = np.full(nb, np.nan)
        if ks.hard is not None:
            step = ks.hard.step_at(ks.hard.slots(sids), ts, raw, ~late)
            hl_level, hl_conf, hl_onset = step.level, step.confirmed, step.onset
            for r in np.flatnonzero(hl_level > 0).tolist():
                out.hl_channels[int(w[r])] = ks.hard.channels(step.points[r], step.beyond[r])
        in_alert = np.zeros(nb, dtype=bool)
        to_step = (anomalous | (hl_level > 0) | arrays["active"][slots]) & ~late
        if to_step.any():
            accepted = self._step_alerts(ks, w, sids, ts, values, sb, score, thr, anomalous,
                                         extreme, hl_level, hl_conf, hl_onset, version,
                                         np.flatnonzero(to_step), slots, in_alert, out, alerts)  # fmt: skip
        else:
            accepted = []
        keep = ~late
        clean = ~anomalous & ~in_alert  # may teach; anything else never does
        observe = np.ones(nb, dtype=bool) if ks.observe_during_alert else clean
        ks.thresholds.update_at(tslots, score, keep & ready & finite & ~in_alert)
        learn = clean & ~ks.thresholds.pause_scorer_at(tslots)
        cnt["burst_readings"] += int((clean & ~learn).sum())
        if late.any():
            sub = np.flatnonzero(keep)
            self._count_late(ts, last, late)
            batch = KindBatch(kind=ks.spec, stream_ids=[sids[i] for i in sub.tolist()],
                              ts=ts[sub], values=values[sub])  # fmt: skip
            observe, learn = observe[sub], learn[sub]
        if len(batch):
            scorer.advance_many(batch, observe)
            scorer.learn_many(batch, learn)
        arrays["last_ts"][slots[keep]] = ts[keep]
        arrays["n_seen"][slots[keep]] += 1
        if accepted:
            scorer.adapt_streams(accepted)
            cnt["regimes_accepted"] += len(accepted)
        out.fill(w, score, finite, np.where(has_thr, thr, np.nan), anomalous, ~has_thr, sb,
                 version, hl_level)  # fmt: skip
        out.in_alert[w] = in_alert
        if late.any():  # a late reading steps no machine; it is inside a still-open alert
            machines = ks.alerts.machines
            for r in np.flatnonzero(late).tolist():
                machine = machines.get(sids[r])
                out.in_alert[w[r]] = machine is not None and machine.is_open
        cnt["anomalous"] += int(anomalous.sum())
        cnt["warming_up"] += int((~has_thr).sum())
        cnt["hard_limit_readings"] += int((hl_level > 0).sum())
        cnt["unscored_readings"] += int((~finite).sum())

    def _step_alerts(self, ks: KindState, w: np.ndarray, sids: list[str], ts: np.ndarray,
                     values: np.ndarray, sb: Any, score: np.ndarray, thr: np.ndarray,
                     anomalous: np.ndarray, extreme: np.ndarray, hl_level: np.ndarray,
                     hl_conf: np.ndarray, hl_onset: np.ndarray, version: int,
                     rows: np.ndarray, slots: np.ndarray, in_alert: np.ndarray,
                     out: _Outputs, alerts: list[Alert]) -> list[str]:  # fmt: skip
        cnt, active = self._counters, ks.table.arrays["active"]
        accepted = []
        for r in rows.tolist():

            def snapshot(r: int = r) -> Snapshot:
                return Snapshot(float(ts[r]), float(score[r]), values[r].tolist(),
                                sb.mean[r].tolist(), sb.std[r].tolist(),
                                sb.channel_scores[r].tolist(),
                                out.hl_channels.get(int(w[r]), []))  # fmt: skip

            machine = ks.alerts.machine(sids[r])
            events, acc = machine.step(
                float(ts[r]), float(score[r]), float(thr[r]), bool(anomalous[r]),
                bool(extreme[r]), int(hl_level[r]), int(hl_conf[r]), float(hl_onset[r]),
                snapshot, version)  # fmt: skip
            in_alert[r] = machine.is_open
            active[slots[r]] = machine.active
            for e in events:
                cnt[f"alerts_{'opened' if e.event == 'open' else e.event + 'd'}"] += 1
            alerts.extend(events)
            if acc:
                accepted.append(sids[r])
        return accepted

    def _restart_streams(self, ks: KindState, sids: list[str], rows: np.ndarray,
                         back: np.ndarray, alerts: list[Alert]) -> None:  # fmt: skip
        """Streams whose clock stepped back by ``clock_reset_s`` or more: each open alert
        is closed (saying why) and the stream's state is dropped, so its readings from now
        on are stepped again, hard limits included, as a new stream's. Left as late
        readings they would be scored but ignored, no alert at all, until event time
        caught up with the old clock: for a patient, up to hours of critical values."""
        ids = [sids[r] for r in rows.tolist()]
        version = int(ks.scorer.version)
        for r, sid in zip(rows.tolist(), ids, strict=True):
            machine = ks.alerts.machines.get(sid)
            if machine is not None and machine.is_open:
                alerts.append(machine.close_on_clock_reset(float(back[r]), version))
                self._counters["alerts_closed"] += 1
            log.warning("stream clock stepped back; the stream starts afresh",
                        extra={"stream": sid, "back_s": round(float(back[r]), 1)})
        self._counters["clock_resets"] += len(ids)
        self.forget_streams(ids)

    def _count_late(self, ts: np.ndarray, last: np.ndarray, late: np.ndarray) -> None:
        dup = int((late & (ts == last)).sum())
        self._counters["duplicate_readings"] += dup
        self._counters["late_readings"] += int(late.sum()) - dup
        log.debug("late or duplicate readings scored but not learned count=%d", int(late.sum()))

    def _emit(self, ks: KindState, idx: list[int], rs: list[Reading], out: _Outputs,
              scores: list[Any], rows: Sequence[int] | None = None) -> None:  # fmt: skip
        """Build the Score records (the per-reading Python work: kept to dict building)."""
        chans, kind, model = ks.spec.channels, ks.spec.name, ks.scorer.name
        fin, cf, hl_channels = math.isfinite, ChannelForecast, out.hl_channels
        fc_ok = (np.isfinite(out.mean) & np.isfinite(out.std)).all(axis=1).tolist()
        cs_ok = np.isfinite(out.cs).all(axis=1).tolist()
        mean, std, cs = out.mean.tolist(), out.std.tolist(), out.cs.tolist()
        score, thr = out.score.tolist(), out.thr.tolist()
        anom, warm = out.anomalous.tolist(), out.warming.tolist()
        version, hl = out.version.tolist(), out.hl.tolist()
        for j in range(len(rs)) if rows is None else rows:
            r, mu, sd, cj = rs[j], mean[j], std[j], cs[j]
            if fc_ok[j]:
                forecast = dict(zip(chans, map(cf, mu, sd), strict=True))
            else:
                forecast = {ch: cf(m, s) for ch, m, s in zip(chans, mu, sd, strict=True)
                            if fin(m) and fin(s)}  # fmt: skip
            if cs_ok[j]:
                channel_scores: dict[str, float | None] = dict(zip(chans, cj, strict=True))
            else:
                channel_scores = {ch: x if fin(x) else None for ch, x in zip(chans, cj, strict=True)}
            t = thr[j]
            scores[idx[j]] = Score(
                stream_id=r.stream_id, kind=kind, ts=r.ts, values=r.values, forecast=forecast,
                channel_scores=channel_scores, score=score[j],
                threshold=t if t == t else None, anomalous=anom[j], warming_up=warm[j],
                model=model, model_version=version[j],
                hard_limit=LEVEL_NAMES[hl[j]],  # type: ignore[arg-type]
                hard_limit_channels=hl_channels.get(j, []),
            )  # fmt: skip

    def _emit_encoded(self, ks: KindState, idx: list[int], rs: list[Reading], ts: np.ndarray,
                      out: _Outputs, encoded: EncodedScores, emit: EmitScores,
                      watched: WatchedStreams | None = None) -> None:  # fmt: skip
        """The Score JSON of each reading (of the selected ones, with ``emit="alerts"``),
        from the arrays (``schema.ScoreEncoder``)."""
        flagged_a = out.anomalous | (out.hl > 0)
        sids = [r.stream_id for r in rs]
        sel = None
        if emit != "all":
            around = flagged_a | out.in_alert
            sel = np.flatnonzero(around if watched is None else around | watched.mask(sids))
        records: list[bytes | None]
        if sel is None or sel.size:
            rows = out if sel is None else out.take(sel)
            rrs = rs if sel is None else [rs[j] for j in sel.tolist()]
            records = ks.score_encoder.encode_rows(
                sids if sel is None else [sids[j] for j in sel.tolist()],
                [r.values for r in rrs],
                ts if sel is None else ts[sel], rows.mean, rows.std, rows.cs, rows.score,
                rows.thr, rows.anomalous, rows.warming, rows.version, rows.hl,
                rows.hl_channels)  # fmt: skip
            missing = [j for j, rec in enumerate(records) if rec is None]
            if missing:  # a forecast without some channel: the Score path, for those alone
                built: list[Any] = [None] * len(rrs)
                self._emit(ks, list(range(len(rrs))), rrs, rows, built, rows=missing)
                for j in missing:
                    records[j] = encode(built[j])
            if sel is not None:
                full: list[bytes | None] = [None] * len(rs)
                for k, j in enumerate(sel.tolist()):
                    full[j] = records[k]
                records = full
        else:
            records = [None] * len(rs)
        flagged = flagged_a.tolist()
        first = idx[0]
        if idx[-1] - first + 1 == len(idx):  # contiguous (one kind in this part): slices
            end = first + len(idx)
            encoded.stream_ids[first:end] = sids
            encoded.records[first:end] = records
            encoded.flagged[first:end] = flagged
            return
        for j, i in enumerate(idx):
            encoded.stream_ids[i] = sids[j]
            encoded.records[i] = records[j]
            encoded.flagged[i] = flagged[j]

    # -- queries ---------------------------------------------------------------------
    def in_alert(self, stream_id: str) -> bool:
        """Whether the stream has an open alert."""
        kind = self._kind_of.get(stream_id)
        machine = self._kinds[kind].alerts.machines.get(stream_id) if kind else None
        return machine is not None and machine.is_open

    @property
    def counters(self) -> dict[str, int]:
        """Monotonic counters (plus ``training_steps``, ``open_alerts``, ``streams``)."""
        out = dict(self._counters)
        out["training_steps"] = sum(int(k.scorer.version) for k in self._kinds.values())
        out["open_alerts"] = sum(k.alerts.open_count() for k in self._kinds.values())
        out["streams"] = sum(len(k.table) for k in self._kinds.values())
        return out

    def health(self) -> dict[str, Any]:
        """Counters plus the latest training loss (None when no scorer reports one)."""
        info: dict[str, Any] = self.counters
        losses = [float(getattr(k.scorer, "last_loss", math.nan)) for k in self._kinds.values()]
        finite = [x for x in losses if math.isfinite(x)]
        info["training_loss"] = sum(finite) / len(finite) if finite else None
        return info

@dataclass
class EncodedScores:
    """``process_encoded``'s Scores, in input order: the stream, the record's JSON (None
    where ``emit="alerts"`` left it out), and whether the reading is anomalous or beyond a
    hard limit."""

    stream_ids: list[str]
    records: list[bytes | None]
    flagged: list[bool]

    def __len__(self) -> int:
        return len(self.records)

    def extend(self, other: EncodedScores) -> None:
        self.stream_ids += other.stream_ids
        self.records += other.records
        self.flagged += other.flagged


class _Outputs:
    """Per-reading results of one kind in one batch, filled wave by wave."""

    def __init__(self, n: int, c: int) -> None:
        self.score = np.zeros(n)
        self.thr = np.full(n, np.nan)
        self.anomalous = np.zeros(n, dtype=bool)
        self.warming = np.ones(n, dtype=bool)
        self.mean = np.full((n, c), np.nan)
        self.std = np.full((n, c), np.nan)
        self.cs = np.full((n, c), np.nan)
        self.version = np.zeros(n, dtype=np.int64)
        self.hl = np.zeros(n, dtype=np.int8)
        self.in_alert = np.zeros(n, dtype=bool)
        self.hl_channels: dict[int, list[str]] = {}

    def take(self, rows: np.ndarray) -> _Outputs:
        """These rows only (renumbered from 0, hard-limit channels too)."""
        sub = _Outputs(0, self.mean.shape[1])
        for name in ("score", "thr", "anomalous", "warming", "mean", "std", "cs", "version",
                     "hl", "in_alert"):
            setattr(sub, name, getattr(self, name)[rows])
        where = {j: k for k, j in enumerate(rows.tolist())} if self.hl_channels else {}
        sub.hl_channels = {where[j]: names for j, names in self.hl_channels.items()
                           if j in where}  # fmt: skip
        return sub

    def fill(self, w: np.ndarray, score: np.ndarray, finite: np.ndarray, thr: np.ndarray,
             anomalous: np.ndarray, warming: np.ndarray, sb: Any, version: int,
             hl: np.ndarray) -> None:  # fmt: skip
        self.score[w] = np.where(finite, score, 0.0)
        self.thr[w] = thr
        self.anomalous[w] = anomalous
        self.warming[w] = warming
        self.mean[w], self.std[w], self.cs[w] = sb.mean, sb.std, sb.channel_scores
        self.version[w] = version
        self.hl[w] = hl
