"""A site whose privacy budget is spent refuses; the coordinator goes on without it."""

import json
from pathlib import Path

import pytest
from flwr.simulation import run_simulation

from fedtwin.demo import DemoConfig, generate_sites, run_config_for
from fedtwin.federation import (
    CoordinatorOutcome,
    make_client_app,
    make_server_app,
    simulation_sites,
)
from fedtwin.privacy import PrivacyLedger, SpendEvent

pytestmark = pytest.mark.slow


def test_exhausted_site_refuses_and_others_still_train(tmp_path: Path) -> None:
    config = DemoConfig(
        sites=3, patients_per_site=30, days=0.5, rounds=1, local_steps=3, batch_patients=8
    )
    sites = generate_sites(config, tmp_path / "sites")
    exhausted = sites[1]
    ledger = PrivacyLedger(exhausted.ledger_path, exhausted.epsilon_cap, exhausted.delta)
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
    assert spent_before > exhausted.epsilon_cap
    outcome = CoordinatorOutcome()
    run = run_config_for(config).model_copy(update={"min_sites": 3})

    run_simulation(
        server_app=make_server_app(run, out_dir=tmp_path / "out", outcome=outcome),
        client_app=make_client_app(simulation_sites(sites)),
        num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )

    contributors = set(outcome.collector.train[1])
    assert contributors == {sites[0].site_id, sites[2].site_id}
    assert [e.run_id for e in ledger.history()] == ["earlier-run"]
    assert ledger.epsilon() == spent_before
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert exhausted.site_id not in card["contributors"]
