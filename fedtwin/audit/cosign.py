"""A site's cosigner: it cosigns the coordinator's checkpoints only along one consistent history.

A cosignature (c2sp.org/tlog-cosignature, Ed25519 ``cosignature/v1``) states: "as of this time,
this is the largest consistent tree head I have seen for this log". So the cosigner remembers,
per log origin, the last tree head it cosigned and the log key it saw sign it (trust on first
use), and refuses any checkpoint that would contradict them. Invariants:

* a cosignature is produced only after, in order: (1) the log's signature verifies with the
  pinned key; (2) the checkpoint is not older than the last one cosigned; (3) a consistency
  proof from the last cosigned tree head to the new one verifies (RFC 9162 §2.1.4.2); (4) the
  new tree head is durably stored. A crash between (4) and signing loses a cosignature, never
  the memory of what was seen;
* a refusal raises :class:`~fedtwin.errors.VerificationError` whose message says why (a
  rollback or a split view); the state is left untouched.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from fedtwin.audit._files import atomic_write
from fedtwin.audit.checkpoint import Checkpoint, SignedCheckpoint
from fedtwin.audit.keys import AuditSigner, VerifierKey
from fedtwin.audit.merkle import verify_consistency
from fedtwin.audit.note import NoteSignature, cosign_note
from fedtwin.errors import ConfigError, VerificationError


class _SeenHead(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int
    root: str
    log_key: str


class _CosignerState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    logs: dict[str, _SeenHead] = {}


class Cosigner:
    """A site's memory of the coordinator's log and its cosigning key.

    Parameters
    ----------
    state_path : Path
        JSON file holding the last cosigned tree head per log origin (created if missing).
    signer : AuditSigner
        The site's audit key (its cosignatures use key id type ``0x04``).
    clock : Callable[[], datetime]
        Source of cosignature timestamps.
    """

    def __init__(
        self,
        state_path: Path,
        signer: AuditSigner,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.state_path, self.signer, self.clock = state_path, signer, clock

    def _state(self) -> _CosignerState:
        if not self.state_path.exists():
            return _CosignerState()
        try:
            return _CosignerState.model_validate_json(self.state_path.read_bytes())
        except (OSError, ValidationError) as error:
            raise ConfigError(f"{self.state_path}: unreadable cosigner state") from error

    def last_cosigned(self, origin: str) -> Checkpoint | None:
        """The last tree head cosigned for ``origin``, if any."""
        seen = self._state().logs.get(origin)
        if seen is None:
            return None
        return Checkpoint(origin, seen.size, base64.b64decode(seen.root))

    def cosign(
        self,
        signed: SignedCheckpoint,
        consistency_proof: Sequence[bytes],
        log_key: VerifierKey,
    ) -> NoteSignature:
        """Cosign ``signed`` if it extends what this site cosigned before.

        Parameters
        ----------
        signed : SignedCheckpoint
            The coordinator's new checkpoint.
        consistency_proof : Sequence[bytes]
            Proof from :meth:`last_cosigned` (same origin) to ``signed`` (empty for the first
            checkpoint, or when the size did not change).
        log_key : VerifierKey
            The coordinator's audit key.

        Raises
        ------
        VerificationError
            If the checkpoint is not signed by the pinned log key, is older than the last one
            cosigned, or is not consistent with it (a split view).
        """
        new = signed.checkpoint
        state = self._state()
        seen = state.logs.get(new.origin)
        # (1): the log's signature, by the key first seen for this origin.
        if seen is not None and seen.log_key != log_key.encode():
            raise VerificationError(
                f"log {new.origin} was signed by another key before; refusing {log_key.name}"
            )
        signed.verify(log_key)
        if seen is not None:
            old_root = base64.b64decode(seen.root)
            # (2): never go back.
            if new.size < seen.size:
                raise VerificationError(
                    f"rollback: checkpoint of size {new.size} is older than the cosigned "
                    f"size {seen.size} of {new.origin}"
                )
            # (3): one history only.
            if seen.size:
                try:
                    verify_consistency(seen.size, new.size, consistency_proof, old_root, new.root)
                except VerificationError as error:
                    raise VerificationError(
                        f"split view: checkpoint of size {new.size} of {new.origin} is not "
                        f"consistent with the cosigned size {seen.size} ({error})"
                    ) from error
        # (4): remember before signing.
        head = _SeenHead(
            size=new.size, root=base64.b64encode(new.root).decode(), log_key=log_key.encode()
        )
        updated = _CosignerState(logs={**state.logs, new.origin: head})
        document = json.dumps(updated.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
        atomic_write(self.state_path, document.encode(), mode=0o600)
        timestamp = int(self.clock().timestamp())
        return cosign_note(signed.note.text, self.signer, timestamp)
