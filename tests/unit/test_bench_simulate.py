"""``streamwatch bench simulate``: structure and consistency (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamwatch.bench.simulate import SimulateBenchOptions, run_simulate_bench
from streamwatch.cli import main
from streamwatch.errors import ConfigError


def test_bench_counts_every_reading_written_by_the_real_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sim.json"
    code = main(["bench", "simulate", "--streams", "3", "--duration", "2m", "--repeats", "2",
                 "--json", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "icu" in printed and "sensors" in printed and "target >= 100,000" in printed
    result = json.loads(out.read_text())
    assert set(result) == {"machine", "config", "targets", "sources", "verdict"}
    assert result["targets"] == {"readings_per_s": 100_000.0}
    for source in ("icu", "sensors"):
        runs = result["sources"][source]["runs"]
        assert len(runs) == 2
        # 3 streams x 120 s at 1 Hz, less dropped samples the scenario may inject
        assert all(0 < r["readings"] <= 360 and r["bytes"] > 0 for r in runs)
        assert runs[0]["readings"] == runs[1]["readings"]  # same seed, same output
        for r in runs:
            assert r["readings_per_s"] == pytest.approx(r["readings"] / r["elapsed_s"], rel=1e-2)


def test_unknown_source_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="icu,sensors"):
        run_simulate_bench(SimulateBenchOptions(sources=("reactor",), progress=False))
