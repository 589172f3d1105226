"""Transports: one interface (:mod:`streamwatch.transport.base`), three implementations.

``memory`` (in-process), ``kafka-python`` (default Kafka client) and ``confluent``
(confluent-kafka, faster). Kafka clients are imported only when used.

Examples
--------
>>> from streamwatch.transport import open_transport
>>> bus = open_transport(None, "memory")
>>> bus.create_topics({"streamwatch.readings": 4})
>>> bus.partitions_for("streamwatch.readings")
4
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from streamwatch.errors import ConfigError
from streamwatch.transport._common import check_bootstrap_servers, partition_for_key
from streamwatch.transport.base import (
    ALERTS,
    ALL_TOPICS,
    DEADLETTER,
    HEALTH,
    READINGS,
    SCORES,
    STATE,
    TRUTH,
    Consumer,
    Message,
    Producer,
    RebalanceCallback,
    TopicPartition,
    Transport,
)
from streamwatch.transport.memory import MemoryTransport

if TYPE_CHECKING:
    from streamwatch.transport.confluent import ConfluentTransport
    from streamwatch.transport.kafka import KafkaTransport

__all__ = [
    "ALERTS",
    "ALL_TOPICS",
    "DEADLETTER",
    "HEALTH",
    "READINGS",
    "SCORES",
    "STATE",
    "TRUTH",
    "ClientName",
    "ConfluentTransport",
    "Consumer",
    "KafkaTransport",
    "MemoryTransport",
    "Message",
    "Producer",
    "RebalanceCallback",
    "TopicPartition",
    "Transport",
    "open_transport",
    "partition_for_key",
]

logger = logging.getLogger(__name__)

ClientName = Literal["kafka-python", "confluent", "memory"]
CLIENTS: tuple[str, ...] = ("kafka-python", "confluent", "memory")


def __getattr__(name: str) -> Any:
    if name == "KafkaTransport":
        from streamwatch.transport.kafka import KafkaTransport

        return KafkaTransport
    if name == "ConfluentTransport":
        from streamwatch.transport.confluent import ConfluentTransport

        return ConfluentTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_transport(
    bootstrap_servers: str | None,
    client: ClientName = "kafka-python",
    *,
    session_timeout_ms: int = 6000,
    client_config: Mapping[str, Any] | None = None,
) -> Transport:
    """Open a transport and, for Kafka, check that the cluster answers.

    Parameters
    ----------
    bootstrap_servers
        ``host:port[,...]`` of the Kafka cluster; ignored (may be ``None``) for ``memory``.
    client
        ``kafka-python`` (default), ``confluent`` or ``memory``.
    session_timeout_ms
        Consumer-group session timeout (1,000..300,000 ms for Kafka).
    client_config
        Client settings under kafka-python's names (``security_protocol``,
        ``sasl_mechanism``, ``sasl_plain_username``, ``ssl_cafile``, ``acks``,
        ``auto_offset_reset`` ...), mapped for confluent-kafka; names with dots go to
        librdkafka unchanged. ``memory`` uses only ``auto_offset_reset``.

    Raises
    ------
    BrokerUnavailableError
        No broker answered within ``bootstrap_timeout_ms`` (default 5 s); the message
        names the address and what to do.
    ConfigError
        Unknown client or setting.
    """
    config = dict(client_config or {})
    offset_reset = config.pop("auto_offset_reset", "earliest")
    if client == "memory":
        if config:
            logger.debug("memory transport ignores client settings %s", sorted(config))
        return MemoryTransport(
            session_timeout_ms=session_timeout_ms, auto_offset_reset=offset_reset
        )
    if client not in CLIENTS:
        raise ConfigError(f"client must be one of {', '.join(CLIENTS)}; got {client!r}")
    if not bootstrap_servers:
        raise ConfigError(
            f"the {client} transport needs bootstrap servers (--bootstrap-servers HOST:PORT); "
            "run `streamwatch demo` to start a local broker, or use --transport memory"
        )
    check_bootstrap_servers(bootstrap_servers)
    if client == "kafka-python":
        from streamwatch.transport.kafka import KafkaTransport

        return KafkaTransport(
            bootstrap_servers,
            session_timeout_ms=session_timeout_ms,
            auto_offset_reset=offset_reset,
            client_config=config,
        ).connect()
    from streamwatch.transport.confluent import ConfluentTransport

    return ConfluentTransport(
        bootstrap_servers,
        session_timeout_ms=session_timeout_ms,
        auto_offset_reset=offset_reset,
        client_config=config,
    ).connect()
