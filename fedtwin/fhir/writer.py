"""Write a Bulk FHIR export folder from per-patient arrays (what the cohort generator calls).

Invariants:

* the export is written into a hidden sibling folder and renamed into place only when every
  file is complete: a crash or bad input never leaves a partial export under ``folder``;
* every resource written conforms to ``docs/fhir-profile.md`` and reads back through
  :func:`fedtwin.fhir.read_site` into the same grid values (float32), same units;
* the writer streams: one patient's resources are formatted and written before the next
  patient is looked at, so memory does not grow with the cohort;
* CGM, carbohydrate, body weight and tumour resources are Observations; insulin and
  chemotherapy are MedicationAdministrations (a bolus is a ``dose`` at a time, basal is a
  ``rateQuantity`` in U/h over a Period, constant-rate runs coalesced); radiotherapy is a
  Procedure carrying the mCODE dose-delivered extension; consents are passed through after
  validation with fhir.resources.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict

from fedtwin.errors import ConfigError
from fedtwin.fhir.consents import consent_patient_id
from fedtwin.fhir.ndjson import FhirVersion, ParsedResource, detect_version, validate_resource
from fedtwin.fhir.profile import (
    ATC,
    GLUCOSE_MG_DL_PER_MMOL_L,
    LOINC,
    MCODE_RT_DOSE,
    MCODE_RT_TOTAL_DOSE,
    UCUM,
)
from fedtwin.fhir.report import Rejection

Sex = Literal["male", "female", "other", "unknown"]
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_FILES = ("Patient", "Observation", "MedicationAdministration", "Procedure", "Consent")
_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


#: JSON string literal of a str, exactly as ``_dumps`` writes it (C-accelerated).
_json_string: Any = getattr(json.encoder, "c_encode_basestring", None) or (
    json.encoder.py_encode_basestring
)


@dataclass(frozen=True, eq=False)
class GlucoseHistory:
    """One diabetes patient as plain arrays on a regular grid.

    Attributes
    ----------
    patient_id : str
        Local id, ``[A-Za-z0-9-.]{1,64}`` (the FHIR id rule).
    birth_date : date
        Date of birth.
    sex : {"male", "female", "other", "unknown"}
        Administrative gender.
    start : datetime
        Timezone-aware start of bin 0.
    cgm_mg_dl : array_like
        ``[T]`` reading at the start of each bin, mg/dL; NaN where there is none.
    carbs_g : array_like
        ``[T]`` carbohydrate eaten in each bin (written at the bin start), g; 0 = none.
    bolus_u : array_like
        ``[T]`` bolus insulin given in each bin (written at the bin start), U; 0 = none.
    basal_u_per_h : array_like
        ``[T]`` basal rate during each bin, U/h; 0 = none (no record written).
    weight_kg : float or None
        Body weight, written as one Observation at ``start``.
    consents : tuple[dict, ...]
        Consent resources (JSON dicts, R4B or R5) about this patient, written as given.
    step_min : int
        Bin width in minutes (5 for the twin's grid).
    """

    patient_id: str
    birth_date: date
    sex: Sex
    start: datetime
    cgm_mg_dl: ArrayLike
    carbs_g: ArrayLike
    bolus_u: ArrayLike
    basal_u_per_h: ArrayLike
    weight_kg: float | None = None
    consents: tuple[dict[str, Any], ...] = ()
    step_min: int = 5


@dataclass(frozen=True, eq=False)
class OncologyHistory:
    """One oncology patient as plain arrays on a daily grid.

    Attributes
    ----------
    patient_id, birth_date, sex, weight_kg, consents
        As for :class:`GlucoseHistory`.
    start : datetime
        Timezone-aware start of day 0 (records are written at the start of their day).
    tumour_volume_cm3 : array_like
        ``[D]`` measured volume, cm3; NaN where not measured.
    chemo_mg : array_like
        ``[D]`` chemotherapy given that day, mg; 0 = none.
    radio_gy : array_like
        ``[D]`` radiotherapy dose delivered that day, Gy; 0 = none.
    """

    patient_id: str
    birth_date: date
    sex: Sex
    start: datetime
    tumour_volume_cm3: ArrayLike
    chemo_mg: ArrayLike
    radio_gy: ArrayLike
    weight_kg: float | None = None
    consents: tuple[dict[str, Any], ...] = ()


class ExportOptions(BaseModel):
    """How an export is written.

    Parameters
    ----------
    fhir_version : {"R4B", "R5"}
        Release of the written resources (element names differ for MedicationAdministration
        and Procedure).
    gzip : bool
        Write ``<Type>.ndjson.gz`` instead of ``<Type>.ndjson``.
    glucose_unit : {"mg/dL", "mmol/L"}
        CGM readings as LOINC 99504-3 in mg/dL or 105272-9 in mmol/L.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fhir_version: Literal["R4B", "R5"] = "R4B"
    gzip: bool = False
    glucose_unit: Literal["mg/dL", "mmol/L"] = "mg/dL"


@dataclass
class WrittenExport:
    """What was written: the folder and resources per type."""

    folder: Path
    counts: dict[str, int] = field(default_factory=dict)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _vector(values: ArrayLike, name: str, length: int | None) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if length is not None and array.size != length:
        raise ConfigError(f"{name} has {array.size} values, expected {length}")
    return array


def _quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def _number(value: float) -> float:
    """Shortest decimal that reads back as the same float32 (exact round trip of the grid)."""
    single = np.float32(value)
    return float(np.format_float_positional(single, unique=True, trim="-"))


def _numbers_text(values: NDArray[np.float64]) -> list[str]:
    """``repr(_number(v))`` for every value, vectorised: short decimals that round-trip float32.

    For each value the fewest decimals ``k`` whose rounding reads back as the same float32 are
    found with numpy; the text is Python's correctly rounded ``round(v, k)``. Every result is
    checked to read back as the same float32, and any that would not (ties) is formatted by
    :func:`_number` instead, so the written grid is exact either way.
    """
    single = values.astype(np.float32)
    exact = single.astype(np.float64)
    digits = np.full(values.shape, -1, dtype=np.int64)
    for k in range(10):
        found = (digits < 0) & (np.round(exact, k).astype(np.float32) == single)
        digits[found] = k
    numbers = cast(list[float], exact.tolist())
    places = cast(list[int], digits.tolist())
    texts = [
        repr(round(v, k)) if k >= 0 else repr(_number(v))
        for v, k in zip(numbers, places, strict=True)
    ]
    back = np.array([float(t) for t in texts], dtype=np.float64).astype(np.float32)
    for index in np.flatnonzero(back != single).tolist():
        texts[index] = repr(_number(exact[index]))
    return texts


@functools.lru_cache(maxsize=8)
def _grid_times(start: datetime, step_min: float, length: int) -> tuple[str, ...]:
    """``length + 1`` UTC times from ``start`` at ``step_min`` (patients of a site share them)."""
    step = timedelta(minutes=step_min)
    return tuple(_utc_text(start + k * step) for k in range(length + 1))


class _ExportWriter:
    def __init__(self, folder: Path, options: ExportOptions) -> None:
        self.folder = folder
        self.options = options
        self.version = FhirVersion(options.fhir_version)
        self.handles: dict[str, IO[str]] = {}
        self.counts = dict.fromkeys(_FILES, 0)
        self._fragments: dict[tuple[object, ...], tuple[str, str, str]] = {}
        suffix = ".ndjson.gz" if options.gzip else ".ndjson"
        for name in _FILES:
            path = folder / f"{name}{suffix}"
            self.handles[name] = (
                gzip.open(path, "wt", encoding="utf-8", compresslevel=6)  # noqa: SIM115
                if options.gzip
                else path.open("w", encoding="utf-8")
            )

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()

    def emit(self, resource_type: str, resource: dict[str, Any]) -> None:
        self.counts[resource_type] += 1
        if "id" not in resource:
            prefix = {"MedicationAdministration": "ma"}.get(resource_type, resource_type.lower())
            resource = {
                "resourceType": resource_type,
                "id": f"{prefix}-{self.counts[resource_type]}",
                **resource,
            }
        self.handles[resource_type].write(_dumps(resource) + "\n")

    def patient(self, patient_id: str, birth_date: date, sex: str) -> str:
        if not _ID.fullmatch(patient_id):
            raise ConfigError(f"patient id {patient_id!r} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})")
        if sex not in ("male", "female", "other", "unknown"):
            raise ConfigError(f"sex must be male, female, other or unknown, not {sex!r}")
        self.emit(
            "Patient",
            {
                "resourceType": "Patient",
                "id": patient_id,
                "gender": sex,
                "birthDate": birth_date.isoformat(),
            },
        )
        return f"Patient/{patient_id}"

    def observation(
        self,
        subject: str,
        code: str,
        display: str,
        when: str,
        quantity: dict[str, Any],
        category: str | None,
    ) -> None:
        if set(quantity) == {"value", "unit", "system", "code"} and isinstance(
            quantity["value"], float
        ):
            self._observation_line(subject, code, display, when, quantity, category)
            return
        resource: dict[str, Any] = {"resourceType": "Observation", "status": "final"}
        if category is not None:
            resource["category"] = [{"coding": [{"system": _CATEGORY, "code": category}]}]
        resource["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}]}
        resource["subject"] = {"reference": subject}
        resource["effectiveDateTime"] = when
        resource["valueQuantity"] = quantity
        self.emit("Observation", resource)

    def _observation_line(
        self,
        subject: str,
        code: str,
        display: str,
        when: str,
        quantity: dict[str, Any],
        category: str | None,
    ) -> None:
        """The same bytes as :meth:`observation` + :meth:`emit`, from cached fragments.

        Only the id, the time and the value change between a patient's readings; formatting
        every reading through ``json.dumps`` of a fresh dict was most of the writer's time.
        """
        head, value_head, tail = self._observation_fragments(
            subject, code, display, category, quantity
        )
        self.counts["Observation"] += 1
        self.handles["Observation"].write(
            '{"resourceType":"Observation","id":"observation-'
            + str(self.counts["Observation"])
            + head
            + _json_string(when)
            + value_head
            + repr(quantity["value"])
            + tail
        )

    def _observation_fragments(
        self,
        subject: str,
        code: str,
        display: str,
        category: str | None,
        quantity: dict[str, Any],
    ) -> tuple[str, str, str]:
        key = (subject, code, display, category, quantity["unit"], quantity["code"])
        fragments = self._fragments.get(key)
        if fragments is None:
            resource: dict[str, Any] = {"status": "final"}
            if category is not None:
                resource["category"] = [{"coding": [{"system": _CATEGORY, "code": category}]}]
            resource["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}]}
            resource["subject"] = {"reference": subject}
            middle = _dumps(resource)[1:-1]
            unit = _dumps(quantity["unit"])
            tail = f',"unit":{unit},"system":{_dumps(quantity["system"])},'
            tail += f'"code":{_dumps(quantity["code"])}}}}}\n'
            fragments = (
                f'","{middle[1:]},"effectiveDateTime":',
                ',"valueQuantity":{"value":',
                tail,
            )
            self._fragments = {key: fragments}  # one patient at a time: keep memory flat
        return fragments

    def observations(
        self,
        subject: str,
        code: str,
        display: str,
        times: list[str],
        values: list[str],
        unit: str,
        category: str | None,
    ) -> None:
        """Many value-quantity Observations of one patient and code, in one write.

        The same bytes as :meth:`observation` per reading; ``values`` are the numbers' JSON text.
        """
        quantity = {"value": 0.0, "unit": unit, "system": UCUM, "code": unit}
        head, value_head, tail = self._observation_fragments(
            subject, code, display, category, quantity
        )
        first = self.counts["Observation"] + 1
        prefix = '{"resourceType":"Observation","id":"observation-'
        self.handles["Observation"].write(
            "".join(
                [
                    f"{prefix}{first + i}{head}{_json_string(when)}{value_head}{value}{tail}"
                    for i, (when, value) in enumerate(zip(times, values, strict=True))
                ]
            )
        )
        self.counts["Observation"] += len(values)

    def administration(
        self,
        subject: str,
        medication: dict[str, Any],
        timing: dict[str, Any],
        dosage: dict[str, Any],
    ) -> None:
        resource: dict[str, Any] = {
            "resourceType": "MedicationAdministration",
            "status": "completed",
        }
        if self.version is FhirVersion.R4B:
            resource["medicationCodeableConcept"] = medication
        else:
            resource["medication"] = {"concept": medication}
        resource["subject"] = {"reference": subject}
        for key, value in timing.items():
            if self.version is FhirVersion.R5:
                key = key.replace("effective", "occurence")
            resource[key] = value
        resource["dosage"] = dosage
        self.emit("MedicationAdministration", resource)

    def consents(self, patient_id: str, consents: tuple[dict[str, Any], ...]) -> None:
        for position, consent in enumerate(consents):
            where = Path(f"consent[{position}] of patient")
            version = detect_version(consent)
            model = validate_resource(consent, where, position + 1, version)
            if isinstance(model, Rejection):
                raise ConfigError(f"consent {position} is not a valid Consent: {model.reason}")
            about = consent_patient_id(ParsedResource(where, position + 1, version, model))
            if about != patient_id:
                raise ConfigError(f"consent {position} does not reference its patient")
            self.emit("Consent", consent)

    def weight(self, subject: str, weight_kg: float | None, when: str) -> None:
        if weight_kg is not None:
            quantity = _quantity(_number(weight_kg), "kg")
            self.observation(subject, "29463-7", "Body weight", when, quantity, "vital-signs")

    def glucose(self, history: GlucoseHistory) -> None:
        subject = self.patient(history.patient_id, history.birth_date, history.sex)
        if history.start.tzinfo is None:
            raise ConfigError("start must be timezone-aware")
        cgm = _vector(history.cgm_mg_dl, "cgm_mg_dl", None)
        length = cgm.size
        carbs = _vector(history.carbs_g, "carbs_g", length)
        bolus = _vector(history.bolus_u, "bolus_u", length)
        basal = _vector(history.basal_u_per_h, "basal_u_per_h", length)
        times = _grid_times(history.start, history.step_min, length)
        self.weight(subject, history.weight_kg, times[0])
        mmol = self.options.glucose_unit == "mmol/L"
        code, display = (
            ("105272-9", "Glucose [Moles/volume] in Interstitial fluid")
            if mmol
            else ("99504-3", "Glucose [Mass/volume] in Interstitial fluid")
        )
        readings = np.flatnonzero(~np.isnan(cgm))
        if not mmol:
            self.observations(
                subject,
                code,
                display,
                [times[k] for k in readings.tolist()],
                _numbers_text(cgm[readings]),
                self.options.glucose_unit,
                "laboratory",
            )
            readings = readings[:0]
        for k in readings.tolist():
            value = _number(cgm[k])
            if mmol:
                value = value / GLUCOSE_MG_DL_PER_MMOL_L
            self.observation(
                subject,
                code,
                display,
                times[k],
                _quantity(value, self.options.glucose_unit),
                "laboratory",
            )
        for k in np.flatnonzero(carbs).tolist():
            quantity = _quantity(_number(carbs[k]), "g")
            self.observation(
                subject, "9059-7", "Carbohydrate intake Estimated", times[k], quantity, None
            )
        insulin = {"coding": [{"system": ATC, "code": "A10AB04", "display": "insulin lispro"}]}
        for k in np.flatnonzero(bolus).tolist():
            dosage = {"dose": _quantity(_number(bolus[k]), "U")}
            self.administration(subject, insulin, {"effectiveDateTime": times[k]}, dosage)
        run_start = 0
        for k in range(1, length + 1):
            if k < length and basal[k] == basal[run_start]:
                continue
            if basal[run_start] != 0:
                period = {"effectivePeriod": {"start": times[run_start], "end": times[k]}}
                dosage = {"rateQuantity": _quantity(_number(basal[run_start]), "U/h")}
                self.administration(subject, insulin, period, dosage)
            run_start = k
        self.consents(history.patient_id, history.consents)

    def oncology(self, history: OncologyHistory) -> None:
        subject = self.patient(history.patient_id, history.birth_date, history.sex)
        if history.start.tzinfo is None:
            raise ConfigError("start must be timezone-aware")
        volume = _vector(history.tumour_volume_cm3, "tumour_volume_cm3", None)
        chemo = _vector(history.chemo_mg, "chemo_mg", volume.size)
        radio = _vector(history.radio_gy, "radio_gy", volume.size)
        days = [_utc_text(history.start + timedelta(days=d)) for d in range(volume.size)]
        self.weight(subject, history.weight_kg, days[0])
        for d in np.flatnonzero(~np.isnan(volume)).tolist():
            quantity = _quantity(_number(volume[d]), "cm3")
            self.observation(subject, "21889-1", "Size Tumor", days[d], quantity, "laboratory")
        drug = {"coding": [{"system": ATC, "code": "L01", "display": "antineoplastic agents"}]}
        for d in np.flatnonzero(chemo).tolist():
            dosage = {"dose": _quantity(_number(chemo[d]), "mg")}
            self.administration(subject, drug, {"effectiveDateTime": days[d]}, dosage)
        time_key = "performedDateTime" if self.version is FhirVersion.R4B else "occurrenceDateTime"
        for d in np.flatnonzero(radio).tolist():
            dose = {"url": MCODE_RT_TOTAL_DOSE, "valueQuantity": _quantity(_number(radio[d]), "Gy")}
            procedure = {
                "resourceType": "Procedure",
                "extension": [{"url": MCODE_RT_DOSE, "extension": [dose]}],
                "status": "completed",
                "code": {"text": "Radiotherapy fraction"},
                "subject": {"reference": subject},
                time_key: days[d],
            }
            self.emit("Procedure", procedure)
        self.consents(history.patient_id, history.consents)


def write_site(
    folder: Path,
    patients: Iterable[GlucoseHistory | OncologyHistory],
    *,
    options: ExportOptions | None = None,
    overwrite: bool = False,
) -> WrittenExport:
    """Write a Bulk FHIR export folder, atomically.

    Parameters
    ----------
    folder : Path
        Destination folder (must not exist unless ``overwrite``).
    patients : Iterable[GlucoseHistory | OncologyHistory]
        The patients, consumed once (a generator is fine).
    options : ExportOptions or None
        FHIR release, gzip, glucose unit.
    overwrite : bool
        Replace an existing folder (only after the new export is complete).

    Returns
    -------
    WrittenExport
        The folder and the number of resources written per type (empty files removed).

    Raises
    ------
    ConfigError
        On an invalid patient id, array lengths that disagree, a naive start time or a consent
        that is invalid or about another patient; nothing is left behind.
    """
    opts = options or ExportOptions()
    if folder.exists() and not overwrite:
        raise ConfigError(f"{folder}: already exists (pass overwrite=True to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    writer = _ExportWriter(staging, opts)
    try:
        seen: set[str] = set()
        for patient in patients:
            if patient.patient_id in seen:
                raise ConfigError(f"patient id {patient.patient_id!r} given twice")
            seen.add(patient.patient_id)
            if isinstance(patient, GlucoseHistory):
                writer.glucose(patient)
            else:
                writer.oncology(patient)
        writer.close()
        for name, count in writer.counts.items():
            if count == 0:
                for leftover in staging.glob(f"{name}.ndjson*"):
                    leftover.unlink()
        if folder.exists():
            retired = folder.parent / f".{folder.name}.old-{os.getpid()}"
            folder.rename(retired)
            staging.rename(folder)
            shutil.rmtree(retired)
        else:
            staging.rename(folder)
    except BaseException:
        writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return WrittenExport(folder, {k: v for k, v in writer.counts.items() if v})
