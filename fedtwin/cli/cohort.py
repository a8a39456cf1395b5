"""``fedtwin cohort``: virtual patient cohorts (replay one patient under given actions).

Only typer and the standard library are imported at module level; the simulator (torch) is
imported inside the command so that ``fedtwin --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="cohort",
    help="Virtual patient cohorts: the batched UVA/Padova simulator and its oracle replay.",
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
