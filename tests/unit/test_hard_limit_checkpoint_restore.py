"""A checkpoint written with hard limits off restores into a detector with them on (and the
reverse): the restored streams get fresh hard-limit runs, no crash."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pytest
import torch

from streamwatch.commands.detect import build_detector
from streamwatch.config import load_settings
from streamwatch.kinds import ICU
from streamwatch.schema import Reading

NORMAL = {"hr": 75.0, "spo2": 97.0, "rr": 15.0, "sbp": 125.0, "dbp": 75.0, "map": 92.0,
          "temp": 36.9}  # fmt: skip
STREAMS = ("icu/bed-1", "icu/bed-2")
FRESH_LOG = "checkpoint has no hard-limit state"


def detector(hard_limits: bool) -> Any:
    settings = load_settings(overrides={
        "detector": {"hard_limits": {"enabled": hard_limits}},
        "model": {"hidden_size": 8, "window": 8, "burn_in": 2, "batch_size": 16,
                  "train_every": 64, "seed": 0},
    })  # fmt: skip
    return build_detector(settings)


def readings(start: float, n: int, **fixed: float) -> list[Reading]:
    rng = np.random.default_rng(int(start))
    out = []
    for i in range(n):
        for sid in STREAMS:
            values: dict[str, float | None] = {
                c: round(v + 0.5 * rng.standard_normal(), 2) for c, v in NORMAL.items()}
            values.update(fixed)
            out.append(Reading(sid, ICU, start + i, values))
    return out


def serialised(state: dict[str, Any]) -> Any:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def hand_over(first: Any, second: Any, *, whole: bool) -> None:
    """The two restore paths of the service: a full state dict, or the global state plus
    each partition's streams (one import per partition, as ``_on_assign`` does)."""
    if whole:
        second.load_state_dict(serialised(first.state_dict()))
        return
    second.load_global_state(serialised(first.global_state_dict()))
    for sid in STREAMS:
        second.import_streams(serialised(first.export_streams([sid])))


@pytest.mark.parametrize("whole", [False, True], ids=["per-partition", "state-dict"])
def test_a_checkpoint_without_hard_limit_state_restores_with_fresh_runs(
    whole: bool, caplog: pytest.LogCaptureFixture
) -> None:
    first = detector(hard_limits=False)
    first.process(readings(1000.0, 20, spo2=82.0, hr=190.0))  # critical, but limits off
    second = detector(hard_limits=True)
    with caplog.at_level(logging.INFO, logger="streamwatch.detect.detector_state"):
        hand_over(first, second, whole=whole)
    assert [r.getMessage() for r in caplog.records].count(FRESH_LOG + " (written with hard "
           "limits off): the restored streams start fresh hard-limit runs") == 1
    assert second.counters["streams"] == len(STREAMS)
    after = readings(1020.0, 20, spo2=82.0, hr=190.0)
    scores, alerts = second.process(after)
    assert all(s.hard_limit == "critical" for s in scores)
    opened = [a for a in alerts if a.event == "open"]
    # fresh runs: each starts at the first reading after the restore
    assert sorted((a.stream_id, a.onset_ts) for a in opened) == [(s, 1020.0) for s in STREAMS]
    assert all("hard_limit" in a.explanation.reasons for a in opened)


@pytest.mark.parametrize("whole", [False, True], ids=["per-partition", "state-dict"])
def test_a_checkpoint_with_hard_limit_state_restores_into_a_detector_without(
    whole: bool, caplog: pytest.LogCaptureFixture
) -> None:
    first = detector(hard_limits=True)
    _, alerts = first.process(readings(1000.0, 20, spo2=82.0, hr=190.0))
    assert any(a.event == "open" for a in alerts)
    second = detector(hard_limits=False)
    with caplog.at_level(logging.INFO, logger="streamwatch.detect.detector_state"):
        hand_over(first, second, whole=whole)
    assert sum("hard-limit state ignored" in r.getMessage() for r in caplog.records) == 1
    scores, _ = second.process(readings(1020.0, 5, spo2=82.0, hr=190.0))
    assert len(scores) == 5 * len(STREAMS)
    assert all(s.hard_limit is None for s in scores)


def test_restoring_over_known_streams_drops_their_old_hard_limit_runs() -> None:
    """Imported streams that this detector already had (a partition handed back) must not
    keep runs the checkpoint does not hold."""
    first = detector(hard_limits=False)
    first.process(readings(1000.0, 5))
    second = detector(hard_limits=True)
    second.process(readings(990.0, 10, spo2=82.0, hr=190.0))  # a critical run under way
    second.load_global_state(serialised(first.global_state_dict()))
    second.import_streams(serialised(first.export_streams(list(STREAMS))))
    _, alerts = second.process(readings(1005.0, 20, spo2=82.0, hr=190.0))
    opened = [a for a in alerts if a.event == "open"]
    assert sorted((a.stream_id, a.onset_ts) for a in opened) == [(s, 1005.0) for s in STREAMS]
