"""Batched UVA/Padova 2008 type-1 diabetes patient model, integrated with fixed-step RK4.

Invariant: :class:`BatchedT1DPatient` advances every patient of the batch by exactly one minute
per :meth:`~BatchedT1DPatient.step`, with the semantics of simglucose 0.2.11's ``T1DPatient``:
announced carbohydrate joins a planned meal eaten at up to 5 g/min, gastric emptying uses the
stomach content at meal start plus the food taken since (``Dbar``), renal excretion above
``ke2``, ``max(EGP, 0)``, and ``(x >= 0) * dx`` clamps on the states simglucose clamps. Inputs
are held constant within the minute. All arithmetic is ``float64`` and batch rows never
interact: row ``i`` of every output depends only on row ``i`` of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor

from fedtwin.cohorts.population import N_STATES, VirtualPatientParams
from fedtwin.errors import ConfigError

#: Maximum eating rate of a patient, grams of carbohydrate per minute.
EAT_RATE_G_PER_MIN: Final = 5.0
#: Default RK4 substeps per minute; max error vs. simglucose's dopri5 is ~0.01 mg/dL per day.
DEFAULT_SUBSTEPS: Final = 2
#: Conversion from insulin units to pmol.
_PMOL_PER_U: Final = 6000.0
#: States whose derivative simglucose zeroes when the state is negative (0-based indices).
_CLAMPED_STATES: Final = (3, 4, 5, 9, 10, 11, 12)


@dataclass(frozen=True)
class _Coefficients:
    """Per-patient constants of the right-hand side, each ``float64`` of shape ``[B]``."""

    kmax: Tensor
    kmin: Tensor
    half_k_range: Tensor
    kabs: Tensor
    b: Tensor
    d: Tensor
    rat_per_x2: Tensor
    kp1: Tensor
    kp2: Tensor
    kp3: Tensor
    fsnc: Tensor
    ke1: Tensor
    ke2: Tensor
    k1: Tensor
    k2: Tensor
    vm0: Tensor
    vmx: Tensor
    km0: Tensor
    m1: Tensor
    m2: Tensor
    m2_m4: Tensor
    m1_m30: Tensor
    ka1: Tensor
    ka2: Tensor
    kd: Tensor
    ka1_kd: Tensor
    inv_vi: Tensor
    ib: Tensor
    p2u: Tensor
    ki: Tensor
    ksc: Tensor
    pmol_per_kg_per_u: Tensor

    @classmethod
    def from_params(cls, p: VirtualPatientParams) -> _Coefficients:
        return cls(
            kmax=p["kmax"],
            kmin=p["kmin"],
            half_k_range=(p["kmax"] - p["kmin"]) / 2.0,
            kabs=p["kabs"],
            b=p["b"],
            d=p["d"],
            rat_per_x2=p["f"] * p["kabs"] / p["BW"],
            kp1=p["kp1"],
            kp2=p["kp2"],
            kp3=p["kp3"],
            fsnc=p["Fsnc"],
            ke1=p["ke1"],
            ke2=p["ke2"],
            k1=p["k1"],
            k2=p["k2"],
            vm0=p["Vm0"],
            vmx=p["Vmx"],
            km0=p["Km0"],
            m1=p["m1"],
            m2=p["m2"],
            m2_m4=p["m2"] + p["m4"],
            m1_m30=p["m1"] + p["m30"],
            ka1=p["ka1"],
            ka2=p["ka2"],
            kd=p["kd"],
            ka1_kd=p["ka1"] + p["kd"],
            inv_vi=1.0 / p["Vi"],
            ib=p["Ib"],
            p2u=p["p2u"],
            ki=p["ki"],
            ksc=p["ksc"],
            pmol_per_kg_per_u=_PMOL_PER_U / p["BW"],
        )


@dataclass(frozen=True)
class _MinuteInputs:
    """Inputs held constant during one minute, each ``[B]``."""

    meal_mg_per_min: Tensor
    insulin_pmol_per_kg_per_min: Tensor
    gut_a: Tensor
    gut_c: Tensor
    b_dbar: Tensor
    d_dbar: Tensor


def _derivative(x: Tensor, c: _Coefficients, u: _MinuteInputs, free: Tensor) -> Tensor:
    """UVA/Padova 2008 right-hand side for states ``x`` of shape ``[13, B]``."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12 = x.unbind(0)
    qsto = x0 + x1
    kgut = c.kmin + c.half_k_range * (
        torch.tanh(u.gut_a * (qsto - u.b_dbar)) - torch.tanh(u.gut_c * (qsto - u.d_dbar)) + 2.0
    )
    kmax_x0 = c.kmax * x0
    emptied = kgut * x1
    egp = torch.clamp_min(c.kp1 - c.kp2 * x3 - c.kp3 * x8, 0.0)
    renal = c.ke1 * torch.clamp_min(x3 - c.ke2, 0.0)
    k1_x3 = c.k1 * x3
    k2_x4 = c.k2 * x4
    uptake = (c.vm0 + c.vmx * x6) * x4 / (c.km0 + x4)
    plasma_insulin = x5 * c.inv_vi
    dx = torch.stack(
        (
            u.meal_mg_per_min - kmax_x0,
            kmax_x0 - emptied,
            emptied - c.kabs * x2,
            egp + c.rat_per_x2 * x2 - c.fsnc - renal - k1_x3 + k2_x4,
            k1_x3 - k2_x4 - uptake,
            c.m1 * x9 + c.ka1 * x10 + c.ka2 * x11 - c.m2_m4 * x5,
            c.p2u * (plasma_insulin - c.ib - x6),
            c.ki * (plasma_insulin - x7),
            c.ki * (x7 - x8),
            c.m2 * x5 - c.m1_m30 * x9,
            u.insulin_pmol_per_kg_per_min - c.ka1_kd * x10,
            c.kd * x10 - c.ka2 * x11,
            c.ksc * (x3 - x12),
        )
    )
    return dx * ((x >= 0.0) | free)


class BatchedT1DPatient:
    """A batch of UVA/Padova 2008 virtual patients stepped together, one minute at a time.

    Parameters
    ----------
    params : VirtualPatientParams
        Parameters of the ``B`` patients.
    initial_state : torch.Tensor or None, optional
        ``[B, 13]`` initial state; defaults to ``params.initial_state`` (steady state).
    substeps : int, default DEFAULT_SUBSTEPS
        Classical RK4 steps per minute.

    Raises
    ------
    ConfigError
        If ``substeps < 1`` or ``initial_state`` has the wrong shape.

    Notes
    -----
    The state ordering and units follow the model: ``[Qsto1, Qsto2, Qgut, Gp, Gt, Ip, X, I1,
    Id, Il, Isc1, Isc2, Gs]`` (glucose masses in mg/kg, stomach and gut in mg, insulin in
    pmol/kg). :attr:`bg_mg_dl` is the subcutaneous glucose ``Gs / Vg``, which simglucose reports
    as ``observation.Gsub``.
    """

    def __init__(
        self,
        params: VirtualPatientParams,
        *,
        initial_state: Tensor | None = None,
        substeps: int = DEFAULT_SUBSTEPS,
    ) -> None:
        if substeps < 1:
            raise ConfigError(f"substeps must be >= 1, got {substeps}")
        self._params = params
        self._coef = _Coefficients.from_params(params)
        self._substeps = substeps
        self._inv_vg = 1.0 / params["Vg"]
        free = torch.ones(N_STATES, 1, dtype=torch.bool)
        free[list(_CLAMPED_STATES)] = False
        self._free = free
        self.reset(initial_state)

    def reset(self, initial_state: Tensor | None = None) -> None:
        """Return to the initial state, minute 0, with no meal planned or being eaten.

        Parameters
        ----------
        initial_state : torch.Tensor or None, optional
            ``[B, 13]`` state to start from; defaults to ``params.initial_state``.

        Raises
        ------
        ConfigError
            If ``initial_state`` does not have shape ``[B, 13]``.
        """
        batch = self._params.batch_size
        state = self._params.initial_state if initial_state is None else initial_state
        if tuple(state.shape) != (batch, N_STATES):
            raise ConfigError(f"initial_state must have shape [{batch}, {N_STATES}]")
        self._x = state.to(torch.float64).T.contiguous()
        zeros = torch.zeros(batch, dtype=torch.float64)
        self._last_qsto_mg = self._x[0] + self._x[1]
        self._last_foodtaken_g = zeros.clone()
        self._last_eaten_g = zeros.clone()
        self._planned_meal_g = zeros.clone()
        self._is_eating = torch.zeros(batch, dtype=torch.bool)
        self._minute = 0

    @property
    def params(self) -> VirtualPatientParams:
        """Parameters of the batch."""
        return self._params

    @property
    def batch_size(self) -> int:
        """Number of patients ``B``."""
        return self._params.batch_size

    @property
    def minute(self) -> int:
        """Minutes simulated since the last reset."""
        return self._minute

    @property
    def state(self) -> Tensor:
        """Copy of the model state, ``float64`` of shape ``[B, 13]``."""
        return self._x.T.clone()

    @property
    def bg_mg_dl(self) -> Tensor:
        """Subcutaneous glucose ``Gs / Vg`` in mg/dL, shape ``[B]`` (simglucose ``Gsub``)."""
        return self._x[12] * self._inv_vg

    @property
    def basal_u_per_min(self) -> Tensor:
        """Steady-state basal insulin rate ``u2ss * BW / 6000`` in U/min, shape ``[B]``."""
        return self._params.basal_u_per_min

    @property
    def planned_meal_g(self) -> Tensor:
        """Announced carbohydrate not yet eaten, grams, shape ``[B]``."""
        return self._planned_meal_g.clone()

    @property
    def is_eating(self) -> Tensor:
        """Whether each patient is in a meal (simglucose ``is_eating``), bool ``[B]``."""
        return self._is_eating.clone()

    def step(self, cho_announced_g: Tensor, insulin_u_per_min: Tensor) -> Tensor:
        """Advance every patient by one minute.

        Parameters
        ----------
        cho_announced_g : torch.Tensor
            Carbohydrate announced at this minute, grams, shape ``[B]``; added to the planned
            meal, which is eaten at up to :data:`EAT_RATE_G_PER_MIN`.
        insulin_u_per_min : torch.Tensor
            Subcutaneous insulin infusion rate during this minute, U/min, shape ``[B]``.

        Returns
        -------
        torch.Tensor
            Carbohydrate eaten during this minute, grams, ``float64`` of shape ``[B]``.

        Raises
        ------
        ConfigError
            If an input has the wrong shape or a negative entry.
        """
        batch = self.batch_size
        cho = cho_announced_g.to(torch.float64)
        insulin = insulin_u_per_min.to(torch.float64)
        if tuple(cho.shape) != (batch,) or tuple(insulin.shape) != (batch,):
            raise ConfigError(f"step inputs must have shape [{batch}]")
        if bool((cho < 0).any()) or bool((insulin < 0).any()):
            raise ConfigError("announced carbohydrate and insulin must be non-negative")
        eaten = self._eat(cho)
        self._integrate_minute(eaten, insulin)
        self._minute += 1
        return eaten

    def _eat(self, cho: Tensor) -> Tensor:
        """Apply the meal bookkeeping of simglucose and return the grams eaten this minute."""
        planned = self._planned_meal_g + cho
        eaten = torch.clamp(planned, 0.0, EAT_RATE_G_PER_MIN)
        self._planned_meal_g = torch.clamp_min(planned - eaten, 0.0)
        was_eating = self._last_eaten_g > 0.0
        starts = (eaten > 0.0) & ~was_eating
        self._last_qsto_mg = torch.where(starts, self._x[0] + self._x[1], self._last_qsto_mg)
        foodtaken = torch.where(starts, 0.0, self._last_foodtaken_g)
        self._is_eating = self._is_eating | starts
        self._last_foodtaken_g = foodtaken + torch.where(self._is_eating, eaten, 0.0)
        self._is_eating = self._is_eating & ~((eaten <= 0.0) & was_eating)
        self._last_eaten_g = eaten
        return eaten

    def _integrate_minute(self, eaten_g: Tensor, insulin_u_per_min: Tensor) -> None:
        c = self._coef
        dbar = self._last_qsto_mg + 1000.0 * self._last_foodtaken_g
        has_dbar = dbar > 0.0
        safe_dbar = torch.where(has_dbar, dbar, 1.0)
        inputs = _MinuteInputs(
            meal_mg_per_min=1000.0 * eaten_g,
            insulin_pmol_per_kg_per_min=insulin_u_per_min * c.pmol_per_kg_per_u,
            gut_a=torch.where(has_dbar, 2.5 / (safe_dbar * (1.0 - c.b)), 0.0),
            gut_c=torch.where(has_dbar, 2.5 / (safe_dbar * c.d), 0.0),
            b_dbar=c.b * dbar,
            d_dbar=c.d * dbar,
        )
        h = 1.0 / self._substeps
        x = self._x
        free = self._free
        for _ in range(self._substeps):
            k1 = _derivative(x, c, inputs, free)
            k2 = _derivative(torch.add(x, k1, alpha=h / 2), c, inputs, free)
            k3 = _derivative(torch.add(x, k2, alpha=h / 2), c, inputs, free)
            k4 = _derivative(torch.add(x, k3, alpha=h), c, inputs, free)
            x = x + (h / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)
        self._x = x
