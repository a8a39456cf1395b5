"""Empirical privacy audit of a finished run at one site: can its members be told apart.

Runs at the site (it needs the site's records). Members are the patients any round of the run
actually trained on (the site's own round records, :func:`~.site_round.trained_pseudonyms`);
non-members are the site's held-out patients, which no round ever trains on. The released
model is attacked (:mod:`fedtwin.privacy.membership`), and so is a *non-private reference*
trained here on the same members with the same recipe (steps, batch, learning rate, windows
per patient) but without clipping or noise: the difference between the two is what DP buys.
Each result is reported next to the bound the site's ε allows, ``TPR ≤ e^ε·FPR + δ``.
Randomness (reference training, shadow splits) comes from ``seed``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from fedtwin.errors import ConfigError
from fedtwin.federation.config import RunConfig, SiteConfig
from fedtwin.federation.site_round import trained_pseudonyms
from fedtwin.federation.sitedata import load_site_data, patient_batch
from fedtwin.privacy import PrivacyLedger
from fedtwin.privacy.membership import (
    REPORTED_FPRS,
    AttackResult,
    dp_tpr_bound,
    lira_offline_attack,
    loss_threshold_attack,
)
from fedtwin.twins import ForecastWindows, GlucoseTwin, PatientBatch, windows_per_patient
from fedtwin.twins.training import PatientWindowDataset, train_non_private, usable_rows

#: Fewest members and non-members an audit runs on (its AUC would be noise below that).
MIN_PATIENTS = 5


@dataclass(frozen=True)
class SiteMembershipAudit:
    """One site's audit: attacks on the released model and on a non-private reference."""

    site_id: str
    run_id: str
    epsilon: float
    delta: float
    members: int
    non_members: int
    released: tuple[AttackResult, ...]
    non_private: tuple[AttackResult, ...]

    def bound(self, fpr: float) -> float:
        """The most TPR any attack may reach at ``fpr`` under the site's (ε, δ)."""
        return dp_tpr_bound(self.epsilon, self.delta, fpr)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready document (aggregate numbers only)."""
        document = asdict(self)
        document["bound"] = {str(f): self.bound(f) for f in REPORTED_FPRS}
        for key in ("released", "non_private"):
            for result in document[key]:
                result["tpr_at_fpr"] = {str(k): v for k, v in result["tpr_at_fpr"].items()}
        return document


def load_run_model(run_dir: Path) -> tuple[RunConfig, GlucoseTwin]:
    """The run's config and its final model (safetensors, never pickle)."""
    config_path, model_path = run_dir / "run_config.json", run_dir / "model.safetensors"
    if not config_path.is_file() or not model_path.is_file():
        raise ConfigError(f"{run_dir}: not a finished run (run_config.json, model.safetensors)")
    run = RunConfig.from_json(config_path.read_text())
    model = GlucoseTwin(run.twin)
    try:
        model.load_state_dict(load_file(str(model_path)), strict=True)
    except (RuntimeError, KeyError) as error:
        raise ConfigError(f"{model_path}: does not match the run's twin") from error
    return run, model


def _reference(run: RunConfig, members: PatientBatch, seed: int) -> GlucoseTwin:
    """The same recipe as the run, on the same members, without DP."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = GlucoseTwin(run.twin)
    dataset = PatientWindowDataset(members, generator, run.dp.windows_per_patient)
    train_non_private(
        model,
        dataset,
        steps=run.num_rounds * run.dp.local_steps,
        batch_size=run.dp.expected_batch_patients,
        learning_rate=run.dp.learning_rate,
        generator=generator,
    )
    return model


def _attacks(
    model: GlucoseTwin,
    run: RunConfig,
    pool: PatientBatch,
    members: Sequence[ForecastWindows],
    non_members: Sequence[ForecastWindows],
    shadows: int,
    seed: int,
) -> tuple[AttackResult, ...]:
    results = [loss_threshold_attack(model, members, non_members)]
    if shadows > 0:

        def shadow(indices: Sequence[int], generator: torch.Generator) -> GlucoseTwin:
            chosen = pool.select(list(indices))
            return _reference(run, chosen, int(torch.randint(2**31, (1,), generator=generator)))

        results.append(
            lira_offline_attack(model, members, non_members, shadow, shadows=shadows, seed=seed)
        )
    return tuple(results)


def audit_site(
    run_dir: Path, site: SiteConfig, *, shadows: int = 0, seed: int = 0
) -> SiteMembershipAudit:
    """Attack the run's released model and a non-private reference at ``site``.

    Raises
    ------
    ConfigError
        If the run did not train at this site, or the site has too few held-out patients.
    """
    run, model = load_run_model(run_dir)
    trained = trained_pseudonyms(site, run.run_id)
    if not trained:
        raise ConfigError(f"site {site.site_id} has no record of training in run {run.run_id}")
    data = load_site_data(site)
    members_batch = patient_batch(data.train, run.twin.history_steps, run.twin.horizon_steps)
    members_batch = members_batch.select(
        [i for i, p in enumerate(members_batch.pseudonyms) if p in trained]
    )
    members_batch = members_batch.select(usable_rows(members_batch, run.dp.windows_per_patient))
    held = patient_batch(data.heldout, run.twin.history_steps, run.twin.horizon_steps)
    held = held.select(usable_rows(held))
    if len(held) < MIN_PATIENTS or len(members_batch) < MIN_PATIENTS:
        raise ConfigError(
            f"site {site.site_id}: {len(members_batch)} members and {len(held)} held-out "
            f"patients; an audit needs at least {MIN_PATIENTS} of each"
        )
    stride = run.eval_stride_steps
    members = windows_per_patient(members_batch, stride)
    non_members = windows_per_patient(held, stride)
    pool = PatientBatch(
        pseudonyms=members_batch.pseudonyms + held.pseudonyms,
        cgm_mg_dl=_cat(members_batch.cgm_mg_dl, held.cgm_mg_dl),
        insulin_u=_cat(members_batch.insulin_u, held.insulin_u),
        carbs_g=_cat(members_batch.carbs_g, held.carbs_g),
        valid_anchor=_cat(members_batch.valid_anchor, held.valid_anchor),
        history_steps=run.twin.history_steps,
        horizon_steps=run.twin.horizon_steps,
    )
    ledger = PrivacyLedger(site.ledger_path, 100.0, run.delta, site.accountant)
    epsilon = ledger.epsilon()
    reference = _reference(run, members_batch, seed)
    return SiteMembershipAudit(
        site_id=site.site_id,
        run_id=run.run_id,
        epsilon=epsilon if math.isfinite(epsilon) else math.inf,
        delta=run.delta,
        members=len(members),
        non_members=len(non_members),
        released=_attacks(model, run, pool, members, non_members, shadows, seed),
        non_private=_attacks(reference, run, pool, members, non_members, shadows, seed + 1),
    )


def _cat(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Concatenate two ``[P, T]`` tensors of possibly different ``T`` (zero/False padded)."""
    steps = max(first.shape[1], second.shape[1])

    def pad(tensor: torch.Tensor) -> torch.Tensor:
        padded = torch.zeros(tensor.shape[0], steps, dtype=tensor.dtype)
        padded[:, : tensor.shape[1]] = tensor
        return padded

    return torch.cat([pad(first), pad(second)])


def write_audit(run_dir: Path, audits: Sequence[SiteMembershipAudit]) -> Path:
    """``privacy_audit.json`` in the run directory (aggregate numbers only)."""
    path = run_dir / "privacy_audit.json"
    document = {"sites": [a.as_json() for a in audits], "fprs": list(REPORTED_FPRS)}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    partial.replace(path)
    return path
