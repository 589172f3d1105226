"""CSV replay: NAB files become one stream's Readings; bad rows are reported, not dropped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from simulators.replay import ReplayError, load_csv, read_csv_readings
from streamwatch.errors import ConfigError
from streamwatch.evaluate.corpus import resolve_nab_dir
from streamwatch.kinds import get_kind

NAB = resolve_nab_dir() / "data"  # ../shared/data/nab or $STREAMWATCH_NAB_DIR
TAXI = NAB / "realKnownCause" / "nyc_taxi.csv"


def _write(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nab_file_becomes_readings_of_one_univariate_stream() -> None:
    assert TAXI.exists(), f"NAB data missing at {TAXI}"
    readings = read_csv_readings(TAXI, "nab/nyc_taxi")
    frame = pd.read_csv(TAXI)
    assert len(readings) == len(frame)
    assert {r.stream_id for r in readings} == {"nab/nyc_taxi"}
    assert {r.kind for r in readings} == {"univariate"}
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    expected_ts = (stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    assert [r.ts for r in readings] == expected_ts.tolist()
    assert [r.values["value"] for r in readings] == frame["value"].astype(float).tolist()


def test_non_numeric_values_become_null_and_are_counted(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,abc\n"
                            "2014-04-01 00:10:00,\n2014-04-01 00:15:00,inf\n2014-04-01 00:20:00,4\n")
    loaded = load_csv(path)
    assert [r.values["value"] for r in loaded.readings] == [1.0, None, None, None, 4.0]
    assert loaded.report.null_values == 2 and loaded.report.empty_values == 1
    assert "line 3: value='abc'" in loaded.report.examples
    assert any("2 non-numeric value(s) replaced by null" in p for p in loaded.report.problems())


def test_unparseable_timestamp_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,value\n2014-04-01 00:00:00,1\nyesterday,2\n"
                            "2014-04-01 00:10:00,3\n\n ,5\n")
    with pytest.raises(ReplayError, match=r"2 row\(s\) with an unparseable timestamp.*line 3: "
                                          r"'yesterday'.*--skip-bad-rows"):
        load_csv(path)
    loaded = load_csv(path, skip_bad_rows=True)
    assert [r.values["value"] for r in loaded.readings] == [1.0, 3.0]
    assert loaded.report.skipped_rows == 2 and loaded.report.blank_lines == 1


def test_wrong_field_count_is_an_error_unless_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,2,9\n")
    with pytest.raises(ReplayError, match=r"line 3: 3 field\(s\), expected 2"):
        load_csv(path)
    assert len(load_csv(path, skip_bad_rows=True).readings) == 1


def test_late_and_duplicate_rows_are_kept_in_file_order_and_counted(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,value\n100,1\n300,2\n200,3\n200,4\n")
    loaded = load_csv(path, "s1")
    assert [r.ts for r in loaded.readings] == [100.0, 300.0, 200.0, 200.0]
    assert (loaded.report.out_of_order, loaded.report.duplicate_ts) == (1, 1)


def test_iso_timestamps_with_offsets_are_converted_to_utc(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,value\n2014-04-01T00:00:00Z,1\n2014-04-01T03:00:00+02:00,2\n")
    assert [r.ts for r in load_csv(path).readings] == [1396310400.0, 1396314000.0]


def test_several_value_columns_register_a_kind(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,inlet temp,flow\n1,20.5,3\n2,20.7,3.1\n", "pump_7.csv")
    loaded = load_csv(path)
    assert loaded.kind.name == "csv_pump_7"
    assert get_kind("csv_pump_7").channels == ("inlet_temp", "flow")
    assert loaded.readings[1].values == {"inlet_temp": 20.7, "flow": 3.1}
    with pytest.raises(ReplayError, match="kind 'univariate' has channels"):
        load_csv(path, kind="univariate")


def test_bad_arguments_and_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="cannot open"):
        load_csv(tmp_path / "missing.csv")
    with pytest.raises(ReplayError, match="is empty"):
        load_csv(_write(tmp_path, ""))
    with pytest.raises(ReplayError, match="at least one value column"):
        load_csv(_write(tmp_path, "timestamp\n1\n"))
    with pytest.raises(ConfigError, match="stream id must match"):
        load_csv(TAXI, "bad id with spaces")
