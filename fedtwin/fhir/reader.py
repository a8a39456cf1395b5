"""Read a site's Bulk FHIR export folder into per-patient series, consents and a report.

Invariants:

* files are streamed (``Patient`` first, then ``Observation``, ``MedicationAdministration``,
  ``Procedure``, ``Consent``); per-patient records are kept in compact typed arrays
  (``array('d')``/``array('I')``), never as resource objects;
* every resource is validated by fhir.resources, fully or through the exact validated-shape
  cache (:mod:`fedtwin.fhir.fastpath`), before anything is read from it;
* every line read is counted once as used or rejected (:class:`~fedtwin.fhir.report.Tally`);
  records that wait for a whole-export decision (duplicate ids, same-bin readings, span,
  enough data) are decided in :meth:`_SiteReader.finish`, each exactly once;
* under a ``strict`` policy the first invalid record stops the ingest with
  ``<file>:<line>: <reason>`` and nothing is returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fedtwin.errors import IngestError
from fedtwin.fhir.assemble import PatientInfo, PointSink, SeriesAssembler, check_duplicates
from fedtwin.fhir.consents import consent_patient_id
from fedtwin.fhir.duplicates import DuplicateIds
from fedtwin.fhir.fastpath import ShapeCache
from fedtwin.fhir.ndjson import (
    FhirVersion,
    ParsedResource,
    VersionChoice,
    detect_version,
    find_resource_file,
    iter_json_lines,
    r5_only_keys,
    validate_resource,
)
from fedtwin.fhir.profile import RANGES, Dimension, Measure
from fedtwin.fhir.records import (
    MedicationPlan,
    ObservationPlan,
    Skip,
    medication_plan,
    observation_plan,
    parse_birth_date,
    parse_time,
    procedure_time,
    radiotherapy_dose,
    time_memo,
)
from fedtwin.fhir.references import patient_id_of
from fedtwin.fhir.report import ErrorClass, IngestPolicy, IngestReport, Rejection, Tally
from fedtwin.fhir.series import DAY_S, OncologySeries, PatientSeries
from fedtwin.fhir.summary import summarise

_VARIABLE: dict[str, tuple[tuple[str, ...], ...]] = {
    "Observation": (
        ("id",),
        ("meta", "lastUpdated"),
        ("meta", "versionId"),
        ("subject", "reference"),
        ("encounter", "reference"),
        ("effectiveDateTime",),
        ("effectiveInstant",),
        ("effectivePeriod", "start"),
        ("effectivePeriod", "end"),
        ("issued",),
        ("valueQuantity", "value"),
    ),
    "MedicationAdministration": (
        ("id",),
        ("meta", "lastUpdated"),
        ("meta", "versionId"),
        ("subject", "reference"),
        ("dosage", "dose", "value"),
        ("dosage", "rateQuantity", "value"),
    ),
}
_MA_TIMES = {
    FhirVersion.R4B: (
        ("context", "reference"),
        ("effectiveDateTime",),
        ("effectivePeriod", "start"),
        ("effectivePeriod", "end"),
    ),
    FhirVersion.R5: (
        ("encounter", "reference"),
        ("occurenceDateTime",),
        ("occurencePeriod", "start"),
        ("occurencePeriod", "end"),
    ),
}
_MEMO = {("subject", "reference"), ("effectiveDateTime",), ("valueQuantity", "value")}


class IngestOptions(BaseModel):
    """How a site export is read.

    Parameters
    ----------
    policy : IngestPolicy
        Strict (default) or lenient, per error class.
    fhir_version : {"auto", "R4B", "R5"}
        Release rule (:func:`~fedtwin.fhir.ndjson.detect_version`).
    max_span_days : float
        Longest history kept per patient: records older than this before the patient's latest
        record are not used (``outside_span``).
    min_cgm_readings : int
        Glucose readings a patient needs to be usable (12 = one hour at 5 min).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy: IngestPolicy = IngestPolicy()
    fhir_version: VersionChoice = "auto"
    max_span_days: float = Field(90.0, gt=0, le=3660)
    min_cgm_readings: int = Field(12, ge=1)


@dataclass(frozen=True)
class SiteExport:
    """What a site export yields.

    Attributes
    ----------
    patients : tuple[PatientSeries, ...]
        Usable glucose patients, in ``Patient.ndjson`` order.
    oncology : tuple[OncologySeries, ...]
        Usable oncology patients, in ``Patient.ndjson`` order.
    consents : dict[str, list[ParsedResource]]
        Local patient id → validated consents (for ``fedtwin.consent``).
    report : IngestReport
        Counts, time span and sampling (no patient identifiers).
    """

    patients: tuple[PatientSeries, ...]
    oncology: tuple[OncologySeries, ...]
    consents: dict[str, list[ParsedResource]]
    report: IngestReport


def read_site(folder: Path, *, secret: bytes, options: IngestOptions | None = None) -> SiteExport:
    """Read a Bulk FHIR export folder.

    Parameters
    ----------
    folder : Path
        Holds ``Patient.ndjson`` (required) and any of ``Observation``,
        ``MedicationAdministration``, ``Procedure``, ``Consent`` (``.ndjson`` or
        ``.ndjson.gz``).
    secret : bytes
        Site secret for the patients' keyed pseudonyms (:func:`fedtwin.fhir.pseudonym`).
    options : IngestOptions or None
        Policy, FHIR release rule and grid limits; defaults to strict.

    Returns
    -------
    SiteExport
        Series, consents and the report.

    Raises
    ------
    IngestError
        ``<file>:<line>: <reason>`` for the first invalid record under a strict policy, or
        for a folder that is not an export.
    """
    return _SiteReader(folder, secret, options or IngestOptions()).run()


class _SiteReader:
    def __init__(self, folder: Path, secret: bytes, options: IngestOptions) -> None:
        if not folder.is_dir():
            raise IngestError(f"{folder}: not a folder")
        self.folder = folder
        self.secret = secret
        self.options = options
        self.tally = Tally(options.policy)
        self.patients: dict[str, PatientInfo] = {}
        self.files: dict[str, Path] = {}
        self.duplicates: dict[str, DuplicateIds] = {}
        self.consents: dict[str, list[ParsedResource]] = {}
        self._ref_cache: dict[str, str | Skip] = {}

    # -- file loop ---------------------------------------------------------------------------

    def _lines(self, resource_type: str) -> Iterator[tuple[int, dict[str, Any] | Rejection]]:
        return iter_json_lines(
            self.files[resource_type], resource_type, on_file_problem=self.tally.file_problem
        )

    def _reject(self, resource_type: str, cls: ErrorClass, line: int, reason: str) -> None:
        self.tally.reject(resource_type, Rejection(cls, self.files[resource_type], line, reason))

    def _validate(self, resource_type: str, obj: dict[str, Any], line: int) -> FhirVersion | None:
        version = detect_version(obj, self.options.fhir_version)
        outcome = validate_resource(obj, self.files[resource_type], line, version)
        if isinstance(outcome, Rejection):
            self.tally.reject(resource_type, outcome)
            return None
        return version

    def _patient(self, holder: object) -> str | Skip:
        """Local id of a known patient from a ``subject``-like Reference, or why not."""
        reference = holder.get("reference") if isinstance(holder, dict) else None
        cached = self._ref_cache.get(reference) if type(reference) is str else None
        if cached is not None:
            return cached
        patient = patient_id_of(reference)
        result: str | Skip
        if patient is None:
            result = _NOT_A_PATIENT
        elif patient in self.patients:
            result = patient
        else:
            result = _UNKNOWN
        if type(reference) is str and len(self._ref_cache) < 1_000_000:
            self._ref_cache[reference] = result
        return result

    def run(self) -> SiteExport:
        for resource_type in (
            "Patient",
            "Observation",
            "MedicationAdministration",
            "Procedure",
            "Consent",
        ):
            path = find_resource_file(self.folder, resource_type)
            if path is not None:
                self.files[resource_type] = path
                self.duplicates[resource_type] = DuplicateIds()
        if "Patient" not in self.files:
            raise IngestError(f"{self.folder}: no Patient.ndjson (or .ndjson.gz) in the export")
        self._read_patients()
        if "Observation" in self.files:
            self._read_observations()
        if "MedicationAdministration" in self.files:
            self._read_medications()
        if "Procedure" in self.files:
            self._read_procedures()
        if "Consent" in self.files:
            self._read_consents()
        return self.finish()

    def _read_patients(self) -> None:
        kind = "Patient"
        seen: dict[str, int] = {}
        for line, obj in self._lines(kind):
            self.tally.read(kind)
            if isinstance(obj, Rejection):
                self.tally.reject(kind, obj)
                continue
            if self._validate(kind, obj, line) is None:
                continue
            patient_id = obj.get("id")
            if not isinstance(patient_id, str):
                self._reject(kind, ErrorClass.MISSING_ELEMENT, line, "Patient has no id")
                continue
            if patient_id in seen:
                self._reject(
                    kind,
                    ErrorClass.DUPLICATE_ID,
                    line,
                    f"duplicate id (first at line {seen[patient_id]})",
                )
                continue
            seen[patient_id] = line
            gender = obj.get("gender")
            self.patients[patient_id] = PatientInfo(parse_birth_date(obj.get("birthDate")), gender)
            self.tally.use(kind)

    def _read_observations(self) -> None:
        # The hot loop of a CGM export (millions of lines): lookups are hoisted into locals
        # and the repeated values (subject, time) go through dict caches.
        kind = "Observation"
        caches: dict[FhirVersion, ShapeCache] = {}
        remember_hash, remember_line = self.duplicates[kind].appenders()
        reject = self._reject
        choice = self.options.fhir_version
        fixed = None if choice == "auto" else FhirVersion(choice)
        r5_keys = r5_only_keys(kind)
        ref_cache = self._ref_cache
        time_cache = time_memo()
        sinks: dict[tuple[str, Measure], PointSink] = {}
        read = 0
        for line, obj in self._lines(kind):
            read += 1
            if type(obj) is Rejection:
                self.tally.reject(kind, obj)
                continue
            assert isinstance(obj, dict)
            version = fixed or (FhirVersion.R4B if r5_keys.isdisjoint(obj) else FhirVersion.R5)
            cache = caches.get(version)
            if cache is None:
                cache = caches[version] = ShapeCache(kind, version, _VARIABLE[kind], tuple(_MEMO))
            matched, plan = cache.match(obj)
            if not matched:
                if self._validate(kind, obj, line) is None:
                    continue
                plan = observation_plan(obj)
                cache.learn(obj, plan)
            resource_id = obj.get("id")
            if type(resource_id) is str:
                remember_hash(hash(resource_id))
                remember_line(line)
            if type(plan) is Skip:
                reject(kind, plan.error_class, line, plan.reason)
                continue
            assert isinstance(plan, ObservationPlan)
            subject = obj.get("subject")
            reference = subject.get("reference") if type(subject) is dict else None
            patient = ref_cache.get(reference) if type(reference) is str else None
            if patient is None:
                patient = self._patient(subject)
            if type(patient) is Skip:
                reject(kind, patient.error_class, line, patient.reason)
                continue
            raw_time = obj[plan.time_key]
            if plan.time_key == "effectivePeriod":
                raw_time = raw_time.get("start")
            when = time_cache.get(raw_time) if type(raw_time) is str else None
            if when is None:
                when = parse_time(raw_time)
            if type(when) is str:
                reject(kind, ErrorClass.TIMESTAMP, line, f"{plan.time_key}: {when}")
                continue
            quantity = (
                obj["valueQuantity"]
                if plan.component is None
                else obj["component"][plan.component]["valueQuantity"]
            )
            number = quantity["value"]
            if type(number) is not float and type(number) is not int:
                reason = "valueQuantity.value is not a JSON number"
                reject(kind, ErrorClass.FHIR_INVALID, line, reason)
                continue
            value = number * plan.factor
            if not plan.low <= value <= plan.high:
                unit = plan.dimension.value
                bounds = f"[{plan.low:g}, {plan.high:g}]"
                reason = f"{plan.measure.value} {value:g} {unit} outside {bounds}"
                reject(kind, ErrorClass.OUT_OF_RANGE, line, reason)
                continue
            if plan.dimension is Dimension.LENGTH:
                value = math.pi * value**3 / 6.0  # sphere of that diameter, cm3
            sink = sinks.get((patient, plan.measure))  # type: ignore[arg-type]
            if sink is None:
                columns = self.patients[patient].columns(plan.measure)  # type: ignore[index]
                sink = sinks[(patient, plan.measure)] = columns.point_sink()  # type: ignore[index]
            add_time, add_value, add_line = sink
            add_time(when)  # type: ignore[arg-type]
            add_value(value)
            add_line(line)
        self.tally.read(kind, read)

    def _read_medications(self) -> None:
        kind = "MedicationAdministration"
        caches: dict[FhirVersion, ShapeCache] = {}
        duplicates = self.duplicates[kind]
        choice = self.options.fhir_version
        read = 0
        for line, obj in self._lines(kind):
            read += 1
            if type(obj) is Rejection:
                self.tally.reject(kind, obj)
                continue
            assert isinstance(obj, dict)
            version = detect_version(obj, choice)
            cache = caches.get(version)
            if cache is None:
                paths = _VARIABLE[kind] + _MA_TIMES[version]
                cache = caches[version] = ShapeCache(kind, version, paths, tuple(_MEMO))
            matched, plan = cache.match(obj)
            if not matched:
                if self._validate(kind, obj, line) is None:
                    continue
                plan = medication_plan(obj)
                cache.learn(obj, plan)
            duplicates.add(obj.get("id"), line)
            if type(plan) is Skip:
                self._reject(kind, plan.error_class, line, plan.reason)
                continue
            assert isinstance(plan, MedicationPlan)
            problem = self._medication_record(obj, plan, line)
            if problem is not None:
                self._reject(kind, problem.error_class, line, problem.reason)
        self.tally.read(kind, read)

    def _medication_record(
        self, obj: dict[str, Any], plan: MedicationPlan, line: int
    ) -> Skip | None:
        patient = self._patient(obj.get("subject"))
        if isinstance(patient, Skip):
            return patient
        if plan.period:
            period = obj[plan.time_key]
            t0 = parse_time(period.get("start"))
            t1 = parse_time(period.get("end")) if "end" in period else "period has no end"
        else:
            t0 = t1 = parse_time(obj[plan.time_key])
        if type(t0) is str or type(t1) is str:
            return Skip(ErrorClass.TIMESTAMP, f"{plan.time_key}: {t0 if type(t0) is str else t1}")
        assert isinstance(t0, float) and isinstance(t1, float)
        if plan.period and t1 <= t0:
            return Skip(
                ErrorClass.TIMESTAMP, f"{plan.time_key}: end is not after start (out of order)"
            )
        dosage = obj["dosage"]
        quantity = dosage["rateQuantity"] if plan.by_rate else dosage["dose"]
        number = quantity["value"]
        if type(number) is not float and type(number) is not int:
            return Skip(ErrorClass.FHIR_INVALID, "dosage value is not a JSON number")
        value = number * plan.factor
        dimension = (
            Dimension.INSULIN_RATE
            if plan.by_rate
            else (Dimension.INSULIN if plan.measure is Measure.INSULIN else Dimension.DRUG_MASS)
        )
        low, high = RANGES[dimension]
        if not low <= value <= high:
            return Skip(
                ErrorClass.OUT_OF_RANGE,
                f"{plan.measure.value} {value:g} {dimension.value} outside [{low:g}, {high:g}]",
            )
        amount = value * (t1 - t0) / 3600.0 if plan.by_rate else value
        measure = plan.measure
        if measure is Measure.CHEMO:
            t1 = t0  # chemotherapy counts on the day it starts
        elif plan.by_rate:
            measure = Measure.INSULIN_BASAL
        self.patients[patient].columns(measure).add(t0, t1, amount, line)
        return None

    def _read_procedures(self) -> None:
        kind = "Procedure"
        for line, obj in self._lines(kind):
            self.tally.read(kind)
            if isinstance(obj, Rejection):
                self.tally.reject(kind, obj)
                continue
            if self._validate(kind, obj, line) is None:
                continue
            self.duplicates[kind].add(obj.get("id"), line)
            dose = radiotherapy_dose(obj)
            if isinstance(dose, Skip):
                self._reject(kind, dose.error_class, line, dose.reason)
                continue
            patient = self._patient(obj.get("subject"))
            if isinstance(patient, Skip):
                self._reject(kind, patient.error_class, line, patient.reason)
                continue
            when = parse_time(procedure_time(obj))
            if isinstance(when, str):
                self._reject(kind, ErrorClass.TIMESTAMP, line, f"performed/occurrence: {when}")
                continue
            quantity, factor = dose
            number = quantity["value"]
            if type(number) is not float and type(number) is not int:
                self._reject(kind, ErrorClass.FHIR_INVALID, line, "dose value is not a JSON number")
                continue
            gray = number * factor
            low, high = RANGES[Dimension.RADIATION]
            if not low <= gray <= high:
                reason = f"radiotherapy {gray:g} Gy outside [{low:g}, {high:g}]"
                self._reject(kind, ErrorClass.OUT_OF_RANGE, line, reason)
                continue
            self.patients[patient].columns(Measure.RADIOTHERAPY).add(when, when, gray, line)

    def _read_consents(self) -> None:
        kind = "Consent"
        for line, obj in self._lines(kind):
            self.tally.read(kind)
            if isinstance(obj, Rejection):
                self.tally.reject(kind, obj)
                continue
            version = detect_version(obj, self.options.fhir_version)
            model = validate_resource(obj, self.files[kind], line, version)
            if isinstance(model, Rejection):
                self.tally.reject(kind, model)
                continue
            self.duplicates[kind].add(obj.get("id"), line)
            parsed = ParsedResource(self.files[kind], line, version, model)
            patient = consent_patient_id(parsed)
            if patient is None:
                self._reject(kind, ErrorClass.MISSING_ELEMENT, line, "Consent names no Patient")
                continue
            if patient not in self.patients:
                self._reject(kind, _UNKNOWN.error_class, line, _UNKNOWN.reason)
                continue
            self.consents.setdefault(patient, []).append(parsed)

    # -- whole-export decisions --------------------------------------------------------------

    def finish(self) -> SiteExport:
        """Decide the pending records, grid the usable patients and build the report."""
        duplicate_lines = {
            kind: check_duplicates(
                self.tally, kind, self.files[kind], finder.duplicates(self.files[kind])
            )
            for kind, finder in self.duplicates.items()
        }
        self._settle_consents(duplicate_lines.get("Consent", set()))
        assembler = SeriesAssembler(
            self.tally,
            self.files,
            duplicate_lines,
            self.secret,
            self.options.max_span_days * DAY_S,
            self.options.min_cgm_readings,
        )
        glucose, oncology = assembler.build_all(self.patients)
        report = summarise(
            self.folder.name,
            self.tally,
            len(self.patients),
            glucose,
            oncology,
            assembler.first_s,
            assembler.last_s,
        )
        return SiteExport(tuple(glucose), tuple(oncology), self.consents, report)

    def _settle_consents(self, duplicate_lines: set[int]) -> None:
        for patient, items in list(self.consents.items()):
            kept = []
            for parsed in items:
                if parsed.line in duplicate_lines:
                    self._reject("Consent", ErrorClass.DUPLICATE_ID, parsed.line, "duplicate id")
                else:
                    kept.append(parsed)
            self.tally.use("Consent", len(kept))
            if kept:
                self.consents[patient] = kept
            else:
                del self.consents[patient]


_UNKNOWN = Skip(ErrorClass.UNKNOWN_PATIENT, "subject is a patient not in Patient.ndjson")
_NOT_A_PATIENT = Skip(ErrorClass.MISSING_ELEMENT, "subject is not a Patient reference")
