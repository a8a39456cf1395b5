"""Treatment plans that can be swapped on the same patient: the 'what if' of a T1D twin.

Invariant: a plan is a pure description of therapy. :class:`OpenLoopPlan` fixes every minute's
announced carbohydrate and insulin (simglucose ``Action`` semantics); :class:`BasalBolusPlan`
is a closed-loop policy that doses from the scenario's meals and the CGM it reads. Neither
holds run state or randomness, so replaying the same plan from the same checkpoint is
bit-identical, and two plans replayed on the same scenario differ only through their dosing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fedtwin.cohorts.controller import HypoTreatment, PumpLimits
from fedtwin.errors import ConfigError


@dataclass(frozen=True, eq=False)
class OpenLoopPlan:
    """Fixed per-minute actions for every patient of a batch.

    Parameters
    ----------
    cho_announced_g : torch.Tensor
        ``[B, T]`` carbohydrate announced at each minute, grams (eaten at up to 5 g/min).
    insulin_u_per_min : torch.Tensor
        ``[B, T]`` insulin infusion rate during each minute, U/min.
    start_minute : int, default 0
        Run minute of column 0.

    Raises
    ------
    ConfigError
        If the tensors are not ``[B, T]`` of equal shape or hold a negative or non-finite
        value.
    """

    cho_announced_g: Tensor
    insulin_u_per_min: Tensor
    start_minute: int = 0

    def __post_init__(self) -> None:
        cho, insulin = self.cho_announced_g, self.insulin_u_per_min
        if cho.dim() != 2 or tuple(cho.shape) != tuple(insulin.shape) or cho.shape[1] == 0:
            raise ConfigError("plan carbs and insulin must both have shape [B, T] with T >= 1")
        for name, value in (("carbohydrate", cho), ("insulin", insulin)):
            if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
                raise ConfigError(f"plan {name} must be finite and >= 0")
        if self.start_minute < 0:
            raise ConfigError("plan start_minute must be >= 0")

    @property
    def batch_size(self) -> int:
        """Number of patients ``B``."""
        return int(self.cho_announced_g.shape[0])

    @property
    def end_minute(self) -> int:
        """First run minute the plan no longer covers."""
        return self.start_minute + int(self.cho_announced_g.shape[1])

    def with_actions_from(
        self, minute: int, cho_announced_g: Tensor, insulin_u_per_min: Tensor
    ) -> OpenLoopPlan:
        """Return a plan equal to this one before ``minute`` and given by new actions after.

        Parameters
        ----------
        minute : int
            First run minute of the new actions, within the plan.
        cho_announced_g, insulin_u_per_min : torch.Tensor
            ``[B, end_minute - minute]`` actions from ``minute`` on.

        Returns
        -------
        OpenLoopPlan
            The alternative plan (same start and length).

        Raises
        ------
        ConfigError
            If ``minute`` is outside the plan or the shapes do not fit.
        """
        if not self.start_minute <= minute < self.end_minute:
            raise ConfigError(f"minute {minute} is outside the plan")
        cut = minute - self.start_minute
        shape = (self.batch_size, self.end_minute - minute)
        if tuple(cho_announced_g.shape) != shape or tuple(insulin_u_per_min.shape) != shape:
            raise ConfigError(f"new actions must have shape {list(shape)}")
        return OpenLoopPlan(
            cho_announced_g=torch.cat(
                (self.cho_announced_g[:, :cut], cho_announced_g.to(torch.float64)), 1
            ),
            insulin_u_per_min=torch.cat(
                (self.insulin_u_per_min[:, :cut], insulin_u_per_min.to(torch.float64)), 1
            ),
            start_minute=self.start_minute,
        )


@dataclass(frozen=True)
class BasalBolusPlan:
    """Closed-loop basal-bolus therapy from each patient's own carb ratio and correction factor.

    Basal is ``basal_scale`` times the steady-state rate, as the pump can deliver it. At each
    announced meal the patient boluses ``counted_g / (CR * carb_ratio_scale)`` plus, if the
    latest CGM reading is above ``correction_threshold_mg_dl``,
    ``(cgm - target_mg_dl) / (CF * correction_factor_scale)``, rounded and capped by the pump,
    unless the scenario says this bolus is forgotten. Rescue carbohydrate follows
    ``hypo_treatment`` and is not bolused.

    Parameters
    ----------
    basal_scale : float, default 1.0
        Factor on the steady-state basal rate.
    carb_ratio_scale : float, default 1.0
        Factor on ``CR`` (above 1: smaller meal boluses).
    correction_factor_scale : float, default 1.0
        Factor on ``CF`` (above 1: smaller corrections).
    target_mg_dl : float, default 140.0
        Correction target.
    correction_threshold_mg_dl : float, default 150.0
        CGM reading above which a correction is added.
    meal_boluses : bool, default True
        Whether meals are bolused at all.
    pump : PumpLimits, optional
        Pump resolution and limits (Insulet by default).
    hypo_treatment : HypoTreatment, optional
        Rescue-carbohydrate rule (15 g below 70 mg/dL by default).
    """

    basal_scale: float = 1.0
    carb_ratio_scale: float = 1.0
    correction_factor_scale: float = 1.0
    target_mg_dl: float = 140.0
    correction_threshold_mg_dl: float = 150.0
    meal_boluses: bool = True
    pump: PumpLimits = field(default_factory=PumpLimits)
    hypo_treatment: HypoTreatment = field(default_factory=HypoTreatment)

    def __post_init__(self) -> None:
        if not (0.0 <= self.basal_scale <= 10.0):
            raise ConfigError("basal_scale must be in [0, 10]")
        for name in ("carb_ratio_scale", "correction_factor_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.1 <= value <= 10.0):
                raise ConfigError(f"{name} must be in [0.1, 10]")
        if not (
            math.isfinite(self.target_mg_dl) and math.isfinite(self.correction_threshold_mg_dl)
        ):
            raise ConfigError("target and correction threshold must be finite")

    def basal_u_per_min(self, steady_state_u_per_min: Tensor) -> Tensor:
        """Basal rate the pump delivers, U/min.

        Parameters
        ----------
        steady_state_u_per_min : torch.Tensor
            Each patient's steady-state basal rate, ``[B]``.

        Returns
        -------
        torch.Tensor
            ``float64`` ``[B]``.
        """
        return self.pump.basal_u_per_min(steady_state_u_per_min * self.basal_scale)

    def bolus_u(
        self,
        counted_g: Tensor,
        cgm_mg_dl: Tensor,
        carb_ratio_g_per_u: Tensor,
        correction_factor_mg_dl_per_u: Tensor,
    ) -> Tensor:
        """Meal bolus for patients who announce ``counted_g`` > 0 and do not forget it.

        Parameters
        ----------
        counted_g : torch.Tensor
            Carbohydrate the patient believes they eat, 0 for no bolus, ``[B]``.
        cgm_mg_dl : torch.Tensor
            Latest CGM reading (``NaN`` if none), ``[B]``.
        carb_ratio_g_per_u, correction_factor_mg_dl_per_u : torch.Tensor
            The patients' ``CR`` and ``CF``, ``[B]``.

        Returns
        -------
        torch.Tensor
            Deliverable bolus in U, ``float64`` ``[B]``.
        """
        if not self.meal_boluses:
            return torch.zeros_like(counted_g)
        ratio = carb_ratio_g_per_u * self.carb_ratio_scale
        factor = correction_factor_mg_dl_per_u * self.correction_factor_scale
        high = cgm_mg_dl > self.correction_threshold_mg_dl
        correction = torch.where(high, (cgm_mg_dl - self.target_mg_dl) / factor, 0.0)
        dose = self.pump.bolus_u(counted_g / ratio + correction)
        return torch.where(counted_g > 0.0, dose, 0.0)


#: Any treatment plan :func:`fedtwin.cohorts.replay` accepts.
TreatmentPlan = OpenLoopPlan | BasalBolusPlan
