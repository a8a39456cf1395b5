"""simulate_cohort determinism, plausibility and the safetensors format of CohortSeries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedtwin.cohorts import CohortSeries, HypoTreatment, simulate_cohort
from fedtwin.errors import ConfigError, IngestError

NAMES = ("adolescent#002", "child#004", "adult#007", "adult#007")


@pytest.fixture(scope="module")
def series() -> CohortSeries:
    return simulate_cohort(NAMES, 1.0, seed=11, start_minute_of_day=360)


def test_shapes_dtypes_and_units(series: CohortSeries) -> None:
    assert series.patient_names == NAMES and series.step_min == 5 and series.n_steps == 288
    for t in (series.cgm_mg_dl, series.bg_true_mg_dl, series.insulin_u, series.carbs_g):
        assert t.shape == (4, 288) and t.dtype == torch.float32
    assert float(series.cgm_mg_dl.min()) >= 39.0 and float(series.cgm_mg_dl.max()) <= 600.0
    daily_insulin = series.insulin_u.sum(dim=1)
    assert bool(((daily_insulin > 5.0) & (daily_insulin < 150.0)).all())
    assert bool((series.carbs_g.sum(dim=1) > 50.0).all())
    assert float(series.carbs_g.max()) <= 25.0 + 1e-4  # 5 g/min for 5 minutes
    residual = series.cgm_mg_dl - series.bg_true_mg_dl
    assert 2.0 < float(residual.std()) < 20.0
    bg = series.bg_true_mg_dl
    assert float(bg.min()) > 30.0 and float(bg.max()) < 450.0


def test_same_seed_same_cohort_other_seed_differs(series: CohortSeries) -> None:
    again = simulate_cohort(NAMES, 1.0, seed=11, start_minute_of_day=360)
    for name in ("cgm_mg_dl", "bg_true_mg_dl", "insulin_u", "carbs_g"):
        assert torch.equal(getattr(series, name), getattr(again, name))
    other = simulate_cohort(NAMES, 1.0, seed=12, start_minute_of_day=360)
    assert not torch.equal(series.bg_true_mg_dl, other.bg_true_mg_dl)
    assert not torch.equal(series.cgm_mg_dl, other.cgm_mg_dl)


def test_physiological_twins_differ(series: CohortSeries) -> None:
    assert not torch.equal(series.bg_true_mg_dl[2], series.bg_true_mg_dl[3])


def test_progress_and_hypo_switch() -> None:
    seen: list[float] = []
    short = simulate_cohort(["child#001"], 0.25, seed=0, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 6
    off = simulate_cohort(["child#001"], 0.25, seed=0, hypo_treatment=HypoTreatment.off())
    assert off.bg_true_mg_dl.shape == short.bg_true_mg_dl.shape


@pytest.mark.parametrize("days", [0.0, -1.0, 1.0 / 1440, float("nan")])
def test_bad_duration_raises(days: float) -> None:
    with pytest.raises(ConfigError):
        simulate_cohort(["adult#001"], days, seed=0)


def test_bad_seed_raises() -> None:
    with pytest.raises(ConfigError):
        simulate_cohort(["adult#001"], 1.0, seed=-1)


def test_save_load_roundtrip(series: CohortSeries, tmp_path: Path) -> None:
    path = tmp_path / "cohort.safetensors"
    series.save(path)
    loaded = CohortSeries.load(path)
    assert loaded.patient_names == series.patient_names
    assert loaded.step_min == 5 and loaded.start_minute_of_day == 360
    for name in ("cgm_mg_dl", "bg_true_mg_dl", "insulin_u", "carbs_g"):
        assert torch.equal(getattr(series, name), getattr(loaded, name))


def test_load_rejects_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(IngestError):
        CohortSeries.load(junk)
    with pytest.raises(IngestError):
        CohortSeries.load(tmp_path / "missing.safetensors")


def test_series_validates_shapes() -> None:
    ok = torch.zeros(2, 3)
    with pytest.raises(ConfigError):
        CohortSeries(("a",), ok, ok, ok, ok)
    with pytest.raises(ConfigError):
        CohortSeries(("a", "b"), ok, ok.double(), ok, ok)
