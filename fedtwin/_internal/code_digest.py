"""A digest of the installed fedtwin code: what "which code ran" means in an audit log.

Invariant: the digest covers every ``.py`` file of the installed ``fedtwin`` package, by path
relative to the package and content, in sorted order; any edit to the code changes it, and
nothing else (timestamps, caches, the working directory) does.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import fedtwin


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """``sha256:<hex>`` of the fedtwin package source."""
    root = Path(fedtwin.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\x00")
        digest.update(path.read_bytes() + b"\x00")
    return "sha256:" + digest.hexdigest()
