"""The oncology twin: causality, balancing, accuracy against persistence, regimen ranking, input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedtwin.errors import ConfigError
from fedtwin.twins import (
    FactualCohort,
    OncologyProtocol,
    OncologyRegimen,
    OncologyTrainingConfig,
    OncologyTwin,
    OncologyTwinConfig,
    RegimenObjective,
    TumourSeries,
    compare_regimens,
    oncology_twin_predictor,
    one_step_counterfactual_rows,
    parse_regimens,
    score_oncology,
    simulate_tumour_cohort,
    sliding_treatment_counterfactual_rows,
    train_oncology_twin,
    tumour_persistence,
    validate_regimen_choice,
)
from fedtwin.twins.oncology import encoder_inputs
from fedtwin.twins.oncology_training import oncology_loss, origin_batch

SMALL = OncologyTwinConfig(horizon_days=4, treatment_lag_days=3, channels=8, hidden=16)
PROTOCOL = OncologyProtocol(gamma=4.0, days=30, projection_horizon=3, seed=3)


def _randomised(config: OncologyTwinConfig, seed: int) -> OncologyTwin:
    """A twin whose zero-initialised heads are randomised, so outputs depend on inputs."""
    torch.manual_seed(seed)
    twin = OncologyTwin(config)
    for head in (twin.growth, twin.response, twin.scale):
        torch.nn.init.normal_(head.weight, std=0.3)
    return twin.eval()


@pytest.fixture(scope="module")
def train_cohort() -> FactualCohort:
    return simulate_tumour_cohort(PROTOCOL, "train", 240)


@pytest.fixture(scope="module")
def test_cohort() -> FactualCohort:
    return simulate_tumour_cohort(PROTOCOL, "test", 60)


@pytest.fixture(scope="module")
def trained(train_cohort: FactualCohort) -> OncologyTwin:
    torch.manual_seed(0)
    twin = OncologyTwin(OncologyTwinConfig(horizon_days=4, channels=16, hidden=32))
    train_oncology_twin(
        twin,
        train_cohort.series,
        OncologyTrainingConfig(epochs=10, batch_patients=32),
        torch.Generator().manual_seed(0),
    )
    return twin


def test_state_and_forecast_at_day_t_ignore_everything_after_t(
    test_cohort: FactualCohort,
) -> None:
    twin = _randomised(SMALL, seed=1)
    series, t = test_cohort.series.take(range(8)), 12
    changed = TumourSeries(
        torch.where(torch.arange(series.days) > t, 3.0 * series.volume_cm3, series.volume_cm3),
        torch.where(torch.arange(series.days) >= t, ~series.chemo, series.chemo),
        torch.where(torch.arange(series.days) >= t, ~series.radio, series.radio),
        series.patient_type,
    )
    with torch.no_grad():
        before = twin.encode(encoder_inputs(series))
        after = twin.encode(encoder_inputs(changed))
    assert torch.equal(before[..., : t + 1], after[..., : t + 1])
    assert not torch.allclose(before[..., t + 1 :], after[..., t + 1 :])
    plan = torch.zeros(8, 4, dtype=torch.bool)
    late = plan.clone()
    late[:, 2:] = True  # plan days 2 and 3 change only days t+3 and t+4
    base = twin.forecast(series.until(t), plan, plan)
    moved = twin.forecast(changed.until(t), late, late)
    assert torch.equal(base.mean_log[:, :2], moved.mean_log[:, :2])
    assert not torch.allclose(base.mean_log[:, 2:], moved.mean_log[:, 2:])


def test_forecast_shapes_and_uncertainty_growing_with_the_horizon(
    test_cohort: FactualCohort,
) -> None:
    twin = _randomised(SMALL, seed=2)
    history = test_cohort.series.take(range(5)).until(10)
    for days in (1, 4, 11):  # shorter than, equal to and longer than the horizon (rolled)
        plan = torch.zeros(5, days, dtype=torch.bool)
        forecast = twin.forecast(history, plan, plan)
        assert forecast.mean_log.shape == (5, days) == forecast.std_log.shape
        assert bool((forecast.std_log.diff(dim=1) > 0).all())
        low, high = forecast.quantile_cm3(0.05), forecast.quantile_cm3(0.95)
        assert bool((low < forecast.volume_cm3).all() and (forecast.volume_cm3 < high).all())


def test_gradient_reversal_flips_and_scales_the_treatment_heads_gradient(
    train_cohort: FactualCohort,
) -> None:
    twin = _randomised(SMALL, seed=3).train()
    batch = origin_batch(train_cohort.series.take(range(6)), SMALL)

    def encoder_grad(scale: float) -> torch.Tensor:
        twin.zero_grad()
        twin.reversal_scale = scale
        _, logits = twin(batch.inputs, batch.windows, batch.origins)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.treated).backward()
        assert twin.input.weight.grad is not None
        return twin.input.weight.grad.clone()

    plain, reversed_half = encoder_grad(-1.0), encoder_grad(0.5)
    assert float(plain.abs().sum()) > 0
    assert torch.allclose(reversed_half, -0.5 * plain, atol=1e-6)
    assert float(encoder_grad(0.0).abs().sum()) == 0.0


def test_per_patient_losses_average_to_the_batch_loss(train_cohort: FactualCohort) -> None:
    twin = _randomised(SMALL, seed=4)
    batch = origin_batch(train_cohort.series.take(range(7)), SMALL)
    raw, logits = twin(batch.inputs, batch.windows, batch.origins)
    per_patient = oncology_loss(raw, logits, batch, reduction="none", volume_weight=0.5)
    assert per_patient.shape == (7,)
    total = oncology_loss(raw, logits, batch, volume_weight=0.5)
    assert torch.allclose(per_patient.mean(), total)


def test_protocol_replay_of_the_factual_treatment_reproduces_the_factual_volume(
    test_cohort: FactualCohort,
) -> None:
    rows = one_step_counterfactual_rows(test_cohort)
    factual = test_cohort.series.volume_cm3[rows.patient, rows.origin + 1]
    mine = rows.factual
    assert int(mine.sum()) * 4 == rows.patient.numel()
    assert torch.equal(rows.target_cm3[mine, 0], factual[mine])
    sliding = sliding_treatment_counterfactual_rows(test_cohort, 3)
    first = test_cohort.series.volume_cm3[sliding.patient, sliding.origin + 1]
    assert sliding.chemo.shape[1] == 4
    assert torch.equal(sliding.target_cm3[:, 0], first)


@pytest.mark.slow
def test_twin_beats_persistence_on_a_small_cohort(
    trained: OncologyTwin, test_cohort: FactualCohort
) -> None:
    one = one_step_counterfactual_rows(test_cohort)
    sliding = sliding_treatment_counterfactual_rows(test_cohort, 3)
    twin = score_oncology(oncology_twin_predictor(trained), test_cohort.series, one, sliding)
    last = score_oncology(tumour_persistence, test_cohort.series, one, sliding)
    assert twin.one_step_factual_pct < 0.8 * last.one_step_factual_pct
    assert twin.one_step_counterfactual_pct < 0.8 * last.one_step_counterfactual_pct
    assert twin.tau_step_counterfactual_pct[-1] < last.tau_step_counterfactual_pct[-1]


@pytest.mark.slow
def test_ranking_picks_the_truly_best_regimen_in_a_clear_cut_case(
    trained: OncologyTwin, test_cohort: FactualCohort
) -> None:
    regimens = [
        OncologyRegimen.weekly("none", 10),
        OncologyRegimen.weekly("intensive", 10, chemo_every_days=1, radio_fractions_per_week=5),
    ]
    burden_only = RegimenObjective(chemo_dose_weight=0.0, radio_gy_weight=0.0)
    check = validate_regimen_choice(trained, test_cohort, regimens, burden_only, origin_day=10)
    assert check.patients > 40
    assert check.truly_best_fraction >= 0.95
    alive = int(torch.nonzero(test_cohort.checkpoints[11].active).flatten()[0])
    ranked = trained.compare(test_cohort.series.take([alive]).until(10), regimens, burden_only)
    assert [r.name for r in ranked] == ["intensive", "none"]
    assert [r.rank for r in ranked] == [1, 2]
    best = ranked[0]
    assert best.objective_low <= best.objective <= best.objective_high
    assert best.chemo_doses == 10 and best.radio_gy == 2.0 * 8


@pytest.mark.parametrize(
    ("regimens", "expected"),
    [
        ([{"name": "a", "chemo": [True], "radio": [False], "dose_mg": 5}], "dose_mg: unknown"),
        ([{"name": "a", "chemo": [True, False], "radio": [False]}], "radio has 1"),
        (
            [
                {"name": "a", "chemo": [True], "radio": [False]},
                {"name": "b", "chemo": [True, True], "radio": [False, False]},
            ],
            "'a' has 1, 'b' has 2",
        ),
        ([{"name": "a", "chemo": [1], "radio": [0]}] * 2, "'a' repeats"),
        ([{"name": "a", "chemo": "yes", "radio": [False]}], "regimen 0 ('a'): chemo"),
        ([], "non-empty"),
    ],
)
def test_bad_regimens_raise_one_clear_line(
    regimens: list[dict[str, object]], expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_regimens(regimens)
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


def test_weekly_regimen_rejects_impossible_schedules() -> None:
    with pytest.raises(ConfigError, match="chemo_every_days"):
        OncologyRegimen.weekly("x", 7, chemo_every_days=0)
    with pytest.raises(ConfigError, match="0-7 radio"):
        OncologyRegimen.weekly("x", 7, radio_fractions_per_week=8)
    weekly = OncologyRegimen.weekly("x", 9, chemo_every_days=7, radio_fractions_per_week=2)
    assert weekly.chemo == (True,) + (False,) * 6 + (True, False)
    assert weekly.radio == (True, True) + (False,) * 5 + (True, True)


def test_bad_histories_and_plans_raise_config_errors(test_cohort: FactualCohort) -> None:
    twin = _randomised(SMALL, seed=5)
    history = test_cohort.series.take([0]).until(5)
    plan = torch.zeros(1, 3, dtype=torch.bool)
    with pytest.raises(ConfigError, match="plan must be"):
        twin.forecast(history, torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 3).bool())
    with pytest.raises(ConfigError, match="both be"):
        twin.forecast(history, plan, torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="one patient"):
        compare_regimens(
            twin, test_cohort.series.take([0, 1]).until(5), [OncologyRegimen.weekly("none", 3)]
        )
    with pytest.raises(ConfigError, match="patient_type"):
        dataclasses.replace(history, patient_type=torch.tensor([4]))
    with pytest.raises(ConfigError, match="chemo has shape"):
        TumourSeries(history.volume_cm3, history.chemo[:, :-1], history.radio, history.patient_type)
    with pytest.raises(ConfigError, match="finite and >= 0"):
        TumourSeries(-history.volume_cm3, history.chemo, history.radio, history.patient_type)


@pytest.mark.slow
def test_opacus_per_patient_gradients_equal_each_patients_own_gradient(
    train_cohort: FactualCohort,
) -> None:
    from opacus import GradSampleModule

    twin = _randomised(SMALL, seed=6).train()
    twin.reversal_scale = 0.7
    batch = origin_batch(train_cohort.series.take(range(4)), SMALL)
    sampled = GradSampleModule(twin, loss_reduction="sum")
    raw, logits = sampled(batch.inputs, batch.windows, batch.origins)
    oncology_loss(raw, logits, batch, reduction="none", volume_weight=0.5).sum().backward()
    for patient in range(4):
        alone = OncologyTwin(SMALL)
        alone.load_state_dict(twin.state_dict())
        alone.reversal_scale = 0.7
        part = batch.take(torch.tensor([patient]))
        raw, logits = alone(part.inputs, part.windows, part.origins)
        oncology_loss(raw, logits, part, volume_weight=0.5).backward()
        for (name, shared), own in zip(twin.named_parameters(), alone.parameters(), strict=True):
            assert own.grad is not None
            per_sample = shared.grad_sample[patient]  # type: ignore[attr-defined]
            scale = float(own.grad.abs().max()) + 1e-6
            assert float((per_sample - own.grad).abs().max()) / scale < 1e-3, name
