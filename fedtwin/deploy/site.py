"""A hospital's site node: a Flower SuperNode over HTTPS with its authentication key.

``start`` checks (1)–(3) and refuses to start on any failure, then (4) starts
``flower-supernode`` detached in the site config's folder, (5) waits until the coordinator has
admitted it (Flower logs the node id it was given) and otherwise reports, in one line, why it
was refused (TLS verification, unregistered key, no key) and stops it, and (6) with the warm
executor, starts the long-lived ClientApp executor beside it.

Pre-start checks, each fail-closed: (1) the ``[site]`` table validates
(:func:`fedtwin.federation.load_site_config`); (2) the CA file is a certificate; (3) the
SuperNode key is ``0600``, OpenSSH, ECDSA P-384; (4) the app-hash approval of the site policy
is enforced: only the warm executor can (:mod:`.app_gate`), so Flower's own ``subprocess``
executor is refused unless ``enforce_app_approval = false`` says, for a benchmark, that it
is not.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from fedtwin.deploy.commands import flower_environment, supernode_command, warm_executor_command
from fedtwin.deploy.config import NodeSection, load_node_section, read_toml
from fedtwin.deploy.process import ManagedProcess, ProcessStatus
from fedtwin.errors import ConfigError, FederationError
from fedtwin.pki import check_supernode_private_key
from fedtwin.pki._files import read_public
from fedtwin.pki.tls import load_certificate

SUPERNODE = "supernode"
WARM_EXECUTOR = "warm-executor"
ADMITTED = re.compile(r"SuperNode ID: (\d+)")
EXECUTOR_READY = "fedtwin warm executor: taking ClientApp tasks"
_REFUSALS = (
    ("[code: 2004]", "refused by the coordinator: this site's SuperNode key is not registered"),
    ("[code: 2001]", "refused by the coordinator: it requires SuperNode authentication"),
    ("CERTIFICATE_VERIFY_FAILED", "TLS: the coordinator's certificate does not verify against"),
    ("Unable to parse the private key", "the SuperNode private key cannot be parsed"),
    ("Exit Code:", "the SuperNode exited"),
)


@dataclass(frozen=True)
class SiteNodeStatus:
    """What ``fedtwin site status`` shows."""

    site_id: str
    superlink: str
    supernode: ProcessStatus
    executor: ProcessStatus | None
    node_id: int | None
    tasks_run: int


def refusal_reason(log_text: str, node: NodeSection) -> str:
    """One line saying why a SuperNode did not join, from its own log."""
    for marker, reason in _REFUSALS:
        if marker in log_text:
            if marker == "CERTIFICATE_VERIFY_FAILED":
                return f"{reason} {node.root_certificates}"
            return reason
    lines = [line for line in log_text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def site_toml(site: dict[str, object], node: dict[str, object]) -> str:
    """A site config with a ``[site]`` and a ``[node]`` table (``None`` values omitted)."""

    def table(name: str, values: dict[str, object]) -> str:
        lines = [f"[{name}]"]
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = json.dumps(str(value), ensure_ascii=False)
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"

    return table("site", site) + "\n" + table("node", node)


class SiteNode:
    """Start, stop and inspect one site's SuperNode (and its warm executor).

    Parameters
    ----------
    config_path : Path
        The site's ``site.toml`` (``[site]`` and ``[node]`` tables).
    """

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path.resolve()
        self.folder = self.config_path.parent
        self.node = load_node_section(self.config_path)
        site = read_toml(self.config_path, "site config").get("site", {})
        if not isinstance(site, dict) or "site_id" not in site or "state_dir" not in site:
            raise ConfigError(f"{config_path}: [site] needs site_id and state_dir")
        self.site_id = str(site["site_id"])
        state = Path(str(site["state_dir"]))
        site_state = state if state.is_absolute() else (self.folder / state).resolve()
        self.state_dir = self.node.node_state_dir or site_state / "supernode"
        self.supernode = ManagedProcess(SUPERNODE, self.state_dir)
        self.executor = ManagedProcess(WARM_EXECUTOR, self.state_dir)

    def preflight(self) -> None:
        """Checks (1)–(4) of the module docstring."""
        from fedtwin.federation import load_site_config

        # (1): the site's own settings.
        load_site_config(self.config_path)
        # (2): the CA the coordinator's certificate must chain to.
        load_certificate(
            read_public(self.node.root_certificates, "CA certificate"),
            str(self.node.root_certificates),
        )
        # (3): the SuperNode key.
        check_supernode_private_key(self.node.supernode_key)
        # (4): app-hash approval can be enforced (only the warm executor checks the FAB).
        executor, enforce = self.node.clientapp_executor, self.node.enforce_app_approval
        if executor == "subprocess" and enforce:
            raise ConfigError(
                f'{self.config_path}: clientapp_executor = "subprocess" cannot check the app '
                'hash against the site policy; use "warm" (or, for a benchmark only, '
                "enforce_app_approval = false)"
            )
        if executor == "warm" and not enforce:
            raise ConfigError(
                f"{self.config_path}: the warm executor always checks the app hash; remove "
                "enforce_app_approval = false"
            )

    def _env(self) -> dict[str, str]:
        env = flower_environment(self.state_dir / "flwr-home", self.node.task_poll_interval_s)
        threads = str(self.node.training_threads)
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        return env

    def start(self) -> int:
        """Start the SuperNode and wait until the coordinator admits it; return its node id."""
        self.preflight()
        if self.supernode.status().pid is not None:
            raise ConfigError(f"site {self.site_id}: its SuperNode is already running")
        self.executor.stop(grace_s=5.0)  # an executor left behind by a node that died
        (self.state_dir / "flwr-home").mkdir(parents=True, exist_ok=True)
        env = self._env()
        # (4): start in the config's folder (relative [site] paths are relative to it).
        offset = self.supernode.log_size()
        self.supernode.start(
            supernode_command(self.node, self.config_path),
            env,
            cwd=self.folder,
        )

        # (5): admitted, refused, or silent until the timeout.
        def admitted() -> bool:
            return ADMITTED.search(self.supernode.log_since(offset)) is not None

        joined = self.supernode.wait_until(admitted, self.node.connect_timeout_s, 0.3)
        log_text = self.supernode.log_since(offset)
        if not joined:
            self.supernode.stop(grace_s=3.0)
            reason = refusal_reason(log_text, self.node)
            if "Connection attempt failed" in log_text and not any(
                marker in log_text for marker, _ in _REFUSALS
            ):
                reason = (
                    f"cannot reach the coordinator at {self.node.superlink} within "
                    f"{self.node.connect_timeout_s:.0f} s"
                )
            raise FederationError(f"site {self.site_id} did not join: {reason}")
        match = ADMITTED.search(log_text)
        node_id = int(match.group(1)) if match else 0
        # (6): the warm executor takes the ClientApp tasks (isolation "process"); a node
        # whose executor cannot start would accept tasks it never runs, so it is stopped too.
        if self.node.clientapp_executor == "warm":
            executor_offset = self.executor.log_size()
            self.executor.start(
                warm_executor_command(self.node, self.config_path), env, cwd=self.folder
            )

            def executing() -> bool:
                return EXECUTOR_READY in self.executor.log_since(executor_offset)

            if not self.executor.wait_until(executing, self.node.connect_timeout_s, 0.3):
                last = "; ".join(self.executor.tail(2)) or "no output"
                self.stop()
                raise FederationError(
                    f"site {self.site_id}: the warm ClientApp executor did not start: {last}"
                )
        return node_id

    def stop(self) -> bool:
        """Stop the executor and the SuperNode; True if anything was running."""
        stopped_executor = self.executor.stop(grace_s=5.0)
        stopped_node = self.supernode.stop(grace_s=10.0)
        return stopped_executor or stopped_node

    def status(self) -> SiteNodeStatus:
        """The processes, the node id the coordinator gave, and tasks run by the executor."""
        log_text = self.supernode.log_since(0)
        ids = ADMITTED.findall(log_text)
        executor = self.executor.status() if self.node.clientapp_executor == "warm" else None
        tasks = self.executor.log_since(0).count(" fedtwin warm executor: task ")
        if self.node.clientapp_executor == "subprocess":
            tasks = log_text.count("Start `flwr-clientapp` process")
        return SiteNodeStatus(
            site_id=self.site_id,
            superlink=self.node.superlink,
            supernode=self.supernode.status(),
            executor=executor,
            node_id=int(ids[-1]) if ids else None,
            tasks_run=tasks,
        )
