"""Device CSV (time,glucose_mg_dl,insulin_u,carbs_g) into one series, errors at file:line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedtwin.errors import IngestError
from fedtwin.fhir import ErrorClass, IngestPolicy, read_device_csv

SECRET = bytes(32)
HEADER = "time,glucose_mg_dl,insulin_u,carbs_g"


def _csv(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "device.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_rows_become_the_five_minute_grid(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "2024-05-01T10:00:00+02:00,110,,",
        "2024-05-01T10:05:00+02:00,115,4.5,60",
        "2024-05-01T10:07:30+02:00,,1.0,",
        "2024-05-01T10:15:00+02:00,130,0,0",
    )
    result = read_device_csv(path, patient_id="local-7", secret=SECRET)
    series = result.series
    assert series.start.isoformat() == "2024-05-01T08:00:00+00:00"
    np.testing.assert_array_equal(series.cgm_mg_dl, np.float32([110, 115, np.nan, 130]))
    assert series.insulin_u.tolist() == [0.0, 5.5, 0.0, 0.0]
    assert series.insulin_mask.tolist() == [False, True, True, True]
    assert series.carbs_g.tolist() == [0.0, 60.0, 0.0, 0.0]
    assert result.report.resources["DeviceCSV"].used == 4


def test_extra_columns_are_ignored_with_a_note(tmp_path: Path) -> None:
    path = _csv(tmp_path, "2024-05-01T10:00:00Z,110,,,Dexcom,x", header=HEADER + ",device,notes")
    result = read_device_csv(path, patient_id="p", secret=SECRET)
    assert result.ignored_columns == ("device", "notes")
    assert "ignored column(s): device, notes" in result.report.notes


def test_time_without_offset_names_file_and_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, "2024-05-01T10:00:00Z,110,,", "2024-05-01T10:05:00,111,,")
    with pytest.raises(IngestError) as caught:
        read_device_csv(path, patient_id="p", secret=SECRET)
    assert str(caught.value) == f"{path}:3: time has no UTC offset"


def test_rows_out_of_order_are_rejected(tmp_path: Path) -> None:
    path = _csv(tmp_path, "2024-05-01T10:05:00Z,110,,", "2024-05-01T10:00:00Z,111,,")
    with pytest.raises(IngestError, match=r"device.csv:3: time is not after the row at line 2"):
        read_device_csv(path, patient_id="p", secret=SECRET)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2024-05-01T10:05:00Z,abc,,", "glucose_mg_dl is not a number"),
        ("2024-05-01T10:05:00Z,nan,,", "glucose_mg_dl is not a finite number"),
        ("2024-05-01T10:05:00Z,5,,", "glucose_mg_dl 5 outside [10, 1000]"),
        ("2024-05-01T10:05:00Z,100,-1,", "insulin_u -1 outside [0, 100]"),
        ("2024-05-01T10:05:00Z,100,,", None),
        ("2024-05-01T10:05:00Z,100", "row has 2 fields, the header has 4"),
    ],
)
def test_bad_values_name_the_line_and_lenient_counts_them(
    tmp_path: Path, row: str, reason: str | None
) -> None:
    path = _csv(tmp_path, "2024-05-01T10:00:00Z,110,,", row, "2024-05-01T10:10:00Z,120,,")
    if reason is None:
        assert read_device_csv(path, patient_id="p", secret=SECRET).report.rejected == 0
        return
    with pytest.raises(IngestError) as caught:
        read_device_csv(path, patient_id="p", secret=SECRET)
    assert str(caught.value) == f"{path}:3: {reason}"
    lenient = read_device_csv(path, patient_id="p", secret=SECRET, policy=IngestPolicy.lenient())
    counts = lenient.report.resources["DeviceCSV"]
    assert (counts.read, counts.used, counts.rejected) == (3, 2, 1)


def test_missing_column_and_empty_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"device.csv:1: missing column\(s\) carbs_g"):
        read_device_csv(
            _csv(tmp_path, header="time,glucose_mg_dl,insulin_u"), patient_id="p", secret=SECRET
        )
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(IngestError, match="empty file"):
        read_device_csv(empty, patient_id="p", secret=SECRET)


def test_row_without_any_value_is_counted_as_no_value(tmp_path: Path) -> None:
    path = _csv(tmp_path, "2024-05-01T10:00:00Z,110,,", "2024-05-01T10:05:00Z,,,")
    report = read_device_csv(path, patient_id="p", secret=SECRET).report
    assert report.resources["DeviceCSV"].rejected_by_reason == {ErrorClass.NO_VALUE: 1}
