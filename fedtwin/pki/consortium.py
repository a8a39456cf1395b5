"""Create a consortium's PKI and enrol sites into it (the recipes behind ``fedtwin pki``).

Invariants:

* nothing is ever overwritten: ``init`` builds the whole folder under a hidden partial name and
  renames it into place only when complete, and refuses an existing folder; ``enroll-site``
  refuses a site id that is already enrolled and builds its bundle the same way;
* the consortium folder keeps only public keys of sites; a site's private keys are written
  into its bundle only (or never exist at the consortium, when the site generated them);
* every private key is ``0600`` (see :mod:`fedtwin.pki._files`); no function here returns,
  prints or logs key material: results carry paths and fingerprints only.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fedtwin.errors import ConfigError
from fedtwin.pki._files import read_private, read_public, write_private, write_public
from fedtwin.pki.layout import BundleLayout, PkiLayout
from fedtwin.pki.supernode import (
    generate_supernode_keys,
    load_supernode_public_key,
    openssh_fingerprint,
)
from fedtwin.pki.tls import (
    DEFAULT_HOSTS,
    IssuedCredential,
    certificate_fingerprint,
    issue_server_certificate,
    load_certificate,
    new_ca,
)

Clock = Callable[[], datetime]
COORDINATOR_PARTY = "coordinator"
"""Key name of the coordinator's audit key (the party id its audit log uses)."""
SITE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""The same rule as ``fedtwin.federation.SiteId`` and an audit party id."""
CONSORTIUM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$"


def utc_now() -> datetime:
    """The wall clock, UTC (the default :data:`Clock`)."""
    return datetime.now(UTC)


class ConsortiumInfo(BaseModel):
    """Public facts of a consortium's PKI (``consortium.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consortium: str = Field(pattern=CONSORTIUM_PATTERN)
    hosts: tuple[str, ...] = Field(min_length=1, description="SANs of the coordinator's TLS")
    created_at: AwareDatetime
    ca_fingerprint: str
    tls_fingerprint: str
    coordinator_audit_key: str = Field(description="the coordinator's C2SP verifier key")


class Enrolment(BaseModel):
    """What a site's bundle holds (``enrolment.json``): ids and fingerprints, no key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str = Field(pattern=SITE_ID_PATTERN)
    consortium: str
    enrolled_at: AwareDatetime
    coordinator_hosts: tuple[str, ...]
    ca_fingerprint: str
    supernode_key_fingerprint: str
    site_audit_key: str = Field(description="the site's C2SP verifier key")
    coordinator_audit_key: str
    private_keys_in_bundle: bool = Field(
        description="false when the site generated its keys and sent only public ones"
    )


def _check_name(value: str, pattern: str, what: str) -> str:
    if not re.fullmatch(pattern, value):
        raise ConfigError(f"{what} {value!r} must match {pattern}")
    return value


def read_consortium(layout: PkiLayout) -> ConsortiumInfo:
    """Read and validate ``consortium.json`` of a PKI folder."""
    path = layout.consortium_file
    if not path.is_file():
        raise ConfigError(f"{layout.root}: not a fedtwin PKI folder (no {path.name})")
    try:
        return ConsortiumInfo.model_validate_json(path.read_bytes())
    except ValueError as error:
        raise ConfigError(f"{path}: invalid consortium file") from error


def _json_bytes(model: BaseModel) -> bytes:
    return (json.dumps(model.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def _partial_folder(final: Path) -> Path:
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ConfigError(f"{final}: already exists and is not empty; refusing to overwrite")
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o700)
    return partial


def _commit_folder(partial: Path, final: Path) -> None:
    if final.exists():
        final.rmdir()  # empty (checked by _partial_folder)
    partial.rename(final)


def init_consortium(
    out: Path,
    consortium: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    clock: Clock = utc_now,
    ca_days: int = 3650,
    tls_days: int = 365,
) -> ConsortiumInfo:
    """Create the consortium CA, the coordinator's TLS certificate and audit key in ``out``."""
    from fedtwin.audit import AuditSigner, write_verifier_key

    _check_name(consortium, CONSORTIUM_PATTERN, "consortium name")
    if not 1 <= tls_days <= ca_days <= 36500:
        raise ConfigError("validity: need 1 <= TLS days <= CA days <= 36500")
    now = clock()
    partial = _partial_folder(out)
    try:
        layout = PkiLayout(partial)
        ca = new_ca(consortium, now, ca_days)
        tls = issue_server_certificate(ca, list(hosts), now, tls_days)
        write_public(layout.ca_cert, ca.certificate_pem)
        write_private(layout.ca_key, ca.private_key_pem)
        write_public(layout.tls_cert, tls.certificate_pem)
        write_private(layout.tls_key, tls.private_key_pem)
        signer = AuditSigner.generate(COORDINATOR_PARTY)
        signer.save(layout.coordinator_audit_key)
        write_verifier_key(signer.verifier_key, layout.coordinator_verifier_key)
        layout.site_keys_dir.mkdir(parents=True)
        layout.supernodes_dir.mkdir(parents=True)
        info = ConsortiumInfo(
            consortium=consortium,
            hosts=tuple(hosts),
            created_at=now,
            ca_fingerprint=certificate_fingerprint(load_certificate(ca.certificate_pem, "CA")),
            tls_fingerprint=certificate_fingerprint(load_certificate(tls.certificate_pem, "TLS")),
            coordinator_audit_key=signer.verifier_key.encode(),
        )
        write_public(layout.consortium_file, _json_bytes(info))
        _commit_folder(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return info


def renew_tls(
    layout: PkiLayout,
    hosts: Sequence[str] | None = None,
    clock: Clock = utc_now,
    tls_days: int = 365,
) -> ConsortiumInfo:
    """Issue a new coordinator TLS certificate (same CA; optionally other SANs)."""
    info = read_consortium(layout)
    names = tuple(hosts) if hosts else info.hosts
    ca = IssuedCredential(
        read_public(layout.ca_cert, "CA certificate"), read_private(layout.ca_key)
    )
    tls = issue_server_certificate(ca, list(names), clock(), tls_days)
    # Key first, then certificate: a crash in between leaves a key the old certificate does
    # not match, which the SuperLink refuses loudly at start, never a silent mismatch.
    write_private(layout.tls_key, tls.private_key_pem, replace=True)
    write_public(layout.tls_cert, tls.certificate_pem, replace=True)
    renewed = info.model_copy(
        update={
            "hosts": names,
            "tls_fingerprint": certificate_fingerprint(
                load_certificate(tls.certificate_pem, "TLS")
            ),
        }
    )
    write_public(layout.consortium_file, _json_bytes(renewed), replace=True)
    return renewed


def enroll_site(
    layout: PkiLayout,
    site_id: str,
    clock: Clock = utc_now,
    supernode_public_key: Path | None = None,
    audit_verifier_key: Path | None = None,
) -> Enrolment:
    """Enrol ``site_id``: register its public keys and write its bundle.

    Without public keys, fresh key pairs are generated and their private halves go into the
    bundle only. With both ``supernode_public_key`` and ``audit_verifier_key`` (keys the site
    generated with ``fedtwin site keygen``), the bundle holds no private key at all.
    """
    from fedtwin.audit import AuditSigner, load_verifier_key, write_verifier_key

    _check_name(site_id, SITE_ID_PATTERN, "site id")
    if (supernode_public_key is None) != (audit_verifier_key is None):
        raise ConfigError(
            "give both the SuperNode public key and the audit verifier key, or neither"
        )
    info = read_consortium(layout)
    if layout.supernode_public_key(site_id).exists() or layout.site_verifier_key(site_id).exists():
        raise ConfigError(f"site {site_id} is already enrolled in {layout.root}")
    bundle_dir = layout.bundle(site_id).root
    partial = _partial_folder(bundle_dir)
    try:
        bundle = BundleLayout(partial)
        write_public(bundle.ca_cert, read_public(layout.ca_cert, "CA certificate"))
        write_public(
            bundle.coordinator_verifier_key,
            read_public(layout.coordinator_verifier_key, "coordinator verifier key"),
        )
        if supernode_public_key is None or audit_verifier_key is None:
            keys = generate_supernode_keys(
                bundle.supernode_key, bundle.supernode_public_key, site_id
            )
            supernode_fingerprint = keys.fingerprint
            signer = AuditSigner.generate(site_id)
            signer.save(bundle.audit_key)
            verifier = signer.verifier_key
        else:
            line = load_supernode_public_key(supernode_public_key)
            write_public(bundle.supernode_public_key, line + b"\n")
            supernode_fingerprint = openssh_fingerprint(line)
            verifier = load_verifier_key(audit_verifier_key)
            if verifier.name != site_id:
                raise ConfigError(
                    f"{audit_verifier_key}: key name {verifier.name!r} is not {site_id!r}"
                )
        write_verifier_key(verifier, bundle.verifier_key)
        enrolment = Enrolment(
            site_id=site_id,
            consortium=info.consortium,
            enrolled_at=clock(),
            coordinator_hosts=info.hosts,
            ca_fingerprint=info.ca_fingerprint,
            supernode_key_fingerprint=supernode_fingerprint,
            site_audit_key=verifier.encode(),
            coordinator_audit_key=info.coordinator_audit_key,
            private_keys_in_bundle=supernode_public_key is None,
        )
        write_public(bundle.enrolment_file, _json_bytes(enrolment))
        # The consortium's own record of the site: public keys only.
        write_public(
            layout.supernode_public_key(site_id), read_public(bundle.supernode_public_key, "key")
        )
        write_verifier_key(verifier, layout.site_verifier_key(site_id))
        _commit_folder(partial, bundle_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        layout.supernode_public_key(site_id).unlink(missing_ok=True)
        layout.site_verifier_key(site_id).unlink(missing_ok=True)
        raise
    return enrolment
