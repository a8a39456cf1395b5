"""SecAgg+ in Flower's simulation engine: the same round, with and without secure aggregation.

Two private copies of the same three sites run one round of the same run (same run id, so the
same seeds and the same DP noise at every site): once with plain FedAvg, once with SecAgg+.
The coordinator of the second never sees a site's update, yet its model must equal the plain
average up to SecAgg+'s quantisation; both sites' guard rails ran (ledgers, logs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from flwr.simulation import run_simulation
from safetensors.torch import load_file
from site_trees import SiteTree, relocated, site_events

from fedtwin.audit import load_verifier_key, verify_log
from fedtwin.demo import calendar_for, coordinator_setup, run_config_for
from fedtwin.federation import (
    CoordinatorOutcome,
    make_client_app,
    make_server_app,
    simulation_sites,
)
from fedtwin.privacy import PrivacyLedger

pytestmark = pytest.mark.slow


def _copy(pristine: SiteTree, root: Path) -> SiteTree:
    shutil.copytree(pristine.root, root)
    return SiteTree(
        root, pristine.config, tuple(relocated(s, pristine.root, root) for s in pristine.sites)
    )


def _run(tree: SiteTree, secure: bool) -> tuple[CoordinatorOutcome, Path]:
    config = tree.config.model_copy(update={"rounds": 1})
    run = run_config_for(config, "run-secagg").model_copy(update={"secure_aggregation": secure})
    outcome = CoordinatorOutcome()
    out_dir = tree.root / "out"
    run_simulation(
        server_app=make_server_app(
            run, coordinator_setup(tree.root, out_dir, "secagg test"), outcome=outcome
        ),
        client_app=make_client_app(
            simulation_sites(tree.sites), clock=calendar_for(tree.config).round_at
        ),
        num_supernodes=len(tree.sites),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return outcome, out_dir


def test_secagg_round_equals_the_plain_fedavg_round(
    pristine_sites: SiteTree, tmp_path: Path
) -> None:
    plain_tree = _copy(pristine_sites, tmp_path / "plain")
    secure_tree = _copy(pristine_sites, tmp_path / "secure")

    plain, plain_dir = _run(plain_tree, secure=False)
    secure, secure_dir = _run(secure_tree, secure=True)

    assert set(secure.collector.train[1]) == set(plain.collector.train[1])
    assert len(secure.collector.train[1]) == len(pristine_sites.sites)
    plain_model = load_file(str(plain_dir / "model.safetensors"))
    secure_model = load_file(str(secure_dir / "model.safetensors"))
    assert plain_model.keys() == secure_model.keys()
    for key, value in plain_model.items():
        # SecAgg+ quantises (examples / max_weight) x value, in [-8, 8], to 2^22 levels: with
        # ~30 examples per site and max_weight 1000, steps of ~1e-4 in the model (8e-5 seen).
        torch.testing.assert_close(secure_model[key], value, rtol=0, atol=5e-4)
    assert any(not torch.equal(secure_model[k], v) for k, v in plain_model.items())
    for plain_site, secure_site in zip(plain_tree.sites, secure_tree.sites, strict=True):
        spent = [
            [(e.run_id, e.round) for e in PrivacyLedger(s.ledger_path, 100.0, 1e-5).history()]
            for s in (plain_site, secure_site)
        ]
        assert spent[0] == spent[1] == [("run-secagg", 1)]
        assert "update_sent" in [e.type for e in site_events(secure_site)]
    log = verify_log(
        secure_dir / "audit" / "coordinator.audit.jsonl",
        load_verifier_key(secure_dir / "audit" / "keys" / "coordinator.vkey"),
    )
    types = [e.type for e in log.events]
    assert "update_received" not in types  # the coordinator never saw a site's update
    (aggregated,) = [e for e in log.events if e.type == "aggregated"]
    assert set(aggregated.contributors) == {s.site_id for s in secure_tree.sites}
