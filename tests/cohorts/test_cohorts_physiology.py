"""Physiological sanity of BatchedT1DPatient and its input checks."""

from __future__ import annotations

import pytest
import torch

from fedtwin.cohorts import (
    EAT_RATE_G_PER_MIN,
    BatchedT1DPatient,
    PumpLimits,
    VirtualPatientParams,
    all_patient_names,
)
from fedtwin.errors import ConfigError


def run(
    patient: BatchedT1DPatient, minutes: int, insulin: torch.Tensor, meal_g: float = 0.0
) -> torch.Tensor:
    batch = patient.batch_size
    bg = torch.empty(batch, minutes, dtype=torch.float64)
    for t in range(minutes):
        cho = torch.full((batch,), meal_g if t == 0 else 0.0, dtype=torch.float64)
        bg[:, t] = patient.bg_mg_dl
        patient.step(cho, insulin)
    return bg


def test_basal_only_stays_at_gb() -> None:
    params = VirtualPatientParams.population()
    bg = run(BatchedT1DPatient(params), 360, params.basal_u_per_min)
    assert (bg - params.basal_glucose_mg_dl[:, None]).abs().max() < 1e-3


def test_pump_rounded_basal_stays_near_gb() -> None:
    params = VirtualPatientParams.population()
    basal = PumpLimits().basal_u_per_min(params.basal_u_per_min)
    bg = run(BatchedT1DPatient(params), 360, basal)
    assert (bg - params.basal_glucose_mg_dl[:, None]).abs().max() < 15.0


def test_meal_raises_and_insulin_lowers_glucose() -> None:
    params = VirtualPatientParams.select(list(all_patient_names()))
    basal = params.basal_u_per_min
    baseline = run(BatchedT1DPatient(params), 240, basal)
    meal = run(BatchedT1DPatient(params), 240, basal, meal_g=50.0)
    assert torch.all(meal.max(dim=1).values > params.basal_glucose_mg_dl + 20.0)
    more_insulin = run(BatchedT1DPatient(params), 240, 2.0 * basal)
    assert torch.all(more_insulin[:, -1] < baseline[:, -1] - 5.0)


def test_meal_is_eaten_at_eat_rate_and_bookkept() -> None:
    patient = BatchedT1DPatient(VirtualPatientParams.select(["adult#002", "adult#002"]))
    basal = patient.basal_u_per_min
    eaten = []
    for t in range(20):
        cho = torch.tensor([23.0 if t == 0 else 0.0, 4.0 if t in (0, 1) else 0.0])
        eaten.append(patient.step(cho, basal))
        if t == 0:
            assert patient.is_eating.tolist() == [True, True]
            assert patient.planned_meal_g.tolist() == [18.0, 0.0]
    total = torch.stack(eaten, dim=1)
    assert total[0, :5].tolist() == [EAT_RATE_G_PER_MIN] * 4 + [3.0]
    assert total[1, :3].tolist() == [4.0, 4.0, 0.0]
    assert total.sum(dim=1).tolist() == [23.0, 8.0]
    assert patient.is_eating.tolist() == [False, False]
    assert patient.minute == 20


def test_step_rejects_bad_inputs() -> None:
    patient = BatchedT1DPatient(VirtualPatientParams.select(["adult#001"]))
    with pytest.raises(ConfigError):
        patient.step(torch.tensor([-1.0]), torch.tensor([0.0]))
    with pytest.raises(ConfigError):
        patient.step(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    with pytest.raises(ConfigError):
        BatchedT1DPatient(VirtualPatientParams.select(["adult#001"]), substeps=0)
    with pytest.raises(ConfigError):
        BatchedT1DPatient(
            VirtualPatientParams.select(["adult#001"]), initial_state=torch.zeros(2, 13)
        )


def test_reset_restores_initial_state() -> None:
    params = VirtualPatientParams.select(["child#002"])
    patient = BatchedT1DPatient(params)
    run(patient, 30, params.basal_u_per_min, meal_g=30.0)
    patient.reset()
    assert patient.minute == 0 and torch.equal(patient.state, params.initial_state)
