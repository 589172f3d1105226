"""Where simulated records go: JSON lines (file or stdout) or Kafka topics.

Both sinks take one time step's readings at a time and the episode labels as they begin.
``FileSink`` encodes with msgspec straight into a large buffer and writes it in blocks;
``KafkaSink`` sends each Reading with key = stream_id (so a stream stays on one
partition, in order) and each Episode to the truth topic, keyed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import BinaryIO, Protocol

import msgspec

from streamwatch.errors import ConfigError
from streamwatch.schema import Episode, Reading
from streamwatch.transport.base import READINGS, TRUTH, Producer

log = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 20
"""FileSink writes when its buffer holds this much (1 MiB)."""


def write_error(name: str, exc: OSError) -> ConfigError:
    """The one-line error for an output that failed (disk full, permission, ...)."""
    reason = exc.strerror or str(exc)
    return ConfigError(f"cannot write {name}: {reason}; free space or fix permissions there, "
                       "or choose another output (what was written so far is kept)")


class Sink(Protocol):
    def readings(self, step: list[Reading]) -> None:
        """Take one time step's readings (ts ascending)."""

    def episode(self, episode: Episode) -> None:
        """Take one episode label, at its onset."""

    def idle(self) -> None:
        """The run is about to wait for wall time: make what was sent visible now."""

    def close(self) -> None:
        """Flush everything; raise if it cannot be delivered."""


class FileSink:
    """JSON lines: readings to ``out``, episode labels to ``truth`` (or nowhere).

    The caller owns the file objects (opening, closing); ``close`` only flushes. An
    ``OSError`` from a file (disk full, ...) becomes a ``ConfigError`` naming it
    (``out_name``, ``truth_name``); that file is then left alone (the other one still gets
    what it is owed). A ``BrokenPipeError`` passes unchanged: the reader went away.
    """

    def __init__(self, out: BinaryIO, truth: BinaryIO | None = None,
                 block_bytes: int = BLOCK_BYTES, *, out_name: str = "the output",
                 truth_name: str = "the truth output") -> None:
        self.out = out
        self.truth = truth
        self.block_bytes = block_bytes
        self.out_name = out_name
        self.truth_name = truth_name
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray()
        self._failed: set[str] = set()

    def _guarded(self, name: str, action: Callable[[], object]) -> None:
        if name in self._failed:
            return
        try:
            action()
        except BrokenPipeError:
            raise
        except OSError as exc:
            self._failed.add(name)
            raise write_error(name, exc) from None

    def readings(self, step: list[Reading]) -> None:
        self._buffer += self._encoder.encode_lines(step)
        if len(self._buffer) >= self.block_bytes:
            self._write()

    def episode(self, episode: Episode) -> None:
        truth = self.truth
        if truth is not None:
            data = self._encoder.encode(episode) + b"\n"
            self._guarded(self.truth_name, lambda: truth.write(data))

    def _write(self) -> None:
        self._guarded(self.out_name, lambda: self.out.write(self._buffer))
        self._buffer.clear()

    def idle(self) -> None:
        self._write()
        self._guarded(self.out_name, self.out.flush)
        truth = self.truth
        if truth is not None:
            self._guarded(self.truth_name, truth.flush)

    def close(self) -> None:
        self.idle()


class KafkaSink:
    """Readings to ``topic`` and labels to ``truth_topic`` through a transport Producer.

    Labels also go to the file ``truth`` when given; an ``OSError`` there becomes a
    ``ConfigError`` naming it (``truth_name``).
    """

    def __init__(self, producer: Producer, topic: str = READINGS, truth_topic: str = TRUTH,
                 truth: BinaryIO | None = None, *, truth_name: str = "the truth output") -> None:
        self.producer = producer
        self.topic = topic
        self.truth_topic = truth_topic
        self.truth = truth
        self.truth_name = truth_name
        self._encoder = msgspec.json.Encoder()

    def readings(self, step: list[Reading]) -> None:
        send, encode, topic = self.producer.send, self._encoder.encode, self.topic
        for reading in step:
            send(topic, encode(reading), reading.stream_id.encode())

    def episode(self, episode: Episode) -> None:
        data = self._encoder.encode(episode)
        self.producer.send(self.truth_topic, data, episode.stream_id.encode())
        self._truth_file(lambda truth: truth.write(data + b"\n"))

    def idle(self) -> None:
        """Nothing to do: the producer's linger sends batches on its own."""

    def close(self) -> None:
        self.producer.flush()
        self._truth_file(lambda truth: truth.flush())

    def _truth_file(self, action: Callable[[BinaryIO], object]) -> None:
        truth = self.truth
        if truth is None:
            return
        try:
            action(truth)
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.truth = None  # labels still go to the truth topic
            raise write_error(self.truth_name, exc) from None
