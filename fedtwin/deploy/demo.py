"""``fedtwin demo --deployment``: the demo with a real coordinator and site processes.

The same synthetic sites as ``fedtwin demo`` (:func:`fedtwin.demo.generate_sites`), but instead
of Flower's simulation engine a real SuperLink on 127.0.0.1 serves HTTPS with SuperNode
authentication, every site runs its own SuperNode process with its own enrolled key, and the
run is submitted with ``flwr run``. Rounds follow each other at once (the deployment runs on
the wall clock; see :func:`fedtwin.deploy.local.back_to_back_rounds`).

Invariants: every process the demo starts is stopped before it returns or raises; the run
directory is built under ``.<run-id>.partial`` and renamed to ``<run-id>`` only when the run
finished ``completed`` and its audit was written, so a failed demo leaves no partial run
behind; the deployment's own files (PKI, configs, process logs, site states) end up in the run
directory's ``deployment/`` folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtwin.deploy.config import ClientAppExecutor
from fedtwin.deploy.flwr_cli import Registration, RunInfo
from fedtwin.deploy.local import back_to_back_rounds, build_local_deployment
from fedtwin.errors import FederationError

if TYPE_CHECKING:
    from fedtwin.demo import DemoConfig


@dataclass(frozen=True)
class DeploymentEvents:
    """Callbacks of the deployment demo (all optional)."""

    on_site_simulated: Callable[[str, float], None] | None = None
    on_coordinator: Callable[[list[Registration]], None] | None = None
    on_site_joined: Callable[[str, int], None] | None = None
    on_submitted: Callable[[int], None] | None = None
    on_log_line: Callable[[str], None] | None = None


@dataclass(frozen=True)
class DeploymentDemoResult:
    """Where the deployed demo wrote its outputs and how the run ended."""

    run_dir: Path
    run: RunInfo
    sites: tuple[str, ...]
    model_card: dict[str, Any]
    metrics: dict[str, Any]
    audit_intact: bool


def run_deployment_demo(
    config: DemoConfig,
    events: DeploymentEvents | None = None,
    run_id: str | None = None,
    executor: ClientAppExecutor = "warm",
) -> DeploymentDemoResult:
    """Simulate the sites, deploy them on loopback, run, audit, and write ``<out>/<run-id>/``."""
    from fedtwin.audit import write_report
    from fedtwin.demo import collect_site_logs, generate_sites, new_run_id

    events = events or DeploymentEvents()
    run_id = run_id or new_run_id(config.seed)
    final_dir = config.out / run_id
    if final_dir.exists():
        raise FederationError(f"{final_dir} already exists")
    partial_dir = config.out / f".{run_id}.partial"
    work = config.out / f".{run_id}.deployment"
    for leftover in (partial_dir, work):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        sites = generate_sites(config, work / "data", events.on_site_simulated)
        consortium = work / "data" / "consortium"
        back_to_back_rounds(consortium, [site.state_dir.parent for site in sites])
        deployment = build_local_deployment(
            work,
            [site.model_dump(mode="json") for site in sites],
            consortium,
            config.rounds,
            executor=executor,
            seed=config.seed,
        )
        with deployment.running(events.on_coordinator, events.on_site_joined):
            outcome = deployment.coordinator.run(
                run_id,
                on_line=events.on_log_line,
                on_submitted=events.on_submitted,
                out_dir=partial_dir,
            )
        if not outcome.info.completed:
            raise FederationError(
                f"run {outcome.info.run_id} {outcome.info.status}: {outcome.info.details}"
            )
        collect_site_logs(sites, partial_dir)
        audit = write_report(partial_dir, partial_dir / "report.html", datetime.now(UTC))
        shutil.move(work, partial_dir / "deployment")
        partial_dir.rename(final_dir)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        raise
    return DeploymentDemoResult(
        run_dir=final_dir,
        run=outcome.info,
        sites=tuple(site.site_id for site in sites),
        model_card=_read_json(final_dir / "model_card.json"),
        metrics=_read_json(final_dir / "metrics.json"),
        audit_intact=audit.all_intact,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise FederationError(f"{path}: the coordinator wrote no readable file") from error
    return document if isinstance(document, dict) else {}
