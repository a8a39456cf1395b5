"""The consent evaluator: a pure function of (consents, request, time, regime) → Decision.

Rules, in the order they are applied to one patient's consents at time ``at``:

1. **Snapshot.** Only consents recorded at or before ``at`` (``Consent.dateTime`` R4 /
   ``Consent.date`` R5, read as the start of its precision; an undated consent counts as always
   known) exist for the round. A withdrawal recorded after a round started takes effect from
   the next round.
2. **Status.** Only ``active`` consents grant or refuse; an ``inactive`` consent is a withdrawal
   of what it said; every other status (draft, proposed, rejected, not-done, entered-in-error,
   unknown) is ignored.
3. **Applicability.** A consent applies to the request when it governs data use (R4 ``scope``
   not treatment/adr), its validity has started (R5 ``Consent.period``, R4 root
   ``provision.period``) and, for R4, the request meets its root provision's conditions. An R5
   consent's base ``decision`` covers every request, so an active R5 consent always applies.
4. **Latest wins.** Among applicable consents the one recorded last decides; ties are broken by
   ``meta.lastUpdated``; consents still tied are all evaluated and deny wins.
5. **Provisions.** From the base decision, an exception provision whose conditions the request
   meets overrides its parent with its own decision (R4 ``type``; R5 the parent's negated):
   the deepest matching provision on each branch decides that branch and, when several sibling
   branches match, deny wins.
6. **Matching is fail-closed.** A permit covers a request only if it covers all of it (purpose
   subsumed by one of its purposes, one of its actors among the request's, every requested data
   class, the whole data window, an action that covers use, nothing it cannot check); a deny
   applies as soon as it touches the request (purposes related either way, an actor it cannot
   tell apart, any requested class, any overlap of the data window, anything it cannot check).
7. **Outcome of the deciding consent.** Active and in force: its verdict (a deny that follows
   an older permit for the same request is reported as ``consent-withdrawn``). Active but
   expired, or inactive after a deny: no consent is in force (the regime decides). Inactive
   after a permit: withdrawn → deny, in both regimes. No base decision stated: deny.
8. **Regime.** Without an applicable consent in force: opt-in → deny, opt-out → permit.

Invariants: the result never depends on the order of the consents (candidates are sorted by a
total key that ends in a content fingerprint), and equal inputs give equal decisions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fedtwin.consent.codes import (
    DENY_ACTIONS_TOUCHING_USE,
    PERMIT_ACTIONS_COVERING_USE,
    STATUS_IN_FORCE,
    STATUS_WITHDRAWN,
    Verdict,
    purpose_subsumes,
    purposes_overlap,
)
from fedtwin.consent.model import (
    Conditions,
    ConsentRecord,
    ConsentRequest,
    Decision,
    Provision,
    Reason,
    Regime,
)

_EARLIEST = datetime.min.replace(tzinfo=UTC)


def condition_miss(
    conditions: Conditions, verdict: Verdict, request: ConsentRequest, at: datetime
) -> Reason | None:
    """Why a rule with these conditions does not apply to the request (``None``: it applies).

    A permit must cover the whole request; a deny applies as soon as it touches it (rule 6).
    """
    permit = verdict is Verdict.PERMIT
    if conditions.purposes:
        related = purpose_subsumes if permit else purposes_overlap
        if not any(related(p, request.purpose) for p in conditions.purposes):
            return Reason.PURPOSE_NOT_COVERED
    if conditions.actors or conditions.unidentified_actor:
        named = bool(conditions.actors.intersection(request.actors))
        unknowable = conditions.unidentified_actor or not request.actors
        if not (named or (not permit and unknowable)):
            return Reason.ACTOR_NOT_COVERED
    if conditions.data_classes:
        wanted = request.data_classes
        if permit:
            covered = wanted is not None and conditions.data_classes.issuperset(wanted)
        else:
            covered = wanted is None or not conditions.data_classes.isdisjoint(wanted)
        if not covered:
            return Reason.DATA_CLASS_NOT_COVERED
    if conditions.data_period is not None:
        window = request.data_period
        if permit:
            covered = conditions.data_period.covers(window)
        else:
            covered = conditions.data_period.overlaps(window)
        if not covered:
            return Reason.DATA_PERIOD_NOT_COVERED
    if conditions.actions:
        relevant = PERMIT_ACTIONS_COVERING_USE if permit else DENY_ACTIONS_TOUCHING_USE
        if conditions.actions.isdisjoint(relevant):
            return Reason.ACTION_NOT_COVERED
    if permit and conditions.uncheckable:
        return Reason.UNCHECKABLE_CONDITION
    if conditions.period is not None and not conditions.period.contains(at):
        return Reason.NOT_YET_VALID
    return None


def _walk(
    verdict: Verdict,
    path: str,
    children: Sequence[Provision],
    request: ConsentRequest,
    at: datetime,
) -> tuple[Verdict, str]:
    """Rule 5: the deepest matching provision decides its branch; deny wins among siblings."""
    outcomes = [
        _walk(child.verdict, child.path, child.children, request, at)
        for child in children
        if condition_miss(child.conditions, child.verdict, request, at) is None
    ]
    if not outcomes:
        return verdict, path
    denies = [outcome for outcome in outcomes if outcome[0] is Verdict.DENY]
    return denies[0] if denies else outcomes[0]


def _applicability_miss(
    record: ConsentRecord, request: ConsentRequest, at: datetime
) -> Reason | None:
    if not record.governs_data_use:
        return Reason.SCOPE_NOT_DATA_USE
    if record.validity.start is not None and at < record.validity.start:
        return Reason.NOT_YET_VALID
    return condition_miss(record.scope, record.base or Verdict.DENY, request, at)


@dataclass(frozen=True)
class _Outcome:
    verdict: Verdict | None  # None: no consent in force, the regime decides
    reason: Reason
    path: str | None


def _outcome(record: ConsentRecord, request: ConsentRequest, at: datetime) -> _Outcome:
    """Rule 7: what the deciding consent says."""
    if record.base is None:
        return _Outcome(Verdict.DENY, Reason.CONSENT_UNDETERMINED, None)
    verdict, path = _walk(record.base, record.base_path, record.provisions, request, at)
    if record.status == STATUS_WITHDRAWN:
        if verdict is Verdict.PERMIT:
            return _Outcome(Verdict.DENY, Reason.CONSENT_WITHDRAWN, path)
        return _Outcome(None, Reason.CONSENT_INACTIVE, path)
    if not record.validity.contains(at):
        return _Outcome(None, Reason.CONSENT_EXPIRED, path)
    if verdict is Verdict.PERMIT:
        return _Outcome(Verdict.PERMIT, Reason.CONSENT_PERMIT, path)
    return _Outcome(Verdict.DENY, Reason.CONSENT_DENY, path)


def _regime_default(
    regime: Regime, first: Reason, detail: Iterable[Reason]
) -> tuple[Verdict, tuple[Reason, ...]]:
    """Rule 8: the regime decides; ``first`` says why no consent decided, ``detail`` adds to it."""
    rest = tuple(sorted(set(detail) - {first}))
    if regime is Regime.OPT_OUT:
        return Verdict.PERMIT, (Reason.OPT_OUT_DEFAULT, first, *rest)
    return Verdict.DENY, (first, *rest)


def _order_key(record: ConsentRecord) -> tuple[datetime, datetime]:
    return (record.recorded or _EARLIEST, record.last_updated or _EARLIEST)


def evaluate(
    consents: Iterable[ConsentRecord],
    request: ConsentRequest,
    *,
    at: datetime,
    regime: Regime,
) -> Decision:
    """Decide whether one patient's data may be used for ``request`` at time ``at``.

    Parameters
    ----------
    consents : Iterable[ConsentRecord]
        Every consent of the patient, in any order.
    request : ConsentRequest
        Purpose, actors, data classes and data window of the intended use.
    at : datetime
        Timezone-aware time of the decision (the round's start).
    regime : Regime
        The site's regime for patients without an applicable consent.

    Returns
    -------
    Decision
        Verdict, reasons (the first is the one counted), deciding provision and consent ids.
    """
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    # (1) snapshot, (2) status.
    known = [r for r in consents if r.recorded is None or r.recorded <= at]
    candidates = [r for r in known if r.status in (STATUS_IN_FORCE, STATUS_WITHDRAWN)]
    detail: set[Reason] = set()
    if len(candidates) < len(known):
        detail.add(Reason.STATUS_NOT_IN_FORCE)
    # (3) applicability.
    applicable = []
    for record in candidates:
        miss = _applicability_miss(record, request, at)
        if miss is None:
            applicable.append(record)
        else:
            detail.add(miss)
    if not applicable:
        first = Reason.NO_APPLICABLE_CONSENT if candidates else Reason.NO_CONSENT
        verdict, reasons = _regime_default(regime, first, detail)
        ids = tuple(sorted({r.consent_id for r in candidates}))
        return Decision(decision=verdict, reasons=reasons, consent_ids=ids)
    # (4) latest wins; ties are all evaluated, deny wins.
    latest = max(_order_key(r) for r in applicable)
    tied = sorted(
        (r for r in applicable if _order_key(r) == latest),
        key=lambda r: (r.consent_id, r.fingerprint),
    )
    decisions = [_final(record, request, at, regime) for record in tied]
    denied = [d for d in decisions if not d.permitted]
    chosen = denied[0] if denied else decisions[0]
    if chosen.primary_reason is Reason.CONSENT_DENY and _revokes_permit(
        applicable, latest, request, at
    ):
        chosen = chosen.model_copy(update={"reasons": (Reason.CONSENT_WITHDRAWN, *chosen.reasons)})
    if len(tied) == 1:
        return chosen
    extra = (Reason.TIED_CONSENTS,) if denied and len(denied) < len(decisions) else ()
    return chosen.model_copy(
        update={
            "reasons": (*chosen.reasons, *extra),
            "consent_ids": tuple(r.consent_id for r in tied),
        }
    )


def _revokes_permit(
    applicable: Sequence[ConsentRecord],
    latest: tuple[datetime, datetime],
    request: ConsentRequest,
    at: datetime,
) -> bool:
    """Whether an older applicable, active consent permitted what the latest one denies."""
    return any(
        record.status == STATUS_IN_FORCE
        and record.base is not None
        and _order_key(record) < latest
        and _walk(record.base, record.base_path, record.provisions, request, at)[0]
        is Verdict.PERMIT
        for record in applicable
    )


def _final(
    record: ConsentRecord, request: ConsentRequest, at: datetime, regime: Regime
) -> Decision:
    outcome = _outcome(record, request, at)
    ids = (record.consent_id,)
    if outcome.verdict is not None:
        return Decision(
            decision=outcome.verdict,
            reasons=(outcome.reason,),
            provision_path=outcome.path,
            consent_ids=ids,
        )
    first = (
        outcome.reason if outcome.reason is Reason.CONSENT_EXPIRED else Reason.NO_CONSENT_IN_FORCE
    )
    verdict, reasons = _regime_default(regime, first, (outcome.reason,))
    return Decision(decision=verdict, reasons=reasons, provision_path=outcome.path, consent_ids=ids)


@dataclass(frozen=True)
class ConsentSnapshot:
    """Decisions for every patient of a site at one time, and their counts (no ids in counts).

    Attributes
    ----------
    at : datetime
        Time the consents were evaluated at (the consent snapshot time).
    regime : Regime
        Regime applied.
    request : ConsentRequest
        The request evaluated.
    decisions : Mapping[str, Decision]
        Local patient id → decision (stays at the site).
    """

    at: datetime
    regime: Regime
    request: ConsentRequest
    decisions: Mapping[str, Decision]

    @property
    def permitted(self) -> tuple[str, ...]:
        """Local ids of the permitted patients, sorted."""
        return tuple(sorted(p for p, d in self.decisions.items() if d.permitted))

    @property
    def total(self) -> int:
        """Patients evaluated."""
        return len(self.decisions)

    def counts_by_reason(self) -> dict[str, int]:
        """Patients per first reason (permit and deny reasons alike), sorted by reason."""
        counts = Counter(d.primary_reason.value for d in self.decisions.values())
        return dict(sorted(counts.items()))

    def denied_by_reason(self) -> dict[str, int]:
        """Denied patients per first reason, sorted by reason."""
        counts = Counter(d.primary_reason.value for d in self.decisions.values() if not d.permitted)
        return dict(sorted(counts.items()))


def evaluate_all(
    consents_by_patient: Mapping[str, Sequence[ConsentRecord]],
    request: ConsentRequest,
    *,
    at: datetime,
    regime: Regime,
    patient_ids: Iterable[str] | None = None,
) -> ConsentSnapshot:
    """:func:`evaluate` for every patient.

    Parameters
    ----------
    consents_by_patient : Mapping[str, Sequence[ConsentRecord]]
        Local patient id → that patient's consents.
    request, at, regime
        As for :func:`evaluate`.
    patient_ids : Iterable[str] or None
        Patients to decide for (a patient without consents is decided too); by default every
        patient that has a consent.

    Returns
    -------
    ConsentSnapshot
        One decision per patient.
    """
    patients = sorted(set(consents_by_patient if patient_ids is None else patient_ids))
    decisions = {
        patient: evaluate(consents_by_patient.get(patient, ()), request, at=at, regime=regime)
        for patient in patients
    }
    return ConsentSnapshot(at=at, regime=regime, request=request, decisions=decisions)
