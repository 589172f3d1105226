"""``streamwatch dashboard`` argument handling (the served app is tested elsewhere)."""

from __future__ import annotations

import pytest

from streamwatch.cli import build_parser, main


def test_dashboard_binds_loopback_on_8050_by_default() -> None:
    args = build_parser().parse_args(["dashboard", "--bootstrap-servers", "k:9092"])
    assert (args.host, args.port, args.kafka_client) == ("127.0.0.1", 8050, None)
    assert args.func.__name__ == "run_dashboard"


def test_dashboard_without_a_broker_says_what_to_do(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    assert main(["dashboard"]) == 2
    err = capsys.readouterr().err
    assert "--bootstrap-servers HOST:PORT" in err and "streamwatch demo" in err


def test_dashboard_refuses_out_of_range_settings_before_connecting(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--bootstrap-servers", "127.0.0.1:1", "--recent-points",
                 "5"]) == 2
    assert "recent_points must be in [10, 100000]" in capsys.readouterr().err
