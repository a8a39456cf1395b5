"""The exact Flower command lines and environments of a deployment (pure functions).

Invariants kept by every builder here:

* the SuperLink always gets ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``,
  ``--enable-supernode-auth``, a persistent ``--database`` and
  ``--disable-runtime-dependency-installation``; no builder can produce ``--insecure``;
* a SuperNode always gets ``--root-certificates`` and ``--auth-supernode-private-key``, and
  finds its site through ``--node-config "site-config='<absolute path>'"`` (its runtime
  dependency installation is off by default in 1.42: there is only an ``--allow`` flag);
* every process runs with ``FLWR_HOME`` inside a fedtwin state folder (never the user's home),
  telemetry and the update check off and runtime dependency installation off (both the
  environment variable and the flag), and the executables of the interpreter running fedtwin
  first on ``PATH`` (Flower spawns ``flower-superexec``/``flwr-clientapp`` by name).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from fedtwin.deploy.config import CoordinatorSection, NodeSection
from fedtwin.pki import PkiLayout

TASK_POLL_INTERVAL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
"""Flower 1.42's SuperExec task polling interval (seconds; default 1.0)."""
CONNECTION_NAME = "fedtwin"
"""Name of the SuperLink connection in the coordinator's Flower config."""


def flower_bin() -> Path:
    """The folder of Flower's executables: next to the running interpreter."""
    return Path(sys.executable).parent


def flower_environment(
    flwr_home: Path, task_poll_interval_s: float, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of every Flower process fedtwin starts (see module docstring)."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            TASK_POLL_INTERVAL_ENV: f"{task_poll_interval_s:g}",
            "PATH": f"{flower_bin()}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def superlink_command(section: CoordinatorSection, pki: PkiLayout, database: Path) -> list[str]:
    """``flower-superlink`` serving HTTPS with SuperNode authentication."""
    return [
        str(flower_bin() / "flower-superlink"),
        "--ssl-ca-certfile",
        str(pki.ca_cert),
        "--ssl-certfile",
        str(pki.tls_cert),
        "--ssl-keyfile",
        str(pki.tls_key),
        "--host",
        section.listen_host,
        "--port",
        str(section.port),
        "--database",
        str(database),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
    ]


def node_config_argument(site_config: Path) -> str:
    """The ``--node-config`` value naming the site's config file (TOML string, quoted)."""
    path = str(site_config.resolve())
    if "'" in path or "\n" in path:
        raise ValueError(f"site config path {path!r} cannot hold a quote or a newline")
    return f"site-config='{path}'"


def supernode_command(node: NodeSection, site_config: Path) -> list[str]:
    """``flower-supernode`` over HTTPS with its authentication key (through the launcher).

    With the warm executor, ``--isolation process``: the SuperNode starts no ClientApp process
    itself and fedtwin's long-lived executor takes its tasks (:mod:`.warm_executor`).
    """
    isolation = "process" if node.clientapp_executor == "warm" else "subprocess"
    return [
        sys.executable,
        "-m",
        "fedtwin.deploy.supernode_launcher",  # Flower's SuperNode, prompt polls (flower_tuning)
        "--fleet-poll-interval",
        f"{node.fleet_poll_interval_s:g}",
        "--",
        "--superlink",
        node.superlink,
        "--root-certificates",
        str(node.root_certificates),
        "--auth-supernode-private-key",
        str(node.supernode_key),
        "--host",
        "127.0.0.1",
        "--port",
        str(node.runtime_port),
        "--isolation",
        isolation,
        "--node-config",
        node_config_argument(site_config),
    ]


def warm_executor_command(node: NodeSection, site_config: Path) -> list[str]:
    """The warm ClientApp executor (fedtwin's) attached to the SuperNode's local Runtime API.

    It reads the site's policy (``approved_app_hashes``) through ``site_config`` for each task.
    """
    return [
        sys.executable,
        "-m",
        "fedtwin.deploy.warm_executor",
        "--runtime-api-address",
        f"127.0.0.1:{node.runtime_port}",
        "--poll-interval",
        f"{node.task_poll_interval_s:g}",
        "--site-config",
        str(site_config.resolve()),
    ]


def connection_toml(address: str, root_certificates: Path) -> str:
    """``$FLWR_HOME/config.toml`` with one TLS connection named :data:`CONNECTION_NAME`."""
    ca = str(root_certificates.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f'[superlink.{CONNECTION_NAME}]\naddress = "{address}"\nroot-certificates = "{ca}"\n'
    )
