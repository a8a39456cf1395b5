"""One-minute integrator of the UVA/Padova 2008 right-hand side for a batch (internal).

Invariant: :func:`advance_minute` maps the three state blocks of ``B`` patients over one
minute with inputs held constant, and row ``b`` of its result depends only on row ``b`` of its
arguments: the number of RK4 steps is chosen *per patient* from that patient's own stiffness,
so no patient's accuracy or result depends on who else is in the batch (beyond the last-bit
rounding of vectorised ``tanh``, which can differ between SIMD lanes).

- Insulin block ``Ip, X, I1, Id, Il, Isc1, Isc2``: linear with a constant input, advanced
  exactly by the matrix exponential of ``[[A, b, c0], 0]`` (scaling and squaring with a
  Taylor series, per matrix). It is a positive system, so simglucose's clamps on it never bind
  from a non-negative start.
- Gut block ``Qsto1, Qsto2, Qgut``: independent of glucose and insulin; classical RK4 with two
  steps per glucose step (its gastric-emptying switch ``tanh`` can be steep).
- Glucose block ``Gp, Gt, Gs``: classical RK4 reading ``X``, ``Id`` and ``Qgut`` at each stage
  time from the two blocks above, with ``(x >= 0) * dx`` clamps as in simglucose.

Step control: a patient normally takes ``base`` glucose steps a minute. When a Gershgorin
bound of its glucose Jacobian times the step exceeds :data:`MAX_STIFFNESS_PER_STEP` (a large
insulin action makes ``Gt`` stiff: ``Vmx X / Km0`` grows past 1/min after big boluses), or
while digesting if its gut's worst-case bound (:func:`gut_stiffness`, a patient constant)
times the gut step exceeds :data:`MAX_GUT_STIFFNESS_PER_STEP`, that patient's minute is
recomputed with the smallest power-of-two multiple of ``base`` that satisfies the bound, as
simglucose's adaptive dopri5 shortens its steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Final

import torch
from torch import Tensor

from fedtwin.cohorts.population import VirtualPatientParams

#: Largest glucose-Jacobian bound times step length allowed (RK4 is stable below about 2.78).
MAX_STIFFNESS_PER_STEP: Final = 1.0
#: The same for the gut block, whose steep phase lasts only a minute or two per meal.
MAX_GUT_STIFFNESS_PER_STEP: Final = 2.0
#: Most RK4 steps per minute a patient may take.
MAX_STEPS_PER_MINUTE: Final = 1024
_PMOL_PER_U: Final = 6000.0
#: Positions of ``X`` and ``Id`` inside the insulin block.
_X, _ID = 1, 3
_INSULIN_SIZE = 7


@dataclass(frozen=True)
class Coefficients:
    """Per-patient constants of the right-hand side, each ``float64`` of shape ``[B]``."""

    kmax: Tensor
    kmin: Tensor
    half_k_range: Tensor
    kabs: Tensor
    rat_per_qgut: Tensor
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
    ksc: Tensor
    b: Tensor
    d: Tensor
    pmol_per_kg_per_u: Tensor
    generator: Tensor
    glucose_stiffness: Tensor
    gut_steps: Tensor

    @classmethod
    def from_params(cls, p: VirtualPatientParams) -> Coefficients:
        """Collect the constants of a batch (``generator`` is the insulin block's ``[B, 9, 9]``)."""
        return cls(
            kmax=p["kmax"],
            kmin=p["kmin"],
            half_k_range=(p["kmax"] - p["kmin"]) / 2.0,
            kabs=p["kabs"],
            rat_per_qgut=p["f"] * p["kabs"] / p["BW"],
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
            ksc=p["ksc"],
            b=p["b"],
            d=p["d"],
            pmol_per_kg_per_u=_PMOL_PER_U / p["BW"],
            generator=_insulin_generator(p),
            glucose_stiffness=p["k1"] + p["k2"] + p["ksc"] + p["kp2"],
            gut_steps=_gut_steps(p),
        )

    def take(self, rows: Tensor) -> Coefficients:
        """The constants of some rows."""
        return Coefficients(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass(frozen=True)
class MinuteInputs:
    """Inputs held constant during one minute, each ``[B]``."""

    meal_mg_per_min: Tensor
    insulin_pmol_per_kg_per_min: Tensor
    gut_a: Tensor
    neg_gut_a_b_dbar: Tensor
    gut_c: Tensor
    neg_gut_c_d_dbar: Tensor
    vm0: Tensor
    vmx: Tensor

    def take(self, rows: Tensor) -> MinuteInputs:
        """The inputs of some rows."""
        return MinuteInputs(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass(frozen=True)
class Blocks:
    """The state blocks, batch-last: glucose ``[3, B]``, gut ``[3, B]``, insulin ``[7, B]``."""

    glucose: Tensor
    gut: Tensor
    insulin: Tensor

    def take(self, rows: Tensor) -> Blocks:
        """The states of some rows."""
        return Blocks(self.glucose[:, rows], self.gut[:, rows], self.insulin[:, rows])


def gut_stiffness(p: VirtualPatientParams | Mapping[str, Tensor]) -> Tensor:
    """Gershgorin bound of the gut Jacobian at the steepest point of gastric emptying, 1/min.

    ``d(kgut Qsto2) / dQsto`` peaks where ``Qsto = b Dbar`` at about
    ``2.5 (kmax - kmin) / 2 * b / (1 - b)``; with the linear terms the bound is
    ``kabs + 2 kmax + 5 (kmax - kmin) / 2 * b / (1 - b)`` (at most 3.05 in the published 30).
    """
    half_range = (p["kmax"] - p["kmin"]) / 2.0
    return p["kabs"] + 2.0 * p["kmax"] + 5.0 * half_range * p["b"] / (1.0 - p["b"])


def _gut_steps(p: VirtualPatientParams) -> Tensor:
    """RK4 steps per minute a patient's gut needs while digesting (at least 2)."""
    needed = torch.ceil(gut_stiffness(p) / (2.0 * MAX_GUT_STIFFNESS_PER_STEP)).clamp_min(1.0)
    return 2 * torch.exp2(torch.ceil(torch.log2(needed))).to(torch.int64)


def _insulin_generator(p: VirtualPatientParams) -> Tensor:
    """``[B, 9, 9]`` generator of ``[insulin block, input, 1]`` (input and 1 are constant)."""
    a = torch.zeros(p.batch_size, 9, 9, dtype=torch.float64)
    vi, ki, p2u = p["Vi"], p["ki"], p["p2u"]
    a[:, 0, 0] = -(p["m2"] + p["m4"])
    a[:, 0, 4] = p["m1"]
    a[:, 0, 5] = p["ka1"]
    a[:, 0, 6] = p["ka2"]
    a[:, 1, 0] = p2u / vi
    a[:, 1, 1] = -p2u
    a[:, 1, 8] = -p2u * p["Ib"]
    a[:, 2, 0] = ki / vi
    a[:, 2, 2] = -ki
    a[:, 3, 2] = ki
    a[:, 3, 3] = -ki
    a[:, 4, 0] = p["m2"]
    a[:, 4, 4] = -(p["m1"] + p["m30"])
    a[:, 5, 5] = -(p["ka1"] + p["kd"])
    a[:, 5, 7] = 1.0
    a[:, 6, 5] = p["kd"]
    a[:, 6, 6] = -p["ka2"]
    return a


#: Batches from this size multiply with ``torch.bmm``; below it, by broadcasting.
_BMM_MIN_BATCH: Final = 256


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    """Batched product of ``[B, 9, 9]`` matrices.

    For the few stiff rows of a minute, broadcasting beats ``torch.bmm`` (whose per-call
    threading overhead dominates a handful of ``9 x 9`` products); for whole batches (the
    propagators of a batch, the ``14 B`` rows of :func:`stable_steady_state`) ``bmm`` is about
    8x faster (measured on this 2-core box, float64, 1-2 threads).
    """
    if a.shape[0] >= _BMM_MIN_BATCH:
        return torch.bmm(a, b)
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(dim=-2)


def step_propagator(generator: Tensor, half_steps: int) -> Tensor:
    """Exact insulin propagator over ``1 / half_steps`` minute, ``[B, 9, 9]``.

    Matrix exponential by scaling, degree-18 Taylor and squaring, with the scaling chosen per
    matrix so that each result depends only on its own matrix.
    """
    a = generator / half_steps
    norm = a.abs().sum(dim=-1).amax(dim=-1)
    squarings = torch.ceil(torch.log2(norm.clamp_min(1e-300))).clamp_min(0.0) + 1.0
    scaled = a / torch.exp2(squarings)[:, None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype).expand_as(a)
    result = eye.clone()
    for degree in range(18, 0, -1):
        result = eye + _matmul(scaled, result) / degree
    for k in range(int(squarings.max().item()) if a.shape[0] else 0):
        result = torch.where((squarings > k)[:, None, None], _matmul(result, result), result)
    return result


def insulin_readout(step: Tensor, half_steps: int) -> Tensor:
    """Readout of the exact insulin solution at every RK stage time.

    ``step`` is :func:`step_propagator` for ``half_steps`` (two per RK4 step). Returns
    ``[9, K, B]`` with ``K = 2 * (half_steps + 1) + 7``: entry ``[j, k, b]`` is the weight of
    input ``j`` of ``[insulin block (7), input in pmol/kg/min, 1]`` in output ``k``. Outputs
    ``2i`` and ``2i + 1`` are ``X`` and ``Id`` at ``i / half_steps`` minutes into the minute;
    the last seven are the insulin block at the end of the minute.
    """
    power = torch.eye(9, dtype=torch.float64).expand_as(step).clone()
    stages = [power[:, [_X, _ID], :]]
    for _ in range(half_steps):
        power = _matmul(step, power)
        stages.append(power[:, [_X, _ID], :])
    full = torch.cat((*stages, power[:, :_INSULIN_SIZE, :]), dim=1)
    return full.permute(2, 1, 0).contiguous()


def _gut_derivative(q: Tensor, c: Coefficients, u: MinuteInputs) -> Tensor:
    q1, q2, qgut = q.unbind(0)
    qsto = q1 + q2
    tanh_b = torch.tanh(torch.addcmul(u.neg_gut_a_b_dbar, u.gut_a, qsto))
    tanh_d = torch.tanh(torch.addcmul(u.neg_gut_c_d_dbar, u.gut_c, qsto))
    kgut = torch.addcmul(c.kmin, c.half_k_range, (tanh_b - tanh_d).add_(2.0))
    kmax_q1 = c.kmax * q1
    emptied = kgut * q2
    return torch.stack(
        (
            u.meal_mg_per_min - kmax_q1,
            kmax_q1 - emptied,
            torch.addcmul(emptied, c.kabs, qgut, value=-1.0),
        )
    )


def _glucose_derivative(
    g: Tensor, c: Coefficients, u: MinuteInputs, x_action: Tensor, id_action: Tensor, qgut: Tensor
) -> Tensor:
    gp, gt, gs = g.unbind(0)
    egp = torch.addcmul(torch.addcmul(c.kp1, c.kp2, gp, value=-1.0), c.kp3, id_action, value=-1.0)
    renal = (gp - c.ke2).clamp_min_(0.0).mul_(c.ke1)
    k1_gp = c.k1 * gp
    k2_gt = c.k2 * gt
    uptake = torch.addcmul(u.vm0, u.vmx, x_action).mul_(gt).div_(gt + c.km0)
    d_gp = torch.addcmul(egp.clamp_min_(0.0), c.rat_per_qgut, qgut)
    d_gp.sub_(c.fsnc).sub_(renal).sub_(k1_gp).add_(k2_gt)
    dx = torch.stack((d_gp, (k1_gp - k2_gt).sub_(uptake), c.ksc * (gp - gs)))
    return dx.mul_(g >= 0.0)


def _rk4(x: Tensor, h: float, derivative: Callable[[Tensor, int], Tensor], stage: int) -> Tensor:
    """One classical RK4 step; ``derivative(x, j)`` receives the stage-time index ``j``."""
    k1 = derivative(x, stage)
    k2 = derivative(torch.add(x, k1, alpha=h / 2), stage + 1)
    k3 = derivative(torch.add(x, k2, alpha=h / 2), stage + 1)
    k4 = derivative(torch.add(x, k3, alpha=h), stage + 2)
    return x + (h / 6.0) * (k1.add_(k2.add_(k3), alpha=2.0).add_(k4))


def _insulin_stages(readout: Tensor, insulin: Tensor, u: MinuteInputs) -> Tensor:
    out = torch.addcmul(readout[8], readout[7], u.insulin_pmol_per_kg_per_min)
    for j in range(_INSULIN_SIZE):
        out.addcmul_(readout[j], insulin[j])
    return out


def _integrate(
    s: Blocks, c: Coefficients, u: MinuteInputs, readout: Tensor, steps: int, gut_idle: bool
) -> tuple[Blocks, Tensor]:
    """Advance with ``steps`` glucose steps; also return the ``[K, B]`` insulin stage values."""
    insulin = _insulin_stages(readout, s.insulin, u)
    half_steps = 2 * steps
    if gut_idle:
        gut = s.gut
        qgut = [gut[2]] * (half_steps + 1)
    else:
        gut = s.gut
        qgut = [gut[2]]
        for _ in range(half_steps):
            gut = _rk4(gut, 1.0 / half_steps, lambda x, _j: _gut_derivative(x, c, u), 0)
            qgut.append(gut[2])

    def glucose_rate(x: Tensor, j: int) -> Tensor:
        return _glucose_derivative(x, c, u, insulin[2 * j], insulin[2 * j + 1], qgut[j])

    glucose = s.glucose
    for k in range(steps):
        glucose = _rk4(glucose, 1.0 / steps, glucose_rate, 2 * k)
    return Blocks(glucose, gut, insulin[-_INSULIN_SIZE:]), insulin


def _steps_needed(
    c: Coefficients, u: MinuteInputs, insulin: Tensor, base: int, gut_idle: bool
) -> Tensor:
    """Per-patient RK4 steps per minute: a multiple of ``base`` by a power of two."""
    x_peak = insulin[0:-_INSULIN_SIZE:2].amax(dim=0).clamp_min(0.0)
    bound = torch.addcmul(u.vm0, u.vmx, x_peak).div_(c.km0).add_(c.glucose_stiffness)
    needed = torch.ceil(bound / (MAX_STIFFNESS_PER_STEP * base))
    if not gut_idle:
        needed = torch.maximum(needed, torch.ceil(c.gut_steps / (2.0 * base)))
    levels = torch.exp2(torch.ceil(torch.log2(needed.clamp(1.0, MAX_STEPS_PER_MINUTE / base))))
    return base * levels.to(torch.int64)


def advance_minute(
    s: Blocks,
    c: Coefficients,
    u: MinuteInputs,
    readout: Tensor,
    base_steps: int,
    gut_idle: bool,
    propagator: Callable[[int], Tensor],
) -> Blocks:
    """Advance every patient one minute, refining the steps of stiff patients.

    Parameters
    ----------
    s : Blocks
        States at the start of the minute.
    c : Coefficients
        Patient constants.
    u : MinuteInputs
        This minute's inputs.
    readout : torch.Tensor
        :func:`insulin_readout` for ``base_steps``.
    base_steps : int
        RK4 steps per minute of a non-stiff patient.
    gut_idle : bool
        Every gut state is exactly zero and nothing is eaten (the gut stays zero).
    propagator : Callable[[int], torch.Tensor]
        ``propagator(steps)`` is :func:`step_propagator` of the whole batch for ``2 * steps``
        half-steps (cached by the caller).

    Returns
    -------
    Blocks
        States at the end of the minute.
    """
    result, insulin = _integrate(s, c, u, readout, base_steps, gut_idle)
    steps = _steps_needed(c, u, insulin, base_steps, gut_idle)
    stiff = steps > base_steps
    if not bool(stiff.any()):
        return result
    glucose, gut, insulin_end = result.glucose.clone(), result.gut.clone(), result.insulin.clone()
    for level in torch.unique(steps[stiff]).tolist():
        rows = torch.nonzero(steps == level).flatten()
        sub_c = c.take(rows)
        sub_readout = insulin_readout(propagator(int(level))[rows], 2 * int(level))
        fine, _ = _integrate(s.take(rows), sub_c, u.take(rows), sub_readout, int(level), gut_idle)
        glucose[:, rows], gut[:, rows], insulin_end[:, rows] = fine.glucose, fine.gut, fine.insulin
    return Blocks(glucose, gut, insulin_end)
