"""ICU bedside monitor simulator: vitals of N patients with labelled episodes and artefacts.

Signal model per patient (each value below is drawn per patient from its own seed):

- a baseline inside NEWS2's zero band (HR 62-80, SpO2 97.3-99.3 %, RR 14.5-17,
  SBP 124-150 with DBP 52-62 % of it, temperature 36.6-37.2 °C);
- circadian drift (trough around 04:00 simulated UTC, +-1 h per patient): HR +-3,
  SBP +-4, DBP +-2.5, RR +-0.5, temperature +-0.3;
- physiologic variability as unit AR(1) processes (time constants in brackets): a shared
  arousal factor [10 min] that raises HR, RR, SBP and DBP together (the coupling between
  channels), and one slow process per vital [2-30 min];
- sensor noise per reading, physical clipping (SpO2 <= 100), then rounding as monitors
  show it: integers, temperature to 0.1 °C; MAP = DBP + (SBP - DBP) / 3 of the shown values.

Clinical episodes (category "clinical") move vitals towards drawn target levels, so an
episode clearly leaves the normal band whatever the patient's baseline:
sepsis (4-8 h: HR 110-130, temperature 38.6-39.4, RR 24-30, SBP 85-98, rising over ~55 %
of the episode), desaturation (6-20 min: SpO2 84-89, RR 24-30), tachycardia (3-15 min:
HR 135-165, irregular), bradycardia (3-12 min: HR 36-44), hypotension (10-40 min:
SBP 72-86, DBP 38-48). Artefacts (category "artefact") change what the monitor shows, not
the patient: probe off (SpO2 null or 0), flatline (a channel group frozen), single-sample
spikes, and, only with ``dropouts=True``, dropped samples (no reading at all).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from simulators.base import (
    DEFAULT_START,
    Chunk,
    Simulator,
    ar1,
    check_common,
    check_rate,
    check_spacing,
    check_weights,
    chunk_steps,
    round_columns,
    smooth_profile,
    stream_ids,
    stream_rng,
)
from simulators.episodes import (
    ARTEFACT_TYPES,
    CLINICAL_TYPES,
    Draft,
    Planned,
    PlanRules,
    active,
    plan_stream,
)
from streamwatch.kinds import ICU, get_kind

CHANNELS = get_kind(ICU).channels  # hr, spo2, rr, sbp, dbp, map, temp
HR, SPO2, RR, SBP, DBP, MAP, TEMP = range(7)
DECIMALS = (0, 0, 0, 0, 0, 0, 1)
_TAG = 1

CLINICAL_WEIGHTS = {
    "sepsis": 0.15,
    "desaturation": 0.25,
    "tachycardia": 0.2,
    "bradycardia": 0.15,
    "hypotension": 0.25,
}
ARTEFACT_WEIGHTS = {"probe_off": 0.3, "flatline": 0.25, "spike": 0.45}
DROPOUT_WEIGHT = 0.3

# Latent AR(1) processes: arousal, hr, rr, bp, spo2, temp (time constants in seconds).
_TAU = np.array([600.0, 180.0, 120.0, 300.0, 120.0, 1800.0])
_N_LATENT = len(_TAU)
_WHITE = np.array([1.2, 0.4, 0.5, 2.0, 1.5, 0.0, 0.03])  # sensor noise per channel
_N_NOISE = _N_LATENT + len(CHANNELS)
_CIRCADIAN = np.array([3.0, 0.0, 0.5, 4.0, 2.5, 0.0, 0.3])  # amplitude per channel


def _draft(rng: np.random.Generator, kind: str) -> Draft:
    """Duration, channels and drawn targets of one episode type."""
    u = rng.uniform
    if kind == "sepsis":
        return Draft(kind, "clinical", u(4, 8) * 3600, (HR, RR, SBP, DBP, MAP, TEMP),
                     {"hr": u(110, 130), "temp": u(38.6, 39.4), "rr": u(24, 30),
                      "sbp": u(85, 98), "dbp": u(45, 55), "up": 0.55, "down": 0.15})
    if kind == "desaturation":
        return Draft(kind, "clinical", u(6, 20) * 60, (SPO2, RR),
                     {"spo2": u(84, 89), "rr": u(24, 30), "up_s": u(60, 120), "down_s": u(120, 180)})
    if kind == "tachycardia":
        return Draft(kind, "clinical", u(3, 15) * 60, (HR,),
                     {"hr": u(135, 165), "up_s": u(5, 15), "down_s": u(10, 30)})
    if kind == "bradycardia":
        return Draft(kind, "clinical", u(3, 12) * 60, (HR,),
                     {"hr": u(36, 44), "up_s": u(10, 30), "down_s": u(10, 30)})
    if kind == "hypotension":
        return Draft(kind, "clinical", u(10, 40) * 60, (SBP, DBP, MAP),
                     {"sbp": u(72, 86), "dbp": u(38, 48), "up_s": u(120, 300), "down_s": u(180, 360)})
    if kind == "probe_off":
        return Draft(kind, "artefact", u(20, 300), (SPO2,), {"zero": float(rng.random() < 0.5)})
    if kind == "flatline":
        group = int(rng.integers(4))
        channels = ((HR,), (SPO2,), (RR,), (SBP, DBP, MAP))[group]
        return Draft(kind, "artefact", u(60, 600), channels)
    if kind == "spike":
        which = int(rng.integers(4))
        if which == 0:
            return Draft(kind, "artefact", 0.0, (HR,), {"value": float(rng.integers(170, 250))})
        if which == 1:
            return Draft(kind, "artefact", 0.0, (SPO2,), {"value": float(rng.integers(60, 80))})
        if which == 2:
            return Draft(kind, "artefact", 0.0, (RR,), {"value": float(rng.integers(40, 60))})
        return Draft(kind, "artefact", 0.0, (SBP, MAP), {"value": float(rng.integers(230, 290))})
    if kind == "dropout":
        return Draft(kind, "artefact", u(5, 180), tuple(range(len(CHANNELS))))
    raise ValueError(f"unknown ICU episode type {kind!r}")  # pragma: no cover


class IcuSimulator(Simulator):
    """Seeded vitals of ``patients`` ICU beds (``icu/bed-01`` ...), kind ``icu_vitals``.

    Parameters
    ----------
    patients : number of beds, 1-100000.
    seed : non-negative integer; same seed and arguments give identical output.
    start_ts : epoch seconds of the first reading (default 2026-01-01T00:00:00Z).
    rate_hz : readings per second per bed, in [1e-4, 100].
    episodes : inject labelled clinical episodes.
    artefacts : inject labelled artefacts (probe off, flatline, spikes).
    dropouts : also drop samples (readings missing entirely); off by default so a run
        emits exactly ``patients * duration * rate_hz`` readings.
    clinical_per_day, artefacts_per_day : Poisson rates per patient-day after warm-up.
    clinical_weights, artefact_weights : relative frequency of each type (defaults
        ``CLINICAL_WEIGHTS`` and ``ARTEFACT_WEIGHTS``; "dropout" is added by ``dropouts``).
    warmup_s : no episode starts before this many seconds (model warm-up).
    gap_s : minimum time between two clinical episodes of one patient.

    Examples
    --------
    >>> sim = IcuSimulator(patients=2, seed=1)
    >>> steps = list(sim.readings(3))
    >>> len(steps), [r.stream_id for r in steps[0]]
    (3, ['icu/bed-01', 'icu/bed-02'])
    >>> sorted(steps[0][0].values) == sorted(CHANNELS)
    True
    """

    def __init__(
        self,
        patients: int,
        seed: int,
        start_ts: float = DEFAULT_START,
        rate_hz: float = 1.0,
        episodes: bool = True,
        artefacts: bool = True,
        *,
        dropouts: bool = False,
        clinical_per_day: float = 2.0,
        artefacts_per_day: float = 4.0,
        warmup_s: float = 7200.0,
        gap_s: float = 3600.0,
        clinical_weights: Mapping[str, float] | None = None,
        artefact_weights: Mapping[str, float] | None = None,
    ) -> None:
        check_common(patients, seed, start_ts, rate_hz, "patients")
        check_rate("clinical_per_day", clinical_per_day)
        check_rate("artefacts_per_day", artefacts_per_day)
        check_spacing(warmup_s, gap_s)
        self.clinical_weights = check_weights(
            "clinical_weights", clinical_weights or CLINICAL_WEIGHTS, CLINICAL_TYPES)
        self.artefact_weights = check_weights(
            "artefact_weights", artefact_weights or ARTEFACT_WEIGHTS, ARTEFACT_TYPES[:-1])
        self.patients = patients
        self.seed = seed
        self.start_ts = float(start_ts)
        self.rate_hz = float(rate_hz)
        self.with_episodes = episodes
        self.with_artefacts = artefacts
        self.dropouts = dropouts
        self.clinical_per_day = clinical_per_day
        self.artefacts_per_day = artefacts_per_day
        self.warmup_s = warmup_s
        self.gap_s = gap_s
        self.stream_ids = stream_ids("icu/bed", patients)

    kind = ICU
    channels = CHANNELS

    # -- plan ---------------------------------------------------------------------------
    def _rules(self) -> PlanRules:
        weights = dict(self.artefact_weights)
        if self.dropouts:
            weights["dropout"] = DROPOUT_WEIGHT
        if not self.with_artefacts:
            weights = {"dropout": DROPOUT_WEIGHT} if self.dropouts else {}
        return PlanRules(
            main_rate=self.clinical_per_day if self.with_episodes else 0.0,
            main_weights=self.clinical_weights,
            extra_rate=self.artefacts_per_day if weights else 0.0,
            extra_weights=weights,
            warmup_s=self.warmup_s,
            gap_s=self.gap_s,
            margin_s=900.0,
        )

    def _plans(self, duration_s: float) -> list[list[Planned]]:
        rules = self._rules()
        return [
            plan_stream(stream_rng(self.seed, _TAG, p, 1), p, duration_s, self.rate_hz,
                        rules, _draft, CHANNELS)
            for p in range(self.patients)
        ]

    def baselines(self) -> dict[str, dict[str, float]]:
        """Each patient's resting level per channel (before drift and noise)."""
        base = self._baselines()["level"]
        return {sid: dict(zip(CHANNELS, base[i].tolist(), strict=True))
                for i, sid in enumerate(self.stream_ids)}

    # -- generate -----------------------------------------------------------------------
    def _baselines(self) -> dict[str, np.ndarray]:
        level = np.empty((self.patients, len(CHANNELS)))
        circ = np.empty((self.patients, len(CHANNELS)))
        phase = np.empty(self.patients)
        gain = np.empty((self.patients, 5))
        for p in range(self.patients):
            rng = stream_rng(self.seed, _TAG, p, 0)
            sbp = rng.uniform(124, 150)
            dbp = sbp * rng.uniform(0.52, 0.62)
            level[p] = (rng.uniform(62, 80), rng.uniform(97.3, 99.3), rng.uniform(14.5, 17),
                        sbp, dbp, dbp + (sbp - dbp) / 3, rng.uniform(36.6, 37.2))
            circ[p] = _CIRCADIAN * rng.uniform(0.7, 1.3)
            phase[p] = rng.uniform(3, 5) * 3600
            gain[p] = rng.uniform(0.8, 1.2, size=5)
        return {"level": level, "circ": circ, "phase": phase, "gain": gain}

    def _chunks(self, total: int, plans: list[list[Planned]]) -> Iterator[Chunk]:
        b = self._baselines()
        noise_rngs = [stream_rng(self.seed, _TAG, p, 2) for p in range(self.patients)]
        decay = np.exp(-1.0 / (_TAU * self.rate_hz))
        state = np.stack([r.standard_normal(_N_LATENT) for r in noise_rngs])
        flat = [p for stream in plans for p in stream]
        frozen: dict[tuple[int, int], np.ndarray] = {}
        last = np.zeros((self.patients, len(CHANNELS)))
        chunk = chunk_steps(len(noise_rngs))
        for first in range(0, total, chunk):
            z = np.stack([r.standard_normal((chunk, _N_NOISE)) for r in noise_rngs], axis=1)
            size = min(chunk, total - first)
            z = z[:size]
            latent = ar1(z[..., :_N_LATENT], decay, state)
            steps = first + np.arange(size)
            ts = self.start_ts + steps / self.rate_hz
            here = active(flat, first, first + size)
            values = self._physiology(b, ts, latent, z[..., _N_LATENT:], steps, here)
            present = np.ones((size, self.patients), dtype=bool)
            self._artefacts(values, present, steps, here, frozen, last)
            last = values[-1].copy()
            yield Chunk(first_step=first, values=values, present=present)

    def _physiology(self, b: dict[str, np.ndarray], ts: np.ndarray, latent: np.ndarray,
                    white: np.ndarray, steps: np.ndarray, here: list[Planned]) -> np.ndarray:
        tod = (ts[:, None] - b["phase"][None, :]) % 86_400.0
        circadian = -np.cos(2 * np.pi * tod / 86_400.0)  # -1 at the patient's trough
        v = b["level"][None] + circadian[..., None] * b["circ"][None]
        g = b["gain"][None]
        arousal, l_hr, l_rr, l_bp, l_spo2, l_temp = (latent[..., i] for i in range(_N_LATENT))
        v[..., HR] += g[..., 0] * (3.0 * arousal + 2.0 * l_hr)
        v[..., RR] += g[..., 1] * (0.6 * arousal + 0.7 * l_rr)
        v[..., SBP] += g[..., 2] * (3.0 * arousal + 3.5 * l_bp)
        v[..., DBP] += g[..., 2] * (1.8 * arousal + 2.2 * l_bp)
        v[..., SPO2] += g[..., 3] * 0.5 * l_spo2
        v[..., TEMP] += g[..., 4] * 0.08 * l_temp
        noise_gain = np.ones_like(v)
        for plan in here:
            if plan.category == "clinical":
                self._clinical(v, noise_gain, b["level"], steps, plan)
        v += white * _WHITE * noise_gain
        v[..., SPO2] = np.clip(v[..., SPO2], 50.0, 100.0)
        v[..., HR] = np.clip(v[..., HR], 25.0, 250.0)
        v[..., RR] = np.clip(v[..., RR], 4.0, 60.0)
        v[..., SBP] = np.clip(v[..., SBP], 50.0, 260.0)
        v[..., DBP] = np.clip(v[..., DBP], 25.0, v[..., SBP] - 15.0)
        v[..., TEMP] = np.clip(v[..., TEMP], 33.0, 42.0)
        round_columns(v, DECIMALS)
        v[..., MAP] = np.round(v[..., DBP] + (v[..., SBP] - v[..., DBP]) / 3.0)
        return v

    def _clinical(self, v: np.ndarray, noise_gain: np.ndarray, level: np.ndarray,
                  steps: np.ndarray, plan: Planned) -> None:
        q = plan.params
        t = (steps - plan.onset).astype(np.float64)
        if plan.type == "sepsis":
            up, down = q["up"] * plan.length, q["down"] * plan.length
        else:
            up, down = q["up_s"] * self.rate_hz, q["down_s"] * self.rate_hz
        f = smooth_profile(t, plan.length, up, down)
        p = plan.stream
        for name, c in (("hr", HR), ("spo2", SPO2), ("rr", RR), ("sbp", SBP),
                        ("dbp", DBP), ("temp", TEMP)):
            if name in q:
                v[:, p, c] += f * (q[name] - level[p, c])
        if plan.type == "tachycardia":
            noise_gain[:, p, HR] += 3.0 * f  # irregular rhythm
        if plan.type == "desaturation":
            noise_gain[:, p, SPO2] += 1.5 * f

    def _artefacts(self, v: np.ndarray, present: np.ndarray, steps: np.ndarray,
                   here: list[Planned], frozen: dict[tuple[int, int], np.ndarray], last: np.ndarray) -> None:
        first = int(steps[0])
        for plan in here:
            if plan.category != "artefact":
                continue
            p, lo = plan.stream, max(plan.onset - first, 0)
            hi = min(plan.end - first, len(steps))
            cols = list(plan.channels)
            if plan.type == "probe_off":
                v[lo:hi, p, SPO2] = 0.0 if plan.params["zero"] else np.nan
            elif plan.type == "flatline":
                key = (p, plan.onset)
                if key not in frozen:
                    frozen[key] = (v[lo - 1, p, cols] if lo > 0 else last[p, cols]).copy()
                v[lo:hi, p, cols] = frozen[key]
                if plan.end <= first + len(steps):
                    del frozen[key]
            elif plan.type == "spike":
                v[lo, p, cols[0]] = plan.params["value"]
                if len(cols) > 1:  # sbp spike: the monitor's MAP follows the waveform
                    v[lo, p, MAP] = np.round(v[lo, p, DBP] + (v[lo, p, SBP] - v[lo, p, DBP]) / 3)
            elif plan.type == "dropout":
                present[lo:hi, p] = False

