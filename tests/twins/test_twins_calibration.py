import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.errors import ConfigError
from fedtwin.twins import GlucoseForecast, GlucoseTwin, PatientBatch, batch_windows
from fedtwin.twins.calibration import (
    ABS_Z_BINS,
    AbsZHistogram,
    CalibrationScales,
    abs_z_histogram,
    abs_z_histogram_of,
    apply_calibration,
    combine_histograms,
    fit_calibration,
    gaussian_quantile,
    interval_coverage,
)

HORIZON = 6


def _miscalibrated(windows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A forecaster whose stated std is wrong by a factor 0.4 … 3 depending on the horizon,
    with heavy-tailed (Student-t, 4 dof) errors: its raw 90 % band is far off everywhere."""
    g = torch.Generator().manual_seed(seed)
    true_sd = torch.linspace(5.0, 30.0, HORIZON)
    stated_sd = true_sd * torch.tensor([0.4, 0.6, 1.0, 1.5, 2.2, 3.0])
    mean = 80.0 + 200.0 * torch.rand(windows, 1, generator=g).expand(-1, HORIZON)
    normal = torch.randn(windows, HORIZON, generator=g)
    chi2 = torch.randn(windows, HORIZON, 4, generator=g).square().sum(-1)
    student = normal / torch.sqrt(chi2 / 4.0) / math.sqrt(2.0)  # unit variance
    target = mean + true_sd * student
    return mean, stated_sd.expand(windows, -1).clone(), target


def test_calibrated_coverage_is_within_three_points_of_90_percent_on_fresh_data() -> None:
    mean, std, target = _miscalibrated(4000, seed=1)
    raw = interval_coverage(mean, std, target)
    assert (raw - 0.90).abs().max() > 0.15  # the raw band is badly off
    scales = fit_calibration(abs_z_histogram_of(mean, std, target))
    fresh_mean, fresh_std, fresh_target = _miscalibrated(20_000, seed=2)
    calibrated = apply_calibration(GlucoseForecast(fresh_mean, fresh_std), scales)
    coverage = interval_coverage(fresh_mean, calibrated.std_mg_dl, fresh_target)
    assert ((coverage - 0.90).abs() <= 0.03).all(), coverage


def test_calibration_leaves_the_mean_forecast_unchanged() -> None:
    mean, std, target = _miscalibrated(500, seed=3)
    scales = fit_calibration(abs_z_histogram_of(mean, std, target))
    assert torch.equal(apply_calibration(GlucoseForecast(mean, std), scales).mean_mg_dl, mean)


@settings(max_examples=20, deadline=None)
@given(split=st.integers(1, 399), seed=st.integers(0, 1000))
def test_site_histograms_add_up_to_the_pooled_histogram(split: int, seed: int) -> None:
    mean, std, target = _miscalibrated(400, seed=seed)
    site_a = abs_z_histogram_of(mean[:split], std[:split], target[:split])
    site_b = abs_z_histogram_of(mean[split:], std[split:], target[split:])
    pooled = abs_z_histogram_of(mean, std, target)
    assert torch.equal(combine_histograms([site_a, site_b]).counts, pooled.counts)
    assert fit_calibration(site_a + site_b) == fit_calibration(pooled)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(0.0, 50.0), min_size=20, max_size=200))
def test_histogram_quantile_never_undercuts_the_exact_conformal_quantile(
    values: list[float],
) -> None:
    abs_z = torch.tensor(values, dtype=torch.float64).unsqueeze(1)
    histogram = abs_z_histogram_of(torch.zeros_like(abs_z), torch.ones_like(abs_z), abs_z)
    scales = fit_calibration(histogram, coverage=0.9)
    rank = math.ceil((len(values) + 1) * 0.9)
    exact = sorted(values)[rank - 1]
    from_histogram = scales.std_scale[0] * gaussian_quantile(0.9)
    assert exact <= from_histogram <= exact * 1.015 + 0.01 + 1e-9


def test_histogram_round_trips_through_a_flat_metric_list() -> None:
    mean, std, target = _miscalibrated(300, seed=4)
    histogram = abs_z_histogram_of(mean, std, target)
    values = histogram.to_list()
    assert len(values) == HORIZON * ABS_Z_BINS
    assert torch.equal(AbsZHistogram.from_list(values, HORIZON).counts, histogram.counts)


def test_too_few_windows_for_the_quantile_are_refused() -> None:
    mean, std, target = _miscalibrated(5, seed=5)
    with pytest.raises(ConfigError, match="too few"):
        fit_calibration(abs_z_histogram_of(mean, std, target))


def test_histograms_of_different_horizons_cannot_be_added() -> None:
    mean, std, target = _miscalibrated(50, seed=6)
    short = abs_z_histogram_of(mean[:, :3], std[:, :3], target[:, :3])
    with pytest.raises(ConfigError, match="horizon"):
        combine_histograms([short, abs_z_histogram_of(mean, std, target)])


def test_scales_must_be_positive_and_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        CalibrationScales(std_scale=(1.0, math.inf), windows=10)
    with pytest.raises(ValueError):
        CalibrationScales(std_scale=(1.0,), windows=10, unknown=1)  # type: ignore[call-arg]


def test_trained_twin_is_calibrated_on_held_out_patients(
    trained_twin: GlucoseTwin, twin_patients: dict[str, PatientBatch]
) -> None:
    calibration = batch_windows(twin_patients["calibration"], stride=2)
    test = batch_windows(twin_patients["test"], stride=2)
    scales = fit_calibration(abs_z_histogram(trained_twin, calibration))
    with torch.no_grad():
        forecast = trained_twin.forecast(test.history, test.plan)
    calibrated = apply_calibration(forecast, scales)
    coverage = interval_coverage(forecast.mean_mg_dl, calibrated.std_mg_dl, test.target_mg_dl)
    assert abs(float(coverage.mean()) - 0.90) <= 0.03
    assert ((coverage - 0.90).abs() <= 0.05).all(), coverage
