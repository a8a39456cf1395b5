"""Empirical privacy audit: membership inference against a trained twin, at the patient level.

The question an auditor asks: can an attacker holding the released model tell whether a given
patient's record was in a site's training set? Members are the site's training patients,
non-members its held-out patients (never trained on). Each patient gets one score from the
model's loss over *all* of that patient's windows (the privacy unit is the patient, so is the
attack's unit). Two attacks:

* ``loss-threshold`` (Yeom et al., CSF 2018): score = −mean NLL of the patient; members tend
  to have lower loss.
* ``lira-offline`` (Carlini et al., S&P 2022, the offline variant): shadow models are trained on
  random halves of the patient pool; for each patient, the losses of the shadow models that did
  *not* see it give a Gaussian "out" distribution; score = how far the target model's loss lies
  below it, in standard deviations. Affordable here because the twin is small.

Results are AUC and TPR at fixed low FPRs. An (ε, δ)-DP guarantee bounds every attack's ROC:
TPR ≤ e^ε · FPR + δ (Kairouz et al. 2015; ANCHORS.md §5), reported next to the measured TPR.
With ``n`` non-members an FPR below ``1/n`` cannot be measured: such points are reported as
``None``, never extrapolated. Randomness (shadow splits, training) comes from the given seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedtwin.twins import ForecastWindows, GlucoseTwin, gaussian_nll

#: False-positive rates at which attack power is reported.
REPORTED_FPRS = (0.001, 0.01, 0.1)
#: Below this many "out" shadow losses per patient, LiRA uses one pooled variance.
MIN_SHADOWS_FOR_OWN_VARIANCE = 16


@dataclass(frozen=True)
class AttackResult:
    """ROC summary of one attack against one model."""

    attack: str
    members: int
    non_members: int
    auc: float
    tpr_at_fpr: dict[float, float | None]


def dp_tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """The most TPR any attack can reach at ``fpr`` against an (ε, δ)-DP release."""
    if math.isinf(epsilon):
        return 1.0
    return min(1.0, math.exp(epsilon) * fpr + delta)


def patient_losses(model: GlucoseTwin, patients: Sequence[ForecastWindows]) -> Tensor:
    """Mean Gaussian NLL of each patient over all of that patient's windows, ``[P]``."""
    model.eval()
    losses = []
    with torch.no_grad():
        for windows in patients:
            losses.append(float(gaussian_nll(model(windows.history, windows.plan), windows)))
    return torch.tensor(losses, dtype=torch.float64)


def roc_summary(attack: str, member_scores: Tensor, non_member_scores: Tensor) -> AttackResult:
    """AUC (Mann–Whitney, ties count half) and TPR at :data:`REPORTED_FPRS`.

    Higher scores mean "more likely a member". The threshold for an FPR ``f`` is the smallest
    score that at most ``floor(f · n)`` non-members reach, so the reported TPR is achievable.
    """
    members, non_members = member_scores.double(), non_member_scores.double()
    greater = (members.unsqueeze(1) > non_members.unsqueeze(0)).double().mean()
    ties = (members.unsqueeze(1) == non_members.unsqueeze(0)).double().mean()
    auc = float(greater + 0.5 * ties)
    ordered = torch.sort(non_members, descending=True).values
    tpr: dict[float, float | None] = {}
    for fpr in REPORTED_FPRS:
        allowed = math.floor(fpr * len(ordered))
        if allowed < 1:
            tpr[fpr] = None
            continue
        # Strictly above the (allowed+1)-th highest non-member score: ≤ allowed false positives.
        threshold = ordered[allowed]
        tpr[fpr] = float((members > threshold).double().mean())
    return AttackResult(attack, len(members), len(non_members), auc, tpr)


def loss_threshold_attack(
    model: GlucoseTwin,
    members: Sequence[ForecastWindows],
    non_members: Sequence[ForecastWindows],
) -> AttackResult:
    """Yeom et al.'s attack: the lower a patient's loss, the likelier a member."""
    return roc_summary(
        "loss-threshold",
        -patient_losses(model, members),
        -patient_losses(model, non_members),
    )


ShadowTrainer = Callable[[Sequence[int], torch.Generator], GlucoseTwin]


def lira_offline_attack(
    model: GlucoseTwin,
    members: Sequence[ForecastWindows],
    non_members: Sequence[ForecastWindows],
    train_shadow: ShadowTrainer,
    shadows: int,
    seed: int,
) -> AttackResult:
    """Offline LiRA: compare each patient's target loss with shadow models that never saw it.

    Parameters
    ----------
    model : GlucoseTwin
        The released model under audit.
    members, non_members : Sequence[ForecastWindows]
        One entry per patient: every window of that patient.
    train_shadow : Callable
        Trains a fresh model on the pool patients with the given indices (members first, then
        non-members) with the same recipe as the audited model, using the generator.
    shadows : int
        Number of shadow models; each patient is left out of about half of them.
    seed : int
        Seeds the random halves and the shadow training.
    """
    pool = [*members, *non_members]
    generator = torch.Generator().manual_seed(seed)
    out_losses: list[list[float]] = [[] for _ in pool]
    for _ in range(shadows):
        chosen = torch.rand(len(pool), generator=generator) < 0.5
        shadow = train_shadow(torch.nonzero(chosen).flatten().tolist(), generator)
        losses = patient_losses(shadow, pool)
        for index in torch.nonzero(~chosen).flatten().tolist():
            out_losses[index].append(float(losses[index]))
    target = patient_losses(model, pool)
    # With few shadow models a per-patient variance is noise: like Carlini et al. (§VI-B,
    # "fixed variance") use one variance pooled over every patient's deviations from its mean.
    residuals = [
        value - sum(observed) / len(observed) for observed in out_losses for value in observed
    ]
    pooled = math.sqrt(sum(r * r for r in residuals) / max(len(residuals) - 1, 1)) + 1e-6
    per_patient = min((len(o) for o in out_losses), default=0) >= MIN_SHADOWS_FOR_OWN_VARIANCE
    scores = []
    for index, observed in enumerate(out_losses):
        if not observed:
            scores.append(0.0)  # never left out: no reference, neutral score
            continue
        reference = torch.tensor(observed, dtype=torch.float64)
        spread = float(reference.std()) + 1e-6 if per_patient else pooled
        scores.append((float(reference.mean()) - float(target[index])) / spread)
    score = torch.tensor(scores, dtype=torch.float64)
    return roc_summary("lira-offline", score[: len(members)], score[len(members) :])
