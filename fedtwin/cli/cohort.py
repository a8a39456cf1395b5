"""``fedtwin cohort``: virtual patient cohorts (replay one patient; generate whole sites).

Only typer and the standard library are imported at module level; the simulator (torch) is
imported inside the command so that ``fedtwin --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="cohort",
    help="Virtual patient cohorts: oracle replay of one patient, FHIR sites for a consortium.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def replay(
    patient: Annotated[
        str,
        typer.Option(help="virtual patient, e.g. adult#001, or a sampled one like adult#v00042"),
    ],
    actions: Annotated[
        Path,
        typer.Option(help="CSV with columns minute,cho_g_per_min,insulin_u_per_min from 0"),
    ],
    out: Annotated[Path, typer.Option(help="CSV to write: minute,bg_mg_dl")],
    population_seed: Annotated[
        int | None, typer.Option(help="seed of the sampled population (sampled names only)")
    ] = None,
    substeps: Annotated[
        int, typer.Option(help="RK4 steps per minute of a non-stiff patient (1-16)")
    ] = 2,
) -> None:
    """Replay one patient minute by minute; write the noise-free glucose before each minute.

    The glucose is simglucose's ``T1DPatient.observation.Gsub`` (subcutaneous glucose
    ``Gs / Vg``), one row per action row, taken before that minute's action is applied.
    """
    import torch

    from fedtwin.cohorts.actions_io import read_actions_csv, write_glucose_csv
    from fedtwin.cohorts.plans import OpenLoopPlan
    from fedtwin.cohorts.replay import replay as run_plan
    from fedtwin.cohorts.virtual_population import patient_by_name
    from fedtwin.errors import ConfigError

    if substeps < 1 or substeps > 16:
        raise ConfigError(f"--substeps: must be in 1..16, got {substeps}")
    if population_seed is not None and population_seed < 0:
        raise ConfigError("--population-seed: must be >= 0")
    try:
        params = patient_by_name(patient, population_seed=population_seed)
    except ConfigError as exc:
        raise ConfigError(f"--patient: {exc}") from exc
    steps = read_actions_csv(actions)
    plan = OpenLoopPlan(
        cho_announced_g=torch.from_numpy(steps.cho_g_per_min)[None],
        insulin_u_per_min=torch.from_numpy(steps.insulin_u_per_min)[None],
    )
    trajectory = run_plan(params, plan, step_min=1, substeps=substeps)
    write_glucose_csv(out, trajectory.bg_mg_dl[0].numpy())
    typer.echo(f"{out}: {steps.minutes} minutes of {params.names[0]}")


_GENERATE_FLAGS = {
    "kind": "--kind",
    "sites": "--sites",
    "patients": "--patients",
    "days": "--days",
    "seed": "--seed",
    "split": "--split",
    "consent_regime": "--consent-regime",
    "population": "--population",
    "batch_patients": "--batch-patients",
    "gamma": "--gamma",
}


@app.command()
def generate(
    kind: Annotated[str, typer.Option(help="t1d (UVA/Padova) or oncology (tumour growth)")],
    sites: Annotated[int, typer.Option(help="number of hospital sites")],
    patients: Annotated[int, typer.Option(help="virtual patients per site")],
    days: Annotated[float, typer.Option(help="simulated days per patient")],
    out: Annotated[Path, typer.Option(help="folder to create: one sub-folder per site")],
    seed: Annotated[int, typer.Option(help="seed of every random choice")] = 0,
    split: Annotated[
        str, typer.Option(help="how sites differ: iid, age, meals (t1d only) or size")
    ] = "iid",
    consent_regime: Annotated[
        str, typer.Option(help="patients' consents: opt-in, opt-out or mixed (alternating)")
    ] = "opt-in",
    population: Annotated[
        str, typer.Option(help="t1d: sampled new patients, or the 30 published (faster)")
    ] = "sampled",
    batch_patients: Annotated[
        int, typer.Option(help="patients simulated and written together (bounds memory)")
    ] = 500,
    gamma: Annotated[
        float, typer.Option(help="oncology: confounding of treatment by tumour size (0-10)")
    ] = 2.0,
) -> None:
    """Write one Bulk FHIR export per site, and the ground truth apart in OUT/ground_truth.

    Each site folder holds Patient, Observation (CGM LOINC 99504-3 in mg/dL, carbohydrate,
    weight; or tumour size), MedicationAdministration (insulin; or chemotherapy), Procedure
    (radiotherapy) and Consent NDJSON, as ``fedtwin site check --data`` reads it. Nothing is
    left behind if generation fails or is interrupted.
    """
    import sys

    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from fedtwin.cli.app import validation_line
    from fedtwin.cohorts.generate import GenerateConfig, generate_cohort
    from fedtwin.errors import ConfigError

    values = {
        "kind": kind,
        "sites": sites,
        "patients": patients,
        "days": days,
        "seed": seed,
        "split": split,
        "consent_regime": consent_regime,
        "population": population,
        "batch_patients": batch_patients,
        "gamma": gamma,
    }
    try:
        config = GenerateConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(validation_line(error, _GENERATE_FLAGS)) from error
    console = Console(stderr=True)
    interactive = console.is_terminal
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f} %"),
        TimeRemainingColumn(),
        console=console,
        disable=not interactive,
        transient=True,
    ) as bars:
        tasks: dict[str, object] = {}
        finished: set[str] = set()

        def progress(site: str, fraction: float, number: int, count: int) -> None:
            if site not in tasks:
                tasks[site] = bars.add_task(f"{site} ({number}/{count})", total=1.0)
            bars.update(tasks[site], completed=min(fraction, 1.0))  # type: ignore[arg-type]
            if fraction >= 1.0 and not interactive and site not in finished:
                finished.add(site)
                print(f"{site}: done ({number}/{count})", file=sys.stderr, flush=True)

        generated = generate_cohort(config, out, progress=progress)
    total = sum(g.plan.n_patients for g in generated)
    typer.echo(
        f"{out}: {len(generated)} {config.kind.value} sites, {total} patients, "
        f"{config.days:g} days each; ground truth in {out / 'ground_truth'}"
    )
