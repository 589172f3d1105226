"""The online GRU/LSTM forecaster as a ``Scorer`` (see ``streamwatch.detect.base``).

Per wave (at most one reading per stream):

``score_many``
    Pure, no model call: compares each reading with the forecast stored for its stream
    when the stream last advanced (made from the state after the previous reading).
``advance_many``
    ONE batched recurrent step for every stream of the wave, under
    ``torch.inference_mode()``: consumes the readings (as missing where ``observe`` is
    False, so an anomaly cannot drag the hidden state along) and stores the forecast for
    each stream's next reading.
``learn_many``
    Normaliser update, replay windows and periodic optimiser steps, for masked rows only.

Scores: see ``streamwatch.model.scoring`` (forecast surprise, level surprise against the
stream's baseline, their max; per-channel NLL). Readings during a stream's warm-up
(``warming_up``) are scored, but with an immature normaliser: thresholds should neither
alert on them nor learn from them, and the detector must still let them teach
(``learn_many``), or the stream never warms up.

Timestamps
----------
The gap feature uses ``ts - last_ts``. A duplicated or late timestamp (gap <= 0) is still
processed as the next step, with gap 0, and counted in ``late_readings``; ``last_ts``
never moves backwards. Gaps longer than ``max_gap_s`` are clipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from streamwatch.detect.base import KindBatch, ScoreBatch
from streamwatch.errors import CheckpointError, StreamwatchError
from streamwatch.kinds import KindSpec
from streamwatch.model.config import ModelConfig
from streamwatch.model.features import (
    build_windows,
    ew_alpha,
    ew_scale,
    ew_update,
    gap_feature,
    season_bin,
    step_inputs,
)
from streamwatch.model.forecaster import Forecaster
from streamwatch.model.scoring import chi2_surprise, forecast_scores, level_scores
from streamwatch.model.state import StreamState
from streamwatch.model.trainer import Trainer

log = logging.getLogger(__name__)

__all__ = ["ForecastScorer", "chi2_surprise"]

FORMAT = "streamwatch.forecast_scorer"
FORMAT_VERSION = 1


class ForecastScorer:
    """Online GRU/LSTM forecaster of one kind, shared by all its streams.

    Parameters
    ----------
    kind
        The stream kind; fixes the channel order of inputs and outputs.
    config
        Model, training and normaliser settings (defaults: ``ModelConfig()``); the
        scorer keeps ``config.for_kind(kind.name)``, the settings of its kind.
    name
        Name reported in scores (default: the cell type, ``"gru"`` or ``"lstm"``).

    Examples
    --------
    >>> from streamwatch.kinds import get_kind
    >>> kind = get_kind("univariate")
    >>> scorer = ForecastScorer(kind, ModelConfig(hidden_size=4, window=4, burn_in=0))
    >>> wave = KindBatch(kind, ["a", "b"], np.array([0.0, 0.0]), np.array([[1.0], [2.0]]))
    >>> float(scorer.score_many(wave).score[0])  # no forecast yet
    0.0
    >>> scorer.advance_many(wave, np.array([True, True]))
    >>> scorer.learn_many(wave, np.array([True, True]))
    >>> scorer.n_streams, scorer.version
    (2, 0)
    """

    def __init__(
        self, kind: KindSpec, config: ModelConfig | None = None, *, name: str | None = None
    ) -> None:
        if not kind.channels:
            raise StreamwatchError(f"kind {kind.name!r} has no channels")
        self.kind = kind
        self.config = (config if config is not None else ModelConfig()).for_kind(kind.name)
        self.name = name if name is not None else self.config.cell
        cfg = self.config
        self.channels = len(kind.channels)
        self._groups = np.asarray(kind.group_index()) if kind.groups else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = Forecaster(
                self.channels, cfg.cell, cfg.layers, cfg.hidden_size, cfg.dropout,
                cfg.min_variance, cfg.seasonal,
            )
        self.model.eval()
        self.trainer = Trainer(self.model, cfg)
        self.state = StreamState(
            self.channels, cfg.window + 1, self.model.state_size, cfg.layers, cfg.hidden_size,
            season_bins=cfg.season_bins if cfg.seasonal else 0,
        )
        self._alpha = ew_alpha(cfg.norm_halflife)
        self.late_readings = 0
        self._wave: tuple[KindBatch, np.ndarray] | None = None  # rows of the last advance
        # the stream ids of the last score_many and their rows, when all were known: the
        # advance of the same wave (same list object) skips the lookups; reset wherever
        # rows can move (forget, import, load)
        self._scored: tuple[Sequence[str], np.ndarray] | None = None
        self.defer_training = False
        """When True (set by the detector), ``learn_many`` only stages windows and counts;
        ``train_pending`` adds them to the replay buffer in canonical (ts, stream) order
        and takes the optimiser steps, once a step is owed. The detector calls it at
        event-time tick boundaries, so parameters change at the same points of the stream
        whatever the micro-batching or the interleaving of partitions: replays give
        identical scores."""
        self._staged: list[tuple[np.ndarray, list[str], np.ndarray, np.ndarray]] = []
        self._staged_learned = 0
        self._staged_n = 0  # windows in _staged
        self._staged_dropped = 0  # staged windows left out by _trim_staged

    # ---------------------------------------------------------------- properties
    @property
    def version(self) -> int:
        """Number of optimiser steps taken so far."""
        return self.trainer.steps

    @property
    def n_streams(self) -> int:
        return len(self.state)

    @property
    def last_loss(self) -> float:
        """Training loss (masked Gaussian NLL) of the latest optimiser step; NaN before."""
        return self.trainer.last_loss

    @property
    def skipped_steps(self) -> int:
        """Optimiser steps refused because the loss or the gradient was not finite."""
        return self.trainer.skipped_steps

    def readings_seen(self, stream_ids: Sequence[str]) -> np.ndarray:
        """Readings advanced per stream (0 for a stream without state)."""
        rows = self.state.lookup(stream_ids)
        return np.where(rows >= 0, self.state["count"][np.maximum(rows, 0)], 0)

    def warming_up(self, stream_ids: Sequence[str]) -> np.ndarray:
        """True where a stream has seen fewer than ``config.warmup`` readings before the
        current one (its scores use an immature normaliser and model context)."""
        return self.readings_seen(stream_ids) < self.config.warmup

    # ---------------------------------------------------------------- the wave
    def _check(self, batch: KindBatch, flags: np.ndarray | None, what: str) -> np.ndarray:
        if batch.values.shape != (len(batch), self.channels):
            raise StreamwatchError(
                f"{self.name}: batch values have shape {batch.values.shape}, expected "
                f"({len(batch)}, {self.channels}) for kind {self.kind.name!r}"
            )
        if flags is None:
            return np.ones(len(batch), dtype=bool)
        flags = np.asarray(flags)
        if flags.shape != (len(batch),) or flags.dtype != np.bool_:
            raise StreamwatchError(
                f"{self.name}: {what} must be a bool array of shape ({len(batch)},), "
                f"got {flags.dtype} {flags.shape}"
            )
        return flags

    def score_many(self, batch: KindBatch) -> ScoreBatch:
        """Score each reading against its stream's stored forecast. No side effects (it
        remembers the rows it looked up, for ``advance_many`` of the same wave)."""
        self._check(batch, None, "")
        n, c = len(batch), self.channels
        rows = self.state.lookup(batch.stream_ids)
        known = rows >= 0
        self._scored = (batch.stream_ids, rows) if known.all() else None
        safe = np.where(known, rows, 0)
        nan = np.full((n, c), np.nan)
        mean = np.where(known[:, None], self.state["fc_mean"][safe], nan)
        std = np.where(known[:, None], self.state["fc_std"][safe], nan)
        logvar = np.where(known[:, None], self.state["fc_logvar"][safe], nan)
        channel, score = forecast_scores(batch.values, mean, std, logvar, self._groups)
        if self.config.level_score:
            st, cfg = self.state, self.config
            norm_mean = st["norm_mean"][safe]
            norm_std = ew_scale(norm_mean, st["norm_var"][safe], cfg.min_std, cfg.rel_min_std)
            usable = np.isfinite(channel) & known[:, None] & (st["norm_n"][safe] > 1)
            level_channel, level = level_scores(batch.values, norm_mean, norm_std, usable,
                                                self._groups)
            channel, score = np.fmax(channel, level_channel), np.maximum(score, level)
        return ScoreBatch(score=score, channel_scores=channel, mean=mean, std=std)

    def advance_many(self, batch: KindBatch, observe: np.ndarray) -> None:
        """One batched cell step for the wave; rows with ``observe`` False are fed as
        all-missing (the forecast freewheels on the model's own context)."""
        observe = self._check(batch, observe, "observe")
        if len(set(batch.stream_ids)) != len(batch):
            raise StreamwatchError(f"{self.name}: a wave must hold each stream at most once")
        if len(batch) == 0:
            return
        st, cfg = self.state, self.config
        scored, self._scored = self._scored, None
        if scored is not None and scored[0] is batch.stream_ids and len(scored[1]) == len(batch):
            rows = scored[1]  # the wave just scored, every stream known: same rows
        else:
            rows = st.ensure(batch.stream_ids)
        ts = batch.ts.astype(np.float64)
        last = st["last_ts"][rows]
        gap = ts - last
        late = int(np.sum(gap <= 0))
        if late:
            self.late_readings += late
            log.debug("late or duplicated timestamps fed with gap 0", extra={"count": late})
        st["last_ts"][rows] = np.fmax(last, ts)
        gap_f = gap_feature(gap, cfg.max_gap_s)
        values = batch.values.astype(np.float64)
        has_stats = st["norm_n"][rows] > 0
        norm_mean = st["norm_mean"][rows]
        norm_std = ew_scale(norm_mean, st["norm_var"][rows], cfg.min_std, cfg.rel_min_std)
        z = (values - norm_mean) / norm_std
        in_mask = observe[:, None] & ~np.isnan(values) & has_stats
        season = None
        if cfg.seasonal:
            s_now, s_next = self._season_lookup(rows, ts, gap)
            pos = st["count"][rows] % st.ring_len
            st["ring_s_now"][rows, pos] = s_now
            st["ring_s_next"][rows, pos] = s_next
            season = ((s_now - norm_mean) / norm_std, (s_next - norm_mean) / norm_std)
        x = torch.from_numpy(step_inputs(z, in_mask, gap_f, cfg.input_clip, season))
        index = torch.from_numpy(rows)
        with torch.inference_mode():
            state = st.hidden.index_select(2, index)
            state, top = self.model.step(x, state)
            mu, lv = self.model.head_out(top, x)
            st.hidden.index_copy_(2, index, state)
        mu_np, lv_np = mu.double().numpy(), lv.double().numpy()
        st["fc_mean"][rows] = np.where(has_stats, norm_mean + norm_std * mu_np, np.nan)
        st["fc_std"][rows] = np.where(has_stats, norm_std * np.exp(0.5 * lv_np), np.nan)
        st["fc_logvar"][rows] = np.where(has_stats, lv_np, np.nan)
        st["has_forecast"][rows] = True
        pos = st["count"][rows] % st.ring_len
        st["ring_raw"][rows, pos] = values
        st["ring_gap"][rows, pos] = gap_f
        st["ring_observed"][rows, pos] = observe
        st["ring_trainable"][rows, pos] = False
        st["count"][rows] += 1
        st["pending"][rows] = True
        self._wave = (batch, rows)

    def learn_many(self, batch: KindBatch, mask: np.ndarray) -> None:
        """Learn from the masked rows only: normaliser, replay windows, optimiser steps."""
        mask = self._check(batch, mask, "mask")
        st, cfg = self.state, self.config
        if self._wave is not None and self._wave[0] is batch:
            rows = self._wave[1]  # same wave as the last advance: skip the lookups
        else:
            rows = st.lookup(batch.stream_ids)
        ready = (rows >= 0) & st["pending"][np.maximum(rows, 0)]
        if np.any(mask & ~ready):
            bad = [s for s, m, r in zip(batch.stream_ids, mask, ready, strict=True) if m and not r]
            raise StreamwatchError(
                f"{self.name}: learn_many before advance_many for {len(bad)} stream(s), "
                f"e.g. {bad[0]!r}: advance each wave first (see Scorer)"
            )
        st["pending"][rows[ready]] = False
        sel = rows[mask]
        if sel.size == 0:
            return
        values = batch.values[mask].astype(np.float64)
        observed = ~np.isnan(values)
        if cfg.seasonal:
            self._season_learn(sel, batch.ts[mask].astype(np.float64), values)
        mean, var, n = ew_update(st["norm_mean"][sel], st["norm_var"][sel],
                                 st["norm_n"][sel], values, observed, self._alpha)
        st["norm_mean"][sel], st["norm_var"][sel], st["norm_n"][sel] = mean, var, n
        st["ring_trainable"][sel, st.ring_latest(sel)] = True
        st["learned"][sel] += 1
        take = (st["learned"][sel] % cfg.replay_every == 0) & (st["count"][sel] >= max(cfg.warmup, 2))
        eligible = sel[take]
        if self.defer_training:
            if eligible.size:
                pos = np.flatnonzero(mask)[take]
                self._staged.append((batch.ts[pos].copy(), [batch.stream_ids[i] for i in pos],
                                     *self._windows(eligible)))
                self._staged_n += int(pos.size)
                if self._staged_n > 2 * cfg.replay_capacity:
                    self._trim_staged()
            self._staged_learned += int(sel.size)
            return
        if eligible.size:
            self.trainer.replay.add(*self._windows(eligible))
        self.trainer.on_learned(int(sel.size))

    def training_room(self) -> int:
        """How many more readings can be learned before ``train_pending`` has anything to
        do: while it is positive, a tick boundary changes nothing (the detector does not cut
        a batch there)."""
        return max(0, self.config.train_every - self.trainer.pending - self._staged_learned)

    def train_pending(self) -> int:
        """Once a step is owed: move the staged windows into the replay buffer in (ts,
        stream) order and take the optimiser steps (see ``defer_training``). Returns steps
        taken. Until then the windows stay staged, so the buffer holds the same windows in
        the same order at each step wherever the tick boundaries between two steps fell."""
        if self.training_room() > 0:
            return 0
        if self._staged:
            _ts, _sids, x, y = self._sorted_staged()
            self.trainer.replay.add(x, y)
            self.trainer.replay.added += self._staged_dropped
            self._staged, self._staged_n, self._staged_dropped = [], 0, 0
        learned, self._staged_learned = self._staged_learned, 0
        return self.trainer.on_learned(learned) if learned else 0

    def _sorted_staged(self) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        ts = np.concatenate([item[0] for item in self._staged])
        sids = [sid for item in self._staged for sid in item[1]]
        order = sorted(range(len(sids)), key=lambda i: (ts[i], sids[i]))
        x = np.concatenate([item[2] for item in self._staged])[order]
        y = np.concatenate([item[3] for item in self._staged])[order]
        return ts[order], [sids[i] for i in order], x, y

    def _trim_staged(self) -> None:
        """Keep the last ``replay_capacity`` staged windows in (ts, stream) order: the
        replay ring would keep no others of them. Bounds the memory (and the checkpoint)
        while no step is owed for a long time: with ``train_every`` far above the
        buffer, or while the event time stays behind the kind's training tick (a
        restored checkpoint fed older readings), when ticks do not advance."""
        ts, sids, x, y = self._sorted_staged()
        keep = self.config.replay_capacity
        self._staged_dropped += len(sids) - keep
        self._staged = [(ts[-keep:], sids[-keep:], x[-keep:], y[-keep:])]
        self._staged_n = keep

    def _windows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training windows ending at each row's latest reading (current statistics)."""
        st, cfg = self.state, self.config
        mean, std = self._norm(rows)
        raw = st.ring_read("ring_raw", rows).astype(np.float64)
        z = (raw - mean[:, None]) / std[:, None]
        z = np.where((st["norm_n"][rows] > 0)[:, None, :], z, np.nan)
        return build_windows(
            z, st.ring_read("ring_gap", rows), st.ring_read("ring_observed", rows),
            st.ring_read("ring_trainable", rows), st.ring_valid(rows),
            cfg.input_clip, cfg.burn_in, self._ring_season(rows, mean, std),
        )

    def _ring_season(
        self, rows: np.ndarray, mean: np.ndarray, std: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The seasonal profile values of each ring entry, normalised (oldest first)."""
        if not self.config.seasonal:
            return None
        st = self.state
        valid = st.ring_valid(rows)[:, :, None]

        def normalised(name: str) -> np.ndarray:
            return np.where(valid, (st.ring_read(name, rows) - mean[:, None]) / std[:, None],
                            np.nan)

        return normalised("ring_s_now"), normalised("ring_s_next")

    def _season_lookup(
        self, rows: np.ndarray, ts: np.ndarray, gap: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw profile values ``(s_now, s_next)`` (n, C) at each reading's phase and at the
        phase of its stream's next reading (``ts + last gap``; NaN while no gap is known),
        before this reading enters the profile. Updates ``last_gap``."""
        st, cfg = self.state, self.config
        last_gap = np.where(gap > 0, gap, st["last_gap"][rows])
        st["last_gap"][rows] = last_gap
        prof = st["season_prof"]
        s_now = prof[rows, season_bin(ts, cfg.season_s, cfg.season_bins)]
        known = np.isfinite(last_gap)
        nxt = season_bin(ts + np.where(known, last_gap, 0.0), cfg.season_s, cfg.season_bins)
        s_next = np.where(known[:, None], prof[rows, nxt], np.nan)
        return s_now, s_next

    def _season_learn(self, rows: np.ndarray, ts: np.ndarray, values: np.ndarray) -> None:
        """Blend learned values into their phase bin (``season_alpha``); missing skipped."""
        cfg = self.config
        prof = self.state["season_prof"]
        bins = season_bin(ts, cfg.season_s, cfg.season_bins)
        old = prof[rows, bins]
        new = np.where(np.isnan(old), values, old + cfg.season_alpha * (values - old))
        prof[rows, bins] = np.where(np.isnan(values), old, new)

    def _norm(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        st, cfg = self.state, self.config
        mean = st["norm_mean"][rows]
        return mean, ew_scale(mean, st["norm_var"][rows], cfg.min_std, cfg.rel_min_std)

    # ---------------------------------------------------------------- drift and streams
    def adapt_streams(self, stream_ids: Sequence[str]) -> None:
        """Accept each stream's recent window as its new normal.

        The normaliser is re-seeded from the recent window's values (observed or not;
        count = number of values, so the warm-start weighting continues from there), the
        recurrent state restarts from zero and is warmed over the window with every value
        fed as observed, and the stored forecast is replaced by the warmed one. Window
        entries are marked observed (they are the stream's normal now) but not trainable.
        Channels with no value in the window keep their statistics. Unknown ids are ignored.
        """
        st, cfg = self.state, self.config
        rows = st.lookup(stream_ids)
        rows = np.unique(rows[rows >= 0])
        if rows.size == 0:
            return
        valid = st.ring_valid(rows)
        raw = np.where(valid[:, :, None], st.ring_read("ring_raw", rows), np.nan)
        raw = raw.astype(np.float64)
        finite = ~np.isnan(raw)
        count = finite.sum(axis=1)
        mean = np.where(finite, raw, 0.0).sum(axis=1) / np.maximum(count, 1)
        var = np.where(finite, (raw - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(count, 1)
        seeded = count > 0
        st["norm_mean"][rows] = np.where(seeded, mean, st["norm_mean"][rows])
        st["norm_var"][rows] = np.where(seeded, var, st["norm_var"][rows])
        st["norm_n"][rows] = np.where(seeded, count, st["norm_n"][rows])
        norm_mean, norm_std = self._norm(rows)
        has_stats = st["norm_n"][rows] > 0
        z = (raw - norm_mean[:, None]) / norm_std[:, None]
        gap = np.where(valid, st.ring_read("ring_gap", rows), 0.0)
        season = self._ring_season(rows, norm_mean, norm_std)
        index = torch.from_numpy(rows)
        with torch.inference_mode():
            state = self.model.initial_state(rows.size)
            for t in range(st.ring_len):
                in_mask = ~np.isnan(z[:, t]) & has_stats
                step_season = None if season is None else (season[0][:, t], season[1][:, t])
                x = torch.from_numpy(step_inputs(z[:, t], in_mask, gap[:, t], cfg.input_clip,
                                                 step_season))
                state, top = self.model.step(x, state)
            mu, lv = self.model.head_out(top, x)
            st.hidden.index_copy_(2, index, state)
        mu_np, lv_np = mu.double().numpy(), lv.double().numpy()
        st["fc_mean"][rows] = np.where(has_stats, norm_mean + norm_std * mu_np, np.nan)
        st["fc_std"][rows] = np.where(has_stats, norm_std * np.exp(0.5 * lv_np), np.nan)
        st["fc_logvar"][rows] = np.where(has_stats, lv_np, np.nan)
        st["has_forecast"][rows] = True
        positions = st.ring_positions(rows)
        st["ring_observed"][rows[:, None], positions] |= valid
        log.debug("streams adapted to their recent window", extra={"streams": int(rows.size)})

    def forget_streams(self, stream_ids: Sequence[str]) -> None:
        self._wave = self._scored = None
        dropped = self.state.forget(stream_ids)
        log.debug("streams forgotten", extra={"streams": dropped})

    def export_streams(self, stream_ids: Sequence[str]) -> dict[str, Any]:
        """Per-stream state (torch tensors, lists, ints) of the known ids among these."""
        return self.state.export(stream_ids)

    def import_streams(self, state: dict[str, Any]) -> None:
        """Overwrite or create the streams of an ``export_streams`` result."""
        self._wave = self._scored = None
        self.state.import_(state)

    # ---------------------------------------------------------------- checkpoint
    def state_dict(self, *, include_streams: bool = True) -> dict[str, Any]:
        """Everything needed to continue exactly (plain tensors, dicts, lists, numbers).

        With ``include_streams=False`` the per-stream state is left out (the global part
        only: weights, optimiser, replay, RNGs), for services that keep per-stream state
        per partition through ``export_streams``; loading such a state keeps no streams.
        """
        state = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "kind": self.kind.name,
            "channels": list(self.kind.channels),
            "config": self.config.model_dump(),
            "model": self.model.state_dict(),
            "trainer": self.trainer.state_dict(),
            "late_readings": self.late_readings,
            "staged": self._staged_state(),
        }
        if include_streams:
            state["streams"] = self.state.export_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()`` output; ``CheckpointError`` if it does not fit.

        The state is loaded into a fresh scorer first, so a failure leaves this one as it
        was. Streams not in ``state`` are dropped.
        """
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{self.name}: not a forecast scorer state (format "
                                  f"{state.get('format') if isinstance(state, dict) else None!r})")
        if state.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{self.name}: forecast scorer state format version "
                f"{state.get('format_version')!r}, this version reads {FORMAT_VERSION}"
            )
        if list(state.get("channels", [])) != list(self.kind.channels):
            raise CheckpointError(
                f"{self.name}: state is for channels {state.get('channels')}, kind "
                f"{self.kind.name!r} has {list(self.kind.channels)}"
            )
        mine = self.config.model_dump()
        theirs = dict(state.get("config", {}))
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            detail = ", ".join(f"{k}: saved {theirs.get(k)!r} vs now {mine.get(k)!r}"
                               for k in diff)
            raise CheckpointError(
                f"{self.name}: model config differs from the checkpoint ({detail}); use the "
                "saved settings or start fresh"
            )
        # Load into a fresh scorer first: a failure leaves this one untouched.
        fresh = ForecastScorer(self.kind, self.config, name=self.name)
        try:
            fresh.model.load_state_dict(state["model"])
            fresh.trainer.load_state_dict(state["trainer"])
            if "streams" in state:
                fresh.state.import_(state["streams"])
            fresh.late_readings = int(state.get("late_readings", 0))
            fresh._load_staged(state.get("staged"))
        except KeyError as exc:
            raise CheckpointError(f"{self.name}: state lacks the field {exc.args[0]!r}") from None
        except (RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.name}: state does not fit this model: {exc}") from exc
        fresh.model.eval()
        self.model, self.trainer, self.state = fresh.model, fresh.trainer, fresh.state
        self.late_readings = fresh.late_readings
        self._staged, self._staged_learned = fresh._staged, fresh._staged_learned
        self._staged_n, self._staged_dropped = fresh._staged_n, fresh._staged_dropped
        self._wave = self._scored = None

    def _staged_state(self) -> dict[str, Any]:
        if not self._staged:
            return {"learned": self._staged_learned, "n": 0}
        return {
            "learned": self._staged_learned,
            "dropped": self._staged_dropped,
            "n": self._staged_n,
            "ts": torch.from_numpy(np.concatenate([item[0] for item in self._staged])),
            "sids": [sid for item in self._staged for sid in item[1]],
            "x": torch.from_numpy(np.concatenate([item[2] for item in self._staged])),
            "y": torch.from_numpy(np.concatenate([item[3] for item in self._staged])),
        }

    def _load_staged(self, staged: dict[str, Any] | None) -> None:
        if not staged:
            return
        self._staged_learned = int(staged["learned"])
        self._staged_dropped = int(staged.get("dropped", 0))
        if int(staged["n"]):
            self._staged = [(staged["ts"].numpy().copy(), list(staged["sids"]),
                             staged["x"].numpy().copy(), staged["y"].numpy().copy())]
            self._staged_n = len(self._staged[0][1])
