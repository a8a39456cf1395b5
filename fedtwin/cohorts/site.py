"""Simulate one hospital site's virtual T1D patients in memory-bounded batches.

Invariant: a :class:`SiteSpec` fixes a site completely. Patient ``i`` of a site gets the same
physiology and the same scenario (meals, carb counting, missed boluses, sensor noise,
drop-outs, exercise) whatever ``batch_patients`` is, because every per-patient draw is keyed by
``i``; only one batch of patients is in memory at a time (about ``60 * B * n_bins`` bytes of
outputs plus the scenario), so a site of any size streams through :func:`simulate_site`.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from fedtwin.cohorts.cohort import CohortSeries
from fedtwin.cohorts.plans import BasalBolusPlan
from fedtwin.cohorts.population import AgeGroup, VirtualPatientParams, names_in_group
from fedtwin.cohorts.replay import T1DTrajectory, replay
from fedtwin.cohorts.t1d_scenario import ScenarioConfig, T1DScenario, draw_scenario
from fedtwin.cohorts.uva_padova import DEFAULT_SUBSTEPS
from fedtwin.cohorts.virtual_population import sample_virtual_patients
from fedtwin.errors import ConfigError


class SiteSpec(BaseModel):
    """Everything that defines one simulated site.

    Parameters
    ----------
    site_id : str
        Lower-case id (letters, digits, ``-``, ``_``, ``.``), e.g. ``site-paediatric``.
    n_patients : int
        Patients at the site.
    age_mix : dict[AgeGroup, float]
        Relative weight of each age group (non-IID sites: different mixes); counts are
        allocated by largest remainder.
    population : {"sampled", "published"}
        ``sampled``: new patients from :func:`~fedtwin.cohorts.sample_virtual_patients`;
        ``published``: the 10 published subjects of each group, repeated.
    population_spread : float
        Factor on the sampling SDs (``sampled`` only).
    days : float
        Simulated days; ``days * 1440`` must be a whole multiple of ``step_min``.
    start_date : datetime.date
        Calendar date of minute 0 (for exports).
    start_minute_of_day : int
        Clock time of minute 0.
    step_min : int
        Output grid, minutes.
    scenario : ScenarioConfig
        Meal habits, behaviour, sensor, drop-outs, exercise.
    therapy : BasalBolusPlan
        The site's standard therapy.
    seed : int
        Seed of every random choice at the site (combined with ``site_id``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    n_patients: int = Field(ge=1, le=1_000_000)
    age_mix: dict[AgeGroup, float] = Field(default_factory=lambda: {AgeGroup.ADULT: 1.0})
    population: Literal["sampled", "published"] = "sampled"
    population_spread: float = Field(1.0, gt=0.0, le=3.0)
    days: float = Field(gt=0.0, le=366.0)
    start_date: dt.date = dt.date(2025, 1, 6)
    start_minute_of_day: int = Field(0, ge=0, lt=1440)
    step_min: int = Field(5, ge=1, le=60)
    scenario: ScenarioConfig = ScenarioConfig()
    therapy: BasalBolusPlan = BasalBolusPlan()
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SiteSpec:
        minutes = self.days * 1440.0
        if abs(minutes - round(minutes)) > 1e-6 or round(minutes) % self.step_min:
            raise ValueError(f"days * 1440 must be a whole multiple of step_min={self.step_min}")
        weights = list(self.age_mix.values())
        if not weights or any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise ValueError("age_mix needs non-negative weights with a positive sum")
        return self

    @property
    def minutes(self) -> int:
        """Simulated minutes."""
        return round(self.days * 1440.0)

    def seeds(self) -> tuple[int, int, int]:
        """Seeds of the population, the scenarios and the group assignment (from seed, id)."""
        words = np.random.SeedSequence([self.seed, zlib.crc32(self.site_id.encode())])
        population, scenario, groups = words.generate_state(3, dtype=np.uint32).tolist()
        return int(population), int(scenario), int(groups)


def site_age_groups(spec: SiteSpec) -> tuple[AgeGroup, ...]:
    """Age group of each patient of the site, in patient order.

    Parameters
    ----------
    spec : SiteSpec
        The site.

    Returns
    -------
    tuple[AgeGroup, ...]
        ``n_patients`` groups: counts by largest remainder of the weights, order shuffled with
        the site's seed.
    """
    groups = [g for g in AgeGroup if spec.age_mix.get(g, 0.0) > 0.0]
    weights = np.array([spec.age_mix[g] for g in groups], dtype=np.float64)
    exact = weights / weights.sum() * spec.n_patients
    counts = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - counts), kind="stable")[: spec.n_patients - counts.sum()]:
        counts[index] += 1
    order = [g for g, c in zip(groups, counts.tolist(), strict=True) for _ in range(c)]
    permutation = np.random.default_rng(spec.seeds()[2]).permutation(len(order))
    return tuple(order[i] for i in permutation.tolist())


def site_population(spec: SiteSpec) -> VirtualPatientParams:
    """Physiology and therapy values of every patient of the site, in patient order.

    Parameters
    ----------
    spec : SiteSpec
        The site.

    Returns
    -------
    VirtualPatientParams
        ``n_patients`` rows (small: about 60 numbers per patient).
    """
    groups = site_age_groups(spec)
    population_seed = spec.seeds()[0]
    per_group: dict[AgeGroup, VirtualPatientParams] = {}
    for group in set(groups):
        count = groups.count(group)
        if spec.population == "sampled":
            per_group[group] = sample_virtual_patients(
                group, count, population_seed, spread=spec.population_spread
            )
        else:
            subjects = names_in_group(group)
            per_group[group] = VirtualPatientParams.select(
                [subjects[j % len(subjects)] for j in range(count)]
            )
    ordered = [g for g in AgeGroup if g in per_group]
    offset = dict(
        zip(
            ordered,
            np.cumsum([0] + [per_group[g].batch_size for g in ordered]).tolist(),
            strict=False,
        )
    )
    index = []
    for group in groups:
        index.append(offset[group])
        offset[group] += 1
    return VirtualPatientParams.concat([per_group[g] for g in ordered]).take(index)


@dataclass(frozen=True, eq=False)
class SiteBatch:
    """Ground truth and observations of a batch of a site's patients.

    Parameters
    ----------
    spec : SiteSpec
        The site.
    patient_index : torch.Tensor
        ``int64`` ``[b]`` index of each row within the site.
    params : VirtualPatientParams
        True physiology and therapy values.
    scenario : T1DScenario
        Meals as announced and counted, missed boluses, CGM noise and drop-outs, exercise.
    trajectory : T1DTrajectory
        Noise-free glucose, CGM readings (``NaN`` when missing), insulin, boluses, carbs.
    """

    spec: SiteSpec
    patient_index: Tensor
    params: VirtualPatientParams
    scenario: T1DScenario
    trajectory: T1DTrajectory

    @property
    def patient_ids(self) -> tuple[str, ...]:
        """Site-local patient ids ``<site_id>-<index:06d>`` (pseudonymise before export)."""
        return tuple(f"{self.spec.site_id}-{i:06d}" for i in self.patient_index.tolist())

    @property
    def basal_u_per_h(self) -> Tensor:
        """Basal rate delivered in each bin (insulin minus boluses), U/h, ``[b, n_bins]``."""
        t = self.trajectory
        return (t.insulin_u - t.bolus_u) * (60.0 / t.step_min)

    @property
    def start(self) -> dt.datetime:
        """UTC time of the start of bin 0 (the site's start date and clock time)."""
        midnight = dt.datetime.combine(self.spec.start_date, dt.time(), tzinfo=dt.UTC)
        return midnight + dt.timedelta(minutes=self.spec.start_minute_of_day)

    def birth_dates(self) -> tuple[dt.date, ...]:
        """Birth date of each patient, consistent with its age at the start.

        The day of the year is drawn from the site seed and the patient index, so exports are
        reproducible.

        Returns
        -------
        tuple[datetime.date, ...]
            One date per row.
        """
        dates = []
        for index, age in zip(
            self.patient_index.tolist(), self.params.age_years.tolist(), strict=True
        ):
            rng = np.random.default_rng(
                np.random.SeedSequence(self.spec.seeds()[2], spawn_key=(index,))
            )
            days = int(age * 365.25) + int(rng.integers(0, 365))
            dates.append(self.spec.start_date - dt.timedelta(days=days))
        return tuple(dates)

    def series(self) -> CohortSeries:
        """The batch as a :class:`~fedtwin.cohorts.CohortSeries` (float32, CGM ``NaN`` gaps)."""
        return self.trajectory.to_cohort_series(self.spec.start_minute_of_day)


def simulate_site(
    spec: SiteSpec,
    *,
    batch_patients: int = 500,
    substeps: int = DEFAULT_SUBSTEPS,
    progress: Callable[[float], None] | None = None,
) -> Iterator[SiteBatch]:
    """Simulate the site's patients batch by batch, yielding each batch when done.

    Parameters
    ----------
    spec : SiteSpec
        The site.
    batch_patients : int, default 500
        Patients simulated together (bounds memory; larger is faster up to a few thousand).
    substeps : int, default DEFAULT_SUBSTEPS
        RK4 steps per minute.
    progress : Callable[[float], None] or None, optional
        Called with the site's completed fraction every simulated hour of each batch.

    Yields
    ------
    SiteBatch
        Consecutive batches covering patients ``0 … n_patients-1``.

    Raises
    ------
    ConfigError
        If ``batch_patients < 1``.
    """
    if (
        isinstance(batch_patients, bool)
        or not isinstance(batch_patients, int)
        or batch_patients < 1
    ):
        raise ConfigError("batch_patients must be a positive integer")
    population = site_population(spec)
    scenario_seed = spec.seeds()[1]
    total = spec.n_patients
    for first in range(0, total, batch_patients):
        rows = list(range(first, min(total, first + batch_patients)))
        params = population.take(rows)
        scenario = draw_scenario(
            params,
            spec.scenario,
            spec.minutes,
            scenario_seed,
            patient_keys=rows,
            start_minute_of_day=spec.start_minute_of_day,
        )

        def report(fraction: float, first: int = first, size: int = len(rows)) -> None:
            if progress is not None:
                progress((first + fraction * size) / total)

        trajectory = replay(
            params,
            spec.therapy,
            scenario=scenario,
            step_min=spec.step_min,
            substeps=substeps,
            progress=report,
        )
        yield SiteBatch(
            spec=spec,
            patient_index=torch.tensor(rows, dtype=torch.int64),
            params=params,
            scenario=scenario,
            trajectory=trajectory,
        )
