"""``streamwatch bench simulate``: how fast the simulators write Readings to a file.

Runs the real command, ``streamwatch simulate icu|sensors --speedup 0 --output FILE``
(in this process, through :func:`streamwatch.cli.main`), ``repeats`` times per source, and
times each run on the wall clock. The readings are then counted from the file itself (one
JSON line each, every line decoded as a Reading), not taken from the simulator's own
counter. Reported per source: every run's readings/s, the median, and the bytes written.
Issue 2's target: >= 100,000 readings/s to a file.

>>> median([3.0, 1.0, 2.0]), median([1.0, 4.0])
(2.0, 2.5)
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from streamwatch.bench.measure import load_average
from streamwatch.bench.report import machine_info
from streamwatch.errors import ConfigError, StreamwatchError

log = logging.getLogger(__name__)

TARGET_READINGS_PER_S = 100_000.0
SOURCES = ("icu", "sensors")


def median(values: list[float]) -> float:
    return float(statistics.median(values))


@dataclass(frozen=True)
class SimulateBenchOptions:
    sources: tuple[str, ...] = SOURCES
    streams: int = 50
    duration: str = "1h"
    repeats: int = 3
    seed: int = 1
    progress: bool = True

    def check(self) -> None:
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown or not self.sources:
            raise ConfigError(f"--sources takes {','.join(SOURCES)}, got {','.join(self.sources)!r}")
        if not 1 <= self.streams <= 100_000:
            raise ConfigError(f"--streams must be in [1, 100000], got {self.streams}")
        if not 1 <= self.repeats <= 100:
            raise ConfigError(f"--repeats must be in [1, 100], got {self.repeats}")


def _count(path: Path) -> int:
    """Readings in the file, each line decoded (a broken line is an error, not a count)."""
    from streamwatch.schema import decode_reading

    n = 0
    with path.open("rb") as f:
        for line in f:
            decode_reading(line.rstrip(b"\n"))
            n += 1
    return n


def _one_run(opts: SimulateBenchOptions, source: str, out: Path) -> dict[str, Any]:
    from streamwatch.cli import main

    flag = "--patients" if source == "icu" else "--machines"
    argv = ["--log-level", "warning", "simulate", source, flag, str(opts.streams),
            "--duration", opts.duration, "--seed", str(opts.seed), "--speedup", "0",
            "--quiet", "--output", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise StreamwatchError(f"streamwatch {' '.join(argv)} exited {code}")
    readings = _count(out)
    return {"readings": readings, "elapsed_s": elapsed,
            "readings_per_s": round(readings / elapsed, 1), "bytes": out.stat().st_size}


def run_simulate_bench(opts: SimulateBenchOptions) -> dict[str, Any]:
    """Every source ``repeats`` times; returns the JSON-ready result (module docstring)."""
    opts.check()
    machine = machine_info()
    sources: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="streamwatch-bench-sim-") as tmp:
        bar = tqdm(total=len(opts.sources) * opts.repeats, desc="bench simulate", unit="run",
                   disable=not opts.progress, leave=False)  # fmt: skip
        with bar:
            for source in opts.sources:
                runs = []
                for k in range(opts.repeats):
                    out = Path(tmp) / f"{source}-{k}.jsonl"
                    runs.append(_one_run(opts, source, out))
                    out.unlink()
                    out.with_name(out.name + ".truth.jsonl").unlink(missing_ok=True)
                    bar.update()
                rate = median([r["readings_per_s"] for r in runs])
                sources[source] = {"runs": runs, "median_readings_per_s": rate}
    machine["load_average_end"] = load_average()
    verdict = {s: r["median_readings_per_s"] >= TARGET_READINGS_PER_S for s, r in sources.items()}
    return {"machine": machine, "config": asdict(opts),
            "targets": {"readings_per_s": TARGET_READINGS_PER_S}, "sources": sources,
            "verdict": verdict}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = [f"{'source':<8} {'readings':>10} {'median rd/s':>12} {'runs rd/s':<30} {'met':>4}"]
    for source, r in result["sources"].items():
        each = ", ".join(f"{run['readings_per_s']:,.0f}" for run in r["runs"])
        lines.append(f"{source:<8} {r['runs'][0]['readings']:>10,} "
                     f"{r['median_readings_per_s']:>12,.0f} {each:<30} "
                     f"{'yes' if result['verdict'][source] else 'NO':>4}")  # fmt: skip
    m = result["machine"]
    lines.append(f"target >= {result['targets']['readings_per_s']:,.0f} readings/s to a file; "
                 f"{m['cpu_model']}, {m['cores']} cores, load {m['load_average_start']} -> "
                 f"{m['load_average_end']}")  # fmt: skip
    return "\n".join(lines)
