"""Industrial machine simulator: temperature, vibration, pressure and current with faults.

Signal model per machine (values drawn per machine from its own seed): a load in [0.1, 1]
made of a nominal level (0.5-0.75), a day-shift pattern (busier 06:00-22:00 simulated
UTC, smooth hour-long transitions) and two AR(1) processes (30 min and 1 min); the channels follow the load, which
couples them:

- current = I0 * (0.3 + 0.7 * load) (I0 30-60 A), noise 0.25 A, 0.01 A resolution;
- temperature = ambient (18-26 °C, +-2 daily) + kT * slow load through a 15 min thermal lag (kT 35-55) + a 10 min
  AR(1), noise 0.1 °C, 0.01 °C resolution;
- vibration = v0 * (0.6 + 0.6 * load) * (1 + 4 % AR(1)) (v0 1.5-3.5 mm/s RMS), 0.001;
- pressure = p0 + kP * load (p0 4-6 bar, kP 1-2) + AR(1), noise 0.02 bar, 0.001.

Faults (category "fault") hit one channel each, with magnitudes in units of that
channel's typical scale ``SCALE``: spike (one sample, 8-15 scales), level shift
(20-90 min, 4-8 scales), slow drift (1-3 h ramp to 6-10 scales, reset at its end), stuck
value (10-45 min, the last value repeated), variance burst (5-20 min of extra noise,
2-4 scales), missing data (2-15 min of null values; the reading itself still arrives).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from simulators.base import (
    DAY_S,
    DEFAULT_START,
    Chunk,
    Simulator,
    ar1,
    check_common,
    check_rate,
    check_spacing,
    check_weights,
    chunk_steps,
    lowpass,
    round_columns,
    stream_ids,
    stream_rng,
)
from simulators.episodes import FAULT_TYPES, Draft, Planned, PlanRules, active, plan_stream
from streamwatch.kinds import MACHINE, get_kind

CHANNELS = get_kind(MACHINE).channels  # temperature, vibration, pressure, current
TEMPERATURE, VIBRATION, PRESSURE, CURRENT = range(4)
DECIMALS = (2, 3, 3, 2)
SCALE = np.array([1.5, 0.25, 0.12, 2.5])
"""Typical variability per channel; fault magnitudes are multiples of it."""
_TAG = 2

FAULT_WEIGHTS = {
    "spike": 0.2,
    "level_shift": 0.16,
    "slow_drift": 0.16,
    "stuck": 0.16,
    "variance_burst": 0.16,
    "missing": 0.16,
}
# Latent AR(1): slow load, fast load, temperature, vibration, pressure (seconds).
_TAU = np.array([1800.0, 60.0, 600.0, 120.0, 300.0])
_N_LATENT = len(_TAU)
_THERMAL_TAU = 900.0  # seconds: temperature follows load through this lag
_WHITE = np.array([0.1, 0.05, 0.02, 0.25])
_N_NOISE = _N_LATENT + len(CHANNELS) + 1  # + one spare normal for variance bursts


def _draft(rng: np.random.Generator, kind: str) -> Draft:
    channel = int(rng.integers(len(CHANNELS)))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if channel == VIBRATION:
        sign = 1.0  # a worn or loose machine vibrates more, not less
    u = rng.uniform
    if kind == "spike":
        return Draft(kind, "fault", 0.0, (channel,), {"delta": sign * u(8, 15) * SCALE[channel]})
    if kind == "level_shift":
        return Draft(kind, "fault", u(20, 90) * 60, (channel,),
                     {"delta": sign * u(4, 8) * SCALE[channel]})
    if kind == "slow_drift":
        return Draft(kind, "fault", u(1, 3) * 3600, (channel,),
                     {"delta": sign * u(6, 10) * SCALE[channel]})
    if kind == "stuck":
        return Draft(kind, "fault", u(10, 45) * 60, (channel,))
    if kind == "variance_burst":
        return Draft(kind, "fault", u(5, 20) * 60, (channel,), {"std": u(2, 4) * SCALE[channel]})
    if kind == "missing":
        return Draft(kind, "fault", u(2, 15) * 60, (channel,))
    raise ValueError(f"unknown sensor fault type {kind!r}")  # pragma: no cover


class SensorSimulator(Simulator):
    """Seeded readings of ``machines`` machines (``plant/machine-01`` ...), kind ``machine``.

    Parameters
    ----------
    machines : number of machines, 1-100000.
    seed : non-negative integer; same seed and arguments give identical output.
    start_ts : epoch seconds of the first reading (default 2026-01-01T00:00:00Z).
    rate_hz : readings per second per machine, in [1e-4, 100].
    faults : inject labelled faults.
    faults_per_day : Poisson rate per machine-day after warm-up.
    fault_weights : relative frequency of each fault type (default ``FAULT_WEIGHTS``).
    warmup_s : no fault starts before this many seconds.
    gap_s : minimum time between two faults of one machine.

    Examples
    --------
    >>> steps = list(SensorSimulator(machines=3, seed=1).readings(2))
    >>> [r.stream_id for r in steps[1]]
    ['plant/machine-01', 'plant/machine-02', 'plant/machine-03']
    """

    kind = MACHINE
    channels = CHANNELS

    def __init__(
        self,
        machines: int,
        seed: int,
        start_ts: float = DEFAULT_START,
        rate_hz: float = 1.0,
        faults: bool = True,
        *,
        faults_per_day: float = 3.0,
        warmup_s: float = 7200.0,
        gap_s: float = 1800.0,
        fault_weights: Mapping[str, float] | None = None,
    ) -> None:
        check_common(machines, seed, start_ts, rate_hz, "machines")
        check_rate("faults_per_day", faults_per_day)
        check_spacing(warmup_s, gap_s)
        self.fault_weights = check_weights(
            "fault_weights", fault_weights or FAULT_WEIGHTS, FAULT_TYPES)
        self.machines = machines
        self.seed = seed
        self.start_ts = float(start_ts)
        self.rate_hz = float(rate_hz)
        self.with_faults = faults
        self.faults_per_day = faults_per_day
        self.warmup_s = warmup_s
        self.gap_s = gap_s
        self.stream_ids = stream_ids("plant/machine", machines)

    def _plans(self, duration_s: float) -> list[list[Planned]]:
        rules = PlanRules(
            main_rate=self.faults_per_day if self.with_faults else 0.0,
            main_weights=self.fault_weights,
            extra_rate=0.0,
            extra_weights={},
            warmup_s=self.warmup_s,
            gap_s=self.gap_s,
            margin_s=0.0,
        )
        return [
            plan_stream(stream_rng(self.seed, _TAG, m, 1), m, duration_s, self.rate_hz,
                        rules, _draft, CHANNELS)
            for m in range(self.machines)
        ]

    def _baselines(self) -> np.ndarray:
        out = np.empty((self.machines, 9))
        for m in range(self.machines):
            rng = stream_rng(self.seed, _TAG, m, 0)
            out[m] = (rng.uniform(30, 60), rng.uniform(0.5, 0.75), rng.uniform(35, 55),
                      rng.uniform(18, 26), rng.uniform(1.5, 3.5), rng.uniform(4, 6),
                      rng.uniform(1, 2), rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.2))
        return out

    def _chunks(self, total: int, plans: list[list[Planned]]) -> Iterator[Chunk]:
        b = self._baselines()
        i0, load0, k_t, ambient, v0, p0, k_p, phase, gain = (b[:, i] for i in range(9))
        noise_rngs = [stream_rng(self.seed, _TAG, m, 2) for m in range(self.machines)]
        decay = np.exp(-1.0 / (_TAU * self.rate_hz))
        state = np.stack([r.standard_normal(_N_LATENT) for r in noise_rngs])
        flat = [p for stream in plans for p in stream]
        frozen: dict[tuple[int, int], float] = {}
        last = np.zeros((self.machines, len(CHANNELS)))
        thermal_decay = np.exp(-1.0 / (_THERMAL_TAU * self.rate_hz))
        thermal: np.ndarray | None = None
        chunk = chunk_steps(len(noise_rngs))
        for first in range(0, total, chunk):
            z = np.stack([r.standard_normal((chunk, _N_NOISE)) for r in noise_rngs], axis=1)
            size = min(chunk, total - first)
            z = z[:size]
            lat = ar1(z[..., :_N_LATENT], decay, state)
            steps = first + np.arange(size)
            tod = ((self.start_ts + steps / self.rate_hz) % DAY_S)[:, None]
            day_shift = 1 / (1 + np.exp((6 * 3600 - tod) / 900)) - 1 / (1 + np.exp((22 * 3600 - tod) / 900))
            daily = np.sin(2 * np.pi * tod / DAY_S + phase[None])
            slow = load0[None] + 0.1 * day_shift - 0.05 + gain * 0.08 * lat[..., 0]
            load = np.clip(slow + 0.03 * lat[..., 1], 0.1, 1.0)
            heat = k_t * np.clip(slow, 0.1, 1.0)
            if thermal is None:
                thermal = heat[0].copy()
            heat = lowpass(heat, thermal_decay, thermal)  # thermal inertia
            v = np.empty((size, self.machines, len(CHANNELS)))
            v[..., TEMPERATURE] = ambient + 2.0 * daily + heat + 0.3 * lat[..., 2]
            v[..., VIBRATION] = v0 * (0.6 + 0.6 * load) * (1.0 + 0.04 * lat[..., 3])
            v[..., PRESSURE] = p0 + k_p * load + 0.05 * lat[..., 4]
            v[..., CURRENT] = i0 * (0.3 + 0.7 * load)
            white = z[..., _N_LATENT : _N_LATENT + len(CHANNELS)]
            v += white * _WHITE
            here = active(flat, first, first + size)
            self._faults(v, z[..., -1], steps, here, frozen, last)
            v[..., VIBRATION] = np.maximum(v[..., VIBRATION], 0.0)
            round_columns(v, DECIMALS)
            last = v[-1].copy()
            yield Chunk(first_step=first, values=v, present=np.ones((size, self.machines), bool))

    def _faults(self, v: np.ndarray, spare: np.ndarray, steps: np.ndarray,
                here: list[Planned], frozen: dict[tuple[int, int], float],
                last: np.ndarray) -> None:
        first = int(steps[0])
        for plan in here:
            m, c = plan.stream, plan.channels[0]
            lo, hi = max(plan.onset - first, 0), min(plan.end - first, len(steps))
            q = plan.params
            if plan.type in ("spike", "level_shift"):
                v[lo:hi, m, c] += q["delta"]
            elif plan.type == "slow_drift":
                frac = (steps[lo:hi] - plan.onset + 1) / plan.length
                v[lo:hi, m, c] += q["delta"] * frac
            elif plan.type == "variance_burst":
                v[lo:hi, m, c] += q["std"] * spare[lo:hi, m]
            elif plan.type == "stuck":
                key = (m, plan.onset)
                if key not in frozen:
                    frozen[key] = float(v[lo - 1, m, c] if lo > 0 else last[m, c])
                v[lo:hi, m, c] = frozen[key]
                if plan.end <= first + len(steps):
                    del frozen[key]
            elif plan.type == "missing":
                v[lo:hi, m, c] = np.nan
