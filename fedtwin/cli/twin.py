"""``fedtwin twin``: use a trained glucose twin for one patient at a site.

``forecast`` writes rolling forecasts with 90 % bands from a device CSV history; ``what-if``
ranks treatment plans by a clinical objective and plots the trajectories; the ``oncology-*``
commands (:mod:`fedtwin.cli.twin_oncology`) do the same for the oncology twin. Only typer,
rich and the standard library are imported at module level; torch and the twin runtime are
imported inside the commands so that ``fedtwin --help`` stays fast. Every bad input is a
``ConfigError``/``IngestError`` (exit 2, one line) raised before any output file exists.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedtwin.cli.twin_evaluate import evaluate
from fedtwin.cli.twin_oncology import oncology_forecast, oncology_train, oncology_what_if

app = typer.Typer(
    name="twin",
    help="Use a trained twin (glucose; oncology-*): forecasts and what-if treatment comparison.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)


class FutureTreatment(StrEnum):
    """Where the insulin and carbohydrate after a forecast origin come from."""

    RECORDED = "recorded"
    BASAL = "basal"


ModelOption = Annotated[
    Path, typer.Option("--model", help="run directory with model.safetensors + model_card.json")
]
HistoryOption = Annotated[
    Path,
    typer.Option("--history", help="device CSV: time,glucose_mg_dl,insulin_u,carbs_g"),
]


@app.command()
def forecast(
    model: ModelOption,
    history: HistoryOption,
    out: Annotated[
        Path, typer.Option(help="CSV to write: origin,time,glucose_mg_dl,lower_mg_dl,upper_mg_dl")
    ],
    horizon_min: Annotated[
        int, typer.Option(help="forecast horizon, a multiple of 5 up to the model's")
    ] = 30,
    last: Annotated[bool, typer.Option("--last", help="only the latest forecast origin")] = False,
    future_treatment: Annotated[
        FutureTreatment,
        typer.Option(
            help="insulin/carbs after each origin: 'basal' (default: strictly prospective, "
            "nothing after the origin's row is read) or 'recorded' (the history's later rows as "
            "the plan, basal continued past its end)"
        ),
    ] = FutureTreatment.BASAL,
) -> None:
    """Rolling forecasts: one per history row after the warm-up, 90 % band, 5-min steps."""
    from fedtwin.cli.twin_forecast import run_forecast_command

    count = run_forecast_command(
        model, history, out, horizon_min, last=last, basal_only=future_treatment == "basal"
    )
    console.print(f"{out}: {count} forecast origin(s), {horizon_min} min each", markup=False)


@app.command("what-if")
def what_if(
    model: ModelOption,
    history: HistoryOption,
    plans: Annotated[Path, typer.Option(help="plans JSON (schema: fedtwin.twins.PlansFile)")],
    plot: Annotated[
        Path | None, typer.Option(help="PNG to write: trajectories with 90 % bands")
    ] = None,
) -> None:
    """Roll the patient forward under each plan and rank the plans by the clinical objective."""
    from fedtwin.cli.twin_whatif import run_what_if_command

    run_what_if_command(model, history, plans, plot, console)


app.command("evaluate")(evaluate)
app.command("oncology-forecast")(oncology_forecast)
app.command("oncology-what-if")(oncology_what_if)
app.command("oncology-train")(oncology_train)
