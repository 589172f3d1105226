"""Atomic checkpoints of plain state: ``torch.save`` in, ``torch.load(weights_only=True)`` out.

A checkpoint file holds ``{"format", "format_version", "meta", "state", "crc32c"}``. It is written
to a temporary file in the target's directory, flushed and fsynced, then moved over the
target with ``os.replace`` (atomic on POSIX), and the directory is fsynced: a crash leaves
either the old checkpoint or the new one, never a mix.

Only plain values are accepted: dicts, lists, tuples, strings, numbers, booleans, None
and torch tensors (what ``weights_only`` loading allows). ``plain_state`` converts numpy
arrays and scalars for you. Anything wrong on loading (missing, truncated or corrupt
file, foreign or newer format, settings that do not match) raises ``CheckpointError``
naming the file, the problem and what to do; nothing is ever silently reset.

>>> import tempfile, torch
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as d:
...     p = save_checkpoint(Path(d) / "det.pt", {"w": torch.ones(2)}, {"kind": "icu_vitals"})
...     state, meta = load_checkpoint(p, expected_meta={"kind": "icu_vitals"})
>>> state["w"].tolist(), meta["kind"]
([1.0, 1.0], 'icu_vitals')
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import torch
import torch.utils.serialization

from streamwatch.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "streamwatch.checkpoint"
CHECKPOINT_VERSION = 1

_FIX = "delete it (or move it aside) or pass --fresh-start to begin from scratch"
_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.Size)


def plain_state(obj: Any) -> Any:
    """A copy of ``obj`` with numpy arrays turned into tensors and numpy scalars into
    Python numbers, so that ``weights_only`` loading accepts it.

    >>> plain_state({"a": np.arange(2), "b": [np.float64(1.5)]})
    {'a': tensor([0, 1]), 'b': [1.5]}
    """
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise CheckpointError("numpy arrays of Python objects cannot be checkpointed")
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain_state(v) for v in obj)
    return obj


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, (torch.Tensor, *_SCALARS)):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise CheckpointError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}"
                                      ", only str and int keys are allowed")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"checkpoint value {where} is a {type(obj).__module__}.{type(obj).__name__}; only "
        "tensors, dicts, lists, tuples, strings, numbers and None can be saved "
        "(numpy: use streamwatch.checkpoint.plain_state)"
    )


def dump_checkpoint(state: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint holding ``state`` and ``meta`` (what ``save_checkpoint``
    writes to its file; a Kafka state store sends them as records).

    Raises ``CheckpointError`` if a value is not plain.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "meta": meta,
        "state": state,
    }
    _check_plain(payload, "")
    payload["crc32c"] = _digest({"meta": meta, "state": state})
    buffer = io.BytesIO()
    # The zip CRC-32 torch computes by default (half of torch.save's time for a
    # checkpoint of 1,000 streams) would be a second checksum of the same bytes.
    with torch.utils.serialization.config.patch(  # type: ignore[attr-defined]
            {"save.compute_crc32": False}):
        torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any],
                    meta: dict[str, Any]) -> Path:
    """Write ``state`` and ``meta`` to ``path`` atomically; returns the path.

    Raises ``CheckpointError`` (before touching the file) if a value is not plain, and
    ``OSError`` if the directory cannot be written (the old checkpoint stays intact).
    """
    target = Path(path)
    data = dump_checkpoint(state, meta)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                    dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    log.debug("checkpoint written", extra={"path": str(target), "bytes": len(data)})
    return target


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:  # e.g. platforms without directory handles
        log.warning("cannot fsync checkpoint directory", extra={"dir": str(directory),
                                                                "error": str(exc)})
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(
    path: str | os.PathLike[str], *, expected_meta: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``: ``(state, meta)``.

    Parameters
    ----------
    path
        The checkpoint file.
    expected_meta
        Entries ``meta`` must hold with equal values (e.g. the model config, the kind):
        a difference raises ``CheckpointError`` listing every mismatch.
    """
    target = Path(path)
    if not target.is_file():
        raise CheckpointError(f"checkpoint {target} does not exist (or is not a file)")
    return parse_checkpoint(target.read_bytes(), str(target), expected_meta=expected_meta)


def parse_checkpoint(
    data: bytes, source: str, *, expected_meta: Mapping[str, Any] | None = None,
    fix: str = _FIX,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, meta)`` of checkpoint bytes made by ``dump_checkpoint``. ``source`` names
    them in errors (a file, a changelog record); ``fix`` says what the user can do."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {source} holds objects that safe loading refuses or is corrupt "
            f"({_first_line(exc)}); {fix}"
        ) from exc
    except Exception as exc:  # torch's loader raises many types on damaged bytes
        raise CheckpointError(
            f"checkpoint {source} is truncated or corrupt ({_first_line(exc)}); {fix}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source} is not a streamwatch checkpoint; {fix}")
    version = payload.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {source} has format version {version!r}, this streamwatch reads "
            f"version {CHECKPOINT_VERSION}; {fix}"
        )
    state, meta = payload.get("state"), payload.get("meta")
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {source} lacks its state or meta section; {fix}")
    if not _digest_matches(payload, {"meta": meta, "state": state}):
        raise CheckpointError(
            f"checkpoint {source} is corrupt: its content does not match its checksum; {fix}"
        )
    if expected_meta:
        mismatches = [
            f"{key}: saved {meta.get(key, '<absent>')!r}, expected {value!r}"
            for key, value in expected_meta.items()
            if meta.get(key, _ABSENT) != value
        ]
        if mismatches:
            raise CheckpointError(
                f"checkpoint {source} was written with other settings ("
                + "; ".join(mismatches)
                + f"); run with the saved settings, or {fix}"
            )
    return state, meta


_ABSENT = object()


def _first_line(exc: BaseException) -> str:
    lines = [_ANSI.sub("", line).strip() for line in str(exc).strip().splitlines()]
    for line in lines:
        if line.startswith("WeightsUnpickler error"):
            return line
    return lines[0] if lines and lines[0] else type(exc).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _digest(obj: Any) -> str:
    """CRC-32C (hardware, ~25 GB/s here) over a plain structure: keys, scalar reprs,
    tensor dtypes, shapes and bytes. Detects damage that still unpickles (a flipped bit
    inside tensor data), as Kafka's record batches do; not a defence against tampering.

    >>> _digest({"w": torch.zeros(2)}) == _digest({"w": torch.zeros(2)})
    True
    >>> _digest({"w": torch.zeros(2)}) == _digest({"w": torch.ones(2)})
    False
    """
    crc = _Crc()
    _feed(crc, obj)
    return f"{crc.value:08x}"


def _digest_matches(payload: Mapping[str, Any], content: Any) -> bool:
    """The checkpoint's checksum holds: CRC-32C, or SHA-256 in checkpoints written before
    the change to CRC-32C (same format version: both are read)."""
    if "crc32c" in payload:
        return bool(payload["crc32c"] == _digest(content))
    if "sha256" in payload:
        hasher = hashlib.sha256()
        _feed(hasher, content)
        return bool(payload["sha256"] == hasher.hexdigest())
    return False


class _Crc:
    """A running CRC-32C with hashlib's ``update``."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = crc32c.crc32c(data, self.value)


def _feed(hasher: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        hasher.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():  # bytes via a uint8 view (every dtype, bfloat16 too), not copied
            hasher.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        hasher.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            hasher.update(f"K{key!r}".encode())
            _feed(hasher, value)
    elif isinstance(obj, list | tuple):
        hasher.update(f"L{len(obj)}".encode())
        for value in obj:
            _feed(hasher, value)
    else:
        hasher.update(f"S{type(obj).__name__}:{obj!r}".encode())
