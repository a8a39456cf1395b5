"""Baselines every glucose twin must beat: persistence and a linear autoregressive model.

Both speak the twin's forecast interface: ``forecast(history [N, 3, L], plan [N, 2, H])`` returns
a :class:`~fedtwin.twins.glucose.GlucoseForecast` (mean and standard deviation per horizon step,
mg/dL), and both are fitted in closed form on a site's *training* windows only.

* :class:`PersistenceForecaster`: "glucose stays at the last reading"; its spread at step ``h``
  is the root-mean-square change over ``h`` steps in the training windows.
* :class:`LinearArForecaster`: per horizon step ``h``, ridge least squares of the change
  ``cgm[t+h] − cgm[t]`` on the last ``k`` CGM changes, the last reading, the last ``k`` bins of
  insulin and carbohydrate, their totals over the whole history, and the planned insulin and
  carbohydrate of bins ``t … t+h−1`` (the linear ARX model of the OhioT1DM baselines; the
  "linear regression" row of the BGLP 2020 protocol). Its spread is the residual RMS per step.

Invariant: causal by construction: step ``h`` of the AR model has zero weight on planned bins
at or after ``t+h`` (they cannot influence ``cgm[t+h]``), and nothing reads the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedtwin.twins.glucose import GlucoseForecast
from fedtwin.twins.windows import ForecastWindows

# Fixed feature scales (any O(1) choice works; they only condition the ridge problem).
GLUCOSE_CENTRE_MG_DL = 140.0
GLUCOSE_SCALE_MG_DL = 60.0
DELTA_SCALE_MG_DL = 50.0
CARBS_SCALE_G = 20.0
MIN_STD_MG_DL = 1e-3
_FIT_CHUNK = 65_536


def _require_windows(windows: ForecastWindows) -> None:
    if windows.history.dim() != 3 or len(windows) == 0:
        raise ValueError("baselines are fitted on a non-empty [N, 3, L] window batch")


@dataclass(frozen=True)
class PersistenceForecaster:
    """The last CGM reading, held; the spread of each step learnt from training windows.

    Attributes
    ----------
    std_mg_dl : Tensor
        ``[H]`` root-mean-square change of CGM over 5, 10, …, 5·H minutes.
    """

    std_mg_dl: Tensor

    @property
    def horizon_steps(self) -> int:
        """Steps this baseline forecasts."""
        return int(self.std_mg_dl.shape[0])

    @classmethod
    def fit(cls, windows: ForecastWindows) -> PersistenceForecaster:
        """Fit the per-step spread on training windows (``[N, 3, L]``)."""
        _require_windows(windows)
        change = windows.target_mg_dl.double() - windows.last_cgm_mg_dl.double().unsqueeze(1)
        std = change.pow(2).mean(dim=0).sqrt().clamp_min(MIN_STD_MG_DL)
        return cls(std_mg_dl=std.float())

    def forecast(self, history: Tensor, plan: Tensor) -> GlucoseForecast:
        """Mean = last reading at every step; std = the fitted spread."""
        last = history[:, 0, -1:]
        mean = last.expand(-1, self.horizon_steps)
        return GlucoseForecast(
            mean_mg_dl=mean.float(), std_mg_dl=self.std_mg_dl.expand_as(mean).float()
        )


def ar_features(history: Tensor, plan: Tensor, lags: int) -> Tensor:
    """Design matrix ``[N, F]`` of the AR model (float64, O(1) scales, constant last).

    Columns: ``lags − 1`` CGM changes relative to the last reading, the last reading, the last
    ``lags`` insulin and carbohydrate bins, total insulin and carbohydrate over the history,
    the ``H`` planned insulin and ``H`` planned carbohydrate bins, and 1.
    """
    if history.shape[-1] < lags:
        raise ValueError(f"history of {history.shape[-1]} steps is shorter than {lags} lags")
    history = history.double()
    cgm = history[:, 0, -lags:]
    last = cgm[:, -1:]
    insulin, carbs = history[:, 1], history[:, 2] / CARBS_SCALE_G
    plan = plan.double()
    return torch.cat(
        [
            (cgm[:, :-1] - last) / DELTA_SCALE_MG_DL,
            (last - GLUCOSE_CENTRE_MG_DL) / GLUCOSE_SCALE_MG_DL,
            insulin[:, -lags:],
            carbs[:, -lags:],
            insulin.sum(dim=1, keepdim=True),
            carbs.sum(dim=1, keepdim=True),
            plan[:, 0],
            plan[:, 1] / CARBS_SCALE_G,
            torch.ones(len(history), 1, dtype=torch.float64),
        ],
        dim=1,
    )


def causal_mask(lags: int, horizon_steps: int) -> Tensor:
    """``[H, F]``: which features step ``h`` (0-based: ``h + 1`` steps ahead) may use."""
    base = (lags - 1) + 1 + 2 * lags + 2
    mask = torch.ones(horizon_steps, base + 2 * horizon_steps + 1, dtype=torch.float64)
    for step in range(horizon_steps):
        # Planned bins t+step+1 … t+H−1 come after cgm[t+step+1] was read.
        mask[step, base + step + 1 : base + horizon_steps] = 0.0
        mask[step, base + horizon_steps + step + 1 : base + 2 * horizon_steps] = 0.0
    return mask


@dataclass(frozen=True)
class LinearArForecaster:
    """Linear ARX forecaster, one ridge regression per horizon step (module docstring).

    Attributes
    ----------
    lags : int
        ``k``: CGM, insulin and carbohydrate bins read from the end of the history.
    weights : Tensor
        ``[H, F]`` float64 coefficients on :func:`ar_features` (zero where masked).
    std_mg_dl : Tensor
        ``[H]`` residual root-mean-square on the training windows.
    """

    lags: int
    weights: Tensor
    std_mg_dl: Tensor

    @property
    def horizon_steps(self) -> int:
        """Steps this baseline forecasts."""
        return int(self.weights.shape[0])

    @classmethod
    def fit(
        cls, windows: ForecastWindows, lags: int = 12, ridge: float = 1e-3
    ) -> LinearArForecaster:
        """Closed-form ridge fit on training windows (``[N, 3, L]``).

        Solves ``(X_hᵀX_h + ridge·N·I) w_h = X_hᵀ y_h`` per step ``h``, where ``X_h`` is the
        design matrix with the columns step ``h`` may not use zeroed and ``y_h`` the
        normalised change of CGM; the normal equations are accumulated in chunks, so memory
        stays bounded for any number of windows.
        """
        _require_windows(windows)
        if lags < 1:
            raise ValueError("lags must be >= 1")
        horizon = int(windows.target_mg_dl.shape[1])
        mask = causal_mask(lags, horizon)
        features = mask.shape[1]
        gram = torch.zeros(features, features, dtype=torch.float64)
        moment = torch.zeros(features, horizon, dtype=torch.float64)
        for start in range(0, len(windows), _FIT_CHUNK):
            part = slice(start, start + _FIT_CHUNK)
            x = ar_features(windows.history[part], windows.plan[part], lags)
            y = _normalised_change(windows.target_mg_dl[part], windows.history[part])
            gram += x.T @ x
            moment += x.T @ y
        count = len(windows)
        masked_gram = gram.unsqueeze(0) * (mask.unsqueeze(2) * mask.unsqueeze(1))
        penalty = ridge * count * torch.eye(features, dtype=torch.float64)
        weights = torch.linalg.solve(masked_gram + penalty, (moment.T * mask).unsqueeze(2)).squeeze(
            2
        )
        weights = weights * mask
        squared = torch.zeros(horizon, dtype=torch.float64)
        for start in range(0, len(windows), _FIT_CHUNK):
            part = slice(start, start + _FIT_CHUNK)
            x = ar_features(windows.history[part], windows.plan[part], lags)
            y = _normalised_change(windows.target_mg_dl[part], windows.history[part])
            squared += (x @ weights.T - y).pow(2).sum(dim=0)
        std = DELTA_SCALE_MG_DL * (squared / count).sqrt()
        return cls(lags=lags, weights=weights, std_mg_dl=std.float().clamp_min(MIN_STD_MG_DL))

    def forecast(self, history: Tensor, plan: Tensor) -> GlucoseForecast:
        """Mean = last reading + the fitted change; std = the residual spread per step."""
        x = ar_features(history, plan, self.lags)
        last = history[:, 0, -1:].double()
        mean = last + DELTA_SCALE_MG_DL * (x @ self.weights.T)
        return GlucoseForecast(
            mean_mg_dl=mean.float(), std_mg_dl=self.std_mg_dl.expand(len(history), -1).float()
        )


def _normalised_change(target_mg_dl: Tensor, history: Tensor) -> Tensor:
    last = history[:, 0, -1:].double()
    return (target_mg_dl.double() - last) / DELTA_SCALE_MG_DL
