"""A whole deployment on one machine's loopback: the demo's sites, a real PKI, real processes.

:func:`build_local_deployment` lays out, under one folder, everything a consortium and its
hospitals would each set up by hand (see ``server/README.md`` and ``client/README.md``)::

    root/
      data/                      the demo's consortium folder and site folders (FHIR exports,
                                 policies, audit keys) from :func:`fedtwin.demo.generate_sites`
      pki/                       ``fedtwin pki init`` + ``enroll-site`` for every site
      server/coordinator.toml    the coordinator's config (loopback, a free port)
      sites/<site-id>.toml       each site's config: the demo's ``[site]`` table + a ``[node]``
                                 (and each site policy approves the app's hash, as a site
                                 does after reviewing the consortium's Flower app)
      runs/                      run outputs

Invariants: the coordinator listens on 127.0.0.1 only; every site joins over HTTPS with its own
enrolled SuperNode key; :meth:`LocalDeployment.stop` stops every process it started, and
:meth:`LocalDeployment.running` guarantees it even when the body raises or is interrupted.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fedtwin.deploy.config import ClientAppExecutor, load_coordinator_config
from fedtwin.deploy.coordinator import Coordinator
from fedtwin.deploy.flwr_cli import Registration
from fedtwin.deploy.site import SiteNode, site_toml
from fedtwin.errors import ConfigError
from fedtwin.pki import DEFAULT_HOSTS, PkiLayout, enroll_site, init_consortium

CONSORTIUM_NAME = "fedtwin demo"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_app_dir() -> Path:
    """The Flower app this fedtwin was installed from (pyproject.toml, server/, client/)."""
    import fedtwin

    root = Path(fedtwin.__file__).resolve().parents[1]
    if not all((root / name).exists() for name in ("pyproject.toml", "server", "client")):
        raise ConfigError(
            "the deployment needs the Flower app (pyproject.toml, server/, client/) of a "
            "fedtwin checkout; run it from one"
        )
    return root


def back_to_back_rounds(consortium_dir: Path, site_dirs: Sequence[Path]) -> None:
    """Rewrite the study's consortium policy so rounds may follow each other at once.

    The demo's study calendar spaces simulated rounds a week apart; a deployment runs on the
    wall clock, so its policy drops the minimum spacing. Every site's approved copy is the same
    document (a site refuses a run under any other policy).
    """
    from fedtwin.consent import load_consortium_policy, policy_toml

    path = consortium_dir / "consortium-policy.toml"
    policy = load_consortium_policy(path).model_copy(update={"min_round_spacing_minutes": 0})
    text = policy_toml(policy, header="fedtwin demo --deployment: rounds back to back.")
    path.write_text(text)
    for site_dir in site_dirs:
        (site_dir / "approved-consortium-policy.toml").write_text(text)


@dataclass
class LocalDeployment:
    """A coordinator and its site nodes on loopback (see the module docstring)."""

    root: Path
    coordinator: Coordinator
    site_configs: tuple[Path, ...]
    nodes: list[SiteNode] = field(default_factory=list)

    def start(
        self,
        on_coordinator: Callable[[list[Registration]], None] | None = None,
        on_site: Callable[[str, int], None] | None = None,
    ) -> None:
        """Start the coordinator, then every site (each waits until it is admitted)."""
        _, registrations = self.coordinator.start()
        if on_coordinator is not None:
            on_coordinator(registrations)
        for path in self.site_configs:
            node = SiteNode(path)
            self.nodes.append(node)
            node_id = node.start()
            if on_site is not None:
                on_site(node.site_id, node_id)

    def stop(self) -> None:
        """Stop every site node and the coordinator (safe to call twice)."""
        for path in self.site_configs:
            SiteNode(path).stop()
        self.coordinator.stop()

    @contextmanager
    def running(
        self,
        on_coordinator: Callable[[list[Registration]], None] | None = None,
        on_site: Callable[[str, int], None] | None = None,
    ) -> Iterator[LocalDeployment]:
        """Start everything; stop everything on the way out, whatever happened."""
        try:
            self.start(on_coordinator, on_site)
            yield self
        finally:
            self.stop()


def build_local_deployment(
    root: Path,
    site_documents: Sequence[dict[str, object]],
    consortium_dir: Path,
    rounds: int,
    executor: ClientAppExecutor = "warm",
    seed: int = 0,
    task_poll_interval_s: float = 0.1,
    app_dir: Path | None = None,
) -> LocalDeployment:
    """Write the PKI, the coordinator config and one config per site under ``root``.

    ``site_documents`` are the sites' ``[site]`` tables (a dumped
    :class:`~fedtwin.federation.SiteConfig` each), ``consortium_dir`` the ServerApp's
    consortium folder (policy, coordinator audit key, site audit keys).
    ``task_poll_interval_s`` is the SuperExec's task polling interval on both sides (Flower's
    default is 1 s). ``app_dir`` is the Flower app the coordinator submits (default: this
    checkout's, :func:`flower_app_dir`); every site's policy approves its hash as built now.
    """
    pki = PkiLayout(root / "pki")
    init_consortium(pki.root, CONSORTIUM_NAME, DEFAULT_HOSTS)
    port = free_port()
    config_path = root / "server" / "coordinator.toml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        "# Written by fedtwin: a coordinator on loopback.\n"
        "[coordinator]\n"
        f'pki_dir = "{pki.root.resolve()}"\n'
        f'state_dir = "{(root / "coordinator-state").resolve()}"\n'
        f'address = "127.0.0.1:{port}"\n'
        'listen_host = "127.0.0.1"\n'
        f"task_poll_interval_s = {task_poll_interval_s}\n"
        f'consortium_dir = "{consortium_dir.resolve()}"\n\n'
        "[run]\n"
        f'project_dir = "{(app_dir or flower_app_dir()).resolve()}"\n'
        f'runs_dir = "{(root / "runs").resolve()}"\n'
        f"num_rounds = {rounds}\n"
        f"min_sites = {len(site_documents)}\n"
        f"seed = {seed}\n"
    )
    from fedtwin.deploy.app_gate import approve_app

    coordinator = Coordinator(load_coordinator_config(config_path))
    digest = coordinator.app_digest() if executor == "warm" else None
    configs = []
    (root / "sites").mkdir(parents=True, exist_ok=True)
    for document in site_documents:
        site_id = str(document["site_id"])
        enroll_site(pki, site_id)
        bundle = pki.bundle(site_id)
        node = {
            "superlink": f"127.0.0.1:{port}",
            "root_certificates": str(bundle.ca_cert.resolve()),
            "supernode_key": str(bundle.supernode_key.resolve()),
            "runtime_port": free_port(),
            "clientapp_executor": executor,
            "enforce_app_approval": None if executor == "warm" else False,
            "task_poll_interval_s": task_poll_interval_s,
        }
        if digest is not None:  # each site reviewed the consortium's app and approved it
            approve_app(Path(str(document["site_policy"])), digest)
        path = root / "sites" / f"{site_id}.toml"
        path.write_text(site_toml(dict(document), node))
        configs.append(path)
    return LocalDeployment(root, coordinator, tuple(configs))
