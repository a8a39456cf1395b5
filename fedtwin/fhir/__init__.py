"""Bulk FHIR ingestion: NDJSON exports in, validated per-patient series out, and back.

Invariant: this facade re-exports the public API of :mod:`fedtwin.fhir` and nothing else.
Every record read is accounted for (used or rejected with a reason naming file and line), and
no patient identifier appears in anything meant to leave the site.
"""

from fedtwin.fhir.cache import read_site_cached
from fedtwin.fhir.consents import consent_patient_id, read_consents
from fedtwin.fhir.device_csv import DeviceCsv, read_device_csv
from fedtwin.fhir.ndjson import FhirVersion, ParsedResource, detect_version, iter_resources
from fedtwin.fhir.pseudonym import load_or_create_site_secret, pseudonym
from fedtwin.fhir.reader import IngestOptions, SiteExport, read_site
from fedtwin.fhir.report import (
    ErrorClass,
    IngestPolicy,
    IngestReport,
    Rejection,
    ResourceCounts,
    SamplingGaps,
)
from fedtwin.fhir.series import OncologySeries, PatientSeries
from fedtwin.fhir.writer import (
    ExportOptions,
    GlucoseHistory,
    OncologyHistory,
    WrittenExport,
    write_site,
)

__all__ = [
    "DeviceCsv",
    "ErrorClass",
    "ExportOptions",
    "FhirVersion",
    "GlucoseHistory",
    "IngestOptions",
    "IngestPolicy",
    "IngestReport",
    "OncologyHistory",
    "OncologySeries",
    "ParsedResource",
    "PatientSeries",
    "Rejection",
    "ResourceCounts",
    "SamplingGaps",
    "SiteExport",
    "WrittenExport",
    "consent_patient_id",
    "detect_version",
    "iter_resources",
    "load_or_create_site_secret",
    "pseudonym",
    "read_consents",
    "read_device_csv",
    "read_site",
    "read_site_cached",
    "write_site",
]
