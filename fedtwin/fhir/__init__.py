"""Bulk FHIR ingestion: NDJSON exports in, validated per-patient series out, and back.

Invariant: this facade re-exports the public API of :mod:`fedtwin.fhir` and nothing else.
Every record read is accounted for (used or rejected with a reason naming file and line), and
no patient identifier appears in anything meant to leave the site.
"""

from fedtwin.fhir.consents import consent_patient_id, read_consents
from fedtwin.fhir.ndjson import FhirVersion, ParsedResource, detect_version, iter_resources
from fedtwin.fhir.report import (
    ErrorClass,
    IngestPolicy,
    IngestReport,
    Rejection,
    ResourceCounts,
    SamplingGaps,
)

__all__ = [
    "ErrorClass",
    "FhirVersion",
    "IngestPolicy",
    "IngestReport",
    "ParsedResource",
    "Rejection",
    "ResourceCounts",
    "SamplingGaps",
    "consent_patient_id",
    "detect_version",
    "iter_resources",
    "read_consents",
]
