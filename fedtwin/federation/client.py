"""The site's ClientApp: Flower message handlers around the site's guard rails.

The handlers only translate messages: each opens the site's audit log, hands the validated
run config and global model to :mod:`fedtwin.federation.site_round` (where the numbered,
fail-closed steps live), and turns a refusal into an error reply with a stable code. The twin
model and the aggregation strategy know nothing of these rules.

Messages: ``train`` (guard rails, DP training, release), ``evaluate`` (cosign the
coordinator's checkpoint of the previous round, then aggregate metrics on consenting held-out
patients) and ``query`` (cosign the coordinator's final checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtwin.errors import (
    BudgetExhausted,
    ConfigError,
    ConsentDenied,
    FedTwinError,
    IngestError,
    VerificationError,
)
from fedtwin.federation.config import RunConfig
from fedtwin.federation.site_round import (
    RoundClock,
    SiteParty,
    cosign,
    evaluate_round,
    open_party,
    train_round,
    wall_clock,
)
from fedtwin.federation.sites import SiteResolver
from fedtwin.twins import GlucoseTwin

RUN_CONFIG_KEY = "run-config"
SITE_RECORD_KEY = "site"
AUDIT_RECORD_KEY = "audit"
EVALUATION_RECORD_KEY = "evaluation"

# Error codes of a site's refusal (Flower reserves small numbers for its own errors).
REFUSED_BUDGET = 4101
REFUSED_CONFIG = 4102
REFUSED_DATA = 4103
REFUSED_POLICY = 4104
REFUSED_INTEGRITY = 4105
REFUSED_APP = 4106  # the app bundle is not approved by the site (fedtwin.deploy.app_gate)

_REFUSAL_CODES: tuple[tuple[type[Exception], int], ...] = (
    (BudgetExhausted, REFUSED_BUDGET),
    (ConsentDenied, REFUSED_POLICY),
    (VerificationError, REFUSED_INTEGRITY),
    (IngestError, REFUSED_DATA),
    (ConfigError, REFUSED_CONFIG),
    (FedTwinError, REFUSED_CONFIG),
)

Handler = Callable[[Message, SiteParty, RunConfig, int, RoundClock], RecordDict]


def make_client_app(resolve_site: SiteResolver, clock: RoundClock = wall_clock) -> ClientApp:
    """Build the site ClientApp.

    Parameters
    ----------
    resolve_site : SiteResolver
        Maps a node's context to its site config.
    clock : RoundClock
        The time each round happens at for the site (consent is evaluated then); the wall
        clock in deployments, a simulated study calendar in the demo.
    """
    from fedtwin.federation.packing import packed_arrays_mod
    from fedtwin.federation.secagg import is_secure_fit, legacy_train, secure_aggregation_mod

    app = ClientApp(mods=[packed_arrays_mod])

    @app.train(mods=[secure_aggregation_mod])
    def train(msg: Message, context: Context) -> Message:
        if is_secure_fit(msg):  # SecAgg+ (Flower's legacy records), same guard rails
            return legacy_train(msg, context, resolve_site, clock, _refusal_code)
        return _guarded(msg, context, resolve_site, clock, _train)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return _guarded(msg, context, resolve_site, clock, _evaluate)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return _guarded(msg, context, resolve_site, clock, _cosign_only)

    return app


def _refusal_code(error: Exception) -> int:
    return next(code for kind, code in _REFUSAL_CODES if isinstance(error, kind))


def _guarded(
    msg: Message,
    context: Context,
    resolve_site: SiteResolver,
    clock: RoundClock,
    handler: Handler,
) -> Message:
    try:
        site = resolve_site(context)
        party = open_party(site)
    except FedTwinError as refusal:
        return Message(Error(_refusal_code(refusal), str(refusal)), reply_to=msg)
    try:
        run = _run_config(msg)
        content = handler(msg, party, run, _server_round(msg), clock)
        content[SITE_RECORD_KEY] = ConfigRecord(
            {"site-id": site.site_id, "audit-key": party.signer.verifier_key.encode()}
        )
        return Message(content=content, reply_to=msg)
    except FedTwinError as refusal:
        return Message(Error(_refusal_code(refusal), str(refusal)), reply_to=msg)
    finally:
        party.close()


def _config(msg: Message) -> ConfigRecord:
    config = msg.content.config_records.get("config")
    if config is None:
        raise ConfigError("message carries no config record")
    return config


def _run_config(msg: Message) -> RunConfig:
    config = _config(msg)
    if RUN_CONFIG_KEY not in config:
        raise ConfigError("message carries no run config")
    return RunConfig.from_json(str(config[RUN_CONFIG_KEY]))


def _server_round(msg: Message) -> int:
    value = _config(msg).get("server-round", 0)
    if not isinstance(value, int) or value < 0:
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


def _train(
    msg: Message, party: SiteParty, run: RunConfig, server_round: int, clock: RoundClock
) -> RecordDict:
    if server_round < 1:
        raise ConfigError("train message carries no valid server-round")
    model = _load_global_model(msg, run)
    outcome = train_round(party, run, server_round, model, clock(run, server_round))
    metrics = {k: v for k, v in outcome.metrics.items() if k != "num-examples"}
    return RecordDict(
        {
            "arrays": ArrayRecord(outcome.state_dict),
            "metrics": MetricRecord(
                {**metrics, "num-examples": int(outcome.metrics["num-examples"])}
            ),
        }
    )


def _cosignature(msg: Message, party: SiteParty, run: RunConfig, server_round: int) -> ConfigRecord:
    audit = msg.content.config_records.get(AUDIT_RECORD_KEY)
    if audit is None or "checkpoint" not in audit:
        return ConfigRecord()
    proof = audit.get("proof", [])
    line = cosign(
        party,
        run,
        server_round or None,
        str(audit["checkpoint"]),
        [str(h) for h in proof] if isinstance(proof, list) else [],
    )
    return ConfigRecord({"cosignature": line})


def _evaluate(
    msg: Message, party: SiteParty, run: RunConfig, server_round: int, clock: RoundClock
) -> RecordDict:
    # Cosigning comes first and its refusal refuses the reply; a refused *evaluation* still
    # returns the cosignature, with zero examples and the reason (the coordinator drops it
    # from the metrics).
    cosigned = _cosignature(msg, party, run, server_round)
    model = _load_global_model(msg, run)
    try:
        metrics = evaluate_round(party, run, server_round, model, clock(run, server_round))
    except (ConfigError, ConsentDenied) as refusal:
        return RecordDict(
            {
                "metrics": MetricRecord({"num-examples": 0, "server-round": server_round}),
                AUDIT_RECORD_KEY: cosigned,
                EVALUATION_RECORD_KEY: ConfigRecord(
                    {"refused": _refusal_code(refusal), "reason": str(refusal)}
                ),
            }
        )
    windows = int(cast(float, metrics.pop("windows")))
    record = MetricRecord({**metrics, "num-examples": windows, "server-round": server_round})
    return RecordDict({"metrics": record, AUDIT_RECORD_KEY: cosigned})


def _cosign_only(
    msg: Message, party: SiteParty, run: RunConfig, server_round: int, clock: RoundClock
) -> RecordDict:
    return RecordDict({AUDIT_RECORD_KEY: _cosignature(msg, party, run, server_round)})
