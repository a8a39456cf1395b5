"""How one validated resource becomes one timed value: the profile applied to a record.

Invariant: the *plan* of a resource (:func:`observation_plan`, :func:`medication_plan`)
depends only on its fixed parts (codes, units, status, which elements are present), never on
the variable leaves (id, subject, times, values); so a plan computed once for a validated
shape holds for every resource of that shape (see :mod:`fedtwin.fhir.fastpath`). The variable
leaves are checked per record (:func:`parse_time`, ranges, patient reference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fedtwin.fhir.profile import (
    MCODE_RT_DOSE,
    MCODE_RT_TOTAL_DOSE,
    OBSERVATION_DIMENSION,
    RANGES,
    TUMOUR_MAX_DIMENSION,
    USED_STATUS,
    Dimension,
    Measure,
    UnitProblem,
    codings,
    medication_measure,
    observation_measure,
    unit_factor,
)
from fedtwin.fhir.report import ErrorClass

_DATETIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})?")
_TIME_CACHE: dict[str, float | str] = {}
_TIME_CACHE_MAX = 500_000


@dataclass(frozen=True, slots=True)
class Skip:
    """A record that is not used, decided from its fixed parts."""

    error_class: ErrorClass
    reason: str


@dataclass(frozen=True, slots=True)
class ObservationPlan:
    """How to read an Observation shape: measure, unit factor and where time and value are."""

    measure: Measure
    dimension: Dimension
    factor: float
    time_key: str
    component: int | None = None
    low: float = field(init=False)
    high: float = field(init=False)

    def __post_init__(self) -> None:
        low, high = RANGES[self.dimension]
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)


@dataclass(frozen=True, slots=True)
class MedicationPlan:
    """How to read a MedicationAdministration shape."""

    measure: Measure
    by_rate: bool
    factor: float
    time_key: str
    period: bool


def time_memo() -> dict[str, float | str]:
    """The memo of :func:`parse_time` (string → its result); read it before calling."""
    return _TIME_CACHE


def parse_time(value: object) -> float | str:
    """Epoch seconds of a FHIR dateTime/instant with time of day and UTC offset.

    Returns
    -------
    float or str
        Seconds since 1970-01-01 UTC, or the reason the value is not usable (a date without
        time of day, a time without UTC offset). A leap second ``:60`` reads as ``:59``.
    """
    if type(value) is not str:
        return "time is not a string"
    cached = _TIME_CACHE.get(value)
    if cached is not None:
        return cached
    matched = _DATETIME.fullmatch(value)
    result: float | str
    if matched is None:
        result = "time has no time of day (date only)" if "T" not in value else "bad date-time"
    elif matched.group(4) is None:
        result = "time has no UTC offset"
    else:
        head, second, fraction, offset = matched.groups()
        second = "59" if second == "60" else second
        offset = "+00:00" if offset == "Z" else offset
        text = f"{head}:{second}{(fraction or '')[:7]}{offset}"
        try:
            result = datetime.fromisoformat(text).timestamp()
        except ValueError:
            result = "bad date-time"
    if len(_TIME_CACHE) >= _TIME_CACHE_MAX:
        _TIME_CACHE.clear()
    _TIME_CACHE[value] = result
    return result


def parse_birth_date(value: object) -> datetime | None:
    """Birth date (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``) as UTC midnight of its first day."""
    if not isinstance(value, str):
        return None
    parts = value.split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2]) if len(parts) > 2 else 1
        return datetime(year, month, day, tzinfo=UTC)
    except (ValueError, IndexError):
        return None


def _status_skip(resource_type: str, status: object) -> Skip | None:
    if status in USED_STATUS[resource_type]:
        return None
    shown = status if isinstance(status, str) and len(status) <= 32 else "missing"
    return Skip(ErrorClass.EXCLUDED_STATUS, f"status {shown!r} is not used")


def _quantity_skip(quantity: object, dimension: Dimension, where: str) -> Skip | float:
    if not isinstance(quantity, dict):
        return Skip(ErrorClass.MISSING_ELEMENT, f"{where} is missing")
    if "value" not in quantity:
        return Skip(ErrorClass.MISSING_ELEMENT, f"{where} has no value")
    factor = unit_factor(quantity, dimension)
    if isinstance(factor, UnitProblem):
        return Skip(ErrorClass.UNIT, f"{where}: {factor.reason}")
    return factor


_OBS_TIME_KEYS = ("effectiveDateTime", "effectiveInstant", "effectivePeriod")
_VALUE_KEYS = (
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "valueTime",
    "valueDateTime",
    "valuePeriod",
    "valueAttachment",
    "valueReference",
)


def observation_plan(obs: dict[str, Any]) -> ObservationPlan | Skip:
    """The plan of a validated Observation (see module invariant)."""
    measure = observation_measure(obs.get("code"))
    if measure is None:
        return Skip(ErrorClass.NOT_IN_PROFILE, "Observation code is not in the fedtwin profile")
    skip = _status_skip("Observation", obs.get("status"))
    if skip is not None:
        return skip
    time_key = next((k for k in _OBS_TIME_KEYS if k in obs), None)
    if time_key is None:
        return Skip(ErrorClass.MISSING_ELEMENT, "no effectiveDateTime/Instant/Period time")
    if measure is Measure.TUMOUR_SIZE:
        return _tumour_plan(obs, time_key)
    if "valueQuantity" not in obs:
        if "dataAbsentReason" in obs:
            return Skip(ErrorClass.NO_VALUE, "no value (dataAbsentReason)")
        if any(k in obs for k in _VALUE_KEYS):
            return Skip(ErrorClass.MISSING_ELEMENT, "value is not a valueQuantity")
        return Skip(ErrorClass.MISSING_ELEMENT, "no valueQuantity")
    dimension = OBSERVATION_DIMENSION[measure]
    factor = _quantity_skip(obs["valueQuantity"], dimension, "valueQuantity")
    if isinstance(factor, Skip):
        return factor
    return ObservationPlan(measure, dimension, factor, time_key)


def _tumour_plan(obs: dict[str, Any], time_key: str) -> ObservationPlan | Skip:
    quantity = obs.get("valueQuantity")
    component = None
    if quantity is None:
        for position, part in enumerate(obs.get("component") or []):
            if TUMOUR_MAX_DIMENSION in codings(part.get("code")):
                quantity, component = part.get("valueQuantity"), position
                break
        if quantity is None:
            return Skip(ErrorClass.MISSING_ELEMENT, "tumour size has no volume or max dimension")
    where = "valueQuantity" if component is None else f"component[{component}].valueQuantity"
    volume = _quantity_skip(quantity, Dimension.VOLUME, where)
    if not isinstance(volume, Skip):
        return ObservationPlan(Measure.TUMOUR_SIZE, Dimension.VOLUME, volume, time_key, component)
    length = _quantity_skip(quantity, Dimension.LENGTH, where)
    if isinstance(length, Skip):
        if length.error_class is ErrorClass.UNIT:
            return Skip(ErrorClass.UNIT, f"{where}: unit is neither a volume nor a length")
        return length
    return ObservationPlan(Measure.TUMOUR_SIZE, Dimension.LENGTH, length, time_key, component)


def medication_plan(admin: dict[str, Any]) -> MedicationPlan | Skip:
    """The plan of a validated MedicationAdministration (R4B or R5 element names)."""
    if "medicationCodeableConcept" in admin:
        concept = admin["medicationCodeableConcept"]
    elif isinstance(admin.get("medication"), dict) and "concept" in admin["medication"]:
        concept = admin["medication"]["concept"]
    else:
        return Skip(ErrorClass.NOT_IN_PROFILE, "medication by reference is not resolved")
    measure = medication_measure(concept)
    if measure is None:
        return Skip(ErrorClass.NOT_IN_PROFILE, "medication code is not in the fedtwin profile")
    skip = _status_skip("MedicationAdministration", admin.get("status"))
    if skip is not None:
        return skip
    time_key = next(
        (
            k
            for k in (
                "effectiveDateTime",
                "effectivePeriod",
                "occurenceDateTime",
                "occurencePeriod",
            )
            if k in admin
        ),
        None,
    )
    if time_key is None:
        return Skip(ErrorClass.MISSING_ELEMENT, "no effective/occurence dateTime or Period")
    period = time_key.endswith("Period")
    dosage = admin.get("dosage")
    if not isinstance(dosage, dict):
        return Skip(ErrorClass.MISSING_ELEMENT, "no dosage")
    if "rateRatio" in dosage:
        return Skip(ErrorClass.UNIT, "dosage.rateRatio is not read (give rateQuantity in U/h)")
    if measure is Measure.INSULIN and "rateQuantity" in dosage:
        if not period:
            return Skip(ErrorClass.MISSING_ELEMENT, "an insulin rate needs a Period")
        factor = _quantity_skip(dosage["rateQuantity"], Dimension.INSULIN_RATE, "rateQuantity")
        if isinstance(factor, Skip):
            return factor
        return MedicationPlan(measure, True, factor, time_key, period)
    if "dose" not in dosage:
        return Skip(ErrorClass.MISSING_ELEMENT, "dosage has neither dose nor rateQuantity")
    dimension = Dimension.INSULIN if measure is Measure.INSULIN else Dimension.DRUG_MASS
    factor = _quantity_skip(dosage["dose"], dimension, "dosage.dose")
    if isinstance(factor, Skip):
        return factor
    return MedicationPlan(measure, False, factor, time_key, period)


def radiotherapy_dose(procedure: dict[str, Any]) -> tuple[dict[str, Any], float] | Skip:
    """Dose quantity of a Procedure carrying the mCODE dose-delivered extension, and factor."""
    dose = None
    for extension in procedure.get("extension") or []:
        if extension.get("url") != MCODE_RT_DOSE:
            continue
        for part in extension.get("extension") or []:
            if part.get("url") == MCODE_RT_TOTAL_DOSE:
                dose = part.get("valueQuantity")
    if dose is None:
        return Skip(ErrorClass.NOT_IN_PROFILE, "Procedure has no radiotherapy dose extension")
    skip = _status_skip("Procedure", procedure.get("status"))
    if skip is not None:
        return skip
    factor = _quantity_skip(dose, Dimension.RADIATION, "totalDoseDelivered")
    if isinstance(factor, Skip):
        return factor
    return dose, factor


def procedure_time(procedure: dict[str, Any]) -> object:
    """The raw time of a Procedure (R4B performed[x], R5 occurrence[x]); period → its start."""
    for key in ("performedDateTime", "occurrenceDateTime"):
        if key in procedure:
            return procedure[key]
    for key in ("performedPeriod", "occurrencePeriod"):
        if key in procedure and isinstance(procedure[key], dict):
            return procedure[key].get("start")
    return None
