"""Post-hoc calibration of the twin's predictive spread, combinable across sites.

The twin predicts a Gaussian per horizon step; trained with DP on few patients its standard
deviation is often too narrow or too wide. Split-conformal calibration fixes the 90 % band
without retraining: on held-out windows compute ``|z| = |target - mean| / std`` per horizon
step ``h``, take the conformal quantile ``q_h`` (the ``ceil((n + 1) · 0.90)``-th smallest of
``n`` values) and scale every later standard deviation by ``q_h / z_0.95``, so that
``mean ± z_0.95 · std · scale`` covers 90 % of exchangeable future windows (Vovk, Gammerman &
Shafer 2005; Lei et al., JASA 2018, for the split form).

Invariants:

* sufficient statistics only: a site reports an :class:`AbsZHistogram`, integer counts of
  ``|z|`` per horizon step on one fixed grid (:data:`ABS_Z_EDGES`, the same everywhere), so
  histograms of several sites add up to the histogram of their pooled windows and the
  coordinator never sees a window;
* conservative: the quantile read off the histogram is the *upper* edge of the bin that holds
  the exact order statistic, so the calibrated band is never narrower than the exact
  split-conformal band on the same windows (the grid's relative step is 1.5 %);
* a scale is fitted for one coverage level; :func:`apply_calibration` only rescales the
  standard deviation, so the mean forecast is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from fedtwin.errors import ConfigError
from fedtwin.twins.glucose import GlucoseForecast, GlucoseTwin
from fedtwin.twins.windows import ForecastWindows

#: Smallest positive edge and relative step of the ``|z|`` grid.
_Z_MIN, _Z_RATIO, _Z_BINS = 0.01, 1.015, 620
#: Fixed ``|z|`` bin edges: ``0`` then ``0.01 · 1.015^i`` (up to ≈ 101); one overflow bin after.
ABS_Z_EDGES: tuple[float, ...] = (0.0, *(_Z_MIN * _Z_RATIO**i for i in range(_Z_BINS)))
#: Bins per horizon step: one per interval between edges plus the overflow bin.
ABS_Z_BINS = len(ABS_Z_EDGES)
DEFAULT_COVERAGE = 0.90


def gaussian_quantile(coverage: float) -> float:
    """``z`` with ``P(|Z| <= z) = coverage`` for a standard normal ``Z`` (1.6449 for 0.90)."""
    return NormalDist().inv_cdf(0.5 + coverage / 2.0)


@dataclass(frozen=True, eq=False)
class AbsZHistogram:
    """Counts of ``|z|`` per horizon step on :data:`ABS_Z_EDGES`.

    Attributes
    ----------
    counts : Tensor
        int64 ``[H, ABS_Z_BINS]``; bin ``b < ABS_Z_BINS - 1`` holds
        ``ABS_Z_EDGES[b] <= |z| < ABS_Z_EDGES[b + 1]``, the last bin everything above.
    """

    counts: Tensor

    def __post_init__(self) -> None:
        if self.counts.dim() != 2 or int(self.counts.shape[1]) != ABS_Z_BINS:
            raise ConfigError(f"|z| histogram must have shape [H, {ABS_Z_BINS}]")
        if self.counts.dtype != torch.int64 or bool((self.counts < 0).any()):
            raise ConfigError("|z| histogram counts must be non-negative int64")

    @property
    def horizon_steps(self) -> int:
        """Horizon steps ``H`` covered."""
        return int(self.counts.shape[0])

    @property
    def windows(self) -> int:
        """Windows counted (the same at every horizon step)."""
        return int(self.counts[0].sum()) if self.horizon_steps else 0

    def __add__(self, other: AbsZHistogram) -> AbsZHistogram:
        if other.horizon_steps != self.horizon_steps:
            raise ConfigError(
                f"cannot add |z| histograms of {self.horizon_steps} and "
                f"{other.horizon_steps} horizon steps"
            )
        return AbsZHistogram(self.counts + other.counts)

    def to_list(self) -> list[int]:
        """Flat counts (row-major), e.g. for a Flower ``MetricRecord`` value."""
        return [int(c) for c in self.counts.flatten().tolist()]

    @classmethod
    def from_list(cls, values: Sequence[int], horizon_steps: int) -> AbsZHistogram:
        """Inverse of :meth:`to_list`."""
        if len(values) != horizon_steps * ABS_Z_BINS:
            raise ConfigError(
                f"|z| histogram needs {horizon_steps * ABS_Z_BINS} counts, got {len(values)}"
            )
        return cls(torch.tensor(list(values), dtype=torch.int64).view(horizon_steps, ABS_Z_BINS))


def combine_histograms(histograms: Iterable[AbsZHistogram]) -> AbsZHistogram:
    """Sum of several sites' histograms: the histogram of their pooled windows."""
    items = list(histograms)
    if not items:
        raise ConfigError("no |z| histograms to combine")
    total = items[0]
    for item in items[1:]:
        total = total + item
    return total


def abs_z_histogram_of(
    mean_mg_dl: Tensor, std_mg_dl: Tensor, target_mg_dl: Tensor
) -> AbsZHistogram:
    """Histogram of ``|target - mean| / std`` for ``[N, H]`` forecasts and targets."""
    abs_z = ((target_mg_dl - mean_mg_dl).abs() / std_mg_dl).double()
    edges = torch.tensor(ABS_Z_EDGES, dtype=torch.float64)
    # bucketize(right=True) - 1 gives the bin b with edges[b] <= |z| < edges[b + 1].
    bins = torch.bucketize(abs_z.T.contiguous(), edges, right=True) - 1
    horizon_steps = int(abs_z.shape[1])
    counts = torch.zeros(horizon_steps, ABS_Z_BINS, dtype=torch.int64)
    counts.scatter_add_(1, bins, torch.ones_like(bins))
    return AbsZHistogram(counts)


def abs_z_histogram(
    model: GlucoseTwin, windows: ForecastWindows, batch_size: int = 4096
) -> AbsZHistogram:
    """The ``|z|`` histogram of ``model`` on held-out ``windows`` (what a site reports)."""
    model.eval()
    total = AbsZHistogram(torch.zeros(model.config.horizon_steps, ABS_Z_BINS, dtype=torch.int64))
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            stop = start + batch_size
            forecast = model.forecast(windows.history[start:stop], windows.plan[start:stop])
            total = total + abs_z_histogram_of(
                forecast.mean_mg_dl, forecast.std_mg_dl, windows.target_mg_dl[start:stop]
            )
    return total


class CalibrationScales(BaseModel):
    """Per-horizon factors on the predicted standard deviation (model card key ``calibration``).

    Attributes
    ----------
    method : str
        ``"split-conformal-abs-z"``.
    coverage : float
        Central-interval coverage the scales were fitted for.
    std_scale : tuple[float, ...]
        Factor for horizon step ``h`` (5·(h+1) min), one per step of the model's horizon.
    windows : int
        Held-out windows behind the fit (summed over sites).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["split-conformal-abs-z"] = "split-conformal-abs-z"
    coverage: float = Field(DEFAULT_COVERAGE, gt=0.0, lt=1.0)
    std_scale: tuple[float, ...] = Field(min_length=1, max_length=288)
    windows: int = Field(ge=1)

    @model_validator(mode="after")
    def _finite_positive(self) -> CalibrationScales:
        if not all(math.isfinite(s) and s > 0.0 for s in self.std_scale):
            raise ValueError("std_scale factors must be finite and > 0")
        return self

    def scale_for(self, horizon_steps: int) -> Tensor:
        """The first ``horizon_steps`` factors as a float32 ``[horizon_steps]`` tensor."""
        if horizon_steps > len(self.std_scale):
            raise ConfigError(
                f"calibration covers {len(self.std_scale)} horizon steps, not {horizon_steps}"
            )
        return torch.tensor(self.std_scale[:horizon_steps], dtype=torch.float32)


def fit_calibration(
    histogram: AbsZHistogram, coverage: float = DEFAULT_COVERAGE
) -> CalibrationScales:
    """Split-conformal std factors from a (combined) ``|z|`` histogram.

    Raises
    ------
    ConfigError
        With fewer windows than the conformal quantile needs (``ceil((n+1)·coverage) > n``),
        or when the quantile lies beyond the grid (the model's spread is off by > 60×).
    """
    if not 0.0 < coverage < 1.0:
        raise ConfigError(f"coverage must be in (0, 1), got {coverage}")
    n = histogram.windows
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        raise ConfigError(
            f"{n} held-out windows are too few for a {coverage:.0%} conformal quantile"
        )
    cumulative = histogram.counts.cumsum(dim=1)
    # First bin whose cumulative count reaches the rank; its upper edge bounds the quantile.
    first_bin = (cumulative < rank).sum(dim=1)
    if int(first_bin.max()) >= ABS_Z_BINS - 1:
        raise ConfigError("the model's spread is too far off to calibrate (|z| beyond the grid)")
    upper_edges = torch.tensor(ABS_Z_EDGES, dtype=torch.float64)[first_bin + 1]
    scales = upper_edges / gaussian_quantile(coverage)
    return CalibrationScales(
        coverage=coverage, std_scale=tuple(float(s) for s in scales), windows=n
    )


def apply_calibration(forecast: GlucoseForecast, scales: CalibrationScales) -> GlucoseForecast:
    """The forecast with its standard deviation rescaled per horizon step (mean unchanged)."""
    horizon_steps = int(forecast.std_mg_dl.shape[-1])
    factor = scales.scale_for(horizon_steps).to(forecast.std_mg_dl.dtype)
    return GlucoseForecast(mean_mg_dl=forecast.mean_mg_dl, std_mg_dl=forecast.std_mg_dl * factor)


def interval_coverage(
    mean_mg_dl: Tensor, std_mg_dl: Tensor, target_mg_dl: Tensor, coverage: float = DEFAULT_COVERAGE
) -> Tensor:
    """Fraction of targets inside ``mean ± z · std`` per horizon step, ``[H]``."""
    z = gaussian_quantile(coverage)
    inside = (target_mg_dl - mean_mg_dl).abs() <= z * std_mg_dl
    return inside.float().mean(dim=0)
