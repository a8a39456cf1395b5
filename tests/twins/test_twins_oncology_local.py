"""On-site oncology training: every patient accounted for, gaps not bridged, seeded training."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from fedtwin.errors import ConfigError
from fedtwin.fhir import OncologySeries
from fedtwin.twins import OncologyTrainingConfig, OncologyTwinConfig
from fedtwin.twins.oncology_files import UNKNOWN_PATIENT_TYPE
from fedtwin.twins.oncology_local import train_site_twin, tumour_series_of

SMALL = OncologyTwinConfig(
    horizon_days=3, treatment_lag_days=2, channels=8, hidden=16, dilations=(1, 2)
)


def _patient(index: int, volume: list[float]) -> OncologySeries:
    values = np.asarray(volume, dtype=np.float32)
    days = values.shape[0]
    return OncologySeries(
        patient_id=f"p{index}",
        pseudonym=f"x{index}",
        start=datetime(2026, 1, 5, tzinfo=UTC),
        tumour_volume_cm3=values,
        tumour_mask=~np.isnan(values),
        chemo_mg=np.where(np.arange(days) % 3 == 1, 5.0, 0.0).astype(np.float32),
        radio_gy=np.where(np.arange(days) % 4 == 2, 2.0, 0.0).astype(np.float32),
    )


def _cohort(count: int = 8, days: int = 20) -> list[OncologySeries]:
    rng = np.random.default_rng(4)
    return [
        _patient(i, list(10.0 * np.exp(np.cumsum(rng.normal(-0.01, 0.05, days)))))
        for i in range(count)
    ]


def test_days_after_a_missing_measurement_are_counted_not_bridged() -> None:
    nan = float("nan")
    patients = [
        _patient(0, [1.0, 1.1, nan, 1.3, 1.4]),
        _patient(1, [2.0, nan, 2.2]),
        _patient(2, [3.0, 3.1, 3.2, nan, nan]),
    ]
    data = tumour_series_of(patients)
    assert (data.patients_used, data.patients_too_short, data.days_after_a_gap) == (2, 1, 3)
    assert data.series.days == 3
    seen = (~torch.isnan(data.series.volume_cm3)).sum(1).tolist()
    assert seen == [2, 3]
    assert data.series.chemo[0].tolist() == [False, True, False]
    assert bool((data.series.patient_type == UNKNOWN_PATIENT_TYPE).all())


def test_fewer_than_two_usable_patients_is_refused() -> None:
    with pytest.raises(ConfigError, match="1 usable oncology patient"):
        tumour_series_of([_patient(0, [1.0, 1.1]), _patient(1, [1.0])])


def test_training_is_reproducible_from_its_seed() -> None:
    data = tumour_series_of(_cohort())
    training = OncologyTrainingConfig(epochs=2, batch_patients=4)
    first, summary = train_site_twin(data, SMALL, training, seed=7)
    second, _ = train_site_twin(data, SMALL, training, seed=7)
    other, _ = train_site_twin(data, SMALL, training, seed=8)
    assert summary.epochs == 2 and len(summary.validation_loss) == 2
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not torch.equal(first.state_dict()["input.weight"], other.state_dict()["input.weight"])
