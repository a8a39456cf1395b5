"""write_site → read_site gives back the same grid values and units, atomically."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtwin.errors import ConfigError
from fedtwin.fhir import (
    ExportOptions,
    GlucoseHistory,
    OncologyHistory,
    read_site,
    write_site,
)

START = datetime(2024, 5, 1, 6, 0, tzinfo=UTC)


def _history(seed: int, pid: str = "p1", **overrides: Any) -> GlucoseHistory:
    rng = np.random.default_rng(seed)
    steps = 288
    cgm = np.round(rng.uniform(60, 250, steps), 1)
    cgm[rng.random(steps) < 0.1] = np.nan
    cgm[0] = 111.1
    carbs = np.zeros(steps)
    carbs[[20, 100, 200]] = rng.integers(20, 90, 3)
    bolus = np.where(carbs > 0, np.round(carbs / 12, 2), 0.0)
    basal = np.full(steps, 0.85)
    basal[60:90] = 0.4
    basal[150:160] = 0.0
    fields: dict[str, Any] = {
        "patient_id": pid,
        "birth_date": date(1990, 3, 4),
        "sex": "other",
        "start": START,
        "cgm_mg_dl": cgm,
        "carbs_g": carbs,
        "bolus_u": bolus,
        "basal_u_per_h": basal,
        "weight_kg": 72.5,
    }
    fields.update(overrides)
    return GlucoseHistory(**fields)


def _expected_insulin(history: GlucoseHistory) -> np.ndarray:
    return np.asarray(history.bolus_u) + np.asarray(history.basal_u_per_h) * 5 / 60


@pytest.mark.parametrize(
    "options",
    [
        ExportOptions(),
        ExportOptions(gzip=True, glucose_unit="mmol/L"),
        ExportOptions(fhir_version="R5"),
    ],
    ids=["r4b-mgdl", "gzip-mmol", "r5"],
)
def test_round_trip_gives_the_same_grid(tmp_path: Path, options: ExportOptions) -> None:
    histories = [_history(1, "p1"), _history(2, "p2")]
    written = write_site(tmp_path / "site", histories, options=options)
    export = read_site(written.folder, secret=bytes(32))
    assert export.report.rejected == 0
    for history, series in zip(histories, export.patients, strict=True):
        assert series.patient_id == history.patient_id
        assert series.start == START
        cgm = np.asarray(history.cgm_mg_dl, dtype=np.float32)
        np.testing.assert_array_equal(series.cgm_mask, ~np.isnan(cgm))
        np.testing.assert_allclose(series.cgm_mg_dl, cgm, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(series.insulin_u, _expected_insulin(history), atol=1e-5)
        np.testing.assert_array_equal(series.carbs_g, np.asarray(history.carbs_g, np.float32))
        assert (series.sex, series.weight_kg) == ("other", 72.5)
        assert series.age_years == pytest.approx(34.16, abs=0.01)


def test_mg_dl_round_trip_is_exact_in_float32(tmp_path: Path) -> None:
    history = _history(3, cgm_mg_dl=np.float32(np.random.default_rng(0).uniform(40, 400, 288)))
    write_site(tmp_path / "site", [history])
    series = read_site(tmp_path / "site", secret=bytes(32)).patients[0]
    np.testing.assert_array_equal(series.cgm_mg_dl, np.asarray(history.cgm_mg_dl, np.float32))


def test_constant_basal_runs_are_coalesced_into_periods(tmp_path: Path) -> None:
    write_site(tmp_path / "site", [_history(4)])
    lines = (tmp_path / "site" / "MedicationAdministration.ndjson").read_text().splitlines()
    periods = [json.loads(x) for x in lines if "rateQuantity" in x]
    assert [p["dosage"]["rateQuantity"]["value"] for p in periods] == [0.85, 0.4, 0.85, 0.85]
    assert periods[1]["effectivePeriod"] == {
        "start": "2024-05-01T11:00:00Z",
        "end": "2024-05-01T13:30:00Z",
    }


def test_oncology_round_trip_gives_the_daily_grid(tmp_path: Path) -> None:
    days = 40
    volume = np.where(np.arange(days) % 4 == 0, 30.0 + np.arange(days), np.nan)
    chemo = np.where(np.arange(days) % 7 == 0, 5.0, 0.0)
    radio = np.where(np.arange(days) % 2 == 1, 2.0, 0.0)
    history = OncologyHistory(
        "onc1", date(1955, 1, 1), "male", datetime(2024, 1, 1, tzinfo=UTC), volume, chemo, radio
    )
    write_site(tmp_path / "site", [history])
    export = read_site(tmp_path / "site", secret=bytes(32))
    series = export.oncology[0]
    assert export.patients == ()
    assert series.n_days == days
    np.testing.assert_array_equal(series.tumour_volume_cm3, np.float32(volume))
    np.testing.assert_array_equal(series.chemo_mg, np.float32(chemo))
    np.testing.assert_array_equal(series.radio_gy, np.float32(radio))


def test_consents_are_passed_through_after_validation(tmp_path: Path) -> None:
    consent = {
        "resourceType": "Consent",
        "id": "k1",
        "status": "active",
        "decision": "permit",
        "subject": {"reference": "Patient/p1"},
    }
    write_site(tmp_path / "site", [_history(5, consents=(consent,))])
    export = read_site(tmp_path / "site", secret=bytes(32))
    assert export.consents["p1"][0].resource.decision == "permit"


def test_a_consent_about_another_patient_leaves_nothing_behind(tmp_path: Path) -> None:
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "decision": "permit",
        "subject": {"reference": "Patient/someone-else"},
    }
    with pytest.raises(ConfigError, match="does not reference its patient"):
        write_site(tmp_path / "site", [_history(6), _history(7, "p2", consents=(consent,))])
    assert list(tmp_path.iterdir()) == []


def test_an_existing_export_is_not_overwritten_by_default(tmp_path: Path) -> None:
    write_site(tmp_path / "site", [_history(8)])
    with pytest.raises(ConfigError, match="already exists"):
        write_site(tmp_path / "site", [_history(9)])
    write_site(tmp_path / "site", [_history(9, "p9")], overwrite=True)
    assert [s.patient_id for s in read_site(tmp_path / "site", secret=bytes(32)).patients] == ["p9"]


@pytest.mark.parametrize("bad_id", ["", "has space", "x" * 65, "Patient/1"])
def test_patient_ids_must_be_fhir_ids(tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(ConfigError, match="is not a FHIR id"):
        write_site(tmp_path / "site", [_history(10, bad_id)])


@pytest.mark.parametrize("options", [ExportOptions(), ExportOptions(glucose_unit="mmol/L")])
def test_fast_observation_lines_are_the_json_of_the_resource(
    tmp_path: Path, options: ExportOptions
) -> None:
    # The writer formats Observations from cached fragments; each line must be exactly the
    # compact JSON of the resource it stands for, keys in the documented order.
    write_site(tmp_path / "site", [_history(3), _history(4, pid="p2")], options=options)
    lines = (tmp_path / "site" / "Observation.ndjson").read_text().splitlines()
    assert len(lines) > 400
    for line in lines:
        resource = json.loads(line)
        assert json.dumps(resource, separators=(",", ":"), ensure_ascii=False) == line
        assert list(resource)[:3] == ["resourceType", "id", "status"]
        assert list(resource)[-2:] == ["effectiveDateTime", "valueQuantity"]


_FLOAT32 = st.floats(min_value=0, max_value=2.0**24, width=32, allow_subnormal=False)


@given(st.lists(_FLOAT32, min_size=1, max_size=50))
def test_bulk_number_text_is_the_shortest_float32_round_trip(values: list[float]) -> None:
    from fedtwin.fhir.writer import _number, _numbers_text

    texts = _numbers_text(np.array(values, dtype=np.float64))
    assert [np.float32(float(t)) for t in texts] == [np.float32(v) for v in values]
    assert texts == [repr(_number(v)) for v in values]
