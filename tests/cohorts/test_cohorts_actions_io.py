"""Strict parsing of action CSVs and atomic writing of glucose CSVs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtwin.cohorts import read_actions_csv, write_glucose_csv
from fedtwin.errors import ConfigError, IngestError

HEADER = "minute,cho_g_per_min,insulin_u_per_min"


def write(tmp_path: Path, text: str, name: str = "actions.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_file_parses_in_any_column_order(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffinsulin_u_per_min, minute ,cho_g_per_min\n0.02,0,0\n0.5,1,45\n\n")
    actions = read_actions_csv(path)
    assert actions.minutes == 2
    assert actions.cho_g_per_min.tolist() == [0.0, 45.0]
    assert actions.insulin_u_per_min.tolist() == [0.02, 0.5]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "empty"),
        (HEADER + "\n", 2, "no action rows"),
        ("minute,cho_g_per_min\n0,0\n", 1, "missing column 'insulin_u_per_min'"),
        (HEADER + ",note\n0,0,0,x\n", 1, "unknown column 'note'"),
        ("minute,minute,insulin_u_per_min\n", 1, "appears twice"),
        (HEADER + "\n0,0,0\n2,0,0\n", 3, "expected 1, got 2"),
        (HEADER + "\n0,0,0\n0,0,0\n", 3, "expected 1, got 0"),
        (HEADER + "\n1,0,0\n", 2, "start at 0"),
        (HEADER + "\n0,0,-0.1\n", 2, "insulin_u_per_min: must be >= 0"),
        (HEADER + "\n0,-5,0\n", 2, "cho_g_per_min: must be >= 0"),
        (HEADER + "\n0,abc,0\n", 2, "'abc' is not a number"),
        (HEADER + "\n0,nan,0\n", 2, "not finite"),
        (HEADER + "\n0.5,0,0\n", 2, "not a whole number"),
        (HEADER + "\n0,0\n", 2, "expected 3 values, got 2"),
    ],
)
def test_malformed_files_name_file_line_and_problem(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(IngestError) as caught:
        read_actions_csv(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}:") and words in message


def test_missing_file_is_an_ingest_error(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="cannot read"):
        read_actions_csv(tmp_path / "nope.csv")


CELL = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet="ab,.-e \t", max_size=4),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.tuples(CELL, CELL, CELL), min_size=1, max_size=6))
def test_any_file_either_parses_consistently_or_fails_with_a_line(
    tmp_path: Path, rows: list[tuple[str, str, str]]
) -> None:
    text = HEADER + "\n" + "\n".join(",".join(r) for r in rows) + "\n"
    path = write(tmp_path, text, "fuzz.csv")
    try:
        actions = read_actions_csv(path)
    except IngestError as error:
        assert re.match(rf"^{re.escape(str(path))}:\d+: ", str(error))
        return
    assert actions.minutes >= 1
    assert np.all(actions.cho_g_per_min >= 0) and np.all(np.isfinite(actions.insulin_u_per_min))


def test_glucose_csv_is_written_whole_with_full_precision(tmp_path: Path) -> None:
    values = np.array([138.56, 1.0 / 3.0, 250.123456789012])
    out = tmp_path / "bg.csv"
    write_glucose_csv(out, values)
    lines = out.read_text().splitlines()
    assert lines[0] == "minute,bg_mg_dl" and len(lines) == 4
    assert [float(line.split(",")[1]) for line in lines[1:]] == values.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bg.csv"]


def test_unwritable_destination_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--out"):
        write_glucose_csv(tmp_path / "missing" / "bg.csv", np.zeros(3))
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        write_glucose_csv(tmp_path / "folder.csv", np.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["folder.csv"]
