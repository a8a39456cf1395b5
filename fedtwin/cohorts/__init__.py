"""Virtual patient cohorts from validated mechanistic models, for demos, tests and trials.

Invariant: this facade re-exports the public API of :mod:`fedtwin.cohorts` and nothing else;
every simulation is deterministic given its seed, and every exogenous input is drawn once so
the same patient can be replayed under another treatment (ground-truth counterfactuals).

- Type-1 diabetes: the UVA/Padova 2008 model of simglucose 0.2.11's ``T1DPatient`` (parameter
  tables vendored in ``fedtwin/cohorts/data``, see ``NOTICE.md``), batched in ``float64`` torch
  (:class:`BatchedT1DPatient`), its 30 published subjects and sampled new ones
  (:func:`sample_virtual_patients`), daily-life scenarios (:func:`draw_scenario`), swappable
  treatment plans replayed from checkpoints (:func:`replay`), and whole sites streamed in
  patient batches (:func:`simulate_site`).
- Consortia: :func:`generate_cohort` writes one Bulk FHIR export per site (T1D or oncology,
  non-IID splits, synthetic consents) and the ground truth apart (``fedtwin cohort generate``).
- Oncology: the tumour growth model of the counterfactual benchmarks (Geng et al. 2017) under
  chemo- and radiotherapy (:func:`simulate_tumours`).
"""

from fedtwin.cohorts.actions_io import MinuteActions, read_actions_csv, write_glucose_csv
from fedtwin.cohorts.cohort import CohortSeries, simulate_cohort
from fedtwin.cohorts.controller import (
    BasalBolusController,
    BehaviourNoise,
    HypoTreatment,
    PumpLimits,
)
from fedtwin.cohorts.exercise import ExerciseModel, ExerciseState
from fedtwin.cohorts.generate import (
    CohortKind,
    ConsentRegime,
    GenerateConfig,
    GeneratedSite,
    SitePlan,
    Split,
    generate_cohort,
    plan_sites,
)
from fedtwin.cohorts.oncology import (
    DEATH_VOLUME_CM3,
    ConfoundedAssignment,
    Regimen,
    Stage,
    TumourCheckpoint,
    TumourNoise,
    TumourPatients,
    TumourPolicy,
    TumourTrajectory,
    draw_tumour_noise,
    sample_tumour_patients,
    simulate_tumours,
    sphere_diameter_cm,
    sphere_volume_cm3,
)
from fedtwin.cohorts.oncology_export import OncologySiteSpec, oncology_histories
from fedtwin.cohorts.plans import BasalBolusPlan, OpenLoopPlan, TreatmentPlan
from fedtwin.cohorts.population import (
    AgeGroup,
    VirtualPatientParams,
    age_group_of,
    all_patient_names,
    names_in_group,
)
from fedtwin.cohorts.replay import RunCheckpoint, T1DTrajectory, replay, take_checkpoint
from fedtwin.cohorts.scenario import (
    DEFAULT_MEALS,
    MealSpec,
    meal_size_scale,
    random_meal_scenario,
)
from fedtwin.cohorts.sensor import (
    CGMSensor,
    SensorParams,
    cgm_noise_mg_dl,
    johnson_su_mg_dl,
    noise_from_innovations,
)
from fedtwin.cohorts.site import (
    SiteBatch,
    SiteSpec,
    simulate_site,
    site_age_groups,
    site_population,
)
from fedtwin.cohorts.t1d_scenario import (
    ExerciseHabit,
    ScenarioConfig,
    SensorDropout,
    T1DScenario,
    draw_scenario,
)
from fedtwin.cohorts.uva_padova import (
    DEFAULT_SUBSTEPS,
    EAT_RATE_G_PER_MIN,
    BatchedT1DPatient,
    ExerciseEffect,
    T1DCheckpoint,
)
from fedtwin.cohorts.virtual_population import (
    AGE_BANDS,
    PlausibilityLimits,
    PopulationModel,
    fit_population_model,
    patient_by_name,
    sample_virtual_patients,
    stable_steady_state,
    steady_state_parameters,
)

__all__ = [
    "AGE_BANDS",
    "DEATH_VOLUME_CM3",
    "DEFAULT_MEALS",
    "DEFAULT_SUBSTEPS",
    "EAT_RATE_G_PER_MIN",
    "AgeGroup",
    "BasalBolusController",
    "BasalBolusPlan",
    "BatchedT1DPatient",
    "BehaviourNoise",
    "CGMSensor",
    "CohortKind",
    "CohortSeries",
    "ConfoundedAssignment",
    "ConsentRegime",
    "ExerciseEffect",
    "ExerciseHabit",
    "ExerciseModel",
    "ExerciseState",
    "GenerateConfig",
    "GeneratedSite",
    "HypoTreatment",
    "MealSpec",
    "MinuteActions",
    "OncologySiteSpec",
    "OpenLoopPlan",
    "PlausibilityLimits",
    "PopulationModel",
    "PumpLimits",
    "Regimen",
    "RunCheckpoint",
    "ScenarioConfig",
    "SensorDropout",
    "SensorParams",
    "SiteBatch",
    "SitePlan",
    "SiteSpec",
    "Split",
    "Stage",
    "T1DCheckpoint",
    "T1DScenario",
    "T1DTrajectory",
    "TreatmentPlan",
    "TumourCheckpoint",
    "TumourNoise",
    "TumourPatients",
    "TumourPolicy",
    "TumourTrajectory",
    "VirtualPatientParams",
    "age_group_of",
    "all_patient_names",
    "cgm_noise_mg_dl",
    "draw_scenario",
    "draw_tumour_noise",
    "fit_population_model",
    "generate_cohort",
    "johnson_su_mg_dl",
    "meal_size_scale",
    "names_in_group",
    "noise_from_innovations",
    "oncology_histories",
    "patient_by_name",
    "plan_sites",
    "random_meal_scenario",
    "read_actions_csv",
    "replay",
    "sample_tumour_patients",
    "sample_virtual_patients",
    "simulate_cohort",
    "simulate_site",
    "simulate_tumours",
    "site_age_groups",
    "site_population",
    "sphere_diameter_cm",
    "sphere_volume_cm3",
    "stable_steady_state",
    "steady_state_parameters",
    "take_checkpoint",
    "write_glucose_csv",
]
