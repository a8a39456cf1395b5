"""Duplicate resource ids in one NDJSON file, found with bounded memory and confirmed exactly.

Invariant: ids are remembered as 64-bit hashes with their line numbers in typed arrays
(12 bytes per resource, not a set of strings); hash collisions are candidates only, and a
duplicate is reported only after the file's lines are re-read and the ids compared as strings.
The first occurrence of an id is kept; every later line with the same id is a duplicate.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedtwin.fhir.ndjson import iter_json_lines


class DuplicateIds:
    """Collects ``(id, line)`` pairs of one file and reports the repeated ids."""

    def __init__(self) -> None:
        self._hashes: array[int] = array("q")
        self._lines: array[int] = array("I")

    def add(self, resource_id: object, line: int) -> None:
        """Remember the id of the resource at ``line`` (resources without id are skipped)."""
        if type(resource_id) is str:
            self._hashes.append(hash(resource_id))
            self._lines.append(line)

    def appenders(self) -> tuple[Callable[[int], None], Callable[[int], None]]:
        """``(append_hash, append_line)`` for a hot loop: ``hash(id)`` and its line."""
        return self._hashes.append, self._lines.append

    def duplicates(self, path: Path) -> list[tuple[int, int]]:
        """``(duplicate_line, first_line)`` pairs, in line order, confirmed by re-reading.

        Parameters
        ----------
        path : Path
            The file the ids came from (re-read only if hashes collide).
        """
        if len(self._hashes) < 2:
            return []
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
        if repeated.size == 0:
            return []
        lines = np.frombuffer(self._lines, dtype=np.uint32)
        candidates = set(lines[order[repeated]].tolist()) | set(lines[order[repeated + 1]].tolist())
        ids: dict[int, str] = {}
        for line_no, outcome in iter_json_lines(path):
            if line_no in candidates and isinstance(outcome, dict):
                ids[line_no] = outcome.get("id")  # type: ignore[assignment]
        first_seen: dict[str, int] = {}
        found: list[tuple[int, int]] = []
        for line_no in sorted(ids):
            resource_id = ids[line_no]
            if resource_id in first_seen:
                found.append((line_no, first_seen[resource_id]))
            else:
                first_seen[resource_id] = line_no
        return found
