"""Seeded random daily meal scenarios (three meals and three optional snacks per day).

Invariant: :func:`random_meal_scenario` is a pure function of its arguments and the state of
the ``torch.Generator`` it is given. Draws go day by day, so a longer scenario, or one started
later in day 0, repeats the meals of a shorter one at their common clock times. Each day of
each patient gets, independently, each meal of :data:`DEFAULT_MEALS` with that meal's
probability, at a time drawn from a normal distribution truncated to the meal's window and
rounded to the minute, with a size drawn from a normal distribution rounded to whole grams and
floored at 0 g. The result holds the grams *announced* at each meal's start minute and 0
elsewhere; meals outside the simulated window are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtwin.cohorts.population import AgeGroup, VirtualPatientParams
from fedtwin.errors import ConfigError

MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class MealSpec:
    """Distribution of one daily meal.

    Parameters
    ----------
    name : str
        Label, e.g. ``"breakfast"``.
    probability : float
        Probability that the meal happens on a given day.
    time_mean_min : float
        Mean start time, minutes after midnight.
    time_sd_min : float
        Standard deviation of the start time, minutes.
    time_window_min : tuple[float, float]
        Truncation window ``(earliest, latest)`` of the start time, minutes after midnight.
    carbs_mean_g : float
        Mean size, grams of carbohydrate.
    carbs_sd_g : float
        Standard deviation of the size, grams.
    """

    name: str
    probability: float
    time_mean_min: float
    time_sd_min: float
    time_window_min: tuple[float, float]
    carbs_mean_g: float
    carbs_sd_g: float

    def __post_init__(self) -> None:
        low, high = self.time_window_min
        if not 0.0 <= self.probability <= 1.0:
            raise ConfigError(f"{self.name}: probability must be in [0, 1]")
        if not 0.0 <= low < high <= MINUTES_PER_DAY:
            raise ConfigError(f"{self.name}: time window must lie within one day")
        if self.time_sd_min <= 0.0 or self.carbs_sd_g < 0.0 or self.carbs_mean_g < 0.0:
            raise ConfigError(f"{self.name}: standard deviations and mean size must be >= 0")


#: Meals of simglucose's ``RandomScenario``: breakfast, lunch and dinner (p = 0.95; 45/70/80 g,
#: SD 10 g; around 7:00/12:00/18:00, SD 60 min) and three 10 g snacks (p = 0.3, SD 5 g; around
#: 9:30/15:00/21:30, SD 30 min).
DEFAULT_MEALS: tuple[MealSpec, ...] = (
    MealSpec("breakfast", 0.95, 7 * 60, 60, (5 * 60, 9 * 60), 45, 10),
    MealSpec("morning snack", 0.3, 9.5 * 60, 30, (9 * 60, 10 * 60), 10, 5),
    MealSpec("lunch", 0.95, 12 * 60, 60, (10 * 60, 14 * 60), 70, 10),
    MealSpec("afternoon snack", 0.3, 15 * 60, 30, (14 * 60, 16 * 60), 10, 5),
    MealSpec("dinner", 0.95, 18 * 60, 60, (16 * 60, 20 * 60), 80, 10),
    MealSpec("evening snack", 0.3, 21.5 * 60, 30, (20 * 60, 23 * 60), 10, 5),
)

#: Reference body weight (kg) for :func:`meal_size_scale`.
REFERENCE_CHILD_BW_KG = 60.0


def meal_size_scale(params: VirtualPatientParams, *, min_scale: float = 0.5) -> Tensor:
    """Per-patient meal-size factor: children eat in proportion to body weight.

    Parameters
    ----------
    params : VirtualPatientParams
        The batch.
    min_scale : float, default 0.5
        Smallest factor given to a child.

    Returns
    -------
    torch.Tensor
        ``float64`` ``[B]``: ``clamp(BW / 60 kg, min_scale, 1)`` for children, 1 for adolescents
        and adults (simglucose itself gives every subject adult-sized meals).
    """
    child = torch.tensor([g is AgeGroup.CHILD for g in params.age_groups], dtype=torch.bool)
    scaled = torch.clamp(params.body_weight_kg / REFERENCE_CHILD_BW_KG, min_scale, 1.0)
    return torch.where(child, scaled, torch.ones_like(scaled))


def _truncated_normal(
    mean: float, sd: float, low: float, high: float, shape: tuple[int, ...], gen: torch.Generator
) -> Tensor:
    """Sample a truncated normal by inverting its CDF (exact, no rejection loop)."""
    cdf_low = torch.special.ndtr(torch.tensor((low - mean) / sd, dtype=torch.float64))
    cdf_high = torch.special.ndtr(torch.tensor((high - mean) / sd, dtype=torch.float64))
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    z = torch.special.ndtri(cdf_low + u * (cdf_high - cdf_low))
    return torch.clamp(mean + sd * z, low, high)


def random_meal_scenario(
    batch_size: int,
    minutes: int,
    generator: torch.Generator,
    *,
    start_minute_of_day: int = 0,
    meals: Sequence[MealSpec] = DEFAULT_MEALS,
    carb_scale: Tensor | None = None,
) -> Tensor:
    """Draw announced carbohydrate per minute for a batch of patients.

    Parameters
    ----------
    batch_size : int
        Number of patients ``B``.
    minutes : int
        Length of the scenario in minutes ``T``; minute 0 is ``start_minute_of_day`` after
        midnight of day 0.
    generator : torch.Generator
        Source of all randomness.
    start_minute_of_day : int, default 0
        Clock time of minute 0, minutes after midnight, in ``[0, 1440)``.
    meals : Sequence[MealSpec], default DEFAULT_MEALS
        Daily meals.
    carb_scale : torch.Tensor or None, optional
        ``[B]`` factor multiplying every meal size (e.g. :func:`meal_size_scale` to give
        children smaller meals); sizes are rounded to whole grams after scaling.

    Returns
    -------
    torch.Tensor
        ``float64`` ``[B, T]``: grams announced at each meal's start minute, 0 elsewhere (two
        meals drawn at the same minute add up).

    Raises
    ------
    ConfigError
        If a size or time argument is out of range or ``carb_scale`` has the wrong shape.
    """
    if batch_size < 1 or minutes < 1:
        raise ConfigError("batch_size and minutes must be positive")
    if not 0 <= start_minute_of_day < MINUTES_PER_DAY:
        raise ConfigError("start_minute_of_day must be in [0, 1440)")
    scale = torch.ones(batch_size, dtype=torch.float64) if carb_scale is None else carb_scale
    if tuple(scale.shape) != (batch_size,) or bool((scale < 0).any()):
        raise ConfigError(f"carb_scale must be a non-negative tensor of shape [{batch_size}]")
    days = math.ceil((start_minute_of_day + minutes) / MINUTES_PER_DAY)
    announced = torch.zeros(batch_size, minutes + 1, dtype=torch.float64)
    for day in range(days):
        day_start = day * MINUTES_PER_DAY - start_minute_of_day
        for meal in meals:
            happens = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            low, high = meal.time_window_min
            clock = _truncated_normal(
                meal.time_mean_min, meal.time_sd_min, low, high, (batch_size,), generator
            )
            z = torch.randn(batch_size, generator=generator, dtype=torch.float64)
            grams = torch.clamp_min(
                torch.round((meal.carbs_mean_g + meal.carbs_sd_g * z) * scale), 0.0
            )
            minute = torch.round(clock) + day_start
            inside = (happens < meal.probability) & (minute >= 0) & (minute < minutes)
            # Meals outside the window go to the spare last column, dropped below.
            column = torch.where(inside, minute, float(minutes)).to(torch.int64)
            announced.scatter_add_(1, column[:, None], torch.where(inside, grams, 0.0)[:, None])
    return announced[:, :minutes].contiguous()
