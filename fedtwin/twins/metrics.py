"""Forecast accuracy of a glucose twin against the persistence baseline, in mg/dL.

Metrics are computed on CGM readings (what a site has), at fixed horizons. Persistence
("glucose stays at the last reading") is the baseline every twin must beat.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedtwin.twins.glucose import GlucoseTwin, gaussian_nll
from fedtwin.twins.windows import ForecastWindows

REPORTED_HORIZONS_MIN = (30, 60, 120)
# Two-sided 90 % central interval of a Gaussian: mean ± 1.6449 σ.
Z_90 = 1.6448536269514722


def forecast_metrics(
    model: GlucoseTwin, windows: ForecastWindows, batch_size: int = 4096
) -> dict[str, float]:
    """RMSE/MAE of the twin and of persistence at 30 and 60 min, NLL and 90 % coverage.

    Keys: ``rmse_30``, ``mae_30``, ``persistence_rmse_30``, ``persistence_mae_30`` (and ``_60``
    where the horizon reaches it), ``nll``, ``coverage90``, ``windows``.
    """
    if len(windows) == 0:
        raise ValueError("no evaluation windows")
    model.eval()
    means, stds, nll_sum = [], [], 0.0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            part = _slice(windows, start, start + batch_size)
            raw = model(part.history, part.plan)
            nll_sum += float(gaussian_nll(raw, part)) * len(part)
            forecast = model.forecast(part.history, part.plan)
            means.append(forecast.mean_mg_dl)
            stds.append(forecast.std_mg_dl)
    mean, std = torch.cat(means), torch.cat(stds)
    target = windows.target_mg_dl
    persistence = windows.last_cgm_mg_dl.unsqueeze(1).expand_as(target)
    horizon_steps = int(target.shape[1])
    metrics: dict[str, float] = {
        "nll": nll_sum / len(windows),
        "coverage90": float(((target - mean).abs() <= Z_90 * std).float().mean()),
        "windows": float(len(windows)),
    }
    for horizon_min in REPORTED_HORIZONS_MIN:
        step = horizon_min // 5
        if step > horizon_steps:
            continue
        metrics.update(_errors(mean[:, step - 1], target[:, step - 1], f"_{horizon_min}"))
        metrics.update(
            _errors(
                persistence[:, step - 1], target[:, step - 1], f"_{horizon_min}", "persistence_"
            )
        )
    return metrics


def _errors(prediction: Tensor, target: Tensor, suffix: str, prefix: str = "") -> dict[str, float]:
    error = prediction - target
    return {
        f"{prefix}rmse{suffix}": float(error.pow(2).mean().sqrt()),
        f"{prefix}mae{suffix}": float(error.abs().mean()),
    }


def _slice(windows: ForecastWindows, start: int, stop: int) -> ForecastWindows:
    return ForecastWindows(
        history=windows.history[start:stop],
        plan=windows.plan[start:stop],
        target_mg_dl=windows.target_mg_dl[start:stop],
    )
