"""Stream kinds: which channels a kind has, their plausible ranges, clinical hard limits.

One global forecaster is trained per kind (DESIGN.md), so a kind fixes the channel order
of the model's input and output vectors.

>>> get_kind("icu_vitals").channels
('hr', 'spo2', 'rr', 'sbp', 'dbp', 'map', 'temp')
>>> news2_channel_score("spo2", 93.0)
2
>>> news2_channel_score("hr", 72.0)
0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from streamwatch.errors import ConfigError

ICU = "icu_vitals"
MACHINE = "machine"
UNIVARIATE = "univariate"


MAX_MAGNITUDE = 1e15
"""The range of a channel that ``plausible`` gives none: ``[-1e15, 1e15]``. A larger value
overflowed the model's float32 state to infinity (a single 1e308 left a stream with no
forecast for good), and no sensor reading needs it."""


@dataclass(frozen=True)
class KindSpec:
    """A stream kind: ordered channels and, per channel, the physically plausible range.

    A value outside ``plausible`` (``[-MAX_MAGNITUDE, MAX_MAGNITUDE]`` for a channel it
    does not name) is refused as bad input (dead letter), not scored.
    ``groups`` lists channels that one sensor measures together and that share most of
    their variation (blood pressure: systolic, diastolic and the MAP computed from them);
    the joint anomaly score counts each group once, not once per channel. Channels in no
    group stand alone.

    >>> get_kind("icu_vitals").group_index()
    (0, 1, 2, 3, 3, 3, 4)
    >>> get_kind("machine").group_index()
    (0, 1, 2, 3)
    """

    name: str
    channels: tuple[str, ...]
    plausible: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    groups: tuple[tuple[str, ...], ...] = ()

    def index(self, channel: str) -> int:
        return self.channels.index(channel)

    def range_of(self, channel: str) -> tuple[float, float]:
        """The values ``channel`` accepts (``plausible``, else +-``MAX_MAGNITUDE``).

        >>> get_kind("univariate").range_of("value")
        (-1000000000000000.0, 1000000000000000.0)
        """
        return self.plausible.get(channel, (-MAX_MAGNITUDE, MAX_MAGNITUDE))

    def group_index(self) -> tuple[int, ...]:
        """Per channel, in channel order, the number of its group (0, 1, ...)."""
        group_of: dict[str, int] = {}
        for group in self.groups:
            unknown = [c for c in group if c not in self.channels]
            if unknown or any(c in group_of for c in group):
                raise ConfigError(f"kind {self.name!r}: group {group} names unknown or "
                                  "already grouped channels")
            first = min(self.channels.index(c) for c in group)
            for c in group:
                group_of[c] = first
        firsts = sorted({group_of.get(c, i) for i, c in enumerate(self.channels)})
        number = {first: k for k, first in enumerate(firsts)}
        return tuple(number[group_of.get(c, i)] for i, c in enumerate(self.channels))


# NEWS2 single-parameter bands (Royal College of Physicians, 2017), SpO2 scale 1.
# Each entry: (upper bound inclusive, points); the first bound the value is <= wins.
NEWS2_BANDS: dict[str, tuple[tuple[float, int], ...]] = {
    "rr": ((8, 3), (11, 1), (20, 0), (24, 2), (float("inf"), 3)),
    "spo2": ((91, 3), (93, 2), (95, 1), (float("inf"), 0)),
    "sbp": ((90, 3), (100, 2), (110, 1), (219, 0), (float("inf"), 3)),
    "hr": ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2), (float("inf"), 3)),
    "temp": ((35.0, 3), (36.0, 1), (38.0, 0), (39.0, 1), (float("inf"), 2)),
}
"""Points per channel; 0 is the normal band. Values between bounds (e.g. 90.5) fall in
the higher band, which is the conservative reading for the integer-valued clinical tables."""

NEWS2_NORMAL: dict[str, tuple[float, float]] = {
    "rr": (12, 20),
    "spo2": (96, 100),
    "sbp": (111, 219),
    "hr": (51, 90),
    "temp": (36.1, 38.0),
}


def news2_channel_score(channel: str, value: float | None) -> int:
    """NEWS2 points (0-3) of one vital sign; 0 for a channel NEWS2 does not score or None."""
    bands = NEWS2_BANDS.get(channel)
    if bands is None or value is None:
        return 0
    for bound, points in bands:
        if value <= bound:
            return points
    return 0  # pragma: no cover - the last bound is infinite


_BUILTIN: dict[str, KindSpec] = {
    ICU: KindSpec(
        name=ICU,
        channels=("hr", "spo2", "rr", "sbp", "dbp", "map", "temp"),
        plausible={
            "hr": (0, 350),
            "spo2": (0, 100),
            "rr": (0, 150),
            "sbp": (0, 350),
            "dbp": (0, 300),
            "map": (0, 300),
            "temp": (15, 46),
        },
        units={"hr": "bpm", "spo2": "%", "rr": "/min", "sbp": "mmHg", "dbp": "mmHg",
               "map": "mmHg", "temp": "°C"},
        groups=(("sbp", "dbp", "map"),),
    ),
    MACHINE: KindSpec(
        name=MACHINE,
        channels=("temperature", "vibration", "pressure", "current"),
        plausible={
            "temperature": (-60, 600),
            "vibration": (0, 1000),
            "pressure": (-1, 1000),
            "current": (-2000, 10000),
        },
        units={"temperature": "°C", "vibration": "mm/s", "pressure": "bar", "current": "A"},
    ),
    UNIVARIATE: KindSpec(name=UNIVARIATE, channels=("value",)),
}

_registry: dict[str, KindSpec] = dict(_BUILTIN)


def register_kind(spec: KindSpec) -> None:
    """Add a kind (e.g. a multi-column CSV replay). Re-registering the same spec is a no-op."""
    existing = _registry.get(spec.name)
    if existing is not None and existing != spec:
        raise ConfigError(f"kind {spec.name!r} is already registered with other channels")
    if not spec.channels:
        raise ConfigError(f"kind {spec.name!r} needs at least one channel")
    _registry[spec.name] = spec


def get_kind(name: str) -> KindSpec:
    """The spec of a registered kind; ``ConfigError`` listing the known kinds otherwise."""
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry))
        raise ConfigError(f"unknown stream kind {name!r}; known kinds: {known}") from None


def known_kinds() -> tuple[str, ...]:
    return tuple(sorted(_registry))
