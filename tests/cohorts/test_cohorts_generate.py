"""Generated consortia: site plans and splits, FHIR read-back against ground truth, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from safetensors.numpy import load_file

import fedtwin.cohorts.generate as generate_module
from fedtwin.cohorts import AgeGroup
from fedtwin.cohorts.generate import (
    OPT_OUT_MIX,
    CohortKind,
    GenerateConfig,
    Split,
    generate_cohort,
    plan_sites,
    t1d_site_spec,
)
from fedtwin.consent import Regime
from fedtwin.errors import ConfigError
from fedtwin.fhir import read_site

SECRET = b"k" * 32


def _config(**changes: object) -> GenerateConfig:
    values: dict[str, object] = {"kind": "t1d", "sites": 3, "patients": 10, "days": 1.0}
    return GenerateConfig.model_validate({**values, **changes})


def _truth(folder: Path) -> dict[str, np.ndarray]:
    index = json.loads((folder / "patients.json").read_text())
    shards = [load_file(str(folder / shard["file"])) for shard in index["shards"]]
    return {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}


def test_size_split_sizes_fall_with_rank_and_sum_to_the_total() -> None:
    sizes = [p.n_patients for p in plan_sites(_config(sites=4, patients=100, split="size"))]
    assert sum(sizes) == 400 and sizes == sorted(sizes, reverse=True) and sizes[0] > 2 * sizes[3]


def test_iid_sites_share_size_age_mix_and_habits() -> None:
    plans = plan_sites(_config())
    assert {p.n_patients for p in plans} == {10}
    assert all(p.age_mix == plans[0].age_mix and p.meal_profile == "regular" for p in plans)
    assert [p.site_id for p in plans] == ["site-01", "site-02", "site-03"]


def test_age_split_gives_each_site_a_different_dominant_group() -> None:
    plans = plan_sites(_config(split="age"))
    dominant = [max(p.age_mix, key=p.age_mix.__getitem__) for p in plans]
    assert dominant == [AgeGroup.CHILD, AgeGroup.ADOLESCENT, AgeGroup.ADULT]


def test_meals_split_gives_sites_different_meal_habits() -> None:
    config = _config(split="meals")
    specs = [t1d_site_spec(config, p) for p in plan_sites(config)]
    dinner = [next(m for m in s.scenario.meals if m.name == "dinner") for s in specs]
    assert dinner[1].time_mean_min > dinner[0].time_mean_min > dinner[2].time_mean_min
    assert dinner[1].carbs_mean_g > dinner[0].carbs_mean_g > dinner[2].carbs_mean_g
    missed = [s.scenario.behaviour.missed_bolus_probability for s in specs]
    assert len(set(missed)) == 3


def test_mixed_regime_alternates_opt_in_and_opt_out() -> None:
    plans = plan_sites(_config(consent_regime="mixed"))
    assert [p.regime for p in plans] == [Regime.OPT_IN, Regime.OPT_OUT, Regime.OPT_IN]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "oncology", "split": "meals"}, "split"),
        ({"kind": "oncology", "days": 2.5}, "days"),
        ({"days": 3 / 1440}, "days"),
        ({"patients": 0}, "patients"),
        ({"sites": 0}, "sites"),
        ({"days": 0.0}, "days"),
        ({"kind": "cardiology"}, "kind"),
    ],
)
def test_impossible_configs_are_rejected_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _config(**changes)
    assert caught.value.errors()[0]["loc"] == (field,)


def test_non_empty_out_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    config = _config(kind="oncology", sites=1, patients=1, days=2)
    with pytest.raises(ConfigError, match="--out"):
        generate_cohort(config, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "x"]


def test_a_failing_site_leaves_no_output_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = generate_module._generate_site
    calls: list[str] = []

    def second_site_fails(*args: object) -> generate_module.GeneratedSite:
        calls.append("site")
        if len(calls) == 2:
            raise ConfigError("simulated failure")
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(generate_module, "_generate_site", second_site_fails)
    config = _config(kind="oncology", sites=2, patients=2, days=3)
    with pytest.raises(ConfigError, match="simulated failure"):
        generate_cohort(config, tmp_path / "out")
    assert calls == ["site", "site"] and list(tmp_path.iterdir()) == []


def test_oncology_sites_read_back_exactly_as_their_ground_truth(tmp_path: Path) -> None:
    config = _config(kind="oncology", sites=2, patients=8, days=20, gamma=6.0, seed=3)
    generated = generate_cohort(config, tmp_path / "out")
    changed_by_treatment = 0
    for site in generated:
        folder = tmp_path / "out" / site.plan.site_id
        export = read_site(folder, secret=SECRET)
        truth = _truth(tmp_path / "out" / "ground_truth" / site.plan.site_id)
        assert export.report.rejected == 0 and export.report.patients_usable == 8
        assert {k: v.read for k, v in export.report.resources.items()} == site.counts
        for row, series in enumerate(export.oncology):
            assert series.patient_id == f"{site.plan.site_id}-{row:06d}"
            days = series.n_days
            expected = truth["volume_cm3"][row, :days].astype(np.float32)
            np.testing.assert_array_equal(series.tumour_volume_cm3[series.tumour_mask], expected)
            assert np.isnan(truth["volume_cm3"][row, days:]).all()
            given = series.chemo_mg > 0
            np.testing.assert_array_equal(series.chemo_mg[given], 5.0)
            untreated = truth["volume_untreated_cm3"][row]
            if not given.any() and not (series.radio_gy > 0).any():
                np.testing.assert_array_equal(untreated[:days], truth["volume_cm3"][row, :days])
            else:
                changed_by_treatment += not np.array_equal(
                    untreated[:days], truth["volume_cm3"][row, :days]
                )
    assert changed_by_treatment > 0


def test_oncology_export_is_the_same_whatever_the_batching(tmp_path: Path) -> None:
    files = {}
    for batch in (3, 50):
        config = _config(kind="oncology", sites=1, patients=7, days=10, batch_patients=batch)
        generate_cohort(config, tmp_path / f"b{batch}")
        site = tmp_path / f"b{batch}" / "site-01"
        files[batch] = {p.name: p.read_bytes() for p in sorted(site.iterdir())}
        truth = _truth(tmp_path / f"b{batch}" / "ground_truth" / "site-01")
        files[batch]["volume"] = truth["volume_untreated_cm3"].tobytes()
    assert files[3] == files[50]


@pytest.mark.slow
def test_t1d_site_cgm_follows_its_noise_free_ground_truth(tmp_path: Path) -> None:
    config = _config(sites=1, patients=3, days=0.5, consent_regime="opt-out", seed=11)
    (generated,) = generate_cohort(config, tmp_path / "out")
    export = read_site(tmp_path / "out" / "site-01", secret=SECRET)
    assert export.report.rejected == 0 and len(export.patients) == 3
    truth_dir = tmp_path / "out" / "ground_truth" / "site-01"
    bg_true = _truth(truth_dir)["bg_true_mg_dl"]
    for row, series in enumerate(export.patients):
        cgm = series.cgm_mg_dl[series.cgm_mask]
        assert 0.8 * bg_true.shape[1] <= cgm.size <= bg_true.shape[1]
        error = np.abs(series.cgm_mg_dl - bg_true[row, : series.cgm_mg_dl.size])
        assert np.nanmedian(error) < 25.0
    site = json.loads((truth_dir / "site.json").read_text())
    assert set(site["consent_scenarios"].values()) <= {s.value for s in OPT_OUT_MIX}
    assert site["resources"] == generated.counts and config.kind is CohortKind.T1D
    assert config.split is Split.IID
