"""Settings precedence: file < environment < CLI flags; flags not given change nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamwatch.cli import build_parser
from streamwatch.commands.detect import settings_from_args
from streamwatch.config import load_settings
from streamwatch.errors import ConfigError


def test_detect_with_no_flags_no_file_and_no_environment_gets_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("STREAMWATCH_")]:
        monkeypatch.delenv(name)
    args = build_parser().parse_args(["detect"])
    s = settings_from_args(args)
    assert (s.kafka.client, s.model.cell, s.service.group_id) == (
        "kafka-python", "gru", "streamwatch-detector")


def test_flags_override_environment_which_overrides_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = tmp_path / "sw.toml"
    cfg.write_text('[model]\ncell = "lstm"\n[service]\ngroup_id = "from-file"\nmax_poll_records = 7\n')
    monkeypatch.setenv("STREAMWATCH_SERVICE__GROUP_ID", "from-env")
    args = build_parser().parse_args(["detect", "--config", str(cfg), "--max-poll-records", "9"])
    s = settings_from_args(args)
    assert s.model.cell == "lstm"  # file, nothing above it
    assert s.service.group_id == "from-env"  # environment over file
    assert s.service.max_poll_records == 9  # flag over file


def test_a_none_override_keeps_the_value_below_it_at_any_depth(tmp_path: Path) -> None:
    cfg = tmp_path / "sw.json"
    cfg.write_text('{"model": {"cell": "lstm"}}')
    s = load_settings(cfg, overrides={"model": {"cell": None}, "kafka": {"client": None}})
    assert (s.model.cell, s.kafka.client) == ("lstm", "kafka-python")


def test_an_out_of_range_setting_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMWATCH_SERVICE__MAX_POLL_RECORDS", "0")
    with pytest.raises(ConfigError, match=r"service\.max_poll_records"):
        load_settings()


def test_watched_streams_come_from_file_environment_or_repeated_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.startswith("STREAMWATCH_")]:
        monkeypatch.delenv(name)
    cfg = tmp_path / "sw.toml"
    cfg.write_text('[service]\nemit_scores = "alerts"\nwatch_streams = ["icu/bed-0*"]\n')
    parse = build_parser().parse_args
    assert settings_from_args(parse(["detect", "--config", str(cfg)])).service.watch_streams \
        == ("icu/bed-0*",)
    monkeypatch.setenv("STREAMWATCH_SERVICE__WATCH_STREAMS", '["plant/*"]')
    assert settings_from_args(parse(["detect"])).service.watch_streams == ("plant/*",)
    args = parse(["detect", "--config", str(cfg), "--watch-stream", "icu/bed-01",
                  "--watch-stream", "icu/bed-1?"])
    assert settings_from_args(args).service.watch_streams == ("icu/bed-01", "icu/bed-1?")
    assert settings_from_args(parse(["detect"])).service.emit_scores == "all"
    monkeypatch.setenv("STREAMWATCH_SERVICE__WATCH_STREAMS", '[""]')
    with pytest.raises(ConfigError, match=r"service\.watch_streams"):
        load_settings()
