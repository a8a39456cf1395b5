"""Bad consents are refused with one line naming file, line and element; never a crash."""

# ruff: noqa: E501  (one table row per line: the cases read as a table)

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.consent import consent_records, record_from_json
from fedtwin.errors import IngestError
from fedtwin.fhir import read_consents

SOURCE = Path("export/Consent.ndjson")


@pytest.mark.parametrize(
    ("change", "element", "what"),
    [
        ({"status": "revoked"}, "Consent.status", "unknown R4B status 'revoked'"),
        ({"provision": {"type": "allow"}}, "Consent.provision.type", "unknown code 'allow'"),
        (
            {"provision": {"type": "permit", "provision": [{"purpose": []}]}},
            "Consent.provision.provision[0].type",
            "must state permit or deny",
        ),
        (
            {"provision": {"type": "permit", "period": {"start": "2024-05-01", "end": "2024-04-01"}}},
            "Consent.provision.period",
            "ends before it starts",
        ),
        (
            {"provision": {"type": "permit", "dataPeriod": {"start": "2024", "end": "2023-12"}}},
            "Consent.provision.dataPeriod",
            "ends before it starts",
        ),
        (
            {"provision": {"type": "permit", "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "RESEARCH"}
            ]}},
            "Consent.provision.purpose",
            "unknown purpose of use code 'RESEARCH'",
        ),
        (
            {"provision": {"type": "permit", "purpose": [{"system": "http://x.org", "code": "HRESCH"}]}},
            "Consent.provision.purpose",
            "is not http://terminology.hl7.org/CodeSystem/v3-ActReason",
        ),
        (
            {"scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "science"}]}},
            "Consent.scope",
            "unknown consentscope code 'science'",
        ),
        (
            {"provision": {"type": "permit", "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Glucose"}]}},
            "Consent.provision.class",
            "'Glucose' is not a FHIR resource type",
        ),
        (
            {"provision": {"type": "permit", "data": [{"meaning": "everything", "reference": {"reference": "Patient/p1"}}]}},
            "Consent.provision.data[0].meaning",
            "unknown consent-data-meaning code 'everything'",
        ),
    ],
)  # fmt: skip
def test_bad_r4_consent_names_file_line_and_element(
    change: dict[str, Any], element: str, what: str, consents: SimpleNamespace
) -> None:
    resource = consents.r4(consents.rule(type="permit")) | change
    with pytest.raises(IngestError) as raised:
        record_from_json(resource, file=SOURCE, line=7)
    message = str(raised.value)
    assert message.startswith(f"{SOURCE}:7: {element}: ")
    assert what in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "element", "what"),
    [
        ({"status": "proposed"}, "Consent.status", "unknown R5 status 'proposed'"),
        ({"decision": "allow"}, "Consent.decision", "unknown code 'allow'"),
        ({"period": {"start": "2025-01-01", "end": "2024-01-01"}}, "Consent.period", "ends before"),
        (
            {"provision": [{"provision": [{"period": {"start": "2024-02", "end": "2024-01"}}]}]},
            "Consent.provision[0].provision[0].period",
            "ends before it starts",
        ),
        (
            {"provision": [{"resourceType": [{"system": "http://hl7.org/fhir/fhir-types", "code": "glucose"}]}]},
            "Consent.provision[0].resourceType",
            "not a FHIR resource type",
        ),
    ],
)  # fmt: skip
def test_bad_r5_consent_names_file_line_and_element(
    change: dict[str, Any], element: str, what: str, consents: SimpleNamespace
) -> None:
    with pytest.raises(IngestError) as raised:
        record_from_json(consents.r5("permit") | change, file=SOURCE, line=3)
    assert str(raised.value).startswith(f"{SOURCE}:3: {element}: ")
    assert what in str(raised.value)


def test_consent_failing_fhir_validation_names_its_line(
    tmp_path: Path, consents: SimpleNamespace
) -> None:
    folder = consents.write_export(
        tmp_path / "export",
        [consents.r4(consents.rule(type="permit"))],
        raw_lines=['{"resourceType": "Consent", "status": "active", "patient": 42}'],
    )
    with pytest.raises(IngestError, match=r"Consent\.ndjson:2: fails FHIR R4B validation"):
        read_consents(folder)


def test_second_bad_consent_is_found_after_good_ones(
    tmp_path: Path, consents: SimpleNamespace
) -> None:
    good = consents.r4(consents.rule(type="permit"))
    bad = consents.r4(consents.rule(type="permit"), cid="c2", status="on-hold")
    folder = consents.write_export(tmp_path / "export", [good, bad])
    with pytest.raises(IngestError, match=r"Consent\.ndjson:2: Consent\.status: unknown R4B"):
        consent_records(read_consents(folder))


@settings(max_examples=40, deadline=None)
@given(
    status=st.text(min_size=1, max_size=12),
    decision=st.one_of(st.none(), st.text(max_size=8)),
    end=st.sampled_from(["2023-01-01", "2024", "2025-06-30T12:00:00+02:00", "2026-13"]),
)
def test_arbitrary_codes_give_a_record_or_an_ingest_error(
    status: str, decision: str | None, end: str
) -> None:
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "c1",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "date": "2024-01-01",
        "period": {"start": "2024-01-01", "end": end},
    }
    if decision is not None:
        resource["decision"] = decision
    try:
        record = record_from_json(resource, fhir_version="R5")
    except IngestError as error:
        assert str(error).startswith("<memory>:1: ")
        assert "\n" not in str(error)
    else:
        assert record.status in {
            "draft",
            "active",
            "inactive",
            "not-done",
            "entered-in-error",
            "unknown",
        }
        assert record.base is None or record.base.value == decision
