"""``fedtwin twin evaluate RUN_DIR``: the run's twin against persistence and AR, per subgroup.

The evaluation itself is :func:`fedtwin.run_evaluation.evaluate_run` (its module
docstring gives the steps). Only typer, rich and the standard library are imported at module
level; the heavy modules are imported inside the command, so ``fedtwin --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(highlight=False)


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory (runs/<run-id>)")],
    as_json: Annotated[
        bool, typer.Option("--json", help="print the JSON document instead of the table")
    ] = False,
) -> None:
    """Score the run's twin on every site's held-out patients against persistence and AR."""
    from fedtwin.run_evaluation import evaluate_run

    result = evaluate_run(run_dir)
    from fedtwin.twins.evaluation import evaluation_table

    if as_json:
        typer.echo(json.dumps(result.document(), indent=2, sort_keys=True))
        return
    console.print(evaluation_table(result, title=f"Forecast quality of {run_dir.name}"))
