"""Batched UVA/Padova 2008 type-1 diabetes patient model, integrated minute by minute.

Invariant: :class:`BatchedT1DPatient` advances every patient of the batch by exactly one minute
per :meth:`~BatchedT1DPatient.step`, with the semantics of simglucose 0.2.11's ``T1DPatient``:
announced carbohydrate joins a planned meal eaten at up to 5 g/min, gastric emptying uses the
stomach content at meal start plus the food taken since (``Dbar``), renal excretion above
``ke2``, ``max(EGP, 0)``, and ``(x >= 0) * dx`` clamps on the glucose states. Inputs are held
constant within the minute. All arithmetic is ``float64``; batch rows never interact (row ``i``
of every output depends only on row ``i`` of the inputs, step sizes included, up to the last
bit of vectorised ``tanh``, which may round differently in another SIMD lane), and a run
restored from a :class:`T1DCheckpoint` continues bit-identically to the run that wrote it.

How the minute is integrated (exact insulin block, RK4 gut and glucose blocks, per-patient
step refinement when a patient's equations turn stiff) is described in
:mod:`fedtwin.cohorts._uva_padova_ode`; agreement with simglucose's dopri5 is tested in
``tests/cohorts/test_cohorts_oracle.py`` and measured for all 30 subjects by
``bench/simulator_throughput.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor

from fedtwin.cohorts._uva_padova_ode import (
    Blocks,
    Coefficients,
    MinuteInputs,
    advance_minute,
    insulin_readout,
    step_propagator,
)
from fedtwin.cohorts.population import N_STATES, VirtualPatientParams
from fedtwin.errors import ConfigError

#: Maximum eating rate of a patient, grams of carbohydrate per minute.
EAT_RATE_G_PER_MIN: Final = 5.0
#: Default RK4 steps per minute of a non-stiff patient (stiff minutes are refined per patient).
DEFAULT_SUBSTEPS: Final = 1
#: Model state indices of the insulin block ``Ip, X, I1, Id, Il, Isc1, Isc2``.
_INSULIN: Final = (5, 6, 7, 8, 9, 10, 11)
#: Model state indices of the glucose block ``Gp, Gt, Gs`` (all clamped by simglucose).
_GLUCOSE: Final = (3, 4, 12)
#: Model state indices of the gut block (stomach solid, stomach liquid, intestine).
_GUT: Final = (0, 1, 2)
#: Insulin states that simglucose clamps and which must therefore start non-negative.
_NON_NEGATIVE_INSULIN: Final = (5, 9, 10, 11)


@dataclass(frozen=True)
class ExerciseEffect:
    """Exercise modulation of insulin-dependent glucose uptake during one minute.

    ``Uid = (Vm0 + vm0_increase + Vmx * vmx_factor * X) * Gt / (Km0 + Gt)``; see
    :mod:`fedtwin.cohorts.exercise` for how intensity schedules map onto these.

    Parameters
    ----------
    vmx_factor : torch.Tensor
        Multiplier of the insulin action on uptake (``1 + alpha * Z``), ``[B]``.
    vm0_increase_mg_kg_min : torch.Tensor
        Insulin-independent uptake added to ``Vm0`` (``beta * Y``), ``[B]``.
    """

    vmx_factor: Tensor
    vm0_increase_mg_kg_min: Tensor


@dataclass(frozen=True, eq=False)
class T1DCheckpoint:
    """Everything needed to continue a :class:`BatchedT1DPatient` run bit-identically.

    Parameters
    ----------
    minute : int
        Minutes simulated since the run started.
    state : torch.Tensor
        Model state, ``float64`` ``[B, 13]``.
    planned_meal_g : torch.Tensor
        Announced carbohydrate not yet eaten, ``[B]``.
    last_eaten_g : torch.Tensor
        Carbohydrate eaten in the previous minute, ``[B]``.
    last_qsto_mg : torch.Tensor
        Stomach content when the current meal started, ``[B]``.
    last_foodtaken_g : torch.Tensor
        Food taken since the current meal started, ``[B]``.
    is_eating : torch.Tensor
        Whether each patient is in a meal, bool ``[B]``.
    """

    minute: int
    state: Tensor
    planned_meal_g: Tensor
    last_eaten_g: Tensor
    last_qsto_mg: Tensor
    last_foodtaken_g: Tensor
    is_eating: Tensor

    @property
    def batch_size(self) -> int:
        """Number of patients ``B``."""
        return int(self.state.shape[0])

    def take(self, rows: Sequence[int] | Tensor) -> T1DCheckpoint:
        """Return the checkpoint of a subset of the patients (copies).

        Parameters
        ----------
        rows : Sequence[int] or torch.Tensor
            Batch rows to keep, in the order wanted.

        Returns
        -------
        T1DCheckpoint
            The same minute with ``len(rows)`` patients.
        """
        index = torch.as_tensor(rows, dtype=torch.int64)
        return T1DCheckpoint(
            minute=self.minute,
            state=self.state[index].clone(),
            planned_meal_g=self.planned_meal_g[index].clone(),
            last_eaten_g=self.last_eaten_g[index].clone(),
            last_qsto_mg=self.last_qsto_mg[index].clone(),
            last_foodtaken_g=self.last_foodtaken_g[index].clone(),
            is_eating=self.is_eating[index].clone(),
        )


class BatchedT1DPatient:
    """A batch of UVA/Padova 2008 virtual patients stepped together, one minute at a time.

    Parameters
    ----------
    params : VirtualPatientParams
        Parameters of the ``B`` patients (published or sampled).
    initial_state : torch.Tensor or None, optional
        ``[B, 13]`` initial state; defaults to ``params.initial_state`` (steady state).
    substeps : int, default DEFAULT_SUBSTEPS
        RK4 steps per minute for the nonlinear gut and glucose states.

    Raises
    ------
    ConfigError
        If ``substeps < 1`` or ``initial_state`` has the wrong shape, a non-finite entry or a
        negative ``Ip``, ``Il``, ``Isc1`` or ``Isc2``.

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
        if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
            raise ConfigError(f"substeps must be an integer >= 1, got {substeps!r}")
        self._params = params
        self._coef = Coefficients.from_params(params)
        self._substeps = substeps
        self._inv_vg = 1.0 / params["Vg"]
        self._propagators: dict[int, Tensor] = {}
        self._readout = insulin_readout(self._propagator(substeps), 2 * substeps)
        self.reset(initial_state)

    def reset(self, initial_state: Tensor | None = None) -> None:
        """Return to an initial state at minute 0, with no meal planned or being eaten.

        Parameters
        ----------
        initial_state : torch.Tensor or None, optional
            ``[B, 13]`` state to start from; defaults to ``params.initial_state``.

        Raises
        ------
        ConfigError
            If ``initial_state`` is not a valid ``[B, 13]`` state.
        """
        state = self._params.initial_state if initial_state is None else initial_state
        batch = self.batch_size
        zeros = torch.zeros(batch, dtype=torch.float64)
        self._load(
            T1DCheckpoint(
                minute=0,
                state=state,
                planned_meal_g=zeros,
                last_eaten_g=zeros,
                last_qsto_mg=state[:, 0] + state[:, 1] if state.dim() == 2 else zeros,
                last_foodtaken_g=zeros,
                is_eating=torch.zeros(batch, dtype=torch.bool),
            )
        )

    def restore(self, checkpoint: T1DCheckpoint) -> None:
        """Continue from a checkpoint written by :meth:`checkpoint` (for these parameters).

        Parameters
        ----------
        checkpoint : T1DCheckpoint
            The saved run state.

        Raises
        ------
        ConfigError
            If the checkpoint does not fit this batch.
        """
        self._load(checkpoint)

    def checkpoint(self) -> T1DCheckpoint:
        """Return a copy of the full run state (model state, meal bookkeeping, minute).

        Returns
        -------
        T1DCheckpoint
            Restoring it with :meth:`restore` continues the run bit-identically.
        """
        return T1DCheckpoint(
            minute=self._minute,
            state=self.state,
            planned_meal_g=self._planned_meal_g.clone(),
            last_eaten_g=self._last_eaten_g.clone(),
            last_qsto_mg=self._last_qsto_mg.clone(),
            last_foodtaken_g=self._last_foodtaken_g.clone(),
            is_eating=self._is_eating.clone(),
        )

    def _load(self, cp: T1DCheckpoint) -> None:
        batch = self.batch_size
        state = cp.state.to(torch.float64)
        if tuple(state.shape) != (batch, N_STATES):
            raise ConfigError(f"initial_state must have shape [{batch}, {N_STATES}]")
        if not bool(torch.isfinite(state).all()):
            raise ConfigError("initial_state must be finite")
        if bool((state[:, list(_NON_NEGATIVE_INSULIN)] < 0.0).any()):
            raise ConfigError("initial_state: insulin states Ip, Il, Isc1, Isc2 must be >= 0")
        vectors = (cp.planned_meal_g, cp.last_eaten_g, cp.last_qsto_mg, cp.last_foodtaken_g)
        if any(tuple(v.shape) != (batch,) for v in (*vectors, cp.is_eating)):
            raise ConfigError(f"checkpoint vectors must have shape [{batch}]")
        self._blocks = Blocks(
            glucose=state[:, list(_GLUCOSE)].T.contiguous(),
            gut=state[:, list(_GUT)].T.contiguous(),
            insulin=state[:, list(_INSULIN)].T.contiguous(),
        )
        self._gut_idle = not bool(self._blocks.gut.any())
        self._planned_meal_g = cp.planned_meal_g.to(torch.float64).clone()
        self._last_eaten_g = cp.last_eaten_g.to(torch.float64).clone()
        self._last_qsto_mg = cp.last_qsto_mg.to(torch.float64).clone()
        self._last_foodtaken_g = cp.last_foodtaken_g.to(torch.float64).clone()
        self._is_eating = cp.is_eating.to(torch.bool).clone()
        self._minute = int(cp.minute)
        self._meal_pending = bool(
            (self._planned_meal_g > 0.0).any() | (self._last_eaten_g > 0.0).any()
        )
        self._gut = self._gut_inputs()

    @property
    def params(self) -> VirtualPatientParams:
        """Parameters of the batch."""
        return self._params

    @property
    def batch_size(self) -> int:
        """Number of patients ``B``."""
        return self._params.batch_size

    @property
    def substeps(self) -> int:
        """RK4 steps per minute of the nonlinear states."""
        return self._substeps

    @property
    def minute(self) -> int:
        """Minutes simulated since the last reset."""
        return self._minute

    @property
    def state(self) -> Tensor:
        """Copy of the model state, ``float64`` of shape ``[B, 13]``."""
        state = torch.empty(self.batch_size, N_STATES, dtype=torch.float64)
        state[:, list(_GLUCOSE)] = self._blocks.glucose.T
        state[:, list(_GUT)] = self._blocks.gut.T
        state[:, list(_INSULIN)] = self._blocks.insulin.T
        return state

    @property
    def bg_mg_dl(self) -> Tensor:
        """Subcutaneous glucose ``Gs / Vg`` in mg/dL, shape ``[B]`` (simglucose ``Gsub``)."""
        return self._blocks.glucose[2] * self._inv_vg

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

    @torch.no_grad()
    def step(
        self,
        cho_announced_g: Tensor,
        insulin_u_per_min: Tensor,
        *,
        exercise: ExerciseEffect | None = None,
        check_inputs: bool = True,
    ) -> Tensor:
        """Advance every patient by one minute.

        Parameters
        ----------
        cho_announced_g : torch.Tensor
            Carbohydrate announced at this minute, grams, shape ``[B]`` (simglucose's
            ``Action.CHO``); added to the planned meal, which is eaten at up to
            :data:`EAT_RATE_G_PER_MIN`.
        insulin_u_per_min : torch.Tensor
            Subcutaneous insulin infusion rate during this minute, U/min, shape ``[B]``.
        exercise : ExerciseEffect or None, optional
            Exercise modulation of glucose uptake during this minute; ``None`` is the
            unmodified UVA/Padova 2008 model.
        check_inputs : bool, default True
            Validate shapes and signs; callers that validated a whole plan up front pass
            ``False`` to save the per-minute check.

        Returns
        -------
        torch.Tensor
            Carbohydrate eaten during this minute, grams, ``float64`` of shape ``[B]``.

        Raises
        ------
        ConfigError
            If an input has the wrong shape or a negative or non-finite entry.
        """
        batch = self.batch_size
        cho = cho_announced_g.to(torch.float64)
        insulin = insulin_u_per_min.to(torch.float64)
        if check_inputs:
            if tuple(cho.shape) != (batch,) or tuple(insulin.shape) != (batch,):
                raise ConfigError(f"step inputs must have shape [{batch}]")
            if not bool(((cho >= 0.0) & (insulin >= 0.0) & (cho + insulin < torch.inf)).all()):
                raise ConfigError("announced carbohydrate and insulin must be finite and >= 0")
        if self._meal_pending or bool(cho.any()):
            eaten = self._eat(cho)
            self._gut = self._gut_inputs()
        else:
            eaten = torch.zeros(batch, dtype=torch.float64)
        self._integrate_minute(eaten, insulin, exercise)
        self._minute += 1
        return eaten

    def _eat(self, cho: Tensor) -> Tensor:
        """Apply the meal bookkeeping of simglucose and return the grams eaten this minute."""
        planned = self._planned_meal_g + cho
        eaten = torch.clamp(planned, 0.0, EAT_RATE_G_PER_MIN)
        self._planned_meal_g = torch.clamp_min(planned - eaten, 0.0)
        was_eating = self._last_eaten_g > 0.0
        starts = (eaten > 0.0) & ~was_eating
        qsto = self._blocks.gut[0] + self._blocks.gut[1]
        self._last_qsto_mg = torch.where(starts, qsto, self._last_qsto_mg)
        foodtaken = torch.where(starts, 0.0, self._last_foodtaken_g)
        self._is_eating = self._is_eating | starts
        self._last_foodtaken_g = foodtaken + torch.where(self._is_eating, eaten, 0.0)
        self._is_eating = self._is_eating & ~((eaten <= 0.0) & was_eating)
        self._last_eaten_g = eaten
        self._meal_pending = bool((self._planned_meal_g > 0.0).any() | (eaten > 0.0).any())
        self._gut_idle = self._gut_idle and not self._meal_pending
        return eaten

    def _gut_inputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gastric-emptying coefficients of the current meal (``Dbar``), each ``[B]``."""
        c = self._coef
        dbar = self._last_qsto_mg + 1000.0 * self._last_foodtaken_g
        has_dbar = dbar > 0.0
        safe_dbar = torch.where(has_dbar, dbar, 1.0)
        gut_a = torch.where(has_dbar, 2.5 / (safe_dbar * (1.0 - c.b)), 0.0)
        gut_c = torch.where(has_dbar, 2.5 / (safe_dbar * c.d), 0.0)
        return gut_a, -(gut_a * c.b * dbar), gut_c, -(gut_c * c.d * dbar)

    def _integrate_minute(
        self, eaten_g: Tensor, insulin_u_per_min: Tensor, exercise: ExerciseEffect | None
    ) -> None:
        c = self._coef
        gut_a, neg_ab, gut_c, neg_cd = self._gut
        vm0, vmx = c.vm0, c.vmx
        if exercise is not None:
            vm0 = vm0 + exercise.vm0_increase_mg_kg_min.to(torch.float64)
            vmx = vmx * exercise.vmx_factor.to(torch.float64)
        inputs = MinuteInputs(
            meal_mg_per_min=1000.0 * eaten_g,
            insulin_pmol_per_kg_per_min=insulin_u_per_min * c.pmol_per_kg_per_u,
            gut_a=gut_a,
            neg_gut_a_b_dbar=neg_ab,
            gut_c=gut_c,
            neg_gut_c_d_dbar=neg_cd,
            vm0=vm0,
            vmx=vmx,
        )
        self._blocks = advance_minute(
            self._blocks,
            c,
            inputs,
            self._readout,
            self._substeps,
            self._gut_idle,
            self._propagator,
        )

    def _propagator(self, steps: int) -> Tensor:
        """Exact insulin propagator over half an RK4 step of ``steps`` steps, cached."""
        if steps not in self._propagators:
            self._propagators[steps] = step_propagator(self._coef.generator, 2 * steps)
        return self._propagators[steps]
