"""Treatment plans replayed from checkpoints: bit-identical continuation and counterfactuals."""

from __future__ import annotations

import math

import pytest
import torch

from fedtwin.cohorts import (
    BasalBolusPlan,
    OpenLoopPlan,
    RunCheckpoint,
    ScenarioConfig,
    T1DTrajectory,
    VirtualPatientParams,
    draw_scenario,
    replay,
)
from fedtwin.errors import ConfigError

NAMES = ("adolescent#003", "adult#005", "child#007")
MINUTES = 720


@pytest.fixture(scope="module")
def params() -> VirtualPatientParams:
    return VirtualPatientParams.select(NAMES)


@pytest.fixture(scope="module")
def scenario(params: VirtualPatientParams):  # type: ignore[no-untyped-def]
    return draw_scenario(params, ScenarioConfig(), MINUTES, seed=5, start_minute_of_day=360)


@pytest.fixture(scope="module")
def full_run(params: VirtualPatientParams, scenario) -> T1DTrajectory:  # type: ignore[no-untyped-def]
    return replay(params, BasalBolusPlan(), scenario=scenario)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(torch.nan_to_num(a, nan=-1.0), torch.nan_to_num(b, nan=-1.0))


def open_loop(params: VirtualPatientParams, minutes: int) -> OpenLoopPlan:
    cho = torch.zeros(params.batch_size, minutes, dtype=torch.float64)
    cho[:, 60] = 60.0
    insulin = params.basal_u_per_min[:, None].repeat(1, minutes)
    insulin[:, 60] += 60.0 / params.carb_ratio_g_per_u
    return OpenLoopPlan(cho, insulin)


def test_resuming_from_a_checkpoint_is_bit_identical(
    params: VirtualPatientParams,
    scenario,
    full_run: T1DTrajectory,  # type: ignore[no-untyped-def]
) -> None:
    first = replay(params, BasalBolusPlan(), scenario=scenario, until_minute=300)
    rest = replay(params, BasalBolusPlan(), scenario=scenario, start=first.final)
    for name in ("bg_mg_dl", "cgm_mg_dl", "insulin_u", "bolus_u", "carbs_eaten_g"):
        joined = torch.cat((getattr(first, name), getattr(rest, name)), dim=1)
        assert same(joined, getattr(full_run, name)), name
    assert torch.equal(rest.final.patient.state, full_run.final.patient.state)


def test_same_plan_replayed_twice_is_bit_identical(
    params: VirtualPatientParams,
    scenario,
    full_run: T1DTrajectory,  # type: ignore[no-untyped-def]
) -> None:
    again = replay(params, BasalBolusPlan(), scenario=scenario)
    assert same(again.bg_mg_dl, full_run.bg_mg_dl) and same(again.cgm_mg_dl, full_run.cgm_mg_dl)


def test_open_loop_plans_diverge_only_after_the_minute_they_differ(
    params: VirtualPatientParams,
) -> None:
    plan_a = open_loop(params, 360)
    change = 200
    extra = plan_a.insulin_u_per_min[:, change:].clone()
    extra[:, 0] += 3.0
    plan_b = plan_a.with_actions_from(change, plan_a.cho_announced_g[:, change:], extra)
    a = replay(params, plan_a, step_min=1)
    b = replay(params, plan_b, step_min=1)
    assert torch.equal(a.bg_mg_dl[:, : change + 1], b.bg_mg_dl[:, : change + 1])
    assert bool((b.bg_mg_dl[:, -1] < a.bg_mg_dl[:, -1] - 1.0).all())


def test_counterfactual_from_a_checkpoint_equals_switching_plans_mid_run(
    params: VirtualPatientParams,
    scenario,
    full_run: T1DTrajectory,  # type: ignore[no-untyped-def]
) -> None:
    first = replay(params, BasalBolusPlan(), scenario=scenario, until_minute=300)
    cautious = BasalBolusPlan(carb_ratio_scale=1.5)
    what_if = replay(params, cautious, scenario=scenario, start=first.final)
    assert torch.equal(what_if.bg_mg_dl[:, 0], full_run.bg_mg_dl[:, 60])
    meals_after = scenario.meal_minute >= 300
    assert bool(meals_after.any())
    assert not torch.equal(what_if.bg_mg_dl, full_run.bg_mg_dl[:, 60:])
    assert float(what_if.bolus_u.sum()) < float(full_run.bolus_u[:, 60:].sum())


def test_closed_loop_doses_from_cr_cf_and_the_scenario(
    params: VirtualPatientParams,
    scenario,
    full_run: T1DTrajectory,  # type: ignore[no-untyped-def]
) -> None:
    eaten = full_run.carbs_eaten_g.sum(dim=1)
    meals = scenario.announced_carbs_g().sum(dim=1)
    rescue = full_run.rescue_carbs_g.sum(dim=1)
    carried = full_run.final.patient.planned_meal_g
    assert torch.allclose(eaten + carried, meals + rescue)
    basal_only = replay(params, BasalBolusPlan(meal_boluses=False), scenario=scenario)
    assert float(basal_only.bolus_u.sum()) == 0.0
    assert bool((basal_only.bg_mg_dl.amax(1) > full_run.bg_mg_dl.amax(1)).all())
    cgm = full_run.cgm_mg_dl
    assert not bool(torch.isnan(cgm).any())  # 5-minute sensor, no drop-outs configured
    assert float((cgm - full_run.bg_mg_dl).abs().mean()) > 1.0


def test_trajectory_converts_to_a_cohort_series(full_run: T1DTrajectory) -> None:
    series = full_run.to_cohort_series(start_minute_of_day=360)
    assert series.start_minute_of_day == 360 and series.n_steps == MINUTES // 5
    assert series.patient_names == NAMES and series.cgm_mg_dl.dtype == torch.float32


def test_initial_checkpoint_starts_with_no_reading() -> None:
    checkpoint = RunCheckpoint.initial(VirtualPatientParams.select(["adult#001"]).initial_state)
    assert checkpoint.minute == 0 and math.isnan(float(checkpoint.latest_cgm_mg_dl[0]))


def test_mismatched_inputs_raise(params: VirtualPatientParams, scenario) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="scenario"):
        replay(params, BasalBolusPlan())
    with pytest.raises(ConfigError, match="covers"):
        replay(params, open_loop(params, 120), until_minute=125)
    with pytest.raises(ConfigError, match="multiple"):
        replay(params, BasalBolusPlan(), scenario=scenario, until_minute=303)
    with pytest.raises(ConfigError, match="patients"):
        replay(VirtualPatientParams.select(["adult#001"]), BasalBolusPlan(), scenario=scenario)
    with pytest.raises(ConfigError):
        OpenLoopPlan(torch.zeros(1, 5), -torch.ones(1, 5))
    with pytest.raises(ConfigError):
        BasalBolusPlan(carb_ratio_scale=0.0)
