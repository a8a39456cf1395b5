r"""Keyed pseudonyms: the only form in which a patient may be named outside the site.

Invariants:

* ``pseudonym(secret, id)`` is HMAC-SHA256 over a domain-separated message
  (``b"fedtwin/patient-pseudonym/v1\\x00" + id``) with the site secret, hex, cut to
  :data:`PSEUDONYM_HEX_CHARS` characters (128 bits): stable at one site, unlinkable across
  sites, not invertible without the secret;
* the site secret is 32 random bytes in a file created with mode 0600 (exclusive create, so two
  processes never write two secrets); a secret file that is readable by group or others, or is
  not 32 bytes, is refused (fail closed) rather than used.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from fedtwin.errors import ConfigError

SECRET_BYTES = 32
SECRET_FILE = "site-secret.key"
PSEUDONYM_HEX_CHARS = 32
_DOMAIN = b"fedtwin/patient-pseudonym/v1\x00"


def pseudonym(secret: bytes, patient_id: str) -> str:
    """Keyed pseudonym of a local patient id.

    Parameters
    ----------
    secret : bytes
        The site secret (at least 32 bytes).
    patient_id : str
        Local patient id.

    Returns
    -------
    str
        32 lowercase hex characters.

    Raises
    ------
    ConfigError
        If the secret is shorter than 32 bytes.
    """
    if len(secret) < SECRET_BYTES:
        raise ConfigError(f"site secret must be at least {SECRET_BYTES} bytes")
    digest = hmac.new(secret, _DOMAIN + patient_id.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:PSEUDONYM_HEX_CHARS]


def load_or_create_site_secret(
    state_dir: Path, *, token_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> bytes:
    """The site secret in ``state_dir/site-secret.key``, created (0600) on first use.

    Parameters
    ----------
    state_dir : Path
        The site's state folder (created 0700 if missing).
    token_bytes : Callable[[int], bytes]
        Source of randomness (injected for tests; a CSPRNG by default).

    Returns
    -------
    bytes
        The 32-byte secret.

    Raises
    ------
    ConfigError
        If an existing secret file has the wrong size or is readable by group or others.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / SECRET_FILE
    if not path.exists():
        secret = token_bytes(SECRET_BYTES)
        if len(secret) != SECRET_BYTES:
            raise ConfigError("the random source gave a secret of the wrong size")
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs below
        else:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secret)
                handle.flush()
                os.fsync(handle.fileno())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path}: site secret is readable by others (mode {mode:o}); chmod 600")
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"{path}: site secret must be exactly {SECRET_BYTES} bytes")
    return secret
