"""The consent evaluator: every rule in R4/R4B and R5 form, then its properties (hypothesis)."""

# ruff: noqa: E501  (one table row per line: the cases read as a table)

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtwin.consent import (
    ConsentRequest,
    Decision,
    Regime,
    evaluate,
    evaluate_all,
    record_from_json,
)

AT = datetime(2025, 1, 1, tzinfo=UTC)
OTHER = "Organization/commercial-partner"
CONSORTIUM = "Organization/fedtwin-consortium"
Build = Callable[[SimpleNamespace], list[dict[str, Any]]]


@dataclass(frozen=True)
class Case:
    name: str
    build: Build
    decision: str
    reason: str
    request: dict[str, Any] = field(default_factory=dict)
    at: datetime = AT
    regime: Regime = Regime.OPT_IN
    path: str | None = None


def decide(
    resources: list[dict[str, Any]],
    *,
    at: datetime = AT,
    regime: Regime = Regime.OPT_IN,
    **request: Any,
) -> Decision:
    records = [record_from_json(r, line=i + 1) for i, r in enumerate(resources)]
    wanted = {"purpose": "HRESCH", "actors": (CONSORTIUM,), **request}
    return evaluate(records, ConsentRequest(**wanted), at=at, regime=regime)


def _r4_permit(c: SimpleNamespace, **rule: Any) -> dict[str, Any]:
    return c.r4(c.rule(type="permit", purpose=["HRESCH"], **rule))


def _r5_research(c: SimpleNamespace, *nested: dict[str, Any], **rule: Any) -> dict[str, Any]:
    """R5 research consent: deny everything except HRESCH (level 1 flips deny to permit)."""
    return c.r5("deny", [c.rule(purpose=["HRESCH"], nested=nested, r4=False, **rule)])


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


CASES = [
    # -- status: only active counts; inactive withdraws; other statuses are ignored -----------
    Case("r4-active-permit", lambda c: [_r4_permit(c)], "permit", "consent-permit", path="provision"),
    *(
        Case(f"r4-status-{s}-ignored", lambda c, s=s: [c.r4(c.rule(type="permit", purpose=["HRESCH"]), status=s)], "deny", "no-consent")
        for s in ("draft", "proposed", "rejected", "entered-in-error")
    ),
    Case("r4-inactive-permit-is-withdrawal", lambda c: [c.r4(c.rule(type="permit", purpose=["HRESCH"]), status="inactive")], "deny", "consent-withdrawn"),
    Case("r5-active-permit", lambda c: [c.r5("permit")], "permit", "consent-permit", path="decision"),
    *(
        Case(f"r5-status-{s}-ignored", lambda c, s=s: [c.r5("permit", status=s)], "deny", "no-consent")
        for s in ("draft", "not-done", "entered-in-error", "unknown")
    ),
    Case("r5-inactive-permit-is-withdrawal", lambda c: [c.r5("permit", status="inactive")], "deny", "consent-withdrawn"),
    # -- period: validity of the whole consent, provision.period inside it --------------------
    Case("r4-period-ended", lambda c: [_r4_permit(c, period={"start": "2023-01-01", "end": "2024-06-30"})], "deny", "consent-expired"),
    Case("r4-period-ended-opt-out", lambda c: [_r4_permit(c, period={"end": "2024-06-30"})], "permit", "opt-out-default", regime=Regime.OPT_OUT),
    Case("r4-period-end-day-inclusive", lambda c: [_r4_permit(c, period={"end": "2024-12-31"})], "permit", "consent-permit", at=_t("2024-12-31T23:59:59Z")),
    Case("r4-period-not-started", lambda c: [_r4_permit(c, period={"start": "2025-02-01"})], "deny", "no-applicable-consent"),
    Case("r5-period-ended", lambda c: [_r5_research(c) | {"period": {"end": "2024-06-30"}}], "deny", "consent-expired"),
    Case("r5-period-not-started", lambda c: [c.r5("permit", period={"start": "2025-03-01"})], "deny", "no-applicable-consent"),
    Case("r4-provision-period-inside", lambda c: [c.r4(c.rule(type="permit", purpose=["HRESCH"], nested=[c.rule(type="deny", period={"start": "2024-06-01", "end": "2024-12-31"})]))], "deny", "consent-deny", at=_t("2024-08-01T00:00:00Z"), path="provision.provision[0]"),
    Case("r4-provision-period-outside", lambda c: [c.r4(c.rule(type="permit", purpose=["HRESCH"], nested=[c.rule(type="deny", period={"start": "2024-06-01", "end": "2024-12-31"})]))], "permit", "consent-permit"),
    Case("r5-provision-period-inside", lambda c: [_r5_research(c, period={"start": "2024-01-01", "end": "2025-12-31"})], "permit", "consent-permit", path="provision[0]"),
    Case("r5-provision-period-outside", lambda c: [_r5_research(c, period={"start": "2023-01-01", "end": "2023-12-31"})], "deny", "consent-deny", path="decision"),
    # -- purpose of use: subsumption for permits, overlap for denies ---------------------------
    Case("r4-permit-hresch-covers-clintrch", lambda c: [_r4_permit(c)], "permit", "consent-permit", request={"purpose": "CLINTRCH"}),
    Case("r4-permit-clintrch-not-hresch", lambda c: [c.r4(c.rule(type="permit", purpose=["CLINTRCH"]))], "deny", "no-applicable-consent"),
    Case("r4-deny-clintrch-touches-hresch", lambda c: [c.r4(c.rule(type="deny", purpose=["CLINTRCH"]))], "deny", "consent-deny"),
    Case("r4-treatment-only-not-research", lambda c: [c.r4(c.rule(type="permit", purpose=["TREAT"]), scope="patient-privacy")], "deny", "no-applicable-consent"),
    Case("r4-treatment-only-opt-out", lambda c: [c.r4(c.rule(type="permit", purpose=["TREAT"]))], "permit", "opt-out-default", regime=Regime.OPT_OUT),
    Case("r5-trap-permit-with-hresch-provision-denies-research", lambda c: [c.r5("permit", [c.rule(purpose=["HRESCH"], r4=False)])], "deny", "consent-deny", path="provision[0]"),
    Case("r5-trap-also-denies-clinical-trial-research", lambda c: [c.r5("permit", [c.rule(purpose=["HRESCH"], r4=False)])], "deny", "consent-deny", request={"purpose": "CLINTRCH"}),
    Case("r5-trap-permits-treatment", lambda c: [c.r5("permit", [c.rule(purpose=["HRESCH"], r4=False)])], "permit", "consent-permit", request={"purpose": "TREAT"}, path="decision"),
    Case("r5-deny-except-research-permits-research", lambda c: [c.r5("deny", [c.rule(purpose=["HRESCH"], r4=False)])], "permit", "consent-permit"),
    Case("r5-deny-except-research-denies-treatment", lambda c: [c.r5("deny", [c.rule(purpose=["HRESCH"], r4=False)])], "deny", "consent-deny", request={"purpose": "TREAT"}),
    # -- actor: the consortium/study ---------------------------------------------------------
    Case("r4-actor-matches", lambda c: [_r4_permit(c, actor=[CONSORTIUM])], "permit", "consent-permit"),
    Case("r4-actor-absolute-url-matches", lambda c: [_r4_permit(c, actor=[f"https://fhir.example.org/{CONSORTIUM}/_history/2"])], "permit", "consent-permit"),
    Case("r4-actor-other", lambda c: [_r4_permit(c, actor=[OTHER])], "deny", "no-applicable-consent"),
    Case("r4-actor-unknown-request", lambda c: [_r4_permit(c, actor=[CONSORTIUM])], "deny", "no-applicable-consent", request={"actors": ()}),
    Case("r4-nested-deny-for-consortium", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", actor=[CONSORTIUM])])], "deny", "consent-deny"),
    Case("r4-nested-deny-for-other-actor", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", actor=[OTHER])])], "permit", "consent-permit"),
    Case("r5-actor-matches", lambda c: [_r5_research(c, actor=[CONSORTIUM])], "permit", "consent-permit"),
    Case("r5-actor-other", lambda c: [_r5_research(c, actor=[OTHER])], "deny", "consent-deny"),
    Case("r5-nested-actor-other-flips-back-only-for-it", lambda c: [_r5_research(c, c.rule(actor=[OTHER], r4=False))], "permit", "consent-permit"),
    # -- data classes / resource types --------------------------------------------------------
    Case("r4-permit-only-observations-not-all-classes", lambda c: [_r4_permit(c, classes=["Observation"])], "deny", "no-applicable-consent"),
    Case("r4-permit-classes-cover-request", lambda c: [_r4_permit(c, classes=["Observation", "Patient"])], "permit", "consent-permit", request={"data_classes": ("Observation", "Patient")}),
    Case("r4-nested-deny-used-class", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", classes=["Observation"])])], "deny", "consent-deny"),
    Case("r4-nested-deny-unused-class", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", classes=["DocumentReference"])])], "permit", "consent-permit"),
    Case("r5-nested-deny-used-resource-type", lambda c: [_r5_research(c, c.rule(classes=["Observation"], r4=False))], "deny", "consent-deny", path="provision[0].provision[0]"),
    Case("r5-nested-deny-unused-resource-type", lambda c: [_r5_research(c, c.rule(classes=["DocumentReference"], r4=False))], "permit", "consent-permit"),
    # -- dataPeriod: permits cover the window, denies touch it --------------------------------
    Case("r4-data-period-covers-window", lambda c: [_r4_permit(c, data_period={"start": "2020-01-01"})], "permit", "consent-permit", request={"data_from": _t("2021-01-01T00:00:00Z"), "data_to": AT}),
    Case("r4-data-period-unbounded-window", lambda c: [_r4_permit(c, data_period={"start": "2020-01-01"})], "deny", "no-applicable-consent"),
    Case("r4-nested-deny-data-period-overlaps", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", data_period={"start": "2019-01-01", "end": "2019-12-31"})])], "deny", "consent-deny", request={"data_from": _t("2018-01-01T00:00:00Z"), "data_to": AT}),
    Case("r4-nested-deny-data-period-apart", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", data_period={"start": "2019-01-01", "end": "2019-12-31"})])], "permit", "consent-permit", request={"data_from": _t("2020-01-01T00:00:00Z"), "data_to": AT}),
    Case("r5-data-period-covers-window", lambda c: [_r5_research(c, dataPeriod={"start": "2020-01-01"})], "permit", "consent-permit", request={"data_from": _t("2021-01-01T00:00:00Z"), "data_to": AT}),
    Case("r5-data-period-outside-window", lambda c: [_r5_research(c, dataPeriod={"start": "2022-01-01"})], "deny", "consent-deny", request={"data_from": _t("2021-01-01T00:00:00Z"), "data_to": AT}),
    # -- nested exceptions: the deepest match decides; among siblings deny wins ----------------
    Case("r4-exception-to-exception", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", actor=[CONSORTIUM], nested=[c.rule(type="permit", purpose=["CLINTRCH"])])])], "permit", "consent-permit", request={"purpose": "CLINTRCH"}, path="provision.provision[0].provision[0]"),
    Case("r4-exception-without-inner-match", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", actor=[CONSORTIUM], nested=[c.rule(type="permit", purpose=["CLINTRCH"])])])], "deny", "consent-deny", path="provision.provision[0]"),
    Case("r4-siblings-deny-wins", lambda c: [_r4_permit(c, nested=[c.rule(type="permit", purpose=["HRESCH"]), c.rule(type="deny", actor=[CONSORTIUM])])], "deny", "consent-deny", path="provision.provision[1]"),
    Case("r5-three-levels", lambda c: [_r5_research(c, c.rule(actor=[CONSORTIUM], r4=False, nested=[c.rule(purpose=["CLINTRCH"], r4=False)]))], "permit", "consent-permit", request={"purpose": "CLINTRCH"}, path="provision[0].provision[0].provision[0]"),
    Case("r5-branches-deny-wins", lambda c: [c.r5("deny", [c.rule(purpose=["HRESCH"], r4=False), c.rule(actor=[CONSORTIUM], r4=False, nested=[c.rule(purpose=["HRESCH"], r4=False)])])], "deny", "consent-deny", path="provision[1].provision[0]"),
    # -- base decision: stated, from policyRule, or undetermined -----------------------------
    Case("r4-untyped-root-optin", lambda c: [c.r4(c.rule(purpose=["HRESCH"]), policyRule={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]})], "permit", "consent-permit", path="policyRule"),
    Case("r4-untyped-root-undetermined", lambda c: [c.r4(c.rule(purpose=["HRESCH"]))], "deny", "consent-undetermined"),
    Case("r5-no-decision-undetermined", lambda c: [c.r5(None)], "deny", "consent-undetermined"),
    Case("r4-scope-treatment-is-not-data-use", lambda c: [_r4_permit(c) | {"scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}]}}], "deny", "no-applicable-consent"),
    # -- conditions fedtwin cannot check narrow permits and widen denies ---------------------
    Case("r4-permit-with-code-cannot-cover", lambda c: [_r4_permit(c, code=[{"text": "lab results only"}])], "deny", "no-applicable-consent"),
    Case("r4-deny-with-security-label-applies", lambda c: [_r4_permit(c, nested=[c.rule(type="deny", securityLabel=[{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}])])], "deny", "consent-deny"),
    Case("r4-data-related-to-own-patient-is-all", lambda c: [_r4_permit(c, data=[{"meaning": "related", "reference": {"reference": "Patient/p1"}}])], "permit", "consent-permit"),
    Case("r4-permit-access-action-covers-use", lambda c: [_r4_permit(c, action=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}])], "permit", "consent-permit"),
    Case("r4-permit-collect-action-does-not", lambda c: [_r4_permit(c, action=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "collect"}]}])], "deny", "no-applicable-consent"),
    # -- latest consent wins --------------------------------------------------------------------
    Case("r4-newer-deny-withdraws-older-permit", lambda c: [_r4_permit(c), c.r4(c.rule(type="deny", purpose=["HRESCH"]), cid="c2", when="2024-06-01T00:00:00Z")], "deny", "consent-withdrawn", path="provision"),
    Case("r4-newer-permit-replaces-older-deny", lambda c: [c.r4(c.rule(type="deny", purpose=["HRESCH"]), when="2023-01-01T00:00:00Z"), _r4_permit(c) | {"id": "c2"}], "permit", "consent-permit"),
    Case("r4-newer-other-purpose-leaves-older", lambda c: [_r4_permit(c), c.r4(c.rule(type="permit", purpose=["TREAT"]), cid="c2", when="2024-06-01T00:00:00Z")], "permit", "consent-permit"),
    Case("r4-consent-after-at-not-yet-known", lambda c: [_r4_permit(c), c.r4(c.rule(type="deny", purpose=["HRESCH"]), cid="c2", when="2025-06-01T00:00:00Z")], "permit", "consent-permit"),
    Case("r4-tie-deny-wins", lambda c: [_r4_permit(c), c.r4(c.rule(type="deny", purpose=["HRESCH"]), cid="c2")], "deny", "consent-deny"),
    Case("r4-tie-broken-by-last-updated", lambda c: [_r4_permit(c) | {"meta": {"lastUpdated": "2024-02-01T00:00:00Z"}}, c.r4(c.rule(type="deny", purpose=["HRESCH"]), cid="c2", updated="2024-01-15T00:00:00Z")], "permit", "consent-permit"),
    Case("r5-newer-trap-overrides-r4-permit", lambda c: [_r4_permit(c), c.r5("permit", [c.rule(purpose=["HRESCH"], r4=False)], when="2024-06-01")], "deny", "consent-withdrawn"),
    Case("r5-newer-deny-all-after-permit", lambda c: [_r5_research(c), c.r5("deny", cid="c6", when="2024-06-01")], "deny", "consent-withdrawn"),
    Case("r5-expired-newest-does-not-revive-older", lambda c: [_r5_research(c) | {"id": "old"}, _r5_research(c) | {"id": "new", "date": "2024-03-01", "period": {"end": "2024-09-01"}}], "deny", "consent-expired"),
    # -- regime -----------------------------------------------------------------------------------
    Case("no-consent-opt-in", lambda c: [], "deny", "no-consent"),
    Case("no-consent-opt-out", lambda c: [], "permit", "opt-out-default", regime=Regime.OPT_OUT),
    Case("r4-objection-opt-out", lambda c: [c.r4(c.rule(type="deny", purpose=["HRESCH"]))], "deny", "consent-deny", regime=Regime.OPT_OUT),
    Case("r5-objection-opt-out", lambda c: [c.r5("permit", [c.rule(purpose=["HRESCH"], r4=False)])], "deny", "consent-deny", regime=Regime.OPT_OUT),
    Case("r4-withdrawn-objection-opt-out", lambda c: [c.r4(c.rule(type="deny", purpose=["HRESCH"]), status="inactive")], "permit", "opt-out-default", regime=Regime.OPT_OUT),
    Case("r4-withdrawn-permit-opt-out", lambda c: [c.r4(c.rule(type="permit", purpose=["HRESCH"]), status="inactive")], "deny", "consent-withdrawn", regime=Regime.OPT_OUT),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_consent_rule(case: Case, consents: SimpleNamespace) -> None:
    found = decide(case.build(consents), at=case.at, regime=case.regime, **case.request)
    assert (found.decision.value, found.primary_reason.value) == (case.decision, case.reason)
    if case.path is not None:
        assert found.provision_path == case.path


@pytest.mark.parametrize(
    ("form", "withdrawal_date"),
    [("r4", "2024-09-01T00:00:00Z"), ("r5", "2024-09-01")],
)
def test_withdrawal_takes_effect_from_its_date_on(
    form: str, withdrawal_date: str, consents: SimpleNamespace
) -> None:
    if form == "r4":
        given = _r4_permit(consents)
        withdrawn = given | {"id": "w", "status": "inactive", "dateTime": withdrawal_date}
    else:
        given = _r5_research(consents)
        withdrawn = given | {"id": "w", "status": "inactive", "date": withdrawal_date}
    before = decide([given, withdrawn], at=_t("2024-08-31T23:59:59Z"))
    after = decide([given, withdrawn], at=_t("2024-09-01T00:00:00Z"))
    assert before.permitted
    assert before.consent_ids == (given["id"],)
    assert not after.permitted
    assert after.primary_reason.value == "consent-withdrawn"
    assert after.consent_ids == ("w",)


def test_snapshot_counts_every_patient_once(consents: SimpleNamespace) -> None:
    resources = [
        _r4_permit(consents) | {"patient": {"reference": "Patient/a"}},
        consents.r4(consents.rule(type="deny", purpose=["HRESCH"]), patient="b"),
    ]
    records: dict[str, list[Any]] = {}
    for resource in resources:
        record = record_from_json(resource)
        records.setdefault(record.patient_id, []).append(record)
    request = ConsentRequest(purpose="HRESCH", actors=(CONSORTIUM,))
    snapshot = evaluate_all(
        records, request, at=AT, regime=Regime.OPT_IN, patient_ids=["a", "b", "c"]
    )
    assert snapshot.permitted == ("a",)
    assert snapshot.denied_by_reason() == {"consent-deny": 1, "no-consent": 1}
    assert sum(snapshot.counts_by_reason().values()) == snapshot.total == 3


# -- properties ------------------------------------------------------------------------------

_DATES = ("2023-01-01", "2023-06-01", "2024-01-01", "2024-06-01")
_PURPOSES = ("HRESCH", "CLINTRCH", "TREAT")


@st.composite
def _provision(draw: st.DrawFn, r4: bool, depth: int) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if r4:
        found["type"] = draw(st.sampled_from(("permit", "deny")))
    if draw(st.booleans()):
        found["purpose"] = [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code}
            for code in draw(st.sets(st.sampled_from(_PURPOSES), min_size=1))
        ]
    if draw(st.booleans()):
        actor: dict[str, Any] = {
            "reference": {"reference": draw(st.sampled_from((CONSORTIUM, OTHER)))}
        }
        if r4:
            actor["role"] = {"text": "recipient"}
        found["actor"] = [actor]
    if depth > 0 and draw(st.booleans()):
        found["provision"] = draw(st.lists(_provision(r4, depth - 1), min_size=1, max_size=2))
    return found


@st.composite
def _consent(draw: st.DrawFn, index: int) -> dict[str, Any]:
    r4 = draw(st.booleans())
    date = draw(st.sampled_from(_DATES))
    if r4:
        status = draw(st.sampled_from(("active", "active", "inactive", "draft")))
        root = draw(_provision(True, 2))
        return {
            "resourceType": "Consent",
            "id": f"c{index}",
            "status": status,
            "scope": {"text": "research"},
            "category": [{"text": "consent"}],
            "patient": {"reference": "Patient/p1"},
            "dateTime": date,
            "provision": root,
        }
    status = draw(st.sampled_from(("active", "active", "inactive", "not-done")))
    found: dict[str, Any] = {
        "resourceType": "Consent",
        "id": f"c{index}",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "date": date,
        "decision": draw(st.sampled_from(("permit", "deny"))),
    }
    provisions = draw(st.lists(_provision(False, 2), max_size=2))
    if provisions:
        found["provision"] = provisions
    return found


@st.composite
def _history(draw: st.DrawFn) -> list[dict[str, Any]]:
    size = draw(st.integers(min_value=0, max_value=4))
    return [draw(_consent(i)) for i in range(size)]


_REQUESTS = st.builds(
    lambda purpose, actors: ConsentRequest(purpose=purpose, actors=actors),
    st.sampled_from(_PURPOSES),
    st.sampled_from(((CONSORTIUM,), (OTHER,), ())),
)
_PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(
    history=_history(), request=_REQUESTS, regime=st.sampled_from(list(Regime)), seed=st.integers()
)
def test_evaluation_is_deterministic_and_order_independent(
    history: list[dict[str, Any]], request: ConsentRequest, regime: Regime, seed: int
) -> None:
    records = [record_from_json(resource) for resource in history]
    first = evaluate(records, request, at=AT, regime=regime)
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    assert evaluate(shuffled, request, at=AT, regime=regime) == first
    assert evaluate(records, request, at=AT, regime=regime) == first


@_PROPERTY
@given(history=_history(), request=_REQUESTS)
def test_opt_out_permits_everyone_opt_in_permits(
    history: list[dict[str, Any]], request: ConsentRequest
) -> None:
    records = [record_from_json(resource) for resource in history]
    if evaluate(records, request, at=AT, regime=Regime.OPT_IN).permitted:
        assert evaluate(records, request, at=AT, regime=Regime.OPT_OUT).permitted


@_PROPERTY
@given(history=_history(), request=_REQUESTS, regime=st.sampled_from(list(Regime)))
def test_a_newest_deny_everything_consent_always_denies(
    history: list[dict[str, Any]], request: ConsentRequest, regime: Regime
) -> None:
    newest = {
        "resourceType": "Consent",
        "id": "newest",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "date": "2024-12-01",
        "decision": "deny",
    }
    records = [record_from_json(resource) for resource in [*history, newest]]
    assert not evaluate(records, request, at=AT, regime=regime).permitted
