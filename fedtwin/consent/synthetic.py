"""Realistic synthetic FHIR ``Consent`` resources for virtual cohorts (R4/R4B, R5 or mixed).

Every patient gets one of the :class:`ConsentScenario` histories, in the proportions of the mix
(largest-remainder rounding, so a small site still gets each share to within one patient):

========================== ==================================================== ==============
scenario                   resources                                            research use
========================== ==================================================== ==============
research-opt-in            permit HRESCH for the consortium, before the study   permit
research-with-exceptions   the same, except another actor or an unused class    permit
treatment-only             permit TREAT only (R5: deny all except TREAT)        opt-in: deny
                                                                                (R5: deny)
expired                    research permit whose period ends before or early    deny after end
                           in the study
never-consented            none                                                 opt-in: deny
withdrawn                  research permit, then inside the study an inactive   deny from the
                           copy or a newer deny (R5: ``decision=deny``)          withdrawal on
opted-out                  deny HRESCH before the study (R5: ``decision=permit`` deny
                           with a provision for HRESCH: all except research)
========================== ==================================================== ==============

Invariant: the output is a pure function of (patient ids in order, study period, seed, mix,
actor, release); every resource validates with fhir.resources and passes
:func:`fedtwin.consent.record_from_json`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from fedtwin.consent.codes import ACT_CODE, ACT_REASON, CONSENT_SCOPE
from fedtwin.errors import ConfigError

LOINC = "http://loinc.org"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DEFAULT_ACTOR = "Organization/fedtwin-consortium"
OTHER_ACTOR = "Organization/commercial-partner"


class ConsentScenario(StrEnum):
    """The consent history of one synthetic patient."""

    RESEARCH_OPT_IN = "research-opt-in"
    RESEARCH_WITH_EXCEPTIONS = "research-with-exceptions"
    TREATMENT_ONLY = "treatment-only"
    EXPIRED = "expired"
    NEVER_CONSENTED = "never-consented"
    WITHDRAWN = "withdrawn"
    OPTED_OUT = "opted-out"


DEFAULT_MIX: Mapping[ConsentScenario, float] = {
    ConsentScenario.RESEARCH_OPT_IN: 0.55,
    ConsentScenario.RESEARCH_WITH_EXCEPTIONS: 0.10,
    ConsentScenario.TREATMENT_ONLY: 0.07,
    ConsentScenario.EXPIRED: 0.06,
    ConsentScenario.NEVER_CONSENTED: 0.08,
    ConsentScenario.WITHDRAWN: 0.09,
    ConsentScenario.OPTED_OUT: 0.05,
}
"""A research site's mix: most patients consent, a tenth withdraw or object."""

Release = Literal["R4B", "R5", "mixed"]


def assign_scenarios(
    patient_ids: Sequence[str], *, seed: int, mix: Mapping[ConsentScenario, float] = DEFAULT_MIX
) -> dict[str, ConsentScenario]:
    """Give each patient a scenario, in the proportions of ``mix``, shuffled by ``seed``."""
    weights = {scenario: float(share) for scenario, share in mix.items() if share > 0}
    if not weights or any(share < 0 for share in mix.values()):
        raise ConfigError("consent mix needs non-negative shares, at least one positive")
    total = sum(weights.values())
    exact = {s: len(patient_ids) * w / total for s, w in weights.items()}
    counts = {s: int(v) for s, v in exact.items()}
    by_remainder = sorted(weights, key=lambda s: (-(exact[s] - counts[s]), list(weights).index(s)))
    for scenario in by_remainder[: len(patient_ids) - sum(counts.values())]:
        counts[scenario] += 1
    pool = [s for s in weights for _ in range(counts[s])]
    random.Random(f"fedtwin-consent-mix/{seed}").shuffle(pool)
    return dict(zip(patient_ids, pool, strict=True))


class _Writer:
    """Builds the resources of one patient in one release."""

    def __init__(self, patient: str, release: Literal["R4B", "R5"], actor: str, seed: int):
        self.patient = patient
        self.release = release
        self.actor = actor
        self.seed = seed
        self.count = 0

    def _id(self) -> str:
        self.count += 1
        digest = hashlib.sha256(f"{self.seed}/{self.patient}/{self.count}".encode()).hexdigest()
        return f"consent-{digest[:16]}"

    def _stamp(self, moment: datetime) -> dict[str, Any]:
        text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.release == "R4B":
            return {"dateTime": text, "meta": {"lastUpdated": text}}
        return {"date": moment.date().isoformat(), "meta": {"lastUpdated": text}}

    @staticmethod
    def _purpose(code: str) -> list[dict[str, str]]:
        return [{"system": ACT_REASON, "code": code}]

    def _actor(self, reference: str) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {"reference": {"reference": reference}}
        if self.release == "R4B":  # R4 requires the actor's role
            entry["role"] = {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]}
        return [entry]

    def consent(
        self,
        moment: datetime,
        *,
        decision: Literal["permit", "deny"],
        provision: dict[str, Any] | None,
        status: str = "active",
        period: dict[str, str] | None = None,
        scope: str = "research",
    ) -> dict[str, Any]:
        """One Consent; ``provision`` is R4's root provision or R5's single top-level one."""
        resource: dict[str, Any] = {"resourceType": "Consent", "id": self._id(), "status": status}
        resource.update(self._stamp(moment))
        category = {"coding": [{"system": LOINC, "code": "59284-0", "display": "Consent Document"}]}
        resource["category"] = [category]
        if self.release == "R4B":
            resource["scope"] = {"coding": [{"system": CONSENT_SCOPE, "code": scope}]}
            resource["patient"] = {"reference": f"Patient/{self.patient}"}
            policy = "OPTOUT" if decision == "deny" else "OPTIN"
            resource["policyRule"] = {"coding": [{"system": ACT_CODE, "code": policy}]}
            root = {"type": decision, **(provision or {})}
            if period:
                root["period"] = period
            resource["provision"] = root
        else:
            resource["subject"] = {"reference": f"Patient/{self.patient}"}
            resource["decision"] = decision
            if period:
                resource["period"] = period
            if provision:
                resource["provision"] = [provision]
        return resource

    def research_permit(
        self,
        moment: datetime,
        *,
        exceptions: list[dict[str, Any]] | None = None,
        status: str = "active",
        period: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Permit healthcare research by the consortium (R5: deny all, except that)."""
        rule: dict[str, Any] = {
            "actor": self._actor(self.actor),
            "purpose": self._purpose("HRESCH"),
        }
        if exceptions:
            rule["provision"] = exceptions
        decision: Literal["permit", "deny"] = "permit" if self.release == "R4B" else "deny"
        return self.consent(moment, decision=decision, provision=rule, status=status, period=period)


def _when(rng: random.Random, start: datetime, end: datetime) -> datetime:
    seconds = max(0, int((end - start).total_seconds()))
    return start + timedelta(seconds=rng.randrange(seconds + 1))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _history(
    writer: _Writer,
    scenario: ConsentScenario,
    rng: random.Random,
    study_start: datetime,
    study_end: datetime,
) -> list[dict[str, Any]]:
    given = _when(rng, study_start - timedelta(days=400), study_start - timedelta(days=30))
    span = study_end - study_start
    r5 = writer.release == "R5"
    match scenario:
        case ConsentScenario.NEVER_CONSENTED:
            return []
        case ConsentScenario.RESEARCH_OPT_IN:
            return [writer.research_permit(given, period={"start": _iso(given)})]
        case ConsentScenario.RESEARCH_WITH_EXCEPTIONS:
            if rng.random() < 0.5:
                exception: dict[str, Any] = {"actor": writer._actor(OTHER_ACTOR)}
            else:
                system = (
                    "http://hl7.org/fhir/fhir-types" if r5 else "http://hl7.org/fhir/resource-types"
                )
                key = "resourceType" if r5 else "class"
                exception = {key: [{"system": system, "code": "DocumentReference"}]}
            if not r5:
                exception["type"] = "deny"
            return [writer.research_permit(given, exceptions=[exception])]
        case ConsentScenario.TREATMENT_ONLY:
            rule = {"purpose": writer._purpose("TREAT")}
            decision: Literal["permit", "deny"] = "deny" if r5 else "permit"
            return [
                writer.consent(given, decision=decision, provision=rule, scope="patient-privacy")
            ]
        case ConsentScenario.EXPIRED:
            ends = _when(rng, study_start - timedelta(days=20), study_start + span / 3)
            return [writer.research_permit(given, period={"start": _iso(given), "end": _iso(ends)})]
        case ConsentScenario.WITHDRAWN:
            first = writer.research_permit(given)
            withdrawn = _when(rng, study_start + span / 10, study_end - span / 10)
            if rng.random() < 0.5:
                later = writer.research_permit(withdrawn, status="inactive")
            elif r5:
                later = writer.consent(withdrawn, decision="deny", provision=None)
            else:
                rule = {"purpose": writer._purpose("HRESCH")}
                later = writer.consent(withdrawn, decision="deny", provision=rule)
            return [first, later]
        case ConsentScenario.OPTED_OUT:
            rule = {"purpose": writer._purpose("HRESCH")}
            # R5: decision=permit with a provision for HRESCH reads "everything except research".
            return [writer.consent(given, decision="permit" if r5 else "deny", provision=rule)]
    raise ConfigError(f"unknown consent scenario {scenario!r}")  # pragma: no cover


def synthetic_consents(
    patient_ids: Sequence[str],
    *,
    study_start: datetime,
    study_end: datetime,
    seed: int,
    mix: Mapping[ConsentScenario, float] = DEFAULT_MIX,
    actor: str = DEFAULT_ACTOR,
    fhir_version: Release = "R4B",
) -> list[dict[str, Any]]:
    """Consent resources (FHIR JSON) for a cohort, deterministic from ``seed``.

    Parameters
    ----------
    patient_ids : Sequence[str]
        Local patient ids, in cohort order.
    study_start, study_end : datetime
        Timezone-aware study period; withdrawals and expiries fall inside it.
    seed : int
        Seeds the scenario shuffle and every date.
    mix : Mapping[ConsentScenario, float]
        Shares of each scenario (normalised).
    actor : str
        Reference of the consortium that research consents name.
    fhir_version : {"R4B", "R5", "mixed"}
        Release of the resources; ``mixed`` draws one per patient.

    Returns
    -------
    list[dict]
        Consent resources, grouped by patient in ``patient_ids`` order, oldest first.
    """
    if study_start.tzinfo is None or study_end.tzinfo is None or study_end <= study_start:
        raise ConfigError("study period must be timezone-aware with end after start")
    scenarios = assign_scenarios(patient_ids, seed=seed, mix=mix)
    resources: list[dict[str, Any]] = []
    for patient in patient_ids:
        rng = random.Random(f"fedtwin-consent/{seed}/{patient}")
        release: Literal["R4B", "R5"]
        if fhir_version == "mixed":
            release = "R5" if rng.random() < 0.5 else "R4B"
        else:
            release = fhir_version
        writer = _Writer(patient, release, actor, seed)
        resources.extend(_history(writer, scenarios[patient], rng, study_start, study_end))
    return resources
