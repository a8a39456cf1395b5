"""Consent resources of a site, validated and grouped per patient for the consent evaluator.

Invariant: every returned consent was validated by the fhir.resources model of its release
(R4B or R5, :func:`~fedtwin.fhir.ndjson.detect_version`) and names exactly one patient (R4B
``Consent.patient``, R5 ``Consent.subject``); a consent that names no patient is an error, never
silently dropped. No consent is interpreted here: permit/deny is ``fedtwin.consent``'s job.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from fedtwin.errors import IngestError
from fedtwin.fhir.ndjson import (
    FhirVersion,
    ParsedResource,
    VersionChoice,
    find_resource_file,
    iter_resources,
)
from fedtwin.fhir.references import patient_id_of


def consent_patient_id(parsed: ParsedResource) -> str | None:
    """The local patient id a validated consent is about (``None`` if it names none)."""
    resource: Any = parsed.resource
    holder = resource.patient if parsed.fhir_version is FhirVersion.R4B else resource.subject
    return patient_id_of(getattr(holder, "reference", None))


def read_consents(
    folder: Path,
    *,
    fhir_version: VersionChoice = "auto",
    patient_ids: Collection[str] | None = None,
) -> dict[str, list[ParsedResource]]:
    """Read ``Consent.ndjson[.gz]`` of an export folder, grouped by local patient id.

    Parameters
    ----------
    folder : Path
        The Bulk FHIR export folder.
    fhir_version : {"auto", "R4B", "R5"}, default "auto"
        Release rule (see :func:`~fedtwin.fhir.ndjson.detect_version`).
    patient_ids : Collection[str] or None
        When given, a consent about a patient outside this set is an error.

    Returns
    -------
    dict[str, list[ParsedResource]]
        Patient id → that patient's consents in file order; ``{}`` if there is no Consent file
        (no consent means default deny for the evaluator).

    Raises
    ------
    IngestError
        ``<file>:<line>: <reason>`` for the first invalid consent.
    """
    path = find_resource_file(folder, "Consent")
    grouped: dict[str, list[ParsedResource]] = {}
    if path is None:
        return grouped
    for parsed in iter_resources(path, "Consent", fhir_version=fhir_version):
        patient = consent_patient_id(parsed)
        where = f"{parsed.file}:{parsed.line}"
        if patient is None:
            field = "patient" if parsed.fhir_version is FhirVersion.R4B else "subject"
            raise IngestError(f"{where}: Consent.{field} does not reference a Patient")
        if patient_ids is not None and patient not in patient_ids:
            raise IngestError(f"{where}: consent for a patient not in Patient.ndjson")
        grouped.setdefault(patient, []).append(parsed)
    return grouped
