"""The glucose twin: a probabilistic forecaster of a type-1 diabetes patient's CGM glucose.

Given the last ``L`` five-minute steps of CGM glucose, insulin delivered and carbohydrates eaten,
and the *planned* insulin and carbohydrates over the next ``H`` steps, the twin predicts the CGM
glucose at 5, 10, …, 5·H minutes as a Gaussian (mean and standard deviation, mg/dL).

Invariants:

* causal: the history encoder is a stack of left-padded dilated ``Conv1d`` blocks with
  per-time-step ``LayerNorm``, so features at step ``s`` see inputs up to ``s`` only; the forecast
  uses the last step's features and so depends on nothing after the anchor
  (:mod:`fedtwin.twins.windows` keeps the inputs causal);
* DP-friendly: only ``Conv1d``, ``LayerNorm`` and ``Linear`` layers, which Opacus computes
  per-sample gradients for in closed form (no ``nn.GRU``; no batch statistics);
* stateless normalisation: fixed clinical scales, never statistics of a site's data, so the
  architecture leaks nothing and all sites share one input space;
* persistence plus textbook physiology at initialisation: the output layers start at zero, so
  an untrained twin predicts "glucose stays where it is", moved only by insulin above basal
  and carbohydrate at an adult's typical sensitivity, with a broad uncertainty;
* monotone in the plan (``plan_effect="physiological"``, the default): for a given history, more
  planned insulin never raises the forecast mean and more carbohydrate never lowers it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch.nn import functional

from fedtwin.twins.windows import ForecastWindows

GLUCOSE_CENTRE_MG_DL = 140.0
GLUCOSE_SCALE_MG_DL = 60.0
DELTA_SCALE_MG_DL = 50.0
CARBS_SCALE_G = 20.0
MIN_STD_NORMALISED = 1e-2
INSULIN_ACTION_PEAKS_MIN = (50.0, 75.0, 110.0)
"""Peak times τ of the insulin action curves (rapid-acting insulin peaks at about 55-75 min,
and acts for 5-6 h: Loop's exponential insulin model; see :func:`action_fraction`)."""
CARB_ABSORPTION_PEAKS_MIN = (20.0, 40.0, 80.0)
"""Peak times τ of the carbohydrate absorption curves (fast, mixed and slow meals)."""
INITIAL_INSULIN_EFFECT = 45.0 / DELTA_SCALE_MG_DL
"""An untrained twin's total glucose drop per unit of insulin above basal, normalised (an adult
correction factor of about 45 mg/dL per U)."""
INITIAL_CARB_EFFECT = 90.0 / DELTA_SCALE_MG_DL
"""An untrained twin's total glucose rise per ``CARBS_SCALE_G`` (20 g) of carbohydrate,
normalised (about 4.5 mg/dL per g: correction factor 45 / carb ratio 10)."""


class GlucoseTwinConfig(BaseModel):
    """Architecture of the glucose twin (sent with the run config; identical at every site)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    history_steps: int = Field(36, ge=8, le=288, description="history length L, 5-min steps")
    horizon_steps: int = Field(24, ge=1, le=24, description="forecast horizon H, 5-min steps")
    channels: int = Field(32, ge=4, le=256, description="width of the convolutional encoder")
    dilations: tuple[int, ...] = Field((1, 2, 4, 8), min_length=1, max_length=8)
    kernel_size: int = Field(3, ge=2, le=7)
    plan_effect: Literal["physiological", "learned"] = Field(
        "physiological",
        description=(
            "how planned insulin and carbohydrate move the mean: 'physiological' (action "
            "curves with non-negative, history-dependent gains: more insulin never raises "
            "the forecast, more carbohydrate never lowers it) or 'learned' (a free layer)"
        ),
    )

    @model_validator(mode="after")
    def _history_covers_receptive_field(self) -> GlucoseTwinConfig:
        # The forecast reads the encoder at the last history step; when its receptive field
        # fits inside the history, that feature never touches padding, so windows laid side by
        # side (several windows of one patient in one record) are encoded exactly as alone.
        if self.receptive_field_steps > self.history_steps:
            raise ValueError(
                f"history_steps ({self.history_steps}) must cover the encoder's receptive field "
                f"({self.receptive_field_steps} steps for kernel {self.kernel_size} and "
                f"dilations {list(self.dilations)})"
            )
        return self

    @property
    def receptive_field_steps(self) -> int:
        """History steps the forecast can see: ``1 + (kernel_size - 1) · Σ dilations``."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    @property
    def horizon_min(self) -> int:
        """The forecast horizon in minutes."""
        return 5 * self.horizon_steps


@dataclass(frozen=True)
class GlucoseForecast:
    """A Gaussian forecast, ``[N, H]`` each, in mg/dL."""

    mean_mg_dl: Tensor
    std_mg_dl: Tensor


class _CausalConvBlock(nn.Module):
    """Residual block: left-padded dilated convolution, per-time-step layer norm, SiLU."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        # LayerNorm over channels at each time step: no statistic ever mixes time steps, so
        # the feature at step s depends on inputs up to s only.
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(functional.pad(x, (self.left_pad, 0)))
        y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        return x + functional.silu(y)


def normalise_history(history: Tensor) -> Tensor:
    """Map raw history channels (mg/dL, U, g; channel axis ``-2``) to O(1) network inputs."""
    cgm = (history[..., 0:1, :] - GLUCOSE_CENTRE_MG_DL) / GLUCOSE_SCALE_MG_DL
    insulin = torch.log1p(history[..., 1:2, :].clamp_min(0.0))
    carbs = history[..., 2:3, :] / CARBS_SCALE_G
    return torch.cat([cgm, insulin, carbs], dim=-2)


def normalise_plan(plan: Tensor) -> Tensor:
    """Map raw plan channels (U, g per 5-min bin; channel axis ``-2``) to O(1) inputs."""
    insulin = torch.log1p(plan[..., 0:1, :].clamp_min(0.0))
    carbs = plan[..., 1:2, :] / CARBS_SCALE_G
    return torch.cat([insulin, carbs], dim=-2)


def action_fraction(minutes: Tensor, peak_min: float) -> Tensor:
    """Share of a dose's whole effect reached ``minutes`` after it: ``1 - (1 + t/τ)·e^(-t/τ)``.

    The cumulative form of the activity curve ``t/τ² · e^(-t/τ)``, which peaks at ``τ`` (zero for
    ``t ≤ 0``, rising monotonically to 1).
    """
    t = minutes.clamp_min(0.0) / peak_min
    return 1.0 - (1.0 + t) * torch.exp(-t)


def action_kernels(history_steps: int, horizon_steps: int, peaks_min: tuple[float, ...]) -> Tensor:
    """``[K, L + H, H]``: the effect of one unit given in each history or plan bin, per step.

    Entry ``[k, i, h]`` is the share of the unit's effect (curve ``k``) that happens between the
    anchor (the last reading) and ``5·(h + 1)`` minutes after it. A history bin's dose counts at
    the time of its bin's reading (``-5·(L - 1 - i)`` min), a plan bin's in the middle of its 5
    minutes; a dose's effect before the anchor is already in the readings. Every entry is ≥ 0.
    """
    given = torch.cat(
        [
            -5.0 * torch.arange(history_steps - 1, -1, -1, dtype=torch.float64),
            5.0 * torch.arange(horizon_steps, dtype=torch.float64) + 2.5,
        ]
    )
    ahead = 5.0 * torch.arange(1, horizon_steps + 1, dtype=torch.float64)
    kernels = [
        action_fraction(ahead[None, :] - given[:, None], peak)
        - action_fraction(-given[:, None], peak).expand(-1, horizon_steps)
        for peak in peaks_min
    ]
    return torch.stack(kernels).clamp_min(0.0).float()


def _softplus_inverse(value: float) -> float:
    return math.log(math.expm1(value))


class GlucoseTwin(nn.Module):
    """Probabilistic CGM forecaster conditioned on the planned treatment.

    ``forward`` returns the raw ``[N, 2, H]`` output (normalised mean change from the last
    reading, and the unconstrained scale); use :meth:`forecast` for mg/dL.

    With ``plan_effect="physiological"`` (the default) the mean is the encoder's forecast
    without the plan, minus insulin above the history's basal rate (its median per bin) and plus
    carbohydrate, each through fixed action curves (:func:`action_kernels`, history and plan
    doses) weighted by non-negative gains the encoder reads from the history. For a given
    history the forecast mean is therefore non-increasing in every planned insulin dose and
    non-decreasing in every planned carbohydrate amount (what a what-if comparison of doses
    relies on); only the spread sees the plan through a free layer. ``"learned"`` feeds the plan
    to a free layer for both.

    Inputs may also carry ``k`` windows per record, ``history [N, k, 3, L]`` and
    ``plan [N, k, 2, H]`` (output ``[N, k, 2, H]``): the windows are laid side by side along
    time and encoded in one pass, which gives exactly the per-window result (the receptive
    field fits in ``L``) while every layer still sees one record per row — what per-record
    gradient clipping needs when a record is a patient.
    """

    def __init__(self, config: GlucoseTwinConfig | None = None) -> None:
        super().__init__()
        self.config = config or GlucoseTwinConfig()
        width, horizon = self.config.channels, self.config.horizon_steps
        self.input = nn.Conv1d(3, width, kernel_size=1)
        self.blocks = nn.ModuleList(
            _CausalConvBlock(width, self.config.kernel_size, d) for d in self.config.dilations
        )
        self.plan = nn.Linear(2 * horizon, width)
        self.hidden = nn.Linear(2 * width, width)
        self.physiological = self.config.plan_effect == "physiological"
        # Physiological: this layer gives the spread only; the mean has its own plan-free head.
        self.output = nn.Linear(width, (1 if self.physiological else 2) * horizon)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        if self.physiological:
            length = self.config.history_steps
            self.mean_hidden = nn.Linear(width, width)
            self.mean_output = nn.Linear(width, horizon)
            self.insulin_gain = nn.Linear(width, len(INSULIN_ACTION_PEAKS_MIN))
            self.carb_gain = nn.Linear(width, len(CARB_ABSORPTION_PEAKS_MIN))
            for layer, total in (
                (self.mean_output, 0.0),
                (self.insulin_gain, INITIAL_INSULIN_EFFECT),
                (self.carb_gain, INITIAL_CARB_EFFECT),
            ):
                nn.init.zeros_(layer.weight)
                if total:
                    nn.init.constant_(layer.bias, _softplus_inverse(total / layer.out_features))
                else:
                    nn.init.zeros_(layer.bias)
            self.insulin_kernels: Tensor
            self.carb_kernels: Tensor
            self.register_buffer(
                "insulin_kernels", action_kernels(length, horizon, INSULIN_ACTION_PEAKS_MIN)
            )
            self.register_buffer(
                "carb_kernels", action_kernels(length, horizon, CARB_ABSORPTION_PEAKS_MIN)
            )

    def forward(self, history: Tensor, plan: Tensor) -> Tensor:
        """Raw output ``[N, 2, H]`` (or ``[N, k, 2, H]``) for raw ``history`` and ``plan``."""
        horizon = self.config.horizon_steps
        if history.dim() == 3:
            return self.forward(history.unsqueeze(1), plan.unsqueeze(1)).squeeze(1)
        records, windows, channels, length = history.shape
        side_by_side = (
            normalise_history(history).transpose(1, 2).reshape(records, channels, windows * length)
        )
        features = self.input(side_by_side)
        for block in self.blocks:
            features = block(features)
        encoded = features[:, :, length - 1 :: length].transpose(1, 2)
        planned = functional.silu(self.plan(normalise_plan(plan).flatten(2)))
        hidden = functional.silu(self.hidden(torch.cat([encoded, planned], dim=2)))
        raw: Tensor = self.output(hidden)
        if not self.physiological:
            return raw.view(records, windows, 2, horizon)
        mean = self.mean_output(functional.silu(self.mean_hidden(encoded)))
        given_insulin = history[:, :, 1, :].clamp_min(0.0)
        basal = given_insulin.median(dim=-1, keepdim=True).values
        insulin = torch.cat([given_insulin, plan[:, :, 0, :].clamp_min(0.0)], dim=-1) - basal
        carbs = torch.cat([history[:, :, 2, :], plan[:, :, 1, :]], dim=-1) / CARBS_SCALE_G
        insulin_effect = torch.einsum("rwt,kth->rwkh", insulin, self.insulin_kernels)
        carb_effect = torch.einsum("rwt,kth->rwkh", carbs.clamp_min(0.0), self.carb_kernels)
        insulin_gain = functional.softplus(self.insulin_gain(encoded)).unsqueeze(-1)
        carb_gain = functional.softplus(self.carb_gain(encoded)).unsqueeze(-1)
        mean = (
            mean - (insulin_gain * insulin_effect).sum(dim=2) + (carb_gain * carb_effect).sum(dim=2)
        )
        return torch.stack([mean, raw], dim=2)

    def forecast(self, history: Tensor, plan: Tensor) -> GlucoseForecast:
        """Gaussian forecast in mg/dL for raw inputs (``[N, H]``, or ``[N, k, H]``)."""
        return forecast_from_raw(self(history, plan), history)


def forecast_from_raw(raw: Tensor, history: Tensor) -> GlucoseForecast:
    """The Gaussian forecast in mg/dL that the raw output ``raw`` of ``history`` stands for."""
    last_mg_dl = history[..., 0, -1:]
    return GlucoseForecast(
        mean_mg_dl=last_mg_dl + DELTA_SCALE_MG_DL * raw[..., 0, :],
        std_mg_dl=DELTA_SCALE_MG_DL * _std_normalised(raw[..., 1, :]),
    )


def _std_normalised(raw_scale: Tensor) -> Tensor:
    # softplus(0) ≈ 0.69 ⇒ an untrained twin says ±35 mg/dL: broad, never degenerate.
    return functional.softplus(raw_scale) + MIN_STD_NORMALISED


def gaussian_nll(raw: Tensor, windows: ForecastWindows, reduction: str = "mean") -> Tensor:
    """Gaussian negative log-likelihood in normalised units.

    ``reduction="mean"`` averages over everything (as Opacus expects by default); with ``k``
    windows per record every record has the same weight. ``reduction="none"`` returns one loss
    per record ``[N]``: the mean over that record's windows and horizon steps, so the mean of
    the per-record losses equals the ``"mean"`` reduction exactly.
    """
    last = windows.last_cgm_mg_dl.unsqueeze(-1)
    target = (windows.target_mg_dl - last) / DELTA_SCALE_MG_DL
    std = _std_normalised(raw[..., 1, :])
    mean = raw[..., 0, :]
    nll = torch.log(std) + 0.5 * ((target - mean) / std) ** 2 + 0.5 * math.log(2 * math.pi)
    if reduction == "none":
        return nll.flatten(1).mean(dim=1)
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
    return nll.mean()
