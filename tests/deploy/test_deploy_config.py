from __future__ import annotations

from pathlib import Path

import pytest

from fedtwin.deploy import load_coordinator_config, load_node_section
from fedtwin.deploy.config import split_address
from fedtwin.errors import ConfigError

COORDINATOR = """
[coordinator]
pki_dir = "pki"
state_dir = "/srv/state"
address = "coordinator.example.org:9443"
[run]
num_rounds = 2
"""

NODE = """
[site]
site_id = "site-a"
[node]
superlink = "[::1]:9443"
root_certificates = "bundle/ca.pem"
supernode_key = "bundle/supernode.key"
"""


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "server" / "coordinator.toml"
    path.parent.mkdir()
    path.write_text(COORDINATOR)
    config = load_coordinator_config(path)
    assert config.coordinator.pki_dir == path.parent / "pki"
    assert config.coordinator.state_dir == Path("/srv/state")
    assert config.coordinator.consortium_dir == path.parent / "pki" / "coordinator"
    assert config.run.runs_dir == path.parent / "runs"
    assert (config.coordinator.host, config.coordinator.port) == ("coordinator.example.org", 9443)


def test_an_unknown_key_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(COORDINATOR.replace("[run]", "insecure = true\n[run]"))
    with pytest.raises(ConfigError, match=r"coordinator\.toml: coordinator\.insecure: Extra"):
        load_coordinator_config(path)


def test_the_node_table_rejects_a_plaintext_switch(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(NODE + "insecure = true\n")
    with pytest.raises(ConfigError, match=r"node\.insecure: Extra inputs"):
        load_node_section(path)


def test_node_paths_resolve_next_to_the_site_config(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(NODE)
    node = load_node_section(path)
    assert node.root_certificates == tmp_path / "bundle" / "ca.pem"
    assert node.clientapp_executor == "warm"


def test_a_site_config_without_a_node_table_says_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[site]\nsite_id = 'a'\n")
    with pytest.raises(ConfigError, match=r"no \[node\] table"):
        load_node_section(path)


@pytest.mark.parametrize(
    ("address", "expected"),
    [("localhost:9443", ("localhost", 9443)), ("[::1]:80", ("::1", 80))],
)
def test_addresses_split_into_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["localhost", "https://x:1", "::1:80", "host:70000", "[zz]:1"])
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        split_address(address)


def test_the_shipped_role_templates_validate() -> None:
    root = Path(__file__).resolve().parents[2]
    coordinator = load_coordinator_config(root / "server" / "coordinator.toml")
    node = load_node_section(root / "client" / "site.toml")
    assert coordinator.coordinator.host == node.superlink.split(":")[0]
    assert node.clientapp_executor == "warm"


@pytest.mark.parametrize(("setting", "threads"), [("", "1"), ("training_threads = 4\n", "4")])
def test_node_processes_get_the_configured_training_threads(
    tmp_path: Path, setting: str, threads: str
) -> None:
    from fedtwin.deploy.site import SiteNode

    path = tmp_path / "site.toml"
    with_state = NODE.replace('site_id = "site-a"', 'site_id = "site-a"\nstate_dir = "s"')
    path.write_text(with_state + setting)
    env = SiteNode(path)._env()
    assert env["OMP_NUM_THREADS"] == threads
    assert env["MKL_NUM_THREADS"] == threads
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"


def test_training_threads_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(NODE + "training_threads = 0\n")
    with pytest.raises(ConfigError, match=r"node\.training_threads"):
        load_node_section(path)
