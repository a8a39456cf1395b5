"""Exogenous T1D scenarios: per-patient streams, drop-outs, missed boluses, exercise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedtwin.cohorts import (
    BasalBolusPlan,
    BehaviourNoise,
    ExerciseHabit,
    ExerciseModel,
    ExerciseState,
    ScenarioConfig,
    SensorDropout,
    VirtualPatientParams,
    draw_scenario,
    replay,
)
from fedtwin.errors import ConfigError

NAMES = ["adult#002", "child#003", "adolescent#009"]


@pytest.fixture(scope="module")
def params() -> VirtualPatientParams:
    return VirtualPatientParams.select(NAMES)


def test_a_patients_scenario_does_not_depend_on_the_batch(params: VirtualPatientParams) -> None:
    together = draw_scenario(params, ScenarioConfig(), 2880, seed=9, patient_keys=[5, 6, 7])
    alone = draw_scenario(params.take([1]), ScenarioConfig(), 2880, seed=9, patient_keys=[6])
    mine = together.meal_row == 1
    assert torch.equal(together.meal_minute[mine], alone.meal_minute)
    assert torch.equal(together.meal_counted_g[mine], alone.meal_counted_g)
    # equal up to the last bit of vectorised sinh, which can depend on the row's SIMD lane
    assert torch.allclose(together.sensor_noise_mg_dl[1], alone.sensor_noise_mg_dl[0], rtol=1e-13)
    assert torch.equal(together.initial_state[1], alone.initial_state[0])


def test_a_longer_scenario_repeats_the_shorter_one(params: VirtualPatientParams) -> None:
    short = draw_scenario(params, ScenarioConfig(), 1440, seed=2, start_minute_of_day=300)
    long = draw_scenario(params, ScenarioConfig(), 4320, seed=2, start_minute_of_day=300)
    early = long.meal_minute < 1440
    assert torch.equal(long.meal_minute[early], short.meal_minute)
    assert torch.equal(long.meal_g[early], short.meal_g)
    assert torch.equal(long.sensor_noise_mg_dl[:, :288], short.sensor_noise_mg_dl)


def test_children_eat_smaller_meals_and_meals_sit_in_their_windows(
    params: VirtualPatientParams,
) -> None:
    scenario = draw_scenario(params.take([0, 1] * 20), ScenarioConfig(), 1440 * 5, seed=1)
    adult = scenario.meal_g[scenario.meal_row % 2 == 0].mean()
    child = scenario.meal_g[scenario.meal_row % 2 == 1].mean()
    assert float(child) < 0.8 * float(adult)
    clock = scenario.meal_minute % 1440
    assert bool(((clock >= 300) & (clock <= 1380)).all())


def test_dropouts_hide_about_the_expected_share_of_readings(params: VirtualPatientParams) -> None:
    config = ScenarioConfig(dropout=SensorDropout(episodes_per_day=2.0, mean_duration_min=60.0))
    scenario = draw_scenario(params.take([0] * 60), config, 1440 * 2, seed=4)
    share = float(scenario.sensor_missing.float().mean())
    assert 0.04 < share < 0.13  # about 2 h of 24 h
    run = replay(params.take([0] * 60), BasalBolusPlan(), scenario=scenario, until_minute=240)
    missing = torch.isnan(run.cgm_mg_dl)
    assert torch.equal(missing, scenario.sensor_missing[:, :48])


def test_forgotten_boluses_are_not_given(params: VirtualPatientParams) -> None:
    config = ScenarioConfig(behaviour=BehaviourNoise(0.0, 0.0, 1.0))
    scenario = draw_scenario(params, config, 1440, seed=3, start_minute_of_day=360)
    assert bool(scenario.bolus_missed.all()) and scenario.meal_g.numel() > 0
    first_meal = int(scenario.meal_minute.min())
    run = replay(params, BasalBolusPlan(), scenario=scenario, until_minute=first_meal // 5 * 5 + 30)
    assert float(run.bolus_u.sum()) == 0.0 and float(run.carbs_announced_g.sum()) > 0.0


def test_exercise_lowers_glucose_and_rest_is_neutral(params: VirtualPatientParams) -> None:
    config = ScenarioConfig(exercise=ExerciseHabit(sessions_per_week=7.0, time_mean_min=240.0))
    scenario = draw_scenario(params, config, 1440, seed=8)
    assert scenario.has_exercise
    empty = torch.zeros(0, dtype=torch.int64)
    rested = dataclasses.replace(
        scenario,
        exercise_row=empty,
        exercise_start_minute=empty,
        exercise_duration_min=empty,
        exercise_intensity=torch.zeros(0, dtype=torch.float64),
    )
    active = replay(params, BasalBolusPlan(), scenario=scenario, until_minute=480)
    calm = replay(params, BasalBolusPlan(), scenario=rested, until_minute=480)
    assert bool((active.bg_mg_dl.mean(dim=1) < calm.bg_mg_dl.mean(dim=1) - 2.0).all())
    state = ExerciseState(params["Vm0"], ExerciseModel())
    state.advance(torch.zeros(3, dtype=torch.float64))
    effect = state.effect()
    assert bool((effect.vmx_factor == 1.0).all() and (effect.vm0_increase_mg_kg_min == 0).all())


@pytest.mark.parametrize(
    ("minutes", "seed", "keys"),
    [(0, 1, None), (60, -1, None), (60, 1, [1, 2]), (60, 1, [-1, 0, 1])],
)
def test_bad_arguments_raise(
    params: VirtualPatientParams, minutes: int, seed: int, keys: list[int] | None
) -> None:
    with pytest.raises(ConfigError):
        draw_scenario(params, ScenarioConfig(), minutes, seed, patient_keys=keys)


def test_bad_habits_raise() -> None:
    with pytest.raises(ConfigError):
        SensorDropout(episodes_per_day=-1.0)
    with pytest.raises(ConfigError):
        ExerciseHabit(intensity=1.5)
