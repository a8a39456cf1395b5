"""A real in-process Flower simulation: the demo's 3 sites x 2 rounds, end to end.

Sites read FHIR exports, filter by consent at each round's time, train with patient-level DP
and keep signed logs; the coordinator validates, aggregates, logs and collects cosignatures.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedtwin.audit import audit_run, load_verifier_key, verify_log
from fedtwin.demo import DemoResult
from fedtwin.federation import RunConfig
from fedtwin.federation.server import initial_model
from fedtwin.federation.sitedata import load_site_data
from fedtwin.privacy import AccountantKind, PrivacyLedger, epsilon_spent

pytestmark = pytest.mark.slow


def _run_config(demo_run: DemoResult) -> RunConfig:
    return RunConfig.model_validate(json.loads((demo_run.run_dir / "run_config.json").read_text()))


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
    initial = initial_model(_run_config(demo_run)).state_dict()
    assert final.keys() == initial.keys()
    assert any(not torch.equal(final[k], initial[k]) for k in final)


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
    assert (run_dir / "report.html").is_file()


def test_each_site_ledger_holds_its_spends_and_the_reported_epsilon(demo_run: DemoResult) -> None:
    run = _run_config(demo_run)
    for site in demo_run.sites:
        ledger = PrivacyLedger(site.ledger_path, run.epsilon, run.delta)
        history = ledger.history()
        assert [(e.run_id, e.round) for e in history] == [("test-run", 1), ("test-run", 2)]
        assert all(e.noise_multiplier > 0 and e.steps == 5 for e in history)
        reported = demo_run.collector.train[2][site.site_id]["epsilon"]
        fresh = epsilon_spent([e.as_mechanism() for e in history], run.delta, AccountantKind.PRV)
        assert reported == pytest.approx(fresh)
        assert 0 < demo_run.collector.train[1][site.site_id]["epsilon"] < reported <= run.epsilon


def test_every_party_log_verifies_and_the_coordinator_log_is_cosigned(
    demo_run: DemoResult,
) -> None:
    audit = audit_run(demo_run.run_dir)
    assert {log.party for log in audit.logs} == {"coordinator"} | {
        s.site_id for s in demo_run.sites
    }
    assert all(log.verdict == "intact" for log in audit.logs), [s.summary() for s in audit.logs]
    coordinator = next(log for log in audit.logs if log.party == "coordinator")
    assert coordinator.report is not None
    assert set(coordinator.report.cosigned) == {s.site_id for s in demo_run.sites}
    types = [e.type for e in coordinator.report.events]
    assert types[0] == "run_started"
    assert types.count("aggregated") == 2 and "model_exported" in types


def test_the_updates_the_sites_sent_are_the_updates_the_coordinator_received(
    demo_run: DemoResult,
) -> None:
    audit_dir = demo_run.run_dir / "audit"
    coordinator = verify_log(
        audit_dir / "coordinator.audit.jsonl",
        load_verifier_key(audit_dir / "keys" / "coordinator.vkey"),
    )
    received = {
        (e.site_id, e.round): e.sha256 for e in coordinator.events if e.type == "update_received"
    }
    for site in demo_run.sites:
        log = verify_log(
            audit_dir / f"{site.site_id}.audit.jsonl",
            load_verifier_key(audit_dir / "keys" / f"{site.site_id}.vkey"),
        )
        sent = {(e.site_id, e.round): e.sha256 for e in log.events if e.type == "update_sent"}
        assert sent and all(received[key] == digest for key, digest in sent.items())


def test_sites_split_their_patients_by_keyed_hash_and_train_only_on_their_own(
    demo_run: DemoResult,
) -> None:
    for site in demo_run.sites:
        data = load_site_data(site)
        train, heldout = {p.patient_id for p in data.train}, {p.patient_id for p in data.heldout}
        assert not train & heldout and len(train) + len(heldout) == 60
        assert all(p.startswith(site.site_id) for p in train | heldout)
        assert 0 < len(heldout) < 30


def test_nothing_patient_identifying_leaves_a_site(demo_run: DemoResult) -> None:
    shared = [demo_run.run_dir / name for name in ("model_card.json", "metrics.json")]
    shared += sorted((demo_run.run_dir / "audit").glob("*.jsonl"))
    text = "\n".join(Path(p).read_text() for p in shared)
    for site in demo_run.sites:
        for patient in load_site_data(site).train[:10]:
            assert patient.patient_id not in text


def test_model_card_carries_calibration_fitted_from_the_sites_histograms(
    demo_run: DemoResult,
) -> None:
    card = json.loads((demo_run.run_dir / "model_card.json").read_text())
    check = card["calibration_check"]
    assert check["round"] == 2
    assert check["sites"] == sorted(s.site_id for s in demo_run.sites)
    horizon = card["architecture"]["horizon_steps"]
    if card["calibration"] is None:  # small sites: too few windows is said, not guessed
        assert check["status"].startswith("not calibrated")
        return
    scales = card["calibration"]["std_scale"]
    assert len(scales) == horizon and all(s > 0 for s in scales)
    assert check["status"] == "calibrated"
    assert len(check["coverage_calibrated_per_step"]) == horizon
    # The model loads with its calibration through the clinician-facing runtime.
    from fedtwin.twins.runfile import load_twin_run

    assert load_twin_run(demo_run.run_dir).calibration is not None


def test_run_keeps_the_twin_s_held_out_evaluation_beside_the_model_and_in_the_report(
    demo_run: DemoResult,
) -> None:
    document = json.loads((demo_run.run_dir / "evaluation.json").read_text())
    text = json.dumps(document)
    for forecaster in ("twin", "persistence", "linear AR"):
        assert f'"{forecaster}"' in text
    report = (demo_run.run_dir / "report.html").read_text()
    assert "Forecast quality on held-out patients" in report
    assert "Clarke" in report
