"""``fedtwin cohort replay`` as a user runs it: a real subprocess, checked against simglucose."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]
HEADER = "minute,cho_g_per_min,insulin_u_per_min"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*FEDTWIN, "cohort", "replay", *args], cwd=cwd, capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip


def _simglucose(name: str, cho: np.ndarray, insulin: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from simglucose.patient.t1dpatient import Action, T1DPatient

        patient = T1DPatient.withName(name)
        out = np.empty(len(cho))
        for t in range(len(cho)):
            out[t] = patient.observation.Gsub
            patient.step(Action(CHO=float(cho[t]), insulin=float(insulin[t])))
    return out


@pytest.mark.slow
def test_replay_writes_simglucose_gsub_within_half_a_mg_dl(tmp_path: Path) -> None:
    minutes = 240
    cho, insulin = np.zeros(minutes), np.full(minutes, 0.02)
    cho[20], insulin[20] = 90.0, 9.0
    insulin[120:180] = 0.0
    rows = [HEADER] + [f"{t},{cho[t]},{insulin[t]}" for t in range(minutes)]
    (tmp_path / "actions.csv").write_text("\n".join(rows) + "\n")
    result = _run(
        "--patient", "adult#003", "--actions", "actions.csv", "--out", "bg.csv", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "bg.csv").read_text().splitlines()
    assert lines[0] == "minute,bg_mg_dl" and len(lines) == minutes + 1
    minute_col = [int(line.split(",")[0]) for line in lines[1:]]
    ours = np.array([float(line.split(",")[1]) for line in lines[1:]])
    assert minute_col == list(range(minutes))
    reference = _simglucose("adult#003", cho, insulin)
    assert reference.max() - reference.min() > 30.0
    assert np.abs(ours - reference).max() < 0.5


@pytest.mark.parametrize(
    ("patient", "actions", "names"),
    [
        ("adult#011", HEADER + "\n0,0,0\n", "--patient"),
        ("adult#001", "minute,cho_g_per_min\n0,0\n", "actions.csv:1:"),
        ("adult#001", HEADER + "\n0,0,0\n1,0,0\n3,0,0\n", "actions.csv:4:"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, patient: str, actions: str, names: str
) -> None:
    (tmp_path / "actions.csv").write_text(actions)
    result = _run("--patient", patient, "--actions", "actions.csv", "--out", "bg.csv", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedtwin: error: ") and names in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["actions.csv"]


def test_missing_flag_exits_2(tmp_path: Path) -> None:
    result = _run("--patient", "adult#001", cwd=tmp_path)
    assert result.returncode == 2 and "--actions" in result.stderr
