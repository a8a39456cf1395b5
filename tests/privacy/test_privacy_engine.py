import ast
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedtwin.cohorts import CohortSeries
from fedtwin.privacy import (
    AccountantKind,
    DpSgdConfig,
    MechanismSteps,
    epsilon_spent,
    train_private_round,
)
from fedtwin.privacy.engine import make_private_training
from fedtwin.twins import GlucoseTwin, GlucoseTwinConfig, PatientBatch, gaussian_nll
from fedtwin.twins.training import PatientWindowDataset, as_windows

TWIN = GlucoseTwinConfig(history_steps=24, horizon_steps=12, channels=8, dilations=(1, 2, 4))
PACKAGE = Path(__file__).resolve().parents[2] / "fedtwin"


def _dataset(
    cohort_batch: Callable[..., PatientBatch],
    cohort: CohortSeries,
    generator: torch.Generator,
    rows: int = 40,
    k: int = 3,
) -> PatientWindowDataset:
    return PatientWindowDataset(cohort_batch(cohort, range(rows), TWIN), generator, k)


def test_opacus_engine_is_attached_with_poisson_sampling_of_patients(
    cohort_batch: Callable[..., PatientBatch],
    adult_cohort: CohortSeries,
    generator: torch.Generator,
) -> None:
    dataset = _dataset(cohort_batch, adult_cohort, generator)
    private = make_private_training(
        GlucoseTwin(TWIN), dataset, 1.0, DpSgdConfig(expected_batch_patients=10), generator
    )
    try:
        assert isinstance(private.model, GradSampleModule)
        assert isinstance(private.optimizer, DPOptimizer)
        sampler = private.loader.batch_sampler
        assert isinstance(sampler, UniformWithReplacementSampler)
        # One Poisson draw per *patient*: the sampled population is the patients, not windows.
        assert sampler.num_samples == len(dataset) == 40
        assert sampler.sample_rate == 0.25
        assert private.optimizer.noise_multiplier == 1.0
    finally:
        private.model._close()


def test_each_dataset_item_is_k_windows_of_that_patient_only(
    cohort_batch: Callable[..., PatientBatch],
    adult_cohort: CohortSeries,
    generator: torch.Generator,
) -> None:
    dataset = _dataset(cohort_batch, adult_cohort, generator, k=4)
    history, plan, target = dataset[5]
    assert history.shape == (4, 3, 24) and plan.shape == (4, 2, 12) and target.shape == (4, 12)
    row = adult_cohort.cgm_mg_dl[5]
    for window in range(4):
        segment = history[window, 0]
        starts = [
            t
            for t in range(len(row) - 24 + 1)
            if torch.allclose(row[t : t + 24], segment, atol=1e-4)
        ]
        assert starts, "every window is a slice of this patient's own series"
    anchors = sorted(int(torch.nonzero(row == history[w, 0, -1])[0]) for w in range(4))
    assert len(set(anchors)) > 1, "windows are spread over the record"
    assert len(dataset) == 40


@settings(max_examples=20, deadline=None)
@given(
    clip=st.floats(0.01, 10.0),
    input_scale=st.floats(0.1, 50.0),
    seed=st.integers(0, 1000),
)
def test_per_patient_gradients_are_clipped_to_the_norm(
    clip: float, input_scale: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    cgm = 120 + input_scale * torch.randn(6, 60, generator=generator)
    insulin = torch.rand(6, 60, generator=generator) * input_scale
    carbs = torch.rand(6, 60, generator=generator) * input_scale
    batch = PatientBatch.from_arrays(
        [f"p{i}" for i in range(6)], cgm, insulin, carbs, None, None, 24, 12
    )
    dataset = PatientWindowDataset(batch, generator, windows_per_patient=3)
    torch.manual_seed(seed)
    model = GlucoseTwin(TWIN)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.2)
    config = DpSgdConfig(expected_batch_patients=6, max_grad_norm=clip)
    private = make_private_training(model, dataset, 1.0, config, generator)
    try:
        batch = as_windows(next(iter(private.loader)))
        if len(batch) == 0:
            return
        loss = gaussian_nll(private.model(batch.history, batch.plan), batch)
        loss.backward()
        per_sample = torch.cat(
            [p.grad_sample.reshape(len(batch), -1) for p in model.parameters()], dim=1
        )
        private.optimizer.clip_and_accumulate()
        summed = torch.cat([p.summed_grad.reshape(-1) for p in model.parameters()])
        raw_norms = per_sample.norm(dim=1)
        factors = (clip / (raw_norms + 1e-6)).clamp(max=1.0)
        expected = (per_sample * factors.unsqueeze(1)).sum(dim=0)
        assert torch.allclose(summed, expected, rtol=1e-4, atol=1e-6)
        assert float(summed.norm()) <= len(batch) * clip * (1 + 1e-4)
        assert (raw_norms * factors <= clip * (1 + 1e-4)).all()
    finally:
        private.model._close()


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ghost"])
def test_clipped_sum_equals_a_naive_per_patient_loop(
    cohort_batch: Callable[..., PatientBatch],
    mode: str,
    adult_cohort: CohortSeries,
    generator: torch.Generator,
) -> None:
    # The exactness check of every fast path: the gradient Opacus applies (noise switched
    # off) against one plain backward pass per patient of its own k windows, clipped, summed.
    dataset = _dataset(cohort_batch, adult_cohort, generator, rows=12, k=3)
    torch.manual_seed(3)
    model = GlucoseTwin(TWIN)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.2)
    reference = GlucoseTwin(TWIN)
    reference.load_state_dict(model.state_dict())
    clip = 0.5
    config = DpSgdConfig(expected_batch_patients=12, max_grad_norm=clip, grad_sample_mode=mode)
    private = make_private_training(model, dataset, 0.0, config, generator)
    try:
        batch = as_windows(next(iter(private.loader)))
        assert len(batch) > 1
        private.loss_fn(private.model(batch.history, batch.plan), batch).backward()
        private.optimizer.pre_step()
        # With loss_reduction="mean" Opacus divides the clipped sum by the expected batch (12).
        applied = 12 * torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    finally:
        private.model._close()
    expected = torch.zeros_like(applied)
    for patient in range(len(batch)):
        reference.zero_grad()
        one = as_windows(
            [
                batch.history[patient : patient + 1],
                batch.plan[patient : patient + 1],
                batch.target_mg_dl[patient : patient + 1],
            ]
        )
        gaussian_nll(reference(one.history, one.plan), one).backward()
        grad = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
        expected += grad * min(1.0, clip / (float(grad.norm()) + 1e-6))
    assert torch.allclose(applied, expected, rtol=1e-4, atol=1e-6)


def test_epsilon_grows_over_rounds_and_matches_a_fresh_accountant(
    cohort_batch: Callable[..., PatientBatch],
    adult_cohort: CohortSeries,
    generator: torch.Generator,
) -> None:
    dataset = _dataset(cohort_batch, adult_cohort, generator)
    model = GlucoseTwin(TWIN)
    config = DpSgdConfig(local_steps=4, expected_batch_patients=10, accountant="rdp")
    spent: list[MechanismSteps] = []
    epsilons = []
    for _ in range(3):
        result = train_private_round(model, dataset, 1.2, config, generator)
        spent.append(result.mechanism)
        epsilons.append(epsilon_spent(spent, 1e-5, AccountantKind.RDP))
    assert epsilons[0] < epsilons[1] < epsilons[2]
    fresh = epsilon_spent(
        [MechanismSteps(noise_multiplier=1.2, sample_rate=0.25, steps=12)],
        1e-5,
        AccountantKind.RDP,
    )
    assert abs(epsilons[-1] - fresh) < 1e-9
    assert not isinstance(model, GradSampleModule)
    assert not hasattr(next(model.parameters()), "grad_sample") or all(
        p.grad_sample is None for p in model.parameters()
    )


def test_training_changes_the_model_and_adds_noise(
    cohort_batch: Callable[..., PatientBatch],
    adult_cohort: CohortSeries,
    generator: torch.Generator,
) -> None:
    dataset = _dataset(cohort_batch, adult_cohort, generator)
    torch.manual_seed(0)
    first, second = GlucoseTwin(TWIN), GlucoseTwin(TWIN)
    second.load_state_dict(first.state_dict())
    config = DpSgdConfig(local_steps=3, expected_batch_patients=10)
    train_private_round(first, dataset, 1.0, config, torch.Generator().manual_seed(1))
    train_private_round(second, dataset, 1.0, config, torch.Generator().manual_seed(2))
    initial = GlucoseTwin(TWIN).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in first.state_dict().items())
    assert any(not torch.equal(second.state_dict()[k], v) for k, v in first.state_dict().items())


def test_only_the_privacy_package_imports_opacus() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "privacy"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "opacus" for name in names):
                offenders.append(str(path))
    assert offenders == []


def test_training_path_never_uses_record_level_loaders() -> None:
    # Sites train only through train_private_round, whose loader is built over the patient
    # dataset; no DataLoader over windows appears on the site path.
    client = (PACKAGE / "federation" / "site_round.py").read_text()
    engine = (PACKAGE / "privacy" / "engine.py").read_text()
    assert "train_private_round" in client
    assert "DataLoader(" not in client
    assert "train_non_private" not in client
    assert "DPDataLoader(dataset, sample_rate=sample_rate" in engine
