"""Tamper-evident audit logs: typed events, RFC 9162 Merkle trees, signed and cosigned checkpoints.

Every party (coordinator, each site) appends typed events to its own ``<party>.audit.jsonl``
(one RFC 8785 JSON line each, the Merkle leaf data) through :class:`AuditLog`, signs a C2SP
checkpoint of it after every round, and sites cosign the coordinator's checkpoints through a
:class:`Cosigner` that refuses split views. An auditor verifies a log offline with
:func:`verify_log` (or a whole run directory with :func:`audit_run`), prints the HTML report
with :func:`write_report` and exports FHIR ``AuditEvent`` resources with :func:`audit_bundle`.
"""

from fedtwin.audit.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    add_cosignature,
    checkpoint_files,
    last_cosigned_size,
    read_checkpoint,
)
from fedtwin.audit.cosign import Cosigner
from fedtwin.audit.digest import update_digest
from fedtwin.audit.entries import EntryError, log_file, read_log_lines
from fedtwin.audit.events import (
    EVENT_ADAPTER,
    Aggregated,
    AuditEvent,
    BudgetChecked,
    BudgetCommitted,
    BudgetRefused,
    CheckpointCosigned,
    ConsentFiltered,
    ErrorRaised,
    LogRecovered,
    ModelExported,
    PolicyDecision,
    RunFinished,
    RunStarted,
    SiteJoined,
    SiteRefused,
    UpdateReceived,
    UpdateRejected,
    UpdateSent,
)
from fedtwin.audit.fhir_export import audit_bundle, write_bundle
from fedtwin.audit.keys import AuditSigner, VerifierKey, load_verifier_key, write_verifier_key
from fedtwin.audit.log import AuditLog
from fedtwin.audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from fedtwin.audit.note import NoteSignature
from fedtwin.audit.report import render_report, write_report
from fedtwin.audit.rundir import AuditLayout, LogStatus, RunAudit, audit_run
from fedtwin.audit.verify import Failure, Verdict, VerificationReport, verify_log

__all__ = [
    "EVENT_ADAPTER",
    "Aggregated",
    "AuditEvent",
    "AuditLayout",
    "AuditLog",
    "AuditSigner",
    "BudgetChecked",
    "BudgetCommitted",
    "BudgetRefused",
    "Checkpoint",
    "CheckpointCosigned",
    "ConsentFiltered",
    "Cosigner",
    "EntryError",
    "ErrorRaised",
    "Failure",
    "LogRecovered",
    "LogStatus",
    "ModelExported",
    "NoteSignature",
    "PolicyDecision",
    "RunAudit",
    "RunFinished",
    "RunStarted",
    "SignedCheckpoint",
    "SiteJoined",
    "SiteRefused",
    "UpdateReceived",
    "UpdateRejected",
    "UpdateSent",
    "Verdict",
    "VerificationReport",
    "VerifierKey",
    "add_cosignature",
    "audit_bundle",
    "audit_run",
    "checkpoint_files",
    "last_cosigned_size",
    "leaf_hash",
    "load_verifier_key",
    "log_file",
    "read_checkpoint",
    "read_log_lines",
    "render_report",
    "update_digest",
    "verify_consistency",
    "verify_inclusion",
    "verify_log",
    "write_bundle",
    "write_report",
    "write_verifier_key",
]
