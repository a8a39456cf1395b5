"""Site specs and the batched, memory-bounded site simulation."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from fedtwin.cohorts import (
    AgeGroup,
    SiteBatch,
    SiteSpec,
    simulate_site,
    site_age_groups,
    site_population,
)

SPEC = SiteSpec(
    site_id="site-test",
    n_patients=5,
    age_mix={AgeGroup.CHILD: 2.0, AgeGroup.ADULT: 3.0},
    population="published",
    days=0.25,
    start_minute_of_day=420,
    seed=4,
)


@pytest.fixture(scope="module")
def batches() -> list[SiteBatch]:
    return list(simulate_site(SPEC, batch_patients=2))


def test_age_mix_is_allocated_by_weight_and_shuffled_deterministically() -> None:
    spec = SPEC.model_copy(update={"n_patients": 101})
    groups = site_age_groups(spec)
    assert groups.count(AgeGroup.CHILD) == 40 and groups.count(AgeGroup.ADULT) == 61
    assert groups == site_age_groups(spec)
    assert groups != tuple(sorted(groups, key=lambda g: g.value))  # interleaved, not blocks


def test_batches_cover_every_patient_once_in_order(batches: list[SiteBatch]) -> None:
    index = torch.cat([b.patient_index for b in batches])
    assert index.tolist() == [0, 1, 2, 3, 4] and [b.params.batch_size for b in batches] == [2, 2, 1]
    assert batches[0].patient_ids == ("site-test-000000", "site-test-000001")
    names = [n for b in batches for n in b.params.names]
    groups = [n.split("#")[0] for n in names]
    assert groups == [g.value for g in site_age_groups(SPEC)]
    series = batches[0].series()
    assert series.n_steps == 72 and series.start_minute_of_day == 420


def test_a_patient_is_the_same_whatever_the_batching(batches: list[SiteBatch]) -> None:
    whole = next(iter(simulate_site(SPEC, batch_patients=5)))
    row = 3  # second row of the second batch of two
    part = batches[1]
    assert torch.equal(whole.params.initial_state[row], part.params.initial_state[1])
    mine = whole.scenario.meal_row == row
    assert torch.equal(
        whole.scenario.meal_g[mine], part.scenario.meal_g[part.scenario.meal_row == 1]
    )
    assert torch.allclose(whole.trajectory.bg_mg_dl[row], part.trajectory.bg_mg_dl[1], rtol=1e-12)


def test_progress_is_reported_up_to_one() -> None:
    seen: list[float] = []
    spec = SPEC.model_copy(update={"n_patients": 2, "days": 1 / 12})
    list(simulate_site(spec, batch_patients=1, progress=seen.append))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and len(seen) >= 2


def test_sampled_population_is_named_per_group() -> None:
    spec = SPEC.model_copy(update={"population": "sampled", "n_patients": 3})
    population = site_population(spec)
    assert all("#v" in name for name in population.names)
    assert population.batch_size == 3


@pytest.mark.parametrize(
    "update",
    [
        {"n_patients": 0},
        {"days": 0.0},
        {"days": 0.001},
        {"age_mix": {"child": 0.0}},
        {"site_id": "Site A"},
        {"unknown": 1},
    ],
)
def test_impossible_specs_are_rejected(update: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SiteSpec.model_validate({**SPEC.model_dump(), **update})


def test_export_helpers_are_consistent(batches: list[SiteBatch]) -> None:
    batch = batches[0]
    t = batch.trajectory
    basal = batch.basal_u_per_h * t.step_min / 60.0
    assert torch.allclose(basal + t.bolus_u, t.insulin_u) and bool((basal >= 0).all())
    assert batch.start.isoformat() == "2025-01-06T07:00:00+00:00"
    born = batch.birth_dates()
    assert born == batch.birth_dates()
    for date, age in zip(born, batch.params.age_years.tolist(), strict=True):
        assert int((SPEC.start_date - date).days // 365.25) in (
            int(age),
            int(age) - 1,
            int(age) + 1,
        )
