"""The site's guard rails before a round: check the run, filter patients by consent, count.

A site calls :meth:`SiteGuard.admit_round` at the start of every round, before any training.
It runs these fail-closed steps; a refused round has an empty training set:

1. the run's claims (consortium, consortium policy hash, study, purpose, twin kind, ε, δ,
   actors, round spacing) are checked against the site policy and the consortium policy the
   site agreed to (:meth:`SiteGuard.check_run`); every failed check is a refusal reason;
2. every training patient's consents are evaluated at the round's time (the consent snapshot
   time) for the run's purpose, actors, the twin kind's data classes and the site's data
   window, under the site's regime (:meth:`SiteGuard.eligible_patients`);
3. fewer permitted patients than the site's minimum refuses the round.

Invariants: the guard knows nothing of Flower or torch; what it hands to the audit log
(:meth:`RoundAdmission.audit_events`) holds counts, reason codes, hashes and times only, never
a patient id, and the per-patient explanation (:meth:`EligibilitySnapshot.decision_log`) names
patients by keyed pseudonym only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from fedtwin.consent.codes import PURPOSE_CODES, purpose_subsumes
from fedtwin.consent.evaluate import ConsentSnapshot, evaluate_all
from fedtwin.consent.model import ConsentRecord, ConsentRequest, actor_key
from fedtwin.consent.parse import consent_record
from fedtwin.consent.policy import (
    TWIN_DATA_CLASSES,
    ConsortiumPolicy,
    SitePolicy,
    TwinKind,
    policy_hash,
)
from fedtwin.errors import ConsentDenied
from fedtwin.fhir import ParsedResource, pseudonym

if TYPE_CHECKING:  # the audit package is imported when an event is built, not before
    from fedtwin.audit.events import ConsentFiltered, PolicyDecision


class RunRequest(BaseModel):
    """What the coordinator claims about a run; the site checks every claim itself."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    consortium_id: Annotated[str, Field(min_length=1, max_length=64)]
    study_id: Annotated[str, Field(min_length=1, max_length=64)]
    purpose: Annotated[str, Field(min_length=1, max_length=64)]
    twin_kind: Annotated[str, Field(min_length=1, max_length=64)]
    epsilon: Annotated[float, Field(gt=0)] = Field(description="ε per patient the run may spend")
    delta: Annotated[float, Field(gt=0, lt=1)]
    actors: tuple[Annotated[str, Field(min_length=1, max_length=256)], ...] = Field(min_length=1)
    consortium_policy_hash: str | None = Field(
        None, description="hash of the consortium policy the coordinator runs under"
    )


@dataclass(frozen=True)
class Refusal:
    """One failed check: a stable reason code and a one-line explanation (no patient data)."""

    code: str
    message: str

    def line(self) -> str:
        """``code: message`` as logged."""
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class RunCheck:
    """The outcome of checking a run's claims against the site's and consortium's policies."""

    refusals: tuple[Refusal, ...]
    site_policy_hash: str
    consortium_policy_hash: str

    @property
    def allowed(self) -> bool:
        """Whether every check passed."""
        return not self.refusals

    def audit_event(
        self, *, site_id: str, time: datetime, run_id: str, round: int
    ) -> PolicyDecision:
        """The ``policy_decision`` event of this check."""
        from fedtwin.audit.events import PolicyDecision

        reasons = tuple(r.line() for r in self.refusals) or (
            f"run-accepted: consortium policy {self.consortium_policy_hash}",
        )
        return PolicyDecision(
            actor=site_id,
            time=time,
            run_id=run_id,
            round=round,
            site_id=site_id,
            policy_version_hash=self.site_policy_hash,
            allowed=self.allowed,
            reasons=reasons,
        )


@dataclass(frozen=True)
class EligibilitySnapshot:
    """Which training patients consent permits for one round, and the counts behind it."""

    consent: ConsentSnapshot
    site_policy_hash: str
    min_required: int

    @property
    def permitted_ids(self) -> tuple[str, ...]:
        """Local ids of the permitted patients (stay at the site), sorted."""
        return self.consent.permitted

    @property
    def permitted_count(self) -> int:
        """Number of permitted patients."""
        return len(self.consent.permitted)

    @property
    def enough(self) -> bool:
        """Whether at least the site's minimum of patients is permitted."""
        return self.permitted_count >= self.min_required

    def audit_counts(self) -> dict[str, Any]:
        """Counts, reasons, snapshot time, regime and policy hash: nothing that names a patient."""
        return {
            "consent_snapshot_time": self.consent.at.isoformat(),
            "regime": self.consent.regime.value,
            "purpose": self.consent.request.purpose,
            "patients_total": self.consent.total,
            "patients_permitted": self.permitted_count,
            "denied_by_reason": self.consent.denied_by_reason(),
            "min_required": self.min_required,
            "policy_version_hash": self.site_policy_hash,
        }

    def audit_event(
        self, *, site_id: str, time: datetime, run_id: str, round: int
    ) -> ConsentFiltered:
        """The ``consent_filtered`` event of this snapshot."""
        from fedtwin.audit.events import ConsentFiltered

        return ConsentFiltered(
            actor=site_id,
            time=time,
            run_id=run_id,
            round=round,
            site_id=site_id,
            consent_snapshot_time=self.consent.at,
            patients_total=self.consent.total,
            patients_permitted=self.permitted_count,
            denied_by_reason=self.consent.denied_by_reason(),
        )

    def decision_log(self, secret: bytes) -> list[dict[str, Any]]:
        """One entry per patient, named by keyed pseudonym: why each one is in or out.

        Kept at the site (e.g. next to its audit log) so that the site can show an auditor the
        decision for any patient of any round without revealing who the patient is.
        """
        return [
            {
                "patient": pseudonym(secret, patient),
                "decision": decision.decision.value,
                "reasons": [reason.value for reason in decision.reasons],
                "provision": decision.provision_path,
            }
            for patient, decision in sorted(
                self.consent.decisions.items(), key=lambda item: pseudonym(secret, item[0])
            )
        ]


@dataclass(frozen=True)
class RoundAdmission:
    """Whether a round may train, on whom, and the audit events that prove why."""

    check: RunCheck
    snapshot: EligibilitySnapshot | None

    @property
    def allowed(self) -> bool:
        """The run passed its checks and enough patients are permitted."""
        return self.check.allowed and self.snapshot is not None and self.snapshot.enough

    @property
    def training_ids(self) -> tuple[str, ...]:
        """Local ids the round may train on; empty whenever the round is refused."""
        if not self.allowed or self.snapshot is None:
            return ()
        return self.snapshot.permitted_ids

    @property
    def refusal_codes(self) -> tuple[str, ...]:
        """Reason codes of a refusal (empty when allowed)."""
        codes = [r.code for r in self.check.refusals]
        if self.check.allowed and self.snapshot is not None and not self.snapshot.enough:
            codes.append("too-few-eligible-patients")
        return tuple(codes)

    def audit_events(
        self, *, site_id: str, time: datetime, run_id: str, round: int
    ) -> list[PolicyDecision | ConsentFiltered]:
        """``policy_decision`` (run), then ``consent_filtered`` and ``policy_decision`` (cohort)."""
        from fedtwin.audit.events import PolicyDecision

        events: list[PolicyDecision | ConsentFiltered] = [
            self.check.audit_event(site_id=site_id, time=time, run_id=run_id, round=round)
        ]
        if self.snapshot is None:
            return events
        snapshot = self.snapshot
        events.append(snapshot.audit_event(site_id=site_id, time=time, run_id=run_id, round=round))
        verdict = "≥" if snapshot.enough else "<"
        reason_code = "eligible-patients" if snapshot.enough else "too-few-eligible-patients"
        events.append(
            PolicyDecision(
                actor=site_id,
                time=time,
                run_id=run_id,
                round=round,
                site_id=site_id,
                policy_version_hash=snapshot.site_policy_hash,
                allowed=snapshot.enough,
                reasons=(
                    f"{reason_code}: {snapshot.permitted_count} permitted {verdict} "
                    f"minimum {snapshot.min_required}",
                ),
            )
        )
        return events

    def raise_if_refused(self) -> None:
        """Raise :class:`ConsentDenied` (reason codes only) if the round may not train."""
        if not self.allowed:
            raise ConsentDenied(f"round refused by site policy: {', '.join(self.refusal_codes)}")


class SiteGuard:
    """A site's guard rails, built from its policy and the consortium policy it agreed to.

    Parameters
    ----------
    site_policy : SitePolicy
        The site's own policy.
    consortium_policy : ConsortiumPolicy
        The study's policy as the site approved it (its hash must match the coordinator's).
    """

    def __init__(self, site_policy: SitePolicy, consortium_policy: ConsortiumPolicy) -> None:
        self.site_policy = site_policy
        self.consortium_policy = consortium_policy
        self.site_policy_hash = policy_hash(site_policy)
        self.consortium_policy_hash = policy_hash(consortium_policy)

    def check_run(
        self, run: RunRequest, *, at: datetime, previous_round_at: datetime | None = None
    ) -> RunCheck:
        """Check a run's claims against both policies.

        Checks: (1) consortium (2) its policy hash (3) study (4) purpose (5) twin kind (6) ε
        (7) δ (8) actors (9) time since the previous round. Every failed check adds a
        :class:`Refusal`; none is skipped after a failure.
        """
        site, consortium = self.site_policy, self.consortium_policy
        refusals: list[Refusal] = []

        def refuse(code: str, message: str) -> None:
            refusals.append(Refusal(code, message))

        # (1): a consortium the site trusts, the one whose policy the site holds.
        if run.consortium_id not in site.trusted_consortia or (
            run.consortium_id != consortium.consortium_id
        ):
            refuse("consortium-not-trusted", f"consortium {run.consortium_id!r} is not trusted")
        # (2): the coordinator runs under the same consortium policy the site approved.
        claimed = run.consortium_policy_hash
        if claimed is not None and claimed != self.consortium_policy_hash:
            refuse("consortium-policy-mismatch", f"run uses consortium policy {claimed}")
        # (3): the study of that policy.
        if run.study_id != consortium.study_id:
            refuse("study-mismatch", f"study {run.study_id!r} is not {consortium.study_id!r}")
        # (4): the study's purpose, and one the site accepts.
        if run.purpose not in PURPOSE_CODES:
            refuse("purpose-unknown", f"{run.purpose!r} is not a v3-ActReason purpose of use")
        elif run.purpose != consortium.purpose or not any(
            purpose_subsumes(accepted, run.purpose) for accepted in site.accepted_purposes
        ):
            refuse("purpose-not-accepted", f"purpose {run.purpose} is not accepted")
        # (5): a twin kind both policies allow.
        kind = TwinKind(run.twin_kind) if run.twin_kind in set(TwinKind) else None
        if (
            kind is None
            or kind not in consortium.twin_kinds
            or kind not in site.accepted_twin_kinds
        ):
            refuse("twin-kind-not-accepted", f"twin kind {run.twin_kind!r} is not accepted")
        # (6): ε within both caps.
        cap = min(site.max_epsilon_per_patient, consortium.max_epsilon_per_patient)
        if run.epsilon > cap:
            refuse("epsilon-above-cap", f"ε {run.epsilon:g} per patient exceeds cap {cap:g}")
        # (7): δ within both caps.
        delta_cap = min(site.max_delta, consortium.delta)
        if run.delta > delta_cap:
            refuse("delta-above-cap", f"δ {run.delta:g} exceeds cap {delta_cap:g}")
        # (8): every actor the run claims is trusted by the site and named by the consortium.
        trusted = set(site.trusted_actors) & set(consortium.actors)
        untrusted = sorted({actor_key(a) for a in run.actors} - trusted)
        if untrusted:
            refuse("actor-not-trusted", f"actor {untrusted[0]!r} is not trusted")
        # (9): rounds no closer than the consortium's spacing.
        spacing = timedelta(minutes=consortium.min_round_spacing_minutes)
        if previous_round_at is not None and at - previous_round_at < spacing:
            refuse("round-too-soon", f"less than {spacing} since the previous round")
        return RunCheck(tuple(refusals), self.site_policy_hash, self.consortium_policy_hash)

    def consent_request(self, run: RunRequest, *, at: datetime) -> ConsentRequest:
        """The consent question a round of ``run`` asks about each patient."""
        kind = TwinKind(run.twin_kind)
        window = self.site_policy.data_window.interval(at)
        return ConsentRequest(
            purpose=run.purpose,
            actors=run.actors,
            data_classes=TWIN_DATA_CLASSES[kind],
            data_from=window.start,
            data_to=window.end,
        )

    def eligible_patients(
        self,
        consents_by_patient: Mapping[str, Sequence[ConsentRecord | ParsedResource]],
        patient_ids: Iterable[str],
        run: RunRequest,
        *,
        at: datetime,
    ) -> EligibilitySnapshot:
        """Evaluate every training patient's consents at ``at`` (the consent snapshot time).

        Raises
        ------
        IngestError
            If a consent of a training patient has an invalid code or period.
        """
        wanted = set(patient_ids)
        records = {
            patient: tuple(
                item if isinstance(item, ConsentRecord) else consent_record(item)
                for item in consents
            )
            for patient, consents in consents_by_patient.items()
            if patient in wanted
        }
        snapshot = evaluate_all(
            records,
            self.consent_request(run, at=at),
            at=at,
            regime=self.site_policy.regime,
            patient_ids=wanted,
        )
        return EligibilitySnapshot(
            snapshot, self.site_policy_hash, self.site_policy.min_eligible_patients_per_round
        )

    def admit_round(
        self,
        run: RunRequest,
        consents_by_patient: Mapping[str, Sequence[ConsentRecord | ParsedResource]],
        patient_ids: Iterable[str],
        *,
        at: datetime,
        previous_round_at: datetime | None = None,
    ) -> RoundAdmission:
        """Steps 1–3 of the module docstring; consents are evaluated only for a checked run."""
        check = self.check_run(run, at=at, previous_round_at=previous_round_at)
        if not check.allowed:
            return RoundAdmission(check, None)
        snapshot = self.eligible_patients(consents_by_patient, patient_ids, run, at=at)
        return RoundAdmission(check, snapshot)
