"""NAB-format corpora on disk: data files, window labels, and NAB's results layout.

A corpus is a directory of ``<category>/<file>.csv`` files with columns
``timestamp,value`` plus a windows file ``{"<category>/<file>.csv": [[start, end], ...]}``
(NAB's ``combined_windows.json``). Results are written as NAB writes them:
``<results>/<detector>/<category>/<detector>_<file>.csv`` with
``timestamp,value,anomaly_score,label``.

Where the corpus is: ``--data-dir``, else ``$STREAMWATCH_NAB_DIR``, else
``../shared/data/nab`` beside the repository checkout (development only).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from streamwatch.evaluate.nab import LabelledFile, NabError, check_scores

log = logging.getLogger(__name__)

ENV_NAB_DIR = "STREAMWATCH_NAB_DIR"
WINDOW_FILE_NAMES = ("combined_windows.json", "labels/combined_windows.json")


def _repo_default() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nab"


def resolve_nab_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The corpus directory: the argument, ``$STREAMWATCH_NAB_DIR``, or the repo default."""
    if data_dir is not None:
        path, origin = Path(data_dir), "--data-dir"
    elif os.environ.get(ENV_NAB_DIR):
        path, origin = Path(os.environ[ENV_NAB_DIR]), f"${ENV_NAB_DIR}"
    else:
        path, origin = _repo_default(), "the default"
    if not path.is_dir():
        raise NabError(
            f"NAB corpus not found at {path} ({origin}); pass --data-dir DIR (a directory of "
            f"<category>/<file>.csv files, or one holding data/ and combined_windows.json) "
            f"or set {ENV_NAB_DIR}"
        )
    return path


def _data_root(path: Path) -> Path:
    return path / "data" if (path / "data").is_dir() else path


def find_windows_file(corpus_dir: Path) -> Path:
    """NAB's windows file next to (or above) the data directory."""
    for base in (corpus_dir, corpus_dir.parent):
        for name in WINDOW_FILE_NAMES:
            if (base / name).is_file():
                return base / name
    raise NabError(
        f"no combined_windows.json found in {corpus_dir} or its parent; pass --labels FILE "
        "(NAB's windows file: {\"<category>/<file>.csv\": [[start, end], ...]})"
    )


def read_windows(path: str | os.PathLike[str]) -> dict[str, list[list[str]]]:
    """Read a NAB windows file; a point-label file or malformed JSON is a clear error."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NabError(f"cannot read NAB windows file {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise NabError(f"{path}: expected an object mapping file keys to window lists")
    for key, windows in raw.items():
        if not isinstance(windows, list):
            raise NabError(f"{path}: {key}: expected a list of [start, end] windows")
        for window in windows:
            if isinstance(window, str):
                raise NabError(
                    f"{path} holds single labelled points (like combined_labels.json); NAB "
                    "scores against windows: pass its combined_windows.json to --labels"
                )
            if not (isinstance(window, list) and len(window) == 2):
                raise NabError(f"{path}: {key}: window {window!r} is not [start, end]")
    return raw


def read_data_file(path: Path, key: str) -> pd.DataFrame:
    """One NAB data file as ``timestamp`` (datetime64) and ``value`` (float, NaN if empty)."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise NabError(f"cannot read {path}: {exc}") from None
    if "timestamp" not in frame.columns or "value" not in frame.columns:
        raise NabError(f"{key}: expected columns timestamp,value; found {list(frame.columns)}")
    ts = pd.to_datetime(frame["timestamp"], errors="coerce")
    if ts.isna().any():
        row = int(ts.isna().to_numpy().argmax())
        raise NabError(f"{key}: row {row} has a bad timestamp {frame['timestamp'].iloc[row]!r}")
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = values.isna() & frame["value"].notna()
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise NabError(f"{key}: row {row} has a non-numeric value {frame['value'].iloc[row]!r}")
    return pd.DataFrame({"timestamp": ts, "value": values.astype(np.float64)})


@dataclass(frozen=True)
class NabCorpus:
    """A loaded corpus: labelled files (sorted by key) and their values."""

    data_dir: Path
    windows_path: Path
    files: list[LabelledFile]
    values: dict[str, np.ndarray]

    @property
    def n_windows(self) -> int:
        return sum(len(f.windows) for f in self.files)


def load_corpus(
    data_dir: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    only: Iterable[str] | None = None,
) -> NabCorpus:
    """Load every ``<category>/<file>.csv`` under the corpus with its windows.

    ``only`` restricts to these file keys (``realKnownCause/nyc_taxi.csv``). A data file
    without an entry in the windows file is an error; windows of files not present are
    ignored (so the full NAB label file scores a subset).
    """
    root = resolve_nab_dir(data_dir)
    data_root = _data_root(root)
    windows_path = Path(labels) if labels is not None else find_windows_file(root)
    windows = read_windows(windows_path)
    keys = sorted(p.relative_to(data_root).as_posix() for p in data_root.glob("*/*.csv"))
    if only is not None:
        wanted = list(only)
        unknown = [k for k in wanted if k not in keys]
        if unknown:
            raise NabError(f"not in {data_root}: {', '.join(unknown)}")
        keys = sorted(wanted)
    if not keys:
        raise NabError(f"no <category>/<file>.csv files under {data_root}")
    unlabelled = [k for k in keys if k not in windows]
    if unlabelled:
        raise NabError(
            f"{windows_path} has no windows for {len(unlabelled)} data file(s), e.g. "
            f"{unlabelled[0]}; pass the windows file of this corpus with --labels"
        )
    files, values = [], {}
    for key in keys:
        frame = read_data_file(data_root / key, key)
        files.append(LabelledFile.from_limits(key, frame["timestamp"].to_numpy(), windows[key]))
        values[key] = frame["value"].to_numpy()
    extra = len(set(windows) - set(keys))
    log.info("nab corpus loaded files=%d windows=%d unused_label_entries=%d dir=%s",
             len(files), sum(len(f.windows) for f in files), extra, data_root)
    return NabCorpus(data_dir=data_root, windows_path=windows_path, files=files, values=values)


def results_path(results_dir: str | os.PathLike[str], detector: str, key: str) -> Path:
    """``<results>/<detector>/<category>/<detector>_<file>.csv`` (NAB's layout)."""
    category, name = key.rsplit("/", 1) if "/" in key else ("", key)
    return Path(results_dir) / detector / category / f"{detector}_{name}"


def write_results(
    results_dir: str | os.PathLike[str], detector: str, file: LabelledFile,
    values: np.ndarray, scores: np.ndarray, extra: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write one file's results (full float precision, so a re-read scores identically)."""
    scores = check_scores(file.key, scores, file.n_rows)
    frame = pd.DataFrame({
        "timestamp": pd.Series(file.timestamps).astype(str),
        "value": values,
        "anomaly_score": scores,
        "label": file.labels(),
    })
    for name, column in (extra or {}).items():
        frame[name] = column
    path = results_path(results_dir, detector, file.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def read_results(
    results_dir: str | os.PathLike[str], detector: str, files: Sequence[LabelledFile]
) -> dict[str, np.ndarray]:
    """Read back the ``anomaly_score`` column of every file, checking the row count."""
    scores = {}
    for f in files:
        path = results_path(results_dir, detector, f.key)
        try:
            column = pd.read_csv(path, usecols=["anomaly_score"])["anomaly_score"]
        except (OSError, ValueError) as exc:
            raise NabError(f"cannot read results of {detector} for {f.key} at {path}: {exc}") from None
        scores[f.key] = check_scores(f.key, column.to_numpy(dtype=np.float64), f.n_rows)
    return scores
