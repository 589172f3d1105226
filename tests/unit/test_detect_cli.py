"""``streamwatch detect``'s own flags: a bad value is a usage error, before any work."""

from __future__ import annotations

import os
import re

import pytest

from streamwatch.cli import build_parser
from streamwatch.config import load_settings
from streamwatch.transport._common import BROKER_HINT


@pytest.mark.parametrize(("flags", "problem"), [
    (["--timeout", "-1"], "must be a finite number of seconds > 0, got '-1'"),
    (["--timeout", "0"], "must be a finite number of seconds > 0, got '0'"),
    (["--timeout", "nan"], "must be a finite number of seconds > 0, got 'nan'"),
    (["--timeout", "inf"], "must be a finite number of seconds > 0, got 'inf'"),
    (["--timeout", "soon"], "not a number of seconds: 'soon'"),
    (["--count", "-5"], "must be >= 1, got -5"),
    (["--count", "0"], "must be >= 1, got 0"),
    (["--count", "2.5"], "expected a whole number, got '2.5'"),
])
def test_a_bad_timeout_or_count_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], flags: list[str], problem: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["detect", *flags])
    assert exit_info.value.code == 2
    assert f"argument {flags[0]}: {problem}" in capsys.readouterr().err


def test_a_good_timeout_and_count_are_parsed() -> None:
    args = build_parser().parse_args(["detect", "--timeout", "2.5", "--count", "10"])
    assert (args.timeout, args.count) == (2.5, 10)
    args = build_parser().parse_args(["detect"])
    assert (args.timeout, args.count) == (None, None)


def test_the_broker_hint_names_the_variable_the_settings_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("STREAMWATCH_")]:
        monkeypatch.delenv(name)
    named = re.findall(r"STREAMWATCH_\w+", BROKER_HINT)
    assert len(named) == 1
    monkeypatch.setenv(named[0], "broker-1:9092")
    assert load_settings().kafka.bootstrap_servers == "broker-1:9092"
