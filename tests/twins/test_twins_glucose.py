from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedtwin.cohorts import CohortSeries
from fedtwin.twins import (
    GlucoseTwin,
    GlucoseTwinConfig,
    PatientBatch,
    all_windows,
    cut_windows,
    forecast_metrics,
)
from fedtwin.twins.glucose import normalise_history
from fedtwin.twins.training import PatientWindowDataset, train_non_private

CONFIG = GlucoseTwinConfig(history_steps=24, horizon_steps=12, channels=16, dilations=(1, 2, 4))


def _random_inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    history = torch.stack(
        [
            40 + 300 * torch.rand(batch, 24, generator=g),
            torch.rand(batch, 24, generator=g),
            30 * torch.rand(batch, 24, generator=g),
        ],
        dim=1,
    )
    plan = torch.stack(
        [5 * torch.rand(batch, 12, generator=g), 60 * torch.rand(batch, 12, generator=g)], dim=1
    )
    return history, plan


def test_forecast_has_one_mean_and_std_per_horizon_step() -> None:
    torch.manual_seed(0)
    model = GlucoseTwin(CONFIG)
    history, plan = _random_inputs(7, 0)
    forecast = model.forecast(history, plan)
    assert forecast.mean_mg_dl.shape == (7, 12)
    assert forecast.std_mg_dl.shape == (7, 12)
    assert model(history, plan).shape == (7, 2, 12)


def test_untrained_twin_predicts_persistence() -> None:
    model = GlucoseTwin(CONFIG)
    history, plan = _random_inputs(5, 1)
    forecast = model.forecast(history, plan)
    expected = history[:, 0, -1:].expand(-1, 12)
    assert torch.allclose(forecast.mean_mg_dl, expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_uncertainty_is_always_positive_and_finite(seed: int, scale: float) -> None:
    torch.manual_seed(seed)
    model = GlucoseTwin(CONFIG)
    for parameter in model.parameters():
        parameter.data.normal_(0, scale)
    history, plan = _random_inputs(4, seed)
    std = model.forecast(history, plan).std_mg_dl
    assert torch.isfinite(std).all()
    assert (std > 0).all()


def test_forecast_ignores_glucose_after_the_anchor() -> None:
    torch.manual_seed(0)
    model = GlucoseTwin(CONFIG)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.3)
    g = torch.Generator().manual_seed(2)
    cgm = 80 + 150 * torch.rand(1, 60, generator=g)
    insulin, carbs = torch.rand(1, 60, generator=g), 20 * torch.rand(1, 60, generator=g)
    anchor, patient = torch.tensor([30]), torch.tensor([0])
    base = cut_windows(cgm, insulin, carbs, patient, anchor, 24, 12)
    future_changed = cgm.clone()
    future_changed[:, 31:] = 400.0
    changed = cut_windows(future_changed, insulin, carbs, patient, anchor, 24, 12)
    before = model.forecast(base.history, base.plan).mean_mg_dl
    after = model.forecast(changed.history, changed.plan).mean_mg_dl
    assert torch.equal(before, after)
    assert not torch.equal(base.target_mg_dl, changed.target_mg_dl)


def test_encoder_is_causal_within_the_history() -> None:
    # Changing the oldest history step may change the output only through the receptive field,
    # and changing a step *after* position t never changes features at t.
    torch.manual_seed(0)
    model = GlucoseTwin(CONFIG)
    history, _ = _random_inputs(1, 3)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.3)
    normalised = normalise_history(history)
    features = model.input(normalised)
    truncated = model.input(normalised[:, :, :10])
    for block in model.blocks:
        features, truncated = block(features), block(truncated)
    assert torch.allclose(features[:, :, :10], truncated, atol=1e-6)


def test_history_shorter_than_the_receptive_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="receptive field"):
        GlucoseTwinConfig(history_steps=24, dilations=(1, 2, 4, 8))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), windows=st.integers(1, 5))
def test_windows_side_by_side_give_exactly_the_per_window_forecast(seed: int, windows: int) -> None:
    torch.manual_seed(seed)
    model = GlucoseTwin(CONFIG)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.3)
    history, plan = _random_inputs(3 * windows, seed)
    alone = model(history, plan)
    together = model(history.view(3, windows, 3, 24), plan.view(3, windows, 2, 12))
    assert together.shape == (3, windows, 2, 12)
    assert torch.allclose(together.reshape(3 * windows, 2, 12), alone, atol=1e-5)


def test_non_private_training_on_one_site_beats_persistence_at_30_min(
    adult_cohort: CohortSeries,
    cohort_batch: Callable[..., PatientBatch],
) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    test_rows = slice(64, 80)
    batch = cohort_batch(adult_cohort, range(0, 64), CONFIG)
    dataset = PatientWindowDataset(batch, generator, windows_per_patient=4)
    model = GlucoseTwin(CONFIG)
    train_non_private(
        model, dataset, steps=300, batch_size=32, learning_rate=3e-3, generator=generator
    )
    windows = all_windows(
        adult_cohort.cgm_mg_dl[test_rows],
        adult_cohort.insulin_u[test_rows],
        adult_cohort.carbs_g[test_rows],
        CONFIG.history_steps,
        CONFIG.horizon_steps,
        stride=3,
    )
    metrics = forecast_metrics(model, windows)
    assert metrics["rmse_30"] < 0.95 * metrics["persistence_rmse_30"]
    assert metrics["rmse_60"] < metrics["persistence_rmse_60"]


def test_horizons_up_to_120_minutes_are_supported() -> None:
    config = GlucoseTwinConfig(horizon_steps=24)
    assert config.horizon_min == 120
    model = GlucoseTwin(config)
    history = torch.full((2, 3, config.history_steps), 120.0)
    plan = torch.zeros(2, 2, 24)
    assert model.forecast(history, plan).mean_mg_dl.shape == (2, 24)
    with pytest.raises(ValueError):
        GlucoseTwinConfig(horizon_steps=25)
