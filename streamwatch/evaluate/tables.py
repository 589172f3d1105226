"""Side-by-side tables of evaluation results (pure): rows for the terminal, the report
and ``--json``. Detectors are columns; NaN becomes ``None`` so the JSON stays valid.

>>> fmt_table([{"metric": "recall", "gru": 0.95, "hst": None}])
'metric  gru    hst\\nrecall  0.950  —'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from streamwatch.evaluate.events import EventMetrics
from streamwatch.evaluate.nab import ProfileResult

Row = dict[str, Any]


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None, containers recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60.0


EVENT_ROWS: tuple[tuple[str, str], ...] = (
    ("episodes (clinical/fault)", "episodes"),
    ("detected", "detected"),
    ("recall", "recall"),
    ("alerts", "alerts"),
    ("true alerts", "true_alerts"),
    ("artefact alerts", "artefact_alerts"),
    ("false alerts", "false_alerts"),
    ("precision", "precision"),
    ("F1", "f1"),
    ("false alerts / stream-day", "false_alerts_per_stream_day"),
    ("artefact alerts / stream-day", "artefact_alerts_per_stream_day"),
)


def event_table(metrics: Mapping[str, EventMetrics]) -> list[Row]:
    """One row per figure, one column per detector."""
    rows: list[Row] = []
    for label, attr in EVENT_ROWS:
        rows.append({"metric": label, **{d: clean(getattr(m, attr)) for d, m in metrics.items()}})
    rows.append({"metric": "acute delay median (min)",
                 **{d: _minutes(m.delay_median_s) for d, m in metrics.items()}})
    rows.append({"metric": "acute delay p90 (min)",
                 **{d: _minutes(m.delay_p90_s) for d, m in metrics.items()}})
    return rows


def text_rows(rows: Sequence[Mapping[str, Any]]) -> list[Row]:
    """``rows`` for the terminal: in an ``event_table``, F1 shows undefined ("—") for a
    detector whose precision and recall are both undefined (no alerts, no episodes), where
    F1 is 0/0 (``EventMetrics.f1`` and the JSON keep their 0.0). Other tables pass as they are.

    >>> rows = [{"metric": "recall", "a": None, "b": 0.5}, {"metric": "precision", "a": None,
    ...         "b": None}, {"metric": "F1", "a": 0.0, "b": 0.0}]
    >>> [r["a"] for r in text_rows(rows)], [r["b"] for r in text_rows(rows)]
    ([None, None, None], [0.5, None, 0.0])
    """
    by_metric = {r.get("metric"): r for r in rows}
    recall, precision = by_metric.get("recall"), by_metric.get("precision")
    out = [dict(r) for r in rows]
    if recall is None or precision is None or "F1" not in by_metric:
        return out
    for row in out:
        if row["metric"] == "F1":
            for d in row:
                if d != "metric" and recall.get(d) is None and precision.get(d) is None:
                    row[d] = None
    return out


def by_type_table(metrics: Mapping[str, EventMetrics]) -> list[Row]:
    """Per episode type: count, then recall and median delay per detector."""
    types = sorted({t for m in metrics.values() for t in m.by_type})
    rows: list[Row] = []
    for t in types:
        row: Row = {"type": t}
        for d, m in metrics.items():
            tm = m.by_type.get(t)
            row["episodes"] = tm.episodes if tm else 0
            row[f"{d} recall"] = clean(tm.recall) if tm else None
            row[f"{d} delay med (min)"] = _minutes(tm.delay_median_s) if tm else None
        rows.append(row)
    return rows


def nab_table(profiles: Mapping[str, Mapping[str, ProfileResult]]) -> list[Row]:
    """Normalised NAB score per profile (and the optimised thresholds), per detector."""
    names = list(next(iter(profiles.values()))) if profiles else []
    rows: list[Row] = [{"metric": f"NAB {p}", **{d: clean(r[p].normalized) for d, r in profiles.items()}}
                       for p in names]
    rows += [{"metric": f"threshold {p}", **{d: r[p].threshold for d, r in profiles.items()}}
             for p in names]
    rows.append({"metric": "windows detected (standard)",
                 **{d: sum(f.windows_detected for f in r["standard"].files)
                    for d, r in profiles.items() if "standard" in r}})
    return rows


def nab_file_table(profiles: Mapping[str, Mapping[str, ProfileResult]], profile: str = "standard") -> list[Row]:
    """Per file: raw standard score and windows detected, per detector."""
    rows: dict[str, Row] = {}
    for d, result in profiles.items():
        for f in result[profile].files:
            row = rows.setdefault(f.key, {"file": f.key, "windows": f.windows})
            row[f"{d} raw"] = f.raw
            row[f"{d} detected"] = f.windows_detected
            row[f"{d} fp rows"] = f.fp
    return list(rows.values())


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def fmt_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width text table with the keys of the first row as the header."""
    if not rows:
        return "(empty)"
    header = list(rows[0])
    cells = [[_cell(r.get(k)) for k in header] for r in rows]
    widths = [max(len(str(h)), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)
