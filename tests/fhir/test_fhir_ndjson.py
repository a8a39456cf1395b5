"""Streaming NDJSON: generic iter_resources, the R4B/R5 rule, and malformed lines (hypothesis)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtwin.errors import IngestError
from fedtwin.fhir import (
    FhirVersion,
    IngestOptions,
    IngestPolicy,
    detect_version,
    iter_resources,
    read_consents,
    read_site,
)

R4B_CONSENT = {
    "resourceType": "Consent",
    "id": "c1",
    "status": "active",
    "scope": {"coding": [{"system": "http://x.org/scope", "code": "research"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
    "patient": {"reference": "Patient/p1"},
}
R5_CONSENT = {
    "resourceType": "Consent",
    "id": "c2",
    "status": "active",
    "decision": "deny",
    "subject": {"reference": "Patient/p2"},
}


def test_iter_resources_yields_validated_models_with_file_and_line(
    fhir: Any, tmp_path: Path
) -> None:
    path = fhir.write_ndjson(tmp_path / "Consent.ndjson", [R4B_CONSENT, R5_CONSENT])
    parsed = list(iter_resources(path, "Consent"))
    assert [(p.file, p.line, p.fhir_version) for p in parsed] == [
        (path, 1, FhirVersion.R4B),
        (path, 2, FhirVersion.R5),
    ]
    assert type(parsed[0].resource).__module__ == "fhir.resources.R4B.consent"
    assert type(parsed[1].resource).__module__ == "fhir.resources.consent"
    assert parsed[1].resource.decision == "deny"


def test_explicit_version_overrides_detection(fhir: Any, tmp_path: Path) -> None:
    path = fhir.write_ndjson(tmp_path / "Consent.ndjson", [R4B_CONSENT])
    with pytest.raises(IngestError, match=r"Consent.ndjson:1: fails FHIR R5 validation"):
        list(iter_resources(path, "Consent", fhir_version="R5"))


def test_detection_uses_elements_only_r5_defines() -> None:
    assert detect_version(R5_CONSENT) is FhirVersion.R5
    assert detect_version(R4B_CONSENT) is FhirVersion.R4B
    assert detect_version({"resourceType": "Patient", "id": "p"}) is FhirVersion.R4B


def test_iter_resources_stops_at_the_first_bad_line(fhir: Any, tmp_path: Path) -> None:
    path = fhir.write_ndjson(tmp_path / "Consent.ndjson", [R4B_CONSENT, "[1, 2]", R5_CONSENT])
    seen = []
    with pytest.raises(IngestError) as caught:
        for parsed in iter_resources(path, "Consent"):
            seen.append(parsed.line)
    assert seen == [1]
    assert str(caught.value) == f"{path}:2: line is not a JSON object"


def test_nan_is_not_json(fhir: Any, tmp_path: Path) -> None:
    line = json.dumps(R4B_CONSENT).replace('"c1"', '"c1", "x": NaN')
    path = fhir.write_ndjson(tmp_path / "Consent.ndjson", [line])
    with pytest.raises(IngestError, match=r"Consent.ndjson:1: invalid JSON \(NaN is not valid"):
        list(iter_resources(path, "Consent"))


def test_deeply_nested_line_is_invalid_json_not_a_crash(fhir: Any, tmp_path: Path) -> None:
    path = fhir.write_ndjson(tmp_path / "Consent.ndjson", ['{"a":' * 200_000])
    with pytest.raises(IngestError, match=r"Consent.ndjson:1: invalid JSON"):
        list(iter_resources(path, "Consent"))


def test_read_consents_groups_by_patient(fhir: Any, tmp_path: Path) -> None:
    fhir.write_ndjson(tmp_path / "Consent.ndjson", [R4B_CONSENT, R5_CONSENT])
    grouped = read_consents(tmp_path)
    assert {k: [p.line for p in v] for k, v in grouped.items()} == {"p1": [1], "p2": [2]}


def test_read_consents_refuses_a_consent_for_an_unknown_patient(fhir: Any, tmp_path: Path) -> None:
    fhir.write_ndjson(tmp_path / "Consent.ndjson", [R4B_CONSENT, R5_CONSENT])
    with pytest.raises(IngestError, match=r"Consent.ndjson:2: consent for a patient not in"):
        read_consents(tmp_path, patient_ids={"p1"})


def _valid_observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-05-01T08:00:00Z",
        "valueQuantity": {
            "value": 120,
            "unit": "mg/dL",
            "system": "http://unitsofmeasure.org",
            "code": "mg/dL",
        },
    }


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.sampled_from(["2024-05-01", "2024-05-01T08:00:00", "Patient/zz", "mmol/L", "U/h"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated_observation(draw: st.DrawFn) -> str:
    """A valid CGM Observation with one element replaced, removed or the line corrupted."""
    resource = _valid_observation()
    kind = draw(st.sampled_from(["replace", "nested", "delete", "bytes", "truncate"]))
    if kind == "replace":
        resource[draw(st.sampled_from([*resource, "extra"]))] = draw(JSON_VALUES)
    elif kind == "nested":
        holder = draw(st.sampled_from(["valueQuantity", "subject", "code"]))
        resource[holder] = dict(resource[holder]) if isinstance(resource[holder], dict) else {}
        resource[holder][draw(st.sampled_from(["value", "code", "reference", "coding"]))] = draw(
            JSON_VALUES
        )
    elif kind == "delete":
        del resource[draw(st.sampled_from(sorted(resource)))]
    line = json.dumps(resource)
    if kind == "bytes":
        return draw(st.text(max_size=40))
    if kind == "truncate":
        return line[: draw(st.integers(0, len(line) - 1))]
    return line


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(mutated_observation(), min_size=1, max_size=4))
def test_any_malformed_line_is_an_ingest_error_or_counted_never_a_crash(
    lines: list[str],
) -> None:
    patient = json.dumps({"resourceType": "Patient", "id": "p1", "gender": "female"})
    good = [json.dumps(dict(_valid_observation(), id=f"ok{k}")) for k in range(2)]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "Patient.ndjson").write_text(patient + "\n")
        body = "\n".join([*good, *(line.replace("\n", " ") for line in lines)]) + "\n"
        (root / "Observation.ndjson").write_text(body)
        try:
            read_site(root, secret=bytes(32), options=IngestOptions(min_cgm_readings=1))
        except IngestError as error:
            assert str(error).startswith(str(root))
            assert "\n" not in str(error)
        lenient = IngestOptions(policy=IngestPolicy.lenient(), min_cgm_readings=1)
        report = read_site(root, secret=bytes(32), options=lenient).report
        non_blank = sum(1 for line in body.encode().split(b"\n") if line.strip())
        assert report.resources["Observation"].read == non_blank
        for counts in report.resources.values():
            assert counts.read == counts.used + counts.rejected
