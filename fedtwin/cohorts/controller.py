"""Basal-bolus insulin therapy with pump limits and seeded per-patient behavioural noise.

Invariant: :class:`BasalBolusController` only ever asks for doses an Insulet-like pump can
deliver: a basal rate that is a multiple of 0.05 U/h in ``[0, 30]`` U/h and boluses that are
multiples of 0.05 U in ``[0, 30]`` U, each bolus delivered within the one minute of the meal
announcement. All randomness (the per-patient carb-counting bias, per-meal counting errors and
missed boluses) comes from the ``torch.Generator`` given at construction, so two controllers
built from equal generators and fed equal inputs return equal doses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtwin.cohorts.population import VirtualPatientParams
from fedtwin.errors import ConfigError


@dataclass(frozen=True)
class PumpLimits:
    """Dose resolution and limits of an insulin pump (defaults: simglucose's Insulet).

    Parameters
    ----------
    max_bolus_u : float, default 30.0
        Largest single bolus, U.
    bolus_increment_u : float, default 0.05
        Bolus resolution, U.
    max_basal_u_per_h : float, default 30.0
        Largest basal rate, U/h.
    basal_increment_u_per_h : float, default 0.05
        Basal-rate resolution, U/h.
    """

    max_bolus_u: float = 30.0
    bolus_increment_u: float = 0.05
    max_basal_u_per_h: float = 30.0
    basal_increment_u_per_h: float = 0.05

    def __post_init__(self) -> None:
        if min(self.bolus_increment_u, self.basal_increment_u_per_h) <= 0.0:
            raise ConfigError("pump increments must be positive")
        if min(self.max_bolus_u, self.max_basal_u_per_h) < 0.0:
            raise ConfigError("pump maxima must be non-negative")

    @classmethod
    def cozmo(cls) -> PumpLimits:
        """Return simglucose's Cozmo pump (max bolus 75 U, max basal 35 U/h, 0.05 steps).

        Returns
        -------
        PumpLimits
            The Cozmo limits.
        """
        return cls(max_bolus_u=75.0, max_basal_u_per_h=35.0)

    def bolus_u(self, dose_u: Tensor) -> Tensor:
        """Round a requested bolus to the pump's increment and clip it to its limits.

        Parameters
        ----------
        dose_u : torch.Tensor
            Requested bolus, U.

        Returns
        -------
        torch.Tensor
            Deliverable bolus, U, same shape.
        """
        rounded = torch.round(dose_u / self.bolus_increment_u) * self.bolus_increment_u
        return torch.clamp(rounded, 0.0, self.max_bolus_u)

    def basal_u_per_min(self, rate_u_per_min: Tensor) -> Tensor:
        """Round a requested basal rate to the pump's resolution and clip it to its limits.

        Parameters
        ----------
        rate_u_per_min : torch.Tensor
            Requested basal rate, U/min.

        Returns
        -------
        torch.Tensor
            Deliverable basal rate, U/min, same shape.
        """
        per_h = rate_u_per_min * 60.0
        rounded = torch.round(per_h / self.basal_increment_u_per_h) * self.basal_increment_u_per_h
        return torch.clamp(rounded, 0.0, self.max_basal_u_per_h) / 60.0


@dataclass(frozen=True)
class BehaviourNoise:
    """How a patient departs from textbook basal-bolus therapy.

    Parameters
    ----------
    carb_bias_log_sd : float, default 0.10
        Log-SD of a per-patient, persistent multiplicative carb-counting bias (median 1).
    carb_count_log_sd : float, default 0.15
        Log-SD of a per-meal multiplicative carb-counting error (median 1).
    missed_bolus_probability : float, default 0.03
        Probability that a meal bolus (and its correction) is forgotten.
    """

    carb_bias_log_sd: float = 0.10
    carb_count_log_sd: float = 0.15
    missed_bolus_probability: float = 0.03

    def __post_init__(self) -> None:
        if min(self.carb_bias_log_sd, self.carb_count_log_sd) < 0.0:
            raise ConfigError("behaviour noise log-SDs must be non-negative")
        if not 0.0 <= self.missed_bolus_probability <= 1.0:
            raise ConfigError("missed_bolus_probability must be in [0, 1]")

    @classmethod
    def none(cls) -> BehaviourNoise:
        """Return a patient who counts carbs exactly and never misses a bolus.

        Returns
        -------
        BehaviourNoise
            All noise switched off.
        """
        return cls(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class HypoTreatment:
    """Rescue carbohydrate a patient eats when the CGM shows hypoglycaemia (the "15-15 rule").

    The UVA/Padova 2008 model has no counter-regulation, so without treatment an insulin
    overdose can drive glucose towards 0 mg/dL; real patients eat fast carbohydrate instead.
    Rescue carbohydrate is not bolused.

    Parameters
    ----------
    threshold_mg_dl : float, default 70.0
        CGM reading below which the patient treats; 0 switches treatment off.
    carbs_g : float, default 15.0
        Grams eaten per treatment.
    interval_min : int, default 15
        Minimum minutes between two treatments.
    """

    threshold_mg_dl: float = 70.0
    carbs_g: float = 15.0
    interval_min: int = 15

    def __post_init__(self) -> None:
        if self.threshold_mg_dl < 0.0 or self.carbs_g < 0.0 or self.interval_min < 1:
            raise ConfigError("hypo treatment needs threshold >= 0, carbs >= 0, interval >= 1")

    @classmethod
    def off(cls) -> HypoTreatment:
        """Return a treatment policy that never treats.

        Returns
        -------
        HypoTreatment
            Threshold 0 mg/dL.
        """
        return cls(threshold_mg_dl=0.0)

    def rescue_carbs_g(self, cgm_mg_dl: Tensor, minutes_since_last: Tensor) -> Tensor:
        """Rescue carbohydrate each patient announces now.

        Parameters
        ----------
        cgm_mg_dl : torch.Tensor
            Latest CGM reading, ``[B]``.
        minutes_since_last : torch.Tensor
            Minutes since each patient's previous treatment (``inf`` if none), ``[B]``.

        Returns
        -------
        torch.Tensor
            Grams, ``float64`` ``[B]``: ``carbs_g`` where the reading is below the threshold and
            the interval has passed, else 0.
        """
        treat = (cgm_mg_dl < self.threshold_mg_dl) & (minutes_since_last >= self.interval_min)
        return torch.where(treat, self.carbs_g, 0.0).to(torch.float64)


class BasalBolusController:
    """Basal-bolus therapy for a batch of patients, like simglucose's ``BBController``.

    Basal is the steady-state rate ``u2ss * BW / 6000`` U/min (as the pump delivers it). When a
    meal is announced the patient boluses ``carbs_counted / CR`` plus, if glucose is above
    ``correction_threshold_mg_dl``, ``(glucose - target_mg_dl) / CF``; ``carbs_counted`` is the
    announced amount times the patient's bias and a per-meal counting error.

    Parameters
    ----------
    params : VirtualPatientParams
        The batch (supplies ``u2ss``, ``BW``, ``CR`` and ``CF``).
    generator : torch.Generator
        Source of all behavioural randomness.
    target_mg_dl : float, default 140.0
        Correction target.
    correction_threshold_mg_dl : float, default 150.0
        Glucose above which a correction is added.
    pump : PumpLimits, optional
        Pump resolution and limits; Insulet by default.
    behaviour : BehaviourNoise, optional
        Behavioural noise; see :meth:`BehaviourNoise.none` for an ideal patient.
    """

    def __init__(
        self,
        params: VirtualPatientParams,
        generator: torch.Generator,
        *,
        target_mg_dl: float = 140.0,
        correction_threshold_mg_dl: float = 150.0,
        pump: PumpLimits | None = None,
        behaviour: BehaviourNoise | None = None,
    ) -> None:
        if not (math.isfinite(target_mg_dl) and math.isfinite(correction_threshold_mg_dl)):
            raise ConfigError("target and correction threshold must be finite")
        self._pump = PumpLimits() if pump is None else pump
        self._behaviour = BehaviourNoise() if behaviour is None else behaviour
        self._generator = generator
        self._target = target_mg_dl
        self._threshold = correction_threshold_mg_dl
        self._cr = params.carb_ratio_g_per_u
        self._cf = params.correction_factor_mg_dl_per_u
        self._basal = self._pump.basal_u_per_min(params.basal_u_per_min)
        z = torch.randn(params.batch_size, generator=generator, dtype=torch.float64)
        self._carb_bias = torch.exp(self._behaviour.carb_bias_log_sd * z)

    @property
    def basal_u_per_min(self) -> Tensor:
        """Basal rate the pump delivers, U/min, ``float64`` ``[B]``."""
        return self._basal

    @property
    def carb_bias(self) -> Tensor:
        """Per-patient multiplicative carb-counting bias, ``float64`` ``[B]``."""
        return self._carb_bias

    def bolus_u(self, glucose_mg_dl: Tensor, cho_announced_g: Tensor) -> Tensor:
        """Meal bolus each patient takes at this minute.

        Draws one counting error and one missed-bolus decision per patient from the
        generator on every call, whether or not that patient announced a meal.

        Parameters
        ----------
        glucose_mg_dl : torch.Tensor
            Glucose the patient sees (normally the latest CGM reading), ``[B]``.
        cho_announced_g : torch.Tensor
            Carbohydrate announced at this minute, grams, ``[B]``.

        Returns
        -------
        torch.Tensor
            Deliverable bolus in U, ``float64`` ``[B]``; 0 where no meal was announced or the
            bolus was missed.
        """
        batch = self._basal.shape[0]
        z = torch.randn(batch, generator=self._generator, dtype=torch.float64)
        u = torch.rand(batch, generator=self._generator, dtype=torch.float64)
        counted_g = (
            cho_announced_g * self._carb_bias * torch.exp(self._behaviour.carb_count_log_sd * z)
        )
        glucose = glucose_mg_dl.to(torch.float64)
        correction = torch.where(
            glucose > self._threshold, (glucose - self._target) / self._cf, 0.0
        )
        takes = (cho_announced_g > 0.0) & (u >= self._behaviour.missed_bolus_probability)
        return torch.where(takes, self._pump.bolus_u(counted_g / self._cr + correction), 0.0)

    def insulin_u_per_min(self, glucose_mg_dl: Tensor, cho_announced_g: Tensor) -> Tensor:
        """Total insulin rate for this minute: basal plus any bolus delivered in the minute.

        Parameters
        ----------
        glucose_mg_dl : torch.Tensor
            Glucose the patient sees, ``[B]``.
        cho_announced_g : torch.Tensor
            Carbohydrate announced at this minute, grams, ``[B]``.

        Returns
        -------
        torch.Tensor
            Insulin infusion rate in U/min, ``float64`` ``[B]``.
        """
        return self._basal + self.bolus_u(glucose_mg_dl, cho_announced_g)
