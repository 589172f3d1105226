"""Seeded data sources: ICU vitals, industrial sensors (both with labelled episodes), CSV replay.

- ``simulators.icu.IcuSimulator`` and ``simulators.sensors.SensorSimulator``:
  ``.episodes(duration_s)`` (labels) and ``.readings(duration_s)`` (one list of
  ``Reading`` per time step), deterministic for a seed.
- ``simulators.replay.read_csv_readings``: a NAB-format CSV as the Readings of one stream.
- ``scenario``: the evaluation's shortcut to both simulators.

Submodules load numpy/pandas; this package module stays light for ``streamwatch --help``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from streamwatch.schema import Episode, Reading

__all__ = ["scenario"]


def scenario(
    kind: Literal["icu", "sensors"],
    n: int,
    hours: float,
    seed: int,
    **options: Any,
) -> tuple[Iterator[list[Reading]], list[Episode]]:
    """Readings (one list per time step) and episode labels of a seeded scenario.

    ``options`` go to the simulator's constructor (e.g. ``rate_hz``, ``dropouts``,
    ``clinical_per_day``). Defaults give, for ``scenario("icu", 20, 24, seed=1)``, about
    two clinical episodes and four artefacts per patient-day, none in the first 2 h.

    >>> steps, episodes = scenario("sensors", 2, 0.5, seed=1)
    >>> sum(len(step) for step in steps), episodes
    (3600, [])
    """
    duration_s = float(hours) * 3600.0
    if kind == "icu":
        from simulators.icu import IcuSimulator

        sim: Any = IcuSimulator(n, seed, **options)
    elif kind == "sensors":
        from simulators.sensors import SensorSimulator

        sim = SensorSimulator(n, seed, **options)
    else:
        from streamwatch.errors import ConfigError

        raise ConfigError(f"scenario kind must be 'icu' or 'sensors', got {kind!r}")
    return sim.readings(duration_s), sim.episodes(duration_s)
