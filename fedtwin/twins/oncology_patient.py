"""One patient's oncology twin at the bedside: continuous update, forecasts, what-if.

:class:`OncologyPatientTwin` binds a trained oncology twin
(:class:`~fedtwin.twins.oncology_files.OncologyModel`) to one patient. :meth:`observe` appends
new days (volume measured in the morning, chemo and radio given after the measurement, as in
:class:`~fedtwin.twins.TumourSeries`) and keeps only what the next forecast reads:

* the last ``W`` days, ``W`` the encoder's receptive field plus one (and at least the
  decoder's ``P`` treatment days), so the dilated causal convolutions see exactly what they
  would see over the whole history;
* running totals (count and summed log-volume change per kind of treatment day) of the days
  that left that window, which the encoder's running-response channels add to the window's own.

An update costs O(days added), nothing is retrained, and a forecast equals the one the twin
makes from the patient's full history (up to float rounding of the running totals).

Invariants: new days must continue the history (no gap, no overlap); volumes are finite and
positive, doses are 0 or the fixed dose of the protocol the twin was trained on (chemotherapy
:data:`~fedtwin.cohorts.oncology.CHEMO_DOSE` mg, radiotherapy fractions of
:data:`~fedtwin.cohorts.oncology.RADIO_DOSE_GY` Gy), never negative; a bad day is refused with
one line naming it and leaves the state unchanged. The shared model is never modified.

Plans count days from 1, the day after the last observed day. The last observed day's own
treatment is a fact (given after its measurement) and comes before every plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor
from torch.nn import functional

from fedtwin.cohorts.oncology import CHEMO_DOSE, RADIO_DOSE_GY
from fedtwin.errors import ConfigError
from fedtwin.twins.oncology import (
    INCREMENT_SCALE,
    MAX_PLAN_DAYS,
    MIN_VOLUME_CM3,
    PATIENT_TYPES,
    TREATMENT_KINDS,
    TumourForecast,
    TumourSeries,
    encoder_inputs,
    log_volume_of,
)
from fedtwin.twins.oncology_files import UNKNOWN_PATIENT_TYPE, OncologyModel, PatientTypeInput
from fedtwin.twins.oncology_whatif import RankedRegimen, RegimenObjective, rank_by_objective

#: Channels of :func:`~fedtwin.twins.oncology.encoder_inputs` holding the running responses.
_RESPONSE_CHANNELS = slice(4, 4 + 2 * TREATMENT_KINDS)
_DOSE_TOLERANCE = 1e-6


class OncologyPlan(BaseModel):
    """A named plan: the days (1 = the day after the last observed day) of chemo and radio."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("plan", min_length=1, max_length=80)
    chemo_days: tuple[int, ...] = Field((), max_length=MAX_PLAN_DAYS)
    radio_days: tuple[int, ...] = Field((), max_length=MAX_PLAN_DAYS)

    @field_validator("chemo_days", "radio_days")
    @classmethod
    def _days_ahead(cls, days: tuple[int, ...]) -> tuple[int, ...]:
        for day in days:
            if not 1 <= day <= MAX_PLAN_DAYS:
                raise ValueError(f"day {day} is outside 1-{MAX_PLAN_DAYS}")
        if len(set(days)) != len(days):
            raise ValueError("a day is listed twice")
        return tuple(sorted(days))

    def last_day(self) -> int:
        """The latest treated day (0 for no treatment)."""
        return max((*self.chemo_days, *self.radio_days), default=0)

    def chemo_dose_mg(self) -> float:
        """Cumulative chemotherapy of the plan, mg."""
        return CHEMO_DOSE * len(self.chemo_days)

    def radio_dose_gy(self) -> float:
        """Cumulative radiotherapy of the plan, Gy."""
        return RADIO_DOSE_GY * len(self.radio_days)


class OncologyPlansFile(BaseModel):
    """What ``fedtwin twin oncology-what-if --plans`` reads: horizon, objective, plans."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    horizon_days: int = Field(28, ge=1, le=MAX_PLAN_DAYS)
    objective: RegimenObjective = RegimenObjective()
    plans: tuple[OncologyPlan, ...] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _fit(self) -> OncologyPlansFile:
        names = [plan.name for plan in self.plans]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"plan names must be unique: {repeated[0]!r} repeats")
        for plan in self.plans:
            if plan.last_day() > self.horizon_days:
                raise ValueError(
                    f"plan {plan.name!r} treats on day {plan.last_day()}, "
                    f"after the horizon of {self.horizon_days} days"
                )
        return self


@dataclass(frozen=True)
class PatientTumourForecast:
    """A forecast from the last observed day: ``[K]`` arrays for days ``last+1 … last+K``.

    ``volume_cm3`` is the expected (log-normal mean) volume, ``lower_cm3``/``upper_cm3`` the
    central ``coverage`` interval; ``chemo_mg``/``radio_gy`` the plan's dose on each day.
    """

    days: NDArray[np.int64]
    volume_cm3: NDArray[np.float64]
    lower_cm3: NDArray[np.float64]
    upper_cm3: NDArray[np.float64]
    chemo_mg: NDArray[np.float64]
    radio_gy: NDArray[np.float64]
    coverage: float


def _treatment_kind(chemo: Tensor, radio: Tensor) -> Tensor:
    return chemo.long() + 2 * radio.long()


class OncologyPatientTwin:
    """One patient's oncology twin.

    Parameters
    ----------
    model : OncologyModel
        The trained twin (shared by every patient; see
        :func:`~fedtwin.twins.oncology_files.load_oncology_twin`).
    patient_type : int or None
        The patient's type (1-3); required by a twin trained with types, refused by one
        trained without.
    coverage : float, default 0.9
        Central probability of the forecast intervals.
    """

    def __init__(
        self, model: OncologyModel, *, patient_type: int | None = None, coverage: float = 0.9
    ) -> None:
        if not 0.0 < coverage < 1.0:
            raise ConfigError(f"coverage must be in (0, 1), got {coverage}")
        if model.patient_type is PatientTypeInput.OBSERVED:
            if patient_type is None or not 1 <= patient_type <= PATIENT_TYPES:
                raise ConfigError(
                    f"{model.path}: this twin needs the patient type (1-{PATIENT_TYPES})"
                )
        elif patient_type is not None:
            raise ConfigError(
                f"{model.path}: this twin was trained without patient types; give none"
            )
        self.model = model
        self.coverage = coverage
        self.patient_type = UNKNOWN_PATIENT_TYPE if patient_type is None else patient_type
        config = model.config
        receptive_field = 1 + (config.kernel_size - 1) * sum(config.dilations)
        self.window_days = max(receptive_field, config.treatment_lag_days) + 1
        self.first_day: int | None = None
        self.days_observed = 0
        self._volume = torch.zeros(0, dtype=torch.float32)
        self._chemo = torch.zeros(0, dtype=torch.bool)
        self._radio = torch.zeros(0, dtype=torch.bool)
        self._counts = torch.zeros(TREATMENT_KINDS, dtype=torch.float64)
        self._sums = torch.zeros(TREATMENT_KINDS, dtype=torch.float64)

    @property
    def last_day(self) -> int | None:
        """Day number of the latest observation (``None`` before any)."""
        return None if self.first_day is None else self.first_day + self.days_observed - 1

    def observe(
        self,
        volume_cm3: ArrayLike,
        chemo_mg: ArrayLike | None = None,
        radio_gy: ArrayLike | None = None,
        *,
        first_day: int | None = None,
    ) -> None:
        """Append consecutive days (O(days added); nothing is retrained).

        Parameters
        ----------
        volume_cm3 : array_like
            ``[D]`` tumour volume measured each day (> 0).
        chemo_mg, radio_gy : array_like or None
            ``[D]`` chemotherapy and radiotherapy given after each day's measurement
            (0 or the protocol dose; default none).
        first_day : int or None
            Day number of the first new day: must be ``last_day + 1`` once days are observed
            (default: that, or 0 for the first call).

        Raises
        ------
        ConfigError
            A gap or overlap, a length mismatch, a non-positive volume, a negative or
            non-protocol dose; the state is then unchanged.
        """
        volume = np.atleast_1d(np.asarray(volume_cm3, dtype=np.float64))
        count = volume.shape[0]
        start = self._check_start(first_day)
        chemo = self._doses(chemo_mg, count, "chemo_mg", CHEMO_DOSE, start)
        radio = self._doses(radio_gy, count, "radio_gy", RADIO_DOSE_GY, start)
        if volume.ndim != 1 or count == 0:
            raise ConfigError("volume_cm3 must be a non-empty 1-D sequence of days")
        bad = np.flatnonzero(~np.isfinite(volume) | (volume <= 0.0))
        if bad.size:
            raise ConfigError(
                f"day {start + int(bad[0])}: tumour_volume_cm3 must be finite and > 0, "
                f"got {volume[bad[0]]:g}"
            )
        self.first_day = start if self.first_day is None else self.first_day
        self.days_observed += count
        self._volume = torch.cat([self._volume, torch.from_numpy(volume).to(torch.float32)])
        self._chemo = torch.cat([self._chemo, torch.from_numpy(chemo)])
        self._radio = torch.cat([self._radio, torch.from_numpy(radio)])
        self._drop_old_days()

    def _check_start(self, first_day: int | None) -> int:
        if self.last_day is None:
            start = 0 if first_day is None else int(first_day)
            if start < 0:
                raise ConfigError(f"day {start}: day numbers must be >= 0")
            return start
        expected = self.last_day + 1
        if first_day is None or first_day == expected:
            return expected
        what = "overlaps" if first_day < expected else "leaves a gap after"
        raise ConfigError(
            f"day {first_day}: {what} the history (last day {self.last_day}); "
            f"new days must start at day {expected}"
        )

    @staticmethod
    def _doses(
        values: ArrayLike | None, count: int, name: str, dose: float, start: int
    ) -> NDArray[np.bool_]:
        if values is None:
            return np.zeros(count, dtype=bool)
        given = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if given.shape != (count,):
            raise ConfigError(f"{name} has {given.shape[0]} days, tumour_volume_cm3 {count}")
        treated = np.abs(given - dose) <= _DOSE_TOLERANCE * dose
        bad = np.flatnonzero(~np.isfinite(given) | ~((given == 0.0) | treated))
        if bad.size:
            value = given[bad[0]]
            why = "is negative" if value < 0 else f"is neither 0 nor the protocol dose {dose:g}"
            raise ConfigError(f"day {start + int(bad[0])}: {name} {value:g} {why}")
        return treated

    def _drop_old_days(self) -> None:
        """Move days beyond the window into the running totals (pair (a, a+1) per day a)."""
        excess = self._volume.shape[0] - self.window_days
        if excess <= 0:
            return
        log_volume = torch.log(self._volume[: excess + 1].clamp_min(MIN_VOLUME_CM3))
        change = (log_volume[1:] - log_volume[:-1]).to(torch.float64)
        kind = _treatment_kind(self._chemo[:excess], self._radio[:excess])
        self._counts += torch.bincount(kind, minlength=TREATMENT_KINDS).to(torch.float64)
        self._sums.index_add_(0, kind, change)
        self._volume = self._volume[excess:]
        self._chemo = self._chemo[excess:]
        self._radio = self._radio[excess:]

    def _inputs(self, series: TumourSeries) -> Tensor:
        """Encoder inputs of the window, running responses including the dropped days.

        Mirrors :func:`fedtwin.twins.oncology._response_so_far` with the totals as offsets;
        tests check it against the twin's inputs over the full history.
        """
        inputs = encoder_inputs(series)
        volume = series.volume_cm3.to(torch.float32)
        log_volume = log_volume_of(volume)
        change = functional.pad(log_volume[:, 1:] - log_volume[:, :-1], (1, 0))
        previous = functional.pad(_treatment_kind(series.chemo, series.radio)[:, :-1], (1, 0))
        hits = functional.one_hot(previous, TREATMENT_KINDS).to(torch.float64)
        hits[:, 0] = 0.0  # the window's first day has no pair inside the window
        counts = torch.cumsum(hits, dim=1) + self._counts
        sums = torch.cumsum(hits * change[..., None].to(torch.float64), dim=1) + self._sums
        means = (sums / counts.clamp_min(1.0) / INCREMENT_SCALE).clamp(-20.0, 20.0)
        response = torch.cat([means, torch.log1p(counts)], dim=-1).transpose(1, 2)
        inputs[:, _RESPONSE_CHANNELS] = response.to(inputs.dtype)
        return inputs

    def _window(self, copies: int) -> TumourSeries:
        if self.first_day is None:
            raise ConfigError("the twin has observed no day yet")
        return TumourSeries(
            self._volume.expand(copies, -1),
            self._chemo.expand(copies, -1),
            self._radio.expand(copies, -1),
            torch.full((copies,), self.patient_type, dtype=torch.long),
        )

    @torch.no_grad()
    def forecast_plans(self, plans: Sequence[OncologyPlan], horizon_days: int) -> TumourForecast:
        """``log V`` on days ``last+1 … last+K`` under each plan, ``[R, K]`` each.

        Raises
        ------
        ConfigError
            No day observed yet, a horizon outside ``1 … 366``, or a plan treating after it.
        """
        if not 1 <= horizon_days <= MAX_PLAN_DAYS:
            raise ConfigError(f"horizon_days must be 1-{MAX_PLAN_DAYS}, got {horizon_days}")
        for plan in plans:
            if plan.last_day() > horizon_days:
                raise ConfigError(
                    f"plan {plan.name!r} treats on day {plan.last_day()}, "
                    f"after the horizon of {horizon_days} days"
                )
        history = self._window(len(plans))
        # model day 0 is the last observed day: its recorded treatment, then the plan's days
        chemo = torch.zeros(len(plans), horizon_days, dtype=torch.bool)
        radio = torch.zeros_like(chemo)
        chemo[:, 0], radio[:, 0] = bool(self._chemo[-1]), bool(self._radio[-1])
        for row, plan in enumerate(plans):
            chemo[row, [d for d in plan.chemo_days if d < horizon_days]] = True
            radio[row, [d for d in plan.radio_days if d < horizon_days]] = True
        return self._roll(history, chemo, radio)

    def _roll(self, history: TumourSeries, chemo: Tensor, radio: Tensor) -> TumourForecast:
        """:meth:`OncologyTwin.forecast` on the window (plans longer than ``H`` fed back)."""
        return self.model.twin.roll_forward(history, chemo, radio, self._inputs)

    def forecast(self, plan: OncologyPlan | None, horizon_days: int) -> PatientTumourForecast:
        """Forecast the next ``horizon_days`` days under ``plan`` (default: no treatment)."""
        chosen = plan or OncologyPlan()
        result = self.forecast_plans([chosen], horizon_days)
        low, high = (1.0 - self.coverage) / 2.0, (1.0 + self.coverage) / 2.0
        last = int(self.last_day or 0)
        days = np.arange(last + 1, last + 1 + horizon_days, dtype=np.int64)
        chemo = np.zeros(horizon_days)
        radio = np.zeros(horizon_days)
        chemo[[d - 1 for d in chosen.chemo_days]] = CHEMO_DOSE
        radio[[d - 1 for d in chosen.radio_days]] = RADIO_DOSE_GY
        return PatientTumourForecast(
            days=days,
            volume_cm3=result.volume_cm3[0].double().numpy(),
            lower_cm3=result.quantile_cm3(low)[0].double().numpy(),
            upper_cm3=result.quantile_cm3(high)[0].double().numpy(),
            chemo_mg=chemo,
            radio_gy=radio,
            coverage=self.coverage,
        )

    def compare(
        self,
        plans: Sequence[OncologyPlan],
        horizon_days: int,
        objective: RegimenObjective | None = None,
    ) -> tuple[RankedRegimen, ...]:
        """Rank plans, best (lowest expected objective) first, with ``coverage`` intervals.

        The objective (:class:`~fedtwin.twins.RegimenObjective`) weighs the tumour burden on
        the last day against the plan's cumulative chemo doses and radio Gy (a toxicity proxy).
        """
        if not plans:
            raise ConfigError("compare needs at least one plan")
        names = [plan.name for plan in plans]
        if len(set(names)) != len(names):
            raise ConfigError("plan names must be unique")
        weights = objective or RegimenObjective()
        result = self.forecast_plans(plans, horizon_days)
        final = TumourForecast(result.mean_log[:, -1:], result.std_log[:, -1:])
        doses = torch.tensor([len(plan.chemo_days) for plan in plans], dtype=torch.float64)
        gray = torch.tensor([plan.radio_dose_gy() for plan in plans], dtype=torch.float64)
        return rank_by_objective(
            [plan.name for plan in plans],
            final,
            self._volume[-1],
            doses,
            gray,
            weights,
            self.coverage,
        )
