"""Forecast accuracy of a glucose twin against the persistence baseline, in mg/dL.

Metrics are computed on CGM readings (what a site has), at fixed horizons. Persistence
("glucose stays at the last reading") is the baseline every twin must beat.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedtwin.twins.glucose import GlucoseTwin, forecast_from_raw, gaussian_nll
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
    return metrics_of_raw(raw_outputs(model, windows, batch_size), windows)


def raw_outputs(model: GlucoseTwin, windows: ForecastWindows, batch_size: int = 4096) -> Tensor:
    """The model's raw output ``[N, 2, H]`` on every window (eval mode, no gradients)."""
    model.eval()
    with torch.no_grad():
        parts = [
            model(windows.history[start:stop], windows.plan[start:stop])
            for start in range(0, len(windows), batch_size)
            for stop in (start + batch_size,)
        ]
    if not parts:
        return torch.zeros(0, 2, model.config.horizon_steps)
    return torch.cat(parts)


def metrics_of_raw(raw: Tensor, windows: ForecastWindows) -> dict[str, float]:
    """:func:`forecast_metrics` from raw outputs already computed for ``windows``."""
    if len(windows) == 0:
        raise ValueError("no evaluation windows")
    forecast = forecast_from_raw(raw, windows.history)
    mean, std = forecast.mean_mg_dl, forecast.std_mg_dl
    target = windows.target_mg_dl
    persistence = windows.last_cgm_mg_dl.unsqueeze(1).expand_as(target)
    horizon_steps = int(target.shape[1])
    metrics: dict[str, float] = {
        "nll": float(gaussian_nll(raw, windows)),
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
