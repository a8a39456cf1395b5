"""``fedtwin twin oncology-*``: an oncology twin for one patient at a site.

``oncology-forecast`` writes the tumour volume forecast under one plan with its band;
``oncology-what-if`` ranks plans by tumour burden against cumulative dose and plots the
trajectories; ``oncology-train`` trains a twin on the site's own FHIR export (on site, no
differential privacy). Formats: docs/twin.md, :mod:`fedtwin.twins.oncology_history`,
:class:`fedtwin.twins.oncology_patient.OncologyPlansFile`.

Every input is checked (model kind and tensors, history rows, plan fields) before any output
exists; outputs are written under a temporary name and renamed, so a failure leaves nothing
under ``--out``/``--png``. Only typer, rich and the standard library are imported at module
level; torch and the twin runtime are imported inside the commands.
"""

from __future__ import annotations

import csv
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedtwin.errors import ConfigError

if TYPE_CHECKING:
    from fedtwin.twins.oncology_history import TumourHistory
    from fedtwin.twins.oncology_patient import OncologyPatientTwin
    from fedtwin.twins.oncology_whatif import RankedRegimen

FORECAST_COLUMNS = (
    "day",
    "tumour_volume_cm3",
    "lower_cm3",
    "upper_cm3",
    "chemo_dose_mg",
    "radio_dose_gy",
)
#: Who uses the data by default: the consortium that consents name (fedtwin's generator).
CONSORTIUM_ACTOR = "Organization/fedtwin-consortium"
console = Console(highlight=False)

ModelOption = Annotated[
    Path,
    typer.Option("--model", help="oncology twin: a .safetensors file or a run directory"),
]
HistoryOption = Annotated[
    Path,
    typer.Option("--history", help="CSV: day,tumour_volume_cm3,chemo_dose_mg,radio_dose_gy"),
]
PatientTypeOption = Annotated[
    int | None,
    typer.Option(help="patient type 1-3, only for a twin trained with patient types"),
]


def _validation_line(error: Any, flag: str, path: Path) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "file"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{flag}: {path}: {where}: {message}"


def _read_json(path: Path, flag: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{flag}: {path}: no such file") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{flag}: {path}: not readable JSON ({error})") from error


def _patient_twin(
    model: Path, history_path: Path, patient_type: int | None
) -> tuple[OncologyPatientTwin, TumourHistory]:
    """Load the twin, read the history, check its length, observe it."""
    from fedtwin.twins.oncology_files import load_oncology_twin
    from fedtwin.twins.oncology_history import read_tumour_history
    from fedtwin.twins.oncology_patient import OncologyPatientTwin

    loaded = load_oncology_twin(model)
    history = read_tumour_history(history_path)
    # the plan's first days read the treatments of the P - 1 days before the origin
    needed = max(2, loaded.config.treatment_lag_days)
    if len(history) < needed:
        raise ConfigError(
            f"{history_path}: {len(history)} day(s) of history; this twin needs at least "
            f"{needed} (the treatment days its forecast reads)"
        )
    try:
        twin = OncologyPatientTwin(loaded, patient_type=patient_type)
    except ConfigError as error:
        raise ConfigError(f"--patient-type: {error}") from error
    twin.observe(
        history.volume_cm3, history.chemo_mg, history.radio_gy, first_day=history.first_day
    )
    return twin, history


def _replace_atomically(out: Path, flag: str, write: Any) -> None:
    partial = out.with_name(out.name + ".partial")
    try:
        write(partial)
        partial.replace(out)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"{flag}: cannot write {out} ({error.strerror or error})") from error
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def oncology_forecast(
    model: ModelOption,
    history: HistoryOption,
    out: Annotated[Path, typer.Option(help="CSV to write: " + ",".join(FORECAST_COLUMNS))],
    horizon_days: Annotated[int, typer.Option(help="days to forecast (1-366)")] = 28,
    plan: Annotated[
        Path | None,
        typer.Option(help='plan JSON {"name", "chemo_days", "radio_days"}; default: none'),
    ] = None,
    patient_type: PatientTypeOption = None,
) -> None:
    """Forecast the tumour volume after the last history day under a plan, 90 % band."""
    from pydantic import ValidationError

    from fedtwin.twins.oncology_patient import OncologyPlan

    chosen = None
    if plan is not None:
        try:
            chosen = OncologyPlan.model_validate(_read_json(plan, "--plan"))
        except ValidationError as error:
            raise ConfigError(_validation_line(error, "--plan", plan)) from error
    twin, _ = _patient_twin(model, history, patient_type)
    try:
        result = twin.forecast(chosen, horizon_days)
    except ConfigError as error:
        raise ConfigError(f"--horizon-days: {error}") from error

    def write(path: Path) -> None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(FORECAST_COLUMNS)
            for k, day in enumerate(result.days.tolist()):
                writer.writerow(
                    (
                        day,
                        f"{result.volume_cm3[k]:.4g}",
                        f"{result.lower_cm3[k]:.4g}",
                        f"{result.upper_cm3[k]:.4g}",
                        f"{result.chemo_mg[k]:g}",
                        f"{result.radio_gy[k]:g}",
                    )
                )
            handle.flush()
            os.fsync(handle.fileno())

    _replace_atomically(out, "--out", write)
    console.print(
        f"{out}: days {result.days[0]}-{result.days[-1]} under "
        f"{(chosen.name if chosen else 'no treatment')!r}, {result.coverage:.0%} band",
        markup=False,
    )


def ranking_table(ranking: tuple[RankedRegimen, ...], horizon_days: int, origin: float) -> Table:
    """The ranked plans as a rich table (intervals are the twin's 90 % band)."""
    from fedtwin.cohorts.oncology import CHEMO_DOSE

    table = Table(
        title=f"Plans ranked by tumour burden + dose ({horizon_days} days, 90 % intervals)"
    )
    for column in ("rank", "plan", "objective", "final cm³", "final % now", "chemo mg", "Gy"):
        table.add_column(column, justify="left" if column == "plan" else "right")
    for row in ranking:
        table.add_row(
            str(row.rank),
            row.name,
            f"{row.objective:.1f} [{row.objective_low:.1f}, {row.objective_high:.1f}]",
            f"{row.final_volume_cm3:.3g} [{row.final_volume_low_cm3:.3g}, "
            f"{row.final_volume_high_cm3:.3g}]",
            f"{100 * row.final_volume_cm3 / origin:.0f}",
            f"{CHEMO_DOSE * row.chemo_doses:g}",
            f"{row.radio_gy:g}",
        )
    return table


def oncology_what_if(
    model: ModelOption,
    history: HistoryOption,
    plans: Annotated[Path, typer.Option(help="plans JSON: horizon_days, objective, plans")],
    png: Annotated[
        Path | None, typer.Option(help="PNG to write: trajectories with 90 % bands")
    ] = None,
    patient_type: PatientTypeOption = None,
) -> None:
    """Roll the patient forward under each plan; rank by tumour burden and cumulative dose."""
    from pydantic import ValidationError

    from fedtwin.twins.oncology_patient import OncologyPlansFile

    try:
        document = OncologyPlansFile.model_validate(_read_json(plans, "--plans"))
    except ValidationError as error:
        raise ConfigError(_validation_line(error, "--plans", plans)) from error
    twin, recorded = _patient_twin(model, history, patient_type)
    ranking = twin.compare(document.plans, document.horizon_days, document.objective)
    origin = float(recorded.volume_cm3[-1])
    console.print(
        f"from day {twin.last_day} ({origin:.3g} cm³), {len(document.plans)} plan(s)",
        markup=False,
    )
    console.print(ranking_table(ranking, document.horizon_days, origin))
    if png is not None:
        from fedtwin.cli.twin_oncology_plot import write_trajectories

        _replace_atomically(
            png, "--png", lambda path: write_trajectories(twin, recorded, document, ranking, path)
        )
        console.print(f"{png}: trajectories with bands", markup=False)


def oncology_train(
    cohort: Annotated[
        Path, typer.Option(help="the site's Bulk FHIR export folder (Patient.ndjson, ...)")
    ],
    out: Annotated[Path, typer.Option(help="model to write: FILE.safetensors, or a run directory")],
    epochs: Annotated[int, typer.Option(help="training epochs (early-stopped)")] = 30,
    seed: Annotated[int, typer.Option(help="seed of initialisation, split and order")] = 0,
    regime: Annotated[str, typer.Option(help="consent regime: opt-in or opt-out")] = "opt-in",
    actor: Annotated[
        list[str] | None,
        typer.Option(help="who uses the data, as consents name it (repeat)"),
    ] = None,
) -> None:
    """Train an oncology twin on this site's patients (on site, non-private; it stays here)."""
    if not 1 <= epochs <= 1000:
        raise ConfigError(f"--epochs: must be 1-1000, got {epochs}")
    if regime not in ("opt-in", "opt-out"):
        raise ConfigError(f"--regime: {regime!r} is not opt-in or opt-out")
    if not (cohort / "Patient.ndjson").is_file():
        raise ConfigError(f"--cohort: {cohort}: not a site export (no Patient.ndjson)")
    taken = out.is_file() or (
        out.is_dir()
        and any((out / name).exists() for name in ("model.safetensors", "model_card.json"))
    )
    if taken:
        raise ConfigError(f"--out: {out} already holds a model; choose a new path")
    import secrets

    from fedtwin.fhir import read_site
    from fedtwin.twins.oncology import OncologyTwinConfig
    from fedtwin.twins.oncology_files import PatientTypeInput, save_oncology_twin
    from fedtwin.twins.oncology_local import (
        research_permitted,
        train_site_twin,
        tumour_series_of,
    )
    from fedtwin.twins.oncology_training import OncologyTrainingConfig

    training = OncologyTrainingConfig(epochs=epochs, batch_patients=32)
    at = datetime.now(UTC)
    # pseudonyms are not written anywhere: a throwaway key
    export = read_site(cohort, secret=secrets.token_bytes(32))
    actors = tuple(actor or (CONSORTIUM_ACTOR,))
    permitted, denied = research_permitted(
        export.oncology, export.consents, at=at, regime=regime, actors=actors
    )
    data = tumour_series_of(permitted)
    twin, summary = train_site_twin(data, OncologyTwinConfig(), training, seed=seed)
    card = {
        "training": {
            "kind": "on-site, non-private",
            "epochs_run": summary.epochs,
            "best_epoch": summary.best_epoch,
            "best_validation_loss": min(summary.validation_loss),
            "seed": seed,
            "patients_used": data.patients_used,
            "patients_denied_by_consent": denied,
            "patients_too_short": data.patients_too_short,
            "days_after_a_gap_unused": data.days_after_a_gap,
            "consent_regime": regime,
            "consent_actors": list(actors),
            "consent_decided_at": at.isoformat(),
        }
    }
    version = save_oncology_twin(out, twin, patient_type=PatientTypeInput.UNKNOWN, card_fields=card)
    console.print(
        f"{out}: oncology twin {version[:19]}…, {data.patients_used} patient(s) used, "
        f"{denied} denied by consent, {data.patients_too_short} too short; "
        f"{summary.epochs} epoch(s), best {summary.best_epoch + 1}",
        markup=False,
    )
