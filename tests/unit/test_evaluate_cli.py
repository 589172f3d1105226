"""``streamwatch evaluate``: the command end to end on small inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from streamwatch.cli import main
from streamwatch.evaluate.corpus import resolve_nab_dir

TWO_FILES = "realKnownCause/rogue_agent_key_hold.csv,realTraffic/speed_7578.csv"


def small_corpus(tmp_path: Path) -> Path:
    """A copy of two shipped NAB files with their windows: a corpus outside the repo."""
    src = resolve_nab_dir()
    windows = json.loads((src / "combined_windows.json").read_text())
    dst = tmp_path / "corpus"
    for key in TWO_FILES.split(","):
        (dst / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "data" / key, dst / key)
    labels = tmp_path / "my_windows.json"
    labels.write_text(json.dumps({k: windows[k] for k in TWO_FILES.split(",")}))
    return dst


@pytest.mark.timeout(120)
def test_nab_reference_run_writes_nab_layout_json_and_report(tmp_path, capsys) -> None:
    corpus = small_corpus(tmp_path)
    out, js, html = tmp_path / "results", tmp_path / "eval.json", tmp_path / "report.html"
    code = main(["evaluate", "nab", "--detectors", "nab-gaussian", "--data-dir", str(corpus),
                 "--labels", str(tmp_path / "my_windows.json"), "--results-dir", str(out),
                 "--json", str(js), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "NAB standard" in printed and "nab-gaussian" in printed
    frame = pd.read_csv(out / "nab-gaussian" / "realTraffic" / "nab-gaussian_speed_7578.csv")
    assert list(frame.columns[:4]) == ["timestamp", "value", "anomaly_score", "label"]
    assert len(frame) == 1127 and frame["anomaly_score"].between(0, 1).all()
    assert frame["label"].sum() > 0
    payload = json.loads(js.read_text())
    assert payload["corpus"]["files"] == 2 and payload["corpus"]["windows"] == 6
    assert payload["episode_hold_h"] == 12.0
    rows = {r["metric"]: r for r in payload["tables"]["NAB score"]}
    assert set(rows) >= {"NAB standard", "NAB reward_low_FP_rate", "NAB reward_low_FN_rate"}
    assert -100 < rows["NAB standard"]["nab-gaussian"] <= 100
    assert not html.exists()


def test_unknown_detector_is_a_clear_error(capsys) -> None:
    code = main(["evaluate", "nab", "--detectors", "nope", "--files", "realTraffic/speed_7578.csv",
                 "--no-progress"])
    assert code == 2
    assert "unknown detector 'nope'" in capsys.readouterr().err


def test_negative_episode_hold_is_a_clear_error(capsys) -> None:
    code = main(["evaluate", "nab", "--detectors", "nab-gaussian", "--episode-hold-h", "-1",
                 "--files", "realTraffic/speed_7578.csv", "--no-progress"])
    assert code == 2
    assert "--episode-hold-h must be >= 0" in capsys.readouterr().err


def test_missing_corpus_names_the_flag(tmp_path, capsys) -> None:
    code = main(["evaluate", "nab", "--data-dir", str(tmp_path / "absent"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "STREAMWATCH_NAB_DIR" in err


def test_unknown_file_key_lists_it(capsys) -> None:
    code = main(["evaluate", "nab", "--detectors", "nab-gaussian", "--files", "realX/none.csv",
                 "--no-progress"])
    assert code == 2
    assert "realX/none.csv" in capsys.readouterr().err


def test_report_shades_alerts_and_episodes_and_escapes_ids(tmp_path) -> None:
    from streamwatch.evaluate.events import AlertSpan
    from streamwatch.evaluate.report import stream_figure, write_report
    from streamwatch.evaluate.runner import Trace
    from streamwatch.schema import Episode

    n = 10_000
    trace = Trace("icu/bed-<01>", ("hr", "spo2"))
    trace.ts = [1.7e9 + i for i in range(n)]
    trace.values = [[70.0 + (i == 5000) * 60, 98.0] for i in range(n)]
    trace.mean = [[70.0, 98.0]] * n
    trace.std = [[2.0, 1.0]] * n
    trace.score = [0.5 + (i == 5000) * 40.0 for i in range(n)]
    trace.threshold = [8.0] * n
    ep = Episode(episode_id="e", stream_id=trace.stream_id, kind="icu_vitals", type="tachycardia",
                 category="clinical", onset_ts=1.7e9 + 4990, end_ts=1.7e9 + 5300, channels=["hr"])
    art = Episode(episode_id="a", stream_id=trace.stream_id, kind="icu_vitals", type="probe_off",
                  category="artefact", onset_ts=1.7e9 + 100, end_ts=1.7e9 + 200, channels=["spo2"])
    fig = stream_figure(trace, "gru: icu/bed-<01>", [AlertSpan("x", trace.stream_id, 1.7e9 + 5000, 1.7e9 + 5100)],
                        [ep, art], max_points=1000)
    assert len(fig.layout.shapes) == 3
    colours = {s.fillcolor for s in fig.layout.shapes}
    assert len(colours) == 3  # clinical, artefact and alert shaded differently
    score = next(t for t in fig.data if t.name == "score (bucket max)")
    assert len(score.y) == 1000 and max(score.y) == pytest.approx(40.5)  # the spike survives
    path = write_report(tmp_path / "r.html", "t", {"summary": [{"metric": "<b>x</b>", "gru": 1.0}]}, [fig])
    text = path.read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
    assert text.count("plotly.js") >= 1


@pytest.mark.timeout(240)
def test_gru_nab_scores_are_causal_and_independent_of_batch_boundaries(tmp_path) -> None:
    import numpy as np

    from streamwatch.evaluate.corpus import load_corpus
    from streamwatch.evaluate.detectors import nab_factories
    from streamwatch.evaluate.nab import LabelledFile
    from streamwatch.evaluate.runner import run_nab_file

    corpus = load_corpus(only=["realTraffic/speed_7578.csv"])
    f, values = corpus.files[0], corpus.values["realTraffic/speed_7578.csv"]
    factory = nab_factories(["gru"], seed=1)["gru"]
    hold = 12 * 3600.0  # the evaluate default (--episode-hold-h)
    full = run_nab_file(factory, f, values, hold_s=hold)
    k = 700
    prefix = LabelledFile(f.key, f.timestamps[:k], ())
    part = run_nab_file(factory, prefix, values[:k], hold_s=hold)
    assert np.array_equal(part.raw, full.raw[:k])
    assert np.array_equal(part.anomaly_score, full.anomaly_score[:k])
    assert ((full.anomaly_score >= 0) & (full.anomaly_score <= 1)).all()
    assert full.anomaly_score.max() > 0.5  # the detector does rank some rows high
    # Only the detector's warm-up (60 rows) is left out: rows are ranked long before the
    # threshold has warmed up (~360 rows), so a window right after NAB's probation counts.
    assert full.anomaly_score[:60].max() == 0 and full.anomaly_score[110:360].max() > 0.5
    batched = run_nab_file(factory, f, values, batch_rows=16, hold_s=hold)
    assert np.array_equal(batched.raw, full.raw)  # micro-batch boundaries change nothing


@pytest.mark.timeout(240)
def test_icu_scenario_run_matches_alerts_to_the_simulated_episode(tmp_path, capsys) -> None:
    # seed 18, 2 beds: one desaturation (clinical) starting 2.03 h in, 15 min long
    js, html = tmp_path / "icu.json", tmp_path / "icu.html"
    code = main(["evaluate", "icu", "--patients", "2", "--hours", "2.5", "--seed", "18",
                 "--detectors", "zscore", "--json", str(js), "--report", str(html),
                 "--report-streams", "1", "--no-progress"])
    assert code == 0
    assert "recall" in capsys.readouterr().out
    payload = json.loads(js.read_text())
    assert payload["scenario"] == {"target": "icu", "streams": 2, "hours": 2.5, "seed": 18,
                                   "batch_seconds": 1, "grace_min": 5.0,
                                   "slow_types": ["sepsis", "slow_drift"]}
    m = payload["detectors"]["zscore"]
    assert m["episodes"] == 1 and m["by_type"]["desaturation"]["episodes"] == 1
    assert m["alerts"] == m["true_alerts"] + m["artefact_alerts"] + m["false_alerts"]
    assert m["stream_days"] == pytest.approx(2 * 2.5 / 24)
    assert m["detected"] == 1 and 0 <= m["delay_median_s"] <= 600
    text = html.read_text()
    assert "zscore: icu" in text and "desaturation" in text  # plotly escapes "/" in its JSON


def test_nab_reference_is_refused_on_scenarios(capsys) -> None:
    assert main(["evaluate", "icu", "--detectors", "nab-gaussian", "--no-progress"]) == 2
    assert "NAB runs only" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "name"), [("--json", "y.json"), ("--report", "r.html")])
def test_unwritable_outputs_are_refused_before_the_run(flag, name, tmp_path, monkeypatch, capsys) -> None:
    import streamwatch.evaluate.runner

    def no_run(*_a, **_k):
        raise AssertionError("the run started although its output cannot be written")

    monkeypatch.setattr(streamwatch.evaluate.runner, "run_scenario", no_run)
    (tmp_path / "file").write_text("")
    for path, problem in ((f"/proc/nope/{name}", "cannot create /proc/nope in /proc"),
                          (str(tmp_path / "file" / name), "is not a directory"),
                          (str(tmp_path), "is a directory")):
        code = main(["evaluate", "icu", "--patients", "1", "--hours", "0.5", "--detectors",
                     "zscore", flag, path, "--no-progress"])
        assert code == 2
        err = capsys.readouterr().err
        assert f"error: {flag} {path}" in err and problem in err and "choose another path" in err


def test_unwritable_nab_results_dir_is_refused_before_the_run(tmp_path, monkeypatch, capsys) -> None:
    import streamwatch.evaluate.runner

    monkeypatch.setattr(streamwatch.evaluate.runner, "run_nab", lambda *_a, **_k: pytest.fail("ran"))
    (tmp_path / "file").write_text("")
    code = main(["evaluate", "nab", "--detectors", "nab-gaussian", "--files",
                 "realTraffic/speed_7578.csv", "--results-dir", str(tmp_path / "file"),
                 "--no-progress"])
    assert code == 2
    assert f"--results-dir {tmp_path / 'file'} is not a directory" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_failed_write_after_the_run_is_a_clear_error_and_keeps_the_other_output(
    tmp_path, capsys
) -> None:
    html = tmp_path / "new" / "r.html"
    code = main(["evaluate", "icu", "--patients", "1", "--hours", "0.5", "--detectors", "zscore",
                 "--json", "/dev/full", "--report", str(html), "--no-progress"])
    assert code == 2
    captured = capsys.readouterr()
    assert "summary" in captured.out and f"report written to {html}" in captured.out
    assert ("error: cannot write --json /dev/full: No space left on device (the tables printed "
            "above are the results") in captured.err
    assert "zscore" in html.read_text()


@pytest.mark.timeout(120)
def test_f1_is_undefined_in_the_text_where_precision_and_recall_are(tmp_path, capsys) -> None:
    # 1 bed for 0.5 h: no episode (the warm-up is 2 h) and no alert
    js = tmp_path / "e.json"
    code = main(["evaluate", "icu", "--patients", "1", "--hours", "0.5", "--detectors", "zscore",
                 "--json", str(js), "--no-progress"])
    assert code == 0
    rows = {line.split("  ")[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()
            if "  " in line}
    assert rows["recall"] == rows["precision"] == rows["F1"] == "—"
    assert rows["alerts"] == rows["episodes (clinical/fault)"] == "0"
    summary = {r["metric"]: r["zscore"] for r in json.loads(js.read_text())["tables"]["summary"]}
    assert summary["recall"] is None and summary["precision"] is None and summary["F1"] == 0.0
