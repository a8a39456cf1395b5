"""The unit table: exact UCUM codes convert, anything else is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtwin.fhir.profile import (
    UCUM,
    UNITS,
    Dimension,
    Measure,
    UnitProblem,
    medication_measure,
    observation_measure,
    unit_factor,
)


def test_mmol_per_litre_glucose_converts_with_18_016() -> None:
    factor = unit_factor({"value": 5.0, "system": UCUM, "code": "mmol/L"}, Dimension.GLUCOSE)
    assert factor == 18.016
    assert 5.0 * factor == pytest.approx(90.08)


@given(code=st.text(max_size=8))
def test_codes_outside_the_table_are_refused(code: str) -> None:
    quantity = {"value": 1.0, "system": UCUM, "code": code}
    outcome = unit_factor(quantity, Dimension.GLUCOSE)
    if (Dimension.GLUCOSE, code) in UNITS:
        assert outcome == UNITS[(Dimension.GLUCOSE, code)]
    else:
        assert isinstance(outcome, UnitProblem)


def test_a_unit_of_another_dimension_is_refused() -> None:
    outcome = unit_factor({"value": 1.0, "system": UCUM, "code": "U"}, Dimension.GLUCOSE)
    assert isinstance(outcome, UnitProblem)
    assert "unknown unit 'U' for glucose" in outcome.reason


def test_missing_unit_is_refused() -> None:
    outcome = unit_factor({"value": 1.0}, Dimension.MASS_G)
    assert isinstance(outcome, UnitProblem)
    assert outcome.reason.startswith("missing unit")


def test_codes_are_read_from_the_tables_only() -> None:
    loinc = "http://loinc.org"
    assert observation_measure({"coding": [{"system": loinc, "code": "99504-3"}]}) is Measure.CGM
    assert observation_measure({"coding": [{"system": "http://other", "code": "99504-3"}]}) is None
    atc = "http://www.whocc.no/atc"
    assert medication_measure({"coding": [{"system": atc, "code": "A10AE04"}]}) is Measure.INSULIN
    assert medication_measure({"coding": [{"system": atc, "code": "L01BC02"}]}) is Measure.CHEMO
    assert medication_measure({"coding": [{"system": atc, "code": "B01AB01"}]}) is None
    assert medication_measure({"text": "Insulinoma marker"}) is None
