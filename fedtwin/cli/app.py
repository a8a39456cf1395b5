"""Typer application: maps flags onto validated config models and errors onto exit codes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from pydantic import ValidationError
from rich.console import Console

from fedtwin.cli import audit, cohort, consent, coordinator, pki, privacy, site, twin
from fedtwin.errors import ConfigError, FedTwinError, IngestError

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

app = typer.Typer(
    name="fedtwin",
    help="Privacy-preserving federated digital twins for hospitals.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)
app.add_typer(audit.app, name="audit")
app.add_typer(site.app, name="site")
app.add_typer(consent.app, name="consent")
app.add_typer(cohort.app, name="cohort")
app.add_typer(pki.app, name="pki")
app.add_typer(coordinator.app, name="coordinator")
app.add_typer(privacy.app, name="privacy")
app.add_typer(twin.app, name="twin")


def fail(message: str, code: int) -> NoReturn:
    """Print one line to stderr and exit with ``code``."""
    stderr.print(f"fedtwin: error: {message}", markup=False)
    raise typer.Exit(code)


def validation_line(error: ValidationError, flag_of: dict[str, str]) -> str:
    """One line naming the flag (or field) and what is allowed."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "value"
    name = flag_of.get(field, field)
    return f"{name}: {first['msg']} (got {first.get('input')!r})"


@app.callback()
def root() -> None:
    """Privacy-preserving federated digital twins for hospitals."""


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(help="federated rounds")] = 5,
    sites: Annotated[int, typer.Option(help="simulated hospital sites")] = 3,
    patients_per_site: Annotated[int, typer.Option(help="virtual patients per site")] = 1000,
    days: Annotated[float, typer.Option(help="simulated days per patient")] = 1.0,
    epsilon_cap: Annotated[
        float, typer.Option(help="max ε per patient each site will spend")
    ] = 8.0,
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
    out: Annotated[Path, typer.Option(help="parent folder of the run directory")] = Path("runs"),
    deployment: Annotated[
        bool,
        typer.Option(help="a real coordinator and site processes on 127.0.0.1 (HTTPS, auth)"),
    ] = False,
) -> None:
    """Three simulated hospitals train a glucose twin together with patient-level DP."""
    from fedtwin.cli.demo import run_demo_command
    from fedtwin.demo import DemoConfig

    flags = {
        "rounds": "--rounds",
        "sites": "--sites",
        "patients_per_site": "--patients-per-site",
        "days": "--days",
        "epsilon_cap": "--epsilon-cap",
        "seed": "--seed",
        "out": "--out",
    }
    values: dict[str, Any] = {
        "rounds": rounds,
        "sites": sites,
        "patients_per_site": patients_per_site,
        "days": days,
        "epsilon_cap": epsilon_cap,
        "seed": seed,
        "out": out,
    }
    try:
        config = DemoConfig.model_validate(values)
    except ValidationError as error:
        fail(validation_line(error, flags), EXIT_BAD_INPUT)
    if deployment:
        from fedtwin.cli.demo_deployment import run_deployment_demo_command

        run_deployment_demo_command(config)
        return
    run_demo_command(config)


def main() -> None:
    """Console entry point: run the app and map errors onto exit codes."""
    try:
        # Without standalone mode, click returns (not raises) the code of a typer.Exit.
        code = app(standalone_mode=False)
        if isinstance(code, int):
            sys.exit(code)
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.UsageError as error:
        hint = (
            f" (see 'fedtwin {error.ctx.command_path.split(' ', 1)[-1]} --help')"
            if (error.ctx and " " in error.ctx.command_path)
            else ""
        )
        stderr.print(f"fedtwin: error: {error.format_message()}{hint}", markup=False)
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        stderr.print("fedtwin: aborted", markup=False)
        sys.exit(EXIT_FAILURE)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except (ConfigError, IngestError) as error:
        stderr.print(f"fedtwin: error: {error}", markup=False)
        sys.exit(EXIT_BAD_INPUT)
    except FedTwinError as error:
        stderr.print(f"fedtwin: error: {error}", markup=False)
        sys.exit(EXIT_FAILURE)
