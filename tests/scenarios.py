"""Small seeded scenarios shared by the service tests (episodes early and often)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from simulators.icu import IcuSimulator
from streamwatch.config import Settings, load_settings
from streamwatch.schema import Episode, Reading


def icu_readings(patients: int = 8, minutes: int = 25, seed: int = 8) -> tuple[list[Reading], list[Episode]]:
    """``patients`` beds for ``minutes``; clinical episodes from minute 8 on (seed 8: five)."""
    sim = IcuSimulator(patients, seed=seed, warmup_s=480, clinical_per_day=150, gap_s=300,
                       artefacts_per_day=24)
    duration = minutes * 60
    readings = [r for step in sim.readings(duration) for r in step]
    return readings, sim.episodes(duration)


def by_second(readings: list[Reading]) -> list[list[Reading]]:
    """The readings grouped by timestamp, in time order: one simulated second a batch."""
    groups: dict[float, list[Reading]] = {}
    for r in readings:
        groups.setdefault(r.ts, []).append(r)
    return [groups[ts] for ts in sorted(groups)]


def service_settings(checkpoint_dir: Path | None = None, **service: Any) -> Settings:
    """Production settings with a private checkpoint dir, no metrics port, small timeouts."""
    directory = checkpoint_dir or Path(tempfile.mkdtemp(prefix="sw-ckpt-"))
    return load_settings(overrides={
        "kafka": {"session_timeout_ms": 2000},
        "service": {"checkpoint_dir": directory, "metrics_port": 0, "poll_timeout_s": 0.2,
                    "checkpoint_every_s": 1.0, **service},
    })


def record_feed_order(service: Any) -> tuple[list[float], list[bool]]:
    """Wrap a (not yet run) service's detector factory. Returns two lists that fill as it
    runs: the timestamps of the readings in the order the detector is fed them, and per
    batch whether the service had a partition paused (flow control) at that moment."""
    seen: list[float] = []
    paused: list[bool] = []
    factory = service.detector_factory

    def recording() -> Any:
        detector = factory()
        process = detector.process_encoded

        def process_encoded(batch: list[Reading], **kwargs: Any) -> Any:
            seen.extend(r.ts for r in batch)
            paused.append(bool(service.paused_partitions))
            return process(batch, **kwargs)

        detector.process_encoded = process_encoded
        return detector

    service.detector_factory = recording
    return seen, paused


def alert_events(alerts: list[Any]) -> set[tuple[str, str, int]]:
    """Each alert lifecycle event once: (alert_id, event, seq); replays add nothing."""
    return {(a.alert_id, a.event, a.seq) for a in alerts}


def opened(events: set[tuple[str, str, int]]) -> set[str]:
    return {alert_id for alert_id, event, _ in events if event == "open"}


def dead_letter_holds(letter: Any, raw: bytes | None) -> bool:
    """Whether ``letter`` carries ``raw`` (the refused record's value): its payload is the
    start of ``raw`` (the whole of it unless truncated), its size is ``raw``'s size."""
    import base64

    held = (base64.b64decode(letter.payload) if letter.payload_encoding == "base64"
            else letter.payload.encode("utf-8"))
    whole = raw or b""
    return (whole.startswith(held) and letter.payload_size == len(whole)
            and letter.payload_truncated == (len(held) < len(whole)))
