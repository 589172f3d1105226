"""One frozen settings object for the services, from file, environment and CLI flags.

Precedence (highest first): CLI flags, ``STREAMWATCH_*`` environment variables (nested
with ``__``, e.g. ``STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS=host:9092``,
``STREAMWATCH_MODEL__CELL=lstm``), a TOML or JSON config file (``--config``), defaults.
The effective config is logged at start-up (secrets masked).

>>> s = load_settings(overrides={"kafka": {"client": "confluent"}})
>>> s.kafka.client, s.service.group_id, s.model.cell
('confluent', 'streamwatch-detector', 'gru')
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from streamwatch.detect.config import DetectorConfig
from streamwatch.errors import ConfigError
from streamwatch.model.config import ModelConfig

_FROZEN = ConfigDict(frozen=True, extra="forbid")
SECRET_KEYS = ("password", "secret", "token", "key")


class KafkaSettings(BaseModel):
    model_config = _FROZEN

    bootstrap_servers: str | None = Field(
        default=None, description="host:port[,host:port]; none = in-memory transport (tests)"
    )
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    session_timeout_ms: int = Field(default=6000, ge=1000, le=300_000)  # the transports' range
    client_config: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="Passed through to the client: security_protocol, sasl_mechanism, "
        "sasl_plain_username, sasl_plain_password, ssl_cafile, ...",
    )


class TopicSettings(BaseModel):
    model_config = _FROZEN

    readings: str = "streamwatch.readings"
    scores: str = "streamwatch.scores"
    alerts: str = "streamwatch.alerts"
    deadletter: str = "streamwatch.deadletter"
    health: str = "streamwatch.health"
    truth: str = "streamwatch.truth"
    state: str = Field(default="streamwatch.detector-state",
                       description="the detectors' changelog (service.state_store = kafka)")
    partitions: int = Field(default=6, ge=1, le=10_000, description="when streamwatch creates them")


class ServiceSection(BaseModel):
    model_config = _FROZEN

    group_id: str = "streamwatch-detector"
    max_poll_records: int = Field(default=2000, ge=1, le=100_000)
    poll_timeout_s: float = Field(default=0.5, gt=0, le=60)
    emit_scores: Literal["all", "alerts"] = "all"
    watch_streams: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = Field(
        default=(), max_length=10_000, description="with emit_scores = 'alerts': streams "
        "that still get a Score for every reading (the ones a dashboard follows), by id or "
        "fnmatch pattern, e.g. [\"icu/bed-0*\"]")
    state_store: Literal["kafka", "directory"] = Field(
        default="kafka", description="where checkpoints go: the changelog topic "
        "topics.state (any process of the group reaches it), or checkpoint_dir (a "
        "directory every process must see)")
    state_chunk_bytes: int = Field(default=512 * 1024, ge=1024, le=16 * 1024 * 1024,
                                   description="largest changelog record; below the "
                                   "broker's message.max.bytes (1 MB by default)")
    state_write_bytes_per_s: int = Field(
        default=8 * 1024 * 1024, ge=0, description="pace of a background checkpoint's "
        "chunks to the state topic (0: no limit); saves on a rebalance or shutdown are not "
        "paced")
    state_forget_after_s: float = Field(
        default=3600.0, ge=60, description="a checkpoint on the state topic this old whose "
        "every partition another holds at a newer offset is removed (its process is gone)")
    checkpoint_dir: Path = Path("runs/detector")
    checkpoint_every_batches: int = Field(default=1000, ge=1)
    flush_every_batches: int = Field(
        default=1, ge=1, le=1000, description="wait for the broker to acknowledge the "
        "outputs every this many batches (always before a checkpoint, a rebalance or "
        "shutdown); 1 = after every batch")
    checkpoint_every_s: float = Field(default=30.0, gt=0)
    checkpoint_jitter: float = Field(
        default=0.25, ge=0, lt=1, description="each interval by time is drawn from "
        "[(1 - jitter) * checkpoint_every_s, checkpoint_every_s]: a group's processes do not "
        "checkpoint all at once")
    health_every_s: float = Field(default=2.0, gt=0)
    flush_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, description="the longest one wait for the broker to "
        "acknowledge the outputs: an outage is logged at this pace, and a stop gives up its "
        "final checkpoint after it (the next start replays from the last one)")
    max_future_s: float = Field(default=300.0, ge=0)
    payload_cap: int = Field(default=4096, ge=64, le=1_000_000)
    fresh_start: bool = False
    buffered_per_partition: int = Field(
        default=20_000, ge=0, description="a partition with more readings than this "
        "waiting in the event-time merge (it runs ahead of the others) is paused until it "
        "holds half as many; 0: never pause")
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=9308, ge=0, le=65535)
    torch_threads: int = Field(default=1, ge=1, le=256)


class Settings(BaseSettings):
    """Everything a detector process needs (see module docstring)."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMWATCH_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    service: ServiceSection = Field(default_factory=ServiceSection)
    model: ModelConfig = Field(default_factory=ModelConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section; a ``None`` in ``top`` (a CLI flag not
    given) keeps what ``base`` has, at any depth."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict):
            below = out.get(key)
            out[key] = _deep_merge(below if isinstance(below, dict) else {}, value)
        elif value is not None:
            out[key] = value
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or JSON (any other name) config file into a dict."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
            f"{exc.start}): save it as UTF-8 TOML or JSON"
        ) from None
    fmt = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(text) if fmt == "TOML" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        # (json's own errors are ValueErrors, and so is an integer past Python's 4,300
        # digits; RecursionError: nested ~1,000 deep)
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ConfigError(
            f"config file {path} could not be parsed as {fmt}: {why} (streamwatch reads "
            "TOML from a *.toml file and JSON from any other name)"
        ) from None
    if not isinstance(data, dict):
        found = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(data), "a number")
        raise ConfigError(
            f"config file {path} holds {found} at the top level, not an object of sections: "
            'write it as e.g. {"kafka": {"bootstrap_servers": "host:9092"}}'
        )
    return data


def _json_kind(annotation: Any) -> str | None:
    """What the environment must hold for a setting of this type (JSON object or list);
    ``None`` for a plain value."""
    if get_origin(annotation) is Annotated:
        return _json_kind(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [_json_kind(arg) for arg in get_args(annotation) if arg is not type(None)]
        return next((k for k in kinds if k), None)
    origin = get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, (BaseModel, dict)):
        return "a JSON object"
    if isinstance(origin, type) and issubclass(origin, (list, tuple, set, frozenset)):
        return "a JSON list"
    return None


#: ``_env_setting`` of a variable that names no setting.
_NO_SETTING = object()


def _env_setting(name: str) -> Any:
    """The type of the setting a ``STREAMWATCH_*`` variable names; ``None`` for a key
    inside a table setting (``..._CLIENT_CONFIG__ACKS``: that table's parsing checks it);
    ``_NO_SETTING`` when it names none."""
    annotation: Any = Settings
    for key in name[len("STREAMWATCH_"):].lower().split("__"):
        model = get_origin(annotation) or annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        if key not in model.model_fields:
            return _NO_SETTING
        annotation = model.model_fields[key].annotation
    return annotation


def _env_json_kind(name: str) -> str | None:
    """What a ``STREAMWATCH_*`` variable must hold when its setting is read as JSON."""
    annotation = _env_setting(name)
    return None if annotation is None or annotation is _NO_SETTING else _json_kind(annotation)


#: ``STREAMWATCH_`` variables that are not settings: read by one command each.
OTHER_ENV = frozenset({"STREAMWATCH_NAB_DIR", "STREAMWATCH_TANSU_BINARY"})


def unknown_env(environ: Any = None) -> list[str]:
    """``STREAMWATCH_`` variables that name no setting (``load_settings`` refuses them: pydantic
    ignores an unknown section and refuses an unknown key without naming the variable).

    >>> unknown_env({"STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS": "h:1", "STREAMWATCH_KAFKA__BOOTSTRAP": "",
    ...              "STREAMWATCH_KAFKA__CLIENT_CONFIG__ACKS": "all", "STREAMWATCH_NAB_DIR": "d"})
    ['STREAMWATCH_KAFKA__BOOTSTRAP']
    """
    return [name for name in sorted(os.environ if environ is None else environ)
            if name.upper().startswith("STREAMWATCH_") and name.upper() not in OTHER_ENV
            and _env_setting(name.upper()) is _NO_SETTING]


def _env_error(exc: SettingsError) -> ConfigError:
    """A ``ConfigError`` naming the environment variable that is not the JSON it must be."""
    match = re.search(r'field "(\w+)"', str(exc))
    section = f"STREAMWATCH_{match.group(1).upper()}" if match else "STREAMWATCH_"
    for name, value in sorted(os.environ.items()):
        upper = name.upper()
        if upper != section and not upper.startswith(section + ("__" if match else "")):
            continue
        kind = _env_json_kind(upper)
        if kind is None:
            continue
        try:
            json.loads(value)
        except ValueError as err:
            example = "'[\"a\", \"b\"]'" if kind == "a JSON list" else "'{\"key\": \"value\"}'"
            return ConfigError(
                f"environment variable {name} is not valid JSON ({err}): set it to {kind}, "
                f"e.g. {name}={example}, or unset it"
            )
    return ConfigError(
        f"cannot read the {section}* environment variables ({exc}): list settings must be "
        "a JSON list and table settings a JSON object"
    )


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """File < environment < overrides (CLI flags). Errors name the setting and the range."""
    file_values = read_config_file(config_file) if config_file else {}
    unknown = unknown_env()
    if unknown:  # (pydantic ignored an unknown section and refused an unknown key in one)
        raise ConfigError(
            f"environment variable {unknown[0]} names no setting: check its spelling "
            "(STREAMWATCH_<SECTION>__<SETTING>, e.g. STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS; the "
            "README lists the settings) or unset it")
    try:
        env_only = Settings()  # environment over defaults
        env_values = env_only.model_dump(exclude_unset=True)
        merged = _deep_merge(_deep_merge(file_values, env_values), overrides or {})
        return Settings(**merged)
    except SettingsError as exc:
        raise _env_error(exc) from None
    except RecursionError:  # a STREAMWATCH_ value of JSON nested ~1,000 deep
        raise ConfigError("a STREAMWATCH_ environment variable holds JSON nested too deeply: "
                          "check the variables that hold lists or objects") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as a dict with secret values masked, for the start-up log line."""
    data = settings.model_dump(mode="json")
    cfg = data["kafka"]["client_config"]
    for key in list(cfg):
        if any(word in key.lower() for word in SECRET_KEYS):
            cfg[key] = "***"
    return data
