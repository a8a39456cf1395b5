"""What-if: roll one patient forward under several treatment plans and rank them.

A plan (:class:`GlucosePlan`) is a basal rate with timed changes, boluses and carbohydrate, in
minutes from *now* (the latest reading; minute 0 is the 5-minute bin that starts with it).
:func:`compare_plans` turns every plan into a ``[2, S]`` schedule, rolls all plans in one batch
(:func:`fedtwin.twins.rollout.rollout`: chained forecasts, moment-propagated variance) and
scores each by a clinical objective (:class:`Objective`):

``score = TIR - below_weight · TBR``, with ``TIR`` the fraction of future 5-min steps in
``[low, high]`` mg/dL and ``TBR`` the fraction below ``low`` (70–180 and 70 by default; the
consensus targets of Battelino et al., Diabetes Care 2019).

The expected score is exact under the rollout's marginal Gaussians. Its uncertainty comes from
``samples`` joint trajectories drawn from the same propagation model (one standard-normal draw
per chunk; a chunk's error is shared by its steps and carried into later chunks) with common
random numbers across plans, so ``p_best`` (the probability that a plan has the best score)
reflects differences between plans, not independent noise.

Invariants: the plans file is closed (unknown fields are errors) and every event lies inside
the horizon; ranking is by expected score, ties broken by plan name; draws come only from the
injected generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from fedtwin.twins.calibration import CalibrationScales, gaussian_quantile
from fedtwin.twins.glucose import GlucoseTwin
from fedtwin.twins.personalise import PersonalHead
from fedtwin.twins.rollout import rollout

STEP_MIN = 5
MAX_WHATIF_MIN = 1440


def _multiple_of_step(value: int) -> int:
    if value % STEP_MIN:
        raise ValueError(f"must be a multiple of {STEP_MIN} minutes")
    return value


class Bolus(BaseModel):
    """A bolus of ``units`` U given at ``at_min`` minutes from now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at_min: int = Field(ge=0, le=MAX_WHATIF_MIN)
    units: float = Field(ge=0.0, le=30.0)

    @model_validator(mode="after")
    def _on_grid(self) -> Bolus:
        _multiple_of_step(self.at_min)
        return self


class Carbs(BaseModel):
    """``grams`` of carbohydrate eaten at ``at_min`` minutes from now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at_min: int = Field(ge=0, le=MAX_WHATIF_MIN)
    grams: float = Field(ge=0.0, le=300.0)

    @model_validator(mode="after")
    def _on_grid(self) -> Carbs:
        _multiple_of_step(self.at_min)
        return self


class BasalChange(BaseModel):
    """The basal rate becomes ``u_per_h`` U/h from ``from_min`` minutes on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    from_min: int = Field(ge=0, le=MAX_WHATIF_MIN)
    u_per_h: float = Field(ge=0.0, le=30.0)

    @model_validator(mode="after")
    def _on_grid(self) -> BasalChange:
        _multiple_of_step(self.from_min)
        return self


class GlucosePlan(BaseModel):
    """One treatment plan.

    Attributes
    ----------
    name : str
        Label shown in the ranking (unique within a plans file).
    basal_u_per_h : float or None
        Basal rate from now; ``None`` keeps the patient's current basal (median insulin per
        5-min bin of the history, × 12).
    basal_changes : tuple[BasalChange, ...]
        Later basal rates (e.g. a temporary reduction).
    boluses : tuple[Bolus, ...]
        Boluses (U).
    carbs : tuple[Carbs, ...]
        Carbohydrate intakes (g).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=80)
    basal_u_per_h: float | None = Field(None, ge=0.0, le=30.0)
    basal_changes: tuple[BasalChange, ...] = ()
    boluses: tuple[Bolus, ...] = ()
    carbs: tuple[Carbs, ...] = ()

    def last_event_min(self) -> int:
        """Minute of the plan's latest event (``-1`` if none)."""
        minutes = [b.at_min for b in self.boluses] + [c.at_min for c in self.carbs]
        minutes += [b.from_min for b in self.basal_changes]
        return max(minutes, default=-1)

    def schedule(self, steps: int, current_basal_u_per_h: float) -> Tensor:
        """Insulin (U) and carbohydrate (g) per 5-minute bin, float32 ``[2, steps]``."""
        schedule = torch.zeros(2, steps)
        rate = current_basal_u_per_h if self.basal_u_per_h is None else self.basal_u_per_h
        schedule[0, :] = rate / (60.0 / STEP_MIN)
        for change in sorted(self.basal_changes, key=lambda c: c.from_min):
            first = change.from_min // STEP_MIN
            schedule[0, first:] = change.u_per_h / (60.0 / STEP_MIN)
        for bolus in self.boluses:
            if bolus.at_min // STEP_MIN < steps:
                schedule[0, bolus.at_min // STEP_MIN] += bolus.units
        for intake in self.carbs:
            if intake.at_min // STEP_MIN < steps:
                schedule[1, intake.at_min // STEP_MIN] += intake.grams
        return schedule


class Objective(BaseModel):
    """``score = TIR - below_weight · TBR`` over the horizon (fractions of 5-min steps)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low_mg_dl: float = Field(70.0, gt=0.0, le=400.0)
    high_mg_dl: float = Field(180.0, gt=0.0, le=600.0)
    below_weight: float = Field(3.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _ordered(self) -> Objective:
        if self.low_mg_dl >= self.high_mg_dl:
            raise ValueError("low_mg_dl must be below high_mg_dl")
        return self

    def score(self, glucose_mg_dl: Tensor) -> Tensor:
        """Score of trajectories ``[..., S]`` → ``[...]``."""
        in_range = (glucose_mg_dl >= self.low_mg_dl) & (glucose_mg_dl <= self.high_mg_dl)
        below = glucose_mg_dl < self.low_mg_dl
        return in_range.float().mean(-1) - self.below_weight * below.float().mean(-1)


class PlansFile(BaseModel):
    """The ``--plans`` JSON of ``fedtwin twin what-if`` (closed: unknown fields are errors).

    Example::

        {"horizon_min": 360,
         "objective": {"low_mg_dl": 70, "high_mg_dl": 180, "below_weight": 3},
         "plans": [{"name": "bolus 6 U", "boluses": [{"at_min": 0, "units": 6}],
                    "carbs": [{"at_min": 0, "grams": 60}]},
                   {"name": "no bolus", "carbs": [{"at_min": 0, "grams": 60}]}]}
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    horizon_min: int = Field(360, ge=STEP_MIN, le=MAX_WHATIF_MIN)
    objective: Objective = Objective()
    plans: tuple[GlucosePlan, ...] = Field(min_length=1, max_length=1000)

    @model_validator(mode="after")
    def _consistent(self) -> PlansFile:
        _multiple_of_step(self.horizon_min)
        names = [plan.name for plan in self.plans]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"plan names must be unique (repeated: {', '.join(duplicates)})")
        for plan in self.plans:
            if plan.last_event_min() >= self.horizon_min:
                raise ValueError(
                    f"plan {plan.name!r} has an event at or after horizon_min {self.horizon_min}"
                )
        return self


@dataclass(frozen=True)
class PlanOutcome:
    """One plan's predicted course and score.

    ``time_in_range``/``time_below``/``time_above`` are expected fractions of the horizon;
    ``score_mean`` their objective, ``score_sd`` and ``p_best`` from the joint draws;
    ``mean/lower/upper_mg_dl`` the trajectory and its central band (``[S]``).
    """

    name: str
    rank: int
    score_mean: float
    score_sd: float
    p_best: float
    time_in_range: float
    time_below: float
    time_above: float
    mean_mg_dl: NDArray[np.float64]
    lower_mg_dl: NDArray[np.float64]
    upper_mg_dl: NDArray[np.float64]


@dataclass(frozen=True)
class PlanComparison:
    """Plans ranked best first, on the grid ``minutes_ahead`` (5, 10, …, horizon)."""

    outcomes: tuple[PlanOutcome, ...]
    minutes_ahead: NDArray[np.int64]
    objective: Objective
    coverage: float

    @property
    def best(self) -> PlanOutcome:
        """The top-ranked plan."""
        return self.outcomes[0]


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _joint_draws(
    mean: Tensor, std: Tensor, horizon_steps: int, samples: int, generator: torch.Generator
) -> Tensor:
    """``[samples, P, S]`` trajectories from the chunked propagation model."""
    steps = int(mean.shape[1])
    chunks = math.ceil(steps / horizon_steps)
    variance = std.square()
    chunk_of = torch.arange(steps) // horizon_steps
    ends = torch.clamp(torch.arange(chunks) * horizon_steps - 1, min=0)
    anchor = torch.where(torch.arange(chunks) > 0, variance[:, ends], 0.0)  # [P, C]
    within = torch.sqrt(torch.clamp(variance - anchor[:, chunk_of], min=0.0))  # [P, S]
    carried = torch.sqrt(torch.clamp(anchor.diff(dim=1, prepend=anchor[:, :1]), min=0.0))
    shocks = torch.randn(samples, 1, chunks, generator=generator)
    # Error carried into chunk c: the sum of the end-of-chunk errors of chunks before it.
    anchor_error = torch.cumsum(carried.unsqueeze(0) * torch.roll(shocks, 1, dims=2), dim=2)
    anchor_error[:, :, 0] = 0.0
    return mean + anchor_error[:, :, chunk_of] + within * shocks[:, :, chunk_of]


def compare_plans(
    model: GlucoseTwin,
    history: Tensor,
    plans: Sequence[GlucosePlan],
    *,
    current_basal_u_per_h: float,
    horizon_min: int = 360,
    objective: Objective | None = None,
    calibration: CalibrationScales | None = None,
    head: PersonalHead | None = None,
    coverage: float = 0.90,
    samples: int = 200,
    generator: torch.Generator | None = None,
) -> PlanComparison:
    """Rank ``plans`` for one patient whose last ``L`` steps are ``history`` (``[3, L]``).

    Parameters
    ----------
    model : GlucoseTwin
        The twin.
    history : Tensor
        ``[3, L]``: CGM, insulin and carbohydrate as in :mod:`fedtwin.twins.windows`.
    plans : Sequence[GlucosePlan]
        The plans (at least one).
    current_basal_u_per_h : float
        Basal rate for plans that do not set one.
    horizon_min : int, default 360
        How far to roll (multiple of 5, up to 1440).
    objective : Objective or None
        Defaults to ``Objective()``.
    calibration, head : optional
        The run's calibration and this patient's personal head.
    coverage : float, default 0.90
        Width of the reported band.
    samples : int, default 200
        Joint draws for ``score_sd`` and ``p_best`` (0: skip them, both ``NaN``).
    generator : torch.Generator or None
        Source of the draws (default: seeded with 0).

    Returns
    -------
    PlanComparison
        Plans ranked by expected score.
    """
    goal = objective or Objective()
    steps = horizon_min // STEP_MIN
    schedules = torch.stack([plan.schedule(steps, current_basal_u_per_h) for plan in plans])
    histories = history.float().unsqueeze(0).expand(len(plans), -1, -1)
    course = rollout(model, histories, schedules, calibration, head)
    mean, std = course.mean_mg_dl, course.std_mg_dl
    below = _normal_cdf((goal.low_mg_dl - mean) / std).mean(dim=1)
    above = (1.0 - _normal_cdf((goal.high_mg_dl - mean) / std)).mean(dim=1)
    in_range = 1.0 - below - above
    expected = in_range - goal.below_weight * below
    wins = torch.zeros(len(plans))
    score_sd = torch.full((len(plans),), math.nan)
    if samples > 0:
        draws = _joint_draws(
            mean,
            std,
            model.config.horizon_steps,
            samples,
            generator if generator is not None else torch.Generator().manual_seed(0),
        )
        scores = goal.score(draws)  # [samples, P]
        wins.index_add_(0, scores.argmax(dim=1), torch.ones(samples))
        if samples > 1:
            score_sd = scores.std(dim=0)
    z = gaussian_quantile(coverage)
    order = sorted(range(len(plans)), key=lambda p: (-float(expected[p]), plans[p].name))
    outcomes = tuple(
        PlanOutcome(
            name=plans[p].name,
            rank=rank + 1,
            score_mean=float(expected[p]),
            score_sd=float(score_sd[p]),
            p_best=float(wins[p]) / samples if samples > 0 else math.nan,
            time_in_range=float(in_range[p]),
            time_below=float(below[p]),
            time_above=float(above[p]),
            mean_mg_dl=mean[p].double().numpy(),
            lower_mg_dl=(mean[p] - z * std[p]).double().numpy(),
            upper_mg_dl=(mean[p] + z * std[p]).double().numpy(),
        )
        for rank, p in enumerate(order)
    )
    return PlanComparison(
        outcomes=outcomes,
        minutes_ahead=np.arange(1, steps + 1, dtype=np.int64) * STEP_MIN,
        objective=goal,
        coverage=coverage,
    )
