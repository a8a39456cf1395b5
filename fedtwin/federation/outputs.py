"""The run directory the coordinator writes: model, model card, metrics — never pickle.

``model.safetensors`` holds the final global twin; ``model_card.json`` names its version hash
(SHA-256 of the safetensors file), the sites that contributed, ε per site and the final metrics;
``metrics.json`` holds every round's per-site metrics. Files are written to temporary names and
renamed, so a crash never leaves a half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flwr
import torch
from safetensors.torch import save_file

import fedtwin
from fedtwin.federation.calibration import calibrate_from_sites
from fedtwin.federation.collector import RoundCollector, pool_site_metrics
from fedtwin.federation.config import RunConfig
from fedtwin.federation.validation import RejectedUpdate, SiteRefusal
from fedtwin.privacy import AccountantKind, MechanismSteps, epsilon_spent

MODEL_FILE = "model.safetensors"
MODEL_CARD_FILE = "model_card.json"
METRICS_FILE = "metrics.json"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def write_json(path: Path, document: Any) -> None:
    """Write pretty JSON atomically."""
    _atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def write_model(out_dir: Path, state_dict: dict[str, torch.Tensor], run: RunConfig) -> str:
    """Save the model as safetensors; return its version hash (``sha256:<hex>``)."""
    partial = out_dir / (MODEL_FILE + ".partial")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(partial), metadata={"twin": run.twin.model_dump_json()})
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    partial.replace(out_dir / MODEL_FILE)
    return f"sha256:{digest}"


def metrics_document(
    collector: RoundCollector,
    rejected: list[RejectedUpdate],
    refusals: list[SiteRefusal] | None = None,
) -> dict[str, Any]:
    """Every round: per-site train and evaluation metrics, pooled evaluation, rejections.

    Also the sites' refusals of each round (error code and reason as the site gave it).
    """
    rounds = []
    for server_round in sorted(set(collector.train) | set(collector.evaluate)):
        evaluation = collector.evaluate.get(server_round, {})
        rounds.append(
            {
                "round": server_round,
                "train": collector.train.get(server_round, {}),
                "evaluate": evaluation,
                "evaluate_pooled": pool_site_metrics(evaluation, "num-examples")
                if evaluation
                else {},
                "rejected_updates": [
                    {"site": r.site_id, "reason": r.reason}
                    for r in rejected
                    if r.server_round == server_round
                ],
                "refusals": [
                    {"node": r.node_id, "code": r.code, "reason": r.reason}
                    for r in refusals or []
                    if r.server_round == server_round
                ],
            }
        )
    return {"rounds": rounds}


def site_level_privacy(run: RunConfig, contributors: list[int]) -> dict[str, Any] | None:
    """ε per *site* of the coordinator's central DP, if the run used it (RDP accountant).

    Every aggregated round is one Gaussian mechanism on the average of ``k`` clipped site
    updates (sensitivity ``C / k``) with noise ``σ · C / min_sites`` (Flower calibrates to the
    sites it expects), so a round with ``k < min_sites`` contributors is accounted at the
    weaker effective multiplier ``σ · k / min_sites``; no subsampling (every site is asked).
    ``contributors`` holds ``k`` for every aggregated round.
    """
    if run.central_dp is None:
        return None
    sigma = run.central_dp.noise_multiplier
    mechanisms = [
        MechanismSteps(
            noise_multiplier=sigma * min(count, run.min_sites) / run.min_sites,
            sample_rate=1.0,
            steps=1,
        )
        for count in contributors
        if count > 0
    ]
    return {
        "unit": "site",
        "noise_multiplier": run.central_dp.noise_multiplier,
        "clipping_norm": run.central_dp.clipping_norm,
        "epsilon": epsilon_spent(mechanisms, run.delta, AccountantKind.RDP),
        "delta": run.delta,
        "accountant": AccountantKind.RDP.value,
    }


def model_card(
    run: RunConfig,
    version_hash: str,
    collector: RoundCollector,
    data_description: str,
) -> dict[str, Any]:
    """The JSON model card of a run's final model."""
    contributors = sorted({site for per_site in collector.train.values() for site in per_site})
    epsilon_per_site: dict[str, float] = {}
    for server_round in sorted(collector.train):
        for site, metrics in collector.train[server_round].items():
            epsilon_per_site[site] = metrics["epsilon"]
    final_round = max(collector.evaluate, default=None)
    final_eval = collector.evaluate.get(final_round, {}) if final_round is not None else {}
    final_histograms = collector.calibration.get(final_round, {}) if final_round else {}
    calibration, calibration_check = (
        calibrate_from_sites(final_histograms, run.twin.horizon_steps)
        if final_histograms
        else (None, {"status": "not calibrated: no site reported calibration histograms"})
    )
    return {
        "model_kind": "glucose-twin",
        "version_hash": version_hash,
        "created_at": datetime.now(UTC).isoformat(),
        "study_id": run.study_id,
        "rounds_completed": len(collector.train),
        "contributors": contributors,
        "contributors_per_round": {
            str(r): sorted(per_site) for r, per_site in sorted(collector.train.items())
        },
        "privacy": {
            "unit": "patient",
            "epsilon_per_site": epsilon_per_site,
            "delta": run.delta,
            "accountant": run.dp.accountant.value,
            "max_grad_norm": run.dp.max_grad_norm,
            "site_level": site_level_privacy(
                run, [len(per_site) for _, per_site in sorted(collector.train.items())]
            ),
        },
        "data": data_description,
        "metrics": {
            "round": final_round,
            "per_site": final_eval,
            "pooled": pool_site_metrics(final_eval, "num-examples") if final_eval else {},
            "target": "CGM glucose (noisy sensor readings), mg/dL",
        },
        # Read by fedtwin.twins.runfile: scales on the predicted std for a 90 % band.
        "calibration": calibration.model_dump(mode="json") if calibration else None,
        "calibration_check": {"round": final_round, **calibration_check},
        "architecture": run.twin.model_dump(mode="json"),
        "run_config": run.model_dump(mode="json"),
        "software": {"fedtwin": fedtwin.__version__, "flwr": flwr.__version__},
    }
