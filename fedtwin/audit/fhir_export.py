"""Export an audit log as FHIR R4 ``AuditEvent`` resources in a ``collection`` Bundle.

Invariants: one ``AuditEvent`` per log entry, in log order, each validated by
``fhir.resources`` (R4B, wire-compatible with R4 for ``AuditEvent`` and ``Bundle``); every
resource names its entry (``<party>-<index>``) and carries the entry's Merkle leaf hash, so a
FHIR record can be traced back to the signed log; no resource holds a patient identifier
(the events hold none).

Shapes, following IHE Basic Audit Log Patterns (BALP) where one fits:

* consent filtering follows **BALP AuthZconsent** (type DICOM 110113 *Security Alert*,
  subtype BALP ``AuthZ-Consent``, action E, outcome 0, or 8 when every patient was denied);
  counts per denial reason are entity details. ``meta.profile`` is not claimed, because that
  profile requires a patient entity, which must never leave a site;
* data leaving a site (update sent, model exported) uses DICOM 110106 *Export*, data arriving
  (update received or rejected) DICOM 110107 *Import*, as ATNA/BALP do for transfers;
* run start/stop use DICOM 110100 *Application Activity* with 110120/110121, site admission
  DICOM 110114 *User Authentication* with 110122 *Login*;
* privacy-budget, aggregation, checkpoint and error events, which no BALP pattern covers, use
  the code system ``urn:fedtwin:audit-event-type``.

Every resource also carries its fedtwin event type as a subtype coding in that system.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fedtwin.audit import events as ev
from fedtwin.audit.events import AuditEvent
from fedtwin.audit.merkle import leaf_hash

DCM = "http://dicom.nema.org/resources/ontology/DCM"
BALP_AUTHZ = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
FEDTWIN = "urn:fedtwin:audit-event-type"
PARTY_SYSTEM = "urn:fedtwin:party"
RUN_SYSTEM = "urn:fedtwin:run"
ENTRY_SYSTEM = "urn:fedtwin:audit-entry"
DIGEST_SYSTEM = "urn:fedtwin:sha256"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_NAMESPACE = uuid.UUID("5b0c2a4e-93a1-4f43-9a55-8f7f0e6b1d20")

SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"

_DISPLAY = {
    "110100": "Application Activity",
    "110106": "Export",
    "110107": "Import",
    "110113": "Security Alert",
    "110114": "User Authentication",
    "110120": "Application Start",
    "110121": "Application Stop",
    "110122": "Login",
}

# type, standard subtype (or None), action
_SHAPE: dict[str, tuple[tuple[str, str], tuple[str, str] | None, str]] = {
    "run_started": ((DCM, "110100"), (DCM, "110120"), "E"),
    "run_finished": ((DCM, "110100"), (DCM, "110121"), "E"),
    "site_joined": ((DCM, "110114"), (DCM, "110122"), "E"),
    "site_refused": ((DCM, "110114"), (DCM, "110122"), "E"),
    "policy_decision": ((DCM, "110113"), None, "E"),
    "consent_filtered": ((DCM, "110113"), (BALP_AUTHZ, "AuthZ-Consent"), "E"),
    "budget_checked": ((FEDTWIN, "privacy-budget"), None, "E"),
    "budget_committed": ((FEDTWIN, "privacy-budget"), None, "E"),
    "budget_refused": ((FEDTWIN, "privacy-budget"), None, "E"),
    "update_sent": ((DCM, "110106"), None, "R"),
    "update_received": ((DCM, "110107"), None, "C"),
    "update_rejected": ((DCM, "110107"), None, "C"),
    "aggregated": ((FEDTWIN, "model-aggregation"), None, "C"),
    "model_exported": ((DCM, "110106"), None, "R"),
    "checkpoint_cosigned": ((FEDTWIN, "audit-checkpoint"), None, "E"),
    "log_recovered": ((FEDTWIN, "audit-log"), None, "E"),
    "error_raised": ((FEDTWIN, "error"), None, "E"),
}
_COMMON = {"type", "actor", "time", "run_id", "round", "seq", "prev"}


def _coding(system: str, code: str) -> dict[str, str]:
    coding = {"system": system, "code": code}
    if system == DCM:
        coding["display"] = _DISPLAY[code]
    return coding


def _party(party: str, requestor: bool, role: str) -> dict[str, Any]:
    return {
        "type": {"text": role},
        "who": {"identifier": {"system": PARTY_SYSTEM, "value": party}, "display": party},
        "requestor": requestor,
    }


def _outcome(event: AuditEvent) -> tuple[str, str | None]:
    match event:
        case ev.SiteRefused() | ev.UpdateRejected():
            return MINOR_FAILURE, event.reason
        case ev.PolicyDecision(allowed=False):
            return SERIOUS_FAILURE, "; ".join(event.reasons) or "policy denied the run"
        case ev.ConsentFiltered(patients_permitted=0):
            return SERIOUS_FAILURE, "consent denied every patient"
        case ev.BudgetChecked(allowed=False) | ev.BudgetRefused():
            return MINOR_FAILURE, "the spend would exceed the site's privacy budget"
        case ev.RunFinished(status="failed"):
            return SERIOUS_FAILURE, "run failed"
        case ev.LogRecovered():
            return MINOR_FAILURE, "a torn last line from a crashed write was cut off"
        case ev.ErrorRaised():
            return SERIOUS_FAILURE, f"{event.error_class}: {event.message}"
    return SUCCESS, None


def _detail_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def audit_event_resource(event: AuditEvent, party: str, index: int, leaf: bytes) -> dict[str, Any]:
    """The FHIR ``AuditEvent`` (JSON) of log entry ``index`` of ``party`` (validated)."""
    from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent

    kind, standard_subtype, action = _SHAPE[event.type]
    outcome, description = _outcome(event)
    subtypes = [_coding(*standard_subtype)] if standard_subtype else []
    subtypes.append(_coding(FEDTWIN, event.type))
    agents = [_party(event.actor, True, "fedtwin party (writer of the log)")]
    site_id = getattr(event, "site_id", None)
    if isinstance(site_id, str) and site_id != event.actor:
        agents.append(_party(site_id, False, "hospital site"))
    fields = event.model_dump(mode="json", exclude=_COMMON)
    entry_details = [
        {"type": "leaf_sha256", "valueString": leaf.hex()},
        {"type": "run_id", "valueString": event.run_id},
    ]
    if event.round is not None:
        entry_details.append({"type": "round", "valueString": str(event.round)})
    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"system": ENTRY_SYSTEM, "value": f"{party}/{index}"}},
            "type": _coding(ENTITY_TYPE, "2"),
            "name": f"audit log entry {index} of {party}",
            "detail": entry_details,
        },
        {
            "what": {"identifier": {"system": RUN_SYSTEM, "value": event.run_id}},
            "type": _coding(ENTITY_TYPE, "2"),
            "name": "federated run",
        },
    ]
    if fields:
        entities.append(
            {
                "type": _coding(ENTITY_TYPE, "4"),
                "name": event.type,
                "detail": [
                    {"type": name, "valueString": _detail_value(value)}
                    for name, value in sorted(fields.items())
                    if value is not None
                ],
            }
        )
    for digest_field in ("sha256", "model_version_hash"):
        digest = getattr(event, digest_field, None)
        if isinstance(digest, str):
            entities.append(
                {
                    "what": {"identifier": {"system": DIGEST_SYSTEM, "value": digest}},
                    "type": _coding(ENTITY_TYPE, "2"),
                    "name": digest_field,
                }
            )
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"{party}-{index}",
        "type": _coding(*kind),
        "subtype": subtypes,
        "action": action,
        "recorded": event.time.isoformat().replace("+00:00", "Z"),
        "outcome": outcome,
        "agent": agents,
        "source": {
            "site": "fedtwin",
            "observer": {
                "identifier": {"system": PARTY_SYSTEM, "value": event.actor},
                "display": event.actor,
            },
            "type": [_coding(SOURCE_TYPE, "4")],
        },
        "entity": entities,
    }
    if description:
        resource["outcomeDesc"] = description[:1000]
    if isinstance(event, ev.RunStarted):
        resource["purposeOfEvent"] = [{"coding": [_coding(ACT_REASON, event.purpose_code)]}]
    FhirAuditEvent.model_validate(resource)
    return resource


def audit_bundle(
    events: Sequence[AuditEvent], lines: Sequence[bytes], party: str, timestamp: datetime
) -> dict[str, Any]:
    """A ``collection`` Bundle of every entry's ``AuditEvent`` (validated).

    Parameters
    ----------
    events : Sequence[AuditEvent]
        The log's events, in order.
    lines : Sequence[bytes]
        The same entries' lines as written (their leaf hashes tie resources to the log).
    party : str
        The log's party.
    timestamp : datetime
        The Bundle's timestamp (injected; UTC).
    """
    from fhir.resources.R4B.bundle import Bundle

    if len(events) != len(lines):
        raise ValueError("one line per event is needed")
    entries = []
    for index, (event, line) in enumerate(zip(events, lines, strict=True)):
        leaf = leaf_hash(line)
        resource = audit_event_resource(event, party, index, leaf)
        entries.append(
            {"fullUrl": f"urn:uuid:{uuid.uuid5(_NAMESPACE, leaf.hex())}", "resource": resource}
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
        "entry": entries,
    }
    Bundle.model_validate(bundle)
    return bundle


def write_bundle(path: Path, bundle: dict[str, Any]) -> None:
    """Write the Bundle as JSON, atomically."""
    from fedtwin.audit._files import atomic_write

    atomic_write(path, (json.dumps(bundle, indent=2, ensure_ascii=False) + "\n").encode())
