"""Each log entry becomes one valid FHIR R4 AuditEvent, traceable to its signed leaf."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle

from fedtwin.audit import audit_bundle, verify_log
from fedtwin.audit.fhir_export import BALP_AUTHZ, DCM, FEDTWIN

Lines = Callable[[Path], list[bytes]]
NOW = datetime(2025, 3, 2, tzinfo=UTC)


def _bundle(run: Any, signers: Any, party: str, lines_of: Lines) -> tuple[dict[str, Any], Any]:
    report = verify_log(run.log(party), signers[party].verifier_key)
    lines = lines_of(run.log(party))
    return audit_bundle(report.events, lines, party, NOW), report


def test_every_entry_maps_to_one_valid_audit_event(run: Any, signers: Any, lines_of: Lines) -> None:
    bundle, report = _bundle(run, signers, "coordinator", lines_of)
    Bundle.model_validate(bundle)
    resources = [entry["resource"] for entry in bundle["entry"]]
    assert len(resources) == report.entries == 22
    lines = lines_of(run.log("coordinator"))
    for index, (resource, event, line) in enumerate(
        zip(resources, report.events, lines, strict=True)
    ):
        FhirAuditEvent.model_validate(resource)
        assert resource["id"] == f"coordinator-{index}"
        assert {"system": FEDTWIN, "code": event.type} in resource["subtype"]
        leaf = next(d for d in resource["entity"][0]["detail"] if d["type"] == "leaf_sha256")
        assert leaf["valueString"] == hashlib.sha256(b"\x00" + line).hexdigest()
        assert resource["recorded"] == event.time.isoformat().replace("+00:00", "Z")
    assert len({entry["fullUrl"] for entry in bundle["entry"]}) == 22


def test_consent_filtering_follows_the_balp_authz_consent_shape(
    run: Any, signers: Any, lines_of: Lines
) -> None:
    bundle, _ = _bundle(run, signers, "site-a", lines_of)
    consent = [
        e["resource"]
        for e in bundle["entry"]
        if {"system": FEDTWIN, "code": "consent_filtered"} in e["resource"]["subtype"]
    ]
    assert len(consent) == 3
    first = consent[0]
    assert first["type"]["system"] == DCM and first["type"]["code"] == "110113"
    assert {"system": BALP_AUTHZ, "code": "AuthZ-Consent"} in first["subtype"]
    assert (first["action"], first["outcome"]) == ("E", "0")
    details = {d["type"]: d["valueString"] for d in first["entity"][2]["detail"]}
    assert details["denied_by_reason"] == '{"no-research-consent":6,"withdrawn":4}'
    assert details["patients_permitted"] == "90"


def test_refusals_and_rejections_carry_a_failure_outcome(
    run: Any, signers: Any, lines_of: Lines
) -> None:
    site_b, _ = _bundle(run, signers, "site-b", lines_of)
    coordinator, _ = _bundle(run, signers, "coordinator", lines_of)
    outcomes = {
        code["code"]: (e["resource"]["outcome"], e["resource"].get("outcomeDesc"))
        for e in [*site_b["entry"], *coordinator["entry"]]
        for code in e["resource"]["subtype"]
        if code["system"] == FEDTWIN
    }
    assert outcomes["budget_refused"][0] == "4"
    assert outcomes["update_rejected"] == ("4", "update norm 75.2 exceeds 50")
    assert outcomes["site_joined"] == ("0", None)
