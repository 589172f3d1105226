"""Where the detector's time goes per reading: py-spy samples of the service thread.

``py-spy record --threads --nonblocking --format raw`` samples the bench process from
outside (no GIL, no pause, no instrumentation); only the detector thread's stacks are
kept, and only while it is active (py-spy drops idle samples: waiting on a socket, a
condition or the GIL). Each sample is put in ONE category: walking from the innermost
frame outwards, the first frame that a rule in :data:`RULES` names decides (so time in
torch called from ``advance_many`` counts as "model: advance", a msgspec call inside
``_emit`` as "Score building").

Per-reading figures split the detector thread's own CPU time (measured with its thread
CPU clock) by the category shares: they hold on a busy machine too, where wall time
would mostly measure the other processes. Wall time the thread spends waiting (I/O, the
GIL held by a client's Python I/O thread, the scheduler) is ``wall - thread CPU``.

>>> counts = parse_raw(["thread (7): streamwatch-bench-detector;"
...     "DetectorService.run (streamwatch/pipeline.py:190);"
...     "DetectorService._process (streamwatch/pipeline.py:280);"
...     "decode_reading (streamwatch/schema.py:301) 3",
...     "thread (8): MainThread;<module> (x.py:1) 5"], "streamwatch-bench-detector")
>>> summarise(counts, readings=3, cpu_s=0.003)["categories"]["decode (msgspec)"]["us_per_reading"]
1000.0
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streamwatch.errors import ConfigError

log = logging.getLogger(__name__)

_P, _D, _M = "pipeline.py", "detector.py", "forecast_scorer.py"
#: (file basename, qualified function name or None for any function) -> category.
RULES: dict[tuple[str, str | None], str] = {
    ("schema.py", "decode_reading"): "decode (msgspec)",
    ("schema.py", "encode"): "encode Scores (msgspec)",
    ("schema.py", "ReadingDecoder.decode"): "decode (msgspec)",
    ("schema.py", "ReadingDecoder.decode_many"): "decode (msgspec)",
    ("detector.py", "StreamDetector.validate"): "validate",
    ("detector.py", "StreamDetector.validate_many"): "validate",
    (_P, "DetectorService._check"): "validate",
    ("merge.py", None): "merge (event-time heap)",  # the label of earlier runs, kept
    (_D, "StreamDetector._matrix"): "detector: input matrix",
    (_D, "StreamDetector._columns"): "validate + input matrix (arrays)",
    (_D, "StreamDetector._emit"): "Score building",
    (_D, "StreamDetector._emit_encoded"): "Score building",
    ("schema.py", "ScoreEncoder.encode_rows"): "Score building",
    (_D, "StreamDetector._step_alerts"): "alerts",
    ("alerts.py", None): "alerts",
    ("thresholds.py", None): "thresholds",
    ("hardlimits.py", None): "hard limits",
    ("slots.py", None): "detector: slot lookups",
    (_D, None): "detector: waves + masks",
    (_M, "ForecastScorer.score_many"): "model: score",
    (_M, "ForecastScorer.advance_many"): "model: advance (batched step)",
    (_M, "ForecastScorer.learn_many"): "model: learn (normaliser, replay windows)",
    (_M, "ForecastScorer._windows"): "model: learn (normaliser, replay windows)",
    (_M, "ForecastScorer.train_pending"): "training (optimiser steps)",
    ("trainer.py", None): "training (optimiser steps)",
    (_M, None): "model: other",
    ("kafka.py", "KafkaConsumerTransport.poll"): "consume (poll + Message objects)",
    ("confluent.py", "ConfluentConsumerTransport.poll"): "consume (poll + Message objects)",
    ("kafka.py", "KafkaProducerTransport.send"): "produce (send)",
    ("confluent.py", "ConfluentProducerTransport.send"): "produce (send)",
    ("kafka.py", "KafkaProducerTransport.flush"): "produce (flush: wait for acks)",
    ("confluent.py", "ConfluentProducerTransport.flush"): "produce (flush: wait for acks)",
    (_P, "DetectorService._deliver"): "produce (send)",
    (_P, "DetectorService._outputs"): "outputs (filter + keys)",
    (_P, "DetectorService._maybe_checkpoint"): "checkpoint + commit",
    (_P, "DetectorService._checkpoint_and_commit"): "checkpoint + commit",
    (_P, "DetectorService._maybe_health"): "health record + lag",
    (_P, "DetectorService._lag"): "health record + lag",
    (_P, "DetectorService._process"): "service: per-message bookkeeping",
    (_P, "DetectorService._decode_each"): "service: per-message bookkeeping",
    (_P, "DetectorService._score_and_emit"): "service bookkeeping + metrics",
    (_P, None): "service loop (other)",
}  # fmt: skip

Stack = tuple[tuple[str, str], ...]  # innermost first: (basename, qualname)


def py_spy_binary() -> str:
    """Path of ``py-spy`` (next to this Python first); ConfigError naming the fix if absent."""
    here = Path(sys.executable).parent / "py-spy"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("py-spy")
    if found is None:
        raise ConfigError("--profile needs py-spy: `pip install -e .[bench]` (or "
                          "`pip install py-spy`), or run without --profile")  # fmt: skip
    return found


def start_py_spy(pid: int, duration_s: float, output: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Sample ``pid`` for ``duration_s`` seconds into ``output`` (raw collapsed stacks)."""
    args = [py_spy_binary(), "record", "--pid", str(pid), "--duration",
            str(max(1, round(duration_s))), "--rate", str(rate), "--format", "raw", "--threads", "--nonblocking", "--output", str(output)]  # fmt: skip
    log.info("profiling with py-spy pid=%s duration_s=%.0f", pid, duration_s)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _frame(text: str) -> tuple[str, str]:
    name, _, loc = text.rpartition(" (")
    if not name:
        return "", text
    path = loc.rstrip(")").rsplit(":", 1)[0]
    return path.rsplit("/", 1)[-1], name


def parse_raw(lines: Iterable[str], thread_name: str) -> Counter[Stack]:
    """Stacks (innermost first) and sample counts of the thread named ``thread_name``."""
    counts: Counter[Stack] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        parts = body.split(";")
        header = parts[0]
        if not header.endswith(f": {thread_name}"):
            continue
        counts[tuple(_frame(p) for p in reversed(parts[1:]))] += int(count)
    return counts


def categorise(stack: Stack) -> str:
    for base, name in stack:
        cat = RULES.get((base, name)) or RULES.get((base, None))
        if cat is not None:
            return cat
    return "other"


def summarise(counts: Counter[Stack], readings: int, cpu_s: float, top: int = 15) -> dict[str, Any]:
    """Category shares, detector-thread CPU microseconds per reading (``cpu_s`` split by
    share), and the busiest innermost frames."""
    total = sum(counts.values())
    cats: Counter[str] = Counter()
    inner: Counter[str] = Counter()
    for stack, n in counts.items():
        cats[categorise(stack)] += n
        if stack:
            inner[f"{stack[0][1]} ({stack[0][0]})"] += n

    def figures(n: int) -> dict[str, float | None]:
        share = n / total if total else 0.0
        per = share * cpu_s / readings * 1e6 if readings else None
        return {"share": round(share, 4), "us_per_reading": None if per is None else round(per, 2)}

    return {
        "samples": total,
        "readings": readings,
        "thread_cpu_s": round(cpu_s, 3),
        "categories": {c: figures(n) for c, n in cats.most_common()},
        "top_frames": {f: figures(n) for f, n in inner.most_common(top)},
    }
