"""Pieces shared by the two Kafka transports: config handling, error collection."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from streamwatch.errors import BrokerUnavailableError, ConfigError, TransportError
from streamwatch.transport._common import BROKER_HINT

logger = logging.getLogger(__name__)

#: The longest a consumer's ``close`` waits for the broker (leaving the group), s.
CLOSE_TIMEOUT_S = 5.0

#: The longest an offset commit waits for the broker, s (it then fails: the next
#: checkpoint commits again). Both clients: kafka-python by its own timeout, confluent-kafka
#: (whose synchronous commit has none) by waiting on the thread that makes it.
COMMIT_TIMEOUT_S = 10.0

#: Settings streamwatch owns; passing them in ``client_config`` is an error.
MANAGED_KEYS = frozenset(
    {
        "bootstrap_servers",
        "group_id",
        "enable_auto_commit",
        "key_serializer",
        "value_serializer",
        "key_deserializer",
        "value_deserializer",
        "partitioner",
        "kafka_client",
        "selector",
        "default_offset_commit_callback",
    }
)

# Idempotence is off by default: on Tansu 0.6 an idempotent producer whose batch expired
# during an outage never recovers (kafka-python stalls, librdkafka gets fenced). One request
# in flight per connection keeps per-partition order across retries without it. Set
# enable_idempotence=True (and more in flight) in client_config for a real Kafka cluster.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger_ms": 5,
    "batch_size": 256 * 1024,
    "acks": "all",
    "enable_idempotence": False,
    "max_in_flight_requests_per_connection": 1,
    "max_block_ms": 10_000,
    "bootstrap_timeout_ms": 5_000,
    "allow_auto_create_topics": False,
}
CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "max_poll_records": 10_000,
    "bootstrap_timeout_ms": 5_000,
    "allow_auto_create_topics": False,
}
ADMIN_DEFAULTS: dict[str, Any] = {"bootstrap_timeout_ms": 5_000}

# kafka-python name -> librdkafka name (same meaning, same unit).
_LIBRDKAFKA_NAMES = {
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "sasl_kerberos_service_name": "sasl.kerberos.service.name",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_crlfile": "ssl.crl.location",
    "ssl_ciphers": "ssl.cipher.suites",
    "request_timeout_ms": "socket.timeout.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "receive_message_max_bytes": "receive.message.max.bytes",
    "acks": "acks",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "compression_type": "compression.type",
    "retries": "retries",
    "delivery_timeout_ms": "delivery.timeout.ms",
    "max_request_size": "message.max.bytes",
    "enable_idempotence": "enable.idempotence",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
    "auto_offset_reset": "auto.offset.reset",
    "session_timeout_ms": "session.timeout.ms",
    "heartbeat_interval_ms": "heartbeat.interval.ms",
    "max_poll_interval_ms": "max.poll.interval.ms",
    "fetch_max_wait_ms": "fetch.wait.max.ms",
    "fetch_min_bytes": "fetch.min.bytes",
    "fetch_max_bytes": "fetch.max.bytes",
    "max_partition_fetch_bytes": "max.partition.fetch.bytes",
    "isolation_level": "isolation.level",
    "check_crcs": "check.crcs",
    "allow_auto_create_topics": "allow.auto.create.topics",
}
# kafka-python settings with no librdkafka counterpart that are safe to drop.
_CONFLUENT_IGNORED = frozenset({"max_poll_records", "max_block_ms", "bootstrap_timeout_ms"})
_PRODUCER_ONLY = frozenset(
    {
        "acks",
        "linger.ms",
        "batch.size",
        "compression.type",
        "retries",
        "delivery.timeout.ms",
        "enable.idempotence",
        "max.in.flight.requests.per.connection",
    }
)
_CONSUMER_ONLY = frozenset(
    {
        "auto.offset.reset",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "fetch.wait.max.ms",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "max.partition.fetch.bytes",
        "isolation.level",
        "check.crcs",
    }
)


def check_session_timeout(session_timeout_ms: int) -> None:
    if not isinstance(session_timeout_ms, int) or not 1000 <= session_timeout_ms <= 300_000:
        raise ConfigError(f"session_timeout_ms must be in 1000..300000, got {session_timeout_ms!r}")


def check_offset_reset(value: str) -> None:
    if value not in ("earliest", "latest"):
        raise ConfigError(f"auto_offset_reset must be 'earliest' or 'latest', got {value!r}")


def unreachable(bootstrap: str, waited_s: float) -> BrokerUnavailableError:
    return BrokerUnavailableError(
        f"no Kafka broker answered at {bootstrap} within {waited_s:.0f} s: {BROKER_HINT}"
    )


_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off"})


def typed_client_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with text values turned into the type of kafka-python's default for the
    key (bool, int, float). A ``STREAMWATCH_KAFKA__CLIENT_CONFIG__LINGER_MS=20`` arrives as
    the text "20": kafka-python then failed deep inside (``linger_ms``) or, worse, took
    ``enable_idempotence="false"`` for true. A value that is not of that type is a
    ConfigError naming the key. Keys with no typed default (passwords, paths) and
    librdkafka names (with a dot) are left as they are.

    >>> typed_client_config({"linger_ms": "20", "enable_idempotence": "false", "acks": "all"})
    {'linger_ms': 20, 'enable_idempotence': False, 'acks': 'all'}
    """
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    out = dict(config)
    for key, value in config.items():
        if not isinstance(value, str):
            continue
        default = next((cls.DEFAULT_CONFIG[key] for cls in (KafkaProducer, KafkaConsumer,
                                                           KafkaAdminClient)
                        if key in cls.DEFAULT_CONFIG), None)  # fmt: skip
        text = value.strip().lower()
        if isinstance(default, bool):
            if text not in _TRUE | _FALSE:
                raise ConfigError(f"client_config[{key!r}] must be true or false, got {value!r}")
            out[key] = text in _TRUE
        elif isinstance(default, int | float) and not (key == "acks" and text == "all"):
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(f"client_config[{key!r}] must be a number, got {value!r}") from None
            out[key] = int(number) if isinstance(default, int) and number.is_integer() else number
    return out


def split_kafka_python_config(
    config: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Defaults + ``config`` for kafka-python's producer, consumer and admin client.

    Each key goes to the clients that know it; unknown or managed keys are a ConfigError.
    """
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    producer, consumer, admin = (
        dict(PRODUCER_DEFAULTS),
        dict(CONSUMER_DEFAULTS),
        dict(ADMIN_DEFAULTS),
    )
    for key, value in typed_client_config(config).items():
        if key in MANAGED_KEYS:
            raise ConfigError(f"client_config[{key!r}] is set by streamwatch; remove it")
        targets = [
            target
            for target, cls in (
                (producer, KafkaProducer),
                (consumer, KafkaConsumer),
                (admin, KafkaAdminClient),
            )
            if key in cls.DEFAULT_CONFIG
        ]
        if not targets:
            raise ConfigError(
                f"client_config[{key!r}] is not a kafka-python setting (use kafka-python's "
                "names, e.g. security_protocol, sasl_mechanism, sasl_plain_username)"
            )
        for target in targets:
            target[key] = value
    return producer, consumer, admin


def to_librdkafka(config: Mapping[str, Any], role: str) -> dict[str, Any]:
    """Map kafka-python names in ``config`` to librdkafka names for ``role``.

    ``role`` is ``producer``, ``consumer`` or ``admin``. Keys containing a dot are taken
    as librdkafka names and passed through unchanged.
    """
    out: dict[str, Any] = {}
    for key, value in typed_client_config(config).items():
        if key in MANAGED_KEYS:
            raise ConfigError(f"client_config[{key!r}] is set by streamwatch; remove it")
        if "." in key:
            out[key] = value
            continue
        if key in _CONFLUENT_IGNORED:
            continue
        if key == "ssl_check_hostname":
            out["ssl.endpoint.identification.algorithm"] = "https" if value else "none"
            continue
        name = _LIBRDKAFKA_NAMES.get(key)
        if name is None:
            raise ConfigError(
                f"client_config[{key!r}] has no confluent-kafka equivalent here; use a "
                "kafka-python name streamwatch maps (e.g. security_protocol, sasl_mechanism, "
                "ssl_cafile) or a librdkafka name with dots"
            )
        if role != "producer" and name in _PRODUCER_ONLY:
            continue
        if role != "consumer" and name in _CONSUMER_ONLY:
            continue
        out[name] = value
    return out


class DeliveryErrors:
    """Thread-safe collection of send failures, raised (and cleared) by ``flush``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._first: str | None = None

    def add(self, topic: str, error: object) -> None:
        with self._lock:
            self._count += 1
            if self._first is None:
                self._first = f"topic {topic!r}: {error}"
                logger.error("delivery failed topic=%s error=%s", topic, error)

    def raise_if_any(self) -> None:
        with self._lock:
            count, first = self._count, self._first
            self._count, self._first = 0, None
        if count:
            raise TransportError(f"{count} record(s) not delivered; first: {first}")


class CallbackErrors:
    """The exception a user rebalance callback raised, handed back to poll()'s caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def add(self, error: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = error

    def raise_if_any(self, cause: BaseException | None = None) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error from cause
