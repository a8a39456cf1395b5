"""A patient's twin at the bedside: continuous update, forecasts with bands, what-if.

:class:`Twin` binds a trained glucose twin (:class:`~fedtwin.twins.runfile.TwinRun`) to one
patient's state. :meth:`Twin.observe` appends new 5-minute rows (CGM reading at the start of
the bin, insulin and carbohydrate during it, as in :mod:`fedtwin.twins.windows`) to ring
buffers holding only what the next forecast reads: the last ``L`` readings and the last
``L + 1`` treatment bins. Nothing is retrained; an update costs O(rows added).

Missing readings (``NaN``) up to :data:`MAX_GAP_STEPS` in a row are filled linearly when the
next reading arrives (CGMs drop single readings routinely); a longer gap empties the history,
which must then refill (``L`` readings) before the next forecast.

Invariants: a forecast reads nothing but the ring buffers and the plan; the same rows observed
in one call or in many give identical state; the shared model is never modified (a personal
head, if set, is per patient and stays at the site).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray

from fedtwin.errors import ConfigError
from fedtwin.twins.calibration import DEFAULT_COVERAGE, gaussian_quantile
from fedtwin.twins.glucose import GlucoseTwinConfig
from fedtwin.twins.history import MAX_GAP_STEPS
from fedtwin.twins.personalise import PersonalHead
from fedtwin.twins.rollout import rollout
from fedtwin.twins.runfile import TwinRun, load_twin_run
from fedtwin.twins.whatif import (
    STEP_MIN,
    GlucosePlan,
    Objective,
    PlanComparison,
    compare_plans,
)


@dataclass(frozen=True)
class TwinForecast:
    """A forecast from the latest reading: ``[S]`` arrays at 5, 10, …, 5·S minutes ahead."""

    minutes_ahead: NDArray[np.int64]
    mean_mg_dl: NDArray[np.float64]
    std_mg_dl: NDArray[np.float64]
    lower_mg_dl: NDArray[np.float64]
    upper_mg_dl: NDArray[np.float64]
    coverage: float


class Twin:
    """One patient's glucose twin.

    Parameters
    ----------
    run : TwinRun
        The trained twin (shared by every patient; see :func:`load_twin_run`).
    head : PersonalHead or None
        This patient's personal head (:func:`fedtwin.twins.personalise.personalise`).
    coverage : float, default 0.90
        Central coverage of the bands.
    """

    def __init__(
        self, run: TwinRun, *, head: PersonalHead | None = None, coverage: float = DEFAULT_COVERAGE
    ) -> None:
        if not 0.0 < coverage < 1.0:
            raise ConfigError(f"coverage must be in (0, 1), got {coverage}")
        self.run = run
        self.head = head
        self.coverage = coverage
        length = run.config.history_steps
        self._cgm = np.full(length, np.nan)
        self._insulin = np.zeros(length + 1)
        self._carbs = np.zeros(length + 1)
        self._cgm_next = 0  # ring position of the next reading
        self._treatment_next = 0
        self._rows = 0  # rows observed (treatment bins known)
        self._usable = 0  # consecutive readings (or filled gaps) ending at the newest row
        self._missing = 0  # trailing readings still missing
        self._last_reading = math.nan

    @classmethod
    def from_run_dir(
        cls, run_dir: Path, *, head: PersonalHead | None = None, coverage: float = DEFAULT_COVERAGE
    ) -> Twin:
        """Load the run's twin and start an empty patient state."""
        return cls(load_twin_run(run_dir), head=head, coverage=coverage)

    @property
    def config(self) -> GlucoseTwinConfig:
        """The twin's architecture."""
        return self.run.config

    @property
    def rows_needed(self) -> int:
        """Rows before the first forecast: ``L`` readings plus the treatment bin before them."""
        return self.config.history_steps + 1

    @property
    def ready(self) -> bool:
        """Whether a forecast can be made now."""
        length = self.config.history_steps
        return self._missing == 0 and self._usable >= length and self._rows >= length + 1

    @property
    def current_basal_u_per_h(self) -> float:
        """Median insulin per bin over the buffered bins, per hour (boluses are sparse)."""
        known = min(self._rows, len(self._insulin))
        if known == 0:
            return 0.0
        recent = self._treatment_view(self._insulin)[-known:]
        return float(np.median(recent)) * (60.0 / STEP_MIN)

    def observe(self, cgm_mg_dl: ArrayLike, insulin_u: ArrayLike, carbs_g: ArrayLike) -> None:
        """Append rows: readings (``NaN`` = missing), insulin (U) and carbohydrate (g) per bin.

        Raises
        ------
        ConfigError
            If the arrays differ in length or treatment values are negative or not finite.
        """
        cgm = np.atleast_1d(np.asarray(cgm_mg_dl, dtype=np.float64))
        insulin = np.atleast_1d(np.asarray(insulin_u, dtype=np.float64))
        carbs = np.atleast_1d(np.asarray(carbs_g, dtype=np.float64))
        if not (cgm.ndim == insulin.ndim == carbs.ndim == 1) or not (
            len(cgm) == len(insulin) == len(carbs)
        ):
            raise ConfigError("observe needs three 1-D arrays of equal length")
        for name, values in (("insulin_u", insulin), ("carbs_g", carbs)):
            if not np.all(np.isfinite(values)) or np.any(values < 0):
                raise ConfigError(f"{name} must be finite and >= 0")
        rows = zip(cgm.tolist(), insulin.tolist(), carbs.tolist(), strict=True)
        for reading, units, grams in rows:
            self._push(reading, units, grams)

    def _push(self, reading: float, units: float, grams: float) -> None:
        slot = self._treatment_next
        self._insulin[slot], self._carbs[slot] = units, grams
        self._treatment_next = (slot + 1) % len(self._insulin)
        self._rows += 1
        length = len(self._cgm)
        if math.isnan(reading):
            self._missing += 1
            if self._missing > MAX_GAP_STEPS:
                self._usable = 0
        elif self._missing > MAX_GAP_STEPS or math.isnan(self._last_reading):
            self._missing, self._usable = 0, 0
        elif self._missing:
            # Fill the short gap linearly between the last reading and this one.
            gap = self._missing
            for k in range(1, gap + 1):
                position = (self._cgm_next - gap - 1 + k) % length
                self._cgm[position] = self._last_reading + (reading - self._last_reading) * (
                    k / (gap + 1)
                )
            self._missing = 0
        self._cgm[self._cgm_next] = reading
        self._cgm_next = (self._cgm_next + 1) % length
        if not math.isnan(reading):
            self._last_reading = reading
        if self._missing <= MAX_GAP_STEPS:
            self._usable += 1

    def _treatment_view(self, ring: NDArray[np.float64]) -> NDArray[np.float64]:
        """Ring contents oldest first."""
        return np.roll(ring, -self._treatment_next)

    def history(self) -> torch.Tensor:
        """The model's ``[3, L]`` history at the latest reading (see windows.py)."""
        if not self.ready:
            raise ConfigError(
                f"the twin needs {self.rows_needed} rows with at most {MAX_GAP_STEPS} missing "
                f"readings in a row, ending with a reading, before it can forecast"
            )
        cgm = np.roll(self._cgm, -self._cgm_next)
        insulin = self._treatment_view(self._insulin)
        carbs = self._treatment_view(self._carbs)
        # Treatment bins t-L .. t-1 go with readings t-L+1 .. t; bin t is the plan's first.
        return torch.tensor(np.stack([cgm, insulin[:-1], carbs[:-1]]), dtype=torch.float32)

    def latest_treatment(self) -> tuple[float, float]:
        """Insulin (U) and carbohydrate (g) recorded in the bin of the latest reading."""
        slot = (self._treatment_next - 1) % len(self._insulin)
        return float(self._insulin[slot]), float(self._carbs[slot])

    def default_plan(self, steps: int) -> torch.Tensor:
        """``[2, steps]``: the latest bin as recorded, then the current basal, no carbs."""
        plan = torch.zeros(2, steps)
        plan[0, :] = self.current_basal_u_per_h / (60.0 / STEP_MIN)
        plan[0, 0], plan[1, 0] = self.latest_treatment()
        return plan

    def forecast(
        self, plan: GlucosePlan | None = None, *, horizon_min: int | None = None
    ) -> TwinForecast:
        """Forecast from the latest reading under ``plan`` (default: :meth:`default_plan`).

        A plan replaces the treatment from the latest bin on (minute 0 is that bin).
        ``horizon_min`` (multiple of 5, default the model's horizon) may exceed the model's
        horizon: forecasts are then chained (:func:`fedtwin.twins.rollout.rollout`).
        """
        horizon = self.config.horizon_min if horizon_min is None else horizon_min
        if horizon < STEP_MIN or horizon % STEP_MIN or horizon > 1440:
            raise ConfigError(f"horizon_min must be a multiple of 5 in [5, 1440], got {horizon}")
        steps = horizon // STEP_MIN
        schedule = (
            self.default_plan(steps)
            if plan is None
            else plan.schedule(steps, self.current_basal_u_per_h)
        )
        course = rollout(
            self.run.model,
            self.history().unsqueeze(0),
            schedule.unsqueeze(0),
            self.run.calibration,
            self.head,
        )
        mean = course.mean_mg_dl[0].double().numpy()
        std = course.std_mg_dl[0].double().numpy()
        z = gaussian_quantile(self.coverage)
        return TwinForecast(
            minutes_ahead=np.arange(1, steps + 1, dtype=np.int64) * STEP_MIN,
            mean_mg_dl=mean,
            std_mg_dl=std,
            lower_mg_dl=mean - z * std,
            upper_mg_dl=mean + z * std,
            coverage=self.coverage,
        )

    def compare(
        self,
        plans: Sequence[GlucosePlan],
        *,
        horizon_min: int = 360,
        objective: Objective | None = None,
        samples: int = 200,
        generator: torch.Generator | None = None,
    ) -> PlanComparison:
        """Rank treatment plans from the latest reading (:func:`compare_plans`)."""
        if not plans:
            raise ConfigError("compare needs at least one plan")
        return compare_plans(
            self.run.model,
            self.history(),
            plans,
            current_basal_u_per_h=self.current_basal_u_per_h,
            horizon_min=horizon_min,
            objective=objective,
            calibration=self.run.calibration,
            head=self.head,
            coverage=self.coverage,
            samples=samples,
            generator=generator,
        )
