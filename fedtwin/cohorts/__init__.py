"""Batched UVA/Padova 2008 type-1 diabetes simulator for building synthetic hospital cohorts.

Invariant: this facade re-exports the public API of :mod:`fedtwin.cohorts` and nothing else;
every simulation is deterministic given its seed or ``torch.Generator``.

The model follows simglucose 0.2.11's ``T1DPatient`` (its parameter tables are vendored in
``fedtwin/cohorts/data``, see ``NOTICE.md``) and is integrated for a whole batch of patients at
once in ``float64`` torch.
"""

from fedtwin.cohorts.cohort import CohortSeries, simulate_cohort
from fedtwin.cohorts.controller import (
    BasalBolusController,
    BehaviourNoise,
    HypoTreatment,
    PumpLimits,
)
from fedtwin.cohorts.population import (
    AgeGroup,
    VirtualPatientParams,
    age_group_of,
    all_patient_names,
    names_in_group,
)
from fedtwin.cohorts.scenario import (
    DEFAULT_MEALS,
    MealSpec,
    meal_size_scale,
    random_meal_scenario,
)
from fedtwin.cohorts.sensor import CGMSensor, SensorParams, cgm_noise_mg_dl, johnson_su_mg_dl
from fedtwin.cohorts.uva_padova import EAT_RATE_G_PER_MIN, BatchedT1DPatient

__all__ = [
    "DEFAULT_MEALS",
    "EAT_RATE_G_PER_MIN",
    "AgeGroup",
    "BasalBolusController",
    "BatchedT1DPatient",
    "BehaviourNoise",
    "CGMSensor",
    "CohortSeries",
    "HypoTreatment",
    "MealSpec",
    "PumpLimits",
    "SensorParams",
    "VirtualPatientParams",
    "age_group_of",
    "all_patient_names",
    "cgm_noise_mg_dl",
    "johnson_su_mg_dl",
    "meal_size_scale",
    "names_in_group",
    "random_meal_scenario",
    "simulate_cohort",
]
