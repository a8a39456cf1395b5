"""A site's ingested export, kept on the site's own disk so that each process need not re-read it.

Reading a site's Bulk FHIR export validates every resource (about 10 s for 1,000 patients-days
of CGM); a simulation actor, a restarted SuperNode and ``fedtwin twin evaluate`` would each pay
that again for the same bytes. :func:`read_site_cached` keeps the result
of :func:`~fedtwin.fhir.reader.read_site` in ``<state_dir>/ingest-cache/``.

Invariants:

* an entry is used only for byte-identical export files (SHA-256 of every file of the folder,
  with its name), the same ingest options and the same ingest code (SHA-256 of the source of
  :mod:`fedtwin.fhir`, plus the versions of fhir.resources and pydantic), so a changed record,
  a new withdrawal, another policy or another reader re-reads the export;
* an entry is authenticated with HMAC-SHA256 under a key derived from the site secret and bound
  to its key; it is unpickled only after the tag verifies. A changed, truncated or foreign entry
  is never used (fail closed): the export is read again and the entry replaced;
* entries hold patient data and get the export's protection: a 0700 folder, 0600 files, inside
  the site's state folder, never sent anywhere; written under a temporary name and renamed, so a
  concurrent reader sees a whole entry or none; at most :data:`KEEP_ENTRIES` entries are kept.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from fedtwin.fhir.ndjson import ParsedResource
from fedtwin.fhir.pseudonym import load_or_create_site_secret
from fedtwin.fhir.reader import IngestOptions, SiteExport, read_site

CACHE_FOLDER = "ingest-cache"
KEEP_ENTRIES = 2
_MAGIC = b"FTINGC01"
_KEY_DOMAIN = b"fedtwin/ingest-cache/v1\x00"
_TAG_BYTES = 32
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


@functools.cache
def _code_digest() -> bytes:
    """SHA-256 of the ingest code and the versions of the libraries whose objects are kept."""
    import fhir.resources
    import pydantic

    digest = hashlib.sha256()
    package = Path(__file__).parent
    for source in sorted(package.glob("*.py")):
        digest.update(source.name.encode() + b"\x00" + source.read_bytes() + b"\x00")
    digest.update(f"{fhir.resources.__version__}/{pydantic.VERSION}".encode())
    return digest.digest()


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def entry_key(folder: Path, options_json: str) -> str:
    """The cache key of an export folder's current contents under these ingest options."""
    digest = hashlib.sha256(_code_digest())
    digest.update(options_json.encode() + b"\x00")
    for path in sorted(folder.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\x00" + _file_digest(path))
    return digest.hexdigest()


def _tag(secret: bytes, key: str, payload: bytes) -> bytes:
    mac_key = hmac.new(secret, _KEY_DOMAIN, hashlib.sha256).digest()
    return hmac.new(mac_key, _MAGIC + key.encode() + b"\x00" + payload, hashlib.sha256).digest()


def _entry_path(state_dir: Path, key: str) -> Path:
    return state_dir / CACHE_FOLDER / f"{key}.bin"


def load_entry(state_dir: Path, key: str, secret: bytes) -> tuple[str, SiteExport] | None:
    """The folder and cached export under ``key``, or None (missing, or failed authentication)."""
    path = _entry_path(state_dir, key)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    head, tag = blob[: len(_MAGIC)], blob[len(_MAGIC) : len(_MAGIC) + _TAG_BYTES]
    payload = blob[len(_MAGIC) + _TAG_BYTES :]
    if head != _MAGIC or not hmac.compare_digest(tag, _tag(secret, key, payload)):
        log.warning("ingest cache entry %s failed authentication; the export is read again", path)
        return None
    try:
        # Unpickled only after the tag verified under the site secret.
        folder, export = pickle.loads(payload)
    except Exception:  # an authenticated entry of an incompatible build: read again
        log.warning("ingest cache entry %s could not be loaded; the export is read again", path)
        return None
    if not isinstance(folder, str) or not isinstance(export, SiteExport):
        return None
    return folder, export


def store_entry(state_dir: Path, key: str, secret: bytes, source: Path, export: SiteExport) -> None:
    """Keep ``source``'s ``export`` under ``key`` (atomic, 0600); drop all but the newest."""
    folder = state_dir / CACHE_FOLDER
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    payload = pickle.dumps((str(source), export), protocol=pickle.HIGHEST_PROTOCOL)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".entry-", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(_MAGIC + _tag(secret, key, payload) + payload)
        os.replace(temporary, _entry_path(state_dir, key))
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    entries = sorted(folder.glob("*.bin"), key=_modified_ns, reverse=True)
    for stale in entries[KEEP_ENTRIES:]:
        stale.unlink(missing_ok=True)


def _modified_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # removed meanwhile by another process of the same site
        return -1


def read_site_cached(folder: Path, *, state_dir: Path, options: IngestOptions) -> SiteExport:
    """``read_site`` of ``folder`` under the site's secret, from the site's cache if unchanged.

    The cache in ``state_dir`` is used when the files, the options and the reader are the ones
    an entry was made from (module docstring); otherwise the export is read and kept.

    Raises
    ------
    IngestError
        As :func:`~fedtwin.fhir.reader.read_site` (nothing is cached then).
    """
    secret = load_or_create_site_secret(state_dir)
    return cached_read(
        folder,
        state_dir,
        secret,
        options.model_dump_json(),
        lambda: read_site(folder, secret=secret, options=options),
    )


def cached_read(
    folder: Path,
    state_dir: Path,
    secret: bytes,
    options_json: str,
    read: Callable[[], SiteExport],
) -> SiteExport:
    """``read()``'s export of ``folder``, from the site's cache when its files are unchanged."""
    key = entry_key(folder, options_json)
    entry = load_entry(state_dir, key, secret)
    if entry is not None:
        return _rehomed(*entry, folder)
    export = read()
    # Only an export whose files did not change while they were read is kept under their key.
    if entry_key(folder, options_json) == key:
        store_entry(state_dir, key, secret, folder, export)
    return export


def _rehomed(old: str, export: SiteExport, folder: Path) -> SiteExport:
    """The entry's file names re-rooted at ``folder`` (the same bytes may have moved)."""
    new = str(folder)
    if old == new:
        return export

    def moved(parsed: ParsedResource) -> ParsedResource:
        return replace(parsed, file=folder / parsed.file.name)

    examples = tuple(e.replace(old, new, 1) for e in export.report.examples)
    report = export.report.model_copy(update={"examples": examples})
    consents = {k: [moved(p) for p in v] for k, v in export.consents.items()}
    return replace(export, consents=consents, report=report)
