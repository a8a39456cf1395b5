"""Optional exercise extension of the UVA/Padova 2008 model (not part of the oracle contract).

Invariant: :class:`ExerciseState` advances the two exercise signals exactly for inputs held
constant within the minute, both stay in ``[0, 1]``, and with zero intensity from rest the
effect is exactly neutral (``vmx_factor == 1``, ``vm0_increase == 0``), so a scenario without
exercise simulates the unmodified model.

The structure follows Breton (J Diabetes Sci Technol 2(1), 2008), as carried into the
UVA/Padova model by Dalla Man, Breton and Cobelli (J Diabetes Sci Technol 3(1), 2009): a fast
signal ``Y`` (heart rate above rest, here as a fraction of the heart-rate reserve, time
constant ``tau_hr``) raises insulin-independent uptake at once, and a slow signal ``Z``,
switched on by ``f(Y) = (Y/a)^n / (1 + (Y/a)^n)`` and decaying with ``tau_ex`` (hours),
multiplies insulin action during and after exercise::

    dY/dt = (intensity - Y) / tau_hr
    dZ/dt = -(f(Y) / tau_in + 1 / tau_ex) Z + f(Y) / tau_in
    Uid   = (Vm0 (1 + beta Y) + Vmx (1 + alpha Z) X) Gt / (Km0 + Gt)

The effect sizes ``alpha`` and ``beta`` are not published for this population; the defaults
are set so that 45 minutes at half the heart-rate reserve lowers glucose by a few tens of mg/dL
in the published adults, the order reported for moderate aerobic exercise in type 1 diabetes
(Riddell et al., Lancet Diabetes Endocrinol 5(5), 2017). Treat results with exercise as
qualitative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtwin.cohorts.uva_padova import ExerciseEffect
from fedtwin.errors import ConfigError


@dataclass(frozen=True)
class ExerciseModel:
    """Time constants and effect sizes of the exercise extension.

    Parameters
    ----------
    tau_hr_min : float, default 5.0
        Time constant of the heart-rate signal ``Y``, minutes.
    tau_in_min : float, default 1.0
        Activation time constant of ``Z``, minutes.
    tau_ex_min : float, default 600.0
        Decay time constant of ``Z`` after exercise, minutes.
    a : float, default 0.1
        Half-activation level of ``f(Y)``, fraction of heart-rate reserve.
    n : float, default 4.0
        Steepness of ``f(Y)``.
    alpha : float, default 1.0
        Gain of ``Z`` on insulin action (``Vmx``).
    beta : float, default 1.6
        Gain of ``Y`` on insulin-independent uptake (relative to ``Vm0``).
    """

    tau_hr_min: float = 5.0
    tau_in_min: float = 1.0
    tau_ex_min: float = 600.0
    a: float = 0.1
    n: float = 4.0
    alpha: float = 1.0
    beta: float = 1.6

    def __post_init__(self) -> None:
        values = (self.tau_hr_min, self.tau_in_min, self.tau_ex_min, self.a, self.n)
        if not all(math.isfinite(v) and v > 0.0 for v in values):
            raise ConfigError("exercise time constants, a and n must be positive")
        if min(self.alpha, self.beta) < 0.0:
            raise ConfigError("exercise gains alpha and beta must be non-negative")


class ExerciseState:
    """The exercise signals ``Y`` and ``Z`` of a batch, advanced minute by minute.

    Parameters
    ----------
    vm0 : torch.Tensor
        The patients' ``Vm0``, ``float64`` ``[B]`` (scales the insulin-independent effect).
    model : ExerciseModel
        Time constants and gains.
    y : torch.Tensor or None, optional
        Initial ``Y``, ``[B]``; 0 (rest) if omitted.
    z : torch.Tensor or None, optional
        Initial ``Z``, ``[B]``; 0 if omitted.
    """

    def __init__(
        self,
        vm0: Tensor,
        model: ExerciseModel,
        y: Tensor | None = None,
        z: Tensor | None = None,
    ) -> None:
        self._vm0 = vm0
        self._model = model
        zeros = torch.zeros_like(vm0)
        self.y = zeros.clone() if y is None else y.clone()
        self.z = zeros.clone() if z is None else z.clone()
        self._y_decay = math.exp(-1.0 / model.tau_hr_min)

    def effect(self) -> ExerciseEffect:
        """Uptake modulation for the coming minute, from the current ``Y`` and ``Z``.

        Returns
        -------
        ExerciseEffect
            ``vmx_factor = 1 + alpha Z`` and ``vm0_increase = beta Y Vm0``.
        """
        m = self._model
        return ExerciseEffect(
            vmx_factor=1.0 + m.alpha * self.z,
            vm0_increase_mg_kg_min=m.beta * self.y * self._vm0,
        )

    def advance(self, intensity: Tensor) -> None:
        """Advance ``Y`` and ``Z`` by one minute at a constant intensity.

        Parameters
        ----------
        intensity : torch.Tensor
            Exercise intensity during the minute, fraction of heart-rate reserve in ``[0, 1]``,
            ``[B]``.
        """
        m = self._model
        ratio = (self.y / m.a) ** m.n
        drive = ratio / (1.0 + ratio)
        rate = drive / m.tau_in_min + 1.0 / m.tau_ex_min
        z_limit = (drive / m.tau_in_min) / rate
        self.z = z_limit + (self.z - z_limit) * torch.exp(-rate)
        self.y = intensity + (self.y - intensity) * self._y_decay
