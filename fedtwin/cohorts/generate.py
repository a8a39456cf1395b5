"""``fedtwin cohort generate``: a consortium of simulated hospitals, one FHIR export per site.

Invariants:

* the output folder appears complete or not at all: everything is written under a hidden
  sibling ``.<name>.partial-<pid>`` and renamed into place at the end; any error removes it;
* site folders hold only what a hospital would hand over (Bulk FHIR NDJSON through
  :func:`fedtwin.fhir.write_site`, the layout of ``docs/fhir-profile.md``); everything the
  simulator knows and a hospital never does (physiology, noise-free trajectories, untreated
  counterfactuals, the consent scenario of each patient, the site's split) lives in
  ``ground_truth/<site>/`` beside them;
* memory is bounded by one patient batch: sites are generated one after another, each in
  batches of ``batch_patients``, and a batch is written (export and ground truth) before the
  next is simulated;
* the output is a pure function of the :class:`GenerateConfig`: every draw is keyed by the
  seed, the site id and the patient index.

Non-IID splits (:class:`Split`): ``iid`` (equal sizes, the same age mix and habits), ``age``
(each site dominated by one age group, as paediatric, adolescent and adult clinics),
``meals`` (each site's patients share a meal-habit profile: :data:`MEAL_PROFILES`), ``size``
(Zipf-distributed site sizes: site ``k`` gets a share proportional to ``1 / (k + 1)``).
Oncology cohorts support ``iid`` and ``size`` only (the tumour model has no age or meals).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from fedtwin.cohorts.controller import BehaviourNoise
from fedtwin.cohorts.fhir_export import GroundTruthWriter, site_histories
from fedtwin.cohorts.oncology_export import OncologySiteSpec, oncology_histories
from fedtwin.cohorts.population import AgeGroup
from fedtwin.cohorts.scenario import DEFAULT_MEALS, MealSpec
from fedtwin.cohorts.site import SiteSpec, simulate_site
from fedtwin.cohorts.t1d_scenario import ExerciseHabit, ScenarioConfig, SensorDropout
from fedtwin.consent import DEFAULT_MIX, ConsentScenario, Regime, assign_scenarios
from fedtwin.consent import synthetic_consents as consent_resources
from fedtwin.errors import ConfigError
from fedtwin.fhir import GlucoseHistory, OncologyHistory, write_site

#: Called with (site id, completed fraction of that site, site number from 1, site count).
Progress = Callable[[str, float, int, int], None]


class CohortKind(StrEnum):
    """Which virtual patients a cohort holds."""

    T1D = "t1d"
    ONCOLOGY = "oncology"


class Split(StrEnum):
    """How sites differ from each other (module docstring)."""

    IID = "iid"
    AGE = "age"
    MEALS = "meals"
    SIZE = "size"


class ConsentRegime(StrEnum):
    """Consent practice of the sites: which consent histories their patients have."""

    OPT_IN = "opt-in"
    OPT_OUT = "opt-out"
    MIXED = "mixed"
    """Sites alternate: odd-numbered opt-in, even-numbered opt-out."""


#: Consent histories at an opt-out site (assumed shares, not from a registry): most patients
#: never signed anything and are in by default; some object or withdraw.
OPT_OUT_MIX: Mapping[ConsentScenario, float] = {
    ConsentScenario.NEVER_CONSENTED: 0.70,
    ConsentScenario.RESEARCH_OPT_IN: 0.10,
    ConsentScenario.TREATMENT_ONLY: 0.08,
    ConsentScenario.OPTED_OUT: 0.07,
    ConsentScenario.WITHDRAWN: 0.05,
}

#: Age mixes of the ``age`` split, in site order (repeated past three sites).
AGE_SPLIT_MIXES: tuple[dict[AgeGroup, float], ...] = (
    {AgeGroup.CHILD: 0.8, AgeGroup.ADOLESCENT: 0.2},
    {AgeGroup.ADOLESCENT: 0.7, AgeGroup.CHILD: 0.15, AgeGroup.ADULT: 0.15},
    {AgeGroup.ADULT: 0.9, AgeGroup.ADOLESCENT: 0.1},
)
#: Age mix of every site when age is not the split.
IID_AGE_MIX: dict[AgeGroup, float] = dict.fromkeys(AgeGroup, 1.0)


def _shifted(
    meals: tuple[MealSpec, ...], minutes: float, size: float, snack_p: float | None
) -> tuple[MealSpec, ...]:
    out = []
    for meal in meals:
        low, high = meal.time_window_min
        shift = max(-low, min(minutes, 1439.0 - high))
        snack = "snack" in meal.name
        out.append(
            MealSpec(
                meal.name,
                snack_p if (snack and snack_p is not None) else meal.probability,
                meal.time_mean_min + shift,
                meal.time_sd_min,
                (low + shift, high + shift),
                meal.carbs_mean_g * size,
                meal.carbs_sd_g * size,
            )
        )
    return tuple(out)


#: Meal-habit profiles of the ``meals`` split, in site order (repeated past the list):
#: simglucose's defaults; late, large meals with frequent snacks and more missed boluses;
#: early, small meals, few snacks and careful carb counting.
MEAL_PROFILES: tuple[tuple[str, tuple[MealSpec, ...], BehaviourNoise], ...] = (
    ("regular", DEFAULT_MEALS, BehaviourNoise()),
    (
        "late-large",
        _shifted(DEFAULT_MEALS, 75.0, 1.3, 0.6),
        BehaviourNoise(carb_count_log_sd=0.25, missed_bolus_probability=0.12),
    ),
    (
        "early-light",
        _shifted(DEFAULT_MEALS, -45.0, 0.75, 0.15),
        BehaviourNoise(carb_count_log_sd=0.10, missed_bolus_probability=0.01),
    ),
)

#: Daily life common to every site: CGM drop-outs and some exercise.
BASE_SCENARIO = ScenarioConfig(
    dropout=SensorDropout(episodes_per_day=0.3, mean_duration_min=45.0),
    exercise=ExerciseHabit(sessions_per_week=2.0),
)
#: The consent study starts with the data and runs this long after the data ends.
STUDY_AFTER_DATA = dt.timedelta(weeks=12)
DEFAULT_START = dt.date(2026, 1, 5)


class GenerateConfig(BaseModel):
    """Everything ``fedtwin cohort generate`` needs (the CLI flags map one to one).

    Parameters
    ----------
    kind : CohortKind
        ``t1d`` or ``oncology``.
    sites : int
        Number of sites.
    patients : int
        Patients per site (``size`` split: on average, ``sites * patients`` in all).
    days : float
        Simulated days (oncology: a whole number).
    seed : int
        Seed of every random choice.
    split : Split
        How sites differ.
    consent_regime : ConsentRegime
        Which consent histories the patients have.
    population : {"sampled", "published"}
        T1D only: new sampled virtual patients, or the 30 published subjects repeated
        (faster: no rejection sampling).
    batch_patients : int
        Patients simulated and written together (bounds memory).
    start_date : datetime.date
        First day of data.
    gamma : float
        Oncology only: time-varying confounding of treatment assignment (0-10).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: CohortKind
    sites: int = Field(ge=1, le=1000)
    patients: int = Field(ge=1, le=1_000_000)
    days: float = Field(gt=0.0, le=366.0)
    seed: int = Field(0, ge=0)
    split: Split = Split.IID
    consent_regime: ConsentRegime = ConsentRegime.OPT_IN
    population: Literal["sampled", "published"] = "sampled"
    batch_patients: int = Field(500, ge=1, le=100_000)
    start_date: dt.date = DEFAULT_START
    gamma: float = Field(2.0, ge=0.0, le=10.0)

    @field_validator("days")
    @classmethod
    def _whole_grid(cls, days: float, info: ValidationInfo) -> float:
        if info.data.get("kind") is CohortKind.ONCOLOGY:
            if days != int(days):
                raise ValueError("oncology days must be a whole number")
        else:
            minutes = days * 1440.0
            if abs(minutes - round(minutes)) > 1e-6 or round(minutes) % 5:
                raise ValueError("days * 1440 must be a whole multiple of 5 minutes")
        return days

    @field_validator("split")
    @classmethod
    def _split_of_kind(cls, split: Split, info: ValidationInfo) -> Split:
        if info.data.get("kind") is CohortKind.ONCOLOGY and split in (Split.AGE, Split.MEALS):
            raise ValueError(f"{split.value!r} needs t1d; oncology splits are iid or size")
        return split


@dataclass(frozen=True)
class SitePlan:
    """One site of a generated cohort: its id, size and what sets it apart."""

    site_id: str
    n_patients: int
    regime: Regime
    age_mix: dict[AgeGroup, float]
    meal_profile: str


@dataclass(frozen=True)
class GeneratedSite:
    """What was written for one site."""

    plan: SitePlan
    counts: dict[str, int]


def _sizes(config: GenerateConfig) -> list[int]:
    if config.split is not Split.SIZE:
        return [config.patients] * config.sites
    total = config.sites * config.patients
    weights = 1.0 / np.arange(1, config.sites + 1)
    exact = 1 + weights / weights.sum() * (total - config.sites)
    sizes = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - sizes), kind="stable")[: total - int(sizes.sum())]:
        sizes[index] += 1
    return [int(s) for s in sizes]


def plan_sites(config: GenerateConfig) -> list[SitePlan]:
    """The sites of a cohort: ids ``site-01`` …, sizes, consent regimes, ages and habits.

    Parameters
    ----------
    config : GenerateConfig
        The cohort.

    Returns
    -------
    list[SitePlan]
        One plan per site, in order.
    """
    width = max(2, len(str(config.sites)))
    plans = []
    for index, size in enumerate(_sizes(config)):
        if config.consent_regime is ConsentRegime.MIXED:
            regime = Regime.OPT_IN if index % 2 == 0 else Regime.OPT_OUT
        else:
            regime = Regime(config.consent_regime.value)
        by_age = config.split is Split.AGE
        by_meals = config.split is Split.MEALS
        profile = MEAL_PROFILES[index % len(MEAL_PROFILES)][0] if by_meals else "regular"
        plans.append(
            SitePlan(
                site_id=f"site-{index + 1:0{width}d}",
                n_patients=size,
                regime=regime,
                age_mix=AGE_SPLIT_MIXES[index % 3] if by_age else IID_AGE_MIX,
                meal_profile=profile,
            )
        )
    return plans


def t1d_site_spec(config: GenerateConfig, plan: SitePlan) -> SiteSpec:
    """The simulator's :class:`SiteSpec` of a planned T1D site."""
    _, meals, behaviour = next(p for p in MEAL_PROFILES if p[0] == plan.meal_profile)
    return SiteSpec(
        site_id=plan.site_id,
        n_patients=plan.n_patients,
        age_mix=plan.age_mix,
        population=config.population,
        days=config.days,
        start_date=config.start_date,
        scenario=BASE_SCENARIO.model_copy(update={"meals": meals, "behaviour": behaviour}),
        seed=config.seed,
    )


def oncology_site_spec(config: GenerateConfig, plan: SitePlan) -> OncologySiteSpec:
    """The tumour simulator's spec of a planned oncology site."""
    return OncologySiteSpec(
        site_id=plan.site_id,
        n_patients=plan.n_patients,
        days=int(config.days),
        start_date=config.start_date,
        gamma=config.gamma,
        seed=config.seed,
    )


class _SiteConsents:
    """Consent resources of a site's patients, drawn one patient at a time."""

    def __init__(self, config: GenerateConfig, plan: SitePlan) -> None:
        mix = DEFAULT_MIX if plan.regime is Regime.OPT_IN else OPT_OUT_MIX
        ids = [f"{plan.site_id}-{i:06d}" for i in range(plan.n_patients)]
        self.seed = config.seed * 100_003 + zlib.crc32(plan.site_id.encode())
        self.scenarios = assign_scenarios(ids, seed=self.seed, mix=mix)
        start = dt.datetime.combine(config.start_date, dt.time(), tzinfo=dt.UTC)
        self.study = (start, start + dt.timedelta(days=config.days) + STUDY_AFTER_DATA)

    def __call__(self, patient_id: str) -> list[dict[str, Any]]:
        # Each patient's resources depend only on (seed, id, scenario): drawing them one at a
        # time equals drawing the whole site at once, without holding the site in memory.
        return consent_resources(
            [patient_id],
            study_start=self.study[0],
            study_end=self.study[1],
            seed=self.seed,
            mix={self.scenarios[patient_id]: 1.0},
            fhir_version="mixed",
        )


def _site_histories(
    config: GenerateConfig,
    plan: SitePlan,
    consents: _SiteConsents,
    truth: GroundTruthWriter,
    progress: Callable[[float], None],
) -> Iterator[GlucoseHistory] | Iterator[OncologyHistory]:
    if config.kind is CohortKind.T1D:
        batches = simulate_site(
            t1d_site_spec(config, plan), batch_patients=config.batch_patients, progress=progress
        )
        return site_histories(batches, seed=config.seed, consents_for=consents, on_batch=truth.add)
    return oncology_histories(
        oncology_site_spec(config, plan),
        batch_patients=config.batch_patients,
        consents_for=consents,
        on_batch=truth.add,
        progress=progress,
    )


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")


def _generate_site(
    config: GenerateConfig, plan: SitePlan, staging: Path, progress: Callable[[float], None]
) -> GeneratedSite:
    consents = _SiteConsents(config, plan)
    truth = GroundTruthWriter(staging / "ground_truth" / plan.site_id)
    histories = _site_histories(config, plan, consents, truth, progress)
    written = write_site(staging / plan.site_id, histories)
    truth.close()
    counts = dict(sorted(written.counts.items()))
    _write_json(
        truth.folder / "site.json",
        {
            "site_id": plan.site_id,
            "kind": config.kind.value,
            "n_patients": plan.n_patients,
            "consent_regime": plan.regime.value,
            "age_mix": {g.value: w for g, w in plan.age_mix.items()},
            "meal_profile": plan.meal_profile if config.kind is CohortKind.T1D else None,
            "resources": counts,
            "consent_scenarios": {k: v.value for k, v in consents.scenarios.items()},
        },
    )
    return GeneratedSite(plan, counts)


def _reserve(out: Path) -> Path:
    """Check ``out`` and return the hidden staging folder beside it."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out: {out} exists and is not an empty folder")
    if not out.parent.exists():
        raise ConfigError(f"--out: parent folder {out.parent} does not exist")
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def generate_cohort(
    config: GenerateConfig, out: Path, *, progress: Progress | None = None
) -> list[GeneratedSite]:
    """Write ``out/<site>/`` (Bulk FHIR) for every site and ``out/ground_truth/``, atomically.

    Parameters
    ----------
    config : GenerateConfig
        The cohort.
    out : Path
        Destination; must not exist or be an empty folder, and its parent must exist.
    progress : Progress or None, optional
        Called with (site id, fraction of that site done, site number, site count).

    Returns
    -------
    list[GeneratedSite]
        Each site's plan and the resources written per type.

    Raises
    ------
    ConfigError
        If ``out`` is taken or a site cannot be built; nothing is left behind.
    """
    staging = _reserve(out)
    plans = plan_sites(config)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        generated = []
        for number, plan in enumerate(plans, start=1):

            def report(fraction: float, site: str = plan.site_id, number: int = number) -> None:
                if progress is not None:
                    progress(site, fraction, number, len(plans))

            generated.append(_generate_site(config, plan, staging, report))
            report(1.0)
        _write_json(
            staging / "ground_truth" / "cohort.json",
            {
                "config": config.model_dump(mode="json"),
                "sites": {g.plan.site_id: g.counts for g in generated},
            },
        )
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return generated
