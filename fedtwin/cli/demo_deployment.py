"""``fedtwin demo --deployment``: progress of a real coordinator and site processes on loopback."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from fedtwin.demo import DemoConfig
    from fedtwin.deploy import Registration
    from fedtwin.deploy.demo import DeploymentDemoResult

console = Console(highlight=False)


def run_deployment_demo_command(config: DemoConfig) -> DeploymentDemoResult:
    """Run the deployed demo with rich progress and print where everything is."""
    from fedtwin.deploy.demo import DeploymentEvents, run_deployment_demo

    started = time.monotonic()
    progress = Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    site_tasks: dict[str, TaskID] = {}

    def on_site_simulated(site_id: str, fraction: float) -> None:
        if site_id not in site_tasks:
            site_tasks[site_id] = progress.add_task(f"simulate {site_id}", total=1.0, status="")
        progress.update(site_tasks[site_id], completed=fraction)

    def on_coordinator(registrations: list[Registration]) -> None:
        names = ", ".join(r.site_id for r in registrations)
        progress.console.print(
            f"coordinator up (HTTPS, SuperNode authentication); registered: {names}"
        )

    def on_site_joined(site_id: str, node_id: int) -> None:
        progress.console.print(f"{site_id} joined as node {node_id}")

    rounds: list[TaskID] = []

    def on_submitted(run_id: int) -> None:
        rounds.append(
            progress.add_task("federated rounds", total=config.rounds, status=f"run {run_id}")
        )

    def on_log_line(line: str) -> None:
        if rounds and "[ROUND " in line and line[:2].isdigit():
            current = line.split("[ROUND ", 1)[1].split("/", 1)[0]
            if current.isdigit():
                progress.update(rounds[0], completed=int(current) - 1, status=f"round {current}")

    console.print(
        f"[bold]fedtwin demo --deployment[/]: a coordinator and {config.sites} site processes on "
        f"127.0.0.1, HTTPS + SuperNode authentication; {config.patients_per_site} virtual "
        f"patients per site, {config.rounds} rounds, seed {config.seed}"
    )
    events = DeploymentEvents(
        on_site_simulated=on_site_simulated,
        on_coordinator=on_coordinator,
        on_site_joined=on_site_joined,
        on_submitted=on_submitted,
        on_log_line=on_log_line,
    )
    with progress:
        result = run_deployment_demo(config, events)
        if rounds:
            progress.update(rounds[0], completed=config.rounds, status="finished")
    console.print(summary_table(result.metrics, result.model_card))
    audit = "[green]intact[/]" if result.audit_intact else "[red]NOT intact[/]"
    console.print(
        f"run directory: [bold]{result.run_dir}[/] (model, model card, metrics, audit logs "
        f"{audit}, report.html; deployment/ holds the PKI, configs and process logs); every "
        f"process stopped; {time.monotonic() - started:.0f} s"
    )
    return result


def summary_table(metrics: dict[str, Any], model_card: dict[str, Any]) -> Table:
    """Last round each site trained: patients, loss, ε; and its held-out RMSE if reported."""
    last_train: dict[str, dict[str, float]] = {}
    last_eval: dict[str, dict[str, float]] = {}
    for round_metrics in metrics.get("rounds", []):
        last_train.update(round_metrics.get("train", {}))
        last_eval.update(round_metrics.get("evaluate", {}))
    epsilon = model_card.get("privacy", {}).get("epsilon_per_site", {})
    table = Table(title="sites (last round each took part in)")
    table.add_column("site", no_wrap=True)
    for header in ("patients", "train loss", "RMSE 30'", "ε"):
        table.add_column(header, justify="right")
    for site in sorted(set(last_train) | set(epsilon)):
        train = last_train.get(site, {})
        rmse = last_eval.get(site, {}).get("rmse_30")
        table.add_row(
            site,
            f"{train.get('num-examples', float('nan')):.0f}",
            f"{train.get('train-loss', float('nan')):.3f}",
            "—" if rmse is None else f"{rmse:.1f}",
            f"{epsilon.get(site, float('nan')):.2f}",
        )
    return table
