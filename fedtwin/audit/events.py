"""The closed vocabulary of audit events: one frozen pydantic model per kind of fact.

Invariants kept by every model here:

* the set of event kinds is closed: :data:`AuditEvent` is a union discriminated by the literal
  ``type`` field, and every model forbids unknown fields, so a reader never meets a fact it
  cannot name;
* every event states who wrote it (``actor``, a party id), when (``time``, UTC, from the writer's
  injected clock), for which run (``run_id``) and, where it belongs to one, which ``round``;
* ``seq`` (position in the log) and ``prev`` (hex leaf hash of the previous line, ``None`` for
  the first) are set by :class:`~fedtwin.audit.log.AuditLog` when the event is appended; they
  let a verifier name the exact entry that was removed, reordered or altered;
* no field ever holds a patient identifier: consent and privacy facts are counts and aggregates
  per site, updates and models are named by their SHA-256 digest;
* every float is finite; an unbounded ε (an accountant overflow) is stored as ``null``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    WrapSerializer,
    model_validator,
)

PARTY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""A party (coordinator or site) id; the same rule as a federation ``SiteId``."""

Party = Annotated[str, Field(pattern=PARTY_ID_PATTERN)]
RunId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
"""A content digest: ``sha256:`` and 64 lower-case hex digits (config, code, update, model)."""
TreeHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
"""A Merkle tree hash (leaf or root) as 64 lower-case hex digits."""
ReasonCode = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._:-]{0,63}$")]
Text = Annotated[str, Field(min_length=1, max_length=500)]
Count = Annotated[int, Field(ge=0, le=2**53 - 1)]
Round = Annotated[int, Field(ge=0, le=1_000_000)]


def _as_utc(value: datetime, default: SerializerFunctionWrapHandler) -> Any:
    return default(value.astimezone(UTC))


UtcTime = Annotated[AwareDatetime, WrapSerializer(_as_utc)]
"""A timezone-aware time, written in UTC (with a ``Z``); validation stays in pydantic-core."""


def _unbounded_as_none(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return None
    return value


Epsilon = Annotated[Annotated[float, Field(ge=0)] | None, BeforeValidator(_unbounded_as_none)]
"""ε per patient; ``None`` means unbounded (a positive infinity is stored as ``null``)."""


class EventBase(BaseModel):
    """Fields every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    actor: Party
    time: UtcTime
    run_id: RunId
    round: Round | None = None
    seq: Count | None = None
    prev: TreeHash | None = None


class RoundEvent(EventBase):
    """An event that belongs to one federated round."""

    @model_validator(mode="after")
    def _has_round(self) -> Self:
        if self.round is None:
            raise ValueError("round is required for this event")
        return self


class RunStarted(EventBase):
    """A federated run began: what it is for, under which legal basis, with which code."""

    type: Literal["run_started"] = "run_started"
    study_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    purpose_code: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    """Purpose of use, a v3-ActReason code such as ``HRESCH`` (healthcare research)."""
    legal_basis: Text
    """The legal basis as the consortium states it, e.g. ``GDPR Art. 9(2)(j)``."""
    config_hash: Digest
    app_hash: Digest
    """Digest of the code that ran (the Flower app / fedtwin build)."""
    policy_hash: Digest
    num_rounds: Annotated[int, Field(ge=1, le=1_000_000)]


class RunFinished(EventBase):
    """A federated run ended."""

    type: Literal["run_finished"] = "run_finished"
    status: Literal["completed", "failed"]
    rounds_completed: Round


class SiteJoined(EventBase):
    """A site was admitted to the run under an authenticated identity."""

    type: Literal["site_joined"] = "site_joined"
    site_id: Party
    identity_fingerprint: Digest


class SiteRefused(EventBase):
    """A site was not admitted (unknown identity, policy, …) or refused to take part."""

    type: Literal["site_refused"] = "site_refused"
    site_id: Party
    reason_code: ReasonCode
    reason: Text


class PolicyDecision(EventBase):
    """A site evaluated the run against its policy (purpose, model kind, ε cap, cohort size)."""

    type: Literal["policy_decision"] = "policy_decision"
    site_id: Party
    policy_version_hash: Digest
    allowed: bool
    reasons: tuple[Text, ...] = ()


class ConsentFiltered(EventBase):
    """Consent decided which of a site's patients a round may use (counts only)."""

    type: Literal["consent_filtered"] = "consent_filtered"
    site_id: Party
    consent_snapshot_time: UtcTime
    patients_total: Count
    patients_permitted: Count
    denied_by_reason: dict[ReasonCode, Count] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _every_patient_accounted_for(self) -> Self:
        denied = sum(self.denied_by_reason.values())
        if self.patients_permitted + denied != self.patients_total:
            raise ValueError(
                f"patients_permitted ({self.patients_permitted}) + denied ({denied}) "
                f"!= patients_total ({self.patients_total})"
            )
        return self


class BudgetNumbers(RoundEvent):
    """The numbers of one privacy-budget check: the spend and the ε it leads to."""

    site_id: Party
    epsilon_before: Epsilon
    epsilon_after: Epsilon
    epsilon_cap: Annotated[float, Field(gt=0)]
    delta: Annotated[float, Field(gt=0, lt=1)]
    noise_multiplier: Annotated[float, Field(gt=0)]
    max_grad_norm: Annotated[float, Field(gt=0)]
    sample_rate: Annotated[float, Field(gt=0, le=1)]
    steps: Annotated[int, Field(ge=1)]
    accountant: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")]


class BudgetChecked(BudgetNumbers):
    """The site's ledger answered ``can_spend`` before a round."""

    type: Literal["budget_checked"] = "budget_checked"
    allowed: bool


class BudgetCommitted(BudgetNumbers):
    """The site's ledger committed a round's spend after the round succeeded."""

    type: Literal["budget_committed"] = "budget_committed"


class BudgetRefused(BudgetNumbers):
    """The site refused a round because the spend would exceed its cap; nothing was spent."""

    type: Literal["budget_refused"] = "budget_refused"


class UpdateSent(RoundEvent):
    """What left a site: a model update, named by its digest (site side)."""

    type: Literal["update_sent"] = "update_sent"
    site_id: Party
    sha256: Digest
    num_examples: Count


class UpdateReceived(RoundEvent):
    """The coordinator received a site's update (same digest as the site's ``update_sent``)."""

    type: Literal["update_received"] = "update_received"
    site_id: Party
    sha256: Digest
    num_examples: Count


class UpdateRejected(RoundEvent):
    """The coordinator rejected a site's update (shape, non-finite values, norm, …)."""

    type: Literal["update_rejected"] = "update_rejected"
    site_id: Party
    reason_code: ReasonCode
    reason: Text
    sha256: Digest | None = None


class Aggregated(RoundEvent):
    """The coordinator aggregated a round's accepted updates into a new model version."""

    type: Literal["aggregated"] = "aggregated"
    model_version_hash: Digest
    contributors: Annotated[tuple[Party, ...], Field(min_length=1)]


class ModelExported(EventBase):
    """A model version was written out of the federation (file, registry, …)."""

    type: Literal["model_exported"] = "model_exported"
    model_version_hash: Digest
    path: Text


class CheckpointCosigned(EventBase):
    """A site cosigned a checkpoint of the coordinator's log (logged by both sides)."""

    type: Literal["checkpoint_cosigned"] = "checkpoint_cosigned"
    cosigner: Party
    origin: Text
    size: Count
    root: TreeHash


class LogRecovered(EventBase):
    """The writer found a torn last line (a crashed write) on opening and cut it off."""

    type: Literal["log_recovered"] = "log_recovered"
    discarded_bytes: Annotated[int, Field(ge=1)]
    discarded_sha256: Digest


class ErrorRaised(EventBase):
    """An error stopped part of the work; ``message`` must not contain patient data."""

    type: Literal["error_raised"] = "error_raised"
    where: Annotated[str, Field(min_length=1, max_length=200)]
    error_class: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]
    message: Text


AuditEvent = Annotated[
    RunStarted
    | RunFinished
    | SiteJoined
    | SiteRefused
    | PolicyDecision
    | ConsentFiltered
    | BudgetChecked
    | BudgetCommitted
    | BudgetRefused
    | UpdateSent
    | UpdateReceived
    | UpdateRejected
    | Aggregated
    | ModelExported
    | CheckpointCosigned
    | LogRecovered
    | ErrorRaised,
    Field(discriminator="type"),
]
"""Any audit event; validate with :data:`EVENT_ADAPTER`."""

EVENT_ADAPTER: TypeAdapter[AuditEvent] = TypeAdapter(AuditEvent)

EVENT_TYPES: dict[str, type[BaseModel]] = {
    model.model_fields["type"].default: model
    for model in (
        RunStarted,
        RunFinished,
        SiteJoined,
        SiteRefused,
        PolicyDecision,
        ConsentFiltered,
        BudgetChecked,
        BudgetCommitted,
        BudgetRefused,
        UpdateSent,
        UpdateReceived,
        UpdateRejected,
        Aggregated,
        ModelExported,
        CheckpointCosigned,
        LogRecovered,
        ErrorRaised,
    )
}
"""Every event model by its ``type`` literal."""
