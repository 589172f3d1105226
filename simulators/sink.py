"""Where simulated records go: JSON lines (file or stdout) or Kafka topics.

Both sinks take one time step's readings at a time and the episode labels as they begin.
``FileSink`` encodes with msgspec straight into a large buffer and writes it in blocks;
``KafkaSink`` sends each Reading with key = stream_id (so a stream stays on one
partition, in order) and each Episode to the truth topic, keyed the same way.
"""

from __future__ import annotations

import logging
from typing import BinaryIO, Protocol

import msgspec

from streamwatch.schema import Episode, Reading
from streamwatch.transport.base import READINGS, TRUTH, Producer

log = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 20
"""FileSink writes when its buffer holds this much (1 MiB)."""


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

    The caller owns the file objects (opening, closing); ``close`` only flushes.
    """

    def __init__(self, out: BinaryIO, truth: BinaryIO | None = None,
                 block_bytes: int = BLOCK_BYTES) -> None:
        self.out = out
        self.truth = truth
        self.block_bytes = block_bytes
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray()

    def readings(self, step: list[Reading]) -> None:
        self._buffer += self._encoder.encode_lines(step)
        if len(self._buffer) >= self.block_bytes:
            self._write()

    def episode(self, episode: Episode) -> None:
        if self.truth is not None:
            self.truth.write(self._encoder.encode(episode) + b"\n")

    def _write(self) -> None:
        self.out.write(self._buffer)
        self._buffer.clear()

    def idle(self) -> None:
        self._write()
        self.out.flush()
        if self.truth is not None:
            self.truth.flush()

    def close(self) -> None:
        self.idle()


class KafkaSink:
    """Readings to ``topic`` and labels to ``truth_topic`` through a transport Producer."""

    def __init__(self, producer: Producer, topic: str = READINGS, truth_topic: str = TRUTH,
                 truth: BinaryIO | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.truth_topic = truth_topic
        self.truth = truth
        self._encoder = msgspec.json.Encoder()

    def readings(self, step: list[Reading]) -> None:
        send, encode, topic = self.producer.send, self._encoder.encode, self.topic
        for reading in step:
            send(topic, encode(reading), reading.stream_id.encode())

    def episode(self, episode: Episode) -> None:
        data = self._encoder.encode(episode)
        self.producer.send(self.truth_topic, data, episode.stream_id.encode())
        if self.truth is not None:
            self.truth.write(data + b"\n")

    def idle(self) -> None:
        """Nothing to do: the producer's linger sends batches on its own."""

    def close(self) -> None:
        self.producer.flush()
        if self.truth is not None:
            self.truth.flush()
