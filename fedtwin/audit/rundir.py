"""A run directory's audit trail: where every party's files go, and verifying them together.

Layout (:class:`AuditLayout`), under ``runs/<run-id>/audit/``::

    <party>.audit.jsonl        the party's log
    <party>.checkpoints/       its signed checkpoints, <size>.note (the coordinator's carry
                               the sites' cosignatures)
    keys/<party>.vkey          its public audit key (C2SP verifier key)

:func:`audit_run` verifies every log with its party's key, checks every cosignature present on
a log's checkpoints with the cosigner's key, and then cross-checks what sites say they cosigned
(their own ``checkpoint_cosigned`` events) against the coordinator's log: a log whose root at
a cosigned size differs from what the site cosigned shows a split view, and is marked tampered
even if it is self-consistent. Only events of logs that passed are offered to reports.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fedtwin.audit.checkpoint import checkpoint_files, read_checkpoint
from fedtwin.audit.entries import (
    CHECKPOINTS_SUFFIX,
    LOG_SUFFIX,
    checkpoints_dir_of,
    log_file,
    party_of,
    read_log_lines,
)
from fedtwin.audit.events import AuditEvent, CheckpointCosigned
from fedtwin.audit.keys import VerifierKey, load_verifier_key
from fedtwin.audit.merkle import leaf_hash
from fedtwin.audit.note import cosignatures_by
from fedtwin.audit.tree import MerkleTree
from fedtwin.audit.verify import Failure, Verdict, VerificationReport, verify_log
from fedtwin.errors import ConfigError, FedTwinError, VerificationError

AUDIT_DIR = "audit"
KEYS_DIR = "keys"
VKEY_SUFFIX = ".vkey"


@dataclass(frozen=True)
class AuditLayout:
    """Where a run's audit files live.

    Parameters
    ----------
    root : Path
        The audit folder (``runs/<run-id>/audit``).
    """

    root: Path

    @classmethod
    def of_run(cls, run_dir: Path) -> AuditLayout:
        """The layout of ``run_dir``: its ``audit/`` folder, or itself if it holds the logs."""
        nested = run_dir / AUDIT_DIR
        if nested.is_dir() or not any(run_dir.glob(f"*{LOG_SUFFIX}")):
            return cls(nested)
        return cls(run_dir)

    def log_path(self, party: str) -> Path:
        """``<party>.audit.jsonl``."""
        return log_file(self.root, party)

    def checkpoints_dir(self, party: str) -> Path:
        """``<party>.checkpoints/``."""
        return self.root / f"{party}{CHECKPOINTS_SUFFIX}"

    def key_path(self, party: str) -> Path:
        """``keys/<party>.vkey``."""
        return self.root / KEYS_DIR / f"{party}{VKEY_SUFFIX}"

    def parties(self) -> list[str]:
        """Parties with a log here, sorted."""
        found = (party_of(path) for path in self.root.glob(f"*{LOG_SUFFIX}"))
        return sorted(party for party in found if party is not None)


@dataclass(frozen=True)
class LogStatus:
    """The integrity of one party's log within a run."""

    party: str
    path: Path
    report: VerificationReport | None
    problem: str | None = None
    """Why the log could not be verified (no key, unreadable), if it could not."""

    @property
    def verdict(self) -> str:
        """``intact``, ``crashed``, ``tampered`` or ``unverifiable``."""
        return self.report.verdict.value if self.report is not None else "unverifiable"

    @property
    def trusted(self) -> bool:
        """True if the log's attested entries verified (intact or crashed)."""
        return self.report is not None and self.report.ok

    def summary(self) -> str:
        """One line."""
        return self.report.summary() if self.report is not None else str(self.problem)


@dataclass(frozen=True)
class RunAudit:
    """Every log of a run and its status."""

    layout: AuditLayout
    logs: tuple[LogStatus, ...]

    @property
    def all_intact(self) -> bool:
        """True if every log verified intact."""
        return bool(self.logs) and all(log.verdict == Verdict.INTACT for log in self.logs)

    def events(self) -> list[AuditEvent]:
        """Events of the logs that verified, in time order (then party, then position)."""
        found = [
            (event.time, log.party, index, event)
            for log in self.logs
            if log.trusted and log.report is not None
            for index, event in enumerate(log.report.events)
        ]
        return [event for *_, event in sorted(found, key=lambda item: item[:3])]


def _cosigners_on(
    layout: AuditLayout, party: str, keys: dict[str, VerifierKey]
) -> list[VerifierKey]:
    directory = layout.checkpoints_dir(party)
    files = checkpoint_files(directory) if directory.is_dir() else []
    notes = []
    for path in files:
        try:
            notes.append(read_checkpoint(path).note)
        except VerificationError:
            continue  # verify_log names the malformed file
    return [
        key
        for name, key in sorted(keys.items())
        if name != party and any(cosignatures_by(note, key) for note in notes)
    ]


def _split_view(status: LogStatus, cosigned: list[CheckpointCosigned]) -> LogStatus:
    """Mark ``status`` tampered if its root differs from what a site says it cosigned."""
    report = status.report
    if report is None or not report.ok or not report.checkpoints:
        return status
    origin = report.checkpoints[0].origin
    claims = [c for c in cosigned if c.origin == origin]
    if not claims:
        return status
    tree = MerkleTree(leaf_hash(line) for line in read_log_lines(status.path).lines)
    for claim in sorted(claims, key=lambda c: c.size):
        if claim.size <= tree.size and tree.root(claim.size).hex() == claim.root:
            continue
        reason = (
            f"split view: {claim.cosigner} cosigned size {claim.size} with root "
            f"{claim.root[:16]}…, but this log's root at that size differs"
        )
        index = min(claim.size, tree.size) - 1 if claim.size else 0
        failure = Failure(6, reason, index=max(index, 0))
        return replace(
            status, report=replace(report, verdict=Verdict.TAMPERED, failure=failure, events=())
        )
    return status


def audit_run(run_dir: Path) -> RunAudit:
    """Verify every log of a run directory, then cross-check the cosigned views.

    Raises
    ------
    ConfigError
        If the folder holds no audit log.
    """
    layout = AuditLayout.of_run(run_dir)
    parties = layout.parties()
    if not parties:
        raise ConfigError(f"{run_dir}: no *{LOG_SUFFIX} audit log found")
    keys: dict[str, VerifierKey] = {}
    for party in parties:
        if layout.key_path(party).is_file():
            try:
                keys[party] = load_verifier_key(layout.key_path(party))
            except ConfigError:
                continue
    statuses = []
    for party in parties:
        path = layout.log_path(party)
        if party not in keys:
            problem = f"no usable public key at {layout.key_path(party)}"
            statuses.append(LogStatus(party, path, None, problem))
            continue
        try:
            report = verify_log(
                path, keys[party], checkpoints_dir_of(path), _cosigners_on(layout, party, keys)
            )
        except FedTwinError as error:
            statuses.append(LogStatus(party, path, None, str(error)))
            continue
        statuses.append(LogStatus(party, path, report))
    cosigned = [
        event
        for status in statuses
        if status.trusted and status.report is not None
        for event in status.report.events
        if isinstance(event, CheckpointCosigned) and event.actor == event.cosigner
    ]
    return RunAudit(layout, tuple(_split_view(status, cosigned) for status in statuses))
