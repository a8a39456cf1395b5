"""``fedtwin cohort replay`` and ``generate`` as a user runs them: real subprocesses.

Replay is checked against simglucose; generated sites are read back by ``fedtwin site check``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

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


def _generate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*FEDTWIN, "cohort", "generate", *args], cwd=cwd, capture_output=True, text=True,
        env=env, timeout=600,
    )  # fmt: skip


def _site_check(folder: Path) -> dict[str, Any]:
    result = subprocess.run(
        [*FEDTWIN, "site", "check", "--data", str(folder), "--json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.slow
def test_generated_sites_load_through_site_check_with_every_record_used(tmp_path: Path) -> None:
    result = _generate(
        "--kind", "t1d", "--sites", "2", "--patients", "3", "--days", "0.5", "--seed", "5",
        "--split", "age", "--consent-regime", "mixed", "--population", "published",
        "--out", "cohort", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "cohort"
    assert sorted(p.name for p in out.iterdir()) == ["ground_truth", "site-01", "site-02"]
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]  # no staging folder left
    for site in ("site-01", "site-02"):
        truth = json.loads((out / "ground_truth" / site / "site.json").read_text())
        index = json.loads((out / "ground_truth" / site / "patients.json").read_text())
        report = _site_check(out / site)
        assert report["patients_found"] == report["patients_usable"] == 3
        assert index["patient_ids"] == [f"{site}-{i:06d}" for i in range(3)]
        assert {k: v["read"] for k, v in report["resources"].items()} == truth["resources"]
        assert all(v["rejected"] == 0 for v in report["resources"].values())
        assert truth["resources"]["Consent"] >= 1 and truth["resources"]["Observation"] > 3 * 144
        patients = (out / site / "Patient.ndjson").read_text().splitlines()
        assert [json.loads(line)["id"] for line in patients] == index["patient_ids"]
    regimes = [
        json.loads((out / "ground_truth" / s / "site.json").read_text())["consent_regime"]
        for s in ("site-01", "site-02")
    ]
    assert regimes == ["opt-in", "opt-out"]


def test_generate_zero_patients_exits_2_naming_the_flag(tmp_path: Path) -> None:
    result = _generate(
        "--kind", "t1d", "--sites", "2", "--patients", "0", "--days", "1", "--out", "c",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedtwin: error: --patients: ")
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_a_non_empty_out_folder_and_leaves_it_alone(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("keep me\n")
    result = _generate(
        "--kind", "oncology", "--sites", "1", "--patients", "1", "--days", "3", "--out", "c",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("fedtwin: error: --out: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["notes.txt"]
