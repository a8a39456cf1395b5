"""Patient-level DP-SGD for one round at one site, with Opacus.

The guarantee (stated once, here): each round's training is ``steps`` compositions of the
Poisson-subsampled Gaussian mechanism where the *record is a patient*. The dataset has one item
per patient (:class:`fedtwin.twins.training.PatientWindowDataset`); Opacus' Poisson sampler puts
each patient into a step's batch independently with probability ``q``; a sampled patient
contributes exactly ``k = windows_per_patient`` windows, encoded as one record, so Opacus
computes *one* gradient per patient (of the mean loss over its ``k`` windows) and clips it once
to ``max_grad_norm`` (flat clipping over all parameters); Gaussian noise with standard
deviation ``noise_multiplier · max_grad_norm`` is added to the sum. Hence the released update is
(ε, δ)-DP with respect to adding or removing *one patient's entire history* at this site,
with ε from composing every round of every run (:mod:`fedtwin.privacy.accountant`).
Record-level (window-level) sampling is never used on this path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from pydantic import BaseModel, ConfigDict, Field

from fedtwin.privacy.accountant import AccountantKind, MechanismSteps, poisson_sample_rate
from fedtwin.twins import ForecastWindows, gaussian_nll
from fedtwin.twins.training import LossFn, PatientWindowDataset, fit_steps, repeat_batches

#: Opacus' ways to get per-sample gradient norms: per-layer hooks, functorch (vmap) or ghost
#: clipping (norms without materialising per-sample gradients; two backward passes).
GradSampleMode = Literal["hooks", "functorch", "ghost"]


class DpSgdConfig(BaseModel):
    """Local DP-SGD settings of one round (sent by the coordinator, checked by the site)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_steps: int = Field(30, ge=1, le=10_000)
    expected_batch_patients: int = Field(32, ge=1, le=100_000)
    max_grad_norm: float = Field(1.0, gt=0, le=100)
    learning_rate: float = Field(2e-3, gt=0, le=1)
    windows_per_patient: int = Field(
        1, ge=1, le=64, description="windows a sampled patient contributes, clipped together"
    )
    accountant: AccountantKind = AccountantKind.PRV
    grad_sample_mode: GradSampleMode = Field(
        "hooks", description="how Opacus gets per-patient gradient norms (all exact)"
    )


class _PerPatientNll:
    """The twin's loss as the criterion ghost clipping needs (``reduction`` switchable)."""

    reduction = "mean"

    def __call__(self, raw: torch.Tensor, windows: ForecastWindows) -> torch.Tensor:
        return gaussian_nll(raw, windows, reduction=self.reduction)


@dataclass(frozen=True)
class PrivateRoundResult:
    """What one private round did, exactly as the accountant saw it."""

    mechanism: MechanismSteps
    mean_loss: float
    max_grad_norm: float


@dataclass(frozen=True)
class PrivateTraining:
    """The Opacus-wrapped model, optimiser and patient loader of one round."""

    engine: PrivacyEngine
    model: GradSampleModule
    optimizer: DPOptimizer
    loader: DPDataLoader
    loss_fn: LossFn


def make_private_training(
    model: torch.nn.Module,
    dataset: PatientWindowDataset,
    noise_multiplier: float,
    config: DpSgdConfig,
    generator: torch.Generator,
) -> PrivateTraining:
    """Attach Opacus to ``model`` with Poisson sampling of *patients* (see module docstring).

    The caller must call ``model._close()`` on the returned wrapper when done, which
    :func:`train_private_round` does.
    """
    sample_rate = poisson_sample_rate(len(dataset), config.expected_batch_patients)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=generator)
    engine = PrivacyEngine(accountant=config.accountant.value)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    model.train()
    criterion = _PerPatientNll()
    with warnings.catch_warnings():
        # Opacus warns that a non-secure RNG is used; the caller chose the generator.
        warnings.simplefilter("ignore", UserWarning)
        wrapped = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            criterion=criterion,
            noise_multiplier=noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            poisson_sampling=False,  # already a Poisson DPDataLoader over patients
            noise_generator=generator,
            grad_sample_mode=config.grad_sample_mode,
        )
    if config.grad_sample_mode == "ghost":
        private_model, private_optimizer, ghost_loss, private_loader = wrapped
        return PrivateTraining(engine, private_model, private_optimizer, private_loader, ghost_loss)
    private_model, private_optimizer, private_loader = wrapped
    return PrivateTraining(engine, private_model, private_optimizer, private_loader, gaussian_nll)


def train_private_round(
    model: torch.nn.Module,
    dataset: PatientWindowDataset,
    noise_multiplier: float,
    config: DpSgdConfig,
    generator: torch.Generator,
) -> PrivateRoundResult:
    """Train ``model`` in place for ``config.local_steps`` DP-SGD steps over patients.

    Parameters
    ----------
    model : torch.nn.Module
        The twin; its parameters are updated in place (Opacus wraps a view of it).
    dataset : PatientWindowDataset
        One item per patient.
    noise_multiplier : float
        σ, calibrated by the caller against the site's ledger.
    config : DpSgdConfig
        Steps, expected batch (patients), clipping norm, learning rate.
    generator : torch.Generator
        Drives patient sampling, window choice and the noise (seeded runs are reproducible;
        a production site may pass Opacus' secure mode instead).
    """
    private = make_private_training(model, dataset, noise_multiplier, config, generator)
    try:
        with warnings.catch_warnings():
            # Inputs never require grad, so torch notes that Opacus' full backward hooks fire
            # on module outputs: that is exactly what per-sample gradients need.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            summary = fit_steps(
                private.model,
                private.optimizer,
                repeat_batches(private.loader),
                config.local_steps,
                private.loss_fn,
            )
    finally:
        # Detach Opacus' hooks so the caller gets its plain module back.
        private.model._close()
    history = private.engine.accountant.history
    if len(history) != 1 or history[0][2] != config.local_steps:
        raise RuntimeError(f"accountant saw {history}, expected one mechanism x {summary.steps}")
    accounted_noise, accounted_rate, accounted_steps = history[0]
    return PrivateRoundResult(
        mechanism=MechanismSteps(
            noise_multiplier=accounted_noise, sample_rate=accounted_rate, steps=accounted_steps
        ),
        mean_loss=summary.mean_loss,
        max_grad_norm=config.max_grad_norm,
    )
