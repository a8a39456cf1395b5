"""The PNG of ``fedtwin twin oncology-what-if``: recent history and each plan's band.

Invariant: the figure shows exactly what the ranking used (the same twin state, plans and
horizon); bands are the twin's central 90 % interval of the volume on each day.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedtwin.twins.oncology_history import TumourHistory
    from fedtwin.twins.oncology_patient import OncologyPatientTwin, OncologyPlansFile
    from fedtwin.twins.oncology_whatif import RankedRegimen


def write_trajectories(
    twin: OncologyPatientTwin,
    history: TumourHistory,
    document: OncologyPlansFile,
    ranking: tuple[RankedRegimen, ...],
    path: Path,
) -> None:
    """Plot the last days of history and every plan's mean volume with its band to ``path``."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    from matplotlib import pyplot

    forecast = twin.forecast_plans(document.plans, document.horizon_days)
    low, high = (1.0 - twin.coverage) / 2.0, (1.0 + twin.coverage) / 2.0
    mean = forecast.volume_cm3.double().numpy()
    lower = forecast.quantile_cm3(low).double().numpy()
    upper = forecast.quantile_cm3(high).double().numpy()
    last = int(history.days[-1])
    ahead = np.arange(last + 1, last + 1 + document.horizon_days)
    shown = slice(max(0, len(history) - 3 * document.horizon_days), None)
    rank = {row.name: row.rank for row in ranking}
    figure, axes = pyplot.subplots(figsize=(9, 5), dpi=110)
    try:
        axes.plot(
            history.days[shown], history.volume_cm3[shown], "k.", markersize=4, label="measured"
        )
        for index in sorted(range(len(document.plans)), key=lambda i: rank[document.plans[i].name]):
            plan = document.plans[index]
            days = np.concatenate([[last], ahead])
            (line,) = axes.plot(
                days,
                np.concatenate([[history.volume_cm3[-1]], mean[index]]),
                label=f"{rank[plan.name]}. {plan.name}",
            )
            axes.fill_between(ahead, lower[index], upper[index], color=line.get_color(), alpha=0.15)
        axes.axvline(last, color="grey", linewidth=0.8, linestyle="--")
        axes.set_xlabel("day")
        axes.set_yscale("log")
        axes.set_ylabel("tumour volume (cm³, log scale)")
        axes.set_title(f"What-if: expected volume and {twin.coverage:.0%} band per plan")
        axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
