"""Offline verification of one party's audit log against its signed checkpoints.

An auditor needs only the log file, the checkpoint notes and public keys. :func:`verify_log`
runs these steps in order; the first failure stops verification and names the first bad entry
(or checkpoint file) and why:

(1) read the log; bytes after the last newline are a partial last line (a crashed write);
(2) parse: every complete line is a UTF-8 JSON object;
(3) chain: line ``i`` has ``seq == i`` and ``prev`` = leaf hash of line ``i - 1``, which names
    a removed, reordered or altered entry exactly;
(4) checkpoints: at least one; each a well-formed C2SP checkpoint named ``<size>.note``, all of
    one origin, each signed by the log's key;
(5) cosignatures: for every cosigner key given, at least one checkpoint carries its
    cosignature and every cosignature it claims verifies;
(6) roots: every checkpoint's size is within the log and its root is the RFC 9162 root of the
    log's first ``size`` leaves (a truncated log, an entry rewritten along with the chain after
    it, or a checkpoint from another view of the log fails here);
(7) consistency: an RFC 9162 consistency proof between every pair of consecutive checkpoints
    verifies;
(8) coverage: every complete entry is covered by the newest checkpoint; entries after it are
    refused as unattested, unless the file ends in a partial line, the mark of a crashed write,
    which is reported as such (verdict ``crashed``, not ``tampered``);
(9) schema: every entry is one of the closed audit event kinds and was written by the log's
    party.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from pathlib import Path

from fedtwin.audit.canonical import canonical_json
from fedtwin.audit.checkpoint import Checkpoint, SignedCheckpoint, checkpoint_files, read_checkpoint
from fedtwin.audit.entries import (
    EntryError,
    check_chain,
    checkpoints_dir_of,
    parse_entries,
    party_of,
    read_log_lines,
)
from fedtwin.audit.events import AuditEvent
from fedtwin.audit.keys import VerifierKey
from fedtwin.audit.merkle import leaf_hash, root_of, verify_consistency
from fedtwin.audit.note import cosignatures_by, verify_cosignature
from fedtwin.audit.tree import MerkleTree
from fedtwin.errors import ConfigError, VerificationError


class Verdict(StrEnum):
    """Outcome of verifying one log."""

    INTACT = "intact"
    CRASHED = "crashed"
    TAMPERED = "tampered"


@dataclass(frozen=True)
class Failure:
    """The first check that failed."""

    step: int
    reason: str
    index: int | None = None
    """The first bad entry (0-based), when the failure is about an entry."""
    checkpoint: str | None = None
    """The checkpoint file, when the failure is about a checkpoint."""

    def line(self) -> str:
        """``entry <i>: <reason>`` or ``checkpoint <file>: <reason>``."""
        if self.index is not None:
            return f"entry {self.index}: {self.reason}"
        if self.checkpoint is not None:
            return f"checkpoint {self.checkpoint}: {self.reason}"
        return self.reason


@dataclass(frozen=True)
class VerificationReport:
    """What :func:`verify_log` found."""

    log_path: Path
    party: str | None
    verdict: Verdict
    entries: int
    attested: int = 0
    """Entries covered by the newest verified checkpoint."""
    checkpoints: tuple[Checkpoint, ...] = ()
    cosigned: dict[str, int] = field(default_factory=dict)
    """Per cosigner name, how many checkpoints it cosigned."""
    root: bytes = b""
    failure: Failure | None = None
    partial_line: bool = False
    events: tuple[AuditEvent, ...] = ()
    """The validated events (empty unless the verdict is intact or crashed)."""

    @property
    def ok(self) -> bool:
        """True unless tampered: every attested entry verified."""
        return self.verdict is not Verdict.TAMPERED

    def summary(self) -> str:
        """One line: the verdict and what it rests on, or the first bad entry and why."""
        if self.failure is not None:
            return f"tampered: {self.failure.line()}"
        cosigned = "".join(f", {n} cosigned by {name}" for name, n in sorted(self.cosigned.items()))
        if self.verdict is Verdict.CRASHED:
            unattested = (
                f"; entries {self.attested}..{self.entries - 1} are not covered by a checkpoint"
                if self.entries > self.attested
                else ""
            )
            return (
                f"crashed: partial last line at entry {self.entries} (crashed write, not "
                f"tampering); entries 0..{self.attested - 1} verified against the checkpoint "
                f"of size {self.attested}{unattested}"
            )
        return (
            f"intact: {self.entries} entries, root {self.root.hex()}, "
            f"{len(self.checkpoints)} signed checkpoints{cosigned}"
        )


def _load_checkpoints(
    directory: Path, key: VerifierKey
) -> tuple[list[tuple[str, SignedCheckpoint]], Failure | None]:
    files = checkpoint_files(directory) if directory.is_dir() else []
    if not files:
        return [], Failure(4, f"no signed checkpoint in {directory}: nothing attests the log")
    loaded: list[tuple[str, SignedCheckpoint]] = []
    origin = None
    for path in files:
        try:
            signed = SignedCheckpoint.from_bytes(path.read_bytes())
        except OSError as error:
            return loaded, Failure(4, f"cannot read ({error.strerror})", checkpoint=path.name)
        except VerificationError as error:
            return loaded, Failure(4, str(error), checkpoint=path.name)
        if f"{signed.checkpoint.size}.note" != path.name:
            return loaded, Failure(
                4,
                f"states size {signed.checkpoint.size}, not its file name's",
                checkpoint=path.name,
            )
        if origin is not None and signed.checkpoint.origin != origin:
            return loaded, Failure(
                4, f"origin {signed.checkpoint.origin!r} is not {origin!r}", checkpoint=path.name
            )
        origin = signed.checkpoint.origin
        try:
            signed.verify(key)
        except VerificationError as error:
            return loaded, Failure(4, str(error), checkpoint=path.name)
        loaded.append((path.name, signed))
    return loaded, None


def _only_link_changed(
    index: int, lines: list[bytes], leaves: list[bytes], directory: Path
) -> bool:
    """True if entry ``index`` with its link restored gives a checkpointed root.

    Only used to name the right entry when the last link breaks; the verdict is tampered
    either way, so an unsigned checkpoint file cannot hide anything here.
    """
    try:
        record = json.loads(lines[index])
        record["prev"] = leaves[index - 1].hex()
        restored = [*leaves[:index], leaf_hash(canonical_json(record))]
        path = directory / f"{index + 1}.note"
        return path.is_file() and read_checkpoint(path).checkpoint.root == root_of(restored)
    except (ValueError, TypeError, VerificationError):
        return False


def verify_log(
    log_path: Path,
    key: VerifierKey,
    checkpoints_dir: Path | None = None,
    cosigner_keys: Sequence[VerifierKey] = (),
) -> VerificationReport:
    """Verify a log, fail-closed, in the numbered steps of this module's docstring.

    Parameters
    ----------
    log_path : Path
        The ``<party>.audit.jsonl`` file.
    key : VerifierKey
        The log party's audit key.
    checkpoints_dir : Path, optional
        Where its checkpoints are (default: ``<party>.checkpoints`` beside the log).
    cosigner_keys : Sequence[VerifierKey]
        Keys whose cosignatures the checkpoints must carry (sites, for the coordinator's log).

    Returns
    -------
    VerificationReport
        The verdict; when tampered, :attr:`VerificationReport.failure` names the first bad
        entry or checkpoint and why.

    Raises
    ------
    IngestError
        If the log cannot be read at all (unusable input, not tampering).
    ConfigError
        If ``checkpoints_dir`` is given but is not a folder.
    """
    party = party_of(log_path)
    if checkpoints_dir is not None and not checkpoints_dir.is_dir():
        raise ConfigError(f"{checkpoints_dir}: no such checkpoints folder")
    directory = checkpoints_dir if checkpoints_dir is not None else checkpoints_dir_of(log_path)

    # (1): read; a partial last line is a crashed write, never an entry.
    content = read_log_lines(log_path)
    entries = content.size
    partial = content.partial is not None

    def tampered(
        failure: Failure,
        checkpoints: tuple[Checkpoint, ...] = (),
        cosigned: dict[str, int] | None = None,
        attested: int = 0,
    ) -> VerificationReport:
        return VerificationReport(
            log_path,
            party,
            Verdict.TAMPERED,
            entries,
            attested=attested,
            checkpoints=checkpoints,
            cosigned=cosigned or {},
            failure=failure,
            partial_line=partial,
        )

    # (2): parse every line (schema problems are kept for step 9).
    try:
        parsed = parse_entries(content.lines)
    except EntryError as error:
        return tampered(Failure(2, error.reason, index=error.index))

    # (3): sequence numbers and hash links.
    leaves = [leaf_hash(line) for line in content.lines]
    try:
        check_chain(parsed.links, leaves)
    except EntryError as error:
        if error.alternative is not None and _only_link_changed(
            error.alternative, content.lines, leaves, directory
        ):
            reason = "altered: its hash link was changed"
            return tampered(Failure(3, reason, index=error.alternative))
        return tampered(Failure(3, error.reason, index=error.index))

    # (4): checkpoints, each signed by the log's key.
    loaded, failure = _load_checkpoints(directory, key)
    if failure is not None:
        return tampered(failure)
    heads = tuple(signed.checkpoint for _, signed in loaded)

    # (5): cosignatures.
    cosigned: dict[str, int] = {}
    for cosigner in cosigner_keys:
        count = 0
        for name, signed in loaded:
            for line in cosignatures_by(signed.note, cosigner):
                try:
                    verify_cosignature(signed.note, line, cosigner)
                except VerificationError as error:
                    reason = f"{error} (the checkpoint it cosigned was replaced: split view)"
                    return tampered(Failure(5, reason, checkpoint=name), checkpoints=heads)
                count += 1
        if not count:
            return tampered(
                Failure(5, f"no checkpoint carries a cosignature by {cosigner.name}"),
                checkpoints=heads,
            )
        cosigned[cosigner.name] = count

    # (6): each checkpoint's root is the root of the log's prefix of that size.
    tree = MerkleTree(leaves)
    matched = 0
    for name, signed in loaded:
        head = signed.checkpoint
        if head.size > entries:
            what = (
                f"truncated: entry {entries} is a partial line, yet checkpoint {name} covers it"
                if partial and head.size == entries + 1
                else f"truncated: the log ends after {entries} entries, checkpoint {name} "
                f"covers {head.size}"
            )
            return tampered(Failure(6, what, index=entries), checkpoints=heads, cosigned=cosigned)
        if tree.root(head.size) != head.root:
            witnesses = sorted(c.name for c in cosigner_keys if cosignatures_by(signed.note, c))
            view = f"; it was cosigned by {', '.join(witnesses)}: split view" if witnesses else ""
            reason = (
                f"altered: the log's root at size {head.size} differs from checkpoint {name} "
                f"(entries {matched}..{head.size - 1} were rewritten){view}"
            )
            return tampered(
                Failure(6, reason, index=head.size - 1), checkpoints=heads, cosigned=cosigned
            )
        matched = head.size

    # (7): consistency between consecutive checkpoints.
    for (_, older), (name, newer) in pairwise(loaded):
        old, new = older.checkpoint, newer.checkpoint
        if old.size == 0:
            continue
        try:
            proof = tree.consistency_proof(old.size, new.size)
            verify_consistency(old.size, new.size, proof, old.root, new.root)
        except VerificationError as error:
            return tampered(
                Failure(7, f"not consistent with size {old.size}: {error}", checkpoint=name),
                checkpoints=heads,
                cosigned=cosigned,
            )

    # (8): coverage by the newest checkpoint.
    attested = heads[-1].size
    if entries > attested and not partial:
        reason = (
            f"unattested: not covered by any signed checkpoint (appended after the newest, "
            f"of size {attested})"
        )
        return tampered(Failure(8, reason, index=attested), heads, cosigned, attested)

    # (9): closed event schema, one writer.
    if parsed.schema_error is not None:
        index, reason = parsed.schema_error
        return tampered(Failure(9, f"schema: {reason}", index=index), heads, cosigned, attested)
    events = [event for event in parsed.events if event is not None]
    writer = party if party is not None else (events[0].actor if events else None)
    for index, event in enumerate(events):
        if event.actor != writer:
            reason = f"schema: actor {event.actor!r} in the log of {writer!r}"
            return tampered(Failure(9, reason, index=index), heads, cosigned, attested)

    return VerificationReport(
        log_path,
        writer,
        Verdict.CRASHED if partial else Verdict.INTACT,
        entries,
        attested=attested,
        checkpoints=heads,
        cosigned=cosigned,
        root=tree.root(),
        partial_line=partial,
        events=tuple(events),
    )
