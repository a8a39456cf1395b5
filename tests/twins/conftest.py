"""Fixtures of the twin runtime tests: one small simulated site and a twin trained on it.

The site's patients miss 30 % of their meal boluses and count carbohydrate loosely, so the
data hold meals with and without insulin (what a what-if needs to learn). Carbohydrate is the
*announced* amount in the bin of the meal, as in the FHIR exports and device CSVs. Everything
is seeded (site seed 11, torch seed 0); the whole setup takes about 15 s of one CPU core.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtwin.cohorts import (
    BehaviourNoise,
    CohortSeries,
    ScenarioConfig,
    SiteBatch,
    SiteSpec,
    simulate_site,
)
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig, PatientBatch, batch_windows
from fedtwin.twins.calibration import abs_z_histogram, fit_calibration
from fedtwin.twins.runfile import write_twin_run
from fedtwin.twins.training import PatientWindowDataset, train_non_private, usable_rows

TWIN_CONFIG = GlucoseTwinConfig(
    history_steps=24, horizon_steps=12, channels=32, dilations=(1, 2, 4)
)
SPLITS = {"train": range(0, 128), "calibration": range(128, 144), "test": range(144, 160)}
START = datetime(2025, 1, 6, tzinfo=UTC)


@pytest.fixture(scope="session")
def twin_site() -> SiteBatch:
    """160 sampled adults, one day each, loose carb counting and 30 % missed boluses."""
    spec = SiteSpec(
        site_id="twin-tests",
        n_patients=160,
        days=1.0,
        seed=11,
        scenario=ScenarioConfig(
            behaviour=BehaviourNoise(carb_count_log_sd=0.3, missed_bolus_probability=0.3)
        ),
    )
    (batch,) = simulate_site(spec, batch_patients=160, substeps=1)
    return batch


@pytest.fixture(scope="session")
def twin_series(twin_site: SiteBatch) -> CohortSeries:
    """The site as float32 series (CGM ``NaN`` where the sensor dropped out)."""
    trajectory = twin_site.trajectory
    return CohortSeries(
        patient_names=trajectory.names,
        cgm_mg_dl=trajectory.cgm_mg_dl.float(),
        bg_true_mg_dl=trajectory.bg_mg_dl.float(),
        insulin_u=trajectory.insulin_u.float(),
        carbs_g=trajectory.carbs_announced_g.float(),
    )


@pytest.fixture(scope="session")
def twin_patients(twin_series: CohortSeries) -> dict[str, PatientBatch]:
    """Train / calibration / test patients as patient batches for ``TWIN_CONFIG``."""
    batches = {}
    for name, rows in SPLITS.items():
        index = torch.as_tensor(list(rows))
        cgm = twin_series.cgm_mg_dl[index]
        batches[name] = PatientBatch.from_arrays(
            [twin_series.patient_names[i] for i in rows],
            cgm,
            twin_series.insulin_u[index],
            twin_series.carbs_g[index],
            ~torch.isnan(cgm),
            None,
            TWIN_CONFIG.history_steps,
            TWIN_CONFIG.horizon_steps,
        )
    return batches


@pytest.fixture(scope="session")
def trained_twin(twin_patients: dict[str, PatientBatch]) -> GlucoseTwin:
    """A small twin trained without privacy on the training patients (seeded)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train = twin_patients["train"]
    train = train.select(usable_rows(train, 4))
    model = GlucoseTwin(TWIN_CONFIG)
    dataset = PatientWindowDataset(train, generator, windows_per_patient=4)
    train_non_private(
        model, dataset, steps=250, batch_size=32, learning_rate=4e-3, generator=generator
    )
    return model.eval()


@pytest.fixture(scope="session")
def twin_run_dir(
    tmp_path_factory: pytest.TempPathFactory,
    trained_twin: GlucoseTwin,
    twin_patients: dict[str, PatientBatch],
) -> Path:
    """A run directory of the trained twin, calibrated on the calibration patients."""
    run_dir = tmp_path_factory.mktemp("twin-run")
    windows = batch_windows(twin_patients["calibration"], stride=2)
    calibration = fit_calibration(abs_z_histogram(trained_twin, windows))
    write_twin_run(
        run_dir,
        trained_twin,
        calibration=calibration,
        card_fields={"rounds_completed": 0, "contributors": [], "data": "twin-tests site"},
    )
    return run_dir


WriteDeviceCsv = Callable[..., Path]


def _write_device_csv(
    path: Path,
    cgm_mg_dl: np.ndarray,
    insulin_u: np.ndarray,
    carbs_g: np.ndarray,
    start: datetime = START,
) -> Path:
    """One row per 5-min bin; a ``NaN`` reading is an empty glucose cell."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "glucose_mg_dl", "insulin_u", "carbs_g"])
        for k, (glucose, units, grams) in enumerate(
            zip(cgm_mg_dl.tolist(), insulin_u.tolist(), carbs_g.tolist(), strict=True)
        ):
            writer.writerow(
                [
                    (start + timedelta(minutes=5 * k)).isoformat(),
                    "" if np.isnan(glucose) else f"{glucose:.1f}",
                    f"{units:.4f}",
                    f"{grams:g}",
                ]
            )
    return path


@pytest.fixture(scope="session")
def write_device_csv() -> WriteDeviceCsv:
    """Writes a device CSV (see ``_write_device_csv``)."""
    return _write_device_csv
