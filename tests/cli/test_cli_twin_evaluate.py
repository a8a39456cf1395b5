"""``fedtwin twin evaluate RUN_DIR`` as a user runs it: a real subprocess on a demo-layout run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedtwin.demo import DemoConfig, calendar_for, generate_sites, run_config_for
from fedtwin.federation import RoundCollector, write_sites_manifest
from fedtwin.federation.outputs import model_card, write_json, write_model
from fedtwin.federation.sitedata import load_site_data
from fedtwin.twins import GlucoseTwin
from fedtwin.twins.evaluation import reported_horizons

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*FEDTWIN, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's run layout (3 sites' FHIR exports, keys, policies) with an untrained twin."""
    root = tmp_path_factory.mktemp("runs") / "run-eval"
    config = DemoConfig(rounds=1, sites=3, patients_per_site=40, days=1.0, seed=5, out=root.parent)
    sites = generate_sites(config, root)
    write_sites_manifest(root / "sites", sites)
    run = run_config_for(config, "run-eval")
    write_json(root / "run_config.json", run.model_dump(mode="json"))
    torch.manual_seed(0)
    version = write_model(root, GlucoseTwin(run.twin).state_dict(), run)
    write_json(root / "model_card.json", model_card(run, version, RoundCollector(), "test"))
    at = calendar_for(config).round_at(run, 1)
    for site in sites:
        times = {run.run_id: {"1": at.isoformat()}}
        (site.state_dir / "round-times.json").write_text(json.dumps(times))
    return root


@pytest.mark.slow
def test_evaluate_scores_twin_and_baselines_on_each_sites_heldout_patients(
    run_dir: Path,
) -> None:
    result = _run("twin", "evaluate", str(run_dir), "--json", cwd=run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert document["forecasters"] == ["twin", "linear AR", "persistence"]
    horizon_steps = json.loads((run_dir / "run_config.json").read_text())["twin"]["horizon_steps"]
    assert document["horizons_min"] == list(reported_horizons(horizon_steps))
    rows = {(r["forecaster"], r["kind"], r["group"]): r for r in document["groups"]}
    manifest = json.loads((run_dir / "sites" / "sites.json").read_text())
    site_ids = [site["site_id"] for site in manifest]
    for name in document["forecasters"]:
        per_site = [rows[(name, "site", site_id)]["patients"] for site_id in site_ids]
        assert rows[(name, "overall", "all")]["patients"] == sum(per_site)
    from fedtwin.federation import load_sites_manifest

    for site in load_sites_manifest(run_dir / "sites" / "sites.json"):
        heldout = len(load_site_data(site).heldout)
        assert 0 < rows[("twin", "site", site.site_id)]["patients"] <= heldout
    ar, persistence = rows[("linear AR", "overall", "all")], rows[("persistence", "overall", "all")]
    assert ar["horizons"][0]["rmse_mg_dl"] < persistence["horizons"][0]["rmse_mg_dl"]


def test_a_folder_that_is_not_a_run_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run("twin", "evaluate", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fedtwin: error: {tmp_path}: not a fedtwin run directory (no model_card.json)"
    ]
    assert result.stdout == ""


def test_a_run_of_another_twin_kind_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "model_card.json").write_text(json.dumps({"model_kind": "oncology-twin"}))
    result = _run("twin", "evaluate", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("fedtwin: error: ") and "'oncology-twin'" in line
    assert "Traceback" not in result.stderr
