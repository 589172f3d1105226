"""Checks and helpers shared by the transport implementations (no client imports here)."""

from __future__ import annotations

import re
from functools import lru_cache

from streamwatch.errors import ConfigError, TransportError

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

#: What to do when no broker answers; part of every BrokerUnavailableError message.
BROKER_HINT = (
    "start a broker or run `streamwatch demo`, or pass --bootstrap-servers HOST:PORT "
    "(or set STREAMWATCH_KAFKA__BOOTSTRAP_SERVERS) pointing at a reachable Kafka broker; "
    "with SSL or SASL, check that client_config's security protocol is the listener's"
)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's ``Utils.murmur2``), as a signed 32-bit int.

    >>> murmur2(b"21")
    -973932308
    """
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@lru_cache(maxsize=65_536)
def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (same in every process).

    All three transports place keyed records with this function (kafka-python's
    ``DefaultPartitioner``, confluent-kafka with ``partitioner=murmur2_random``).

    >>> partition_for_key(b"icu/bed-07", 12) == partition_for_key(b"icu/bed-07", 12)
    True
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def check_topic_name(name: str) -> None:
    if not isinstance(name, str) or not _TOPIC_RE.match(name) or name in (".", ".."):
        raise TransportError(
            f"invalid topic name {name!r}: use 1..249 characters from [A-Za-z0-9._-]"
        )


def check_partitions(name: str, partitions: int) -> None:
    if not isinstance(partitions, int) or not 1 <= partitions <= 10_000:
        raise ConfigError(f"partitions for topic {name!r} must be in 1..10000, got {partitions!r}")


def check_poll_args(timeout: float, max_records: int) -> None:
    if timeout < 0:
        raise ConfigError(f"poll timeout must be >= 0 s, got {timeout}")
    if not isinstance(max_records, int) or max_records < 1:
        raise ConfigError(f"max_records must be an int >= 1, got {max_records!r}")


def check_record(value: bytes | None, key: bytes | None, max_bytes: int) -> None:
    """Reject what no implementation can send: non-bytes, or more than ``max_bytes``."""
    if value is not None and not isinstance(value, bytes):
        raise TypeError(f"value must be bytes or None, got {type(value).__name__}")
    if key is not None and not isinstance(key, bytes):
        raise TypeError(f"key must be bytes or None, got {type(key).__name__}")
    size = (len(value) if value is not None else 0) + (len(key) if key is not None else 0)
    if size > max_bytes:
        raise TransportError(f"record of {size} bytes exceeds the limit of {max_bytes} bytes")


_SERVER = re.compile(r"(?:[A-Za-z_]+://)?(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s,:\[\]/]+))"
                     r"(?::(?P<port>\d{1,5}))?")


def check_bootstrap_servers(servers: str) -> str:
    """``servers`` if it is ``host[:port][,host[:port]...]`` as the clients read it (an
    optional ``PLAINTEXT://``-style prefix, an IPv6 host in brackets, a port from 1 to
    65535, 9092 when left out), else a ``ConfigError`` saying which part is wrong (the
    clients raised a bare ``ValueError`` on a bad port).

    >>> check_bootstrap_servers("kafka-1:9092, [::1]:9093,SSL://b:9094,localhost")
    'kafka-1:9092, [::1]:9093,SSL://b:9094,localhost'
    >>> check_bootstrap_servers("localhost:notaport")
    Traceback (most recent call last):
    ...
    streamwatch.errors.ConfigError: bootstrap server 'localhost:notaport' is not HOST:PORT with a port from 1 to 65535 (e.g. localhost:9092)
    >>> check_bootstrap_servers("a:9092,")
    Traceback (most recent call last):
    ...
    streamwatch.errors.ConfigError: bootstrap servers 'a:9092,' hold an empty entry (a comma too many?)
    """
    for part in servers.split(","):
        if not part.strip():
            raise ConfigError(f"bootstrap servers {servers!r} hold an empty entry (a comma too "
                              "many?)")
        match = _SERVER.fullmatch(part.strip())
        port = match.group("port") if match else None
        if match is None or (port is not None and not 1 <= int(port) <= 65535):
            raise ConfigError(f"bootstrap server {part.strip()!r} is not HOST:PORT with a port "
                              "from 1 to 65535 (e.g. localhost:9092)")
    return servers
