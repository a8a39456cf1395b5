"""Federated calibration: fold histograms from sites, scales and a cross-fitted check."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.federation.calibration import (
    FOLD_KEYS,
    calibrate_from_sites,
    calibration_fold,
    histogram_coverage,
    site_histograms,
)
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig, PatientBatch, batch_windows
from fedtwin.twins.calibration import (
    AbsZHistogram,
    CalibrationScales,
    abs_z_histogram,
    abs_z_histogram_of,
)

HORIZON = 6


def _fold_lists(
    true_std: float, predicted_std: float, windows: int, seed: int
) -> dict[str, list[int]]:
    """Fold histograms of a model predicting ``predicted_std`` for errors of ``true_std``."""
    generator = torch.Generator().manual_seed(seed)
    folds = {}
    for index, key in enumerate(FOLD_KEYS):
        errors = torch.randn(windows + index, HORIZON, generator=generator) * true_std
        mean = torch.zeros_like(errors)
        std = torch.full_like(errors, predicted_std)
        folds[key] = abs_z_histogram_of(mean, std, errors).to_list()
    return folds


def test_overconfident_sites_are_calibrated_to_ninety_percent_out_of_sample() -> None:
    per_site = {
        "site-a": _fold_lists(true_std=20.0, predicted_std=10.0, windows=800, seed=1),
        "site-b": _fold_lists(true_std=20.0, predicted_std=10.0, windows=600, seed=2),
    }
    scales, check = calibrate_from_sites(per_site, HORIZON)
    assert scales is not None and check["status"] == "calibrated"
    # A spread half the truth covers P(|Z| <= 1.645 / 2) ≈ 59 %; the cross-fit fixes it.
    assert 0.55 < check["coverage_uncalibrated"] < 0.63
    assert abs(check["coverage_calibrated"] - 0.90) <= 0.03
    assert all(1.8 < s < 2.2 for s in scales.std_scale)
    assert check["windows_per_fold"] == [1400, 1402]


def test_too_few_windows_give_no_calibration_and_say_why() -> None:
    per_site = {"site-a": _fold_lists(true_std=1.0, predicted_std=1.0, windows=4, seed=0)}
    scales, check = calibrate_from_sites(per_site, HORIZON)
    assert scales is None
    assert check["status"].startswith("not calibrated") and "too few" in check["status"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 50.0), min_size=1, max_size=200), st.floats(0.2, 5.0))
def test_histogram_coverage_never_exceeds_the_exact_coverage(
    values: list[float], scale: float
) -> None:
    abs_z = torch.tensor(values, dtype=torch.float64).unsqueeze(1)
    histogram = abs_z_histogram_of(torch.zeros_like(abs_z), torch.ones_like(abs_z), abs_z)
    scales = CalibrationScales(std_scale=(scale,), windows=1)
    exact = float((abs_z <= 1.6448536269514722 * scale).double().mean())
    (bound,) = histogram_coverage(histogram, scales)
    assert bound <= exact + 1e-12


def test_folds_are_keyed_stable_and_split_a_site_s_windows_between_them() -> None:
    secret = b"s" * 32
    ids = [f"patient-{i}" for i in range(400)]
    folds = [calibration_fold(secret, p) for p in ids]
    assert folds == [calibration_fold(secret, p) for p in ids]
    assert 150 < sum(folds) < 250
    assert folds != [calibration_fold(b"t" * 32, p) for p in ids]

    config = GlucoseTwinConfig(
        history_steps=16, horizon_steps=HORIZON, channels=8, dilations=(1, 2)
    )
    torch.manual_seed(0)
    model = GlucoseTwin(config)
    steps = 64
    n = 12
    cgm = 120 + 30 * torch.sin(
        torch.arange(steps).float() / 7 + torch.arange(n).float().unsqueeze(1)
    )
    batch = PatientBatch.from_arrays(
        ids[:n],
        cgm,
        torch.zeros(n, steps),
        torch.zeros(n, steps),
        torch.ones(n, steps, dtype=torch.bool),
        None,
        config.history_steps,
        config.horizon_steps,
    )
    replies = site_histograms(model, batch, secret, stride=2)
    counted = sum(AbsZHistogram.from_list(replies[k], HORIZON).windows for k in FOLD_KEYS)
    assert counted == len(batch_windows(batch, stride=2))
    # Each fold's histogram is exactly that of the fold's own patients scored on their own.
    for fold, key in enumerate(FOLD_KEYS):
        rows = [r for r, p in enumerate(batch.pseudonyms) if calibration_fold(secret, p) == fold]
        alone = abs_z_histogram(model, batch_windows(batch.select(rows), stride=2))
        assert AbsZHistogram.from_list(replies[key], HORIZON).counts.tolist() == (
            alone.counts.tolist()
        )
