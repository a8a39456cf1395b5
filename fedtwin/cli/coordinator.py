"""``fedtwin coordinator``: the consortium's SuperLink (HTTPS, SuperNode authentication) and runs.

``start`` refuses to start on a bad PKI (exit 2) and registers every enrolled site; ``run``
exits 0 only when the SuperLink reports the run ``finished:completed`` (exit 1 otherwise, with
Flower's reason). ``status`` shows the registered nodes and refused join attempts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fedtwin.deploy import Coordinator, Registration

app = typer.Typer(
    help="The consortium's coordinator: a Flower SuperLink over HTTPS, and federated runs.",
    no_args_is_help=True,
)
console = Console(highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", help="the coordinator config (server/coordinator.toml)")
]
DEFAULT_CONFIG = Path("server/coordinator.toml")


def _coordinator(config: Path) -> Coordinator:
    from fedtwin.deploy import Coordinator, load_coordinator_config

    return Coordinator(load_coordinator_config(config))


@app.command()
def start(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Start the SuperLink (HTTPS, SuperNode authentication) and register enrolled sites."""
    coordinator = _coordinator(config)
    with console.status("starting the SuperLink…"):
        warnings, registrations = coordinator.start()
    for warning in warnings:
        console.print(f"[yellow]warning[/]: {warning}", markup=True)
    section = coordinator.section
    console.print(
        f"[bold]coordinator[/] listening on https://{section.listen_host}:{section.port} "
        f"(sites connect to {section.address}), pid {coordinator.superlink.status().pid}"
    )
    _print_registrations(registrations)
    console.print(f"log: {coordinator.superlink.log_path}")


def _print_registrations(registrations: Sequence[Registration]) -> None:
    if not registrations:
        console.print("no site enrolled yet (fedtwin pki enroll-site SITE_ID)")
        return
    for outcome in registrations:
        state = (
            f"registered as node {outcome.node_id}"
            if outcome.newly_registered
            else "already registered"
        )
        console.print(f"  {outcome.site_id}: {state}")


@app.command()
def register(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Register sites enrolled since the coordinator started (idempotent)."""
    coordinator = _coordinator(config)
    _print_registrations(coordinator.register_sites())


@app.command("app-hash")
def app_hash(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """The hash of the Flower app `run` submits: what each site approves in its policy."""
    coordinator = _coordinator(config)
    digest = coordinator.app_digest()
    console.print(digest, markup=False)
    console.print(
        f"app: {coordinator.config.run.project_dir}; sites add this hash to "
        "approved_app_hashes in their site policy after reviewing the app",
        style="dim",
    )


@app.command()
def stop(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Stop the SuperLink and everything it started."""
    coordinator = _coordinator(config)
    stopped = coordinator.stop()
    console.print("coordinator stopped" if stopped else "coordinator was not running")


@app.command()
def status(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """The SuperLink's state, the registered site nodes and refused join attempts."""
    from fedtwin.errors import FederationError

    coordinator = _coordinator(config)
    report = coordinator.status()
    state = report.superlink.state.value
    colour = "green" if report.superlink.pid is not None else "red"
    console.print(
        f"[bold]coordinator[/] {report.address}: [{colour}]{state}[/]"
        + (f" (pid {report.superlink.pid})" if report.superlink.pid else "")
    )
    if report.nodes:
        table = Table(title="site nodes", title_justify="left")
        for name in ("site", "node id", "status", "online since"):
            table.add_column(name)
        for node in report.nodes:
            table.add_row(
                str(node.get("site", "?")),
                str(node.get("node-id")),
                str(node.get("status")),
                str(node.get("online-at")),
            )
        console.print(table)
    for reason, count in report.refusals.items():
        console.print(f"[red]refused[/] {count} join attempt(s): {reason}")
    for warning in report.warnings:
        console.print(f"[yellow]warning[/]: {warning}")
    console.print(f"log: {report.superlink.log_path}")
    if report.superlink.pid is None:
        raise FederationError("the SuperLink is not running")


@app.command()
def logs(
    config: ConfigOption = DEFAULT_CONFIG,
    lines: Annotated[int, typer.Option(help="how many of the last lines")] = 40,
) -> None:
    """The last lines of the SuperLink's log."""
    coordinator = _coordinator(config)
    for line in coordinator.superlink.tail(lines):
        console.print(line, markup=False)


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    label: Annotated[
        str | None, typer.Option(help="run name (default: run-<UTC time>); its output folder")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="continue the interrupted run --label after its last completed round"
        ),
    ] = False,
) -> None:
    """Submit the consortium's federated run and follow it to the end."""
    from datetime import UTC, datetime

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from fedtwin.errors import ConfigError, FederationError

    if resume and label is None:
        raise ConfigError("--resume needs the --label of the run to continue")
    coordinator = _coordinator(config)
    run_label = label or f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    rounds = coordinator.config.run.num_rounds
    progress = Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task(f"run {run_label}", total=rounds, status="submitting")

    def on_line(line: str) -> None:
        if "[ROUND " in line and "INFO" in line and line[:2].isdigit():
            current = line.split("[ROUND ", 1)[1].split("/", 1)[0]
            if current.isdigit():
                progress.update(task, completed=int(current) - 1, status=f"round {current}")
        elif "ERROR" in line or "Received error" in line:
            progress.console.print(line.strip()[-200:], markup=False, style="red")

    with progress:
        outcome = coordinator.run(
            run_label,
            on_line=on_line,
            on_submitted=lambda run_id: progress.update(task, status=f"Flower run {run_id}"),
            resume=resume,
        )
        progress.update(task, completed=rounds if outcome.info.completed else None)
    info = outcome.info
    colour = "green" if info.completed else "red"
    console.print(
        f"run {info.run_id}: [{colour}]{info.status}[/] after {info.elapsed_s:.0f} s; "
        f"outputs in {outcome.out_dir}; log {outcome.log_path}"
    )
    if not info.completed:
        raise FederationError(f"run {info.run_id} {info.status}: {info.details}")
