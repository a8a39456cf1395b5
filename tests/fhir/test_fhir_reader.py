"""read_site on small exports: every bad-input class gives one clear file:line:reason."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedtwin.errors import IngestError
from fedtwin.fhir import ErrorClass, IngestOptions, IngestPolicy, read_site

LENIENT = IngestOptions(policy=IngestPolicy.lenient(), min_cgm_readings=1)
STRICT = IngestOptions(min_cgm_readings=1)


def _strict_error(folder: Path, fhir: Any) -> str:
    with pytest.raises(IngestError) as caught:
        read_site(folder, secret=fhir.SECRET, options=STRICT)
    return str(caught.value)


def _with_bad_third_line(fhir: Any, make_export: Any, bad: dict[str, Any] | str) -> Path:
    readings = fhir.cgm_day()
    return make_export(Patient=[fhir.patient()], Observation=[*readings[:2], bad, *readings[2:]])


def test_invalid_json_line_names_file_line_and_reason(fhir: Any, make_export: Any) -> None:
    folder = _with_bad_third_line(fhir, make_export, '{"resourceType": "Observation", "id": ')
    message = _strict_error(folder, fhir)
    assert message.startswith(f"{folder / 'Observation.ndjson'}:3: invalid JSON")


def test_resource_failing_fhir_validation_names_the_element(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z")
    bad["subject"] = {"reference": "Patient/p1", "bogus": 1}
    folder = _with_bad_third_line(fhir, make_export, bad)
    message = _strict_error(folder, fhir)
    assert message.startswith(f"{folder / 'Observation.ndjson'}:3: fails FHIR R4B validation")
    assert "subject.bogus" in message


def test_wrong_resource_type_in_a_file_is_rejected(fhir: Any, make_export: Any) -> None:
    folder = _with_bad_third_line(fhir, make_export, fhir.patient("p2"))
    message = _strict_error(folder, fhir)
    assert message == (
        f"{folder / 'Observation.ndjson'}:3: resourceType 'Patient' in a Observation file"
    )


def test_observation_for_an_unknown_patient_is_rejected(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z", subject="Patient/nobody")
    message = _strict_error(_with_bad_third_line(fhir, make_export, bad), fhir)
    assert message.endswith("Observation.ndjson:3: subject is a patient not in Patient.ndjson")
    assert "nobody" not in message


def test_missing_unit_is_an_error(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z", 110.0, None)
    bad["valueQuantity"] = {"value": 110.0}
    message = _strict_error(_with_bad_third_line(fhir, make_export, bad), fhir)
    assert "Observation.ndjson:3: valueQuantity: missing unit" in message


@pytest.mark.parametrize("unit", ["mg/dl", "mmol/l", "mg%", "g"])
def test_unknown_unit_is_an_error_not_a_guess(fhir: Any, make_export: Any, unit: str) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z", 110.0, unit)
    message = _strict_error(_with_bad_third_line(fhir, make_export, bad), fhir)
    assert f"Observation.ndjson:3: valueQuantity: unknown unit '{unit}' for glucose" in message


def test_duplicate_observation_id_names_both_lines(fhir: Any, make_export: Any) -> None:
    readings = fhir.cgm_day()
    copy = dict(readings[5], effectiveDateTime="2024-05-01T11:00:00Z")
    folder = make_export(Patient=[fhir.patient()], Observation=[*readings, copy])
    message = _strict_error(folder, fhir)
    assert message == (
        f"{folder / 'Observation.ndjson'}:{len(readings) + 1}: duplicate id (first at line 6)"
    )


def test_duplicate_patient_id_is_rejected(fhir: Any, make_export: Any) -> None:
    folder = make_export(Patient=[fhir.patient(), fhir.patient()], Observation=fhir.cgm_day())
    message = _strict_error(folder, fhir)
    assert message == f"{folder / 'Patient.ndjson'}:2: duplicate id (first at line 1)"


@pytest.mark.parametrize("glucose", [9.9, 1000.5, 0.0, -5.0])
def test_glucose_outside_10_to_1000_is_out_of_range(
    fhir: Any, make_export: Any, glucose: float
) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z", glucose)
    message = _strict_error(_with_bad_third_line(fhir, make_export, bad), fhir)
    assert "Observation.ndjson:3: cgm" in message
    assert "outside [10, 1000]" in message


def test_mmol_glucose_out_of_range_after_conversion(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z", 0.5, "mmol/L", code="105272-9")
    message = _strict_error(_with_bad_third_line(fhir, make_export, bad), fhir)
    assert "Observation.ndjson:3: cgm 9.008 mg/dL outside [10, 1000]" in message


def test_timestamp_without_offset_is_rejected(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00")
    message = _strict_error(_with_bad_third_line(fhir, make_export, bad), fhir)
    assert "Observation.ndjson:3: effectiveDateTime: time has no UTC offset" in message


def test_date_without_time_of_day_is_rejected(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01")
    message = _strict_error(_with_bad_third_line(fhir, make_export, bad), fhir)
    assert "Observation.ndjson:3: effectiveDateTime: time has no time of day" in message


def test_basal_period_ending_before_it_starts_is_out_of_order(fhir: Any, make_export: Any) -> None:
    doses = [
        fhir.bolus("b1", "2024-05-01T08:30:00Z", 2.0),
        fhir.basal("b2", "2024-05-01T09:00:00Z", "2024-05-01T08:00:00Z", 1.0),
    ]
    folder = make_export(
        Patient=[fhir.patient()], Observation=fhir.cgm_day(), MedicationAdministration=doses
    )
    message = _strict_error(folder, fhir)
    assert message == (
        f"{folder / 'MedicationAdministration.ndjson'}:2: "
        "effectivePeriod: end is not after start (out of order)"
    )


def test_empty_file_is_an_error_under_strict(fhir: Any, make_export: Any) -> None:
    folder = make_export(Patient=[fhir.patient()], Observation=fhir.cgm_day(), Consent=[])
    assert _strict_error(folder, fhir) == f"{folder / 'Consent.ndjson'}: empty file (no resources)"


def test_empty_file_is_a_note_under_lenient(fhir: Any, make_export: Any) -> None:
    folder = make_export(Patient=[fhir.patient()], Observation=fhir.cgm_day(), Consent=[])
    report = read_site(folder, secret=fhir.SECRET, options=LENIENT).report
    assert report.notes == (f"{folder / 'Consent.ndjson'}: empty file (no resources)",)
    assert report.patients_usable == 1


def test_truncated_gzip_names_the_last_complete_line(fhir: Any, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    fhir.write_ndjson(folder / "Patient.ndjson", [fhir.patient()])
    packed = gzip.compress("".join(json.dumps(o) + "\n" for o in fhir.cgm_day(hours=20)).encode())
    (folder / "Observation.ndjson.gz").write_bytes(packed[: len(packed) // 2])
    message = _strict_error(folder, fhir)
    assert message.startswith(
        f"{folder / 'Observation.ndjson.gz'}: truncated gzip stream after line "
    )
    last = int(message.rsplit(" ", 1)[1])
    assert 0 < last < 20 * 12


def test_gzip_export_reads_like_plain(fhir: Any, tmp_path: Path, make_export: Any) -> None:
    plain = make_export(Patient=[fhir.patient()], Observation=fhir.cgm_day())
    packed = tmp_path / "packed"
    packed.mkdir()
    for name in ("Patient", "Observation"):
        data = (plain / f"{name}.ndjson").read_bytes()
        (packed / f"{name}.ndjson.gz").write_bytes(gzip.compress(data))
    one = read_site(plain, secret=fhir.SECRET, options=STRICT).patients[0]
    two = read_site(packed, secret=fhir.SECRET, options=STRICT).patients[0]
    np.testing.assert_array_equal(one.cgm_mg_dl, two.cgm_mg_dl)


def test_folder_without_patient_file_is_invalid(fhir: Any, make_export: Any) -> None:
    folder = make_export(Observation=fhir.cgm_day())
    assert "no Patient.ndjson" in _strict_error(folder, fhir)


def test_mmol_per_litre_is_converted_with_18_016(fhir: Any, make_export: Any) -> None:
    readings = [
        fhir.observation(f"m{k}", f"2024-05-01T08:{5 * k:02d}:00Z", 5.5, "mmol/L", code="105272-9")
        for k in range(3)
    ]
    folder = make_export(Patient=[fhir.patient()], Observation=readings)
    series = read_site(folder, secret=fhir.SECRET, options=STRICT).patients[0]
    np.testing.assert_allclose(series.cgm_mg_dl, np.float32(5.5 * 18.016))


def test_unit_text_without_code_is_read_only_when_it_is_exact_ucum(
    fhir: Any, make_export: Any
) -> None:
    good = fhir.observation("a", "2024-05-01T08:00:00Z", 101.0)
    good["valueQuantity"] = {"value": 101.0, "unit": "mg/dL"}
    bad = fhir.observation("b", "2024-05-01T08:05:00Z", 102.0)
    bad["valueQuantity"] = {"value": 102.0, "unit": "mg/dl"}
    folder = make_export(Patient=[fhir.patient()], Observation=[good, bad])
    export = read_site(folder, secret=fhir.SECRET, options=LENIENT)
    counts = export.report.resources["Observation"]
    assert (counts.used, counts.rejected_by_reason) == (1, {ErrorClass.UNIT: 1})
    assert float(export.patients[0].cgm_mg_dl[0]) == 101.0


def test_blood_glucose_fills_the_channel_only_without_cgm_readings(
    fhir: Any, make_export: Any
) -> None:
    blood = fhir.observation("bg", "2024-05-01T08:00:00Z", 150.0, code="2339-0")
    with_cgm = make_export(Patient=[fhir.patient()], Observation=[*fhir.cgm_day(), blood])
    only_blood = make_export(Patient=[fhir.patient()], Observation=[blood])
    first = read_site(with_cgm, secret=fhir.SECRET, options=LENIENT)
    second = read_site(only_blood, secret=fhir.SECRET, options=LENIENT)
    assert first.report.resources["Observation"].rejected_by_reason == {ErrorClass.SUPERSEDED: 1}
    assert float(first.patients[0].cgm_mg_dl[0]) == 100.0
    assert float(second.patients[0].cgm_mg_dl[0]) == 150.0


def test_second_reading_in_a_bin_is_counted_not_used(fhir: Any, make_export: Any) -> None:
    readings = [
        fhir.observation("a", "2024-05-01T08:03:00Z", 130.0),
        fhir.observation("b", "2024-05-01T08:01:00Z", 120.0),
        fhir.observation("c", "2024-05-01T08:06:00Z", 140.0),
    ]
    folder = make_export(Patient=[fhir.patient()], Observation=readings)
    export = read_site(folder, secret=fhir.SECRET, options=STRICT)
    series = export.patients[0]
    assert series.cgm_mg_dl.tolist() == [120.0, 140.0]
    counts = export.report.resources["Observation"]
    assert (counts.read, counts.used, counts.rejected_by_reason) == (
        3,
        2,
        {ErrorClass.SAME_BIN: 1},
    )


def test_observation_outside_the_profile_is_counted_and_never_fatal(
    fhir: Any, make_export: Any
) -> None:
    heart_rate = fhir.observation("hr", "2024-05-01T08:00:00Z", 70, "/min", code="8867-4")
    folder = make_export(Patient=[fhir.patient()], Observation=[heart_rate, *fhir.cgm_day()])
    counts = read_site(folder, secret=fhir.SECRET, options=STRICT).report.resources["Observation"]
    assert counts.rejected_by_reason == {ErrorClass.NOT_IN_PROFILE: 1}


def test_basal_rate_is_spread_over_the_bins_it_covers(fhir: Any, make_export: Any) -> None:
    doses = [
        fhir.basal("r", "2024-05-01T08:02:30Z", "2024-05-01T08:12:30Z", 1.2),
        fhir.bolus("b", "2024-05-01T08:06:00Z", 3.0),
    ]
    folder = make_export(
        Patient=[fhir.patient()], Observation=fhir.cgm_day(), MedicationAdministration=doses
    )
    series = read_site(folder, secret=fhir.SECRET, options=STRICT).patients[0]
    per_minute = 1.2 / 60
    np.testing.assert_allclose(
        series.insulin_u[:4], [2.5 * per_minute, 5 * per_minute + 3.0, 2.5 * per_minute, 0.0]
    )
    assert series.insulin_mask[:4].tolist() == [True, True, True, False]


def test_r5_medication_administration_is_detected_and_read(fhir: Any, make_export: Any) -> None:
    dose = fhir.bolus("b", "2024-05-01T08:06:00Z", 3.0)
    dose["medication"] = {"concept": dose.pop("medicationCodeableConcept")}
    dose["occurenceDateTime"] = dose.pop("effectiveDateTime")
    folder = make_export(
        Patient=[fhir.patient()], Observation=fhir.cgm_day(), MedicationAdministration=[dose]
    )
    series = read_site(folder, secret=fhir.SECRET, options=STRICT).patients[0]
    assert float(series.insulin_u[1]) == 3.0


def test_lenient_policy_rejects_counts_and_carries_on(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z", 5000.0)
    folder = _with_bad_third_line(fhir, make_export, bad)
    export = read_site(folder, secret=fhir.SECRET, options=LENIENT)
    counts = export.report.resources["Observation"]
    assert (counts.read, counts.used, counts.rejected) == (25, 24, 1)
    assert counts.rejected_by_reason == {ErrorClass.OUT_OF_RANGE: 1}
    assert export.report.examples[0].startswith(f"{folder / 'Observation.ndjson'}:3: cgm")


def test_per_class_policy_can_make_one_class_lenient(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z", 5000.0)
    folder = _with_bad_third_line(fhir, make_export, bad)
    policy = IngestPolicy(default="strict", per_class={ErrorClass.OUT_OF_RANGE: "lenient"})
    export = read_site(folder, secret=fhir.SECRET, options=IngestOptions(policy=policy))
    assert export.report.rejected == 1


def test_static_covariates_come_from_patient_and_body_weight(fhir: Any, make_export: Any) -> None:
    weight = fhir.observation("w", "2024-04-01T08:00:00Z", 154.0, "[lb_av]", code="29463-7")
    folder = make_export(
        Patient=[fhir.patient(birth="1984-05-01", gender="male")],
        Observation=[weight, *fhir.cgm_day()],
    )
    series = read_site(folder, secret=fhir.SECRET, options=STRICT).patients[0]
    assert series.sex == "male"
    assert series.weight_kg == pytest.approx(154.0 * 0.45359237)
    assert series.age_years == pytest.approx(40.0, abs=0.01)


def test_urn_uuid_subject_resolves_to_the_patient_with_that_id(fhir: Any, make_export: Any) -> None:
    uid = "6f1c1f0e-3c4f-4a55-9d38-1d7bbd5c4a10"
    readings = [dict(r, subject={"reference": f"urn:uuid:{uid}"}) for r in fhir.cgm_day()]
    folder = make_export(Patient=[fhir.patient(uid)], Observation=readings)
    assert read_site(folder, secret=fhir.SECRET, options=STRICT).patients[0].patient_id == uid


def test_patient_with_too_few_readings_is_not_usable(fhir: Any, make_export: Any) -> None:
    folder = make_export(Patient=[fhir.patient()], Observation=fhir.cgm_day()[:5])
    export = read_site(folder, secret=fhir.SECRET, options=IngestOptions(min_cgm_readings=12))
    assert export.patients == ()
    counts = export.report.resources["Observation"]
    assert counts.rejected_by_reason == {ErrorClass.INSUFFICIENT_DATA: 5}


def test_records_older_than_the_span_are_not_used(fhir: Any, make_export: Any) -> None:
    old = fhir.observation("old", "2024-01-01T08:00:00Z", 99.0)
    folder = make_export(Patient=[fhir.patient()], Observation=[old, *fhir.cgm_day()])
    options = IngestOptions(max_span_days=30, min_cgm_readings=1)
    export = read_site(folder, secret=fhir.SECRET, options=options)
    assert export.report.resources["Observation"].rejected_by_reason == {ErrorClass.OUTSIDE_SPAN: 1}
    assert export.patients[0].start.isoformat() == "2024-05-01T08:00:00+00:00"


def test_consents_are_validated_and_grouped_per_patient(fhir: Any, make_export: Any) -> None:
    r5 = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "decision": "permit",
        "subject": {"reference": "Patient/p1"},
    }
    stranger = dict(r5, id="c2", subject={"reference": "Patient/p9"})
    folder = make_export(
        Patient=[fhir.patient()], Observation=fhir.cgm_day(), Consent=[r5, stranger]
    )
    export = read_site(folder, secret=fhir.SECRET, options=LENIENT)
    assert [c.line for c in export.consents["p1"]] == [1]
    assert str(export.consents["p1"][0].fhir_version) == "R5"
    assert export.report.resources["Consent"].rejected_by_reason == {ErrorClass.UNKNOWN_PATIENT: 1}


def test_report_names_no_patient_and_no_resource_id(fhir: Any, make_export: Any) -> None:
    pid = "zqx-patient-4711"
    readings = fhir.cgm_day(pid=pid, prefix="zqx-res-")
    bad = fhir.observation("zqx-res-bad", "2024-05-01T09:00:00Z", 5.0, subject=f"Patient/{pid}")
    folder = make_export(Patient=[fhir.patient(pid)], Observation=[*readings, bad])
    export = read_site(folder, secret=fhir.SECRET, options=LENIENT)
    dumped = export.report.model_dump_json()
    assert "zqx" not in dumped
    assert export.patients[0].pseudonym not in dumped
    assert not math.isnan(export.report.sampling.coverage)


def test_absolute_patient_url_resolves_to_the_local_patient(fhir: Any, make_export: Any) -> None:
    base = "https://fhir.example-hospital.org/R4/Patient/p1"
    readings = [dict(r, subject={"reference": base}) for r in fhir.cgm_day()]
    folder = make_export(Patient=[fhir.patient()], Observation=readings)
    assert read_site(folder, secret=fhir.SECRET, options=STRICT).patients[0].patient_id == "p1"


def test_insulin_named_in_the_display_is_read_when_no_code_matches(
    fhir: Any, make_export: Any
) -> None:
    dose = fhir.bolus("b", "2024-05-01T08:06:00Z", 2.0)
    dose["medicationCodeableConcept"] = {
        "coding": [
            {
                "system": "http://example.org/drugs",
                "code": "X1",
                "display": "Insulin Lispro 100 UNT/ML",
            }
        ]
    }
    folder = make_export(
        Patient=[fhir.patient()], Observation=fhir.cgm_day(), MedicationAdministration=[dose]
    )
    series = read_site(folder, secret=fhir.SECRET, options=STRICT).patients[0]
    assert float(series.insulin_u[1]) == 2.0


def test_unit_system_other_than_ucum_is_an_error(fhir: Any, make_export: Any) -> None:
    bad = fhir.observation("x", "2024-05-01T09:00:00Z")
    bad["valueQuantity"]["system"] = "http://snomed.info/sct"
    message = _strict_error(_with_bad_third_line(fhir, make_export, bad), fhir)
    assert "Observation.ndjson:3: valueQuantity: unit system is not UCUM" in message
