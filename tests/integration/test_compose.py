"""docker-compose.yml validates with the real Compose binary (no engine needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import compose

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.path.dirname(compose.__file__)) / "docker-compose"


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BINARY), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def test_compose_file_validates_with_the_real_compose_binary() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_services_start_in_dependency_order_with_healthchecks() -> None:
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"kafka", "detector", "simulator-icu", "simulator-sensors", "dashboard"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    for name in ("kafka", "detector", "dashboard"):
        assert "healthcheck" in services[name], name
    for name in ("detector", "dashboard", "simulator-icu"):
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_validation_catches_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  x:\n    depends_on: [missing]\n    image: a\n")
    result = subprocess.run([str(BINARY), "-f", str(broken), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
