"""Planning labelled episodes: how many, which type, when, spaced apart.

Plans are drawn per stream from its own generator before any reading is generated, so
``episodes(duration)`` and ``readings(duration)`` agree and the same seed gives the same
plan. Rules (per stream):

- nothing starts inside the warm-up (default the first 2 h) and everything ends before the
  run does, so every labelled episode is complete;
- *main* episodes (clinical episodes, machine faults) number ``poisson(rate * days)``,
  where ``days`` is the usable time after warm-up, and are spaced at least ``gap_s`` apart
  (onsets spread uniformly over the free time); a plan that does not fit drops its
  longest episodes first;
- *artefacts* number ``poisson(rate * days)`` and are scattered in the remaining time,
  at least ``margin_s`` away from main episodes and from each other (rejection sampling,
  bounded tries; one that finds no room is left out and logged at DEBUG).

Episode windows are half-open: a reading belongs to an episode when
``onset_ts <= ts < end_ts``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from streamwatch.schema import Episode

log = logging.getLogger(__name__)

Category = Literal["clinical", "artefact", "fault"]

CLINICAL_TYPES = ("sepsis", "desaturation", "tachycardia", "bradycardia", "hypotension")
ACUTE_TYPES = frozenset({"desaturation", "tachycardia", "bradycardia", "hypotension"})
"""Clinical types with minutes-scale onset (issue 3's delay target); sepsis is gradual."""
ARTEFACT_TYPES = ("probe_off", "flatline", "spike", "dropout")
FAULT_TYPES = ("spike", "level_shift", "slow_drift", "stuck", "variance_burst", "missing")

_NAMESPACE = uuid.UUID("6f1c2a0e-8a57-4d0c-9d3b-7d8c2f2b9e41")


@dataclass(frozen=True)
class Planned:
    """One planned episode of one stream, in steps (``end`` exclusive).

    ``channels`` are channel indices of the stream's kind; ``params`` are type-specific
    numbers drawn at plan time (targets, ramps, spike values, ...).
    """

    stream: int
    type: str
    category: Category
    onset: int
    end: int
    channels: tuple[int, ...]
    params: Mapping[str, float] = field(default_factory=dict)
    channel_names: tuple[str, ...] = ()

    @property
    def length(self) -> int:
        return self.end - self.onset


@dataclass(frozen=True)
class Draft:
    """An episode before placement: type, duration (s), and how to finish it once placed."""

    type: str
    category: Category
    duration_s: float
    channels: tuple[int, ...]
    params: Mapping[str, float] = field(default_factory=dict)


Drafter = Callable[[np.random.Generator, str], Draft]


def choose_types(
    rng: np.random.Generator, count: int, weights: Mapping[str, float]
) -> list[str]:
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    if count == 0 or p.sum() <= 0:
        return []
    picks = rng.choice(len(names), size=count, p=p / p.sum())
    return [names[i] for i in picks]


def place_spaced(
    rng: np.random.Generator,
    drafts: list[Draft],
    window: tuple[float, float],
    gap_s: float,
) -> list[tuple[float, Draft]]:
    """Onsets (s) for ``drafts`` inside ``window``, in draft order, ``gap_s`` apart.

    Drops the longest drafts until the rest fit; spreads the slack uniformly.
    """
    drafts = list(drafts)
    lo, hi = window
    while drafts:
        needed = sum(d.duration_s for d in drafts) + gap_s * (len(drafts) - 1)
        if needed <= hi - lo:
            break
        longest = max(range(len(drafts)), key=lambda i: drafts[i].duration_s)
        log.debug("episode does not fit, dropped type=%s", drafts[longest].type)
        drafts.pop(longest)
    if not drafts:
        return []
    slack = (hi - lo) - sum(d.duration_s for d in drafts) - gap_s * (len(drafts) - 1)
    offsets = np.sort(rng.uniform(0.0, slack, size=len(drafts)))
    placed, cursor = [], lo
    for offset, draft in zip(offsets.tolist(), drafts, strict=True):
        onset = cursor + offset
        placed.append((onset, draft))
        cursor += draft.duration_s + gap_s
    return placed


def place_scattered(
    rng: np.random.Generator,
    drafts: Sequence[Draft],
    window: tuple[float, float],
    busy: list[tuple[float, float]],
    margin_s: float,
    tries: int = 60,
) -> list[tuple[float, Draft]]:
    """Onsets for ``drafts`` anywhere in ``window`` at least ``margin_s`` from ``busy``."""
    taken = list(busy)
    placed = []
    lo, hi = window
    for draft in drafts:
        if hi - lo < draft.duration_s:
            continue
        for _ in range(tries):
            onset = float(rng.uniform(lo, hi - draft.duration_s))
            end = onset + draft.duration_s
            if all(end + margin_s <= a or onset >= b + margin_s for a, b in taken):
                placed.append((onset, draft))
                taken.append((onset, end))
                break
        else:
            log.debug("no room for artefact type=%s after %d tries", draft.type, tries)
    return placed


@dataclass(frozen=True)
class PlanRules:
    """Per-stream planning rules: rates per stream-day, type weights, spacing."""

    main_rate: float
    main_weights: Mapping[str, float]
    extra_rate: float
    extra_weights: Mapping[str, float]
    warmup_s: float
    gap_s: float
    margin_s: float
    tail_s: float = 300.0


def plan_stream(
    rng: np.random.Generator,
    stream: int,
    duration_s: float,
    rate_hz: float,
    rules: PlanRules,
    draft: Drafter,
    channel_names: Sequence[str],
) -> list[Planned]:
    """Plan one stream's main episodes and artefacts (see the module docstring)."""
    window = (rules.warmup_s, duration_s - rules.tail_s)
    usable_days = max(0.0, window[1] - window[0]) / 86_400.0
    n_main = int(rng.poisson(rules.main_rate * usable_days)) if usable_days > 0 else 0
    n_extra = int(rng.poisson(rules.extra_rate * usable_days)) if usable_days > 0 else 0
    main = [draft(rng, t) for t in choose_types(rng, n_main, rules.main_weights)]
    extra = [draft(rng, t) for t in choose_types(rng, n_extra, rules.extra_weights)]
    placed = place_spaced(rng, main, window, rules.gap_s) if usable_days > 0 else []
    busy = [(onset, onset + d.duration_s) for onset, d in placed]
    placed += place_scattered(rng, extra, window, busy, rules.margin_s) if usable_days else []
    plans = []
    for onset_s, d in placed:
        onset = round(onset_s * rate_hz)
        end = max(onset + 1, round((onset_s + d.duration_s) * rate_hz))
        plans.append(
            Planned(
                stream=stream,
                type=d.type,
                category=d.category,
                onset=onset,
                end=end,
                channels=d.channels,
                params=d.params,
                channel_names=tuple(channel_names[c] for c in d.channels),
            )
        )
    return sorted(plans, key=lambda p: p.onset)


def to_episode(
    plan: Planned, stream_id: str, kind: str, start_ts: float, rate_hz: float, seed: int
) -> Episode:
    onset_ts = start_ts + plan.onset / rate_hz
    return Episode(
        episode_id=str(uuid.uuid5(_NAMESPACE, f"{seed}|{stream_id}|{plan.type}|{onset_ts:.3f}")),
        stream_id=stream_id,
        kind=kind,
        type=plan.type,
        category=plan.category,
        onset_ts=onset_ts,
        end_ts=start_ts + plan.end / rate_hz,
        channels=list(plan.channel_names),
    )


def active(plans: Sequence[Planned], first: int, stop: int) -> list[Planned]:
    """Plans that overlap steps ``[first, stop)``."""
    return [p for p in plans if p.onset < stop and p.end > first]
