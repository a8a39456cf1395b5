"""What happens to T1D virtual patients regardless of their therapy, drawn once and replayable.

Invariant: a :class:`T1DScenario` holds only exogenous inputs — announced meals, how the
patient counts them and whether the bolus is forgotten, CGM noise and drop-outs, exercise, the
initial state — so the same scenario run under two treatment plans gives ground-truth
counterfactuals. Patient row ``b`` is drawn from its own streams
``numpy.random.SeedSequence(seed, spawn_key=(patient_keys[b],)).spawn(5)``: a patient's
scenario does not depend on the other patients of the batch, and a longer scenario repeats the
meals, sensor noise and exercise of a shorter one at the same minutes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fedtwin.cohorts.controller import BehaviourNoise
from fedtwin.cohorts.exercise import ExerciseModel
from fedtwin.cohorts.population import VirtualPatientParams
from fedtwin.cohorts.scenario import DEFAULT_MEALS, MINUTES_PER_DAY, MealSpec, meal_size_scale
from fedtwin.cohorts.sensor import SensorParams, noise_from_innovations, noise_grid_points
from fedtwin.errors import ConfigError

_GLUCOSE_STATES = (3, 4, 12)
_MEALS, _SENSOR, _DROPOUT, _EXERCISE, _PATIENT = range(5)


@dataclass(frozen=True)
class SensorDropout:
    """CGM signal loss: episodes during which the sensor reports nothing.

    Parameters
    ----------
    episodes_per_day : float, default 0.0
        Mean number of episodes per day (Poisson).
    mean_duration_min : float, default 60.0
        Mean episode length, minutes (exponential).
    """

    episodes_per_day: float = 0.0
    mean_duration_min: float = 60.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.episodes_per_day <= 48.0 and self.mean_duration_min > 0.0):
            raise ConfigError("dropout needs 0 <= episodes_per_day <= 48 and duration > 0")


@dataclass(frozen=True)
class ExerciseHabit:
    """How often and how hard a patient exercises (see :mod:`fedtwin.cohorts.exercise`).

    Parameters
    ----------
    sessions_per_week : float, default 0.0
        Mean sessions per week; each day has one with probability ``sessions_per_week / 7``.
    time_mean_min : float, default 1020.0
        Mean start, minutes after midnight (17:00).
    time_sd_min : float, default 60.0
        SD of the start time, minutes (truncated to three SDs and to the day).
    duration_min : int, default 45
        Session length, minutes.
    intensity : float, default 0.5
        Intensity as a fraction of the heart-rate reserve, in ``(0, 1]``.
    """

    sessions_per_week: float = 0.0
    time_mean_min: float = 1020.0
    time_sd_min: float = 60.0
    duration_min: int = 45
    intensity: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.sessions_per_week <= 7.0:
            raise ConfigError("sessions_per_week must be in [0, 7]")
        if not (0 < self.duration_min < MINUTES_PER_DAY and 0.0 < self.intensity <= 1.0):
            raise ConfigError("exercise needs 0 < duration_min < 1440 and intensity in (0, 1]")
        if self.time_sd_min <= 0.0 or not 0.0 <= self.time_mean_min < MINUTES_PER_DAY:
            raise ConfigError("exercise time needs a mean within the day and a positive SD")


class ScenarioConfig(BaseModel):
    """Habits of a population of patients, from which :func:`draw_scenario` draws.

    Parameters
    ----------
    meals : tuple[MealSpec, ...]
        Daily meals (default: simglucose's ``RandomScenario``, :data:`DEFAULT_MEALS`).
    scale_child_meals : bool
        Give children meals in proportion to body weight (:func:`meal_size_scale`).
    behaviour : BehaviourNoise
        Carb-counting bias and errors, missed-bolus probability.
    sensor : SensorParams
        CGM noise, sample time and reporting range.
    dropout : SensorDropout
        CGM drop-out episodes.
    exercise : ExerciseHabit
        Exercise sessions (none by default).
    exercise_model : ExerciseModel
        Physiology of the exercise extension.
    initial_bg_jitter : float
        Relative SD of the initial glucose states around steady state (truncated at 2 SD).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    meals: tuple[MealSpec, ...] = DEFAULT_MEALS
    scale_child_meals: bool = True
    behaviour: BehaviourNoise = BehaviourNoise()
    sensor: SensorParams = SensorParams()
    dropout: SensorDropout = SensorDropout()
    exercise: ExerciseHabit = ExerciseHabit()
    exercise_model: ExerciseModel = ExerciseModel()
    initial_bg_jitter: float = Field(0.03, ge=0.0, le=0.3)


@dataclass(frozen=True, eq=False)
class T1DScenario:
    """Exogenous inputs of ``B`` patients over minutes ``[0, minutes)``.

    Meal and exercise events are stored sparsely (one entry per event, sorted by minute then
    row) so that memory grows with events, not with ``B x minutes``.

    Parameters
    ----------
    minutes : int
        Horizon.
    start_minute_of_day : int
        Clock time of minute 0.
    initial_state : torch.Tensor
        ``[B, 13]`` state at minute 0.
    meal_row, meal_minute : torch.Tensor
        ``int64`` ``[E]``: patient and minute of each announced meal.
    meal_g : torch.Tensor
        ``float64`` ``[E]``: grams announced (and eaten).
    meal_counted_g : torch.Tensor
        ``float64`` ``[E]``: grams the patient believes they eat (bolus basis).
    bolus_missed : torch.Tensor
        ``bool`` ``[E]``: the patient forgets this meal's bolus.
    sensor : SensorParams
        CGM model; reading ``k`` is taken at minute ``k * sensor.sample_time_min``.
    sensor_noise_mg_dl : torch.Tensor
        ``float64`` ``[B, N]`` additive errors.
    sensor_missing : torch.Tensor
        ``bool`` ``[B, N]``: no reading (drop-out).
    exercise_row, exercise_start_minute, exercise_duration_min : torch.Tensor
        ``int64`` ``[S]``: exercise sessions.
    exercise_intensity : torch.Tensor
        ``float64`` ``[S]``: fraction of the heart-rate reserve.
    exercise_model : ExerciseModel
        Physiology of the exercise extension.
    """

    minutes: int
    start_minute_of_day: int
    initial_state: Tensor
    meal_row: Tensor
    meal_minute: Tensor
    meal_g: Tensor
    meal_counted_g: Tensor
    bolus_missed: Tensor
    sensor: SensorParams
    sensor_noise_mg_dl: Tensor
    sensor_missing: Tensor
    exercise_row: Tensor
    exercise_start_minute: Tensor
    exercise_duration_min: Tensor
    exercise_intensity: Tensor
    exercise_model: ExerciseModel

    @property
    def batch_size(self) -> int:
        """Number of patients ``B``."""
        return int(self.initial_state.shape[0])

    @property
    def has_exercise(self) -> bool:
        """Whether any patient exercises."""
        return bool(self.exercise_row.numel())

    @functools.cached_property
    def meals_by_minute(self) -> dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``minute -> (rows, grams, counted grams, bolus missed)`` of that minute's meals."""
        out: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
        if self.meal_minute.numel() == 0:
            return out
        minutes, counts = torch.unique_consecutive(self.meal_minute, return_counts=True)
        start = 0
        for minute, count in zip(minutes.tolist(), counts.tolist(), strict=True):
            part = slice(start, start + count)
            out[minute] = (
                self.meal_row[part],
                self.meal_g[part],
                self.meal_counted_g[part],
                self.bolus_missed[part],
            )
            start += count
        return out

    @functools.cached_property
    def exercise_changes(self) -> dict[int, tuple[Tensor, Tensor]]:
        """``minute -> (rows, new intensity)`` at every exercise start and end."""
        out: dict[int, tuple[list[int], list[float]]] = {}
        for row, start, duration, level in zip(
            self.exercise_row.tolist(),
            self.exercise_start_minute.tolist(),
            self.exercise_duration_min.tolist(),
            self.exercise_intensity.tolist(),
            strict=True,
        ):
            for minute, value in ((start, level), (start + duration, 0.0)):
                rows, values = out.setdefault(minute, ([], []))
                rows.append(row)
                values.append(value)
        return {
            m: (torch.tensor(r, dtype=torch.int64), torch.tensor(v, dtype=torch.float64))
            for m, (r, v) in sorted(out.items())
        }

    def announced_carbs_g(self) -> Tensor:
        """Dense announced meals, ``float64`` ``[B, minutes]`` (for tests and small batches)."""
        dense = torch.zeros(self.batch_size, self.minutes, dtype=torch.float64)
        dense.index_put_((self.meal_row, self.meal_minute), self.meal_g, accumulate=True)
        return dense


def _truncated_normal(u: Tensor, mean: float, sd: float, low: float, high: float) -> Tensor:
    """Inverse-CDF truncated normal from uniforms ``u``."""
    cdf_low = torch.special.ndtr(torch.tensor((low - mean) / sd, dtype=torch.float64))
    cdf_high = torch.special.ndtr(torch.tensor((high - mean) / sd, dtype=torch.float64))
    z = torch.special.ndtri(cdf_low + u * (cdf_high - cdf_low))
    return torch.clamp(mean + sd * z, low, high)


@dataclass(frozen=True)
class _MealTable:
    """The meals of a config as ``[M]`` tensors, so a patient's meals are drawn in one go."""

    probability: Tensor
    time_mean: Tensor
    time_sd: Tensor
    time_low: Tensor
    time_high: Tensor
    cdf_low: Tensor
    cdf_span: Tensor
    carbs_mean: Tensor
    carbs_sd: Tensor

    @classmethod
    def of(cls, meals: Sequence[MealSpec]) -> _MealTable:
        def column(values: Iterable[float]) -> Tensor:
            return torch.tensor(list(values), dtype=torch.float64)

        mean = column(m.time_mean_min for m in meals)
        sd = column(m.time_sd_min for m in meals)
        low = column(m.time_window_min[0] for m in meals)
        high = column(m.time_window_min[1] for m in meals)
        cdf_low = torch.special.ndtr((low - mean) / sd)
        return cls(
            probability=column(m.probability for m in meals),
            time_mean=mean,
            time_sd=sd,
            time_low=low,
            time_high=high,
            cdf_low=cdf_low,
            cdf_span=torch.special.ndtr((high - mean) / sd) - cdf_low,
            carbs_mean=column(m.carbs_mean_g for m in meals),
            carbs_sd=column(m.carbs_sd_g for m in meals),
        )


def _patient_meals(
    rng: np.random.Generator,
    table: _MealTable,
    behaviour: BehaviourNoise,
    days: int,
    day_offset: int,
    scale: float,
) -> list[tuple[int, float, float, bool]]:
    """``(minute, grams, counted grams, missed)`` of one patient, before the bias factor.

    Every meal of every day is drawn at once (``[days, M]``), in the order of the per-meal
    loop this replaces: meal by meal, day by day.
    """
    u = torch.from_numpy(rng.random((days, table.probability.shape[0], 5)))
    z = torch.special.ndtri(table.cdf_low + u[..., 1] * table.cdf_span)
    clock = torch.clamp(table.time_mean + table.time_sd * z, table.time_low, table.time_high)
    z_size = torch.special.ndtri(u[..., 2])
    grams = torch.clamp_min(torch.round((table.carbs_mean + table.carbs_sd * z_size) * scale), 0)
    counted = grams * torch.exp(behaviour.carb_count_log_sd * torch.special.ndtri(u[..., 3]))
    missed = u[..., 4] < behaviour.missed_bolus_probability
    minute = torch.round(clock).to(torch.int64) + torch.arange(days)[:, None] * MINUTES_PER_DAY
    happens = (u[..., 0] < table.probability) & (grams > 0)
    meal, day = torch.nonzero(happens.T, as_tuple=True)
    return list(
        zip(
            (minute[day, meal] - day_offset).tolist(),
            grams[day, meal].tolist(),
            counted[day, meal].tolist(),
            missed[day, meal].tolist(),
            strict=True,
        )
    )


def _patient_dropouts(
    rng: np.random.Generator, dropout: SensorDropout, minutes: int, n_samples: int, sample_min: int
) -> Tensor:
    missing = torch.zeros(n_samples, dtype=torch.bool)
    episodes = int(rng.poisson(dropout.episodes_per_day * minutes / MINUTES_PER_DAY))
    starts = rng.integers(0, minutes, size=episodes)
    lengths = np.ceil(rng.exponential(dropout.mean_duration_min, size=episodes))
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        first = math.ceil(start / sample_min)
        last = math.ceil((start + length) / sample_min)
        missing[first:last] = True
    return missing


def _patient_exercise(
    rng: np.random.Generator, habit: ExerciseHabit, days: int, day_offset: int
) -> list[tuple[int, int, float]]:
    uniforms = torch.from_numpy(rng.random((days, 2)))
    low = max(0.0, habit.time_mean_min - 3.0 * habit.time_sd_min)
    high = min(
        float(MINUTES_PER_DAY - habit.duration_min), habit.time_mean_min + 3 * habit.time_sd_min
    )
    clock = _truncated_normal(uniforms[:, 1], habit.time_mean_min, habit.time_sd_min, low, high)
    sessions = []
    for day in range(days):
        if float(uniforms[day, 0]) < habit.sessions_per_week / 7.0:
            start = round(float(clock[day])) + day * MINUTES_PER_DAY - day_offset
            sessions.append((start, habit.duration_min, habit.intensity))
    return sessions


def draw_scenario(
    params: VirtualPatientParams,
    config: ScenarioConfig,
    minutes: int,
    seed: int,
    *,
    patient_keys: Sequence[int] | None = None,
    start_minute_of_day: int = 0,
) -> T1DScenario:
    """Draw the exogenous inputs of a batch of patients.

    Parameters
    ----------
    params : VirtualPatientParams
        The patients (initial state, body weight for child meal sizes).
    config : ScenarioConfig
        Habits to draw from.
    minutes : int
        Horizon (>= 1).
    seed : int
        Non-negative seed of every draw.
    patient_keys : Sequence[int] or None, optional
        Non-negative key of each row's random streams (default ``0 … B-1``); give a site's
        patient indices so that a patient's scenario does not depend on how the site is batched.
    start_minute_of_day : int, default 0
        Clock time of minute 0.

    Returns
    -------
    T1DScenario
        The scenario.

    Raises
    ------
    ConfigError
        On a bad horizon, seed, start time or key list.
    """
    batch = params.batch_size
    keys = list(range(batch)) if patient_keys is None else [int(k) for k in patient_keys]
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
        raise ConfigError("scenario minutes must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed must be a non-negative integer")
    if not 0 <= start_minute_of_day < MINUTES_PER_DAY:
        raise ConfigError("start_minute_of_day must be in [0, 1440)")
    if len(keys) != batch or any(k < 0 for k in keys):
        raise ConfigError(f"patient_keys must be {batch} non-negative integers")
    days = math.ceil((start_minute_of_day + minutes) / MINUTES_PER_DAY)
    sample_min = config.sensor.sample_time_min
    n_samples = math.ceil(minutes / sample_min)
    n_grid = noise_grid_points(n_samples, config.sensor)
    scale = meal_size_scale(params) if config.scale_child_meals else torch.ones(batch)
    table = _MealTable.of(config.meals)
    meals: list[tuple[int, int, float, float, bool]] = []
    sessions: list[tuple[int, int, int, float]] = []
    innovations = torch.empty(batch, n_grid, dtype=torch.float64)
    missing = torch.zeros(batch, n_samples, dtype=torch.bool)
    jitter = torch.empty(batch, dtype=torch.float64)
    for row, key in enumerate(keys):
        streams = [
            np.random.default_rng(s)
            for s in np.random.SeedSequence(seed, spawn_key=(key,)).spawn(5)
        ]
        z_bias, z_jitter = streams[_PATIENT].standard_normal(2)
        bias = math.exp(config.behaviour.carb_bias_log_sd * float(z_bias))
        jitter[row] = min(2.0, max(-2.0, float(z_jitter)))
        for minute, grams, counted, missed in _patient_meals(
            streams[_MEALS], table, config.behaviour, days, start_minute_of_day, float(scale[row])
        ):
            if 0 <= minute < minutes:
                meals.append((minute, row, grams, counted * bias, missed))
        innovations[row] = torch.from_numpy(streams[_SENSOR].standard_normal(n_grid))
        if config.dropout.episodes_per_day > 0.0:
            missing[row] = _patient_dropouts(
                streams[_DROPOUT], config.dropout, minutes, n_samples, sample_min
            )
        if config.exercise.sessions_per_week > 0.0:
            for start, duration, level in _patient_exercise(
                streams[_EXERCISE], config.exercise, days, start_minute_of_day
            ):
                if 0 <= start < minutes:
                    sessions.append((start, row, duration, level))
    meals.sort(key=lambda event: (event[0], event[1]))
    sessions.sort(key=lambda event: (event[0], event[1]))
    state = params.initial_state.clone()
    factor = 1.0 + config.initial_bg_jitter * jitter
    state[:, list(_GLUCOSE_STATES)] *= factor[:, None]
    return T1DScenario(
        minutes=minutes,
        start_minute_of_day=start_minute_of_day,
        initial_state=state,
        meal_row=torch.tensor([e[1] for e in meals], dtype=torch.int64),
        meal_minute=torch.tensor([e[0] for e in meals], dtype=torch.int64),
        meal_g=torch.tensor([e[2] for e in meals], dtype=torch.float64),
        meal_counted_g=torch.tensor([e[3] for e in meals], dtype=torch.float64),
        bolus_missed=torch.tensor([e[4] for e in meals], dtype=torch.bool),
        sensor=config.sensor,
        sensor_noise_mg_dl=noise_from_innovations(innovations, n_samples, config.sensor),
        sensor_missing=missing,
        exercise_row=torch.tensor([s[1] for s in sessions], dtype=torch.int64),
        exercise_start_minute=torch.tensor([s[0] for s in sessions], dtype=torch.int64),
        exercise_duration_min=torch.tensor([s[2] for s in sessions], dtype=torch.int64),
        exercise_intensity=torch.tensor([s[3] for s in sessions], dtype=torch.float64),
        exercise_model=config.exercise_model,
    )
