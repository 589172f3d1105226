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

The Kafka state store sends the same payload in a second encoding, ``encode_checkpoint``
(the tree pickled with tensors by reference, then their bytes), which its background
writer builds holding the GIL a fraction of the time ``torch.save`` does;
``decode_checkpoint`` reads it with the same checks.

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
import zlib
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


def _payload(state: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """What either encoding holds, once every value in it is checked to be plain."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
               "meta": meta, "state": state}
    _check_plain(payload, "")
    return payload


def dump_checkpoint(state: dict[str, Any], meta: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint holding ``state`` and ``meta`` (what ``save_checkpoint``
    writes to its file; a Kafka state store sends them as records).

    Raises ``CheckpointError`` if a value is not plain.
    """
    payload = _payload(state, meta)
    payload["crc32c"] = _digest({"meta": meta, "state": state})
    buffer = io.BytesIO()
    # The zip CRC-32 torch computes by default (half of torch.save's time for a
    # checkpoint of 1,000 streams) would be a second checksum of the same bytes.
    with torch.utils.serialization.config.patch(  # type: ignore[attr-defined]
            {"save.compute_crc32": False}):
        torch.save(payload, buffer)
    return buffer.getvalue()


#: ``encode_checkpoint``'s layout: this magic, the pickled tree's length (8 bytes, little
#: endian), the tree, then the bytes of each tensor it names, in order.
TENSORS_MAGIC = b"streamwatch-tensors/1\n"


def encode_checkpoint(state: dict[str, Any], meta: dict[str, Any]) -> list[Any]:
    """The checkpoint as buffers to write one after the other (``compress_parts``), for
    a writer that must hold the GIL as little as it can: the tree (dicts, lists, numbers)
    pickled with each tensor as a reference, then each tensor's bytes as they lie in
    memory, not copied. ``dump_checkpoint`` (``torch.save``) copies every byte under the
    GIL: 20-50 ms for a checkpoint of 500 ICU streams on a busy machine, a pause of the
    detector thread beside it (docs/bench.md).

    The tensor parts are views: nothing may change the tensors until the parts are
    written (the service hands over a copy, ``pipeline._SnapshotCopies``). ``decode_checkpoint``
    reads it back, with an unpickler that loads no class or function at all. Raises
    ``CheckpointError`` if a value is not plain.

    >>> parts = encode_checkpoint({"w": torch.arange(3.0)}, {"kind": "x"})
    >>> decode_checkpoint(b"".join(bytes(p) for p in parts), "doc")[0]["w"].tolist()
    [0.0, 1.0, 2.0]
    """
    payload = _payload(state, meta)
    buffers: list[Any] = []
    out = io.BytesIO()
    _TensorPickler(out, buffers).dump(payload)
    tree = out.getvalue()
    return [TENSORS_MAGIC, len(tree).to_bytes(8, "little"), tree, *buffers]


def compress_parts(parts: list[Any], level: int) -> bytes:
    """zlib of the parts joined, without joining them: zlib releases the GIL while it
    compresses each one."""
    z = zlib.compressobj(level)
    out = [z.compress(part) for part in parts]
    out.append(z.flush())
    return b"".join(out)


class _TensorPickler(pickle.Pickler):
    """Tensors, dtypes and sizes by reference (``persistent_id``): the pickle names no
    global, and each tensor's bytes go to ``buffers`` as a view."""

    def __init__(self, file: Any, buffers: list[Any]) -> None:
        super().__init__(file, protocol=5)
        self.buffers = buffers
        self.seen: dict[int, tuple[int, Any]] = {}  # id -> (its number, it: keeps the id)

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if id(obj) in self.seen:  # the same tensor again: the same one when read back
                return ("again", self.seen[id(obj)][0])
            self.seen[id(obj)] = (len(self.seen), obj)
            t = obj.detach().cpu().contiguous()
            view = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
            self.buffers.append(view)
            return ("tensor", _dtype_name(t.dtype), tuple(t.shape), len(view))
        if isinstance(obj, torch.dtype):
            return ("dtype", _dtype_name(obj))
        if isinstance(obj, torch.Size):
            return ("size", tuple(obj))
        return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _TensorUnpickler(pickle.Unpickler):
    """Reads ``_TensorPickler``'s tree: tensors from the bytes after it; no global."""

    def __init__(self, file: Any, data: memoryview) -> None:
        super().__init__(file)
        self.data, self.at = data, 0
        self.tensors: list[torch.Tensor] = []

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        if kind == "tensor" and len(pid) == 4:
            dtype, shape, nbytes = _dtype(pid[1]), tuple(pid[2]), int(pid[3])
            if nbytes < 0 or self.at + nbytes > len(self.data):
                raise pickle.UnpicklingError("a tensor's bytes run past the end")
            raw = torch.frombuffer(bytearray(self.data[self.at:self.at + nbytes]),
                                   dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
            self.at += nbytes
            try:
                self.tensors.append(raw.view(dtype).reshape(shape))
            except RuntimeError as exc:
                raise pickle.UnpicklingError(f"tensor bytes do not fit {dtype}{shape}: {exc}"
                                             ) from None
            return self.tensors[-1]
        if kind == "again" and len(pid) == 2 and 0 <= pid[1] < len(self.tensors):
            return self.tensors[pid[1]]
        if kind == "dtype" and len(pid) == 2:
            return _dtype(pid[1])
        if kind == "size" and len(pid) == 2:
            return torch.Size(pid[1])
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


def _dtype(name: Any) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"unknown dtype {name!r}")
    return dtype


def decode_checkpoint(
    data: bytes, source: str, *, expected_meta: Mapping[str, Any] | None = None,
    fix: str = _FIX,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, meta)`` of ``encode_checkpoint``'s parts joined (``parse_checkpoint``'s
    checks and errors)."""
    view = memoryview(data)
    head = len(TENSORS_MAGIC)
    if bytes(view[:head]) != TENSORS_MAGIC:
        raise CheckpointError(f"{source} is not a streamwatch checkpoint; {fix}")
    size = int.from_bytes(view[head:head + 8], "little")
    start = head + 8
    if len(view) < start + size:
        raise CheckpointError(f"checkpoint {source} is truncated; {fix}")
    reader = _TensorUnpickler(io.BytesIO(view[start:start + size]), view[start + size:])
    try:
        payload = reader.load()
    except Exception as exc:  # damaged bytes raise many types
        raise CheckpointError(
            f"checkpoint {source} holds objects that safe loading refuses or is corrupt "
            f"({_first_line(exc)}); {fix}") from exc
    if reader.at != len(view) - start - size:
        raise CheckpointError(f"checkpoint {source} is corrupt: bytes after its last tensor; "
                              f"{fix}")
    return _checked(payload, source, expected_meta, fix, digest=False)


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
    return _checked(payload, source, expected_meta, fix)


def _checked(payload: Any, source: str, expected_meta: Mapping[str, Any] | None, fix: str,
             *, digest: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, meta)`` of a loaded payload once its format, sections, checksum (when
    ``digest``: the stores check their own otherwise) and meta hold."""
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
    if digest and not _digest_matches(payload, {"meta": meta, "state": state}):
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
