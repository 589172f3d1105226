"""Settings precedence: file < environment < CLI flags; flags not given change nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamwatch.cli import build_parser, main
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


@pytest.mark.parametrize(("name", "value", "kind"), [
    ("STREAMWATCH_SERVICE__WATCH_STREAMS", "not json", "a JSON list"),
    ("STREAMWATCH_KAFKA__CLIENT_CONFIG", "{bad", "a JSON object"),
    ("STREAMWATCH_SERVICE", "[oops", "a JSON object"),
])
def test_an_environment_variable_that_is_not_json_is_named_with_its_format(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    name: str, value: str, kind: str,
) -> None:
    for other in [n for n in os.environ if n.startswith("STREAMWATCH_")]:
        monkeypatch.delenv(other)
    monkeypatch.setenv("STREAMWATCH_SERVICE__GROUP_ID", "plain text, not JSON")  # not blamed
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"environment variable {name} is not valid JSON.*"
                       rf"set it to {kind}"):
        load_settings()
    assert main(["detect"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"streamwatch detect: error: environment variable {name} ")
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "found"), [
    ("[1, 2]", "a list"), ('"kafka"', "a string"), ("null", "null"), ("3", "a number"),
])
def test_a_json_config_file_that_is_not_an_object_says_so(
    tmp_path: Path, text: str, found: str
) -> None:
    cfg = tmp_path / "list.json"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=rf"list\.json holds {found} at the top level, "
                       "not an object of sections"):
        load_settings(cfg)


def test_a_config_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "sw.toml"
    cfg.write_bytes(b'[model]\ncell = "gr\xfc"\n')  # Latin-1, as an old editor saves it
    with pytest.raises(ConfigError, match=r"sw\.toml is not UTF-8 text \(byte 0xfc at offset "
                       r"18\): save it as UTF-8"):
        load_settings(cfg)


def test_a_file_not_named_toml_is_reported_as_parsed_as_json(tmp_path: Path) -> None:
    cfg = tmp_path / "sw.yaml"
    cfg.write_text("model:\n  cell: lstm\n")
    with pytest.raises(ConfigError, match=r"sw\.yaml could not be parsed as JSON: .* reads TOML "
                       r"from a \*\.toml file and JSON from any other name"):
        load_settings(cfg)
    cfg.write_text('{"model": {"cell": "lstm"}}')  # YAML's JSON subset is read
    assert load_settings(cfg).model.cell == "lstm"
    bad_toml = tmp_path / "sw.toml"
    bad_toml.write_text("[model\n")
    with pytest.raises(ConfigError, match=r"sw\.toml could not be parsed as TOML: "):
        load_settings(bad_toml)


@pytest.mark.parametrize("name", ["STREAMWATCH_KAFKA__BOOTSTRAP",  # _SERVERS left off
                                  "STREAMWATCH_BOGUS__X"])  # a section (pydantic ignored it)
def test_a_streamwatch_variable_that_names_no_setting_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("STREAMWATCH_SERVICE__GROUP_ID", "g1")  # a real one
    monkeypatch.setenv("STREAMWATCH_NAB_DIR", "/data/nab")  # not a setting, but known
    assert load_settings().service.group_id == "g1"
    monkeypatch.setenv(name, "127.0.0.1:9092")
    with pytest.raises(ConfigError, match=f"environment variable {name} names no setting"):
        load_settings()


def test_client_config_from_environment_variables_gets_the_clients_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An environment variable is text: linger_ms "20" crashed kafka-python's producer,
    and enable_idempotence "false" turned idempotence on (a non-empty string is true)."""
    from streamwatch.transport._kafka_common import split_kafka_python_config, to_librdkafka

    for key, value in {"LINGER_MS": "20", "ENABLE_IDEMPOTENCE": "false", "ACKS": "all",
                       "SSL_CHECK_HOSTNAME": "False", "SASL_PLAIN_PASSWORD": "1234"}.items():
        monkeypatch.setenv(f"STREAMWATCH_KAFKA__CLIENT_CONFIG__{key}", value)
    config = load_settings().kafka.client_config
    producer, _consumer, _admin = split_kafka_python_config(config)
    assert producer["linger_ms"] == 20 and producer["enable_idempotence"] is False
    assert producer["acks"] == "all" and producer["sasl_plain_password"] == "1234"
    native = to_librdkafka(config, "producer")
    assert native["linger.ms"] == 20 and native["enable.idempotence"] is False
    assert native["ssl.endpoint.identification.algorithm"] == "none"
    monkeypatch.setenv("STREAMWATCH_KAFKA__CLIENT_CONFIG__ENABLE_IDEMPOTENCE", "maybe")
    with pytest.raises(ConfigError, match=r"client_config\['enable_idempotence'\] must be true or false"):
        split_kafka_python_config(load_settings().kafka.client_config)


@pytest.mark.parametrize(("name", "text", "says"), [
    ("big.json", '{"service": {"max_poll_records": ' + "9" * 5000 + "}}", "could not be parsed as JSON"),
    ("big.toml", "[service]\nmax_poll_records = " + "9" * 5000 + "\n", "could not be parsed as TOML"),
    ("deep.json", '{"x": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ("deep.toml", "x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
])
def test_a_config_file_too_big_or_too_deep_for_the_parser_is_an_error_not_a_traceback(
    tmp_path: Path, name: str, text: str, says: str
) -> None:
    """A 5,000-digit integer (ValueError) and nesting ~5,000 deep (RecursionError) escaped
    as tracebacks."""
    cfg = tmp_path / name
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=says):
        load_settings(cfg)


def test_an_environment_variable_nested_too_deep_is_an_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMWATCH_SERVICE__WATCH_STREAMS", "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_settings()
