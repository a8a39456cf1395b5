"""Persistence and linear AR baselines: closed-form fits, causality, the twin's interface."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.twins import ForecastWindows, all_windows
from fedtwin.twins.baselines import LinearArForecaster, PersistenceForecaster

HISTORY, HORIZON = 16, 6


def _arx_series(
    patients: int, steps: int, seed: int, noise_mg_dl: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CGM from a known linear ARX recursion: momentum, carbohydrate up, insulin down."""
    generator = torch.Generator().manual_seed(seed)
    carbs = (torch.rand(patients, steps, generator=generator) < 0.05) * 30.0
    insulin = torch.rand(patients, steps, generator=generator) * 0.5
    cgm = torch.full((patients, steps), 140.0, dtype=torch.float64)
    for t in range(2, steps):
        cgm[:, t] = (
            cgm[:, t - 1]
            + 0.7 * (cgm[:, t - 1] - cgm[:, t - 2])
            + 0.4 * carbs[:, t - 1]
            - 6.0 * insulin[:, t - 1]
            + 2.0
        )
    cgm = cgm + noise_mg_dl * torch.randn(patients, steps, generator=generator, dtype=torch.float64)
    return cgm.float(), insulin.float(), carbs.float()


def _windows(seed: int, noise_mg_dl: float = 0.0) -> ForecastWindows:
    cgm, insulin, carbs = _arx_series(8, 200, seed, noise_mg_dl)
    return all_windows(cgm, insulin, carbs, HISTORY, HORIZON, stride=2)


def test_persistence_holds_the_last_reading_with_the_rms_change_as_spread() -> None:
    cgm = 100.0 + torch.arange(40.0).repeat(3, 1)  # +1 mg/dL per step
    windows = all_windows(cgm, torch.zeros_like(cgm), torch.zeros_like(cgm), HISTORY, HORIZON)
    model = PersistenceForecaster.fit(windows)
    forecast = model.forecast(windows.history, windows.plan)
    assert torch.equal(forecast.mean_mg_dl, windows.last_cgm_mg_dl.unsqueeze(1).expand(-1, 6))
    assert torch.allclose(model.std_mg_dl, torch.arange(1.0, HORIZON + 1))


def test_ar_recovers_a_linear_arx_system_exactly() -> None:
    model = LinearArForecaster.fit(_windows(seed=0), lags=4, ridge=1e-9)
    fresh = _windows(seed=1)
    forecast = model.forecast(fresh.history, fresh.plan)
    assert torch.allclose(forecast.mean_mg_dl, fresh.target_mg_dl, atol=0.05)
    assert float(model.std_mg_dl.max()) < 0.05


def test_ar_spread_matches_its_residuals_on_noisy_data() -> None:
    train = _windows(seed=0, noise_mg_dl=3.0)
    model = LinearArForecaster.fit(train, lags=4)
    forecast = model.forecast(train.history, train.plan)
    residual_rms = (forecast.mean_mg_dl - train.target_mg_dl).pow(2).mean(dim=0).sqrt()
    assert torch.allclose(model.std_mg_dl, residual_rms, rtol=1e-3)
    persistence = PersistenceForecaster.fit(train)
    assert bool((model.std_mg_dl < persistence.std_mg_dl).all())


@settings(max_examples=15, deadline=None)
@given(st.integers(0, HORIZON - 1), st.floats(1.0, 80.0))
def test_ar_forecast_ignores_planned_treatment_after_each_step(
    bin_index: int, grams: float
) -> None:
    windows = _windows(seed=2, noise_mg_dl=2.0)
    model = LinearArForecaster.fit(windows, lags=4)
    changed_plan = windows.plan.clone()
    changed_plan[:, 1, bin_index] += grams
    changed_plan[:, 0, bin_index] += 1.0
    before = model.forecast(windows.history, windows.plan).mean_mg_dl
    after = model.forecast(windows.history, changed_plan).mean_mg_dl
    # Step s forecasts cgm[t+s+1], which planned bin t+j can only affect when j <= s.
    assert torch.equal(before[:, :bin_index], after[:, :bin_index])
    assert not torch.equal(before[:, bin_index:], after[:, bin_index:])


def test_baselines_return_the_twin_forecast_shape() -> None:
    windows = _windows(seed=3, noise_mg_dl=1.0)
    for model in (PersistenceForecaster.fit(windows), LinearArForecaster.fit(windows, lags=8)):
        forecast = model.forecast(windows.history[:5], windows.plan[:5])
        assert forecast.mean_mg_dl.shape == forecast.std_mg_dl.shape == (5, HORIZON)
        assert bool((forecast.std_mg_dl > 0).all())


def test_ar_refuses_more_lags_than_history_and_empty_training_data() -> None:
    windows = _windows(seed=4)
    with pytest.raises(ValueError, match="shorter than"):
        LinearArForecaster.fit(windows, lags=HISTORY + 1)
    empty = ForecastWindows(windows.history[:0], windows.plan[:0], windows.target_mg_dl[:0])
    with pytest.raises(ValueError, match="non-empty"):
        PersistenceForecaster.fit(empty)
