"""Sampled virtual patients: steady-state relations, plausibility, determinism, naming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtwin.cohorts import (
    AgeGroup,
    BatchedT1DPatient,
    PlausibilityLimits,
    VirtualPatientParams,
    fit_population_model,
    patient_by_name,
    sample_virtual_patients,
    stable_steady_state,
    steady_state_parameters,
)
from fedtwin.cohorts.virtual_population import (
    FIXED_PARAMETERS,
    LOG_PARAMETERS,
    LOGIT_PARAMETERS,
)
from fedtwin.errors import ConfigError

DEPENDENT = ("Gpb", "Ipb", "m2", "m4", "m30", "Ilb", "u2ss", "isc1ss", "isc2ss", "Gtb", "Vm0")
DEPENDENT += ("kp1", "Rdb", "PCRb")


@pytest.fixture(scope="module")
def adults() -> VirtualPatientParams:
    return sample_virtual_patients(AgeGroup.ADULT, 16, seed=3)


def test_steady_state_equations_reproduce_the_published_dependent_columns() -> None:
    published = VirtualPatientParams.population()
    free = {k: published[k] for k in (*LOG_PARAMETERS, *LOGIT_PARAMETERS, *FIXED_PARAMETERS)}
    derived, state = steady_state_parameters(free)
    odd = published.names.index("adult#004")
    others = [i for i in range(30) if i != odd]
    for column in DEPENDENT:
        assert torch.allclose(derived[column][others], published[column][others], rtol=1e-9), column
    assert torch.allclose(state[others], published.initial_state[others], rtol=1e-9, atol=1e-12)
    # adult#004's published m2 and m4 are 5.4 % below CL / (Vi BW), documented in the module.
    ratio = published["m2"][odd] / derived["m2"][odd]
    assert 0.94 < float(ratio) < 0.95
    with_published_m = dict(free, CL=published["CL"][odd] * ratio)
    derived_fixed, _ = steady_state_parameters({k: v for k, v in with_published_m.items()})
    assert torch.isclose(derived_fixed["u2ss"][odd], published["u2ss"][odd], rtol=1e-9)


def test_published_subjects_have_stable_steady_states() -> None:
    assert bool(stable_steady_state(VirtualPatientParams.population()).all())


def test_fitted_correlation_is_shrunk_and_positive_definite() -> None:
    model = fit_population_model()
    assert 0.0 < model.shrinkage < 1.0
    assert float(np.linalg.eigvalsh(model.correlation).min()) > 0.0
    assert np.allclose(np.diag(model.correlation), 1.0)


def test_sampled_patients_are_named_in_order_and_within_limits(
    adults: VirtualPatientParams,
) -> None:
    assert adults.names == tuple(f"adult#v{i:05d}" for i in range(1, 17))
    limits = PlausibilityLimits()
    gb = adults.basal_glucose_mg_dl
    assert bool(
        ((gb >= limits.basal_glucose_mg_dl[0]) & (gb <= limits.basal_glucose_mg_dl[1])).all()
    )
    assert bool(((adults.age_years >= 20) & (adults.age_years <= 75)).all())
    assert bool((adults["kmin"] < adults["kmax"]).all() and (adults["d"] < adults["b"]).all())
    assert len(set(adults["BW"].tolist())) == 16


def test_sampled_patients_stay_at_basal_glucose_on_basal_insulin(
    adults: VirtualPatientParams,
) -> None:
    patient = BatchedT1DPatient(adults)
    zero = torch.zeros(adults.batch_size, dtype=torch.float64)
    for _ in range(240):
        patient.step(zero, adults.basal_u_per_min)
    assert float((patient.bg_mg_dl - adults.basal_glucose_mg_dl).abs().max()) < 1e-6


def test_sampled_patients_mix_with_published_ones(adults: VirtualPatientParams) -> None:
    mixed = VirtualPatientParams.concat(
        [adults.take([0, 1]), VirtualPatientParams.select(["adult#001"])]
    )
    patient = BatchedT1DPatient(mixed)
    meal = torch.tensor([50.0, 50.0, 50.0], dtype=torch.float64)
    patient.step(meal, mixed.basal_u_per_min + meal / mixed.carb_ratio_g_per_u)
    for _ in range(90):
        patient.step(torch.zeros(3, dtype=torch.float64), mixed.basal_u_per_min)
    assert bool((patient.bg_mg_dl > mixed.basal_glucose_mg_dl).all())


def test_a_smaller_sample_is_a_prefix_and_another_seed_differs(
    adults: VirtualPatientParams,
) -> None:
    prefix = sample_virtual_patients(AgeGroup.ADULT, 5, seed=3)
    assert all(torch.equal(prefix[k], adults[k][:5]) for k in adults.params)
    assert torch.equal(prefix.initial_state, adults.initial_state[:5])
    other = sample_virtual_patients(AgeGroup.ADULT, 5, seed=4)
    assert not torch.equal(other["BW"], adults["BW"][:5])


def test_children_are_lighter_than_adults(adults: VirtualPatientParams) -> None:
    children = sample_virtual_patients(AgeGroup.CHILD, 12, seed=3)
    assert float(children["BW"].median()) < 0.7 * float(adults["BW"].median())
    assert bool((children.age_years <= 12).all())


def test_patient_by_name_returns_the_sampled_row(adults: VirtualPatientParams) -> None:
    one = patient_by_name("adult#v00007", population_seed=3)
    assert one.names == ("adult#v00007",)
    assert torch.equal(one["Vmx"], adults["Vmx"][6:7])
    assert patient_by_name("child#002").names == ("child#002",)


@pytest.mark.parametrize(
    ("name", "seed"), [("adult#v00001", None), ("adult#011", None), ("elder#v00001", 1)]
)
def test_unknown_or_unseeded_names_raise(name: str, seed: int | None) -> None:
    with pytest.raises(ConfigError):
        patient_by_name(name, population_seed=seed)


@pytest.mark.parametrize(
    "kwargs", [{"n": 0, "seed": 1}, {"n": 2, "seed": -1}, {"n": 2, "seed": 1, "spread": 0.0}]
)
def test_bad_sampling_arguments_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        sample_virtual_patients(AgeGroup.CHILD, **kwargs)  # type: ignore[arg-type]


def test_impossible_limits_raise() -> None:
    impossible = PlausibilityLimits(basal_glucose_mg_dl=(300.0, 310.0))
    with pytest.raises(ConfigError, match="plausible"):
        sample_virtual_patients(AgeGroup.ADOLESCENT, 1, seed=0, limits=impossible)
