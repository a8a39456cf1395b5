"""The coordinator's ServerApp: FedAvg over sites, update validation, outputs on disk.

The ServerApp never sees patient data: it sends the global twin and the run config, receives
DP-protected updates and aggregate metrics, validates updates (:mod:`.validation`), aggregates
them with Flower's ``FedAvg`` and writes the run directory (:mod:`.outputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from fedtwin.errors import FederationError
from fedtwin.federation.client import RUN_CONFIG_KEY
from fedtwin.federation.collector import RoundCallback, RoundCollector
from fedtwin.federation.config import RunConfig
from fedtwin.federation.outputs import (
    METRICS_FILE,
    MODEL_CARD_FILE,
    metrics_document,
    model_card,
    write_json,
    write_model,
)
from fedtwin.federation.validation import ValidatedStrategy
from fedtwin.twins import GlucoseTwin


@dataclass
class CoordinatorOutcome:
    """Filled in by the ServerApp when the run finished (read by the CLI afterwards)."""

    version_hash: str | None = None
    collector: RoundCollector = field(default_factory=RoundCollector)


def initial_model(run: RunConfig) -> GlucoseTwin:
    """The round-0 global twin, deterministic from the run seed."""
    torch.manual_seed(run.seed)
    return GlucoseTwin(run.twin)


def build_strategy(run: RunConfig, collector: RoundCollector) -> ValidatedStrategy:
    """FedAvg over every available site, optionally with central DP, behind update validation.

    Composition, outermost first: :class:`ValidatedStrategy` (drops malformed or oversized
    updates) → Flower's ``DifferentialPrivacyServerSideFixedClipping`` when
    ``run.central_dp`` is set (clips each site's update, adds noise to the average: site-level
    DP on top of every site's patient-level DP) → ``FedAvg``.
    """
    inner: Strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=run.min_sites,
        min_evaluate_nodes=run.min_sites,
        min_available_nodes=run.min_sites,
        train_metrics_aggr_fn=collector.aggregate_train,
        evaluate_metrics_aggr_fn=collector.aggregate_evaluate,
    )
    if run.central_dp is not None:
        inner = DifferentialPrivacyServerSideFixedClipping(
            inner,
            noise_multiplier=run.central_dp.noise_multiplier,
            clipping_norm=run.central_dp.clipping_norm,
            num_sampled_clients=run.min_sites,
        )
    return ValidatedStrategy(inner, max_update_norm=run.max_update_norm)


def run_coordinator(
    grid: Grid,
    run: RunConfig,
    out_dir: Path,
    data_description: str,
    on_round_evaluated: RoundCallback | None = None,
    outcome: CoordinatorOutcome | None = None,
) -> CoordinatorOutcome:
    """Federate ``run.num_rounds`` rounds over the grid's sites and write ``out_dir``."""
    outcome = outcome or CoordinatorOutcome()
    outcome.collector.on_round_evaluated = on_round_evaluated
    model = initial_model(run)
    strategy = build_strategy(run, outcome.collector)
    config = ConfigRecord({RUN_CONFIG_KEY: run.to_json()})
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=run.num_rounds,
        timeout=run.round_timeout_s,
        train_config=config,
        evaluate_config=ConfigRecord({RUN_CONFIG_KEY: run.to_json()}),
    )
    if not outcome.collector.train:
        raise FederationError("no site contributed an accepted update in any round")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = result.arrays.to_torch_state_dict()
    outcome.version_hash = write_model(out_dir, state, run)
    write_json(out_dir / METRICS_FILE, metrics_document(outcome.collector, strategy.rejected))
    write_json(
        out_dir / MODEL_CARD_FILE,
        model_card(run, outcome.version_hash, outcome.collector, data_description),
    )
    return outcome


def make_server_app(
    run: RunConfig | None = None,
    out_dir: Path | None = None,
    data_description: str = "unspecified",
    on_round_evaluated: Callable[[int, RoundCollector], None] | None = None,
    outcome: CoordinatorOutcome | None = None,
) -> ServerApp:
    """Build the ServerApp; without ``run``/``out_dir`` they come from ``context.run_config``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved_run = run or run_config_from_context(context)
        resolved_out = out_dir or Path(str(context.run_config.get("out-dir", "runs/flwr-run")))
        run_coordinator(
            grid, resolved_run, resolved_out, data_description, on_round_evaluated, outcome
        )

    return app


def run_config_from_context(context: Context) -> RunConfig:
    """Map ``[tool.flwr.app.config]`` keys onto a :class:`RunConfig`."""
    cfg = context.run_config
    return RunConfig.model_validate(
        {
            "num_rounds": int(cfg.get("num-server-rounds", 3)),
            "seed": int(cfg.get("seed", 0)),
            "delta": float(cfg.get("delta", 1e-5)),
            "min_sites": int(cfg.get("min-sites", 3)),
        }
    )
