"""The fedtwin FHIR profile as data: which codes are read, and the unit table.

Invariants (``docs/fhir-profile.md`` states the same tables for people):

* a code is read only if it is in one of the tables below; everything else is counted as
  ``not_in_profile`` and never guessed at;
* a quantity is converted only through :data:`UNITS`, keyed by (dimension, UCUM code); an
  absent, non-UCUM or unknown unit is an error, never a default;
* ranges are physiological plausibility bounds in the canonical unit; a value outside them is
  an error (``out_of_range``), not clipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ATC = "http://www.whocc.no/atc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
MCODE_RT_DOSE = (
    "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-radiotherapy-dose-delivered-to-volume"
)
MCODE_RT_TOTAL_DOSE = "totalDoseDelivered"

#: mmol/L of glucose → mg/dL (molar mass 180.16 g/mol; the factor the issue and the CGM IG use).
GLUCOSE_MG_DL_PER_MMOL_L = 18.016


class Dimension(StrEnum):
    """What a quantity measures, with its canonical unit in the value."""

    GLUCOSE = "mg/dL"
    INSULIN = "U"
    INSULIN_RATE = "U/h"
    MASS_G = "g"
    BODY_WEIGHT = "kg"
    VOLUME = "cm3"
    LENGTH = "cm"
    DRUG_MASS = "mg"
    RADIATION = "Gy"


#: (dimension, UCUM code) → factor to the canonical unit of the dimension.
UNITS: dict[tuple[Dimension, str], float] = {
    (Dimension.GLUCOSE, "mg/dL"): 1.0,
    (Dimension.GLUCOSE, "mmol/L"): GLUCOSE_MG_DL_PER_MMOL_L,
    (Dimension.GLUCOSE, "g/L"): 100.0,
    (Dimension.INSULIN, "U"): 1.0,
    (Dimension.INSULIN, "[iU]"): 1.0,
    (Dimension.INSULIN, "[IU]"): 1.0,
    (Dimension.INSULIN_RATE, "U/h"): 1.0,
    (Dimension.INSULIN_RATE, "[iU]/h"): 1.0,
    (Dimension.INSULIN_RATE, "[IU]/h"): 1.0,
    (Dimension.INSULIN_RATE, "U/min"): 60.0,
    (Dimension.MASS_G, "g"): 1.0,
    (Dimension.MASS_G, "mg"): 1e-3,
    (Dimension.BODY_WEIGHT, "kg"): 1.0,
    (Dimension.BODY_WEIGHT, "g"): 1e-3,
    (Dimension.BODY_WEIGHT, "[lb_av]"): 0.45359237,
    (Dimension.VOLUME, "cm3"): 1.0,
    (Dimension.VOLUME, "mL"): 1.0,
    (Dimension.VOLUME, "mm3"): 1e-3,
    (Dimension.LENGTH, "cm"): 1.0,
    (Dimension.LENGTH, "mm"): 0.1,
    (Dimension.DRUG_MASS, "mg"): 1.0,
    (Dimension.DRUG_MASS, "g"): 1e3,
    (Dimension.DRUG_MASS, "ug"): 1e-3,
    (Dimension.RADIATION, "Gy"): 1.0,
    (Dimension.RADIATION, "cGy"): 1e-2,
}


class Measure(StrEnum):
    """What a record contributes to a patient's series."""

    CGM = "cgm"
    GLUCOSE_OTHER = "glucose_other"
    CARBS = "carbs"
    BODY_WEIGHT = "body_weight"
    TUMOUR_SIZE = "tumour_size"
    INSULIN = "insulin"
    INSULIN_BASAL = "insulin_basal"
    CHEMO = "chemo"
    RADIOTHERAPY = "radiotherapy"


#: Observation codes read: (system, code) → measure.
OBSERVATION_CODES: dict[tuple[str, str], Measure] = {
    # HL7 CGM IG 1.0.0 (STU1) sensor readings: interstitial glucose, mass and molar.
    (LOINC, "99504-3"): Measure.CGM,
    (LOINC, "105272-9"): Measure.CGM,
    # Glucose in blood/body fluid/capillary blood: used for the glucose channel only when the
    # patient has no CGM-IG reading (pre-IG exports coded sensor streams with these).
    (LOINC, "2339-0"): Measure.GLUCOSE_OTHER,
    (LOINC, "15074-8"): Measure.GLUCOSE_OTHER,
    (LOINC, "14745-4"): Measure.GLUCOSE_OTHER,
    (LOINC, "41653-7"): Measure.GLUCOSE_OTHER,
    (LOINC, "9059-7"): Measure.CARBS,
    (LOINC, "29463-7"): Measure.BODY_WEIGHT,
    # mCODE TumorSize: the size panel; its value or its max-dimension component is read.
    (LOINC, "21889-1"): Measure.TUMOUR_SIZE,
}

#: Component of the tumour size panel read as the tumour's diameter.
TUMOUR_MAX_DIMENSION = (LOINC, "33728-7")

#: Dimension each Observation measure is converted in.
OBSERVATION_DIMENSION: dict[Measure, Dimension] = {
    Measure.CGM: Dimension.GLUCOSE,
    Measure.GLUCOSE_OTHER: Dimension.GLUCOSE,
    Measure.CARBS: Dimension.MASS_G,
    Measure.BODY_WEIGHT: Dimension.BODY_WEIGHT,
}

#: Plausible range per canonical dimension (inclusive), per record.
RANGES: dict[Dimension, tuple[float, float]] = {
    Dimension.GLUCOSE: (10.0, 1000.0),
    Dimension.INSULIN: (0.0, 100.0),
    Dimension.INSULIN_RATE: (0.0, 50.0),
    Dimension.MASS_G: (0.0, 500.0),
    Dimension.BODY_WEIGHT: (0.5, 500.0),
    Dimension.VOLUME: (0.0, 20000.0),
    Dimension.LENGTH: (0.0, 40.0),
    Dimension.DRUG_MASS: (0.0, 100000.0),
    Dimension.RADIATION: (0.0, 100.0),
}

#: Insulin medications: ATC "Insulins and analogues" (A10A…) by prefix, or these exact codes.
INSULIN_ATC_PREFIX = "A10A"
INSULIN_CODES: frozenset[tuple[str, str]] = frozenset(
    {
        (SNOMED, "67866001"),  # Insulin (substance)
        (RXNORM, "5856"),  # insulin
        (RXNORM, "86009"),  # insulin lispro
        (RXNORM, "51428"),  # insulin aspart
        (RXNORM, "274783"),  # insulin glargine
        (RXNORM, "139825"),  # insulin detemir
        (RXNORM, "400008"),  # insulin glulisine
        (RXNORM, "1670007"),  # insulin degludec
        (RXNORM, "253182"),  # insulin regular, human
    }
)
#: Antineoplastic medications (chemotherapy): ATC L01… by prefix.
CHEMO_ATC_PREFIX = "L01"

#: Statuses whose records are used; others are counted as ``excluded_status``.
USED_STATUS: dict[str, frozenset[str]] = {
    "Observation": frozenset({"final", "amended", "corrected", "preliminary"}),
    "MedicationAdministration": frozenset({"completed", "in-progress", "stopped"}),
    "Procedure": frozenset({"completed"}),
}


@dataclass(frozen=True)
class UnitProblem:
    """Why a quantity's unit cannot be converted."""

    reason: str


def unit_factor(quantity: dict[str, Any], dimension: Dimension) -> float | UnitProblem:
    """Factor converting ``quantity`` to the canonical unit of ``dimension``.

    Rule: the UCUM ``code`` decides; ``system`` must be ``http://unitsofmeasure.org`` or absent
    (a code from another system is never read as UCUM). When ``code`` is absent, the
    human-readable ``unit`` is accepted only if it is itself exactly a UCUM code of the table
    (``"mg/dL"`` yes, ``"mg/dl"`` no).

    Returns
    -------
    float or UnitProblem
        The factor, or why there is none.
    """
    system = quantity.get("system")
    if system is not None and system != UCUM:
        return UnitProblem("unit system is not UCUM (http://unitsofmeasure.org)")
    code = quantity.get("code")
    if code is None:
        code = quantity.get("unit")
        if code is None:
            return UnitProblem(f"missing unit (expected {dimension.value} or a UCUM equivalent)")
    factor = UNITS.get((dimension, code)) if isinstance(code, str) else None
    if factor is None:
        shown = repr(code) if isinstance(code, str) and len(code) <= 32 else "given"
        allowed = ", ".join(c for (d, c) in UNITS if d is dimension)
        return UnitProblem(f"unknown unit {shown} for {dimension.name.lower()} (known: {allowed})")
    return factor


def codings(concept: object) -> list[tuple[str, str]]:
    """``(system, code)`` pairs of a CodeableConcept dict (empty for anything else)."""
    if not isinstance(concept, dict):
        return []
    found = concept.get("coding")
    if not isinstance(found, list):
        return []
    return [
        (c["system"], c["code"])
        for c in found
        if isinstance(c, dict)
        and isinstance(c.get("system"), str)
        and isinstance(c.get("code"), str)
    ]


def observation_measure(code: object) -> Measure | None:
    """Measure of an Observation's ``code`` (first coding in the table), or ``None``."""
    for pair in codings(code):
        measure = OBSERVATION_CODES.get(pair)
        if measure is not None:
            return measure
    return None


_INSULIN_WORD = re.compile(r"\binsulin\b", re.IGNORECASE)


def _names_insulin(concept: object) -> bool:
    if not isinstance(concept, dict):
        return False
    texts = [concept.get("text")]
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict):
            texts.append(coding.get("display"))
    return any(isinstance(t, str) and _INSULIN_WORD.search(t) for t in texts)


def medication_measure(concept: object) -> Measure | None:
    """Insulin or chemotherapy from a medication CodeableConcept, or ``None``.

    Insulin: a coding in :data:`INSULIN_CODES` or an ATC code under ``A10A``; failing that, a
    concept whose ``text`` or a coding ``display`` names insulin (its dose must then still be
    in an insulin unit, U, or it is a ``unit`` error). Chemotherapy: ATC under ``L01``.
    """
    for system, code in codings(concept):
        if (system, code) in INSULIN_CODES or (
            system == ATC and code.startswith(INSULIN_ATC_PREFIX)
        ):
            return Measure.INSULIN
        if system == ATC and code.startswith(CHEMO_ATC_PREFIX):
            return Measure.CHEMO
    if _names_insulin(concept):
        return Measure.INSULIN
    return None
