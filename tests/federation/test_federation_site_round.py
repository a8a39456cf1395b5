"""A site's guard rails around one round, run in-process on real generated sites.

What the trainer receives is observed by wrapping the real ``train_private_round``: the
patients in its dataset are exactly those the round trained on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from site_trees import SiteTree, site_events

from fedtwin.consent import SiteGuard, load_consortium_policy, load_site_policy
from fedtwin.demo import calendar_for, run_config_for
from fedtwin.errors import BudgetExhausted, ConsentDenied
from fedtwin.federation import RunConfig, SiteConfig
from fedtwin.federation import site_round as site_round_module
from fedtwin.federation.server import initial_model
from fedtwin.federation.site_round import open_party, train_round
from fedtwin.federation.sitedata import load_site_data
from fedtwin.fhir import load_or_create_site_secret, pseudonym
from fedtwin.privacy import PrivacyLedger
from fedtwin.twins import GlucoseTwin

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, ...]]]:
    """Pseudonyms of the patients each call of the DP trainer actually received."""
    received: list[tuple[str, ...]] = []
    real = site_round_module.train_private_round

    def spy(model: Any, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        received.append(dataset.batch.pseudonyms)
        return real(model, dataset, *args, **kwargs)

    monkeypatch.setattr(site_round_module, "train_private_round", spy)
    yield received


def _round(site: SiteConfig, run: RunConfig, server_round: int, tree: SiteTree) -> Any:
    party = open_party(site)
    try:
        model = initial_model(run)  # the coordinator's seeded round-0 model
        at = calendar_for(tree.config).round_at(run, server_round)
        return train_round(party, run, server_round, model, at)
    finally:
        party.close()


def test_withdrawn_patients_are_trained_until_their_withdrawal_and_never_after(
    site_tree: SiteTree, trained: list[tuple[str, ...]]
) -> None:
    site = site_tree.site("site-paediatric")
    run = run_config_for(site_tree.config, "run-withdrawal")
    for server_round in (1, 2, 3):
        _round(site, run, server_round, site_tree)
    assert len(trained) == 3

    # The guard's own verdicts, per patient, at each round's time.
    data = load_site_data(site)
    secret = load_or_create_site_secret(site.state_dir)
    guard = SiteGuard(
        load_site_policy(site.site_policy), load_consortium_policy(site.consortium_policy)
    )
    withdrawn_between: set[str] = set()
    calendar = calendar_for(site_tree.config)
    for earlier, later in ((1, 2), (2, 3)):
        before = guard.eligible_patients(
            data.consents,
            [p.patient_id for p in data.train],
            run.run_request(),
            at=calendar.round_at(run, earlier),
        )
        after = guard.eligible_patients(
            data.consents,
            [p.patient_id for p in data.train],
            run.run_request(),
            at=calendar.round_at(run, later),
        )
        left = set(before.permitted_ids) - set(after.permitted_ids)
        withdrawn_between |= {pseudonym(secret, p) for p in left}
        # What the trainer got in the later round holds none of those who left.
        assert not {pseudonym(secret, p) for p in left} & set(trained[later - 1])
    # Some of them were really trained before (the rest had too little data to train on).
    assert withdrawn_between & (set(trained[0]) | set(trained[1])), "a withdrawal during the run"
    counts = [e for e in site_events(site) if e.type == "consent_filtered"]
    assert [e.denied_by_reason.get("consent-withdrawn", 0) for e in counts] == sorted(
        e.denied_by_reason.get("consent-withdrawn", 0) for e in counts
    )
    assert counts[-1].denied_by_reason.get("consent-withdrawn", 0) > counts[0].denied_by_reason.get(
        "consent-withdrawn", 0
    )


def test_a_run_for_another_purpose_is_refused_before_any_training_or_spend(
    site_tree: SiteTree, trained: list[tuple[str, ...]]
) -> None:
    site = site_tree.site("site-adolescent")
    run = run_config_for(site_tree.config, "run-marketing").model_copy(update={"purpose": "HMARKT"})
    with pytest.raises(ConsentDenied, match="purpose"):
        _round(site, run, 1, site_tree)
    assert trained == []
    assert (
        not site.ledger_path.exists() or PrivacyLedger(site.ledger_path, 8.0, 1e-5).history() == []
    )
    events = site_events(site)
    assert [e.type for e in events] == ["policy_decision"]
    assert not events[0].allowed and "purpose-not-accepted" in events[0].reasons[0]


def test_a_retried_round_returns_the_same_release_and_spends_once(
    site_tree: SiteTree, trained: list[tuple[str, ...]]
) -> None:
    site = site_tree.site("site-adult")
    run = run_config_for(site_tree.config, "run-retry")
    first = _round(site, run, 1, site_tree)
    again = _round(site, run, 1, site_tree)
    assert again.digest == first.digest
    assert len(trained) == 1
    history = PrivacyLedger(site.ledger_path, 8.0, run.delta).history()
    assert [(e.run_id, e.round) for e in history] == [("run-retry", 1)]
    # The run's σ is on the site's disk for the next task's process (verified before reuse).
    stored = [json.loads(p.read_text()) for p in (site.state_dir / "sigma").glob("*.json")]
    assert stored and all(entry["noise_multiplier"] > 0 for entry in stored)


def test_a_retry_on_another_global_model_is_refused_as_a_second_spend(
    site_tree: SiteTree, trained: list[tuple[str, ...]]
) -> None:
    site = site_tree.site("site-adult")
    run = run_config_for(site_tree.config, "run-replayed")
    _round(site, run, 1, site_tree)
    party = open_party(site)
    try:
        other = GlucoseTwin(run.twin)
        with torch.no_grad():
            next(other.parameters()).add_(1.0)
        at = calendar_for(site_tree.config).round_at(run, 1)
        with pytest.raises(BudgetExhausted, match="another global model"):
            train_round(party, run, 1, other, at)
    finally:
        party.close()
    assert len(trained) == 1


def test_a_site_below_its_minimum_cohort_refuses(
    site_tree: SiteTree, trained: list[tuple[str, ...]]
) -> None:
    site = site_tree.site("site-paediatric")
    policy = site.site_policy.read_text().replace(
        "min_eligible_patients_per_round = 5", "min_eligible_patients_per_round = 1000"
    )
    site.site_policy.write_text(policy)
    run = run_config_for(site_tree.config, "run-small")
    with pytest.raises(ConsentDenied, match="too-few-eligible-patients"):
        _round(site, run, 1, site_tree)
    assert trained == []
    decisions = [e for e in site_events(site) if e.type == "policy_decision"]
    assert decisions[-1].allowed is False


def test_an_unloadable_site_policy_means_no_training(
    site_tree: SiteTree, trained: list[tuple[str, ...]]
) -> None:
    site = site_tree.site("site-adolescent")
    site.site_policy.write_text(site.site_policy.read_text() + "\nsurprise = true\n")
    run = run_config_for(site_tree.config, "run-broken-policy")
    with pytest.raises(Exception, match="surprise"):
        _round(site, run, 1, site_tree)
    assert trained == []
    assert [e.type for e in site_events(site)] == ["error_raised"]


def test_nothing_the_site_logs_names_a_patient(
    site_tree: SiteTree, trained: list[tuple[str, ...]]
) -> None:
    site = site_tree.site("site-adult")
    run = run_config_for(site_tree.config, "run-privacy")
    _round(site, run, 1, site_tree)
    log_text = (site.audit_dir / f"{site.site_id}.audit.jsonl").read_text()
    patient_ids = {p.patient_id for p in load_site_data(site).train}
    assert patient_ids and not any(pid in log_text for pid in patient_ids)
    assert json.loads(log_text.splitlines()[0])["site_id"] == site.site_id
