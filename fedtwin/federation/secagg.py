"""Secure aggregation (SecAgg+): the coordinator learns only the weighted sum of site updates.

Flower 1.42 runs SecAgg+ only on its legacy path: ``LegacyContext`` + ``DefaultWorkflow`` with
``SecAggPlusWorkflow`` on the coordinator, a legacy ``FedAvg`` strategy, and ``secaggplus_mod``
on the sites' train handler. Each site quantises its update (values clipped to
``[-clipping_range, clipping_range]``), weights it by its number of examples (at most
``max_weight``), masks it with pairwise and private masks agreed through Shamir-shared keys, and
sends only the masked vector; the coordinator can unmask only the sum of at least
``reconstruction_threshold`` sites. Dropped sites' masks are reconstructed from the shares of
the others.

What changes in the coordinator's strategy (:class:`SecureFedAvg`) compared with the plain path:

* identity is still checked fail closed (site id and enrolled audit key travel in the site's
  plain-text fit metrics); a reply whose identity does not verify is dropped;
* there is no per-site update to hash or validate: the log has no ``update_received`` entries;
  the aggregate is validated instead (shapes, finite, change norm at most ``max_update_norm``;
  SecAgg+ dequantises to float64, cast back to the model's dtypes) and a failing aggregate is
  not applied (``error_raised``);
* ``aggregated`` names the aggregate's digest and every site whose masked vector was summed;
* there is no federated evaluation (and no per-round cosigning); the sites cosign the final
  checkpoint as on the plain path.

Site side (:func:`legacy_train`): the same guard rails as the plain path
(:func:`fedtwin.federation.site_round.train_round`: policy, consent, ledger, DP); only the wire
format differs (legacy ``FitIns``/``FitRes`` records). Metrics are *not* masked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, RecordDict
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.serverapp import Grid

from fedtwin.audit import Aggregated, ErrorRaised, SiteJoined, SiteRefused, update_digest
from fedtwin.errors import ConfigError, FedTwinError
from fedtwin.federation.audited import REFUSAL_REASONS, CoordinatorAudit
from fedtwin.federation.client import RUN_CONFIG_KEY
from fedtwin.federation.collector import RoundCollector
from fedtwin.federation.config import RunConfig
from fedtwin.federation.site_round import RoundClock, open_party, train_round
from fedtwin.federation.sites import SiteResolver
from fedtwin.twins import GlucoseTwin

LEGACY_FIT_PARAMETERS = "fitins.parameters"
SECAGG_CONFIGS = "secaggplus_configs"


def _state(arrays: ArrayRecord) -> tuple[list[str], list[np.ndarray]]:
    keys = list(arrays.keys())
    return keys, [arrays[k].numpy() for k in keys]


class SecureFedAvg(LegacyFedAvg):  # type: ignore[misc]
    """Flower's legacy FedAvg with fedtwin's identity checks, audit and aggregate validation."""

    def __init__(
        self,
        run: RunConfig,
        audit: CoordinatorAudit,
        collector: RoundCollector,
        initial: ArrayRecord,
    ) -> None:
        self.run = run
        self.audit = audit
        self.collector = collector
        self.keys, values = _state(initial)
        self.global_values = values
        self.aggregates: dict[int, list[np.ndarray]] = {}
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=run.min_sites,
            min_evaluate_clients=0,
            min_available_clients=run.min_sites,
            initial_parameters=ndarrays_to_parameters(values),
            on_fit_config_fn=self._fit_config,
            accept_failures=True,
        )

    def _fit_config(self, server_round: int) -> dict[str, Scalar]:
        return {RUN_CONFIG_KEY: self.run.to_json(), "server-round": server_round}

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Remember the round's global model; delegate."""
        self.global_values = parameters_to_ndarrays(parameters)
        return list(super().configure_fit(server_round, parameters, client_manager))

    def _identify(self, server_round: int, proxy: ClientProxy, fit: FitRes) -> str | None:
        audit = self.audit
        claimed = str(fit.metrics.get("site-id", ""))
        enrolled = audit.site_keys.get(claimed)
        if enrolled is None or str(fit.metrics.get("audit-key", "")) != enrolled.encode():
            audit.log.record(
                ErrorRaised,
                run_id=self.run.run_id,
                round=server_round,
                where=f"round {server_round} secure aggregation",
                error_class="IdentityRejected",
                message=f"node {proxy.node_id}: site {claimed or '?'} is not enrolled "
                "with the audit key it presented",
            )
            return None
        audit.node_sites[int(proxy.node_id)] = claimed
        if claimed not in audit.joined:
            audit.joined.add(claimed)
            audit.log.record(
                SiteJoined,
                run_id=self.run.run_id,
                round=server_round,
                site_id=claimed,
                identity_fingerprint=enrolled.fingerprint,
            )
        return claimed

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Check identities, log refusals, validate and log the (already summed) aggregate."""
        log, run_id = self.audit.log, self.run.run_id
        per_site: dict[str, dict[str, float]] = {}
        with log.batch():
            for failure in failures:
                if isinstance(failure, tuple) and isinstance(failure[1], FitRes):
                    continue
                reason = str(failure)[:500] or "no reply"
                code = next((c for c in REFUSAL_REASONS if str(c) in reason), None)
                log.record(
                    SiteRefused,
                    run_id=run_id,
                    round=server_round,
                    site_id="unknown",
                    reason_code=REFUSAL_REASONS.get(code, "site-error") if code else "site-error",
                    reason=reason,
                )
            for proxy, fit in results:
                site = self._identify(server_round, proxy, fit)
                if site is not None:
                    per_site[site] = {
                        k: float(v) for k, v in fit.metrics.items() if isinstance(v, int | float)
                    }
            if len(per_site) != len(results) or not results:
                return None, {}  # an unidentified masked vector is in the sum: not applied
            aggregated, _ = super().aggregate_fit(server_round, results, [])
            if aggregated is None:
                return None, {}
            # SecAgg+ dequantises into float64: back to the model's dtypes (same shapes only).
            values = [
                v.astype(g.dtype) if v.shape == g.shape else v
                for v, g in zip(
                    parameters_to_ndarrays(aggregated), self.global_values, strict=False
                )
            ]
            problem = self._problem(values)
            if problem is not None:
                log.record(
                    ErrorRaised,
                    run_id=run_id,
                    round=server_round,
                    where=f"round {server_round} secure aggregation",
                    error_class="AggregateRejected",
                    message=problem,
                )
                return None, {}
            self.collector.train[server_round] = per_site
            self.aggregates[server_round] = values
            log.record(
                Aggregated,
                run_id=run_id,
                round=server_round,
                model_version_hash=update_digest(dict(zip(self.keys, values, strict=True))),
                contributors=tuple(sorted(per_site)),
            )
        return ndarrays_to_parameters(values), {"sites": len(per_site)}

    def _problem(self, values: list[np.ndarray]) -> str | None:
        if len(values) != len(self.global_values):
            return f"aggregate has {len(values)} arrays, expected {len(self.global_values)}"
        squared = 0.0
        for key, value, expected in zip(self.keys, values, self.global_values, strict=True):
            if value.shape != expected.shape or value.dtype != expected.dtype:
                return f"aggregate array {key} is {value.dtype}{value.shape}, not the model's"
            if not np.isfinite(value).all():
                return f"aggregate array {key} has non-finite values"
            squared += float(np.sum((value.astype(np.float64) - expected) ** 2))
        if squared**0.5 > self.run.max_update_norm:
            return f"aggregate change norm {squared**0.5:.3g} exceeds {self.run.max_update_norm}"
        return None


def run_secure_rounds(
    grid: Grid,
    run: RunConfig,
    audit: CoordinatorAudit,
    collector: RoundCollector,
    initial: ArrayRecord,
) -> ArrayRecord:
    """Run ``run.num_rounds`` SecAgg+ rounds; return the final global model."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    strategy = SecureFedAvg(run, audit, collector, initial)
    context = LegacyContext(
        context=Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=run.num_rounds, round_timeout=run.round_timeout_s),
        strategy=strategy,
    )
    sites = max(run.min_sites, 2)
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=sites,
            reconstruction_threshold=max(2, sites // 2 + 1),
            timeout=run.round_timeout_s,
        )
    )
    workflow(grid, context)
    if not strategy.aggregates:
        return initial
    last = strategy.aggregates[max(strategy.aggregates)]
    return ArrayRecord({k: Array(v) for k, v in zip(strategy.keys, last, strict=True)})


def is_secure_fit(msg: Message) -> bool:
    """True for a legacy fit message (SecAgg+ path), False for a Message-API train message."""
    return msg.has_content() and (
        LEGACY_FIT_PARAMETERS in msg.content.array_records
        or SECAGG_CONFIGS in msg.content.config_records
    )


def secure_aggregation_mod(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """``secaggplus_mod`` for SecAgg+ messages only; any other message passes through."""
    from flwr.client.mod import secaggplus_mod

    if is_secure_fit(msg) and SECAGG_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _global_model(run: RunConfig, values: list[np.ndarray]) -> GlucoseTwin:
    """The run's twin with the global arrays (in state-dict order), checked like the plain path."""
    import torch

    model = GlucoseTwin(run.twin)
    keys = list(model.state_dict())
    if len(values) != len(keys):
        raise ConfigError("global model does not match the run's twin architecture")
    try:
        model.load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in zip(keys, values, strict=True)},
            strict=True,
        )
    except (RuntimeError, ValueError) as error:
        raise ConfigError("global model does not match the run's twin architecture") from error
    if not all(torch.isfinite(t).all() for t in model.state_dict().values()):
        raise ConfigError("global model has non-finite values")
    return model


def legacy_train(
    msg: Message,
    context: Context,
    resolve_site: SiteResolver,
    clock: RoundClock,
    refusal_code: Callable[[Exception], int],
) -> Message:
    """The site's train step for a legacy fit message: same guard rails, FitRes on the wire."""
    try:
        site = resolve_site(context)
        party = open_party(site)
    except FedTwinError as refusal:
        return Message(Error(refusal_code(refusal), str(refusal)), reply_to=msg)
    try:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        run = RunConfig.from_json(str(fitins.config.get(RUN_CONFIG_KEY, "")))
        server_round = fitins.config.get("server-round", 0)
        if not isinstance(server_round, int) or server_round < 1:
            raise ConfigError("fit message carries no valid server-round")
        model = _global_model(run, parameters_to_ndarrays(fitins.parameters))
        outcome = train_round(party, run, server_round, model, clock(run, server_round))
        metrics: dict[str, Scalar] = {
            k: float(v) for k, v in outcome.metrics.items() if k != "num-examples"
        }
        metrics["site-id"] = site.site_id
        metrics["audit-key"] = party.signer.verifier_key.encode()
        fitres = FitRes(
            status=Status(code=Code.OK, message=""),
            parameters=ndarrays_to_parameters([v.numpy() for v in outcome.state_dict.values()]),
            num_examples=int(outcome.metrics["num-examples"]),
            metrics=metrics,
        )
        return Message(content=compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
    except FedTwinError as refusal:
        return Message(Error(refusal_code(refusal), str(refusal)), reply_to=msg)
    finally:
        party.close()
