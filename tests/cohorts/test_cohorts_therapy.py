"""Meal scenario, basal-bolus controller, pump limits, hypo treatment and CGM sensor."""

from __future__ import annotations

import pytest
import torch

from fedtwin.cohorts import (
    DEFAULT_MEALS,
    BasalBolusController,
    BehaviourNoise,
    CGMSensor,
    HypoTreatment,
    PumpLimits,
    SensorParams,
    VirtualPatientParams,
    cgm_noise_mg_dl,
    meal_size_scale,
    random_meal_scenario,
)
from fedtwin.errors import ConfigError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_scenario_meals_are_in_windows_and_sized() -> None:
    days = 20
    meals = random_meal_scenario(50, days * 1440, gen(1))
    assert meals.shape == (50, days * 1440) and meals.dtype == torch.float64
    assert torch.equal(meals, torch.round(meals)) and bool((meals >= 0).all())
    by_minute_of_day = meals.reshape(50, days, 1440)
    assert float(by_minute_of_day[:, :, : 5 * 60].sum()) == 0.0  # nothing before 5:00
    assert float(by_minute_of_day[:, :, 23 * 60 + 1 :].sum()) == 0.0  # nothing after 23:00
    per_day = float(meals.sum()) / (50 * days)
    expected = sum(m.probability * m.carbs_mean_g for m in DEFAULT_MEALS)
    assert abs(per_day - expected) < 5.0
    events = int((meals > 0).sum())
    expected_events = sum(m.probability for m in DEFAULT_MEALS) * 50 * days
    assert abs(events - expected_events) < 0.05 * expected_events


def test_scenario_is_seeded_and_start_shifts_clock() -> None:
    a = random_meal_scenario(4, 2880, gen(3))
    assert torch.equal(a, random_meal_scenario(4, 2880, gen(3)))
    assert not torch.equal(a, random_meal_scenario(4, 2880, gen(4)))
    shifted = random_meal_scenario(4, 2880, gen(3), start_minute_of_day=360)
    assert torch.equal(shifted[:, : 2880 - 360], a[:, 360:])


def test_children_eat_less() -> None:
    params = VirtualPatientParams.select(["child#008", "adult#001"])
    scale = meal_size_scale(params)
    assert float(scale[1]) == 1.0 and 0.5 <= float(scale[0]) < 0.5 + 1e-9
    meals = random_meal_scenario(2, 10 * 1440, gen(0), carb_scale=scale)
    assert float(meals[0].sum()) < 0.7 * float(meals[1].sum())
    with pytest.raises(ConfigError):
        random_meal_scenario(2, 10, gen(0), carb_scale=torch.ones(3))


def test_pump_rounds_and_clips() -> None:
    pump = PumpLimits()
    assert pump.bolus_u(torch.tensor([0.024, 0.026, 3.333, 45.0, -1.0])).tolist() == pytest.approx(
        [0.0, 0.05, 3.35, 30.0, 0.0]
    )
    rates = pump.basal_u_per_min(torch.tensor([0.836 / 60, 40.0 / 60]))
    assert (rates * 60).tolist() == pytest.approx([0.85, 30.0])
    cozmo = PumpLimits.cozmo()
    assert cozmo.bolus_u(torch.tensor([80.0])).tolist() == [75.0]
    assert (cozmo.basal_u_per_min(torch.tensor([40.0 / 60])) * 60).tolist() == pytest.approx([35.0])


def test_ideal_bolus_formula() -> None:
    params = VirtualPatientParams.select(["adolescent#001", "adolescent#001"])
    ctl = BasalBolusController(params, gen(0), behaviour=BehaviourNoise.none())
    cr, cf = 12.0, 15.0360283441
    bolus = ctl.bolus_u(torch.tensor([200.0, 120.0]), torch.tensor([60.0, 60.0]))
    assert bolus.tolist() == pytest.approx(
        [round((60 / cr + 60 / cf) / 0.05) * 0.05, 5.0], abs=1e-9
    )
    assert ctl.bolus_u(torch.tensor([300.0, 300.0]), torch.zeros(2)).tolist() == [0.0, 0.0]
    rate = ctl.insulin_u_per_min(torch.tensor([100.0, 100.0]), torch.tensor([0.0, 12.0]))
    assert (rate - ctl.basal_u_per_min).tolist() == pytest.approx([0.0, 1.0])


def test_behaviour_noise_differs_between_twins_and_can_miss() -> None:
    params = VirtualPatientParams.select(["adult#003"] * 200)
    ctl = BasalBolusController(params, gen(5))
    bolus = ctl.bolus_u(torch.full((200,), 100.0), torch.full((200,), 50.0))
    assert len(set(bolus.tolist())) > 20
    always_miss = BasalBolusController(params, gen(5), behaviour=BehaviourNoise(0.1, 0.1, 1.0))
    assert (
        float(always_miss.bolus_u(torch.full((200,), 100.0), torch.full((200,), 50.0)).sum()) == 0
    )


def test_hypo_treatment() -> None:
    rule = HypoTreatment()
    cgm = torch.tensor([60.0, 60.0, 80.0])
    since = torch.tensor([float("inf"), 10.0, float("inf")])
    assert rule.rescue_carbs_g(cgm, since).tolist() == [15.0, 0.0, 0.0]
    assert HypoTreatment.off().rescue_carbs_g(cgm, since).tolist() == [0.0, 0.0, 0.0]


def test_sensor_noise_statistics_and_range() -> None:
    noise = cgm_noise_mg_dl(100, 2000, gen(0))
    assert noise.shape == (100, 2000)
    assert 3.0 < float(noise.std()) < 20.0
    assert abs(float(noise.mean())) < 5.0
    assert torch.equal(noise, cgm_noise_mg_dl(100, 2000, gen(0)))
    # 5-minute samples are linear between 15-minute points: second differences vanish inside.
    second = noise[:, 0:6:1].diff(n=2, dim=1)
    assert float(second[:, [0, 3]].abs().max()) < 1e-9
    sensor = CGMSensor(3, 10, gen(1))
    reading = sensor.read(torch.tensor([10.0, 120.0, 900.0]), 4)
    assert reading[0] == 39.0 and reading[2] == 600.0
    assert float(reading[1]) == pytest.approx(120.0 + float(sensor.noise_mg_dl[1, 4]))
    with pytest.raises(ConfigError):
        sensor.read(torch.zeros(3), 10)
    with pytest.raises(ConfigError):
        SensorParams(pacf=1.0)
