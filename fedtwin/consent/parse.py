"""Validated FHIR ``Consent`` models (R4B or R5) → :class:`ConsentRecord`, checking every code.

fhir.resources checks the structure of a consent, not its codes. Before a consent is used this
module checks, in order, failing with one line ``<file>:<line>: Consent.<element>: <what>``:

1. ``status`` is a consent-state code of the consent's release;
2. the base decision (R5 ``decision``; R4 ``provision.type``) and every R4 provision ``type`` is
   ``permit`` or ``deny``, and every nested R4 provision states its type;
3. every period (``Consent.period``, ``provision.period``, ``provision.dataPeriod``) can be read
   and does not end before it starts;
4. every purpose is a v3-ActReason PurposeOfUse code (:mod:`fedtwin.consent.codes`);
5. R4 ``scope``, ``provision.action`` and ``provision.data.meaning`` codes of their systems are
   known, and resource-type codes name a FHIR resource type.

Invariant: a consent that passes is reduced to a release-neutral :class:`ConsentRecord` whose
provisions carry their effective decision; nothing is interpreted by default.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from fedtwin.consent.codes import (
    ACT_REASON,
    ACTION_CODES,
    CONSENT_ACTION,
    CONSENT_SCOPE,
    DATA_MEANINGS,
    POLICY_RULE_BASE,
    PURPOSE_CODES,
    RESOURCE_TYPE_SYSTEMS,
    SCOPE_CODES,
    SCOPES_OF_DATA_USE,
    STATUS_CODES,
    Verdict,
)
from fedtwin.consent.model import NO_CONDITIONS, Conditions, ConsentRecord, Provision, actor_key
from fedtwin.consent.timing import TimeValueError, moment_of, period_interval
from fedtwin.errors import IngestError
from fedtwin.fhir import FhirVersion, ParsedResource, consent_patient_id, detect_version
from fedtwin.fhir.ndjson import VersionChoice, validate_resource
from fedtwin.fhir.report import Rejection


class _Invalid(Exception):
    """A code or period problem, raised with the element path and re-raised with file:line."""

    def __init__(self, element: str, what: str) -> None:
        super().__init__(f"Consent.{element}: {what}")


@cache
def _is_resource_type(code: str) -> bool:
    if not code.isalpha() or not code[:1].isupper():
        return False
    module = code.lower()
    return any(
        importlib.util.find_spec(f"{package}.{module}") is not None
        for package in ("fhir.resources", "fhir.resources.R4B")
    )


def _codings(concepts: Iterable[Any] | None) -> list[Any]:
    """Flatten CodeableConcepts into their codings."""
    return [
        coding
        for concept in concepts or ()
        if concept is not None
        for coding in concept.coding or ()
    ]


def _verdict(code: str | None, element: str) -> Verdict:
    if code not in ("permit", "deny"):
        raise _Invalid(element, f"unknown code {code!r} (consent-provision-type: permit, deny)")
    return Verdict(code)


def _interval(period: Any, element: str) -> Any:
    try:
        return period_interval(period)
    except TimeValueError as error:
        raise _Invalid(element, str(error)) from error


def _purposes(codings: Sequence[Any] | None, element: str) -> frozenset[str]:
    found: set[str] = set()
    for coding in codings or ():
        if coding.system != ACT_REASON:
            shown = coding.system or "no system"
            raise _Invalid(element, f"purpose system {shown!r} is not {ACT_REASON}")
        if coding.code not in PURPOSE_CODES:
            raise _Invalid(element, f"unknown purpose of use code {coding.code!r}")
        found.add(coding.code)
    return frozenset(found)


def _actions(concepts: Sequence[Any] | None, element: str) -> tuple[frozenset[str], bool]:
    """Known consentaction codes, and whether some action could not be identified."""
    found: set[str] = set()
    unknown = False
    for concept in concepts or ():
        codes = [c for c in concept.coding or () if c.system == CONSENT_ACTION]
        for coding in codes:
            if coding.code not in ACTION_CODES:
                raise _Invalid(element, f"unknown consentaction code {coding.code!r}")
            found.add(coding.code)
        unknown = unknown or not codes
    return frozenset(found), unknown


def _data_classes(codings: Sequence[Any] | None, element: str) -> tuple[frozenset[str], bool]:
    """Resource types named, and whether some class is of a system fedtwin cannot check."""
    found: set[str] = set()
    other = False
    for coding in codings or ():
        if coding.system in RESOURCE_TYPE_SYSTEMS:
            if not _is_resource_type(coding.code or ""):
                raise _Invalid(element, f"{coding.code!r} is not a FHIR resource type")
            found.add(coding.code)
        else:
            other = True
    return frozenset(found), other


def _conditions(node: Any, version: FhirVersion, path: str, patient: str) -> Conditions:
    """The conditions of one provision (its ``period`` included)."""
    uncheckable: list[str] = []
    if version is FhirVersion.R4B:
        classes, other_class = _data_classes(node.class_fhir, f"{path}.class")
    else:
        classes, other_class = _data_classes(node.resourceType, f"{path}.resourceType")
        if node.documentType:
            uncheckable.append("documentType")
        if node.expression is not None:
            uncheckable.append("expression")
    if other_class:
        uncheckable.append("class")
    if node.code:
        uncheckable.append("code")
    if node.securityLabel:
        uncheckable.append("securityLabel")
    for position, item in enumerate(node.data or ()):
        if item.meaning not in DATA_MEANINGS:
            what = f"unknown consent-data-meaning code {item.meaning!r}"
            raise _Invalid(f"{path}.data[{position}].meaning", what)
        target = getattr(item.reference, "reference", None)
        # Data "related to" the consent's own patient is all of it: no narrowing.
        if target is None or actor_key(target) != f"Patient/{patient}":
            uncheckable.append("data")
    actions, unknown_action = _actions(node.action, f"{path}.action")
    if unknown_action:
        uncheckable.append("action")
    actors = {
        actor_key(actor.reference.reference)
        for actor in node.actor or ()
        if actor.reference is not None and actor.reference.reference
    }
    identifiers = {
        f"{actor.reference.identifier.system}|{actor.reference.identifier.value}"
        for actor in node.actor or ()
        if actor.reference is not None
        and not actor.reference.reference
        and actor.reference.identifier is not None
    }
    named = len(actors) + len(identifiers)
    return Conditions(
        period=_interval(node.period, f"{path}.period") if node.period is not None else None,
        purposes=_purposes(node.purpose, f"{path}.purpose"),
        actors=frozenset(actors | identifiers),
        unidentified_actor=named < len(node.actor or ()),
        data_classes=classes,
        data_period=(
            _interval(node.dataPeriod, f"{path}.dataPeriod")
            if node.dataPeriod is not None
            else None
        ),
        actions=actions,
        uncheckable=tuple(sorted(set(uncheckable))),
    )


def _r4_children(node: Any, path: str, patient: str) -> tuple[Provision, ...]:
    children = []
    for position, child in enumerate(node.provision or ()):
        child_path = f"{path}.provision[{position}]"
        if child.type is None:
            raise _Invalid(f"{child_path}.type", "a nested R4 provision must state permit or deny")
        children.append(
            Provision(
                path=child_path,
                verdict=_verdict(child.type, f"{child_path}.type"),
                conditions=_conditions(child, FhirVersion.R4B, child_path, patient),
                children=_r4_children(child, child_path, patient),
            )
        )
    return tuple(children)


def _r5_children(nodes: Any, verdict: Verdict, path: str, patient: str) -> tuple[Provision, ...]:
    children = []
    for position, node in enumerate(nodes or ()):
        node_path = (
            f"{path}[{position}]" if path == "provision" else f"{path}.provision[{position}]"
        )
        children.append(
            Provision(
                path=node_path,
                verdict=verdict,
                conditions=_conditions(node, FhirVersion.R5, node_path, patient),
                children=_r5_children(node.provision, verdict.negated(), node_path, patient),
            )
        )
    return tuple(children)


def _r4_scope(resource: Any) -> bool:
    codes = [c.code for c in _codings([resource.scope]) if c.system == CONSENT_SCOPE]
    for code in codes:
        if code not in SCOPE_CODES:
            raise _Invalid("scope", f"unknown consentscope code {code!r}")
    return not codes or any(code in SCOPES_OF_DATA_USE for code in codes)


def _r4_base(resource: Any) -> Verdict | None:
    root = resource.provision
    if root is not None and root.type is not None:
        return _verdict(root.type, "provision.type")
    rules = [c.code for c in _codings([resource.policyRule]) if c.code in POLICY_RULE_BASE]
    verdicts = {POLICY_RULE_BASE[code] for code in rules}
    return verdicts.pop() if len(verdicts) == 1 else None


def _moment(value: Any, element: str) -> datetime | None:
    if value is None:
        return None
    try:
        return moment_of(value)
    except TimeValueError as error:
        raise _Invalid(element, str(error)) from error


def _record(parsed: ParsedResource, patient: str) -> ConsentRecord:
    resource = parsed.resource
    version = parsed.fhir_version
    # (1): status is a code of the consent's release.
    if resource.status not in STATUS_CODES[version.value]:
        allowed = ", ".join(sorted(STATUS_CODES[version.value]))
        raise _Invalid("status", f"unknown {version} status {resource.status!r} ({allowed})")
    last_updated = getattr(resource.meta, "lastUpdated", None)
    common: dict[str, Any] = {
        "consent_id": resource.id or f"{parsed.file.name}:{parsed.line}",
        "patient_id": patient,
        "status": resource.status,
        "last_updated": _moment(last_updated, "meta.lastUpdated"),
        "fingerprint": hashlib.sha256(
            resource.model_dump_json(exclude_none=True).encode()
        ).hexdigest(),
        "source": f"{parsed.file}:{parsed.line}",
    }
    if version is FhirVersion.R4B:
        root = resource.provision
        scope = NO_CONDITIONS
        if root is not None:
            scope = _conditions(root, version, "provision", patient)
        # (2)–(5) for R4: base decision, nested types, periods and codes, root to leaves.
        return ConsentRecord(
            fhir_version="R4B",
            recorded=_moment(resource.dateTime, "dateTime"),
            validity=scope.period or _interval(None, "provision.period"),
            governs_data_use=_r4_scope(resource),
            base=_r4_base(resource),
            base_path="provision" if root is not None and root.type is not None else "policyRule",
            scope=replace(scope, period=None),
            provisions=_r4_children(root, "provision", patient) if root is not None else (),
            **common,
        )
    # (2)–(5) for R5.
    base = _verdict(resource.decision, "decision") if resource.decision is not None else None
    return ConsentRecord(
        fhir_version="R5",
        recorded=_moment(resource.date, "date"),
        validity=_interval(resource.period, "period"),
        governs_data_use=True,
        base=base,
        base_path="decision",
        scope=NO_CONDITIONS,
        provisions=_r5_children(
            resource.provision, (base or Verdict.DENY).negated(), "provision", patient
        ),
        **common,
    )


def consent_record(parsed: ParsedResource) -> ConsentRecord:
    """Check one validated Consent and reduce it to a :class:`ConsentRecord`.

    Raises
    ------
    IngestError
        ``<file>:<line>: Consent.<element>: <what>`` for the first problem found.
    """
    where = f"{parsed.file}:{parsed.line}"
    patient = consent_patient_id(parsed)
    if patient is None:
        field = "patient" if parsed.fhir_version is FhirVersion.R4B else "subject"
        raise IngestError(f"{where}: Consent.{field} does not reference a Patient")
    try:
        return _record(parsed, patient)
    except _Invalid as error:
        raise IngestError(f"{where}: {error}") from error


def record_from_json(
    resource: Mapping[str, Any],
    *,
    file: Path = Path("<memory>"),
    line: int = 1,
    fhir_version: VersionChoice = "auto",
) -> ConsentRecord:
    """Validate a Consent given as JSON (FHIR model, then codes) and reduce it.

    Raises
    ------
    IngestError
        ``<file>:<line>: <reason>`` if FHIR validation or a code check fails.
    """
    obj = dict(resource)
    if obj.get("resourceType") != "Consent":
        raise IngestError(f"{file}:{line}: resourceType is not Consent")
    version = detect_version(obj, fhir_version)
    model = validate_resource(obj, file, line, version)
    if isinstance(model, Rejection):
        raise IngestError(model.message)
    return consent_record(ParsedResource(file, line, version, model))


def consent_records(
    consents_by_patient: Mapping[str, Sequence[ParsedResource]],
) -> dict[str, tuple[ConsentRecord, ...]]:
    """:func:`consent_record` for every consent of :func:`fedtwin.fhir.read_consents`."""
    return {
        patient: tuple(consent_record(parsed) for parsed in consents)
        for patient, consents in consents_by_patient.items()
    }
