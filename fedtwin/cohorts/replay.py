"""Run a treatment plan on a batch of T1D patients, from the start or from a checkpoint.

Invariant: :func:`replay` is a pure function of its arguments. Everything that carries over
from one minute to the next (model state, meal bookkeeping, the latest CGM reading, the last
rescue time, the exercise signals) lives in a :class:`RunCheckpoint`, and every exogenous input
is indexed by absolute run minute, so running ``[0, m)`` then replaying ``[m, n)`` from the
returned checkpoint is bit-identical to running ``[0, n)`` at once, and two plans that agree
before minute ``m`` give identical glucose up to minute ``m`` (the glucose *at* ``m`` is
measured before that minute's action).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtwin.cohorts.cohort import CohortSeries
from fedtwin.cohorts.exercise import ExerciseState
from fedtwin.cohorts.plans import BasalBolusPlan, OpenLoopPlan, TreatmentPlan
from fedtwin.cohorts.population import VirtualPatientParams
from fedtwin.cohorts.t1d_scenario import T1DScenario
from fedtwin.cohorts.uva_padova import DEFAULT_SUBSTEPS, BatchedT1DPatient, T1DCheckpoint
from fedtwin.errors import ConfigError

_BINNED = ("insulin_u", "bolus_u", "carbs_announced_g", "carbs_eaten_g", "rescue_carbs_g")


@dataclass(frozen=True, eq=False)
class RunCheckpoint:
    """State of a plan run at a minute boundary.

    Parameters
    ----------
    patient : T1DCheckpoint
        Model state and meal bookkeeping.
    latest_cgm_mg_dl : torch.Tensor
        Last valid CGM reading, ``NaN`` if none yet, ``[B]``.
    last_rescue_minute : torch.Tensor
        Minute of the last rescue carbohydrate, ``-inf`` if none, ``[B]``.
    exercise_y, exercise_z : torch.Tensor
        Exercise signals (see :mod:`fedtwin.cohorts.exercise`), ``[B]``.
    """

    patient: T1DCheckpoint
    latest_cgm_mg_dl: Tensor
    last_rescue_minute: Tensor
    exercise_y: Tensor
    exercise_z: Tensor

    @property
    def minute(self) -> int:
        """Run minute of the checkpoint."""
        return self.patient.minute

    @classmethod
    def initial(cls, initial_state: Tensor) -> RunCheckpoint:
        """Checkpoint at minute 0 from a model state, nothing eaten, no reading yet.

        Parameters
        ----------
        initial_state : torch.Tensor
            ``[B, 13]`` model state.

        Returns
        -------
        RunCheckpoint
            The start of a run.
        """
        batch = int(initial_state.shape[0])
        zeros = torch.zeros(batch, dtype=torch.float64)
        return cls(
            patient=T1DCheckpoint(
                minute=0,
                state=initial_state.to(torch.float64).clone(),
                planned_meal_g=zeros,
                last_eaten_g=zeros,
                last_qsto_mg=initial_state[:, 0] + initial_state[:, 1],
                last_foodtaken_g=zeros,
                is_eating=torch.zeros(batch, dtype=torch.bool),
            ),
            latest_cgm_mg_dl=torch.full((batch,), math.nan, dtype=torch.float64),
            last_rescue_minute=torch.full((batch,), -math.inf, dtype=torch.float64),
            exercise_y=zeros,
            exercise_z=zeros,
        )


@dataclass(frozen=True, eq=False)
class T1DTrajectory:
    """What happened during a plan run, on a regular grid of ``step_min``-minute bins.

    Bin ``k`` covers run minutes ``[start_minute + k * step_min, start_minute + (k+1) *
    step_min)``. Every tensor is ``float64`` ``[B, n_bins]``.

    Parameters
    ----------
    names : tuple[str, ...]
        Virtual subject of each row.
    start_minute, step_min : int
        Grid.
    bg_mg_dl : torch.Tensor
        Noise-free subcutaneous glucose at the start of each bin (the oracle's ``Gsub``).
    cgm_mg_dl : torch.Tensor
        CGM reading taken at the start of the bin; ``NaN`` if none (not a sample time,
        drop-out, or no scenario).
    insulin_u : torch.Tensor
        Insulin delivered in the bin (basal and bolus), U.
    bolus_u : torch.Tensor
        Meal and correction boluses in the bin, U.
    carbs_announced_g, carbs_eaten_g, rescue_carbs_g : torch.Tensor
        Carbohydrate announced (meals and rescue), eaten, and rescue only, g.
    final : RunCheckpoint
        State at the end, to replay from.
    """

    names: tuple[str, ...]
    start_minute: int
    step_min: int
    bg_mg_dl: Tensor
    cgm_mg_dl: Tensor
    insulin_u: Tensor
    bolus_u: Tensor
    carbs_announced_g: Tensor
    carbs_eaten_g: Tensor
    rescue_carbs_g: Tensor
    final: RunCheckpoint

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.bg_mg_dl.shape[1])

    def to_cohort_series(self, start_minute_of_day: int = 0) -> CohortSeries:
        """Convert to the :class:`~fedtwin.cohorts.CohortSeries` the twins train on.

        Parameters
        ----------
        start_minute_of_day : int, default 0
            Clock time of run minute 0.

        Returns
        -------
        CohortSeries
            float32 series (missing CGM readings stay ``NaN``).
        """
        clock = (start_minute_of_day + self.start_minute) % 1440
        return CohortSeries(
            patient_names=self.names,
            cgm_mg_dl=self.cgm_mg_dl.to(torch.float32),
            bg_true_mg_dl=self.bg_mg_dl.to(torch.float32),
            insulin_u=self.insulin_u.to(torch.float32),
            carbs_g=self.carbs_eaten_g.to(torch.float32),
            step_min=self.step_min,
            start_minute_of_day=clock,
        )


def _check(
    params: VirtualPatientParams,
    plan: TreatmentPlan,
    scenario: T1DScenario | None,
    start: RunCheckpoint,
    until: int,
    step_min: int,
) -> None:
    batch = params.batch_size
    if start.patient.batch_size != batch:
        raise ConfigError(f"checkpoint has {start.patient.batch_size} patients, params {batch}")
    if scenario is not None and scenario.batch_size != batch:
        raise ConfigError(f"scenario has {scenario.batch_size} patients, params {batch}")
    if isinstance(step_min, bool) or not isinstance(step_min, int) or step_min < 1:
        raise ConfigError("step_min must be a positive integer")
    if until <= start.minute or (until - start.minute) % step_min:
        raise ConfigError(
            f"run [{start.minute}, {until}) must be non-empty and a multiple of {step_min} min"
        )
    if scenario is not None and until > scenario.minutes:
        raise ConfigError(f"scenario covers minutes [0, {scenario.minutes}) only")
    if isinstance(plan, OpenLoopPlan):
        if plan.batch_size != batch:
            raise ConfigError(f"plan has {plan.batch_size} patients, params {batch}")
        if start.minute < plan.start_minute or until > plan.end_minute:
            raise ConfigError(f"plan covers minutes [{plan.start_minute}, {plan.end_minute}) only")
    elif scenario is None:
        raise ConfigError("a closed-loop plan needs a scenario (meals and sensor)")


class _Run:
    """Mutable loop state of one :func:`replay` call."""

    def __init__(
        self,
        params: VirtualPatientParams,
        plan: TreatmentPlan,
        scenario: T1DScenario | None,
        start: RunCheckpoint,
        n_bins: int,
        substeps: int,
    ) -> None:
        self.params = params
        self.plan = plan
        self.scenario = scenario
        self.patient = BatchedT1DPatient(params, substeps=substeps)
        self.patient.restore(start.patient)
        self.latest_cgm = start.latest_cgm_mg_dl.clone()
        self.last_rescue = start.last_rescue_minute.clone()
        batch = params.batch_size
        self.zeros = torch.zeros(batch, dtype=torch.float64)
        shape = (batch, n_bins)
        self.bins = {name: torch.zeros(shape, dtype=torch.float64) for name in _BINNED}
        self.bg = torch.empty(shape, dtype=torch.float64)
        self.cgm = torch.full(shape, math.nan, dtype=torch.float64)
        self.acc = {name: self.zeros.clone() for name in _BINNED}
        self.exercise: ExerciseState | None = None
        self.intensity = self.zeros.clone()
        if scenario is not None and scenario.has_exercise:
            self.exercise = ExerciseState(
                params["Vm0"], scenario.exercise_model, start.exercise_y, start.exercise_z
            )
            for minute, (rows, values) in scenario.exercise_changes.items():
                if minute <= start.minute:
                    self.intensity[rows] = values
        self.exercise_y, self.exercise_z = start.exercise_y.clone(), start.exercise_z.clone()
        if isinstance(plan, OpenLoopPlan):
            self.plan_cho = plan.cho_announced_g.T.to(torch.float64).contiguous()
            self.plan_insulin = plan.insulin_u_per_min.T.to(torch.float64).contiguous()
        else:
            self.basal = plan.basal_u_per_min(params.basal_u_per_min)

    def read_sensor(self, minute: int, column: int | None) -> bool:
        """Take the CGM reading due at ``minute``; return whether one was taken."""
        scenario = self.scenario
        if scenario is None or minute % scenario.sensor.sample_time_min:
            return False
        k = minute // scenario.sensor.sample_time_min
        sensor = scenario.sensor
        reading = torch.clamp(
            self.patient.bg_mg_dl + scenario.sensor_noise_mg_dl[:, k],
            sensor.min_mg_dl,
            sensor.max_mg_dl,
        )
        reading = torch.where(scenario.sensor_missing[:, k], math.nan, reading)
        self.latest_cgm = torch.where(torch.isnan(reading), self.latest_cgm, reading)
        if column is not None:
            self.cgm[:, column] = reading
        return True

    def closed_loop_actions(self, minute: int, sensed: bool) -> tuple[Tensor, Tensor]:
        assert isinstance(self.plan, BasalBolusPlan) and self.scenario is not None
        plan, params = self.plan, self.params
        cho, insulin = self.zeros, self.basal
        if sensed:
            fresh = ~torch.isnan(self.latest_cgm)
            rescue = plan.hypo_treatment.rescue_carbs_g(
                torch.where(fresh, self.latest_cgm, math.inf), minute - self.last_rescue
            )
            if bool(rescue.any()):
                self.last_rescue = torch.where(rescue > 0.0, float(minute), self.last_rescue)
                self.acc["rescue_carbs_g"] += rescue
                cho = cho + rescue
        meals = self.scenario.meals_by_minute.get(minute)
        if meals is not None:
            rows, grams, counted, missed = meals
            meal_g = self.zeros.index_add(0, rows, grams)
            bolus_basis = self.zeros.index_add(0, rows, torch.where(missed, 0.0, counted))
            bolus = plan.bolus_u(
                bolus_basis,
                self.latest_cgm,
                params.carb_ratio_g_per_u,
                params.correction_factor_mg_dl_per_u,
            )
            self.acc["bolus_u"] += bolus
            cho = cho + meal_g
            insulin = insulin + bolus
        return cho, insulin


def replay(
    params: VirtualPatientParams,
    plan: TreatmentPlan,
    *,
    scenario: T1DScenario | None = None,
    start: RunCheckpoint | None = None,
    until_minute: int | None = None,
    step_min: int = 5,
    substeps: int = DEFAULT_SUBSTEPS,
    progress: Callable[[float], None] | None = None,
) -> T1DTrajectory:
    """Run ``plan`` on the patients from ``start`` (or minute 0) up to ``until_minute``.

    Parameters
    ----------
    params : VirtualPatientParams
        The patients.
    plan : TreatmentPlan
        An :class:`~fedtwin.cohorts.OpenLoopPlan` (fixed actions; the scenario, if given,
        only supplies the initial state and the CGM) or a
        :class:`~fedtwin.cohorts.BasalBolusPlan` (needs a scenario).
    scenario : T1DScenario or None, optional
        Exogenous inputs; its ``initial_state`` is the default start.
    start : RunCheckpoint or None, optional
        Where to continue from (e.g. ``trajectory.final`` of an earlier run); default: minute
        0 at the scenario's (else the published) initial state.
    until_minute : int or None, optional
        End of the run (exclusive); default: the end of the plan or scenario.
    step_min : int, default 5
        Bin width of the returned trajectory (1 gives every minute).
    substeps : int, default DEFAULT_SUBSTEPS
        RK4 steps per minute of the simulator.
    progress : Callable[[float], None] or None, optional
        Called with the completed fraction every simulated hour and at the end.

    Returns
    -------
    T1DTrajectory
        Binned outputs and the final checkpoint.

    Raises
    ------
    ConfigError
        If plan, scenario, checkpoint and horizon do not fit together.
    """
    if start is None:
        initial = scenario.initial_state if scenario is not None else params.initial_state
        start = RunCheckpoint.initial(initial)
    if until_minute is None:
        if isinstance(plan, OpenLoopPlan):
            until_minute = plan.end_minute
        elif scenario is not None:
            until_minute = scenario.minutes
        else:
            raise ConfigError("a closed-loop plan needs a scenario (meals and sensor)")
    _check(params, plan, scenario, start, until_minute, step_min)
    first = start.minute
    total = until_minute - first
    run = _Run(params, plan, scenario, start, total // step_min, substeps)
    changes = scenario.exercise_changes if run.exercise is not None and scenario else {}
    for minute in range(first, until_minute):
        offset = minute - first
        column = offset // step_min if offset % step_min == 0 else None
        if column is not None:
            run.bg[:, column] = run.patient.bg_mg_dl
        sensed = run.read_sensor(minute, column)
        if isinstance(plan, OpenLoopPlan):
            cho = run.plan_cho[minute - plan.start_minute]
            insulin = run.plan_insulin[minute - plan.start_minute]
        else:
            cho, insulin = run.closed_loop_actions(minute, sensed)
        effect = None
        if run.exercise is not None:
            if minute in changes and minute > first:
                rows, values = changes[minute]
                run.intensity[rows] = values
            effect = run.exercise.effect()
        eaten = run.patient.step(cho, insulin, exercise=effect, check_inputs=False)
        if run.exercise is not None:
            run.exercise.advance(run.intensity)
        run.acc["insulin_u"] += insulin
        run.acc["carbs_eaten_g"] += eaten
        run.acc["carbs_announced_g"] += cho
        if (offset + 1) % step_min == 0:
            for name in _BINNED:
                run.bins[name][:, offset // step_min] = run.acc[name]
                run.acc[name].zero_()
        if progress is not None and (offset + 1) % 60 == 0 and offset + 1 < total:
            progress((offset + 1) / total)
    if progress is not None:
        progress(1.0)
    if run.exercise is not None:
        run.exercise_y, run.exercise_z = run.exercise.y, run.exercise.z
    final = RunCheckpoint(
        patient=run.patient.checkpoint(),
        latest_cgm_mg_dl=run.latest_cgm,
        last_rescue_minute=run.last_rescue,
        exercise_y=run.exercise_y.clone(),
        exercise_z=run.exercise_z.clone(),
    )
    return T1DTrajectory(
        names=params.names,
        start_minute=first,
        step_min=step_min,
        bg_mg_dl=run.bg,
        cgm_mg_dl=run.cgm,
        final=final,
        **run.bins,
    )


def take_checkpoint(checkpoint: RunCheckpoint, rows: Sequence[int] | Tensor) -> RunCheckpoint:
    """Return the checkpoint of a subset of the patients (copies).

    Parameters
    ----------
    checkpoint : RunCheckpoint
        A checkpoint of ``B`` patients.
    rows : Sequence[int] or torch.Tensor
        Rows to keep, in order.

    Returns
    -------
    RunCheckpoint
        The same minute for ``len(rows)`` patients.
    """
    index = torch.as_tensor(rows, dtype=torch.int64)
    return RunCheckpoint(
        patient=checkpoint.patient.take(index),
        latest_cgm_mg_dl=checkpoint.latest_cgm_mg_dl[index].clone(),
        last_rescue_minute=checkpoint.last_rescue_minute[index].clone(),
        exercise_y=checkpoint.exercise_y[index].clone(),
        exercise_z=checkpoint.exercise_z[index].clone(),
    )
