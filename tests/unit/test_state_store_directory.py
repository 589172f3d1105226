"""The directory state store: its directory is checked at start-up, and a directory that
fails mid-run gives a CheckpointError naming it, never an OSError traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamwatch.commands.detect import build_service
from streamwatch.errors import CheckpointError, ConfigError
from streamwatch.state_store import FileStateStore, PartitionState
from streamwatch.transport import MemoryTransport
from streamwatch.transport.base import READINGS, TopicPartition
from tests.scenarios import service_settings

TP = TopicPartition(READINGS, 0)


def _state(offset: int) -> tuple[dict[str, object], dict[TopicPartition, PartitionState]]:
    return {"model": [1.0, 2.0]}, {TP: PartitionState(offset, {"stream_ids": []})}


def _refused(directory: Path, transport: MemoryTransport) -> str:
    settings = service_settings(directory, state_store="directory")
    with pytest.raises(ConfigError) as info:
        build_service(settings, transport, instance="a")
    message = str(info.value)
    assert "\n" not in message
    assert str(directory) in message
    assert "--checkpoint-dir" in message and "STREAMWATCH_SERVICE__CHECKPOINT_DIR" in message
    return message


def test_a_checkpoint_dir_under_a_file_is_refused_at_start_up() -> None:
    transport = MemoryTransport()
    message = _refused(Path("/dev/null/ckpt"), transport)
    assert "cannot be created: Not a directory" in message
    assert READINGS not in transport.logs  # refused before creating any topic


def test_a_checkpoint_dir_that_is_a_file_is_refused_at_start_up(tmp_path: Path) -> None:
    occupied = tmp_path / "ckpt"
    occupied.write_text("not a directory")
    assert "is not a directory" in _refused(occupied, MemoryTransport())


def test_a_missing_checkpoint_dir_is_created_at_start_up(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "ckpt"
    build_service(service_settings(directory, state_store="directory"), MemoryTransport(),
                  instance="a")  # fmt: skip
    assert directory.is_dir() and list(directory.iterdir()) == []  # the probe is gone


def test_a_directory_replaced_by_a_file_mid_run_is_a_checkpoint_error(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    store = FileStateStore(directory, "a")
    store.save(*_state(10))
    store.path.unlink()
    directory.rmdir()
    directory.write_text("someone put a file here")
    with pytest.raises(CheckpointError, match=r"directory '.*ckpt': it is not a directory"):
        store.save(*_state(20))


def test_a_full_disk_while_saving_is_a_checkpoint_error_and_keeps_the_old_checkpoint(
    tmp_path: Path,
) -> None:
    """A real write failure: the file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the
    write fail with EFBIG, as a full disk fails with ENOSPC. In a child process, so the
    limit touches nothing else."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from streamwatch.errors import CheckpointError
        from streamwatch.state_store import FileStateStore, PartitionState
        from streamwatch.transport.base import TopicPartition
        tp = TopicPartition("r", 0)
        store = FileStateStore({str(tmp_path)!r}, "a")
        store.save({{"model": [0.0]}}, {{tp: PartitionState(10, {{"stream_ids": []}})}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
        try:
            store.save({{"model": [0.0] * 10_000}},
                       {{tp: PartitionState(20, {{"stream_ids": []}})}})
        except CheckpointError as exc:
            print(exc)
            sys.exit(0)
        sys.exit("no CheckpointError")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"directory {str(tmp_path)!r}: File too large (EFBIG)" in done.stdout
    snapshot = FileStateStore(tmp_path, "a").load({TopicPartition("r", 0)})
    assert snapshot.partitions[TopicPartition("r", 0)].offset == 10  # the old one, intact
    assert [p.name for p in tmp_path.iterdir()] == ["detector-a.pt"]  # no temp file left
