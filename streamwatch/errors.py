"""One exception tree for the whole package."""

from __future__ import annotations


class StreamwatchError(Exception):
    """Root of every error streamwatch raises on purpose."""


class ConfigError(StreamwatchError):
    """A setting is missing, malformed or out of its allowed range."""


class SchemaError(StreamwatchError, ValueError):
    """A record does not match its contract.

    ``field`` is a dotted path into the record (``values.hr``) or ``None`` when the
    record as a whole is bad (not JSON, not an object); ``problem`` says what is wrong;
    ``code`` is the dead-letter code (``schema.DeadLetterCode``).
    """

    def __init__(self, problem: str, field: str | None = None, code: str = "schema") -> None:
        self.problem = problem
        self.field = field
        self.code = code
        super().__init__(f"{field}: {problem}" if field else problem)


class TransportError(StreamwatchError):
    """The message transport (Kafka or in-memory) failed."""


class FlushTimeoutError(TransportError):
    """Records sent but not acknowledged within the flush's timeout: they stay queued in
    the client (none has failed), so they must not be sent again."""


class BrokerUnavailableError(TransportError):
    """No broker answered at the configured address."""


class CheckpointError(StreamwatchError):
    """A checkpoint is missing, corrupt or does not fit the current configuration."""
