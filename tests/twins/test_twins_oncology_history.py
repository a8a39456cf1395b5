"""The oncology history CSV: strict rows, consecutive days, protocol doses, errors name the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtwin.errors import IngestError
from fedtwin.twins.oncology_history import HISTORY_COLUMNS, read_tumour_history

HEADER = ",".join(HISTORY_COLUMNS)


def _write(tmp_path: Path, *rows: str, header: str = HEADER) -> Path:
    path = tmp_path / "history.csv"
    path.write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    return path


def test_valid_history_reads_every_day(tmp_path: Path) -> None:
    history = read_tumour_history(_write(tmp_path, "7,30.5,0,0", "8,31,5,2", "9,29.0,0,2"))
    assert history.first_day == 7 and len(history) == 3
    assert history.volume_cm3.tolist() == [30.5, 31.0, 29.0]
    assert history.chemo_mg.tolist() == [0, 5, 0] and history.radio_gy.tolist() == [0, 2, 2]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (("0,30,0,0", "2,30,0,0"), r"history\.csv:3: day: 2 leaves a gap after day 0"),
        (("0,30,0,0", "0,30,0,0"), r"history\.csv:3: day: 0 repeats or goes back"),
        (("0,-1,0,0",), r"history\.csv:2: tumour_volume_cm3: -1 must be > 0"),
        (("0,30,-5,0",), r"history\.csv:2: chemo_dose_mg: -5 is negative"),
        (("0,30,0,3",), r"history\.csv:2: radio_dose_gy: 3 is neither 0 nor the protocol dose 2"),
        (("0,thirty,0,0",), r"history\.csv:2: tumour_volume_cm3: 'thirty' is not a number"),
        (("0,30,0",), r"history\.csv:2: 3 fields, expected 4"),
        (("0,nan,0,0",), r"history\.csv:2: tumour_volume_cm3: 'nan' is not finite"),
    ],
)
def test_bad_row_is_named_by_line_and_column(
    tmp_path: Path, rows: tuple[str, ...], message: str
) -> None:
    with pytest.raises(IngestError, match=message):
        read_tumour_history(_write(tmp_path, *rows))


def test_unknown_column_is_named(tmp_path: Path) -> None:
    header = "day,tumour_volume_cm3,chemo_dose_mg,radio_dose_gy,stage"
    with pytest.raises(IngestError, match=r"history\.csv:1: .*unknown column 'stage'"):
        read_tumour_history(_write(tmp_path, "0,1,0,0,3", header=header))


def test_header_only_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no rows after the header"):
        read_tumour_history(_write(tmp_path))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.text(alphabet="0123456789,.-e\nabn ", max_size=80))
def test_any_text_reads_or_is_an_ingest_error(tmp_path: Path, body: str) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_text(HEADER + "\n" + body, encoding="utf-8")
    try:
        history = read_tumour_history(path)
    except IngestError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error)
    else:
        assert (history.volume_cm3 > 0).all() and (history.days[1:] - history.days[:-1] == 1).all()
