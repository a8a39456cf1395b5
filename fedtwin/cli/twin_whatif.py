"""``fedtwin twin what-if``: rank treatment plans for one patient; table and plot.

The plans file is validated as :class:`fedtwin.twins.PlansFile` (closed: an unknown field is
an error naming its path) before the model runs; the plot is written to a temporary name and
renamed only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from fedtwin.errors import ConfigError

if TYPE_CHECKING:
    from fedtwin.twins.whatif import PlanComparison, PlansFile


def read_plans(path: Path) -> PlansFile:
    """Parse and validate a plans JSON file (one line naming the first problem)."""
    from pydantic import ValidationError

    from fedtwin.twins.whatif import PlansFile

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"--plans: {path}: no such file") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"--plans: {path}: not readable JSON ({error})") from error
    try:
        return PlansFile.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "file"
        raise ConfigError(f"--plans: {path}: {where}: {first['msg']}") from error


def ranking_table(comparison: PlanComparison) -> Table:
    """The ranked plans as a rich table."""
    goal = comparison.objective
    table = Table(
        title=(
            f"Plans ranked by TIR - {goal.below_weight:g}·TBR "
            f"({goal.low_mg_dl:g}-{goal.high_mg_dl:g} mg/dL, "
            f"{int(comparison.minutes_ahead[-1])} min)"
        )
    )
    for column in ("rank", "plan", "score", "P(best)", "TIR %", "TBR %", "TAR %", "min mg/dL"):
        table.add_column(column, justify="left" if column == "plan" else "right")
    for outcome in comparison.outcomes:
        table.add_row(
            str(outcome.rank),
            outcome.name,
            f"{outcome.score_mean:.2f} ± {outcome.score_sd:.2f}",
            f"{outcome.p_best:.0%}",
            f"{100 * outcome.time_in_range:.0f}",
            f"{100 * outcome.time_below:.0f}",
            f"{100 * outcome.time_above:.0f}",
            f"{float(outcome.mean_mg_dl.min()):.0f}",
        )
    return table


def write_plot(comparison: PlanComparison, path: Path) -> None:
    """PNG of each plan's mean trajectory with its band and the target range."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 5), dpi=110)
    hours = comparison.minutes_ahead / 60.0
    goal = comparison.objective
    axes.axhspan(goal.low_mg_dl, goal.high_mg_dl, color="tab:green", alpha=0.08)
    for outcome in comparison.outcomes:
        (line,) = axes.plot(hours, outcome.mean_mg_dl, label=f"{outcome.rank}. {outcome.name}")
        axes.fill_between(
            hours, outcome.lower_mg_dl, outcome.upper_mg_dl, color=line.get_color(), alpha=0.15
        )
    axes.axhline(goal.low_mg_dl, color="tab:red", linewidth=0.8, linestyle="--")
    axes.axhline(goal.high_mg_dl, color="tab:orange", linewidth=0.8, linestyle="--")
    axes.set_xlabel("hours from the latest reading")
    axes.set_ylabel("CGM glucose (mg/dL)")
    axes.set_title(f"What-if: mean and {comparison.coverage:.0%} band per plan")
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    partial = path.with_name(path.name + ".partial")
    try:
        figure.savefig(partial, format="png")
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"--plot: cannot write {path} ({error.strerror or error})") from error
    finally:
        pyplot.close(figure)


def run_what_if_command(
    model_dir: Path, history_path: Path, plans_path: Path, plot: Path | None, console: Console
) -> None:
    """Validate inputs, compare the plans from the latest reading, print and plot."""
    plans = read_plans(plans_path)

    from fedtwin.twins.history import check_gaps, filled_cgm, forecast_origins, read_history
    from fedtwin.twins.runfile import load_twin_run
    from fedtwin.twins.twin import Twin

    run = load_twin_run(model_dir)
    history = read_history(history_path)
    origin = int(forecast_origins(history, run.config)[-1])
    first = origin - run.config.history_steps
    check_gaps(history, first, history.n_bins - 1)
    twin = Twin(run)
    rows = slice(first, origin + 1)
    twin.observe(filled_cgm(history)[rows], history.insulin_u[rows], history.carbs_g[rows])
    comparison = twin.compare(plans.plans, horizon_min=plans.horizon_min, objective=plans.objective)
    console.print(
        f"from the reading at {history.time_of(origin).isoformat()} "
        f"({history.cgm_mg_dl[origin]:.0f} mg/dL), basal {twin.current_basal_u_per_h:.2f} U/h",
        markup=False,
    )
    console.print(ranking_table(comparison))
    if plot is not None:
        write_plot(comparison, plot)
        console.print(f"{plot}: trajectories with bands", markup=False)
