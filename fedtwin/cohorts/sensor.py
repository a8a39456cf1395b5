"""Continuous glucose monitor (CGM) model: Johnson-SU noise with AR(1) memory.

Invariant: a :class:`CGMSensor` holds a noise sequence fixed at construction from its
``torch.Generator`` (so readings are deterministic given the seed and the true glucose), and
every reading it returns lies in ``[min_mg_dl, max_mg_dl]``. Noise follows simglucose's model:
a Gaussian AR(1) process ``e_k = PACF * (e_{k-1} + n_k)`` on a 15-minute grid, passed through
the Johnson-SU transform ``xi + lambda * sinh((e - gamma) / delta)``, then linearly
interpolated to the sensor's sample grid (simglucose interpolates cubically).

Lag: no extra blood-to-interstitium delay is added, because the model's glucose output is
already the subcutaneous compartment ``Gs`` (``dGs/dt = ksc (Gp - Gs)``, a first-order lag of
``1/ksc`` = 6.6-19.9 min behind plasma glucose in the 30 published subjects), which is also what
simglucose's sensors read. Calibration range: readings are clipped to ``[min_mg_dl,
max_mg_dl]`` (39-600 mg/dL for GuardianRT and Dexcom, 32-600 for Navigator). Signal loss is
drawn per patient by :class:`fedtwin.cohorts.SensorDropout` and shows as missing readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtwin.errors import ConfigError


@dataclass(frozen=True)
class SensorParams:
    """CGM noise and range parameters (defaults: simglucose's GuardianRT).

    Parameters
    ----------
    pacf : float, default 0.7
        Autocorrelation of the Gaussian noise between 15-minute grid points.
    gamma : float, default -0.5444
        Johnson-SU shape parameter gamma.
    lambda_mg_dl : float, default 15.9574
        Johnson-SU scale lambda, mg/dL.
    delta : float, default 1.6898
        Johnson-SU shape parameter delta.
    xi_mg_dl : float, default -5.47
        Johnson-SU location xi, mg/dL.
    sample_time_min : int, default 5
        Minutes between readings.
    noise_grid_min : int, default 15
        Minutes between points of the AR(1) noise process.
    min_mg_dl : float, default 39.0
        Lowest reading the sensor reports.
    max_mg_dl : float, default 600.0
        Highest reading the sensor reports.
    """

    pacf: float = 0.7
    gamma: float = -0.5444
    lambda_mg_dl: float = 15.9574
    delta: float = 1.6898
    xi_mg_dl: float = -5.47
    sample_time_min: int = 5
    noise_grid_min: int = 15
    min_mg_dl: float = 39.0
    max_mg_dl: float = 600.0

    def __post_init__(self) -> None:
        if not -1.0 < self.pacf < 1.0:
            raise ConfigError("pacf must be in (-1, 1)")
        if self.delta <= 0.0 or self.lambda_mg_dl <= 0.0:
            raise ConfigError("Johnson-SU delta and lambda must be positive")
        if self.sample_time_min < 1 or self.noise_grid_min < 1:
            raise ConfigError("sensor sample and noise grid times must be >= 1 minute")
        if not self.min_mg_dl < self.max_mg_dl:
            raise ConfigError("min_mg_dl must be below max_mg_dl")


def johnson_su_mg_dl(gaussian: Tensor, params: SensorParams) -> Tensor:
    """Map Gaussian noise to sensor error with the Johnson-SU transform.

    Parameters
    ----------
    gaussian : torch.Tensor
        Gaussian noise values.
    params : SensorParams
        Transform parameters.

    Returns
    -------
    torch.Tensor
        ``xi + lambda * sinh((gaussian - gamma) / delta)``, mg/dL, same shape.
    """
    return params.xi_mg_dl + params.lambda_mg_dl * torch.sinh(
        (gaussian - params.gamma) / params.delta
    )


def cgm_noise_mg_dl(
    batch_size: int,
    n_samples: int,
    generator: torch.Generator,
    params: SensorParams | None = None,
) -> Tensor:
    """Draw additive CGM errors on the sensor's sample grid.

    Parameters
    ----------
    batch_size : int
        Number of sensors ``B``.
    n_samples : int
        Number of readings ``N``; reading ``k`` is taken at minute ``k * sample_time_min``.
    generator : torch.Generator
        Source of randomness.
    params : SensorParams or None, optional
        Noise parameters; GuardianRT defaults if omitted.

    Returns
    -------
    torch.Tensor
        ``float64`` ``[B, N]`` errors in mg/dL.

    Raises
    ------
    ConfigError
        If ``batch_size`` or ``n_samples`` is not positive.
    """
    p = SensorParams() if params is None else params
    if batch_size < 1 or n_samples < 1:
        raise ConfigError("batch_size and n_samples must be positive")
    n_grid = noise_grid_points(n_samples, p)
    innovations = torch.randn(batch_size, n_grid, generator=generator, dtype=torch.float64)
    return noise_from_innovations(innovations, n_samples, p)


def noise_grid_points(n_samples: int, params: SensorParams) -> int:
    """Number of 15-minute noise-grid points that ``n_samples`` readings need.

    Parameters
    ----------
    n_samples : int
        Number of readings ``N``.
    params : SensorParams
        Sample time and noise grid.

    Returns
    -------
    int
        Grid points covering minutes ``0 … (N - 1) * sample_time_min`` plus one.
    """
    return math.floor((n_samples - 1) * params.sample_time_min / params.noise_grid_min) + 2


def noise_from_innovations(innovations: Tensor, n_samples: int, params: SensorParams) -> Tensor:
    """Turn standard-normal innovations on the noise grid into CGM errors on the sample grid.

    Parameters
    ----------
    innovations : torch.Tensor
        ``float64`` ``[B, G]`` with ``G >= noise_grid_points(n_samples, params)``; row ``b``
        may come from its own generator, so patients can be drawn independently.
    n_samples : int
        Number of readings ``N``.
    params : SensorParams
        Noise parameters.

    Returns
    -------
    torch.Tensor
        ``float64`` ``[B, N]`` errors in mg/dL.

    Raises
    ------
    ConfigError
        If there are too few innovations.
    """
    n_grid = noise_grid_points(n_samples, params)
    if innovations.dim() != 2 or innovations.shape[1] < n_grid:
        raise ConfigError(f"need innovations of shape [B, >= {n_grid}]")
    gaussian = torch.empty_like(innovations[:, :n_grid])
    gaussian[:, 0] = innovations[:, 0]
    for k in range(1, n_grid):
        gaussian[:, k] = params.pacf * (gaussian[:, k - 1] + innovations[:, k])
    grid_noise = johnson_su_mg_dl(gaussian, params)
    sample_minutes = torch.arange(n_samples, dtype=torch.float64) * params.sample_time_min
    position = sample_minutes / params.noise_grid_min
    left = torch.floor(position).to(torch.int64)
    frac = position - left
    return grid_noise[:, left] * (1.0 - frac) + grid_noise[:, left + 1] * frac


class CGMSensor:
    """A batch of CGM sensors with a pre-drawn noise sequence.

    Parameters
    ----------
    batch_size : int
        Number of sensors ``B``.
    n_samples : int
        Number of readings ``N`` the sensors can give.
    generator : torch.Generator
        Source of randomness (used only here, at construction).
    params : SensorParams or None, optional
        Sensor parameters; GuardianRT defaults if omitted.
    """

    def __init__(
        self,
        batch_size: int,
        n_samples: int,
        generator: torch.Generator,
        params: SensorParams | None = None,
    ) -> None:
        self._params = SensorParams() if params is None else params
        self._noise = cgm_noise_mg_dl(batch_size, n_samples, generator, self._params)

    @property
    def params(self) -> SensorParams:
        """Sensor parameters."""
        return self._params

    @property
    def noise_mg_dl(self) -> Tensor:
        """Pre-drawn additive errors, ``float64`` ``[B, N]`` (before clipping)."""
        return self._noise

    def read(self, bg_mg_dl: Tensor, sample_index: int) -> Tensor:
        """Return the reading of every sensor at one sample.

        Parameters
        ----------
        bg_mg_dl : torch.Tensor
            True (subcutaneous) glucose at the sample time, ``[B]``.
        sample_index : int
            Index ``k`` of the sample, ``0 <= k < N``.

        Returns
        -------
        torch.Tensor
            ``clip(bg + noise[:, k], min_mg_dl, max_mg_dl)``, ``float64`` ``[B]``.

        Raises
        ------
        ConfigError
            If ``sample_index`` is out of range.
        """
        if not 0 <= sample_index < self._noise.shape[1]:
            raise ConfigError(f"sample_index {sample_index} out of range")
        reading = bg_mg_dl.to(torch.float64) + self._noise[:, sample_index]
        return torch.clamp(reading, self._params.min_mg_dl, self._params.max_mg_dl)
