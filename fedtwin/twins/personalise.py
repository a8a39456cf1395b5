"""On-site personalisation: a small per-patient head on top of the shared twin.

The federated twin is shared by every patient; a patient whose course it systematically
misjudges (a sensor that drifts, an insulin sensitivity off the population's) gets a
:class:`PersonalHead`: for each horizon step ``h`` an affine correction of the predicted change
and a factor on the spread,

``mean' = last + gain_h · (mean - last) + offset_h``, ``std' = std · exp(log_std_h)``.

That is ``3 · H`` numbers, fitted by :func:`personalise` on that patient's own windows with the
shared network frozen, by the Gaussian negative log-likelihood plus a ridge penalty that pulls
the head back to the identity (so a few windows cannot move it far).

Invariants: the head starts at, and with no data stays at, the identity; the shared network's
weights are never changed; nothing is returned but the head, which stays at the site (it is
not part of any model update and holds no data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedtwin.errors import ConfigError
from fedtwin.twins.calibration import CalibrationScales, apply_calibration
from fedtwin.twins.glucose import GlucoseForecast, GlucoseTwin
from fedtwin.twins.windows import ForecastWindows


@dataclass(frozen=True, eq=False)
class PersonalHead:
    """Per-horizon affine correction of one patient's forecasts (float32 ``[H]`` each)."""

    gain: Tensor
    offset_mg_dl: Tensor
    log_std: Tensor

    @classmethod
    def identity(cls, horizon_steps: int) -> PersonalHead:
        """The head that changes nothing."""
        return cls(
            gain=torch.ones(horizon_steps),
            offset_mg_dl=torch.zeros(horizon_steps),
            log_std=torch.zeros(horizon_steps),
        )

    @property
    def horizon_steps(self) -> int:
        """Horizon steps ``H`` the head corrects."""
        return int(self.gain.shape[0])

    def apply(self, forecast: GlucoseForecast, last_cgm_mg_dl: Tensor) -> GlucoseForecast:
        """Correct a ``[..., H']`` forecast (``H' <= H``) made from readings ``[...]``."""
        steps = int(forecast.mean_mg_dl.shape[-1])
        if steps > self.horizon_steps:
            raise ConfigError(f"personal head covers {self.horizon_steps} steps, not {steps}")
        last = last_cgm_mg_dl.unsqueeze(-1)
        change = forecast.mean_mg_dl - last
        return GlucoseForecast(
            mean_mg_dl=last + self.gain[:steps] * change + self.offset_mg_dl[:steps],
            std_mg_dl=forecast.std_mg_dl * torch.exp(self.log_std[:steps]),
        )


def population_forecast(
    model: GlucoseTwin,
    history: Tensor,
    plan: Tensor,
    calibration: CalibrationScales | None,
) -> GlucoseForecast:
    """The shared twin's forecast, calibrated when scales are given (no gradient)."""
    with torch.no_grad():
        forecast = model.forecast(history, plan)
    return forecast if calibration is None else apply_calibration(forecast, calibration)


def personalise(
    model: GlucoseTwin,
    windows: ForecastWindows,
    *,
    calibration: CalibrationScales | None = None,
    ridge: float = 10.0,
    steps: int = 300,
    learning_rate: float = 0.05,
) -> PersonalHead:
    """Fit one patient's head on that patient's windows (full batch, deterministic).

    Parameters
    ----------
    model : GlucoseTwin
        The shared twin (frozen; not modified).
    windows : ForecastWindows
        ``[N, ...]`` windows of this patient only, e.g. its history up to now.
    calibration : CalibrationScales or None
        The run's calibration; the head corrects the calibrated forecast.
    ridge : float, default 10.0
        Weight of ``Σ (gain-1)² + (offset/50)² + log_std²`` against the mean NLL, divided by
        the window count: a prior worth about ``ridge`` windows per parameter (overlapping
        windows of one patient are far from independent, hence more than one).
    steps, learning_rate : int, float
        Adam steps and step size.

    Returns
    -------
    PersonalHead
        The fitted head (the identity if ``windows`` is empty).
    """
    horizon = model.config.horizon_steps
    if len(windows) == 0:
        return PersonalHead.identity(horizon)
    base = population_forecast(model, windows.history, windows.plan, calibration)
    last = windows.last_cgm_mg_dl.unsqueeze(-1)
    change = (base.mean_mg_dl - last).detach()
    target_change = windows.target_mg_dl - last
    log_base_std = torch.log(base.std_mg_dl).detach()
    gain = torch.ones(horizon, requires_grad=True)
    offset = torch.zeros(horizon, requires_grad=True)
    log_std = torch.zeros(horizon, requires_grad=True)
    optimiser = torch.optim.Adam([gain, offset, log_std], lr=learning_rate)
    # Offsets are fitted in units of 50 mg/dL so that all three parameters are O(1).
    prior_weight = ridge / len(windows)
    for _ in range(steps):
        optimiser.zero_grad()
        mean = gain * change + 50.0 * offset
        log_sd = log_base_std + log_std
        nll = log_sd + 0.5 * ((target_change - mean) / torch.exp(log_sd)) ** 2
        prior = ((gain - 1.0) ** 2 + offset**2 + log_std**2).sum()
        loss: Any = nll.mean() + prior_weight * prior + 0.5 * math.log(2 * math.pi)
        loss.backward()
        optimiser.step()
    return PersonalHead(
        gain=gain.detach().clone(),
        offset_mg_dl=50.0 * offset.detach().clone(),
        log_std=log_std.detach().clone(),
    )
