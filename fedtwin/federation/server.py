"""The coordinator's ServerApp: FedAvg over sites, validation, audit trail, outputs on disk.

The ServerApp never sees patient data: it sends the global twin and the run config, receives
DP-protected updates and aggregate metrics, checks site identities and validates updates,
aggregates them with Flower's ``FedAvg``, keeps a signed, cosigned audit log of all of it
(:mod:`.audited`) and writes the run directory (:mod:`.outputs`).

Order of a run (the coordinator's log records each step):
``run_started`` → per round: refusals, ``site_joined`` (first reply), ``update_received``,
``update_rejected``, ``aggregated``, a checkpoint the sites cosign in their evaluate replies,
the round's model and state in ``resume/`` (:mod:`.resume`) →
after the last round: the model is written, ``model_exported``, ``run_finished``, a final
checkpoint the sites cosign through a query message, and a last self-signed checkpoint that
covers the cosignature records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from pydantic import BaseModel, ConfigDict, Field

from fedtwin._internal.code_digest import code_digest
from fedtwin.audit import (
    AuditLayout,
    AuditLog,
    AuditSigner,
    ModelExported,
    RunFinished,
    RunStarted,
    VerifierKey,
    load_verifier_key,
    write_verifier_key,
)
from fedtwin.consent import load_consortium_policy, policy_hash
from fedtwin.errors import ConfigError, FederationError, VerificationError
from fedtwin.federation.audited import AUDIT_RECORD_KEY, AuditedStrategy, CoordinatorAudit
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
from fedtwin.federation.resume import (
    ResumableStrategy,
    RoundState,
    load_round_state,
    write_round_state,
)
from fedtwin.federation.secagg import run_secure_rounds
from fedtwin.federation.validation import RejectedUpdate, SiteRefusal, ValidatedStrategy
from fedtwin.twins import GlucoseTwin

COORDINATOR_PARTY = "coordinator"


class CoordinatorSetup(BaseModel):
    """The coordinator's own files (never sent to sites).

    Attributes
    ----------
    out_dir : Path
        Where the run directory's files go (model, model card, metrics, ``audit/``).
    consortium_policy : Path
        The consortium policy the run is under (TOML).
    audit_key : Path
        The coordinator's Ed25519 audit signing key (PEM, 0600).
    site_keys : Path
        Folder with ``<site-id>.vkey``: the audit verifier key of every enrolled site.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dir: Path
    consortium_policy: Path
    audit_key: Path
    site_keys: Path
    data_description: str = Field("unspecified", max_length=500)

    def enrolled_sites(self) -> dict[str, VerifierKey]:
        """Site id → enrolled audit key (``<site-keys>/<site-id>.vkey``)."""
        if not self.site_keys.is_dir():
            raise ConfigError(f"{self.site_keys}: folder of enrolled site keys missing")
        return {
            path.name.removesuffix(".vkey"): load_verifier_key(path)
            for path in sorted(self.site_keys.glob("*.vkey"))
        }


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
    return ValidatedStrategy(
        inner,
        max_update_norm=run.max_update_norm,
        max_norm_ratio=run.max_norm_ratio,
        min_updates=run.min_updates,
    )


def _app_digest(grid: Grid) -> str:
    """The Flower app bundle's hash when Flower knows it, else the fedtwin code's digest."""
    fab_hash = str(getattr(getattr(grid, "run", None), "fab_hash", "") or "")
    if len(fab_hash) == 64 and all(c in "0123456789abcdef" for c in fab_hash):
        return f"sha256:{fab_hash}"
    return code_digest()


def _keep_verifier_key(key: VerifierKey, path: Path) -> None:
    """Write a party's verifier key next to the log; a resumed run finds the same key there."""
    if path.is_file():
        if load_verifier_key(path).encode() != key.encode():
            raise VerificationError(f"{path}: holds another key than this run's {key.name}")
        return
    write_verifier_key(key, path)


def _open_audit(run: RunConfig, setup: CoordinatorSetup) -> CoordinatorAudit:
    signer = AuditSigner.load(setup.audit_key, COORDINATOR_PARTY)
    layout = AuditLayout(setup.out_dir / "audit")
    layout.root.mkdir(parents=True, exist_ok=True)
    site_keys = setup.enrolled_sites()
    _keep_verifier_key(signer.verifier_key, layout.key_path(COORDINATOR_PARTY))
    for site, key in site_keys.items():
        _keep_verifier_key(key, layout.key_path(site))
    return CoordinatorAudit(
        log=AuditLog.open(layout.root, COORDINATOR_PARTY),
        signer=signer,
        origin=f"fedtwin/{run.run_id}/{COORDINATOR_PARTY}",
        run_id=run.run_id,
        site_keys=site_keys,
    )


def _final_cosigning(grid: Grid, run: RunConfig, audit: CoordinatorAudit) -> None:
    """Ask every connected site to cosign the final checkpoint (a ``query`` message)."""
    audit.checkpoint()
    messages = [
        Message(
            content=RecordDict(
                {
                    "config": ConfigRecord({RUN_CONFIG_KEY: run.to_json(), "server-round": 0}),
                    AUDIT_RECORD_KEY: audit.audit_record_for(node),
                }
            ),
            message_type=MessageType.QUERY,
            dst_node_id=node,
        )
        for node in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages, timeout=run.round_timeout_s)
    audit.collect_cosignatures(None, replies)
    # The cosignature records are themselves covered by one more (self-signed) checkpoint.
    audit.checkpoint()


def _restore(
    state: RoundState,
    collector: RoundCollector,
    validated: ValidatedStrategy,
    audit: CoordinatorAudit,
) -> None:
    """Put a resumed run's metrics, rejections and site identities back where they were."""
    collector.train.update(state.train)
    collector.evaluate.update(state.evaluate)
    validated.rejected.extend(RejectedUpdate(*item) for item in state.rejected)
    validated.refusals.extend(SiteRefusal(*item) for item in state.refusals)
    audit.node_sites.update(state.node_sites)
    audit.joined.update(state.joined)


def _round_checkpointer(
    run: RunConfig,
    out_dir: Path,
    collector: RoundCollector,
    validated: ValidatedStrategy,
    audit: CoordinatorAudit,
) -> Callable[[int, ArrayRecord], None]:
    """Write ``<out_dir>/resume/`` after each completed round (:mod:`.resume`)."""

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        state = RoundState(
            run_id=run.run_id,
            config_hash=run.config_hash,
            completed_round=server_round,
            model_file=f"round-{server_round}.safetensors",
            model_sha256="sha256:" + "0" * 64,  # set from the written file
            audit_log_size=audit.log.size,
            train=collector.train,
            evaluate=collector.evaluate,
            rejected=tuple((r.server_round, r.site_id, r.reason) for r in validated.rejected),
            refusals=tuple(
                (r.server_round, r.node_id, r.code, r.reason) for r in validated.refusals
            ),
            node_sites=audit.node_sites,
            joined=tuple(sorted(audit.joined)),
        )
        write_round_state(out_dir, state, arrays)

    return checkpoint


def run_coordinator(
    grid: Grid,
    run: RunConfig,
    setup: CoordinatorSetup,
    on_round_evaluated: RoundCallback | None = None,
    outcome: CoordinatorOutcome | None = None,
    resume: bool = False,
) -> CoordinatorOutcome:
    """Federate ``run.num_rounds`` rounds over the grid's sites and write ``setup.out_dir``.

    With ``resume``, continue the run after the last round checkpointed in ``setup.out_dir``
    (:mod:`.resume`); a new ``run_started`` entry in the same coordinator log marks the restart.
    """
    outcome = outcome or CoordinatorOutcome()
    outcome.collector.on_round_evaluated = on_round_evaluated
    policy = load_consortium_policy(setup.consortium_policy)
    if run.consortium_policy_hash != policy_hash(policy):
        raise ConfigError(f"{setup.consortium_policy}: not the policy this run was planned under")
    out_dir = setup.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    audit = _open_audit(run, setup)
    try:
        validated = build_strategy(run, outcome.collector)
        arrays = ArrayRecord(initial_model(run).state_dict())
        first_round = 1
        if resume:
            state, arrays = load_round_state(out_dir, run, audit.log.size)
            _restore(state, outcome.collector, validated, audit)
            first_round = state.completed_round + 1
        audit.log.record(
            RunStarted,
            run_id=run.run_id,
            study_id=run.study_id,
            purpose_code=run.purpose,
            legal_basis=policy.legal_basis,
            config_hash=run.config_hash,
            app_hash=_app_digest(grid),
            policy_hash=policy_hash(policy),
            num_rounds=run.num_rounds,
        )
        strategy = ResumableStrategy(
            AuditedStrategy(validated, audit),
            first_round,
            _round_checkpointer(run, out_dir, outcome.collector, validated, audit),
        )
        if run.secure_aggregation:
            if resume or run.central_dp is not None:
                raise ConfigError("secure aggregation runs without --resume and central DP")
            strategy.arrays = run_secure_rounds(grid, run, audit, outcome.collector, arrays)
        elif first_round <= run.num_rounds:
            strategy.start(
                grid=grid,
                initial_arrays=arrays,
                num_rounds=run.num_rounds - first_round + 1,
                timeout=run.round_timeout_s,
                train_config=ConfigRecord({RUN_CONFIG_KEY: run.to_json()}),
                evaluate_config=ConfigRecord({RUN_CONFIG_KEY: run.to_json()}),
            )
        if not outcome.collector.train:
            audit.log.record(RunFinished, run_id=run.run_id, status="failed", rounds_completed=0)
            raise FederationError("no site contributed an accepted update in any round")
        final = (strategy.arrays or arrays).to_torch_state_dict()
        outcome.version_hash = write_model(out_dir, final, run)
        write_json(
            out_dir / METRICS_FILE,
            metrics_document(outcome.collector, validated.rejected, validated.refusals),
        )
        write_json(
            out_dir / MODEL_CARD_FILE,
            model_card(run, outcome.version_hash, outcome.collector, setup.data_description),
        )
        audit.log.record(
            ModelExported,
            run_id=run.run_id,
            model_version_hash=outcome.version_hash,
            path="model.safetensors",
        )
        audit.log.record(
            RunFinished,
            run_id=run.run_id,
            status="completed",
            rounds_completed=len(outcome.collector.train),
        )
        _final_cosigning(grid, run, audit)
    finally:
        audit.log.close()
    return outcome


def make_server_app(
    run: RunConfig | None = None,
    setup: CoordinatorSetup | None = None,
    on_round_evaluated: Callable[[int, RoundCollector], None] | None = None,
    outcome: CoordinatorOutcome | None = None,
) -> ServerApp:
    """Build the ServerApp; without ``run``/``setup`` they come from ``context.run_config``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved_setup = setup or setup_from_context(context)
        resolved_run = run or run_config_from_context(context, resolved_setup)
        resume = bool(context.run_config.get("resume", False))
        run_coordinator(grid, resolved_run, resolved_setup, on_round_evaluated, outcome, resume)

    return app


def setup_from_context(context: Context) -> CoordinatorSetup:
    """The coordinator's files from ``[tool.flwr.app.config]`` (``consortium-dir`` layout).

    ``consortium-dir`` holds ``consortium-policy.toml``, ``coordinator.audit.pem`` and
    ``site-keys/<site-id>.vkey`` (what ``fedtwin pki`` and the demo write).
    """
    cfg = context.run_config
    folder = Path(str(cfg.get("consortium-dir", "runs/flwr-data/consortium")))
    return CoordinatorSetup(
        out_dir=Path(str(cfg.get("out-dir", "runs/flwr-run"))),
        consortium_policy=folder / "consortium-policy.toml",
        audit_key=folder / "coordinator.audit.pem",
        site_keys=folder / "site-keys",
    )


def run_config_from_context(context: Context, setup: CoordinatorSetup) -> RunConfig:
    """Map ``[tool.flwr.app.config]`` keys onto a :class:`RunConfig` under the setup's policy."""
    cfg = context.run_config
    policy = load_consortium_policy(setup.consortium_policy)
    return RunConfig.for_policy(
        policy,
        run_id=str(cfg.get("run-id", "") or f"flwr-{context.run_id}"),
        num_rounds=int(cfg.get("num-server-rounds", 3)),
        seed=int(cfg.get("seed", 0)),
        min_sites=int(cfg.get("min-sites", 3)),
        round_timeout_s=float(cfg.get("round-timeout-s", 600.0)),
    )
