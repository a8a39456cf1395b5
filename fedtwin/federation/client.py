"""The site's ClientApp: guard rails around local training, as Flower message handlers.

Order of a train round at a site (each step fails closed; nothing leaves the site before 4):

1. validate the run config sent by the coordinator (closed schema) and the global model;
2. plan the round's privacy spend: σ calibrated so that the whole planned run stays within the
   site's cap on top of everything already spent; ask the ledger ``can_spend`` → refuse if not;
3. train with patient-level DP-SGD (:mod:`fedtwin.privacy`);
4. commit the spend to the ledger, *then* reply with the update and the cumulative ε.

Evaluation runs on the site's held-out patients only and reports aggregate errors, never
per-patient values; it refuses when fewer patients than the site's minimum are held out.
The twin model and the aggregation strategy know nothing of these rules.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtwin.cohorts import CohortSeries
from fedtwin.errors import BudgetExhausted, ConfigError, FedTwinError
from fedtwin.federation.config import RunConfig, SiteConfig
from fedtwin.federation.sites import SiteResolver
from fedtwin.privacy import (
    PrivacyLedger,
    SpendEvent,
    calibrate_noise_multiplier,
    poisson_sample_rate,
    train_private_round,
)
from fedtwin.twins import GlucoseTwin, PatientBatch, all_windows, forecast_metrics
from fedtwin.twins.training import PatientWindowDataset

RUN_CONFIG_KEY = "run-config"
SITE_RECORD_KEY = "site"

# Error codes of a site's refusal (Flower reserves small numbers for its own errors).
REFUSED_BUDGET = 4101
REFUSED_CONFIG = 4102
REFUSED_DATA = 4103


def make_client_app(resolve_site: SiteResolver) -> ClientApp:
    """Build the site ClientApp; ``resolve_site`` maps a node's context to its site config."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            site = resolve_site(context)
            return _train(msg, context, site)
        except BudgetExhausted as refusal:
            return Message(Error(REFUSED_BUDGET, str(refusal)), reply_to=msg)
        except ConfigError as refusal:
            return Message(Error(REFUSED_CONFIG, str(refusal)), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        try:
            site = resolve_site(context)
            return _evaluate(msg, site)
        except FedTwinError as refusal:
            return Message(Error(REFUSED_DATA, str(refusal)), reply_to=msg)

    return app


def _run_config(msg: Message) -> RunConfig:
    config = msg.content.config_records.get("config")
    if config is None or RUN_CONFIG_KEY not in config:
        raise ConfigError("train message carries no run config")
    return RunConfig.from_json(str(config[RUN_CONFIG_KEY]))


def _server_round(msg: Message) -> int:
    value = msg.content.config_records["config"].get("server-round")
    if not isinstance(value, int) or value < 1:
        raise ConfigError("message carries no valid server-round")
    return value


def _load_global_model(msg: Message, run: RunConfig) -> GlucoseTwin:
    arrays = msg.content.array_records.get("arrays")
    if arrays is None:
        raise ConfigError("message carries no model arrays")
    model = GlucoseTwin(run.twin)
    try:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    except (RuntimeError, KeyError, ValueError) as error:
        raise ConfigError("global model does not match the run's twin architecture") from error
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ConfigError(f"global model has non-finite values in {name}")
    return model


def _load_series(path: Path) -> CohortSeries:
    if not path.is_file():
        raise ConfigError(f"{path}: site data file missing")
    return CohortSeries.load(path)


def _round_generator(site: SiteConfig, run_id: str, server_round: int) -> torch.Generator:
    # Distinct, reproducible stream per (site seed, run, round).
    digest = hashlib.sha256(f"{site.seed}/{run_id}/{server_round}".encode()).digest()
    seed = int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF
    return torch.Generator().manual_seed(seed)


# σ is a pure function of these inputs and costs seconds (PRV bisection): compute once per run.
_calibrated = functools.lru_cache(maxsize=64)(calibrate_noise_multiplier)


def _train(msg: Message, context: Context, site: SiteConfig) -> Message:
    # (1): validate the run config and the global model.
    run = _run_config(msg)
    server_round = _server_round(msg)
    if run.delta != site.delta:
        raise ConfigError(f"run asks delta={run.delta}, site {site.site_id} uses {site.delta}")
    model = _load_global_model(msg, run)
    series = _load_series(site.data_dir / "train.safetensors")
    num_patients = len(series.patient_names)
    if num_patients < site.min_training_patients:
        raise ConfigError(
            f"site {site.site_id} has {num_patients} training patients, "
            f"fewer than its minimum {site.min_training_patients}"
        )

    # (2): plan the spend for the whole run and check it against the ledger.
    run_id = str(context.run_id)
    ledger = PrivacyLedger(site.ledger_path, site.epsilon_cap, site.delta, site.accountant)
    sample_rate = poisson_sample_rate(num_patients, run.dp.expected_batch_patients)
    prior = tuple(e.as_mechanism() for e in ledger.history(exclude_run=run_id))
    try:
        noise_multiplier = _calibrated(
            target_epsilon=site.epsilon_cap,
            delta=site.delta,
            sample_rate=sample_rate,
            steps=run.num_rounds * run.dp.local_steps,
            accountant=site.accountant,
            prior=prior,
        )
    except ConfigError as error:
        raise BudgetExhausted(f"site {site.site_id}: privacy budget exhausted") from error
    planned = SpendEvent(
        run_id=run_id,
        round=server_round,
        study=run.study_id,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=run.dp.local_steps,
        max_grad_norm=run.dp.max_grad_norm,
    )
    check = ledger.can_spend(planned)
    if not check.allowed:
        raise BudgetExhausted(
            f"site {site.site_id}: round {server_round} would reach ε={check.epsilon_after:.3f} "
            f"> cap {check.epsilon_cap}"
        )

    # (3): patient-level DP-SGD.
    generator = _round_generator(site, run_id, server_round)
    batch = PatientBatch.from_arrays(
        series.patient_names,
        series.cgm_mg_dl,
        series.insulin_u,
        series.carbs_g,
        None,
        None,
        run.twin.history_steps,
        run.twin.horizon_steps,
    )
    dataset = PatientWindowDataset(batch, generator, run.dp.windows_per_patient)
    result = train_private_round(model, dataset, noise_multiplier, run.dp, generator)
    spent = planned.model_copy(
        update={
            "noise_multiplier": result.mechanism.noise_multiplier,
            "sample_rate": result.mechanism.sample_rate,
            "steps": result.mechanism.steps,
        }
    )

    # (4): commit before the update leaves (a failed send still counts: fail closed).
    ledger.commit(spent)
    epsilon = ledger.epsilon()
    metrics = MetricRecord(
        {
            "num-examples": num_patients,
            "server-round": server_round,
            "train-loss": result.mean_loss,
            "epsilon": epsilon,
            "noise-multiplier": result.mechanism.noise_multiplier,
            "sample-rate": result.mechanism.sample_rate,
            "dp-steps": result.mechanism.steps,
        }
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": metrics,
            SITE_RECORD_KEY: ConfigRecord({"site-id": site.site_id}),
        }
    )
    return Message(content=content, reply_to=msg)


def _evaluate(msg: Message, site: SiteConfig) -> Message:
    run = _run_config(msg)
    server_round = _server_round(msg)
    model = _load_global_model(msg, run)
    series = _load_series(site.data_dir / "heldout.safetensors")
    if len(series.patient_names) < site.min_heldout_patients:
        raise ConfigError(
            f"site {site.site_id} holds out {len(series.patient_names)} patients, fewer than "
            f"{site.min_heldout_patients}: no metrics reported"
        )
    windows = all_windows(
        series.cgm_mg_dl,
        series.insulin_u,
        series.carbs_g,
        run.twin.history_steps,
        run.twin.horizon_steps,
        stride=run.eval_stride_steps,
    )
    metrics = forecast_metrics(model, windows)
    num_windows = int(metrics.pop("windows"))
    record = MetricRecord(
        {
            **metrics,
            "num-examples": num_windows,
            "heldout-patients": len(series.patient_names),
            "server-round": server_round,
        }
    )
    content = RecordDict(
        {"metrics": record, SITE_RECORD_KEY: ConfigRecord({"site-id": site.site_id})}
    )
    return Message(content=content, reply_to=msg)
