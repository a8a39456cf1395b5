from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from fedtwin.deploy import CoordinatorSection, NodeSection
from fedtwin.deploy.commands import (
    flower_environment,
    node_config_argument,
    superlink_command,
    supernode_command,
)
from fedtwin.deploy.flwr_cli import run_config_toml
from fedtwin.pki import PkiLayout


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_superlink_serves_tls_with_supernode_auth_and_no_dependency_installs() -> None:
    section = CoordinatorSection(
        pki_dir=Path("/p"), state_dir=Path("/s"), address="coord.example.org:9443"
    )
    argv = superlink_command(section, PkiLayout(Path("/p")), Path("/s/state.db"))
    assert Path(argv[0]).name == "flower-superlink"
    assert _flag(argv, "--ssl-ca-certfile") == "/p/ca/ca.pem"
    assert _flag(argv, "--ssl-certfile") == "/p/coordinator/tls.pem"
    assert _flag(argv, "--ssl-keyfile") == "/p/coordinator/tls.key"
    assert _flag(argv, "--database") == "/s/state.db"
    assert (_flag(argv, "--host"), _flag(argv, "--port")) == ("0.0.0.0", "9443")
    assert "--enable-supernode-auth" in argv
    assert "--disable-runtime-dependency-installation" in argv
    assert "--insecure" not in argv


def test_supernode_verifies_the_ca_and_authenticates_and_names_its_site(tmp_path: Path) -> None:
    node = NodeSection(
        superlink="coord.example.org:9443",
        root_certificates=Path("/b/ca.pem"),
        supernode_key=Path("/b/supernode.key"),
        runtime_port=9200,
        fleet_poll_interval_s=0.25,
    )
    argv = supernode_command(node, tmp_path / "site.toml")
    # Flower's SuperNode through fedtwin's launcher (prompt polls), Flower's flags after "--".
    split = argv.index("--")
    assert argv[1:3] == ["-m", "fedtwin.deploy.supernode_launcher"]
    assert argv[split - 2 : split] == ["--fleet-poll-interval", "0.25"]
    assert argv[split + 1 : split + 3] == ["--superlink", "coord.example.org:9443"]
    assert _flag(argv, "--root-certificates") == "/b/ca.pem"
    assert _flag(argv, "--auth-supernode-private-key") == "/b/supernode.key"
    assert _flag(argv, "--isolation") == "process"
    assert (_flag(argv, "--host"), _flag(argv, "--port")) == ("127.0.0.1", "9200")
    assert "--insecure" not in argv
    node_config = parse_config_args([_flag(argv, "--node-config")])
    assert node_config == {"site-config": str((tmp_path / "site.toml").resolve())}


def test_flower_subprocess_isolation_when_the_warm_executor_is_off() -> None:
    node = NodeSection(
        superlink="h:1",
        root_certificates=Path("/ca"),
        supernode_key=Path("/k"),
        clientapp_executor="subprocess",
    )
    assert _flag(supernode_command(node, Path("/s.toml")), "--isolation") == "subprocess"


def test_environment_keeps_flower_home_private_and_telemetry_off(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "HOME": "/home/user", "FLWR_TELEMETRY_ENABLED": "1"}
    env = flower_environment(tmp_path / "home", 0.1, base)
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.1"
    assert env["PATH"].endswith("/usr/bin")


def test_a_site_config_path_with_a_quote_cannot_reach_the_node_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quote"):
        node_config_argument(tmp_path / "it's" / "site.toml")


def test_run_config_file_is_read_back_by_flower_unchanged(tmp_path: Path) -> None:
    overrides: dict[str, str | int | float | bool] = {
        "num-server-rounds": 2,
        "delta": 1e-5,
        "out-dir": str(tmp_path / "runs" / 'a "quoted" name'),
        "run-id": "run-1",
    }
    path = tmp_path / "run-config.toml"
    path.write_text(run_config_toml(overrides))
    assert parse_config_args([str(path)]) == overrides
