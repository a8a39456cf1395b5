"""Builders of small Bulk FHIR exports (resources as dicts, written as NDJSON) for the tests.

Test modules reach them through the ``fhir`` fixture (a namespace of the builder functions) and
``make_export`` (writes a folder), never by importing this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"
SECRET = bytes(range(32))


def patient(pid: str = "p1", birth: str = "1980-06-15", gender: str = "female") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth, "gender": gender}


def quantity(value: Any, code: str | None, *, system: str | None = UCUM) -> dict[str, Any]:
    found: dict[str, Any] = {"value": value}
    if code is not None:
        found["unit"] = code
        found["code"] = code
    if system is not None:
        found["system"] = system
    return found


def observation(
    oid: str,
    when: str,
    value: Any = 120.0,
    unit: str | None = "mg/dL",
    *,
    code: str = "99504-3",
    subject: str = "Patient/p1",
    status: str = "final",
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        "valueQuantity": quantity(value, unit),
    }


def bolus(mid: str, when: str, units: float, subject: str = "Patient/p1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationAdministration",
        "id": mid,
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "A10AB04"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        "dosage": {"dose": quantity(units, "U")},
    }


def basal(
    mid: str, start: str, end: str, rate: float, subject: str = "Patient/p1"
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationAdministration",
        "id": mid,
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "A10AB04"}]},
        "subject": {"reference": subject},
        "effectivePeriod": {"start": start, "end": end},
        "dosage": {"rateQuantity": quantity(rate, "U/h")},
    }


def cgm_day(pid: str = "p1", hours: int = 2, prefix: str = "g") -> list[dict[str, Any]]:
    """One reading every 5 minutes from 2024-05-01T08:00Z, 100 + k mg/dL."""
    readings = []
    for k in range(hours * 12):
        minute = 8 * 60 + 5 * k
        when = f"2024-05-01T{minute // 60:02d}:{minute % 60:02d}:00Z"
        readings.append(
            observation(f"{prefix}{pid}-{k}", when, 100.0 + k, subject=f"Patient/{pid}")
        )
    return readings


def write_ndjson(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    """One JSON object (or a raw string, written as is) per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for item in lines:
            handle.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


class FhirBuilders:
    """The builders above, as one object handed to tests by the ``fhir`` fixture."""

    SECRET = SECRET
    patient = staticmethod(patient)
    quantity = staticmethod(quantity)
    observation = staticmethod(observation)
    bolus = staticmethod(bolus)
    basal = staticmethod(basal)
    cgm_day = staticmethod(cgm_day)
    write_ndjson = staticmethod(write_ndjson)


@pytest.fixture(scope="session")
def fhir() -> FhirBuilders:
    """Resource builders (dicts) and an NDJSON writer."""
    return FhirBuilders()


ExportFactory = Callable[..., Path]


@pytest.fixture
def make_export(tmp_path: Path) -> ExportFactory:
    """Write an export folder: ``make_export(Patient=[...], Observation=[...], ...)``."""
    counter = iter(range(1_000_000))

    def make(**files: Iterable[dict[str, Any] | str]) -> Path:
        folder = tmp_path / f"export-{next(counter)}"
        folder.mkdir()
        for resource_type, lines in files.items():
            write_ndjson(folder / f"{resource_type}.ndjson", lines)
        return folder

    return make
