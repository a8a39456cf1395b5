import json
from pathlib import Path

import pytest

from fedtwin.errors import ConfigError
from fedtwin.federation import (
    RunConfig,
    load_site_config,
    load_sites_manifest,
    write_sites_manifest,
)
from fedtwin.federation.config import SiteConfig


def test_run_config_roundtrips_through_its_wire_form() -> None:
    config = RunConfig(num_rounds=4, seed=9)
    assert RunConfig.from_json(config.to_json()) == config


def test_run_config_carries_the_policy_claims_and_its_hash() -> None:
    from fedtwin.consent import load_consortium_policy, policy_hash

    policy = load_consortium_policy(REPO / "policies" / "consortium.toml")
    run = RunConfig.for_policy(policy, run_id="r1", num_rounds=2)
    assert run.consortium_policy_hash == policy_hash(policy)
    assert (run.study_id, run.purpose, run.delta) == (policy.study_id, policy.purpose, policy.delta)
    request = run.run_request()
    assert request.actors == policy.actors and request.epsilon == policy.max_epsilon_per_patient
    assert run.config_hash != RunConfig.for_policy(policy, run_id="r2").config_hash


def test_unknown_run_config_key_is_a_one_line_error() -> None:
    document = json.loads(RunConfig().to_json())
    document["dp"]["noise_free"] = True
    with pytest.raises(ConfigError, match=r"^run config: dp\.noise_free: Extra inputs"):
        RunConfig.from_json(json.dumps(document))


def _site_fields(site_id: str) -> str:
    return (
        f'site_id = "{site_id}"\ndata_dir = "d"\nstate_dir = "s"\nsite_policy = "p.toml"\n'
        'consortium_policy = "c.toml"\naudit_key = "k.pem"\ncoordinator_audit_key = "c.vkey"\n'
    )


def test_site_config_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[site]\n" + _site_fields("Bad Id"))
    with pytest.raises(ConfigError, match=r"site\.toml: site_id: String should match"):
        load_site_config(path)
    path.write_text("[site\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_site_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_site_config(tmp_path / "missing.toml")


def test_sites_manifest_is_relative_and_movable(tmp_path: Path) -> None:
    root = tmp_path / "a" / "sites"
    x = root / "site-x"
    site = SiteConfig(
        site_id="site-x",
        data_dir=x / "data",
        state_dir=x / "s",
        site_policy=x / "p.toml",
        consortium_policy=x / "c.toml",
        audit_key=x / "k.pem",
        coordinator_audit_key=x / "c.vkey",
    )
    root.mkdir(parents=True)
    write_sites_manifest(root, [site])
    assert "/a/" not in (root / "sites.json").read_text()
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    [loaded] = load_sites_manifest(moved / "sites" / "sites.json")
    new = (moved / "sites" / "site-x").resolve()
    assert loaded.data_dir == new / "data" and loaded.audit_key == new / "k.pem"
    assert loaded.coordinator_audit_key == new / "c.vkey"


REPO = Path(__file__).resolve().parents[2]


def test_site_config_template_is_valid() -> None:
    site = load_site_config(REPO / "client" / "site.toml")
    assert site.site_id == "site-example"
    assert site.ledger_path.name == "privacy-ledger.sqlite"


def test_deployable_entries_are_flower_apps_from_the_library() -> None:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from client.app import app as client_app
    from server.app import app as server_app

    assert isinstance(server_app, ServerApp)
    assert isinstance(client_app, ClientApp)
    for entry in ("server/app.py", "client/app.py"):
        assert len((REPO / entry).read_text().splitlines()) < 15, f"{entry} must stay thin"
