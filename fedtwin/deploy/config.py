"""Deployment settings: ``server/coordinator.toml`` and the ``[node]`` table of a site.toml.

Invariants:

* both files are closed schemas (unknown keys are errors) and every problem is one
  :class:`~fedtwin.errors.ConfigError` line naming the file and the field;
* relative paths are relative to the folder of the file that names them (the SuperNode also
  runs in that folder, so the ``[site]`` table's relative paths mean the same thing);
* there is no switch for plaintext: the SuperLink always serves HTTPS and always requires
  SuperNode authentication, and a node always verifies the coordinator against a CA file.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedtwin.errors import ConfigError

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")

Port = int


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → ``(host, port)``; raise on anything else."""
    match = _HOST_PORT.fullmatch(address.strip())
    if match is None:
        raise ValueError(f"{address!r} is not host:port (use [addr]:port for IPv6)")
    host = match["host"].strip("[]")
    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    if match["host"].startswith("["):
        ipaddress.IPv6Address(host)
    return host, port


def _check_address(value: str) -> str:
    split_address(value)
    return value


class CoordinatorSection(BaseModel):
    """Where the coordinator's SuperLink listens and keeps its state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pki_dir: Path = Field(description="the folder written by `fedtwin pki init`")
    state_dir: Path = Field(description="SuperLink database, logs, pid files, Flower's home")
    address: str = Field(description="host:port the sites and `flwr` use (in the TLS SANs)")
    listen_host: str = Field("0.0.0.0", description="interface the SuperLink binds")
    consortium_dir: Path | None = Field(
        None,
        description="the ServerApp's consortium folder (policy, audit key, site keys); "
        "default: <pki_dir>/coordinator",
    )
    task_poll_interval_s: float = Field(0.1, ge=0.01, le=60)
    start_timeout_s: float = Field(60.0, gt=0, le=600)

    _address = field_validator("address")(_check_address)

    @property
    def port(self) -> int:
        """The SuperLink's port (from ``address``)."""
        return split_address(self.address)[1]

    @property
    def host(self) -> str:
        """The host name the sites use (from ``address``; must be in the TLS SANs)."""
        return split_address(self.address)[0]


class RunSection(BaseModel):
    """What ``fedtwin coordinator run`` submits (the ServerApp's ``run_config``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project_dir: Path = Field(Path("."), description="Flower app: pyproject.toml + entries")
    runs_dir: Path = Field(Path("runs"), description="each run writes runs_dir/<run-id>/")
    num_rounds: int = Field(5, ge=1, le=1000)
    min_sites: int = Field(3, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    round_timeout_s: float = Field(
        600.0, gt=0, description="a site that has not replied by then is left out of the round"
    )
    timeout_s: float = Field(6 * 3600.0, gt=0, description="give up waiting after this")


class CoordinatorConfig(BaseModel):
    """``server/coordinator.toml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coordinator: CoordinatorSection
    run: RunSection = RunSection()


ClientAppExecutor = Literal["warm", "subprocess"]


class NodeSection(BaseModel):
    """The ``[node]`` table of a site's ``site.toml``: how its SuperNode reaches the coordinator."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    superlink: str = Field(description="the coordinator's host:port")
    root_certificates: Path = Field(description="the consortium CA (ca.pem of the bundle)")
    supernode_key: Path = Field(description="the SuperNode private key (supernode.key, 0600)")
    runtime_port: int = Field(9094, ge=1024, le=65535, description="local Runtime API port")
    clientapp_executor: ClientAppExecutor = Field(
        "warm", description="warm: one long-lived process imports torch once; subprocess: Flower"
    )
    enforce_app_approval: bool = Field(
        True,
        description="false only with the subprocess executor, for benchmarks: Flower's own "
        "executor installs and imports the app before any site code could check its hash",
    )
    task_poll_interval_s: float = Field(0.1, ge=0.01, le=60)
    fleet_poll_interval_s: float = Field(
        0.5,
        ge=0.05,
        le=3.0,
        description="how often an idle SuperNode asks the coordinator for work (Flower: 3 s, "
        "i.e. 1.5 s of waiting per message on average)",
    )
    connect_timeout_s: float = Field(90.0, gt=0, le=3600)
    training_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch/OpenMP threads of each ClientApp task (OMP_NUM_THREADS of the node's "
        "processes); 1 unless the node has the cores to itself: OpenMP threads spin while they "
        "wait, and three nodes on two cores trained 6x slower with the library default",
    )
    node_state_dir: Path | None = Field(
        None, description="pid files, logs, Flower's home (default: <site.state_dir>/supernode)"
    )

    _superlink = field_validator("superlink")(_check_address)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; any problem is one :class:`ConfigError` line naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read {what} ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML ({error})") from error


def _one_line(path: Path, prefix: str, error: ValidationError) -> ConfigError:
    first = error.errors()[0]
    field = ".".join([prefix, *(str(part) for part in first["loc"])]).strip(".") or "value"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return ConfigError(f"{path}: {field}: {first['msg']}{more}")


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def load_coordinator_config(path: Path) -> CoordinatorConfig:
    """Read ``coordinator.toml``; relative paths become relative to its folder."""
    document = read_toml(path, "coordinator config")
    try:
        config = CoordinatorConfig.model_validate(document)
    except ValidationError as error:
        raise _one_line(path, "", error) from error
    base = path.resolve().parent
    section, run = config.coordinator, config.run
    return config.model_copy(
        update={
            "coordinator": section.model_copy(
                update={
                    "pki_dir": _resolve(base, section.pki_dir),
                    "state_dir": _resolve(base, section.state_dir),
                    "consortium_dir": _resolve(
                        base, section.consortium_dir or section.pki_dir / "coordinator"
                    ),
                }
            ),
            "run": run.model_copy(
                update={
                    "project_dir": _resolve(base, run.project_dir),
                    "runs_dir": _resolve(base, run.runs_dir),
                }
            ),
        }
    )


def load_node_section(path: Path) -> NodeSection:
    """Read the ``[node]`` table of a site config; relative paths become relative to its folder."""
    document = read_toml(path, "site config")
    if "node" not in document:
        raise ConfigError(f"{path}: no [node] table (see client/site.toml for its keys)")
    try:
        node = NodeSection.model_validate(document["node"])
    except ValidationError as error:
        raise _one_line(path, "node", error) from error
    base = path.resolve().parent
    return node.model_copy(
        update={
            "root_certificates": _resolve(base, node.root_certificates),
            "supernode_key": _resolve(base, node.supernode_key),
            "node_state_dir": (
                None if node.node_state_dir is None else _resolve(base, node.node_state_dir)
            ),
        }
    )
