"""Evaluation report: known-answer scores per group, per-site forecasters, rendering."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from rich.console import Console

from fedtwin.twins import GlucoseForecast, PatientBatch
from fedtwin.twins.evaluation import (
    EvaluationResult,
    GroupKind,
    SiteWindows,
    age_group_label,
    evaluate_forecasters,
    evaluation_html,
    evaluation_table,
    reported_horizons,
)

HISTORY, HORIZON = 12, 12


@dataclass(frozen=True)
class _Ramp:
    """Knows the series rises 1 mg/dL per step; adds ``offset`` to its forecast."""

    offset: float = 0.0
    std: float = 4.0

    def forecast(self, history: torch.Tensor, plan: torch.Tensor) -> GlucoseForecast:
        steps = torch.arange(1, plan.shape[-1] + 1, dtype=torch.float32)
        mean = history[:, 0, -1:] + steps + self.offset
        return GlucoseForecast(mean_mg_dl=mean, std_mg_dl=torch.full_like(mean, self.std))


def _site(
    site_id: str, ages: list[str], sexes: list[str], base_mg_dl: float = 100.0
) -> SiteWindows:
    """Patients whose CGM rises 1 mg/dL per 5 min from ``base`` (one window per anchor)."""
    patients, steps = len(ages), 60
    cgm = base_mg_dl + torch.arange(float(steps)).repeat(patients, 1)
    zeros = torch.zeros_like(cgm)
    batch = PatientBatch.from_arrays(
        [f"{site_id}-p{i}" for i in range(patients)], cgm, zeros, zeros, None, None, 12, 12
    )
    return SiteWindows.from_batch(site_id, batch, ages, sexes, stride=1)


@pytest.fixture
def two_sites() -> list[SiteWindows]:
    return [
        _site("site-a", ["child"] * 3, ["female", "male", "female"]),
        _site("site-b", ["adult"] * 4, ["male", "female", "male", "female"]),
    ]


def test_constant_offset_gives_that_rmse_and_mae_at_every_horizon(
    two_sites: list[SiteWindows],
) -> None:
    result = evaluate_forecasters({"offset": _Ramp(5.0)}, two_sites)
    overall = result.scores("offset")
    assert result.horizons_min == (30, 60)
    assert overall.patients == 7
    for horizon in (30, 60):
        assert overall.at(horizon).rmse_mg_dl == pytest.approx(5.0)
        assert overall.at(horizon).mae_mg_dl == pytest.approx(5.0)
        assert overall.at(horizon).clarke_ab_pct == pytest.approx(100.0)


def test_each_site_is_scored_with_its_own_forecaster_only(two_sites: list[SiteWindows]) -> None:
    result = evaluate_forecasters(
        {"local": {"site-a": _Ramp(5.0), "site-b": _Ramp(10.0)}, "a-only": {"site-a": _Ramp()}},
        two_sites,
    )
    assert result.scores("local", GroupKind.SITE, "site-a").at(30).rmse_mg_dl == pytest.approx(5)
    assert result.scores("local", GroupKind.SITE, "site-b").at(30).rmse_mg_dl == pytest.approx(10)
    windows_a = result.scores("local", GroupKind.SITE, "site-a").windows
    windows_b = result.scores("local", GroupKind.SITE, "site-b").windows
    pooled = math.sqrt((25 * windows_a + 100 * windows_b) / (windows_a + windows_b))
    assert result.scores("local").at(30).rmse_mg_dl == pytest.approx(pooled)
    assert result.scores("local", GroupKind.AGE_GROUP, "child").at(60).rmse_mg_dl == (
        pytest.approx(5.0)
    )
    assert result.scores("a-only").patients == 3
    with pytest.raises(KeyError):
        result.scores("a-only", GroupKind.SITE, "site-b")


def test_sex_groups_mix_sites_and_keep_their_own_windows(two_sites: list[SiteWindows]) -> None:
    result = evaluate_forecasters(
        {"local": {"site-a": _Ramp(5.0), "site-b": _Ramp(10.0)}}, two_sites
    )
    female = result.scores("local", GroupKind.SEX, "female")
    assert female.patients == 4  # two at each site
    assert female.at(30).rmse_mg_dl == pytest.approx(math.sqrt((25 + 100) / 2))


def test_forecast_out_of_range_counts_as_full_time_in_range_error(
    two_sites: list[SiteWindows],
) -> None:
    # Readings stay in 100-171 mg/dL (in range); +100 mg/dL puts every forecast above 180.
    result = evaluate_forecasters({"exact": _Ramp(), "high": _Ramp(100.0)}, two_sites)
    assert result.scores("exact").tir_error_pct == pytest.approx(0.0)
    assert result.scores("high").tir_error_pct == pytest.approx(100.0)


@pytest.mark.parametrize(("std", "coverage"), [(4.0, 100.0), (2.0, 0.0)])
def test_coverage_counts_readings_inside_the_90_percent_band(
    two_sites: list[SiteWindows], std: float, coverage: float
) -> None:
    # |error| = 5 mg/dL; the band is ±1.645 σ: 6.6 with σ = 4, 3.3 with σ = 2.
    result = evaluate_forecasters({"ramp": _Ramp(5.0, std)}, two_sites)
    assert result.scores("ramp").coverage90_pct == pytest.approx(coverage)


def test_groups_below_the_minimum_patient_count_are_not_reported(
    two_sites: list[SiteWindows],
) -> None:
    result = evaluate_forecasters({"ramp": _Ramp()}, two_sites, min_patients=4)
    reported = {(row.kind, row.group) for row in result.groups}
    assert (GroupKind.SITE, "site-b") in reported
    assert (GroupKind.SITE, "site-a") not in reported  # 3 patients
    assert (GroupKind.AGE_GROUP, "child") not in reported


def test_bias_summary_names_the_worst_site(two_sites: list[SiteWindows]) -> None:
    result = evaluate_forecasters(
        {"local": {"site-a": _Ramp(5.0), "site-b": _Ramp(10.0)}}, two_sites
    )
    (by_site,) = [b for b in result.bias() if b["kind"] == "site"]
    assert (by_site["worst_group"], by_site["best_group"]) == ("site-b", "site-a")
    assert by_site["rmse_gap_mg_dl"] == pytest.approx(5.0)


def test_reported_horizons_follow_the_model_horizon() -> None:
    assert reported_horizons(12) == (30, 60)
    assert reported_horizons(24) == (30, 60, 120)
    assert reported_horizons(4) == (20,)


@pytest.mark.parametrize(
    ("age", "label"),
    [(6.0, "child"), (12.9, "child"), (13.0, "adolescent"), (19.99, "adolescent"), (20, "adult")],
)
def test_age_groups_use_the_cohort_bands(age: float, label: str) -> None:
    assert age_group_label(age) == label
    assert age_group_label(None) == "unknown"


def test_json_document_round_trips_and_html_escapes_names(two_sites: list[SiteWindows]) -> None:
    result = evaluate_forecasters({"<b>ramp</b>": _Ramp(5.0)}, two_sites)
    document = json.loads(json.dumps(result.document()))
    bias = document.pop("bias")
    assert EvaluationResult.model_validate(document) == result
    assert {b["kind"] for b in bias} == {"site", "age_group", "sex"}
    fragment = evaluation_html(result)
    assert "<b>ramp</b>" not in fragment and "&lt;b&gt;ramp&lt;/b&gt;" in fragment
    assert fragment.startswith("<section") and fragment.endswith("</section>")


def test_table_has_one_row_per_forecaster_and_group(two_sites: list[SiteWindows]) -> None:
    result = evaluate_forecasters({"exact": _Ramp(), "offset": _Ramp(5.0)}, two_sites)
    console = Console(width=250, record=True)
    console.print(evaluation_table(result))
    text = console.export_text()
    # overall, 2 sites, 2 age groups, 2 sexes: 7 groups x 2 forecasters
    assert len(result.groups) == 14
    assert text.count("offset") == 7
    assert "site=site-b" in text and "RMSE 60" in text
