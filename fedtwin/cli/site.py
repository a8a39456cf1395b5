"""``fedtwin site``: a hospital site's own commands (here: check its FHIR export).

Exit codes of ``check``: 0 when at least one patient is usable, 2 when the export is invalid
(strict: the first bad record, one line ``<file>:<line>: <reason>``) or nothing is usable.
Output names no patient: counts, reasons, span and sampling only. Only typer and rich are
imported at module level; the FHIR library is imported inside the command.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from fedtwin.fhir import IngestReport

app = typer.Typer(
    help="A hospital site's commands: check its FHIR export, run its SuperNode.",
    no_args_is_help=True,
)
console = Console(highlight=False, soft_wrap=True)


def _print_report(report: IngestReport) -> None:
    policy = report.policy.default
    console.print(f"[bold]FHIR export[/bold] {report.source}  (policy: {policy})")
    summary = Table(show_header=False, box=None, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("patients found", str(report.patients_found))
    summary.add_row("patients usable", str(report.patients_usable))
    span = f"{report.time_start} → {report.time_end}" if report.time_start else "—"
    summary.add_row("time span (UTC)", span)
    sampling = report.sampling
    summary.add_row(
        "CGM sampling",
        f"{sampling.observed_bins}/{sampling.grid_bins} five-minute bins "
        f"({100 * sampling.coverage:.1f} %), {sampling.gaps_over_30_min} gaps > 30 min, "
        f"longest {sampling.longest_gap_min} min",
    )
    console.print(summary)
    counts = Table(title="records", title_justify="left")
    for name in ("resource", "read", "used", "rejected", "rejected by reason"):
        counts.add_column(
            name, justify="left" if name.startswith(("resource", "rejected by")) else "right"
        )
    for resource_type, tally in report.resources.items():
        reasons = ", ".join(f"{k.value} {v}" for k, v in tally.rejected_by_reason.items())
        counts.add_row(
            resource_type, str(tally.read), str(tally.used), str(tally.rejected), reasons or "—"
        )
    counts.add_row("total", str(report.read), str(report.used), str(report.rejected), "")
    console.print(counts)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    for example in report.examples:
        console.print(f"rejected: {example}", markup=False)


@app.command()
def check(
    data: Annotated[
        Path, typer.Option(help="the Bulk FHIR export folder (NDJSON per resource type)")
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="print the report as one JSON object")
    ] = False,
    lenient: Annotated[
        bool,
        typer.Option(
            help="reject bad records, count them and carry on (default: stop at the first)"
        ),
    ] = False,
    fhir_version: Annotated[
        str, typer.Option(help="auto (R5 where a resource carries R5-only elements), R4B or R5")
    ] = "auto",
    max_span_days: Annotated[
        float, typer.Option(help="longest history kept per patient, days")
    ] = 90.0,
    min_cgm_readings: Annotated[
        int, typer.Option(help="glucose readings a patient needs to be usable")
    ] = 12,
    policy: Annotated[
        Path | None,
        typer.Option(help="site policy (TOML): also count patients the consents permit"),
    ] = None,
    at: Annotated[
        str | None, typer.Option(help="consent decision time, ISO 8601 (default: now)")
    ] = None,
) -> None:
    """Validate a site's FHIR export: what will be used, what is rejected and why."""
    from pydantic import ValidationError

    from fedtwin.errors import ConfigError, IngestError
    from fedtwin.fhir import IngestOptions, IngestPolicy, read_site

    flags = {
        "fhir_version": "--fhir-version",
        "max_span_days": "--max-span-days",
        "min_cgm_readings": "--min-cgm-readings",
    }
    version: Literal["auto", "R4B", "R5"] | str = fhir_version
    try:
        options = IngestOptions(
            policy=IngestPolicy.lenient() if lenient else IngestPolicy.strict(),
            fhir_version=version,  # type: ignore[arg-type]
            max_span_days=max_span_days,
            min_cgm_readings=min_cgm_readings,
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "value"
        raise ConfigError(f"{flags.get(field, field)}: {first['msg']}") from error
    # Pseudonyms are not printed here, so a throw-away secret keeps the site's own out of it.
    export = read_site(data, secret=secrets.token_bytes(32), options=options)
    report = export.report
    if json_output:
        typer.echo(report.model_dump_json(indent=2))
    else:
        _print_report(report)
    if policy is not None:
        from fedtwin.cli.consent import policy_consent_check

        usable = [p.patient_id for p in export.patients] + [p.patient_id for p in export.oncology]
        lines = policy_consent_check(policy, export.consents, usable, at)
        # In --json mode stdout stays one JSON object: the consent counts go to stderr.
        typer.echo("\n".join(lines), err=json_output)
    if not report.usable:
        raise IngestError(f"{data}: no usable patient (see the counts above)")


# Deployment (issue #7): the site's SuperNode over HTTPS with its authentication key.
SiteConfigOption = Annotated[
    Path, typer.Option("--config", help="the site config (client/site.toml: [site] and [node])")
]
DEFAULT_SITE_CONFIG = Path("client/site.toml")


@app.command()
def start(config: SiteConfigOption = DEFAULT_SITE_CONFIG) -> None:
    """Start the site's SuperNode and wait until the coordinator admits it."""
    from fedtwin.deploy import SiteNode

    node = SiteNode(config)
    with console.status(f"site {node.site_id}: connecting to {node.node.superlink}…"):
        node_id = node.start()
    executor = node.node.clientapp_executor
    console.print(
        f"[bold]{node.site_id}[/] joined {node.node.superlink} as node {node_id} "
        f"(HTTPS, authenticated; ClientApp executor: {executor})"
    )
    console.print(f"logs: {node.supernode.log_path.parent}")


@app.command()
def stop(config: SiteConfigOption = DEFAULT_SITE_CONFIG) -> None:
    """Stop the site's SuperNode (and its warm ClientApp executor)."""
    from fedtwin.deploy import SiteNode

    node = SiteNode(config)
    console.print(f"{node.site_id}: " + ("stopped" if node.stop() else "was not running"))


@app.command()
def status(config: SiteConfigOption = DEFAULT_SITE_CONFIG) -> None:
    """Whether the site's SuperNode runs, its node id, and the tasks it has run."""
    from fedtwin.deploy import SiteNode
    from fedtwin.errors import FederationError

    report = SiteNode(config).status()
    running = report.supernode.pid is not None
    colour = "green" if running else "red"
    console.print(
        f"[bold]{report.site_id}[/] → {report.superlink}: "
        f"[{colour}]{report.supernode.state.value}[/]"
        + (f" (pid {report.supernode.pid})" if running else "")
    )
    if report.node_id is not None:
        console.print(f"node id {report.node_id}; ClientApp tasks run: {report.tasks_run}")
    if report.executor is not None:
        console.print(f"warm executor: {report.executor.state.value}")
    if not running:
        raise FederationError(f"site {report.site_id}: its SuperNode is not running")


@app.command()
def logs(
    config: SiteConfigOption = DEFAULT_SITE_CONFIG,
    lines: Annotated[int, typer.Option(help="how many of the last lines")] = 40,
) -> None:
    """The last lines of the SuperNode's log."""
    from fedtwin.deploy import SiteNode

    for line in SiteNode(config).supernode.tail(lines):
        console.print(line, markup=False)


@app.command()
def keygen(
    site_id: Annotated[str, typer.Option(help="the site's id")],
    out: Annotated[Path, typer.Option(help="folder for the keys (created 0700)")],
) -> None:
    """Generate the site's own SuperNode and audit keys; send only the .pub/.vkey files."""
    from fedtwin.pki import generate_site_keys

    bundle = generate_site_keys(out, site_id)
    console.print(f"keys of {site_id} in {out} (private keys 0600, never leave this site)")
    console.print(
        f"send to the consortium: {bundle.supernode_public_key} and {bundle.verifier_key}"
    )
