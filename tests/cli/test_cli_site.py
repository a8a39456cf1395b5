"""``fedtwin site check`` as a site runs it: a real subprocess on a written export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest

from fedtwin.fhir import GlucoseHistory, write_site

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]
PATIENT_IDS = ("zq-alpha-0001", "zq-beta-0002")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([*FEDTWIN, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    steps = 48
    histories = [
        GlucoseHistory(
            patient_id=pid,
            birth_date=date(1970, 1, 1),
            sex="female",
            start=datetime(2024, 5, 1, tzinfo=UTC),
            cgm_mg_dl=np.linspace(90, 180, steps),
            carbs_g=np.zeros(steps),
            bolus_u=np.zeros(steps),
            basal_u_per_h=np.full(steps, 0.8),
        )
        for pid in PATIENT_IDS
    ]
    return write_site(tmp_path / "site", histories).folder


def _append_bad_observation(folder: Path) -> int:
    path = folder / "Observation.ndjson"
    lines = path.read_text().splitlines()
    bad = json.loads(lines[0])
    bad["id"] = "zq-bad"
    bad["valueQuantity"]["value"] = 4000
    path.write_text("\n".join([*lines, json.dumps(bad)]) + "\n")
    return len(lines) + 1


def test_valid_export_exits_0_and_json_names_no_patient(export: Path) -> None:
    result = _run("site", "check", "--data", str(export), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["patients_found"], report["patients_usable"]) == (2, 2)
    assert report["resources"]["Observation"]["read"] == 96
    for pid in PATIENT_IDS:
        assert pid not in result.stdout + result.stderr


def test_bad_record_exits_2_with_one_line_naming_file_and_line(export: Path) -> None:
    line = _append_bad_observation(export)
    result = _run("site", "check", "--data", str(export))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"fedtwin: error: {export / 'Observation.ndjson'}:{line}: cgm 4000 mg/dL outside [10, 1000]"
    )
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_lenient_check_counts_the_bad_record_and_exits_0(export: Path) -> None:
    _append_bad_observation(export)
    result = _run("site", "check", "--data", str(export), "--lenient", "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)["resources"]["Observation"]
    assert (counts["read"], counts["used"], counts["rejected_by_reason"]) == (
        97,
        96,
        {"out_of_range": 1},
    )
    assert "zq-" not in result.stdout


def test_export_without_usable_patient_exits_2(export: Path) -> None:
    result = _run("site", "check", "--data", str(export), "--min-cgm-readings", "1000")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("no usable patient (see the counts above)")
    assert "insufficient_data" in result.stdout
