"""The append-only audit log one party writes: typed events, durable appends, checkpoints.

Invariants:

* a log is one file ``<party>.audit.jsonl`` written only by :class:`AuditLog`, which holds an
  exclusive ``flock`` on it (a second writer is refused) and only ever appends;
* line ``i`` is the RFC 8785 JSON of the ``i``-th event with ``seq = i`` and ``prev`` = hex leaf
  hash of line ``i - 1``; the Merkle leaf is exactly the line's bytes without the newline;
* a log is never extended if it is inconsistent: opening re-checks the hash chain and that the
  newest checkpoint's root is still the root of the same prefix.

Durability (fsync policy):

* every line is written with one ``write(2)`` on an ``O_APPEND`` descriptor, so a crashed
  *process* never loses an appended event, and a crash mid-write leaves a valid prefix plus at
  most one partial last line; a failed write is cut back off before the error is raised;
* an :meth:`AuditLog.append` outside a batch calls ``fdatasync`` before it returns: the event
  survives a power loss once ``append`` has returned;
* inside ``with log.batch():`` (group commit) appends are written at once but fsynced once, when
  the outermost batch exits: the whole batch is durable when the ``with`` block ends, and a
  power loss inside it loses at most that batch's tail (the prefix stays valid). This is what
  makes thousands of durable appends per second possible on a disk whose fsync takes
  milliseconds (see ``bench/audit.py``);
* :meth:`AuditLog.checkpoint` syncs before it signs: a checkpoint never covers a line that is
  not on disk. A checkpoint file is written to a temporary name, fsynced and renamed.

On opening, a partial last line left by a crash is cut off and recorded as a
:class:`~fedtwin.audit.events.LogRecovered` event (its length and digest), so the recovery is
itself in the signed history.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from fedtwin.audit._files import fsync_directory, write_all
from fedtwin.audit.canonical import canonical_json
from fedtwin.audit.checkpoint import (
    Checkpoint,
    SignedCheckpoint,
    checkpoint_files,
    read_checkpoint,
    sign_checkpoint,
    write_checkpoint,
)
from fedtwin.audit.entries import (
    EntryError,
    check_chain,
    checkpoints_dir_of,
    log_file,
    parse_entries,
    party_of,
    split_lines,
)
from fedtwin.audit.events import LogRecovered
from fedtwin.audit.keys import AuditSigner
from fedtwin.audit.merkle import leaf_hash
from fedtwin.audit.tree import MerkleTree
from fedtwin.errors import ConfigError, VerificationError

E = TypeVar("E", bound=BaseModel)

UNKNOWN_RUN = "unknown"


def utc_now() -> datetime:
    """The current time in UTC (the default clock)."""
    return datetime.now(UTC)


class AuditLog:
    """One party's append-only audit log (use :meth:`open`).

    Parameters
    ----------
    path : Path
        The log file.
    party : str
        The party that writes it; every event's ``actor``.
    fd : int
        The open, locked, append-only descriptor.
    tree : MerkleTree
        The Merkle tree of the lines already in the file.
    clock : Callable[[], datetime]
        Source of event times.
    last_run_id : str
        Run id of the newest entry (what a recovery event is filed under).
    """

    def __init__(
        self,
        path: Path,
        party: str,
        fd: int,
        tree: MerkleTree,
        clock: Callable[[], datetime],
        last_run_id: str = UNKNOWN_RUN,
    ) -> None:
        self.path, self.party, self._fd, self._tree, self._clock = path, party, fd, tree, clock
        self._last_run_id = last_run_id
        self._end = os.fstat(fd).st_size
        self._lock = threading.RLock()
        self._batch_depth = 0
        self._unsynced = False
        self._origin: str | None = None

    @classmethod
    def open(
        cls, directory: Path, party: str, *, clock: Callable[[], datetime] = utc_now
    ) -> AuditLog:
        """Open (or create) ``<directory>/<party>.audit.jsonl`` for appending.

        Raises
        ------
        ConfigError
            If ``party`` is not a valid party id or another writer holds the log.
        VerificationError
            If the existing log is inconsistent (it is then never extended).
        """
        path = log_file(directory, party)
        if party_of(path) != party:
            raise ConfigError(f"party id {party!r} must match [a-z0-9][a-z0-9-]{{0,62}}")
        directory.mkdir(parents=True, exist_ok=True)
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as error:
                raise ConfigError(f"{path}: another process is writing this audit log") from error
            if created:
                fsync_directory(directory)
            log, torn = cls._load(path, party, fd, clock)
        except BaseException:
            os.close(fd)
            raise
        if torn is not None:
            log.append(
                LogRecovered(
                    actor=party,
                    time=clock(),
                    run_id=log._last_run_id,
                    discarded_bytes=len(torn),
                    discarded_sha256="sha256:" + hashlib.sha256(torn).hexdigest(),
                )
            )
        return log

    @classmethod
    def _load(
        cls, path: Path, party: str, fd: int, clock: Callable[[], datetime]
    ) -> tuple[AuditLog, bytes | None]:
        data = path.read_bytes()
        content = split_lines(data)
        leaves = [leaf_hash(line) for line in content.lines]
        try:
            parsed = parse_entries(content.lines)
            check_chain(parsed.links, leaves)
        except EntryError as error:
            raise VerificationError(f"{path}: {error}") from error
        if parsed.schema_error is not None:
            index, reason = parsed.schema_error
            raise VerificationError(f"{path}: entry {index}: not an audit event ({reason})")
        events = [event for event in parsed.events if event is not None]
        for index, event in enumerate(events):
            if event.actor != party:
                raise VerificationError(f"{path}: entry {index} was not written by {party}")
        last_run_id = events[-1].run_id if events else UNKNOWN_RUN
        log = cls(path, party, fd, MerkleTree(leaves), clock, last_run_id)
        files = checkpoint_files(log.checkpoints_dir) if log.checkpoints_dir.is_dir() else []
        if files:
            newest = read_checkpoint(files[-1]).checkpoint
            if newest.size > log.size or log.root(newest.size) != newest.root:
                raise VerificationError(
                    f"{path}: the log no longer matches its checkpoint of size {newest.size}"
                )
            log._origin = newest.origin
        if content.partial is not None:  # only once the complete lines are known to be sound
            os.ftruncate(fd, len(data) - len(content.partial))
            os.fsync(fd)
            log._end = len(data) - len(content.partial)
        return log, content.partial

    @property
    def size(self) -> int:
        """Number of entries."""
        return self._tree.size

    @property
    def checkpoints_dir(self) -> Path:
        """``<party>.checkpoints`` beside the log."""
        return checkpoints_dir_of(self.path)

    def now(self) -> datetime:
        """The log's clock."""
        return self._clock()

    def append(self, event: BaseModel) -> int:
        """Append one event (its ``actor`` must be this party); return its index.

        The event gets ``seq`` and ``prev``; it is durable on return unless inside
        :meth:`batch`.
        """
        if getattr(event, "actor", None) != self.party:
            raise ValueError(f"{self.path.name} only takes events whose actor is {self.party}")
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"{self.path.name} is closed")
            index = self._tree.size
            if getattr(event, "seq", None) not in (None, index):
                raise ValueError(f"event claims seq {getattr(event, 'seq', None)}, not {index}")
            prev = self._tree.leaf(index - 1).hex() if index else None
            record = event.model_dump(mode="json")
            record["seq"], record["prev"] = index, prev
            data = canonical_json(record)
            try:
                write_all(self._fd, data + b"\n")
            except OSError:
                os.ftruncate(self._fd, self._end)
                raise
            self._end += len(data) + 1
            self._tree.append(leaf_hash(data))
            self._last_run_id = str(getattr(event, "run_id", self._last_run_id))
            if self._batch_depth:
                self._unsynced = True
            else:
                os.fdatasync(self._fd)
            return index

    def record(
        self, event_type: type[E], *, run_id: str, round: int | None = None, **fields: Any
    ) -> int:
        """Build an event of ``event_type`` stamped with this party and clock, and append it."""
        event = event_type.model_validate(
            {"actor": self.party, "time": self._clock(), "run_id": run_id, "round": round, **fields}
        )
        return self.append(event)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: appends inside are fsynced once, when the outermost batch exits."""
        with self._lock:
            self._batch_depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._batch_depth -= 1
                if not self._batch_depth:
                    self.sync()

    def sync(self) -> None:
        """Make every appended event durable now."""
        with self._lock:
            if self._unsynced and self._fd >= 0:
                os.fdatasync(self._fd)
                self._unsynced = False

    def leaf_hash(self, index: int) -> bytes:
        """The Merkle leaf hash of entry ``index``."""
        return self._tree.leaf(index)

    def root(self, size: int | None = None) -> bytes:
        """The RFC 9162 root of the first ``size`` entries (default: all)."""
        return self._tree.root(size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of entry ``index`` in the tree of ``size`` entries."""
        return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the first ``old_size`` entries are a prefix of the first ``new_size``."""
        return self._tree.consistency_proof(old_size, new_size)

    def checkpoint(self, signer: AuditSigner, origin: str) -> SignedCheckpoint:
        """Sync, then sign and write the checkpoint of the log as it is now.

        The file is ``<party>.checkpoints/<size>.note``. ``origin`` names this log (e.g.
        ``fedtwin/<run-id>/<party>``) and must stay the same for every checkpoint of it.
        """
        with self._lock:
            self.sync()
            if self._origin is not None and origin != self._origin:
                raise ValueError(f"this log's checkpoints have origin {self._origin!r}")
            signed = sign_checkpoint(Checkpoint(origin, self.size, self.root()), signer)
            write_checkpoint(signed, self.checkpoints_dir)
            self._origin = origin
            return signed

    def close(self) -> None:
        """Sync, release the lock and close the file."""
        with self._lock:
            if self._fd >= 0:
                self.sync()
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
