"""The consortium's coordinator: a Flower SuperLink over HTTPS with SuperNode authentication.

``start`` checks the PKI (1)–(4) and refuses to start on any failure, then (5) starts
``flower-superlink`` detached, (6) waits until it completes a TLS handshake that verifies
against the consortium CA under the advertised name, and (7) registers every enrolled site's
SuperNode public key (idempotent). ``run`` copies the Flower app, submits it with the
consortium's run config and follows it to the end; its outcome is the run status the
SuperLink reports, never an exit code.

Pre-start checks, each fail-closed: (1) the PKI folder is a fedtwin consortium; (2) the TLS key
is ``0600``; (3) the TLS certificate chains to the CA, is valid now and names the advertised
host; (4) no certificate has expired (fewer than 30 days left is a warning).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedtwin.deploy.commands import connection_toml, flower_environment, superlink_command
from fedtwin.deploy.config import CoordinatorConfig
from fedtwin.deploy.flwr_cli import FlwrCli, Registration, RunInfo, run_config_toml
from fedtwin.deploy.process import ManagedProcess, ProcessStatus
from fedtwin.errors import ConfigError, FederationError
from fedtwin.pki import (
    Health,
    PkiLayout,
    inspect_pki,
    read_consortium,
    verify_server_certificate,
)
from fedtwin.pki._files import check_private_mode
from fedtwin.pki.consortium import Clock, utc_now

SUPERLINK = "superlink"
REQUIRED_RUN_KEYS = ("num-server-rounds", "min-sites", "seed", "out-dir")
OPTIONAL_RUN_KEYS = ("run-id", "consortium-dir", "round-timeout-s", "resume")
RESUME_STATE = Path("resume") / "state.json"
CONSORTIUM_POLICY_FILE = "consortium-policy.toml"
_REFUSALS = {
    "ApiError:2004": "unregistered SuperNode key",
    "ApiError:2001": "SuperNode without an authentication key",
}


@dataclass(frozen=True)
class CoordinatorStatus:
    """What ``fedtwin coordinator status`` shows."""

    superlink: ProcessStatus
    address: str
    nodes: tuple[dict[str, object], ...]
    refusals: dict[str, int]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: its id, status and where its outputs are."""

    info: RunInfo
    out_dir: Path
    log_path: Path


def handshake(connect_host: str, port: int, server_name: str, ca: Path, timeout_s: float) -> None:
    """Open a TLS connection verified against ``ca`` for ``server_name``; raise if it fails."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((connect_host, port), timeout=timeout_s) as raw,
        context.wrap_socket(raw, server_hostname=server_name),
    ):
        pass


class Coordinator:
    """Start, stop, inspect the SuperLink and run the consortium's Flower app on it.

    Parameters
    ----------
    config : CoordinatorConfig
        The validated ``coordinator.toml``.
    clock : Clock
        Time of the certificate checks (injected for tests).
    """

    def __init__(self, config: CoordinatorConfig, clock: Clock = utc_now) -> None:
        self.config = config
        self.section = config.coordinator
        self.pki = PkiLayout(self.section.pki_dir)
        self.state_dir = self.section.state_dir
        self.consortium_dir = self.section.consortium_dir or self.pki.coordinator_dir
        self.clock = clock
        self.superlink = ManagedProcess(SUPERLINK, self.state_dir)
        self.cli = FlwrCli(
            flower_environment(self.state_dir / "flwr-cli", self.section.task_poll_interval_s)
        )

    @property
    def registrations_file(self) -> Path:
        """Site id → SuperNode id as registered by this coordinator."""
        return self.state_dir / "registrations.json"

    def preflight(self) -> list[str]:
        """Checks (1)–(4) of the module docstring; returns warnings, raises on failures."""
        # (1): a fedtwin consortium folder.
        read_consortium(self.pki)
        # (2): the TLS key is private.
        check_private_mode(self.pki.tls_key)
        # (3): the certificate is valid for the advertised host.
        verify_server_certificate(
            self.pki.ca_cert.read_bytes(),
            self.pki.tls_cert.read_bytes(),
            self.section.host,
            self.clock(),
        )
        # (4): expiry.
        warnings = []
        for credential in inspect_pki(self.pki, self.clock).credentials:
            if credential.health is Health.EXPIRED:
                raise ConfigError(f"{credential.path}: {credential.role} has expired")
            if credential.health is Health.EXPIRING:
                warnings.append(
                    f"{credential.role} expires in {credential.days_left} days "
                    f"({credential.path}); renew it with `fedtwin pki renew-tls`"
                )
            if credential.health is Health.EXPOSED:
                raise ConfigError(f"{credential.path}: private key is accessible by others")
        return warnings

    def _connect_host(self) -> str:
        listen = self.section.listen_host
        return "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen

    def ready(self) -> bool:
        """True once the SuperLink completes a verified TLS handshake."""
        try:
            handshake(
                self._connect_host(), self.section.port, self.section.host, self.pki.ca_cert, 2.0
            )
        except (OSError, ssl.SSLError):
            return False
        return True

    def start(self) -> tuple[list[str], list[Registration]]:
        """Start the SuperLink and register the enrolled sites; return warnings, registrations."""
        warnings = self.preflight()
        # (5): start detached, with the coordinator's own Flower home.
        home = self.state_dir / SUPERLINK
        home.mkdir(parents=True, exist_ok=True)
        env = flower_environment(home, self.section.task_poll_interval_s)
        argv = superlink_command(self.section, self.pki, home / "state.db")
        self.superlink.start(argv, env, cwd=home)
        # (6): ready means a TLS handshake the sites' check would accept.
        if not self.superlink.wait_until(self.ready, self.section.start_timeout_s):
            last = "; ".join(self.superlink.tail(3)) or "no output"
            self.superlink.stop()
            raise FederationError(f"SuperLink did not come up: {last}")
        cli_home = self.state_dir / "flwr-cli"
        cli_home.mkdir(parents=True, exist_ok=True)
        (cli_home / "config.toml").write_text(
            connection_toml(self.section.address, self.pki.ca_cert)
        )
        # (7): registration.
        try:
            return warnings, self.register_sites()
        except FederationError as error:
            raise FederationError(
                f"the SuperLink is running, but registering the sites failed ({error}); "
                "fix it and run `fedtwin coordinator register`"
            ) from error

    def register_sites(self) -> list[Registration]:
        """Register every enrolled site's SuperNode key that the SuperLink does not hold yet."""
        known = self._registrations()
        outcomes = []
        for site in self.pki.enrolled_sites():
            outcome = self.cli.register(site, self.pki.supernode_public_key(site))
            if outcome.node_id is not None:
                known[site] = outcome.node_id
            outcomes.append(outcome)
        self.registrations_file.write_text(json.dumps(known, indent=2, sort_keys=True) + "\n")
        return outcomes

    def _registrations(self) -> dict[str, int]:
        try:
            data = json.loads(self.registrations_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def stop(self) -> bool:
        """Stop the SuperLink (and its ServerApp); True if it was running."""
        return self.superlink.stop()

    def refusals(self) -> dict[str, int]:
        """Refused join attempts the SuperLink logged, by reason."""
        text = self.superlink.log_since(0)
        return {reason: text.count(code) for code, reason in _REFUSALS.items() if code in text}

    def status(self) -> CoordinatorStatus:
        """The SuperLink's process, the registered nodes and the refused join attempts."""
        process = self.superlink.status()
        nodes: tuple[dict[str, object], ...] = ()
        warnings: list[str] = []
        if process.pid is not None:
            try:
                nodes = tuple(self.cli.nodes())
            except FederationError as error:
                warnings.append(str(error))
        names = {str(v): k for k, v in self._registrations().items()}
        nodes = tuple({**node, "site": names.get(str(node.get("node-id")), "?")} for node in nodes)
        return CoordinatorStatus(
            process, self.section.address, nodes, self.refusals(), tuple(warnings)
        )

    def app_digest(self) -> str:
        """The app hash (FAB digest) of the Flower app ``run`` submits: what sites approve."""
        from fedtwin.deploy.app_gate import flower_app_digest

        scratch = self.state_dir / "app-digest"
        try:
            return flower_app_digest(copy_flower_app(self.config.run.project_dir, scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def run(
        self,
        run_label: str,
        on_line: Callable[[str], None] | None = None,
        on_submitted: Callable[[int], None] | None = None,
        out_dir: Path | None = None,
        resume: bool = False,
    ) -> RunOutcome:
        """Submit the consortium's run, follow its log, and return its final status.

        ``run_label`` names the run (the ServerApp's ``run-id``); its outputs go to ``out_dir``
        (default ``<runs_dir>/<run_label>``), which must not exist yet. With ``resume`` it must
        hold the round checkpoint of an interrupted run with this label: the ServerApp
        continues after its last completed round under the same ``run-id``.
        """
        if self.superlink.status().pid is None:
            raise FederationError("the SuperLink is not running (fedtwin coordinator start)")
        run = self.config.run
        out_dir = (out_dir or run.runs_dir / run_label).resolve()
        if resume and not (out_dir / RESUME_STATE).is_file():
            raise ConfigError(f"{out_dir / RESUME_STATE}: no round checkpoint to resume from")
        if not resume and out_dir.exists():
            raise ConfigError(f"{out_dir}: already exists (continue it with --resume)")
        work = self.state_dir / "runs" / run_label
        project = copy_flower_app(run.project_dir, work / "project")
        overrides: dict[str, str | int | float | bool] = {
            "num-server-rounds": run.num_rounds,
            "min-sites": run.min_sites,
            "seed": run.seed,
            "out-dir": str(out_dir),
            "run-id": run_label,
            "consortium-dir": str(self.consortium_dir),
            "round-timeout-s": run.round_timeout_s,
            "resume": resume,
        }
        declared = app_config_keys(project / "pyproject.toml")
        missing = [key for key in REQUIRED_RUN_KEYS if key not in declared]
        if missing:
            raise ConfigError(
                f"{run.project_dir / 'pyproject.toml'}: [tool.flwr.app.config] lacks {missing}"
            )
        if resume and "resume" not in declared:
            raise ConfigError(
                f"{run.project_dir / 'pyproject.toml'}: the Flower app has no resume key"
            )
        overrides = {k: v for k, v in overrides.items() if k in declared}
        if "consortium-dir" in overrides:
            policy = self.consortium_dir / CONSORTIUM_POLICY_FILE
            if not policy.is_file():
                raise ConfigError(f"{policy}: missing; copy the reviewed consortium policy there")
        config_file = work / "run-config.toml"
        config_file.write_text(run_config_toml(overrides))
        run_id = self.cli.submit(project, config_file)
        if on_submitted is not None:
            on_submitted(run_id)
        log_path = work / "run.log"
        with log_path.open("w", encoding="utf-8") as log:

            def record(line: str) -> None:
                log.write(line + "\n")
                log.flush()
                if on_line is not None:
                    on_line(line)

            self.cli.follow_logs(run_id, record, run.timeout_s)
        info = self.cli.run_info(run_id)
        return RunOutcome(info, out_dir, log_path)


def app_config_keys(pyproject: Path) -> set[str]:
    """The keys of ``[tool.flwr.app.config]`` (the only ones ``--run-config`` may set)."""
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{pyproject}: cannot read the Flower app's pyproject.toml") from error
    config = document.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
    return set(config) if isinstance(config, dict) else set()


def copy_flower_app(project_dir: Path, target: Path) -> Path:
    """Copy the Flower app (pyproject, README, the packages its components name) to ``target``.

    ``flwr run`` rewrites the pyproject.toml it is given; the copy keeps the original intact
    and the FAB holds the app's entries only, never the rest of a checkout.
    """
    pyproject = project_dir / "pyproject.toml"
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{pyproject}: cannot read the Flower app's pyproject.toml") from error
    components = document.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    packages = sorted(
        {re.split(r"[.:]", str(ref))[0] for ref in components.values()}
        if isinstance(components, dict)
        else set()
    )
    if not packages:
        raise ConfigError(f"{pyproject}: [tool.flwr.app.components] names no app")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy2(pyproject, target / "pyproject.toml")
    if (project_dir / "README.md").is_file():
        shutil.copy2(project_dir / "README.md", target / "README.md")
    for package in packages:
        source = project_dir / package
        if not source.is_dir():
            raise ConfigError(f"{source}: the app package named in components is missing")
        shutil.copytree(source, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return target
