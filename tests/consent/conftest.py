"""Builders of FHIR Consent resources (R4B and R5 forms) and small exports for consent tests.

Test modules reach them through the ``consents`` fixture (a namespace of builders), never by
importing this file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ROLE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "IRCP"}]}  # fmt: skip
CONSORTIUM = "Organization/fedtwin-consortium"


def purposes(*codes: str) -> list[dict[str, str]]:
    return [{"system": ACT_REASON, "code": code} for code in codes]


def actors(*references: str, r4: bool = True) -> list[dict[str, Any]]:
    found = []
    for reference in references:
        entry: dict[str, Any] = {"reference": {"reference": reference}}
        if r4:
            entry["role"] = ROLE
        found.append(entry)
    return found


def rule(
    *,
    type: str | None = None,
    purpose: Iterable[str] = (),
    actor: Iterable[str] = (),
    period: dict[str, str] | None = None,
    data_period: dict[str, str] | None = None,
    classes: Iterable[str] = (),
    nested: Iterable[dict[str, Any]] = (),
    r4: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """One provision; R4 classes go in ``class``, R5 ones in ``resourceType``."""
    found: dict[str, Any] = {}
    if type is not None:
        found["type"] = type
    if purpose := list(purpose):
        found["purpose"] = purposes(*purpose)
    if actor := list(actor):
        found["actor"] = actors(*actor, r4=r4)
    if period is not None:
        found["period"] = period
    if data_period is not None:
        found["dataPeriod"] = data_period
    if classes := list(classes):
        system = "http://hl7.org/fhir/resource-types" if r4 else "http://hl7.org/fhir/fhir-types"
        found["class" if r4 else "resourceType"] = [{"system": system, "code": c} for c in classes]
    if nested := list(nested):
        found["provision"] = nested
    found.update(extra)
    return found


def r4(
    provision: dict[str, Any] | None = None,
    *,
    cid: str = "c1",
    patient: str = "p1",
    status: str = "active",
    when: str | None = "2024-01-01T00:00:00Z",
    scope: str = "research",
    updated: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An R4/R4B Consent (``scope``, ``patient``, ``dateTime``, one root ``provision``)."""
    found: dict[str, Any] = {
        "resourceType": "Consent",
        "id": cid,
        "status": status,
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": scope}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
    }
    if when is not None:
        found["dateTime"] = when
    if updated is not None:
        found["meta"] = {"lastUpdated": updated}
    if provision is not None:
        found["provision"] = provision
    found.update(extra)
    return found


def r5(
    decision: str | None = "permit",
    provisions: Iterable[dict[str, Any]] = (),
    *,
    cid: str = "c5",
    patient: str = "p1",
    status: str = "active",
    when: str | None = "2024-01-01",
    period: dict[str, str] | None = None,
    updated: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An R5 Consent (``subject``, ``date``, root ``decision``, ``provision`` list)."""
    found: dict[str, Any] = {
        "resourceType": "Consent",
        "id": cid,
        "status": status,
        "subject": {"reference": f"Patient/{patient}"},
    }
    if decision is not None:
        found["decision"] = decision
    if when is not None:
        found["date"] = when
    if period is not None:
        found["period"] = period
    if updated is not None:
        found["meta"] = {"lastUpdated": updated}
    if provisions := list(provisions):
        found["provision"] = provisions
    found.update(extra)
    return found


def write_export(
    folder: Path,
    consents: Iterable[dict[str, Any]],
    patients: Iterable[str] | None = None,
    *,
    raw_lines: Iterable[str] = (),
) -> Path:
    """A Bulk export folder: Consent.ndjson (plus Patient.ndjson when ``patients`` is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(c) for c in consents] + list(raw_lines)
    (folder / "Consent.ndjson").write_text("".join(f"{line}\n" for line in lines))
    if patients is not None:
        text = "".join(json.dumps({"resourceType": "Patient", "id": p}) + "\n" for p in patients)
        (folder / "Patient.ndjson").write_text(text)
    return folder


@pytest.fixture
def consents() -> SimpleNamespace:
    """Builders: ``r4``, ``r5``, ``rule``, ``purposes``, ``actors``, ``write_export``."""
    return SimpleNamespace(
        r4=r4,
        r5=r5,
        rule=rule,
        purposes=purposes,
        actors=actors,
        write_export=write_export,
        CONSORTIUM=CONSORTIUM,
    )
