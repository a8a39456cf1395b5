"""A site whose privacy budget is spent refuses; the coordinator goes on without it.

Both sides record it: the site logs the refused budget check, the coordinator logs the site's
refusal, and no update of that site reaches the model.
"""

import json

import pytest
from flwr.simulation import run_simulation
from site_trees import SiteTree, site_events

from fedtwin.audit import load_verifier_key, verify_log
from fedtwin.demo import calendar_for, coordinator_setup, run_config_for
from fedtwin.federation import (
    CoordinatorOutcome,
    make_client_app,
    make_server_app,
    simulation_sites,
)
from fedtwin.privacy import PrivacyLedger, SpendEvent

pytestmark = pytest.mark.slow


def test_exhausted_site_refuses_and_others_still_train(site_tree: SiteTree) -> None:
    sites = site_tree.sites
    exhausted = sites[1]
    run = run_config_for(site_tree.config.model_copy(update={"rounds": 1}), "run-refusal")
    ledger = PrivacyLedger(exhausted.ledger_path, run.epsilon, run.delta, site_id=exhausted.site_id)
    ledger.commit(
        SpendEvent(
            run_id="earlier-run",
            round=1,
            study="earlier-study",
            noise_multiplier=0.8,
            sample_rate=0.1,
            steps=300,
            max_grad_norm=1.0,
        )
    )
    spent_before = ledger.epsilon()
    assert spent_before > run.epsilon
    outcome = CoordinatorOutcome()
    out_dir = site_tree.root / "out"

    run_simulation(
        server_app=make_server_app(
            run, coordinator_setup(site_tree.root, out_dir, "refusal test"), outcome=outcome
        ),
        client_app=make_client_app(
            simulation_sites(sites), clock=calendar_for(site_tree.config).round_at
        ),
        num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )

    contributors = set(outcome.collector.train[1])
    assert contributors == {sites[0].site_id, sites[2].site_id}
    assert [e.run_id for e in ledger.history()] == ["earlier-run"]
    assert ledger.epsilon() == spent_before
    card = json.loads((out_dir / "model_card.json").read_text())
    assert exhausted.site_id not in card["contributors"]
    site_types = [e.type for e in site_events(exhausted)]
    assert "budget_refused" in site_types and "update_sent" not in site_types
    coordinator = verify_log(
        out_dir / "audit" / "coordinator.audit.jsonl",
        load_verifier_key(out_dir / "audit" / "keys" / "coordinator.vkey"),
    )
    refusals = [e for e in coordinator.events if e.type == "site_refused"]
    assert [r.reason_code for r in refusals] == ["budget-exhausted"]
    assert exhausted.site_id in refusals[0].reason
    aggregated = [e for e in coordinator.events if e.type == "aggregated"]
    assert exhausted.site_id not in aggregated[0].contributors
