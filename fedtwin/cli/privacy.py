"""``fedtwin privacy``: a site's privacy spending and an empirical audit of a trained twin.

Both commands run at a site (they read its ledger and records). ``report`` shows ε per
patient after every committed round; ``audit`` attacks the released twin with membership
inference, next to a non-private reference and the bound the site's ε allows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from fedtwin.federation import SiteConfig

app = typer.Typer(
    name="privacy",
    help="A site's privacy ledger and an empirical membership-inference audit.",
    no_args_is_help=True,
)
console = Console(highlight=False)

RunDir = Annotated[Path, typer.Argument(help="a finished run directory (runs/<run-id>)")]
SiteConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--site-config", help="this site's config (default: every site of a demo run's sites/)"
    ),
]


def _sites(run_dir: Path, site_config: Path | None, only: str | None) -> list[SiteConfig]:
    from fedtwin.errors import ConfigError
    from fedtwin.federation import load_site_config, load_sites_manifest

    if site_config is not None:
        sites = [load_site_config(site_config)]
    else:
        manifest = run_dir / "sites" / "sites.json"
        if not manifest.is_file():
            raise ConfigError(f"{run_dir}: no sites/sites.json; pass --site-config")
        sites = list(load_sites_manifest(manifest))
    if only is not None:
        sites = [s for s in sites if s.site_id == only]
        if not sites:
            raise ConfigError(f"--site: no site {only!r} in this run")
    return list(sites)


@app.command()
def report(
    run_dir: RunDir,
    site_config: SiteConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """ε per patient after every committed round of the run, per site (from its ledger)."""
    from fedtwin.federation.privacy_audit import load_run_model
    from fedtwin.privacy import PrivacyLedger

    run, _ = load_run_model(run_dir)
    table = Table(title=f"ε per patient at δ={run.delta:g}, run {run.run_id}")
    for column in ("site", "round", "ε after round", "σ", "sample rate", "steps"):
        table.add_column(column, justify="right" if column != "site" else "left")
    for site in _sites(run_dir, site_config, None):
        ledger = PrivacyLedger(site.ledger_path, 100.0, run.delta, site.accountant)
        spends = {e.round: e for e in ledger.history() if e.run_id == run.run_id}
        for server_round, epsilon in ledger.epsilon_by_round(run.run_id):
            spend = spends[server_round]
            row = {
                "site": site.site_id,
                "run": run.run_id,
                "round": server_round,
                "epsilon": epsilon,
                "noise_multiplier": spend.noise_multiplier,
                "sample_rate": spend.sample_rate,
                "steps": spend.steps,
            }
            if as_json:
                print(json.dumps(row))
            else:
                table.add_row(
                    str(row["site"]),
                    str(server_round),
                    f"{epsilon:.3f}",
                    f"{spend.noise_multiplier:.3f}",
                    f"{spend.sample_rate:.3f}",
                    str(spend.steps),
                )
    if not as_json:
        console.print(table)


@app.command()
def audit(
    run_dir: RunDir,
    site_config: SiteConfigOption = None,
    site: Annotated[str | None, typer.Option(help="audit only this site")] = None,
    shadows: Annotated[
        int, typer.Option(min=0, max=64, help="shadow models for offline LiRA (0: loss only)")
    ] = 0,
    seed: Annotated[int, typer.Option(min=0, help="seed of reference and shadow training")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON document")] = False,
) -> None:
    """Membership inference on the released twin vs a non-private reference, per site."""
    from fedtwin.federation.privacy_audit import audit_site, write_audit

    audits = [
        audit_site(run_dir, s, shadows=shadows, seed=seed)
        for s in _sites(run_dir, site_config, site)
    ]
    path = write_audit(run_dir, audits)
    if as_json:
        print(path.read_text())
        return
    table = Table(title="membership inference (patients: members vs held-out)")
    for column in ("site", "model", "attack", "AUC", "TPR@0.1%", "TPR@1%", "bound@1%"):
        table.add_column(
            column, justify="left" if column in ("site", "model", "attack") else "right"
        )
    for result in audits:
        bound = result.bound(0.01)
        for label, attacks in (
            ("released (DP)", result.released),
            ("non-private", result.non_private),
        ):
            for attack in attacks:
                table.add_row(
                    result.site_id,
                    label,
                    attack.attack,
                    f"{attack.auc:.3f}",
                    _rate(attack.tpr_at_fpr[0.001]),
                    _rate(attack.tpr_at_fpr[0.01]),
                    "1.0" if math.isinf(result.epsilon) else f"{bound:.3f}",
                )
    console.print(table)
    console.print(f"written: {path}")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
