"""Tumour growth under chemo- and radiotherapy (Geng et al. 2017): dynamics, policies, replay."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fedtwin.cohorts import (
    DEATH_VOLUME_CM3,
    ConfoundedAssignment,
    Regimen,
    Stage,
    TumourNoise,
    draw_tumour_noise,
    sample_tumour_patients,
    simulate_tumours,
    sphere_diameter_cm,
    sphere_volume_cm3,
)
from fedtwin.errors import ConfigError

N, DAYS = 400, 40


@pytest.fixture(scope="module")
def patients():  # type: ignore[no-untyped-def]
    return sample_tumour_patients(N, seed=1)


@pytest.fixture(scope="module")
def noise() -> TumourNoise:
    return draw_tumour_noise(N, DAYS, seed=1)


def silent(noise: TumourNoise) -> TumourNoise:
    """The same draws without growth noise and with recovery switched off."""
    return dataclasses.replace(
        noise, growth=torch.zeros_like(noise.growth), recovery_u=torch.ones_like(noise.recovery_u)
    )


def test_parameters_follow_the_published_distributions(patients) -> None:  # type: ignore[no-untyped-def]
    many = sample_tumour_patients(4000, seed=2)
    share_iv = float((many.stage == Stage.IV).float().mean())
    assert abs(share_iv - 12840 / 22954) < 0.03
    assert bool((many.alpha > 0).all() and (many.rho > 0).all() and (many.beta_c > 0).all())
    assert torch.allclose(many.beta, many.alpha / 10.0)
    radio_sensitive = many.alpha[many.patient_type == 1].mean()
    assert float(radio_sensitive) > float(many.alpha[many.patient_type == 2].mean())
    assert float(many.beta_c[many.patient_type == 3].mean()) > 0.028 * 1.08
    diameters = sphere_diameter_cm(many.initial_volume_cm3)
    assert bool(((diameters >= 0.3 - 1e-9) & (diameters <= 13.0 + 1e-9)).all())
    assert torch.equal(patients.rho, sample_tumour_patients(N, seed=1).rho)


def test_untreated_growth_is_gompertz(patients, noise) -> None:  # type: ignore[no-untyped-def]
    quiet = silent(noise)
    run = simulate_tumours(
        patients, quiet, Regimen.standard(N, DAYS, chemo_every_days=None), days=3
    )
    v0 = patients.initial_volume_cm3
    v1 = v0 * (1 + patients.rho * torch.log(patients.carrying_capacity_cm3 / v0))
    below = v1 < DEATH_VOLUME_CM3
    assert torch.allclose(run.volume_cm3[:, 0], v0)
    assert torch.allclose(run.volume_cm3[below, 1], v1[below])
    assert bool((run.death_day[~below] == 1).all())


def test_chemo_decays_with_a_one_day_half_life_and_radio_kills_linear_quadratically(
    patients,
    noise,  # type: ignore[no-untyped-def]
) -> None:
    quiet = silent(noise)
    chemo_once = Regimen(torch.zeros(N, 4, dtype=torch.bool), torch.zeros(N, 4, dtype=torch.bool))
    chemo_once.chemo[:, 0] = True
    run = simulate_tumours(patients, quiet, chemo_once, days=4)
    alive = run.final.active
    assert torch.allclose(
        run.chemo_concentration[alive],
        torch.tensor([5.0, 2.5, 1.25, 0.625]).expand(int(alive.sum()), 4).double(),
    )
    radio_once = Regimen(torch.zeros(N, 2, dtype=torch.bool), torch.ones(N, 2, dtype=torch.bool))
    radio = simulate_tumours(patients, quiet, radio_once, days=2)
    v0, p = patients.initial_volume_cm3, patients
    expected = v0 * (
        1 + p.rho * torch.log(p.carrying_capacity_cm3 / v0) - (2 * p.alpha + 4 * p.beta)
    )
    survived = radio.final.recovery_day < 0
    assert torch.allclose(radio.volume_cm3[survived, 1], expected[survived])
    assert bool((radio.final.recovery_day[~survived] == 1).all())


def test_large_tumours_die_and_trajectories_end(patients, noise) -> None:  # type: ignore[no-untyped-def]
    fast = dataclasses.replace(patients, rho=torch.full((N,), 0.3, dtype=torch.float64))
    run = simulate_tumours(fast, silent(noise), Regimen.standard(N, DAYS, chemo_every_days=None))
    dead = run.death_day >= 0
    assert bool(dead.all())
    rows = torch.arange(N)
    at_death = run.volume_cm3[rows, run.death_day]
    assert torch.allclose(at_death, torch.full((N,), DEATH_VOLUME_CM3, dtype=torch.float64))
    after = torch.arange(DAYS)[None, :] > run.death_day[:, None]
    assert bool(torch.isnan(run.volume_cm3[after]).all())


def test_confounding_strength_ties_treatment_to_tumour_size(patients, noise) -> None:  # type: ignore[no-untyped-def]
    random_policy = simulate_tumours(patients, noise, ConfoundedAssignment(0.0, 0.0))
    p = random_policy.chemo_probability[:, 1:]
    assert torch.allclose(p[~torch.isnan(p)], torch.tensor(0.5, dtype=torch.float64))
    assert float(random_policy.chemo_probability[:, 0].nan_to_num(0.0).max()) == 0.0
    biased = simulate_tumours(patients, noise, ConfoundedAssignment(10.0, 10.0))
    day = 5
    probability = biased.chemo_probability[:, day]
    mean_diameter = sphere_diameter_cm(biased.volume_cm3[:, :day]).mean(dim=1)
    ok = ~torch.isnan(probability) & ~torch.isnan(mean_diameter)
    order = torch.argsort(mean_diameter[ok])
    assert bool((probability[ok][order].diff() >= -1e-12).all())
    expected = torch.sigmoid(10.0 / 13.0 * (mean_diameter[ok] - 6.5))
    assert torch.allclose(probability[ok], expected)


def test_resuming_and_counterfactual_regimens(patients, noise) -> None:  # type: ignore[no-untyped-def]
    policy = ConfoundedAssignment(4.0, 4.0)
    whole = simulate_tumours(patients, noise, policy)
    first = simulate_tumours(patients, noise, policy, days=15)
    rest = simulate_tumours(patients, noise, policy, start=first.final)
    both = torch.cat((first.volume_cm3, rest.volume_cm3), dim=1)
    assert torch.equal(both.nan_to_num(-1.0), whole.volume_cm3.nan_to_num(-1.0))
    intensive = Regimen.standard(
        N, DAYS - 15, chemo_every_days=1, radio_fractions_per_week=5, start_day=15
    )
    what_if = simulate_tumours(patients, noise, intensive, start=first.final)
    alive = first.final.active & (whole.final.active | (whole.death_day > 16))
    assert bool(alive.any())
    later = what_if.volume_cm3[alive, 5].nan_to_num(0.0)
    assert float(later.mean()) < float(whole.volume_cm3[alive, 20].nan_to_num(0.0).mean())


def test_sphere_helpers_invert() -> None:
    assert math.isclose(float(sphere_diameter_cm(sphere_volume_cm3(13.0))), 13.0)
    assert math.isclose(DEATH_VOLUME_CM3, 1150.3, rel_tol=1e-4)


def test_bad_inputs_raise(patients, noise) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        ConfoundedAssignment(11.0, 0.0)
    with pytest.raises(ConfigError):
        simulate_tumours(patients, noise, ConfoundedAssignment(1.0, 1.0), days=DAYS + 1)
    with pytest.raises(ConfigError):
        sample_tumour_patients(0, seed=1)
    with pytest.raises(ConfigError):
        Regimen.standard(N, 10, radio_fractions_per_week=8)
