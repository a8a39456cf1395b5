"""The site guard: run checks, consent filtering per round, minimum cohort, audit content."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedtwin.audit import EVENT_ADAPTER, ConsentFiltered, PolicyDecision
from fedtwin.consent import (
    ConsortiumPolicy,
    RunRequest,
    SiteGuard,
    SitePolicy,
    load_consortium_policy,
    load_site_policy,
    policy_hash,
    record_from_json,
)
from fedtwin.errors import ConsentDenied
from fedtwin.fhir import pseudonym, read_consents

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SECRET = bytes(range(32))
ROUND_1 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
ROUND_2 = ROUND_1 + timedelta(days=7)
WITHDRAWN_ON = "2026-02-03T12:00:00Z"


@pytest.fixture
def site() -> SitePolicy:
    return load_site_policy(POLICIES / "site-opt-in-research.toml").model_copy(
        update={"min_eligible_patients_per_round": 2}
    )


@pytest.fixture
def consortium() -> ConsortiumPolicy:
    return load_consortium_policy(POLICIES / "consortium.toml")


def _run(consortium: ConsortiumPolicy, **change: Any) -> RunRequest:
    claims: dict[str, Any] = {
        "consortium_id": consortium.consortium_id,
        "study_id": consortium.study_id,
        "purpose": consortium.purpose,
        "twin_kind": "glucose-twin",
        "epsilon": 4.0,
        "delta": consortium.delta,
        "actors": consortium.actors,
        "consortium_policy_hash": policy_hash(consortium),
    }
    return RunRequest(**(claims | change))


def _cohort(c: SimpleNamespace) -> tuple[list[str], dict[str, list[Any]]]:
    """Five patients: three research consents (one withdrawn mid-study), one none, one TREAT."""
    ids = [
        "patient-ada-0001",
        "patient-bo-0002",
        "patient-cy-0003",
        "patient-di-0004",
        "patient-ed-0005",
    ]
    research = c.rule(type="permit", purpose=["HRESCH"], actor=[c.CONSORTIUM])
    resources = [
        c.r4(research, cid="a1", patient=ids[0]),
        c.r4(research, cid="b1", patient=ids[1]),
        c.r4(research, cid="c1", patient=ids[2]),
        c.r4(research, cid="c2", patient=ids[2], status="inactive", when=WITHDRAWN_ON),
        c.r4(c.rule(type="permit", purpose=["TREAT"]), cid="e1", patient=ids[4]),
    ]
    records: dict[str, list[Any]] = {}
    for resource in resources:
        record = record_from_json(resource)
        records.setdefault(record.patient_id, []).append(record)
    return ids, records


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"consortium_id": "someone-else"}, "consortium-not-trusted"),
        ({"consortium_policy_hash": "sha256:" + "0" * 64}, "consortium-policy-mismatch"),
        ({"study_id": "another-study"}, "study-mismatch"),
        ({"purpose": "HMARKT"}, "purpose-not-accepted"),
        ({"purpose": "SELLDATA"}, "purpose-unknown"),
        ({"twin_kind": "oncology-twin"}, "twin-kind-not-accepted"),
        ({"twin_kind": "weather-twin"}, "twin-kind-not-accepted"),
        ({"epsilon": 8.5}, "epsilon-above-cap"),
        ({"delta": 1e-3}, "delta-above-cap"),
        ({"actors": ("Organization/commercial-partner",)}, "actor-not-trusted"),
    ],
)
def test_run_with_a_wrong_claim_is_refused_with_its_reason(
    change: dict[str, Any], code: str, site: SitePolicy, consortium: ConsortiumPolicy
) -> None:
    check = SiteGuard(site, consortium).check_run(_run(consortium, **change), at=ROUND_1)
    assert not check.allowed
    assert [refusal.code for refusal in check.refusals] == [code]


def test_run_within_both_policies_is_accepted(
    site: SitePolicy, consortium: ConsortiumPolicy
) -> None:
    check = SiteGuard(site, consortium).check_run(_run(consortium), at=ROUND_1)
    assert check.allowed and check.refusals == ()
    assert check.site_policy_hash == policy_hash(site)


def test_rounds_closer_than_the_spacing_are_refused(
    site: SitePolicy, consortium: ConsortiumPolicy
) -> None:
    spaced = consortium.model_copy(update={"min_round_spacing_minutes": 60})
    guard = SiteGuard(site, spaced)
    run = _run(spaced, consortium_policy_hash=policy_hash(spaced))
    soon = guard.check_run(run, at=ROUND_1, previous_round_at=ROUND_1 - timedelta(minutes=30))
    later = guard.check_run(run, at=ROUND_1, previous_round_at=ROUND_1 - timedelta(minutes=61))
    assert [r.code for r in soon.refusals] == ["round-too-soon"]
    assert later.allowed


def test_withdrawn_consent_excludes_patient_from_next_round(
    site: SitePolicy, consortium: ConsortiumPolicy, consents: SimpleNamespace
) -> None:
    ids, records = _cohort(consents)
    guard = SiteGuard(site, consortium)
    first = guard.admit_round(_run(consortium), records, ids, at=ROUND_1)
    second = guard.admit_round(_run(consortium), records, ids, at=ROUND_2)
    assert first.training_ids == (ids[0], ids[1], ids[2])
    assert second.training_ids == (ids[0], ids[1])
    assert second.snapshot is not None
    assert second.snapshot.consent.decisions[ids[2]].primary_reason.value == "consent-withdrawn"


def test_refused_run_has_no_training_set_and_raises(
    site: SitePolicy, consortium: ConsortiumPolicy, consents: SimpleNamespace
) -> None:
    ids, records = _cohort(consents)
    admission = SiteGuard(site, consortium).admit_round(
        _run(consortium, purpose="HMARKT"), records, ids, at=ROUND_1
    )
    assert not admission.allowed
    assert admission.training_ids == ()
    assert admission.snapshot is None
    with pytest.raises(ConsentDenied, match="purpose-not-accepted"):
        admission.raise_if_refused()


def test_round_below_the_minimum_is_refused(
    site: SitePolicy, consortium: ConsortiumPolicy, consents: SimpleNamespace
) -> None:
    ids, records = _cohort(consents)
    strict = site.model_copy(update={"min_eligible_patients_per_round": 3})
    admission = SiteGuard(strict, consortium).admit_round(
        _run(consortium), records, ids, at=ROUND_2
    )
    assert admission.refusal_codes == ("too-few-eligible-patients",)
    assert admission.training_ids == ()
    with pytest.raises(ConsentDenied, match="too-few-eligible-patients"):
        admission.raise_if_refused()
    last = admission.audit_events(site_id="site-a", time=ROUND_2, run_id="run-1", round=2)[-1]
    assert isinstance(last, PolicyDecision) and not last.allowed
    assert last.reasons == ("too-few-eligible-patients: 2 permitted < minimum 3",)


def test_audit_events_carry_counts_and_hashes_but_no_patient_id(
    site: SitePolicy, consortium: ConsortiumPolicy, consents: SimpleNamespace
) -> None:
    ids, records = _cohort(consents)
    guard = SiteGuard(site, consortium)
    admission = guard.admit_round(_run(consortium), records, ids, at=ROUND_2)
    events = admission.audit_events(site_id="site-a", time=ROUND_2, run_id="run-1", round=2)
    check, filtered, cohort = events
    assert isinstance(check, PolicyDecision) and check.allowed
    assert check.policy_version_hash == policy_hash(site)
    assert isinstance(filtered, ConsentFiltered)
    assert filtered.consent_snapshot_time == ROUND_2
    assert (filtered.patients_total, filtered.patients_permitted) == (5, 2)
    assert filtered.denied_by_reason == {
        "consent-withdrawn": 1,
        "no-applicable-consent": 1,
        "no-consent": 1,
    }
    assert isinstance(cohort, PolicyDecision) and cohort.allowed
    lines = [json.dumps(e.model_dump(mode="json")) for e in events]
    lines.append(json.dumps(admission.snapshot.audit_counts() if admission.snapshot else {}))
    for event in events:
        assert EVENT_ADAPTER.validate_json(event.model_dump_json()) == event
    for line in lines:
        assert not any(patient in line for patient in ids)


def test_decision_log_names_patients_by_keyed_pseudonym_only(
    site: SitePolicy, consortium: ConsortiumPolicy, consents: SimpleNamespace
) -> None:
    ids, records = _cohort(consents)
    admission = SiteGuard(site, consortium).admit_round(_run(consortium), records, ids, at=ROUND_2)
    assert admission.snapshot is not None
    log = admission.snapshot.decision_log(SECRET)
    text = json.dumps(log)
    assert not any(patient in text for patient in ids)
    by_pseudonym = {entry["patient"]: entry for entry in log}
    assert by_pseudonym[pseudonym(SECRET, ids[2])]["reasons"][0] == "consent-withdrawn"
    assert by_pseudonym[pseudonym(SECRET, ids[0])]["decision"] == "permit"


def test_guard_reads_consents_straight_from_an_export(
    tmp_path: Path, site: SitePolicy, consortium: ConsortiumPolicy, consents: SimpleNamespace
) -> None:
    research = consents.rule(type="permit", purpose=["HRESCH"], actor=[consents.CONSORTIUM])
    folder = consents.write_export(
        tmp_path / "export",
        [consents.r4(research, cid=f"c{i}", patient=f"p{i}") for i in range(3)],
        patients=["p0", "p1", "p2", "p3"],
    )
    parsed = read_consents(folder)
    snapshot = SiteGuard(site, consortium).eligible_patients(
        parsed, ["p0", "p1", "p2", "p3"], _run(consortium), at=ROUND_1
    )
    assert snapshot.permitted_ids == ("p0", "p1", "p2")
    assert snapshot.enough


def test_site_data_window_limits_what_a_permit_must_cover(
    site: SitePolicy, consortium: ConsortiumPolicy, consents: SimpleNamespace
) -> None:
    recent_only = consents.rule(
        type="permit",
        purpose=["HRESCH"],
        actor=[consents.CONSORTIUM],
        data_period={"start": "2024-01-01"},
    )
    record = record_from_json(consents.r4(recent_only))
    guard = SiteGuard(site, consortium)  # five-year look-back: reaches 2021
    narrow = SiteGuard(
        site.model_copy(
            update={"data_window": site.data_window.model_copy(update={"lookback_days": 365})}
        ),
        consortium,
    )
    wide = guard.eligible_patients({"p1": [record]}, ["p1"], _run(consortium), at=ROUND_1)
    short = narrow.eligible_patients({"p1": [record]}, ["p1"], _run(consortium), at=ROUND_1)
    assert wide.permitted_ids == ()
    assert short.permitted_ids == ("p1",)
