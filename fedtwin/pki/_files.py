"""Key and certificate files on disk (not API).

Invariants:

* a file is created complete or not at all: bytes go to a temporary sibling created with its
  final mode, are fsynced, then hard-linked into place, so an existing key or certificate is
  never overwritten (``replace=True`` swaps atomically instead, for a renewed certificate);
* a private key file is created ``0600`` and read only when neither group nor others may access
  it: a key someone else could have read is refused, never used;
* errors name the file and never its content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fedtwin.errors import ConfigError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def _write_partial(path: Path, data: bytes, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return partial


def write_file(path: Path, data: bytes, mode: int, replace: bool = False) -> None:
    """Create ``path`` with ``data`` and ``mode``; refuse to overwrite unless ``replace``."""
    partial = _write_partial(path, data, mode)
    try:
        if replace:
            os.replace(partial, path)
        else:
            os.link(partial, path)
    except FileExistsError as error:
        raise ConfigError(f"{path}: already exists; refusing to overwrite it") from error
    finally:
        partial.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, replace: bool = False) -> None:
    """Write a private key, mode ``0600``."""
    write_file(path, data, PRIVATE_MODE, replace=replace)


def write_public(path: Path, data: bytes, replace: bool = False) -> None:
    """Write a certificate or public key, mode ``0644``."""
    write_file(path, data, PUBLIC_MODE, replace=replace)


def check_private_mode(path: Path) -> None:
    """Refuse a private key file that group or others may read, write or execute."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise ConfigError(f"{path}: cannot read private key ({error.strerror})") from error
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: a private key must be a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: private key is accessible by others (chmod 600 it)")


def read_private(path: Path) -> bytes:
    """The bytes of a private key file, after :func:`check_private_mode`."""
    check_private_mode(path)
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read private key ({error.strerror})") from error


def read_public(path: Path, what: str) -> bytes:
    """The bytes of a certificate or public key file."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read {what} ({error.strerror})") from error
