"""The on-disk form of an audit log: file names, lines, the torn tail, the hash chain.

One party writes one file ``<party>.audit.jsonl``; each line is one event's RFC 8785 JSON and a
newline; its checkpoints live in ``<party>.checkpoints/`` beside it. Invariants checked here,
for the writer re-opening its log and for the verifier alike:

* everything before the last newline is a sequence of complete lines; bytes after it are a
  *partial last line*, the trace of a crashed write, never part of the log;
* line ``i`` is a JSON object whose ``seq`` is ``i`` and whose ``prev`` is the hex leaf hash
  (``SHA-256(0x00 || line)``) of line ``i - 1`` (``null`` for line 0). The first line that
  breaks this names the entry that was removed, inserted, reordered or altered
  (:class:`EntryError`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedtwin.audit.events import EVENT_ADAPTER, PARTY_ID_PATTERN, AuditEvent
from fedtwin.errors import IngestError, VerificationError

LOG_SUFFIX = ".audit.jsonl"
CHECKPOINTS_SUFFIX = ".checkpoints"
_PARTY = re.compile(PARTY_ID_PATTERN)
_HASH = re.compile(r"[0-9a-f]{64}")


class EntryError(VerificationError):
    """An entry of a log is missing, out of place or altered.

    Parameters
    ----------
    index : int
        The first entry found bad (0-based line number).
    reason : str
        Why, in a few words.
    alternative : int, optional
        The other entry that may be the altered one, when the chain alone cannot tell (the
        last entry's link breaks: either its predecessor or its own ``prev`` changed).
    """

    def __init__(self, index: int, reason: str, alternative: int | None = None) -> None:
        super().__init__(f"entry {index}: {reason}")
        self.index = index
        self.reason = reason
        self.alternative = alternative


def log_file(directory: Path, party: str) -> Path:
    """``<directory>/<party>.audit.jsonl``."""
    return directory / f"{party}{LOG_SUFFIX}"


def party_of(path: Path) -> str | None:
    """The party a log file is named after, or None if the name does not follow the rule."""
    if not path.name.endswith(LOG_SUFFIX):
        return None
    party = path.name[: -len(LOG_SUFFIX)]
    return party if _PARTY.fullmatch(party) else None


def checkpoints_dir_of(path: Path) -> Path:
    """``<party>.checkpoints`` beside a log (for any other name: ``<stem>.checkpoints``)."""
    party = party_of(path)
    stem = party if party is not None else path.name.split(".", 1)[0]
    return path.parent / f"{stem}{CHECKPOINTS_SUFFIX}"


@dataclass(frozen=True)
class LogLines:
    """A log file split into complete lines (newline removed) and a partial tail."""

    lines: list[bytes]
    partial: bytes | None

    @property
    def size(self) -> int:
        """Number of complete lines (entries)."""
        return len(self.lines)


def split_lines(data: bytes) -> LogLines:
    """Split file bytes at newlines; bytes after the last newline are the partial tail."""
    lines = data.split(b"\n")
    tail = lines.pop()
    return LogLines(lines=lines, partial=tail or None)


def read_log_lines(path: Path) -> LogLines:
    """Read a log file (an unreadable file raises :class:`IngestError`)."""
    try:
        return split_lines(path.read_bytes())
    except IsADirectoryError as error:
        raise IngestError(f"{path}: is a directory, not an audit log") from error
    except OSError as error:
        raise IngestError(f"{path}: cannot read audit log ({error.strerror})") from error


_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class ParsedEntries:
    """Every complete line, parsed: the event where the schema accepts it, its links always."""

    events: list[AuditEvent | None]
    """The validated event of each line, or None where the closed schema rejects it."""
    links: list[tuple[object, object]]
    """``(seq, prev)`` of each line as written (whatever their types)."""
    schema_error: tuple[int, str] | None
    """The first line the schema rejects, and why."""


def _schema_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "event"
    return f"{where}: {first['msg']}"


def parse_entries(lines: list[bytes]) -> ParsedEntries:
    """Parse and validate every line (pydantic-core parses the JSON, one call per line).

    Raises
    ------
    EntryError
        At the first line that is not UTF-8, not JSON or not a JSON object.
    """
    validate = EVENT_ADAPTER.validate_json
    events: list[AuditEvent | None] = []
    links: list[tuple[object, object]] = []
    schema_error: tuple[int, str] | None = None
    for index, line in enumerate(lines):
        try:
            event = validate(line)
        except ValidationError as error:
            record = _json_object(index, line)
            if schema_error is None:
                schema_error = (index, _schema_message(error))
            events.append(None)
            links.append((record.get("seq"), record.get("prev")))
            continue
        events.append(event)
        links.append((event.seq, event.prev))
    return ParsedEntries(events, links, schema_error)


def _json_object(index: int, line: bytes) -> dict[str, Any]:
    try:
        record = _DECODER.decode(line.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise EntryError(index, "altered: not valid UTF-8") from error
    except ValueError as error:
        raise EntryError(index, f"altered: not valid JSON ({error})") from error
    if not isinstance(record, dict):
        raise EntryError(index, "altered: not a JSON object")
    return record


def _sequence_problem(
    index: int, seq: int, prev: object, leaf_hashes: list[bytes], positions: dict[int, int]
) -> EntryError:
    """Why position ``index`` holds entry ``seq`` (``prev`` is its link as written)."""
    if prev == (leaf_hashes[index - 1].hex() if index else None):
        return EntryError(index, f"altered: sequence number reads {seq}")
    if seq < index:
        if leaf_hashes[index] == leaf_hashes[index - 1]:
            return EntryError(index, f"inserted: position {index} repeats entry {seq}")
        if prev == (leaf_hashes[index - 2].hex() if index >= 2 else None):
            return EntryError(index - 1, "inserted: the next entry links past it")
        if positions.get(seq) != index:
            return EntryError(index, f"inserted: position {index} repeats entry {seq}")
    if seq > index and index not in positions:
        missing = seq - index
        what = "entry" if missing == 1 else f"{missing} entries"
        return EntryError(index, f"removed: {what} missing before the entry numbered {seq}")
    where = f"; entry {index} is at position {positions[index]}" if index in positions else ""
    return EntryError(index, f"reordered: position {index} holds entry {seq}{where}")


def check_chain(links: list[tuple[object, object]], leaf_hashes: list[bytes]) -> None:
    """Check the ``(seq, prev)`` of every entry against its position and its predecessor.

    Raises
    ------
    EntryError
        Naming the first entry that was removed, reordered or altered.
    """
    positions: dict[int, int] = {}
    for position, (seq, _) in enumerate(links):
        if isinstance(seq, int) and not isinstance(seq, bool):
            positions.setdefault(seq, position)
    count = len(links)
    for index, (seq, prev) in enumerate(links):
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise EntryError(index, "altered: missing or invalid sequence number")
        if seq != index:
            raise _sequence_problem(index, seq, prev, leaf_hashes, positions)
        if prev == (leaf_hashes[index - 1].hex() if index else None):
            continue
        if index == 0:
            raise EntryError(0, "altered: the first entry must not link to a predecessor")
        if not (isinstance(prev, str) and _HASH.fullmatch(prev)):
            raise EntryError(index, "altered: its hash link is missing or malformed")
        if index + 1 < count:
            if links[index + 1][1] != leaf_hashes[index].hex():
                raise EntryError(index, "altered: its hash link and its successor's both break")
            raise EntryError(
                index - 1, f"altered: its hash differs from the one entry {index} recorded"
            )
        raise EntryError(
            index - 1,
            f"altered: its hash differs from the one entry {index} recorded "
            f"(or entry {index}'s link was altered)",
            alternative=index,
        )
