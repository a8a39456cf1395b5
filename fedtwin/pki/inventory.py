"""What a PKI folder holds, with fingerprints and expiry: the facts ``fedtwin pki show`` prints.

Invariants: an inventory names files and gives SHA-256 fingerprints, validity dates and file
modes, never key material; a certificate is ``expiring`` when it has fewer than
:data:`EXPIRY_WARNING_DAYS` days left at the (injected) time of the check and ``expired`` once
``not_valid_after`` has passed; a private key that others may read is flagged ``exposed``.
"""

from __future__ import annotations

import stat
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict

from fedtwin.errors import ConfigError
from fedtwin.pki._files import read_public
from fedtwin.pki.consortium import Clock, read_consortium, utc_now
from fedtwin.pki.layout import PkiLayout
from fedtwin.pki.supernode import supernode_public_key_fingerprint
from fedtwin.pki.tls import certificate_fingerprint, load_certificate, subject_alternative_names

EXPIRY_WARNING_DAYS = 30


class Health(StrEnum):
    """State of one credential at the time of the check."""

    OK = "ok"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    EXPOSED = "exposed"
    MISSING = "missing"


class Credential(BaseModel):
    """One file of the PKI folder as ``show`` reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str
    path: Path
    fingerprint: str | None = None
    not_after: AwareDatetime | None = None
    days_left: int | None = None
    names: tuple[str, ...] = ()
    health: Health = Health.OK


class Inventory(BaseModel):
    """Every credential of a consortium's PKI folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consortium: str
    checked_at: AwareDatetime
    credentials: tuple[Credential, ...]
    enrolled_sites: tuple[str, ...]
    bundles_not_handed_over: tuple[str, ...]

    @property
    def worst(self) -> Health:
        """The most urgent health among all credentials."""
        order = list(Health)
        bad = [c.health for c in self.credentials if c.health is not Health.OK]
        return max(bad, key=lambda h: order.index(h)) if bad else Health.OK


def certificate_health(not_before: datetime, not_after: datetime, now: datetime) -> Health:
    """``ok``, ``expiring`` (fewer than 30 days left), ``expired`` or ``not-yet-valid``."""
    if now < not_before:
        return Health.NOT_YET_VALID
    if now >= not_after:
        return Health.EXPIRED
    if not_after - now < timedelta(days=EXPIRY_WARNING_DAYS):
        return Health.EXPIRING
    return Health.OK


def _certificate(role: str, path: Path, now: datetime) -> Credential:
    if not path.is_file():
        return Credential(role=role, path=path, health=Health.MISSING)
    certificate = load_certificate(read_public(path, role), f"{path}")
    not_after = certificate.not_valid_after_utc
    return Credential(
        role=role,
        path=path,
        fingerprint=certificate_fingerprint(certificate),
        not_after=not_after,
        days_left=(not_after - now).days,
        names=tuple(subject_alternative_names(certificate)),
        health=certificate_health(certificate.not_valid_before_utc, not_after, now),
    )


def _private_key(role: str, path: Path) -> Credential:
    if not path.is_file():
        return Credential(role=role, path=path, health=Health.MISSING)
    exposed = path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    return Credential(role=role, path=path, health=Health.EXPOSED if exposed else Health.OK)


def _verifier(role: str, path: Path) -> Credential:
    from fedtwin.audit import load_verifier_key

    if not path.is_file():
        return Credential(role=role, path=path, health=Health.MISSING)
    key = load_verifier_key(path)
    return Credential(role=role, path=path, fingerprint=key.fingerprint, names=(key.name,))


def inspect_pki(layout: PkiLayout, clock: Clock = utc_now) -> Inventory:
    """Fingerprints, validity and file modes of every credential in the PKI folder."""
    info = read_consortium(layout)
    now = clock()
    credentials = [
        _certificate("CA certificate", layout.ca_cert, now),
        _private_key("CA private key", layout.ca_key),
        _certificate("coordinator TLS certificate", layout.tls_cert, now),
        _private_key("coordinator TLS key", layout.tls_key),
        _private_key("coordinator audit key", layout.coordinator_audit_key),
        _verifier("coordinator audit verifier key", layout.coordinator_verifier_key),
    ]
    sites = layout.enrolled_sites()
    for site in sites:
        public = layout.supernode_public_key(site)
        try:
            fingerprint = supernode_public_key_fingerprint(public)
        except ConfigError:
            credentials.append(
                Credential(role=f"{site} SuperNode key", path=public, health=Health.MISSING)
            )
        else:
            credentials.append(
                Credential(role=f"{site} SuperNode key", path=public, fingerprint=fingerprint)
            )
        credentials.append(_verifier(f"{site} audit verifier key", layout.site_verifier_key(site)))
    bundles_root = layout.root / "bundles"
    pending = tuple(
        sorted(
            folder.name
            for folder in (bundles_root.iterdir() if bundles_root.is_dir() else [])
            if folder.is_dir() and not folder.name.startswith(".")
        )
    )
    for site in pending:
        bundle = layout.bundle(site)
        for key in (bundle.supernode_key, bundle.audit_key):
            if key.exists():
                credentials.append(_private_key(f"{site} bundle private key", key))
    return Inventory(
        consortium=info.consortium,
        checked_at=now,
        credentials=tuple(credentials),
        enrolled_sites=tuple(sites),
        bundles_not_handed_over=pending,
    )
