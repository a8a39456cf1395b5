"""Durable small-file writes shared by the audit modules (not API).

Invariant: a file written here is either absent or complete under its final name: bytes go to a
temporary sibling, are fsynced, then renamed (or hard-linked, when an existing file must never
be replaced) into place, and the directory entry is fsynced.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_directory(directory: Path) -> None:
    """Make a directory's entries (a new or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partial_of(path: Path, data: bytes, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return partial


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    partial = _partial_of(path, data, mode)
    os.replace(partial, path)
    fsync_directory(path.parent)


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` atomically; raise ``FileExistsError`` if it exists."""
    partial = _partial_of(path, data, mode)
    try:
        os.link(partial, path)
    finally:
        partial.unlink()
    fsync_directory(path.parent)
