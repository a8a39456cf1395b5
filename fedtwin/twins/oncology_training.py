"""Training of the oncology twin on observational (factual) patients, no privacy machinery.

Invariant: one record is one patient. :func:`origin_batch` lays every forecast origin of a
patient inside that patient's row (patient on dimension 0), :func:`oncology_loss` can return one
loss per patient, and the only randomness (patient order, origins drawn) comes from the injected
generator, so the privacy layer can put Poisson sampling of patients and per-patient clipping on
top unchanged (see tests/twins/test_twins_oncology.py for the per-sample-gradient check).

The balancing representation is trained as in CRN (Bica et al., ICLR 2020): the treatment head
learns the observational policy while the gradient-reversal layer pushes the encoder the other
way, with the reversal scale ramped by :func:`reversal_schedule` over training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.nn import functional

from fedtwin.cohorts.oncology import DEATH_VOLUME_CM3
from fedtwin.errors import ConfigError
from fedtwin.twins.oncology import (
    INCREMENT_SCALE,
    Balancing,
    OncologyTwin,
    OncologyTwinConfig,
    TumourSeries,
    encoder_inputs,
    increments_to_log_volume,
    log_volume_of,
)


@dataclass(frozen=True, eq=False)
class OriginBatch:
    """Every forecast origin of ``N`` patients, laid out for training (patient on dim 0).

    Origins are days ``0 … T-2``; ``origin_mask`` marks those observed with a living tumour
    and at least one observed target. Targets are ``log V`` on days ``t+1 … t+H``.
    """

    inputs: Tensor
    windows: Tensor
    origins: Tensor
    origin_log: Tensor
    target_log: Tensor
    target_mask: Tensor
    treated: Tensor
    origin_mask: Tensor

    def take(self, rows: Tensor) -> OriginBatch:
        """The origins of the given patients."""
        return OriginBatch(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def sample_origins(self, count: int, generator: torch.Generator) -> OriginBatch:
        """``count`` origins per patient, drawn with replacement among its valid ones."""
        weights = self.origin_mask.to(torch.float32) + 1e-6
        picked = torch.multinomial(weights, count, replacement=True, generator=generator)
        rows = torch.arange(picked.shape[0])[:, None]
        return OriginBatch(
            inputs=self.inputs,
            windows=self.windows[rows, picked],
            origins=self.origins[rows, picked],
            origin_log=self.origin_log[rows, picked],
            target_log=self.target_log[rows, picked],
            target_mask=self.target_mask[rows, picked],
            treated=self.treated[rows, picked],
            origin_mask=self.origin_mask[rows, picked],
        )


def origin_batch(series: TumourSeries, config: OncologyTwinConfig) -> OriginBatch:
    """Cut every origin of every patient (factual treatments as the plan)."""
    if series.days < 2:
        raise ConfigError("training needs at least 2 days per patient")
    lag, horizon, days = config.treatment_lag_days, config.horizon_days, series.days
    count, origins = len(series), days - 1
    treated = torch.stack([series.chemo, series.radio], dim=-1).to(torch.float32)
    padded = functional.pad(treated, (0, 0, lag - 1, horizon))
    windows = padded.unfold(1, config.window_days, 1)[:, :origins].transpose(-1, -2)
    volume = series.volume_cm3.to(torch.float32)
    seen = ~torch.isnan(volume)
    log_volume = log_volume_of(volume.nan_to_num(0.0))
    ahead = functional.pad(log_volume, (0, horizon)).unfold(1, horizon, 1)[:, 1 : origins + 1]
    ahead_seen = functional.pad(seen, (0, horizon)).unfold(1, horizon, 1)[:, 1 : origins + 1]
    living = seen & (volume.nan_to_num(0.0) > 0)
    # a recovered tumour (volume 0) is an end, not a log-volume to fit
    ahead_living = functional.pad(living, (0, horizon)).unfold(1, horizon, 1)[:, 1 : origins + 1]
    target_mask = ahead_seen & ahead_living & living[:, :origins, None]
    return OriginBatch(
        inputs=encoder_inputs(series),
        windows=windows.contiguous(),
        origins=torch.arange(origins).expand(count, origins).contiguous(),
        origin_log=log_volume[:, :origins],
        target_log=ahead.contiguous(),
        target_mask=target_mask,
        treated=treated[:, :origins],
        origin_mask=target_mask[..., 0],
    )


def oncology_loss(
    raw: Tensor,
    logits: Tensor,
    batch: OriginBatch,
    reduction: str = "mean",
    volume_weight: float = 0.0,
) -> Tensor:
    """Gaussian NLL of ``log V`` (in increment units) plus the treatment-prediction loss.

    ``volume_weight`` adds the squared error of the expected volume in % of the death volume
    (the benchmark's metric, dominated by large tumours, which the log-scale NLL underweights).

    The treatment head sits behind the gradient-reversal layer, so adding its loss trains the
    head to predict the observational policy and the encoder to defeat it (scale 0: the head
    only measures how much treatment information the state carries). ``reduction="none"``
    gives one loss per patient ``[N]`` (each patient's mean over its origins), whose mean is
    the ``"mean"`` reduction: what per-patient clipping needs.
    """
    mean, var = increments_to_log_volume(raw)
    target = batch.target_log - batch.origin_log[..., None]
    scaled_var = var / INCREMENT_SCALE**2
    nll = 0.5 * torch.log(scaled_var) + 0.5 * (target - mean) ** 2 / var
    mask = batch.target_mask.to(nll.dtype)
    loss = nll
    if volume_weight > 0.0:
        ceiling = math.log(2.0 * DEATH_VOLUME_CM3)
        log_hat = (batch.origin_log[..., None] + mean + 0.5 * var).clamp(max=ceiling)
        error = (torch.exp(log_hat) - torch.exp(batch.target_log)) * (100.0 / DEATH_VOLUME_CM3)
        loss = loss + volume_weight * error**2
    per_patient = (loss * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
    bce = functional.binary_cross_entropy_with_logits(logits, batch.treated, reduction="none")
    origin = batch.origin_mask.to(bce.dtype)[..., None]
    per_patient = per_patient + (bce * origin).flatten(1).sum(1) / (
        2.0 * origin.flatten(1).sum(1).clamp_min(1.0)
    )
    if reduction == "none":
        return per_patient
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
    return per_patient.mean()


class OncologyTrainingConfig(BaseModel):
    """Plain (non-private) training of the oncology twin."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(30, ge=1, le=1000)
    batch_patients: int = Field(64, ge=1, le=65536)
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0)
    volume_loss_weight: float = Field(1.0, ge=0.0, description="weight of the volume error")
    origins_per_patient: int = Field(8, ge=1, description="origins drawn per patient and step")
    patience_epochs: int = Field(
        6, ge=1, description="stop after this many epochs without a better validation NLL"
    )


@dataclass(frozen=True)
class OncologyTrainingSummary:
    """What a training run did; the twin is left at its best validation epoch."""

    epochs: int
    best_epoch: int
    train_loss: tuple[float, ...]
    validation_loss: tuple[float, ...]


def reversal_schedule(progress: float, config: OncologyTwinConfig) -> float:
    """CRN's gradient-reversal ramp ``w · (2 / (1 + e^{-10 p}) - 1)``.

    ``p`` is the training progress in ``[0, 1]``; 0 when balancing is off.
    """
    if config.balancing is Balancing.NONE:
        return 0.0
    return config.balancing_weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


@torch.no_grad()
def evaluate_loss(
    twin: OncologyTwin, batch: OriginBatch, volume_weight: float = 0.0, chunk: int = 512
) -> float:
    """Mean per-patient loss over a batch, without gradients."""
    was_training = twin.training
    twin.eval()
    total = 0.0
    for start in range(0, batch.inputs.shape[0], chunk):
        part = batch.take(torch.arange(start, min(start + chunk, batch.inputs.shape[0])))
        raw, logits = twin(part.inputs, part.windows, part.origins)
        losses = oncology_loss(raw, logits, part, reduction="none", volume_weight=volume_weight)
        total += float(losses.sum())
    twin.train(was_training)
    return total / max(1, batch.inputs.shape[0])


def train_oncology_twin(
    twin: OncologyTwin,
    train: TumourSeries,
    config: OncologyTrainingConfig,
    generator: torch.Generator,
    validation: TumourSeries | None = None,
) -> OncologyTrainingSummary:
    """Adam over shuffled patients; keeps the epoch with the best validation loss.

    Parameters
    ----------
    twin : OncologyTwin
        Trained in place.
    train : TumourSeries
        Factual (observational) training patients.
    config : OncologyTrainingConfig
        Epochs, batch, learning rate, early stopping.
    generator : torch.Generator
        The only source of randomness (patient order).
    validation : TumourSeries or None, optional
        Patients for early stopping (default: the training patients).

    Returns
    -------
    OncologyTrainingSummary
        Loss per epoch and the epoch kept.
    """
    data = origin_batch(train, twin.config)
    held_out = data if validation is None else origin_batch(validation, twin.config)
    optimizer = torch.optim.Adam(twin.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    best = (math.inf, 0, {k: v.clone() for k, v in twin.state_dict().items()})
    train_losses: list[float] = []
    validation_losses: list[float] = []
    for epoch in range(config.epochs):
        twin.reversal_scale = reversal_schedule(epoch / config.epochs, twin.config)
        twin.train()
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), config.batch_patients):
            part = data.take(order[start : start + config.batch_patients])
            part = part.sample_origins(config.origins_per_patient, generator)
            optimizer.zero_grad(set_to_none=True)
            raw, logits = twin(part.inputs, part.windows, part.origins)
            loss = oncology_loss(raw, logits, part, volume_weight=config.volume_loss_weight)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += float(loss.detach()) * part.inputs.shape[0]
        schedule.step()
        train_losses.append(total / len(train))
        validation_losses.append(evaluate_loss(twin, held_out, config.volume_loss_weight))
        if validation_losses[-1] < best[0]:
            best = (
                validation_losses[-1],
                epoch,
                {k: v.clone() for k, v in twin.state_dict().items()},
            )
        elif epoch - best[1] >= config.patience_epochs:
            break
    twin.load_state_dict(best[2])
    twin.eval()
    return OncologyTrainingSummary(
        epochs=len(train_losses),
        best_epoch=best[1],
        train_loss=tuple(train_losses),
        validation_loss=tuple(validation_losses),
    )
