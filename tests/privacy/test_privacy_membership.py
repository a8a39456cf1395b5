import math
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedtwin.cohorts import CohortSeries
from fedtwin.privacy.membership import (
    dp_tpr_bound,
    lira_offline_attack,
    loss_threshold_attack,
    roc_summary,
)
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig, PatientBatch, all_windows
from fedtwin.twins.training import PatientWindowDataset, train_non_private

TWIN = GlucoseTwinConfig(history_steps=24, horizon_steps=6, channels=48, dilations=(1, 2, 4))
#: Short records (5 h) so that a few patients are easy to memorise.
STEPS = 60


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models: one intra-op thread is several times faster than two contending ones.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _patients(cohort: CohortSeries, rows: range) -> list:
    return [
        all_windows(
            cohort.cgm_mg_dl[r : r + 1, :STEPS],
            cohort.insulin_u[r : r + 1, :STEPS],
            cohort.carbs_g[r : r + 1, :STEPS],
            TWIN.history_steps,
            TWIN.horizon_steps,
            stride=2,
        )
        for r in rows
    ]


def _overfit(
    cohort_batch: Callable[..., PatientBatch],
    cohort: CohortSeries,
    rows: list[int],
    steps: int,
    seed: int,
) -> GlucoseTwin:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = GlucoseTwin(TWIN)
    index = torch.tensor(rows)
    dataset = PatientWindowDataset(
        cohort_batch(cohort, index.tolist(), TWIN, steps=STEPS), generator, windows_per_patient=8
    )
    train_non_private(model, dataset, steps, len(rows), 1e-2, generator)
    return model


def test_perfectly_separated_scores_give_auc_one_and_full_power() -> None:
    result = roc_summary("x", torch.arange(100.0, 200.0), torch.arange(0.0, 100.0))
    assert result.auc == 1.0
    assert result.tpr_at_fpr[0.01] == 1.0
    assert result.tpr_at_fpr[0.001] is None  # 100 non-members cannot measure FPR 0.1 %


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=20, max_size=200), st.integers(0, 1000))
def test_auc_is_one_half_when_members_and_non_members_are_exchangeable(
    scores: list[float], seed: int
) -> None:
    values = torch.tensor(scores, dtype=torch.float64)
    result = roc_summary("x", values, values.clone())
    assert result.auc == pytest.approx(0.5)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 10), st.floats(1e-9, 1e-3), st.floats(1e-4, 0.5))
def test_dp_bound_is_exp_epsilon_fpr_plus_delta_capped_at_one(
    epsilon: float, delta: float, fpr: float
) -> None:
    assert dp_tpr_bound(epsilon, delta, fpr) == pytest.approx(
        min(1.0, math.exp(epsilon) * fpr + delta)
    )


@pytest.mark.slow
def test_loss_attack_finds_members_of_an_overfitted_twin_but_not_of_an_untrained_one(
    adult_cohort: CohortSeries,
    cohort_batch: Callable[..., PatientBatch],
) -> None:
    members, non_members = [0, 8, 16, 24], range(40, 80)
    overfitted = _overfit(cohort_batch, adult_cohort, members, steps=300, seed=0)
    strong = loss_threshold_attack(
        overfitted, _patients(adult_cohort, members), _patients(adult_cohort, non_members)
    )
    untrained = loss_threshold_attack(
        GlucoseTwin(TWIN), _patients(adult_cohort, members), _patients(adult_cohort, non_members)
    )
    assert strong.auc > 0.9
    assert untrained.auc < strong.auc - 0.2


@pytest.mark.slow
def test_offline_lira_ranks_members_above_non_members_with_shadow_models(
    adult_cohort: CohortSeries,
    cohort_batch: Callable[..., PatientBatch],
) -> None:
    member_rows, non_member_rows = [0, 8, 16, 24], [41, 49, 57, 65, 73, 42]
    pool_rows = member_rows + non_member_rows
    target = _overfit(cohort_batch, adult_cohort, member_rows, steps=300, seed=0)

    def shadow(indices: list[int], generator: torch.Generator) -> GlucoseTwin:
        seed = int(torch.randint(10_000, (1,), generator=generator))
        return _overfit(
            cohort_batch, adult_cohort, [pool_rows[i] for i in indices], steps=300, seed=seed
        )

    result = lira_offline_attack(
        target,
        _patients(adult_cohort, member_rows),
        _patients(adult_cohort, non_member_rows),
        shadow,
        shadows=4,
        seed=1,
    )
    assert result.members == 4 and result.non_members == 6
    assert result.auc > 0.8, result
