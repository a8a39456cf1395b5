"""A real deployment on 127.0.0.1, driven with the ``fedtwin`` commands a new user runs.

One coordinator (Flower SuperLink, HTTPS, SuperNode authentication) and two enrolled sites run
a 2-round federated run; while it runs, three nodes that must be refused try to join: one
without TLS, one trusting another CA, one with a key the consortium never registered. Every
process is started in its own process group and stopped in the fixture's teardown, whatever
the tests did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedtwin.demo import DemoConfig, generate_sites
from fedtwin.deploy import Coordinator, SiteNode, load_coordinator_config, site_toml
from fedtwin.deploy.local import (
    LocalDeployment,
    back_to_back_rounds,
    build_local_deployment,
    free_port,
)
from fedtwin.pki import PkiLayout, init_consortium

pytestmark = pytest.mark.slow

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]
BIN = Path(sys.executable).parent
ROUNDS = 2


def _fedtwin(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*FEDTWIN, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _free_port() -> int:
    return free_port()


@dataclass
class Deployed:
    """The running deployment and what the tests need to reach it."""

    root: Path
    deployment: LocalDeployment
    coordinator_config: Path
    intruder_site: dict[str, object]
    run: subprocess.Popen[str]
    extra_configs: list[Path]

    @property
    def address(self) -> str:
        return self.deployment.coordinator.section.address

    def intruder_config(self, name: str, node: dict[str, object] | None) -> Path:
        """A site config for a node that must be refused (``[site]`` of a never-enrolled site)."""
        site = {**self.intruder_site, "state_dir": str(self.root / name / "state")}
        path = self.root / name / "site.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        if node is None:
            path.write_text(site_toml(site, {"superlink": self.address}).split("[node]")[0])
            return path
        path.write_text(site_toml(site, {"superlink": self.address, **node}))
        self.extra_configs.append(path)
        return path


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("deployment")
    config = DemoConfig(sites=3, patients_per_site=40, days=0.5, rounds=ROUNDS, seed=3)
    sites = generate_sites(config, root / "data")
    consortium = root / "data" / "consortium"
    back_to_back_rounds(consortium, [site.state_dir.parent for site in sites])
    documents = [site.model_dump(mode="json") for site in sites]
    deployment = build_local_deployment(root, documents[:2], consortium, ROUNDS, seed=3)
    coordinator_config = root / "server" / "coordinator.toml"
    run: subprocess.Popen[str] | None = None
    extra: list[Path] = []
    try:
        start = _fedtwin("coordinator", "start", "--config", str(coordinator_config))
        assert start.returncode == 0, start.stdout + start.stderr
        for path in deployment.site_configs:
            joined = _fedtwin("site", "start", "--config", str(path))
            assert joined.returncode == 0, joined.stdout + joined.stderr
            assert "joined" in joined.stdout
        run = subprocess.Popen(
            [*FEDTWIN, "coordinator", "run", "--config", str(coordinator_config), "--label", "r1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            start_new_session=True,
        )
        yield Deployed(root, deployment, coordinator_config, documents[2], run, extra)
    finally:
        if run is not None and run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        for path in [*deployment.site_configs, *extra]:
            SiteNode(path).stop()
        Coordinator(load_coordinator_config(coordinator_config)).stop()


def _nothing_trained(site_state: Path) -> bool:
    return (
        not (site_state / "privacy-ledger.sqlite").exists() and not (site_state / "audit").exists()
    )


def test_a_supernode_without_tls_never_joins(deployed: Deployed, tmp_path: Path) -> None:
    config = deployed.intruder_config("plaintext", None)
    node = subprocess.Popen(
        [
            str(BIN / "flower-supernode"),
            "--insecure",
            "--superlink",
            deployed.address,
            "--max-retries",
            "2",
            "--isolation",
            "process",
            "--port",
            str(_free_port()),
            "--node-config",
            f"site-config='{config}'",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "FLWR_HOME": str(tmp_path),
            "FLWR_TELEMETRY_ENABLED": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        start_new_session=True,
    )
    try:
        output, _ = node.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        output, _ = node.communicate()
    assert node.returncode != 0
    assert "Connection attempt failed" in output
    assert "SuperNode ID" not in output
    assert _nothing_trained(deployed.root / "plaintext" / "state")


def test_a_supernode_trusting_another_ca_is_refused(deployed: Deployed) -> None:
    other = PkiLayout(deployed.root / "other-pki")
    init_consortium(other.root, "Other")
    enrolled_key = PkiLayout(deployed.root / "pki").bundle("site-paediatric").supernode_key
    config = deployed.intruder_config(
        "wrong-ca",
        {
            "root_certificates": str(other.ca_cert),
            "supernode_key": str(enrolled_key),
            "runtime_port": _free_port(),
        },
    )
    started = _fedtwin("site", "start", "--config", str(config))
    assert started.returncode == 1
    assert "did not join: TLS: the coordinator's certificate does not verify" in started.stderr
    assert _nothing_trained(deployed.root / "wrong-ca" / "state")


def test_a_supernode_with_an_unregistered_key_is_refused_and_the_operator_sees_it(
    deployed: Deployed,
) -> None:
    keys = deployed.root / "unregistered-keys"
    assert _fedtwin("site", "keygen", "--site-id", "site-adult", "--out", str(keys)).returncode == 0
    config = deployed.intruder_config(
        "unregistered",
        {
            "root_certificates": str(PkiLayout(deployed.root / "pki").ca_cert),
            "supernode_key": str(keys / "supernode.key"),
            "runtime_port": _free_port(),
        },
    )
    started = _fedtwin("site", "start", "--config", str(config))
    status = _fedtwin("coordinator", "status", "--config", str(deployed.coordinator_config))
    assert started.returncode == 1
    assert "refused by the coordinator: this site's SuperNode key is not registered" in (
        started.stderr
    )
    assert status.returncode == 0
    assert "refused 1 join attempt(s): unregistered SuperNode key" in status.stdout
    assert _nothing_trained(deployed.root / "unregistered" / "state")


def test_two_authenticated_sites_complete_two_rounds_over_https(deployed: Deployed) -> None:
    stdout, stderr = deployed.run.communicate(timeout=600)
    assert deployed.run.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "finished:completed" in stdout
    out_dir = deployed.root / "runs" / "r1"
    card = json.loads((out_dir / "model_card.json").read_text())
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert card["contributors"] == ["site-adolescent", "site-paediatric"]
    trained = [sorted(round_["train"]) for round_ in metrics["rounds"]]
    assert trained == [["site-adolescent", "site-paediatric"]] * ROUNDS
    for path in deployed.deployment.site_configs:
        status = _fedtwin("site", "status", "--config", str(path))
        assert status.returncode == 0
        assert "ClientApp tasks run:" in status.stdout


def test_stopped_site_reports_stopped(deployed: Deployed) -> None:
    path = deployed.deployment.site_configs[0]
    stopped = _fedtwin("site", "stop", "--config", str(path))
    status = _fedtwin("site", "status", "--config", str(path))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert status.returncode == 1
    assert "its SuperNode is not running" in status.stderr
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and SiteNode(path).status().supernode.pid is not None:
        time.sleep(0.2)
    assert SiteNode(path).status().supernode.pid is None
