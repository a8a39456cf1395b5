"""A real in-process Flower simulation: 3 sites x 2 rounds with patient-level DP."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from fedtwin.demo import DemoConfig, DemoResult, run_demo
from fedtwin.federation.server import initial_model
from fedtwin.privacy import AccountantKind, PrivacyLedger, epsilon_spent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    out = tmp_path_factory.mktemp("runs")
    config = DemoConfig(
        rounds=2,
        sites=3,
        patients_per_site=60,
        days=0.5,
        local_steps=5,
        batch_patients=16,
        seed=3,
        out=out,
    )
    return run_demo(config, run_id="test-run")


def test_every_site_contributes_to_every_round(demo_run: DemoResult) -> None:
    sites = {s.site_id for s in demo_run.sites}
    assert sites == {"site-paediatric", "site-adolescent", "site-adult"}
    assert set(demo_run.collector.train) == {1, 2}
    for per_site in demo_run.collector.train.values():
        assert set(per_site) == sites
    for per_site in demo_run.collector.evaluate.values():
        assert set(per_site) == sites


def test_global_model_changed_from_its_initial_state(demo_run: DemoResult) -> None:
    final = load_file(str(demo_run.run_dir / "model.safetensors"))
    initial = initial_model(json_run_config(demo_run)).state_dict()
    assert final.keys() == initial.keys()
    assert any(not torch.equal(final[k], initial[k]) for k in final)


def json_run_config(demo_run: DemoResult):
    from fedtwin.federation import RunConfig

    return RunConfig.model_validate(json.loads((demo_run.run_dir / "run_config.json").read_text()))


def test_run_directory_has_consistent_outputs(demo_run: DemoResult) -> None:
    run_dir = demo_run.run_dir
    assert run_dir.name == "test-run"
    assert not list(run_dir.parent.glob(".*partial"))
    card = json.loads((run_dir / "model_card.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    digest = hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()
    assert card["version_hash"] == f"sha256:{digest}" == demo_run.version_hash
    assert card["contributors"] == sorted(s.site_id for s in demo_run.sites)
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    last = metrics["rounds"][-1]
    for site in card["contributors"]:
        assert card["privacy"]["epsilon_per_site"][site] == last["train"][site]["epsilon"]
        for key in ("rmse_30", "mae_30", "rmse_60", "mae_60", "persistence_rmse_30"):
            assert last["evaluate"][site][key] > 0
    assert card["metrics"]["per_site"] == last["evaluate"]


def test_each_site_ledger_holds_its_spends_and_the_reported_epsilon(demo_run: DemoResult) -> None:
    for site in demo_run.sites:
        ledger = PrivacyLedger(site.ledger_path, site.epsilon_cap, site.delta)
        history = ledger.history()
        assert [e.round for e in history] == [1, 2]
        assert all(e.noise_multiplier > 0 and e.steps == 5 for e in history)
        reported = demo_run.collector.train[2][site.site_id]["epsilon"]
        fresh = epsilon_spent([e.as_mechanism() for e in history], site.delta, AccountantKind.PRV)
        assert reported == pytest.approx(fresh)
        assert 0 < demo_run.collector.train[1][site.site_id]["epsilon"] < reported <= 8.0


def test_sites_keep_their_patients_apart(demo_run: DemoResult) -> None:
    from fedtwin.cohorts import CohortSeries

    for site in demo_run.sites:
        train = CohortSeries.load(site.data_dir / "train.safetensors")
        heldout = CohortSeries.load(site.data_dir / "heldout.safetensors")
        assert len(train.patient_names) + len(heldout.patient_names) == 60
        assert len(heldout.patient_names) == 12
