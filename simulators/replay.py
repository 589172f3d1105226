"""Replay a CSV file (``timestamp,value[,value...]``, the NAB format) as one stream's Readings.

Bad input is reported, never dropped silently:

- a value that is not a finite number (``abc``, ``inf``) becomes null and is counted, with
  the first examples (line numbers count the header as line 1); an empty cell is a plain
  missing value (null), counted separately;
- a row whose timestamp cannot be parsed, or with the wrong number of fields, is an error
  naming its line, unless ``skip_bad_rows`` (then it is skipped and counted); blank lines
  carry nothing and are only counted;
- rows out of time order or with a repeated timestamp are kept in file order and counted
  (the detector must cope with late and duplicated readings).

Timestamps: ISO 8601 / NAB's ``YYYY-MM-DD HH:MM:SS`` (naive means UTC), or plain numbers
as epoch seconds when every timestamp is numeric.

One value column gives kind ``univariate`` (channel ``value``). Several columns need a
kind with those channels: an existing one (``--kind``), or one registered here with
``streamwatch.kinds.register_kind`` (default name ``csv_<file stem>``). A kind registered
here exists only in this process: a detector elsewhere must register the same kind.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from streamwatch.errors import ConfigError, StreamwatchError
from streamwatch.kinds import UNIVARIATE, KindSpec, get_kind, known_kinds, register_kind
from streamwatch.schema import CHANNEL_PATTERN, STREAM_ID_MAX, STREAM_ID_PATTERN, Reading

log = logging.getLogger(__name__)

EXAMPLES = 5


class ReplayError(StreamwatchError):
    """The CSV file cannot be replayed as it is (the message says where and why)."""


@dataclass(frozen=True)
class CsvReport:
    """What was wrong with a CSV file and what was done about it."""

    rows: int = 0
    null_values: int = 0
    empty_values: int = 0
    skipped_rows: int = 0
    blank_lines: int = 0
    out_of_order: int = 0
    duplicate_ts: int = 0
    examples: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Human-readable lines for stderr, empty when the file was clean."""
        out = []
        if self.null_values:
            out.append(f"{self.null_values} non-numeric value(s) replaced by null")
        if self.empty_values:
            out.append(f"{self.empty_values} empty value(s) sent as null")
        if self.skipped_rows:
            out.append(f"{self.skipped_rows} bad row(s) skipped (--skip-bad-rows)")
        if self.blank_lines:
            out.append(f"{self.blank_lines} blank line(s) ignored")
        if self.out_of_order:
            out.append(f"{self.out_of_order} row(s) earlier than the row before (kept in file order)")
        if self.duplicate_ts:
            out.append(f"{self.duplicate_ts} row(s) repeat the previous timestamp (kept)")
        if out and self.examples:
            out.append("first examples: " + "; ".join(self.examples))
        return out


@dataclass(frozen=True)
class CsvReplay:
    readings: list[Reading]
    kind: KindSpec
    report: CsvReport


def sanitize_id(text: str) -> str:
    """A stream id (or id part) built from a file name: unsupported characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._:/@+-]", "_", text).lstrip("._:/@+-") or "csv"
    return cleaned[:STREAM_ID_MAX]


def _channel_names(columns: list[str]) -> list[str]:
    names = []
    for col in columns:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", col.strip())[:32]
        if not re.match(CHANNEL_PATTERN, name):
            name = f"c_{name}"[:32]
        names.append(name)
    if len(set(names)) != len(names):
        raise ReplayError(f"value columns {columns} do not give distinct channel names: {names}")
    return names


def resolve_kind(path: Path, columns: list[str], kind: str | None) -> tuple[KindSpec, list[str]]:
    """The kind for these value columns, and the channel each column feeds (same order)."""
    if not columns:
        raise ReplayError(f"{path}: needs a header 'timestamp,value[,value...]' with at least one value column")
    if kind is None:
        if len(columns) == 1:
            return get_kind(UNIVARIATE), ["value"]
        kind = "csv_" + re.sub(r"[^a-z0-9_]", "_", path.stem.lower())[:59]
    if kind in known_kinds():
        spec = get_kind(kind)
        if len(columns) == 1 and len(spec.channels) == 1:
            return spec, [spec.channels[0]]
        names = _channel_names(columns)
        if sorted(names) != sorted(spec.channels):
            raise ReplayError(f"{path}: kind {kind!r} has channels {list(spec.channels)} but the "
                              f"file's value columns are {columns}; choose another --kind")
        return spec, names
    if not re.match(r"^[a-z][a-z0-9_]*$", kind) or len(kind) > 64:
        raise ConfigError(f"kind must match ^[a-z][a-z0-9_]*$ (at most 64 characters), got {kind!r}")
    names = _channel_names(columns)
    spec = KindSpec(name=kind, channels=tuple(names))
    register_kind(spec)
    log.info("registered kind for replay", extra={"kind": kind, "channels": ",".join(names)})
    return spec, names


def _parse_timestamps(raw: pd.Series) -> pd.Series:
    """Epoch seconds (float) per row, NaN where the text is not a timestamp."""
    text = raw.str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    if len(text) and numeric.notna().all():
        return numeric.astype(np.float64)
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return seconds.astype(np.float64)


def _read_rows(
    path: Path, skip_bad_rows: bool
) -> tuple[list[str], list[list[str]], list[int], int, int, list[str]]:
    """Header, well-formed rows, their line numbers, skipped and blank counts, examples."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ReplayError(f"cannot open {path}: {exc.strerror}") from None
    rows: list[list[str]] = []
    lines: list[int] = []
    examples: list[str] = []
    skipped = blank = 0
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ReplayError(f"{path} is empty; expected a header 'timestamp,value'") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ReplayError(f"{path}: cannot read the header: {exc}") from None
        width = len(header)
        try:
            for row in reader:
                if not row:  # a blank line carries no data: counted, not an error
                    blank += 1
                    continue
                if len(row) == width:
                    rows.append(row)
                    lines.append(reader.line_num)
                    continue
                skipped += 1
                if len(examples) < EXAMPLES:
                    examples.append(f"line {reader.line_num}: {len(row)} field(s), expected {width}")
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ReplayError(f"{path}: line {reader.line_num + 1}: {exc}") from None
    if skipped and not skip_bad_rows:
        raise ReplayError(f"{path}: {skipped} row(s) with the wrong number of fields, first: "
                          f"{'; '.join(examples)} (use --skip-bad-rows to skip them)")
    return header, rows, lines, skipped, blank, examples


def load_csv(path: str | Path, stream_id: str | None = None, kind: str | None = None,
             *, skip_bad_rows: bool = False) -> CsvReplay:
    """Parse ``path`` into Readings of one stream, with a report of what was wrong."""
    path = Path(path)
    stream_id = stream_id or "replay/" + sanitize_id(path.stem)
    if len(stream_id) > STREAM_ID_MAX or not re.match(STREAM_ID_PATTERN, stream_id):
        raise ConfigError(f"stream id must match {STREAM_ID_PATTERN} (at most {STREAM_ID_MAX} "
                          f"characters), got {stream_id!r}")
    header, rows, lines, skipped, blank, examples = _read_rows(path, skip_bad_rows)
    spec, channels = resolve_kind(path, header[1:], kind)
    frame = pd.DataFrame(rows, columns=range(len(header)), dtype=str)
    ts = _parse_timestamps(frame[0]) if rows else pd.Series([], dtype=np.float64)
    bad_ts = ts.isna() | ~np.isfinite(ts) | (ts < 0)
    if bad_ts.any():
        where = [f"line {lines[i]}: {rows[i][0]!r}" for i in np.flatnonzero(bad_ts)[:EXAMPLES]]
        if not skip_bad_rows:
            raise ReplayError(f"{path}: {int(bad_ts.sum())} row(s) with an unparseable timestamp, "
                              f"first: {'; '.join(where)} (use --skip-bad-rows to skip them)")
        skipped += int(bad_ts.sum())
        examples += where[: max(0, EXAMPLES - len(examples))]
    keep = ~bad_ts.to_numpy()
    values = np.empty((len(rows), len(channels)))
    null_values = empty_values = 0
    for j in range(len(channels)):
        text = frame[j + 1].str.strip()
        number = np.array(pd.to_numeric(text, errors="coerce"), dtype=np.float64)
        empty = (text == "").to_numpy()
        bad = ~np.isfinite(number) & ~empty & keep
        null_values += int(bad.sum())
        empty_values += int((empty & keep).sum())
        for i in np.flatnonzero(bad)[: max(0, EXAMPLES - len(examples))]:
            examples.append(f"line {lines[i]}: {header[j + 1]}={rows[i][j + 1]!r}")
        number[~np.isfinite(number)] = np.nan
        values[:, j] = number
    ts_kept = ts.to_numpy()[keep]
    diffs = np.diff(ts_kept)
    readings = []
    for t, row in zip(ts_kept.tolist(), values[keep].tolist(), strict=True):
        vals = {c: (None if math.isnan(v) else v) for c, v in zip(channels, row, strict=True)}
        readings.append(Reading(stream_id=stream_id, kind=spec.name, ts=t, values=vals))
    report = CsvReport(rows=len(readings), null_values=null_values, empty_values=empty_values,
                       skipped_rows=skipped, blank_lines=blank, out_of_order=int((diffs < 0).sum()),
                       duplicate_ts=int((diffs == 0).sum()), examples=examples)
    for line in report.problems():
        log.warning("%s: %s", path.name, line)
    return CsvReplay(readings=readings, kind=spec, report=report)


def read_csv_readings(path: str | Path, stream_id: str, kind: str = UNIVARIATE) -> list[Reading]:
    """The Readings of one CSV stream, in file order (for the evaluation code).

    Non-numeric values become null (logged as a warning with a count); a bad row is a
    ``ReplayError`` naming its line.

    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "x.csv"
    >>> _ = f.write_text("timestamp,value\\n2014-04-01 00:00:00,20.5\\n2014-04-01 00:05:00,21\\n")
    >>> [(r.ts, r.values) for r in read_csv_readings(f, "nab/x")]
    [(1396310400.0, {'value': 20.5}), (1396310700.0, {'value': 21.0})]
    """
    return load_csv(path, stream_id, kind).readings
