"""The coordinator's audit trail, as a wrapper around its (validated) strategy.

What the coordinator's log records, per round: every site's refusal (``site_refused``), the
first reply of each site (``site_joined``, with the fingerprint of its enrolled audit key),
every update received with its digest, every update rejected by validation or identity, and the
aggregation (new model version hash and contributors). After aggregating, the coordinator signs
a checkpoint of its log and sends it to every site with the evaluate message, with a proof of
consistency from the last checkpoint that site cosigned; the sites' cosignatures come back in
the evaluate replies and are verified and kept next to the checkpoint.

Identity is checked, fail closed: a reply whose site id is not enrolled, or whose audit key is
not the enrolled key of that site, is rejected before validation and never aggregated. The
wrapped strategy knows nothing of any of this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedtwin.audit import (
    Aggregated,
    AuditLog,
    AuditSigner,
    CheckpointCosigned,
    ErrorRaised,
    NoteSignature,
    SignedCheckpoint,
    SiteJoined,
    SiteRefused,
    UpdateReceived,
    UpdateRejected,
    VerifierKey,
    add_cosignature,
    last_cosigned_size,
    update_digest,
)
from fedtwin.errors import VerificationError
from fedtwin.federation.validation import RejectedUpdate, ValidatedStrategy, site_of

SITE_RECORD_KEY = "site"
AUDIT_RECORD_KEY = "audit"

#: Refusal codes of the site ClientApp, as audit reason codes.
REFUSAL_REASONS = {
    4101: "budget-exhausted",
    4102: "config-refused",
    4103: "data-invalid",
    4104: "policy-or-consent-refused",
    4105: "integrity-refused",
    4106: "app-not-approved",
}


@dataclass
class CoordinatorAudit:
    """The coordinator's log, key and the enrolled sites' audit keys."""

    log: AuditLog
    signer: AuditSigner
    origin: str
    run_id: str
    site_keys: Mapping[str, VerifierKey]
    node_sites: dict[int, str] = field(default_factory=dict)
    joined: set[str] = field(default_factory=set)
    last_checkpoint: SignedCheckpoint | None = None

    def checkpoint(self) -> SignedCheckpoint:
        """Sign the log as it is now; sites will be asked to cosign it."""
        self.last_checkpoint = self.log.checkpoint(self.signer, self.origin)
        return self.last_checkpoint

    def audit_record_for(self, node_id: int) -> ConfigRecord:
        """The newest checkpoint and a consistency proof for the site behind ``node_id``."""
        signed = self.last_checkpoint
        if signed is None:
            return ConfigRecord()
        site = self.node_sites.get(node_id)
        key = self.site_keys.get(site) if site is not None else None
        last = last_cosigned_size(self.log.checkpoints_dir, key) if key is not None else None
        proof = self.log.consistency_proof(last, signed.checkpoint.size) if last else []
        return ConfigRecord(
            {"checkpoint": signed.encode().decode(), "proof": [h.hex() for h in proof]}
        )

    def collect_cosignatures(self, server_round: int | None, replies: Iterable[Message]) -> None:
        """Verify and keep every cosignature in ``replies``; log each one."""
        signed = self.last_checkpoint
        if signed is None:
            return
        head = signed.checkpoint
        for reply in replies:
            if not reply.has_content():
                continue
            audit = reply.content.config_records.get(AUDIT_RECORD_KEY)
            site = self.node_sites.get(reply.metadata.src_node_id)
            if audit is None or "cosignature" not in audit or site is None:
                continue
            try:
                add_cosignature(
                    self.log.checkpoints_dir,
                    head.size,
                    NoteSignature.from_line(str(audit["cosignature"])),
                    self.site_keys[site],
                )
            except (VerificationError, ValueError, KeyError) as error:
                self.log.record(
                    ErrorRaised,
                    run_id=self.run_id,
                    round=server_round,
                    where=f"cosignature of {site}",
                    error_class=type(error).__name__,
                    message=str(error)[:500] or type(error).__name__,
                )
                continue
            self.log.record(
                CheckpointCosigned,
                run_id=self.run_id,
                round=server_round,
                cosigner=site,
                origin=head.origin,
                size=head.size,
                root=head.root.hex(),
            )


class AuditedStrategy(Strategy):
    """Log what the coordinator receives and decides; check site identities; cosigning."""

    def __init__(self, inner: ValidatedStrategy, audit: CoordinatorAudit) -> None:
        self.inner = inner
        self.audit = audit

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Log refusals and receipts, drop impostors, aggregate, log the new model version."""
        audit, log, run_id = self.audit, self.audit.log, self.audit.run_id
        identified: list[Message] = []
        rejected_before = len(self.inner.rejected)
        with log.batch():
            for reply in replies:
                node = reply.metadata.src_node_id
                if reply.has_error():
                    refusing = audit.node_sites.get(node, f"node-{node}")
                    code = int(reply.error.code)
                    log.record(
                        SiteRefused,
                        run_id=run_id,
                        round=server_round,
                        site_id=refusing,
                        reason_code=REFUSAL_REASONS.get(code, "site-error"),
                        reason=str(reply.error.reason)[:500] or "refused",
                    )
                    identified.append(reply)
                    continue
                site = self._identify(server_round, reply)
                if site is None:
                    continue
                audit.node_sites[node] = site
                arrays = next(iter(reply.content.array_records.values()), None)
                reported = next(iter(reply.content.metric_records.values()), None)
                examples = reported.get("num-examples", 0) if reported is not None else 0
                log.record(
                    UpdateReceived,
                    run_id=run_id,
                    round=server_round,
                    site_id=site,
                    sha256=update_digest(arrays) if arrays is not None else "sha256:" + "0" * 64,
                    num_examples=int(examples) if isinstance(examples, int | float) else 0,
                )
                identified.append(reply)
            short_before = len(self.inner.short_rounds)
            aggregated, metrics = self.inner.aggregate_train(server_round, identified)
            for short in self.inner.short_rounds[short_before:]:
                log.record(
                    ErrorRaised,
                    run_id=run_id,
                    round=server_round,
                    where=f"round {server_round} aggregation",
                    error_class="QuorumNotMet",
                    message=f"{short.accepted} accepted updates, fewer than min_updates "
                    f"{short.required}: the global model is unchanged",
                )
            for rejection in self.inner.rejected[rejected_before:]:
                log.record(
                    UpdateRejected,
                    run_id=run_id,
                    round=server_round,
                    site_id=rejection.site_id if rejection.site_id != "?" else "unknown",
                    reason_code="validation-failed",
                    reason=rejection.reason[:500],
                )
            rejected = {r.site_id for r in self.inner.rejected[rejected_before:]}
            contributors = tuple(
                sorted(
                    audit.node_sites[r.metadata.src_node_id]
                    for r in identified
                    if r.has_content() and site_of(r) not in rejected
                )
            )
            if aggregated is not None and contributors:
                log.record(
                    Aggregated,
                    run_id=run_id,
                    round=server_round,
                    model_version_hash=update_digest(aggregated),
                    contributors=contributors,
                )
        return aggregated, metrics

    def _identify(self, server_round: int, reply: Message) -> str | None:
        """The enrolled site behind a reply, or None (rejected and logged)."""
        audit = self.audit
        record = reply.content.config_records.get(SITE_RECORD_KEY)
        claimed = str(record.get("site-id", "")) if record is not None else ""
        presented = str(record.get("audit-key", "")) if record is not None else ""
        enrolled = audit.site_keys.get(claimed)
        problem = None
        if enrolled is None:
            problem = f"site {claimed or '?'} is not enrolled"
        elif presented != enrolled.encode():
            problem = f"site {claimed} presented an audit key that is not its enrolled key"
        if problem is not None:
            self.inner.rejected.append(RejectedUpdate(server_round, claimed or "?", problem))
            return None
        if claimed not in audit.joined:
            audit.joined.add(claimed)
            audit.log.record(
                SiteJoined,
                run_id=audit.run_id,
                round=server_round,
                site_id=claimed,
                identity_fingerprint=enrolled.fingerprint,  # type: ignore[union-attr]
            )
        return claimed

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Checkpoint the log and add it (with a proof per site) to every evaluate message."""
        self.audit.checkpoint()
        messages = []
        for message in self.inner.configure_evaluate(server_round, arrays, config, grid):
            node = message.metadata.dst_node_id
            content = RecordDict(
                {
                    **dict(message.content.array_records.items()),
                    **dict(message.content.config_records.items()),
                    AUDIT_RECORD_KEY: self.audit.audit_record_for(node),
                }
            )
            messages.append(
                Message(
                    content=content,
                    message_type=message.metadata.message_type,
                    dst_node_id=node,
                )
            )
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Keep the cosignatures, then delegate the metrics of sites that evaluated."""
        replies = list(replies)
        self.audit.collect_cosignatures(server_round, replies)
        evaluated = [r for r in replies if r.has_error() or _examples(r) > 0]
        return self.inner.aggregate_evaluate(server_round, evaluated)


def _examples(reply: Message) -> float:
    """``num-examples`` of a reply's metrics (0 when absent)."""
    record = next(iter(reply.content.metric_records.values()), None)
    value = record.get("num-examples", 0) if record is not None else 0
    return float(value) if isinstance(value, int | float) else 0.0
