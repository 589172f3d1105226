"""Where detector processes keep their state so any process can take over a partition.

Chosen route: a shared checkpoint directory. Each detector process writes ONE atomic file
(``detector-<instance>.pt``: temp file + fsync + rename, ``torch.save`` of plain
tensors/dicts) holding its global model state and, per assigned partition, the state of
that partition's streams and the next offset to read. Because model, stream state and
offsets are saved in one file, a restore is always self-consistent.

When a process is assigned a partition it scans every file in the directory and takes
that partition's entry with the highest offset (the newest state of it, whichever process
wrote it). This works for processes on one host or sharing a volume (docker-compose);
a Kafka changelog topic would lift that limit and is the documented next step.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamwatch.checkpoint import load_checkpoint, save_checkpoint
from streamwatch.errors import CheckpointError
from streamwatch.transport.base import TopicPartition

log = logging.getLogger(__name__)

FORMAT = "streamwatch.detector-state/1"


@dataclass
class PartitionState:
    """State of one partition's streams and the next offset to read."""

    offset: int
    streams: dict[str, Any]


@dataclass
class Snapshot:
    """What one process restores: its model state and the partitions it asked for."""

    global_state: dict[str, Any] | None
    partitions: dict[TopicPartition, PartitionState]


def _tp_key(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


class FileStateStore:
    """Shared-directory state store (see module docstring)."""

    def __init__(self, directory: Path | str, instance: str) -> None:
        self.directory = Path(directory)
        self.instance = instance
        self.path = self.directory / f"detector-{instance}.pt"

    def save(
        self, global_state: dict[str, Any], partitions: dict[TopicPartition, PartitionState]
    ) -> Path:
        """Write this process's checkpoint atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {
            "global": global_state,
            "partitions": {
                _tp_key(tp): {"topic": tp.topic, "partition": tp.partition,
                              "offset": ps.offset, "streams": ps.streams}
                for tp, ps in partitions.items()
            },
        }
        save_checkpoint(self.path, state, {"format": FORMAT, "instance": self.instance})
        return self.path

    def _files(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("detector-*.pt"), key=lambda p: p.stat().st_mtime)

    def load(self, partitions: set[TopicPartition], *, fresh_start: bool = False) -> Snapshot:
        """The newest state of each requested partition and the newest global state.

        A corrupt file raises ``CheckpointError`` unless ``fresh_start``, in which case it
        is logged and ignored (never silently).
        """
        best: dict[TopicPartition, PartitionState] = {}
        global_state: dict[str, Any] | None = None
        global_offsets = -1
        for path in self._files():
            try:
                state, meta = load_checkpoint(path)
            except CheckpointError:
                if not fresh_start:
                    raise
                log.warning("ignoring unreadable checkpoint (fresh start asked)",
                            extra={"path": str(path)})
                continue
            if meta.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; "
                    "delete the directory or point --checkpoint-dir elsewhere"
                )
            total = 0
            for entry in state["partitions"].values():
                tp = TopicPartition(entry["topic"], int(entry["partition"]))
                total += int(entry["offset"])
                if tp in partitions and (tp not in best or entry["offset"] > best[tp].offset):
                    best[tp] = PartitionState(int(entry["offset"]), entry["streams"])
            # The global model of the file that has read furthest is the most trained.
            if state.get("global") is not None and total >= global_offsets:
                global_state, global_offsets = state["global"], total
        return Snapshot(global_state=global_state, partitions=best)

    def remove(self) -> None:
        """Delete this instance's file (tests, explicit reset)."""
        if self.path.exists():
            os.remove(self.path)
