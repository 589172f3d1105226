"""What the ICU and sensor simulators share: seeding, chunked generation, Readings out.

A simulator draws every random number from per-stream generators derived from
``(seed, kind tag, stream index)``, sequentially, so stream ``i`` looks the same whatever
the number of streams or the chunk size, and the noise does not depend on the run's
duration: the first hour of a 24 h run equals a 1 h run whenever no episode straddles the
one-hour mark (episode plans depend on the duration, see ``simulators.episodes``).

Generation is vectorised over streams, one chunk of time steps at a time (at most
``CHUNK_STEPS`` steps and ``CHUNK_READINGS`` readings); ``readings()`` turns each chunk into
lists of ``Reading`` (one list per time step).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from simulators.episodes import Planned, to_episode
from streamwatch.errors import ConfigError
from streamwatch.schema import Episode, Reading

DEFAULT_START = 1767225600.0
"""2026-01-01T00:00:00Z: fixed epoch of simulated time, so output is reproducible."""

CHUNK_STEPS = 600
"""At most this many time steps per vectorised chunk."""
CHUNK_READINGS = 100_000
"""At most this many readings per chunk, so memory stays bounded with many streams."""

MAX_RATE_HZ = 100.0
MIN_RATE_HZ = 1e-4
"""One reading per ~2.8 h. Below ~2e-5 Hz the vital-sign processes' step over so long a gap
gave null values only (exit 0, with numpy warnings); the simulators model ~1 Hz monitors."""
MAX_STREAMS = 100_000
DAY_S = 86_400.0


def check_common(streams: int, seed: int, start_ts: float, rate_hz: float, what: str) -> None:
    """Argument checks shared by the simulators; the message names the allowed range."""
    if isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= MAX_STREAMS:
        raise ConfigError(f"{what} must be an integer in [1, {MAX_STREAMS}], got {streams!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not (math.isfinite(start_ts) and start_ts >= 0):
        raise ConfigError(f"start_ts must be finite epoch seconds >= 0, got {start_ts!r}")
    if not (math.isfinite(rate_hz) and MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ):
        raise ConfigError(f"rate_hz must be in [{MIN_RATE_HZ:g}, {MAX_RATE_HZ:g}] readings per "
                          f"second per stream, got {rate_hz!r}")


def check_rate(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1000):
        raise ConfigError(f"{name} must be in [0, 1000] per stream-day, got {value!r}")


def check_spacing(warmup_s: float, gap_s: float) -> None:
    if not (math.isfinite(warmup_s) and 0 <= warmup_s <= 30 * DAY_S):
        raise ConfigError(f"warmup_s must be in [0, 30 days], got {warmup_s!r}")
    if not (math.isfinite(gap_s) and 0 <= gap_s <= DAY_S):
        raise ConfigError(f"gap_s must be in [0, 1 day], got {gap_s!r}")


def check_weights(name: str, weights: Mapping[str, float], known: Sequence[str]) -> dict[str, float]:
    """A copy of ``weights`` after checking names and values (>= 0, some > 0)."""
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ConfigError(f"{name}: unknown type(s) {unknown}; known: {list(known)}")
    if any(not (math.isfinite(w) and w >= 0) for w in weights.values()) or not any(
        w > 0 for w in weights.values()
    ):
        raise ConfigError(f"{name}: weights must be finite and >= 0, at least one > 0")
    return {k: float(w) for k, w in weights.items()}


def check_duration(duration_s: float) -> None:
    if not (math.isfinite(duration_s) and 0 < duration_s <= 366 * DAY_S):
        raise ConfigError(f"duration must be in (0 s, 366 d], got {duration_s!r} s")


def chunk_steps(streams: int) -> int:
    """Time steps per chunk for ``streams`` streams.

    The output does not depend on it: each stream draws its normals sequentially from its
    own generator, so the same numbers arrive whatever the chunk boundaries.
    """
    return max(1, min(CHUNK_STEPS, CHUNK_READINGS // streams))


def n_steps(duration_s: float, rate_hz: float) -> int:
    """Number of time steps in ``duration_s`` (1 h at 1 Hz -> 3600)."""
    check_duration(duration_s)
    return max(1, math.floor(duration_s * rate_hz + 1e-9))


def stream_rng(seed: int, tag: int, stream: int, purpose: int) -> np.random.Generator:
    """Independent generator for one stream and one purpose (baseline, plan, noise)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(tag, stream, purpose)))


def first_order(inputs: np.ndarray, decay: np.ndarray, gain: np.ndarray,
                state: np.ndarray) -> np.ndarray:
    """``x[t] = decay * x[t-1] + gain * inputs[t]`` along axis 0, vectorised.

    Starts from ``state`` (the value before ``inputs[0]``) and updates it in place to the
    last value. Uses block-wise scaled cumulative sums (no Python loop over time); block
    lengths keep ``decay**-L`` below e**10, so rounding stays around 1e-12.
    """
    decay = np.asarray(decay, dtype=np.float64)
    rate = -np.log(np.min(decay))
    block = inputs.shape[0] if rate <= 0 else max(1, int(10.0 / rate))
    scaled = inputs * gain
    out = np.empty_like(scaled)
    for begin in range(0, inputs.shape[0], block):
        seg = scaled[begin : begin + block]
        steps = np.arange(1, seg.shape[0] + 1, dtype=np.float64)
        steps = steps.reshape((-1,) + (1,) * (seg.ndim - 1))
        power = decay**steps  # decay^t
        acc = np.cumsum(seg / power, axis=0)
        out[begin : begin + seg.shape[0]] = power * (state + acc)
        state[...] = out[begin + seg.shape[0] - 1]
    return out


def ar1(innovations: np.ndarray, decay: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Unit-variance AR(1) paths along axis 0, vectorised over the other axes.

    ``x[t] = decay * x[t-1] + sqrt(1 - decay**2) * innovations[t]`` (see ``first_order``).

    >>> import numpy as np
    >>> z = np.random.default_rng(0).standard_normal((50, 3))
    >>> a, s = np.array([0.5, 0.9, 0.99]), np.zeros(3)
    >>> x = ar1(z, a, s.copy())
    >>> ref, prev = [], np.zeros(3)
    >>> for row in z:
    ...     prev = a * prev + np.sqrt(1 - a**2) * row
    ...     ref.append(prev)
    >>> bool(np.allclose(x, np.array(ref)))
    True
    """
    decay = np.asarray(decay, dtype=np.float64)
    return first_order(innovations, decay, np.sqrt(1.0 - decay**2), state)


def lowpass(inputs: np.ndarray, decay: np.ndarray, state: np.ndarray) -> np.ndarray:
    """First-order lag (unit DC gain): ``y[t] = decay * y[t-1] + (1 - decay) * x[t]``."""
    decay = np.asarray(decay, dtype=np.float64)
    return first_order(inputs, decay, 1.0 - decay, state)


def smooth_profile(t: np.ndarray, length: float, ramp_up: float, ramp_down: float) -> np.ndarray:
    """Episode intensity in [0, 1] at offsets ``t`` (steps) from its onset.

    Smoothstep rise over ``ramp_up`` steps, plateau, smoothstep fall over ``ramp_down``
    steps ending at ``length``; 0 outside [0, length).
    """
    up = np.clip(t / max(ramp_up, 1e-9), 0.0, 1.0)
    down = np.clip((length - t) / max(ramp_down, 1e-9), 0.0, 1.0)
    level = np.minimum(up, down)
    level = level * level * (3.0 - 2.0 * level)
    return np.where((t >= 0) & (t < length), level, 0.0)


@dataclass(frozen=True)
class Chunk:
    """One generated chunk: ``values[t, s, c]`` (NaN = null) and ``present[t, s]``."""

    first_step: int
    values: np.ndarray
    present: np.ndarray


def round_columns(values: np.ndarray, decimals: Sequence[int]) -> None:
    """Round each channel (last axis) in place to its number of decimals."""
    for c, digits in enumerate(decimals):
        np.round(values[..., c], digits, out=values[..., c])


def chunk_to_readings(
    chunk: Chunk,
    stream_ids: Sequence[str],
    kind: str,
    channels: Sequence[str],
    start_ts: float,
    rate_hz: float,
) -> Iterator[list[Reading]]:
    """One list of Readings per time step of ``chunk`` (streams in index order)."""
    values = chunk.values
    has_nan = np.isnan(values).any(axis=2)
    all_present = bool(chunk.present.all())
    any_nan = has_nan.any(axis=1).tolist()
    for t in range(values.shape[0]):
        ts = start_ts + (chunk.first_step + t) / rate_hz
        step_rows = values[t].tolist()
        if all_present and not any_nan[t]:
            yield [
                Reading(stream_id=sid, kind=kind, ts=ts, values=dict(zip(channels, row, strict=True)))
                for sid, row in zip(stream_ids, step_rows, strict=True)
            ]
            continue
        present, nan_rows = chunk.present[t].tolist(), has_nan[t].tolist()
        step: list[Reading] = []
        for s, row in enumerate(step_rows):
            if not present[s]:
                continue
            if nan_rows[s]:
                vals: dict[str, float | None] = {
                    c: (None if v != v else v) for c, v in zip(channels, row, strict=True)
                }
            else:
                vals = dict(zip(channels, row, strict=True))
            step.append(Reading(stream_id=stream_ids[s], kind=kind, ts=ts, values=vals))
        yield step


def stream_ids(prefix: str, count: int) -> list[str]:
    """``icu/bed-01`` ... (1-based, zero-padded to at least two digits)."""
    width = max(2, len(str(count)))
    return [f"{prefix}-{i + 1:0{width}d}" for i in range(count)]


def episodes_for(
    plans: Sequence[Planned],
    ids: Sequence[str],
    kind: str,
    start_ts: float,
    rate_hz: float,
    seed: int,
) -> list[Episode]:
    """Public labels of planned episodes, sorted by onset then stream id."""
    labels = [to_episode(p, ids[p.stream], kind, start_ts, rate_hz, seed) for p in plans]
    return sorted(labels, key=lambda e: (e.onset_ts, e.stream_id, e.type))


class Simulator:
    """Shared public API of the seeded simulators (subclasses plan and generate chunks)."""

    kind: ClassVar[str]
    channels: ClassVar[tuple[str, ...]]
    seed: int
    start_ts: float
    rate_hz: float
    stream_ids: list[str]

    def _plans(self, duration_s: float) -> list[list[Planned]]:
        raise NotImplementedError

    def _chunks(self, total: int, plans: list[list[Planned]]) -> Iterator[Chunk]:
        raise NotImplementedError

    def episodes(self, duration_s: float) -> list[Episode]:
        """Labels of every episode of a run of ``duration_s`` seconds, sorted by onset.

        Planned from the seed before generation: the same labels ``readings`` injects.
        """
        n_steps(duration_s, self.rate_hz)  # checks the duration
        plans = [p for stream in self._plans(duration_s) for p in stream]
        return episodes_for(plans, self.stream_ids, self.kind, self.start_ts, self.rate_hz,
                            self.seed)

    def readings(self, duration_s: float) -> Iterator[list[Reading]]:
        """One list per time step: every stream's reading of that step, ts ascending.

        A list may be empty only when every stream dropped that sample (ICU dropouts).
        """
        total = n_steps(duration_s, self.rate_hz)
        for chunk in self._chunks(total, self._plans(duration_s)):
            yield from chunk_to_readings(chunk, self.stream_ids, self.kind, self.channels,
                                         self.start_ts, self.rate_hz)

    def arrays(self, duration_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same run as arrays: ``ts (T,)``, ``values (T, S, C)`` with NaN for null,
        and ``present (T, S)`` (False where a sample was dropped). Streams and channels
        are in ``stream_ids`` / ``channels`` order.
        """
        total = n_steps(duration_s, self.rate_hz)
        chunks = list(self._chunks(total, self._plans(duration_s)))
        ts = self.start_ts + np.arange(total) / self.rate_hz
        values = np.concatenate([c.values for c in chunks])
        present = np.concatenate([c.present for c in chunks])
        values[~present] = np.nan
        return ts, values, present
