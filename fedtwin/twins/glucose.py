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
* persistence at initialisation: the output layer starts at zero, so an untrained twin predicts
  "glucose stays where it is" with a broad uncertainty, and training can only start from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


class GlucoseTwinConfig(BaseModel):
    """Architecture of the glucose twin (sent with the run config; identical at every site)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    history_steps: int = Field(36, ge=8, le=288, description="history length L, 5-min steps")
    horizon_steps: int = Field(24, ge=1, le=24, description="forecast horizon H, 5-min steps")
    channels: int = Field(32, ge=4, le=256, description="width of the convolutional encoder")
    dilations: tuple[int, ...] = Field((1, 2, 4, 8), min_length=1, max_length=8)
    kernel_size: int = Field(3, ge=2, le=7)

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


class GlucoseTwin(nn.Module):
    """Probabilistic CGM forecaster conditioned on the planned treatment.

    ``forward`` returns the raw ``[N, 2, H]`` output (normalised mean change from the last
    reading, and the unconstrained scale); use :meth:`forecast` for mg/dL.

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
        self.output = nn.Linear(width, 2 * horizon)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

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
        return raw.view(records, windows, 2, horizon)

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
