"""``streamwatch simulate`` and ``streamwatch replay`` without a broker (files, stdout)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import pytest

from simulators.icu import IcuSimulator
from streamwatch.cli import main
from streamwatch.evaluate.corpus import resolve_nab_dir
from streamwatch.schema import Episode, decode, decode_reading

NAB = resolve_nab_dir() / "data"  # ../shared/data/nab or $STREAMWATCH_NAB_DIR
ART = NAB / "artificialWithAnomaly" / "art_daily_jumpsup.csv"
CONSOLE = Path(sys.executable).with_name("streamwatch")
BUSY = ["--warmup", "10m", "--episodes-per-day", "48", "--artefacts-per-day", "48"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` points the root logger at this test's captured stderr: undo that after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def test_simulate_to_file_writes_every_reading_and_a_truth_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "icu.jsonl"
    rc = main(["simulate", "icu", "--patients", "3", "--duration", "3h", "--seed", "5",
               "--speedup", "0", "--quiet", "--output", str(out), *BUSY])
    assert rc == 0
    readings = [decode_reading(line) for line in _lines(out)]
    assert len(readings) == 3 * 3 * 3600
    assert {r.stream_id for r in readings} == {"icu/bed-01", "icu/bed-02", "icu/bed-03"}
    assert [r.ts for r in readings] == sorted(r.ts for r in readings)
    labels = [decode("episode", line) for line in _lines(tmp_path / "icu.jsonl.truth.jsonl")]
    expected = IcuSimulator(3, 5, warmup_s=600, clinical_per_day=48,
                            artefacts_per_day=48).episodes(3 * 3600)
    assert labels and sorted(labels, key=lambda e: e.episode_id) == sorted(
        expected, key=lambda e: e.episode_id)
    assert {e.category for e in labels} == {"clinical", "artefact"}


def test_simulate_same_seed_gives_identical_files(tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b", "c"):
        out = tmp_path / f"{name}.jsonl"
        seed = "9" if name != "c" else "10"
        assert main(["simulate", "sensors", "--machines", "4", "--duration", "2h", "--seed", seed,
                     "--speedup", "0", "--quiet", "--output", str(out), *BUSY[:4]]) == 0
        outputs.append((out.read_bytes(), Path(f"{out}.truth.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[2][0]
    assert outputs[0][1] and all(
        msgspec.json.decode(line, type=Episode).category == "fault"
        for line in outputs[0][1].splitlines())


def test_simulate_to_stdout_writes_json_lines_and_no_truth_file(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    assert main(["simulate", "sensors", "--machines", "2", "--duration", "30s",
                 "--speedup", "0"]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert len(lines) == 60
    assert decode_reading(lines[0]).stream_id == "plant/machine-01"
    assert list(tmp_path.iterdir()) == []


def test_output_option_wins_over_the_bootstrap_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")
    out = tmp_path / "env.jsonl"
    assert main(["simulate", "icu", "--patients", "1", "--duration", "5s", "--speedup", "0",
                 "--quiet", "--output", str(out)]) == 0
    assert len(_lines(out)) == 5


def test_no_episodes_gives_clean_data_and_an_empty_truth_file(tmp_path: Path) -> None:
    out = tmp_path / "clean.jsonl"
    assert main(["simulate", "icu", "--patients", "2", "--duration", "3h", "--speedup", "0",
                 "--quiet", "--no-episodes", "--output", str(out), *BUSY]) == 0
    assert Path(f"{out}.truth.jsonl").read_bytes() == b""
    assert all(None not in decode_reading(line).values.values() for line in _lines(out))


def test_dropouts_are_opt_in_and_reduce_the_count_by_their_labels(tmp_path: Path) -> None:
    out, truth = tmp_path / "d.jsonl", tmp_path / "labels.jsonl"
    assert main(["simulate", "icu", "--patients", "2", "--duration", "3h", "--speedup", "0",
                 "--quiet", "--dropouts", "--output", str(out), "--truth-output", str(truth),
                 *BUSY]) == 0
    labels = [decode("episode", line) for line in _lines(truth)]
    dropped = sum(round(e.end_ts - e.onset_ts) for e in labels if e.type == "dropout")
    assert dropped > 0 and len(_lines(out)) == 2 * 3 * 3600 - dropped


def test_speedup_paces_simulated_time_against_the_wall_clock(tmp_path: Path) -> None:
    out = tmp_path / "paced.jsonl"
    began = time.monotonic()
    assert main(["simulate", "icu", "--patients", "1", "--duration", "31s", "--speedup", "60",
                 "--quiet", "--output", str(out)]) == 0
    elapsed = time.monotonic() - began
    assert 0.45 <= elapsed < 5.0  # 30 s of simulated time at 60x = 0.5 s
    assert len(_lines(out)) == 31


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate", "icu", "--machines", "3"], "--machines is for 'simulate sensors'"),
        (["simulate", "sensors", "--dropouts"], "are for 'simulate icu'"),
        (["simulate", "icu", "--patients", "0"], r"patients must be an integer in \[1, 100000\]"),
        (["simulate", "icu", "--bootstrap-servers", "h:1", "--output", "x"], "not both"),
        (["simulate", "icu", "--rate-hz", "1000"], r"rate_hz must be in \[0.0001, 100\]"),
        # all-null readings and exit 0 before the lower bound
        (["simulate", "icu", "--rate-hz", "1e-300"], r"rate_hz must be in \[0.0001, 100\]"),
        # a ValueError traceback from the client before the check
        (["simulate", "icu", "--bootstrap-servers", "localhost:notaport"],
         "bootstrap server 'localhost:notaport' is not HOST:PORT"),
    ],
)
def test_bad_simulate_options_are_clear_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--speedup", "0", "--duration", "1s"]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_unparseable_duration_is_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "icu", "--duration", "ten minutes"])
    assert exc.value.code == 2
    assert "invalid duration 'ten minutes': use e.g. 30s, 10m, 1h, 2d" in capsys.readouterr().err


def test_installed_console_script_simulates_to_stdout() -> None:
    assert CONSOLE.exists(), f"console script not installed at {CONSOLE}; run `make venv`"
    done = subprocess.run([str(CONSOLE), "simulate", "icu", "--patients", "2", "--duration",
                           "10s", "--speedup", "0", "--seed", "3"],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.splitlines()
    assert len(lines) == 20
    assert {decode_reading(line).stream_id for line in lines} == {"icu/bed-01", "icu/bed-02"}
    assert b"run done" in done.stderr and b"readings=20" in done.stderr


def test_replay_nab_file_to_stdout(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert ART.exists(), f"NAB data missing at {ART}"
    assert main(["replay", str(ART), "--stream-id", "nab/jumpsup", "--output", "-"]) == 0
    readings = [decode_reading(line) for line in capsysbinary.readouterr().out.splitlines()]
    frame = pd.read_csv(ART)
    assert len(readings) == len(frame)
    assert {(r.stream_id, r.kind) for r in readings} == {("nab/jumpsup", "univariate")}
    assert [r.values["value"] for r in readings] == frame["value"].tolist()


def test_replay_bad_csv_names_lines_and_skips_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,n/a\n"
                   "31/02/2014 garbage,3\n2014-04-01 00:15:00,4\n")
    out = tmp_path / "bad.jsonl"
    assert main(["replay", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 row(s) with an unparseable timestamp" in err and "line 4" in err
    assert main(["replay", str(bad), "--output", str(out), "--skip-bad-rows"]) == 0
    err = capsys.readouterr().err
    assert "1 non-numeric value(s) replaced by null" in err
    assert "1 bad row(s) skipped" in err and "line 3: value='n/a'" in err
    values = [decode_reading(line).values["value"] for line in _lines(out)]
    assert values == [1.0, None, 4.0]


def test_replay_rate_paces_readings(tmp_path: Path) -> None:
    csv = tmp_path / "ten.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{1000 + i},{i}\n" for i in range(11)))
    began = time.monotonic()
    assert main(["replay", str(csv), "--rate", "20", "--quiet", "--output",
                 str(tmp_path / "o.jsonl")]) == 0
    assert 0.45 <= time.monotonic() - began < 5.0  # 10 intervals at 20 per second


def test_a_full_disk_is_a_clear_error_naming_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = Path("/dev/full")
    assert full.exists(), "needs Linux's /dev/full (every write fails with ENOSPC)"
    truth = tmp_path / "labels.jsonl"
    assert main(["simulate", "icu", "--patients", "1", "--duration", "60s", "--speedup", "0",
                 "--quiet", "--output", str(full), "--truth-output", str(truth)]) == 2
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if not line.startswith("ts=")]
    assert len(problems) == 1 and "level=warning" not in err
    assert problems[0].startswith("streamwatch simulate: error: cannot write /dev/full: "
                                  "No space left on device; free space")


def test_a_failing_truth_file_keeps_the_readings_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.jsonl"
    assert main(["simulate", "icu", "--patients", "2", "--duration", "3h", "--speedup", "0",
                 "--quiet", "--output", str(out), "--truth-output", "/dev/full", *BUSY]) == 2
    assert "error: cannot write /dev/full: No space left on device" in capsys.readouterr().err
    assert len(_lines(out)) == 2 * 3 * 3600


@pytest.mark.parametrize("bad", ["missing/t.jsonl", "dir"])
def test_a_bad_second_output_leaves_no_first_file_behind(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dir").mkdir()
    out, old = tmp_path / "a.jsonl", tmp_path / "old.jsonl"
    old.write_bytes(b"keep me\n")
    errors = []
    for output in (out, old):
        assert main(["simulate", "icu", "--patients", "1", "--duration", "5s", "--speedup", "0",
                     "--quiet", "--output", str(output),
                     "--truth-output", str(tmp_path / bad)]) == 2
        errors.append(capsys.readouterr().err)
    assert not out.exists() and old.read_bytes() == b"keep me\n"
    for err in errors:
        assert f"error: --truth-output {tmp_path / bad}" in err
        assert "does not exist" in err if bad.startswith("missing") else "is a directory" in err


def test_a_file_another_output_failed_to_open_after_it_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins

    real_open, truth = builtins.open, tmp_path / "t.jsonl"

    def refusing_open(file: Any, *a: Any, **k: Any) -> Any:  # what the checks cannot see
        if str(file) == str(truth):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", refusing_open)
    out = tmp_path / "a.jsonl"
    assert main(["simulate", "icu", "--patients", "1", "--duration", "5s", "--speedup", "0",
                 "--quiet", "--output", str(out), "--truth-output", str(truth)]) == 2
    assert list(tmp_path.iterdir()) == []
    assert f"cannot write --truth-output {truth}: Permission denied" in capsys.readouterr().err


@pytest.mark.parametrize("duration", ["0s", "-5", "367d", "nan"])
def test_out_of_range_durations_all_state_the_valid_range(
    duration: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "icu", "--duration", duration, "--output", "-"])
    assert exc.value.code == 2
    assert r"argument --duration: duration must be in (0 s, 366 d]" in capsys.readouterr().err


@pytest.mark.parametrize("start", ["1e15", "1e300", "inf", "nan", "-1", "9999-01-01", "tomorrow+"])
def test_start_is_bounded_to_sane_epoch_seconds(
    start: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "icu", "--patients", "1", "--duration", "1s", "--speedup", "0",
            "--quiet", "--output", str(tmp_path / "s.jsonl")]
    if start == "tomorrow+":  # a minute inside the bound is fine, a minute past it is not
        inside = time.time() + 86_400 - 60
        assert main([*argv, "--start", str(inside)]) == 0
        assert decode_reading(_lines(tmp_path / "s.jsonl")[0]).ts == inside
        start = str(time.time() + 86_400 + 60)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--start", start])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --start: start must be between 1970-01-01T00:00:00Z and one day from now" in err


@pytest.mark.parametrize("command", ["simulate", "replay"])
def test_topic_partitions_default_to_what_detect_creates(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamwatch.transport
    from streamwatch.config import TopicSettings
    from streamwatch.transport.memory import MemoryTransport

    created: dict[str, int] = {}

    class Recording(MemoryTransport):
        def create_topics(self, topics: Mapping[str, int],
                          configs: Mapping[str, Mapping[str, str]] | None = None) -> None:
            created.update(topics)
            super().create_topics(topics, configs)

    monkeypatch.setattr(streamwatch.transport, "open_transport", lambda *_a, **_k: Recording())
    argv = (["simulate", "icu", "--patients", "1", "--duration", "2s", "--speedup", "0"]
            if command == "simulate" else ["replay", str(ART)])
    assert main([*argv, "--quiet", "--bootstrap-servers", "h:1"]) == 0
    assert created["streamwatch.readings"] == TopicSettings().partitions  # detect's default
    assert main([*argv, "--quiet", "--bootstrap-servers", "h:1", "--topic", "t",
                 "--partitions", "3"]) == 0
    assert created["t"] == 3
