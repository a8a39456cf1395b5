"""``fedtwin consent`` and ``fedtwin site check --policy`` as a user runs them: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]
POLICIES = Path(__file__).resolve().parents[2] / "policies"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSORTIUM = "Organization/fedtwin-consortium"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([*FEDTWIN, *args], capture_output=True, text=True, timeout=300, env=env)


def _consent(pid: str, cid: str, when: str, **change: Any) -> dict[str, Any]:
    actor = {"role": {"text": "recipient"}, "reference": {"reference": CONSORTIUM}}
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}
            ]
        },
        "category": [{"text": "consent"}],
        "patient": {"reference": f"Patient/{pid}"},
        "dateTime": when,
        "provision": {
            "type": "permit",
            "actor": [actor],
            "purpose": [{"system": ACT_REASON, "code": "HRESCH"}],
        },
    } | change


def _export(folder: Path, consents: list[dict[str, Any]], patients: list[str]) -> Path:
    folder.mkdir()
    (folder / "Consent.ndjson").write_text("".join(json.dumps(c) + "\n" for c in consents))
    (folder / "Patient.ndjson").write_text(
        "".join(json.dumps({"resourceType": "Patient", "id": p}) + "\n" for p in patients)
    )
    return folder


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """p1 research consent; p2 withdrawn on 2025-03-01 (an R5 deny-all); p3 none; p4 R5 trap."""
    consents = [
        _consent("p1", "c1", "2024-01-01T00:00:00Z"),
        _consent("p2", "c2", "2024-01-01T00:00:00Z"),
        {"resourceType": "Consent", "id": "c3", "status": "active", "decision": "deny",
         "subject": {"reference": "Patient/p2"}, "date": "2025-03-01"},
        {"resourceType": "Consent", "id": "c4", "status": "active", "decision": "permit",
         "subject": {"reference": "Patient/p4"}, "date": "2024-01-01",
         "provision": [{"purpose": [{"system": ACT_REASON, "code": "HRESCH"}]}]},
    ]  # fmt: skip
    return _export(tmp_path / "export", consents, ["p1", "p2", "p3", "p4"])


def test_evaluate_json_prints_one_decision_per_patient(export: Path) -> None:
    before = _run("consent", "evaluate", "--consents", str(export), "--purpose", "HRESCH",
                  "--actor", CONSORTIUM, "--at", "2025-02-01T00:00:00Z", "--json")  # fmt: skip
    assert before.returncode == 0, before.stderr
    lines = [json.loads(line) for line in before.stdout.splitlines()]
    assert [set(line) for line in lines] == [{"patient", "decision", "reasons"}] * 4
    decided = {line["patient"]: (line["decision"], line["reasons"][0]) for line in lines}
    assert decided == {
        "p1": ("permit", "consent-permit"),
        "p2": ("permit", "consent-permit"),
        "p3": ("deny", "no-consent"),
        "p4": ("deny", "consent-deny"),
    }
    assert "summary: 4 patients" in before.stderr and "2 permit, 2 deny" in before.stderr


def test_withdrawal_counts_from_its_date_and_opt_out_permits_the_silent(export: Path) -> None:
    after = _run("consent", "evaluate", "--consents", str(export), "--purpose", "HRESCH",
                 "--actor", CONSORTIUM, "--at", "2025-03-01T00:00:00Z", "--regime", "opt-out",
                 "--json")  # fmt: skip
    assert after.returncode == 0, after.stderr
    lines = {json.loads(line)["patient"]: json.loads(line) for line in after.stdout.splitlines()}
    assert {p: line["decision"] for p, line in lines.items()} == {
        "p1": "permit",
        "p2": "deny",
        "p3": "permit",
        "p4": "deny",
    }
    assert lines["p2"]["reasons"][0] == "consent-withdrawn"
    assert lines["p3"]["reasons"][0] == "opt-out-default"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"status": "revoked"}, "Consent.ndjson:2: Consent.status: unknown R4B status 'revoked'"),
        ({"provision": {"type": "permit", "period": {"start": "2025-01-01", "end": "2024-01-01"}}},
         "Consent.ndjson:2: Consent.provision.period: period ends before it starts"),
        ({"patient": "not-a-reference"}, "Consent.ndjson:2: fails FHIR R4B validation at patient"),
    ],
)  # fmt: skip
def test_bad_consent_exits_2_with_one_line_naming_file_and_line(
    change: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    good = _consent("p1", "c1", "2024-01-01T00:00:00Z")
    bad = _consent("p2", "c2", "2024-01-01T00:00:00Z") | change
    folder = _export(tmp_path / "export", [good, bad], ["p1", "p2"])
    result = _run("consent", "evaluate", "--consents", str(folder), "--purpose", "HRESCH", "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("fedtwin: error: ") and expected in line


def test_unknown_purpose_flag_exits_2(export: Path) -> None:
    result = _run("consent", "evaluate", "--consents", str(export), "--purpose", "HRESEARCH")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "fedtwin: error: --purpose: unknown v3-ActReason purpose of use code 'HRESEARCH'"
    )


def test_policy_with_unknown_key_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    text = (POLICIES / "site-opt-in-research.toml").read_text()
    path.write_text(text.replace('regime = "opt-in"', 'regime = "opt-in"\nepsilon = 3'))
    result = _run("consent", "policy", "--site", str(path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"fedtwin: error: {path}: epsilon: unknown key"


def test_policy_command_prints_hashes_and_compatibility() -> None:
    result = _run("consent", "policy", "--site", str(POLICIES / "site-opt-out.toml"),
                  "--consortium", str(POLICIES / "consortium.toml"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("sha256:") == 2
    assert "site site-b accepts glucose-twin runs of study fedtwin-demo" in result.stdout


def test_site_check_counts_patients_the_consents_permit(tmp_path: Path) -> None:
    from datetime import UTC, date, datetime

    import numpy as np

    from fedtwin.consent import synthetic_consents
    from fedtwin.fhir import GlucoseHistory, write_site

    ids = [f"p{i}" for i in range(6)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    resources = synthetic_consents(
        ids, study_start=start, study_end=datetime(2026, 6, 1, tzinfo=UTC), seed=4
    )
    bins = 48
    histories = [
        GlucoseHistory(
            patient_id=pid,
            birth_date=date(1980, 1, 1),
            sex="female",
            start=start,
            cgm_mg_dl=np.full(bins, 120.0),
            carbs_g=np.zeros(bins),
            bolus_u=np.zeros(bins),
            basal_u_per_h=np.zeros(bins),
            consents=tuple(r for r in resources if r["patient"]["reference"] == f"Patient/{pid}"),
        )
        for pid in ids
    ]
    folder = write_site(tmp_path / "export", histories).folder
    policy = str(POLICIES / "site-opt-in-research.toml")
    at = "2026-02-01T00:00:00Z"
    result = _run("site", "check", "--data", str(folder), "--policy", policy, "--at", at)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if "patients at 2026-02-01" in line]
    assert "6 patients at 2026-02-01T00:00:00+00:00 (opt-in, HRESCH)" in line
    assert "below the site minimum 20" in line
    assert not any(pid in line.split(":")[-1] for pid in ids)
