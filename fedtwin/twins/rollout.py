"""Chained forecasts: roll a patient forward past the twin's horizon, with uncertainty.

The twin predicts ``H`` steps (e.g. 60 min). To see a day ahead, :func:`rollout` predicts
``H`` steps, appends the predicted mean to the history together with the planned treatment of
those steps, and predicts again, until the plan is covered.

Uncertainty is propagated by moments, not by sampling: the variance of step ``k`` of chunk
``c`` is ``v_anchor(c) + s²_{c,k}``, where ``s_{c,k}`` is the twin's (calibrated,
personalised) standard deviation and ``v_anchor(c)`` the variance at the last step of chunk
``c - 1`` (0 for the first chunk, which starts from a reading). This treats the chunk's
predicted change as independent of the error in its starting point, and keeps one network
pass per chunk for all plans at once; sampling trajectories would need as many passes per
sample, which is what the 1-s budget for 100 plans × 24 h rules out on a CPU.

Invariants: every row is rolled independently (rows never mix, so plans batched together give
exactly what each gives alone); the first chunk equals :func:`predict` on the inputs;
nothing is random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtwin.twins.calibration import CalibrationScales
from fedtwin.twins.glucose import GlucoseForecast, GlucoseTwin
from fedtwin.twins.personalise import PersonalHead, population_forecast


@dataclass(frozen=True, eq=False)
class Rollout:
    """Marginal Gaussian of each future step, ``[P, S]`` each, in mg/dL."""

    mean_mg_dl: Tensor
    std_mg_dl: Tensor


def predict(
    model: GlucoseTwin,
    history: Tensor,
    plan: Tensor,
    calibration: CalibrationScales | None = None,
    head: PersonalHead | None = None,
) -> GlucoseForecast:
    """One forecast of the model's horizon: shared twin → calibration → personal head."""
    forecast = population_forecast(model, history, plan, calibration)
    return forecast if head is None else head.apply(forecast, history[..., 0, -1])


def pad_plan(plan: Tensor, steps: int) -> Tensor:
    """Extend a ``[P, 2, S]`` plan to ``steps`` bins: median insulin (≈ basal), no carbs."""
    missing = steps - int(plan.shape[2])
    if missing <= 0:
        return plan
    basal = plan[:, 0, :].median(dim=1).values
    tail = torch.zeros(int(plan.shape[0]), 2, missing, dtype=plan.dtype)
    tail[:, 0, :] = basal.unsqueeze(1)
    return torch.cat([plan, tail], dim=2)


def rollout(
    model: GlucoseTwin,
    history: Tensor,
    plan: Tensor,
    calibration: CalibrationScales | None = None,
    head: PersonalHead | None = None,
) -> Rollout:
    """Roll ``[P, 3, L]`` histories forward over ``[P, 2, S]`` plans (any ``S >= 1``).

    Bin ``j`` of the plan is the treatment during the ``j``-th 5-minute bin after the last
    reading (bin 0 starts at the reading); step ``j`` of the result is the glucose 5·(j+1)
    minutes after the last reading.
    """
    horizon, length = model.config.horizon_steps, model.config.history_steps
    total = int(plan.shape[2])
    chunks = math.ceil(total / horizon)
    padded = pad_plan(plan.float(), chunks * horizon)
    current = history.float()
    anchor_variance = torch.zeros(int(history.shape[0]))
    means, variances = [], []
    for chunk in range(chunks):
        treatment = padded[:, :, chunk * horizon : (chunk + 1) * horizon]
        forecast = predict(model, current, treatment, calibration, head)
        variance = anchor_variance.unsqueeze(1) + forecast.std_mg_dl.square()
        means.append(forecast.mean_mg_dl)
        variances.append(variance)
        anchor_variance = variance[:, -1]
        # Column k of a history pairs cgm[s] with the treatment of bin s - 1 (windows.py).
        appended = torch.cat([forecast.mean_mg_dl.unsqueeze(1), treatment], dim=1)
        current = torch.cat([current, appended], dim=2)[:, :, -length:]
    mean = torch.cat(means, dim=1)[:, :total]
    std = torch.cat(variances, dim=1)[:, :total].sqrt()
    return Rollout(mean_mg_dl=mean, std_mg_dl=std)
