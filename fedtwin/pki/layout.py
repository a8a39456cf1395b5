"""Where every credential of a consortium lives: one folder, a fixed layout.

``fedtwin pki init --out DIR`` creates, and ``enroll-site`` adds to::

    DIR/
      consortium.json                 consortium name, SANs, creation time (public)
      ca/ca.pem                       consortium CA certificate (every party gets a copy)
      ca/ca.key                       CA private key, 0600: keep it offline
      coordinator/                    what the coordinator machine needs (its "consortium dir")
        tls.pem, tls.key              SuperLink TLS certificate (SANs) and its key (0600)
        coordinator.audit.pem         the coordinator's Ed25519 audit signing key (0600)
        coordinator.vkey              its audit verifier key (public)
        site-keys/<site-id>.vkey      each enrolled site's audit verifier key
        supernodes/<site-id>.pub      each enrolled site's SuperNode public key (OpenSSH)
      bundles/<site-id>/              the enrolment bundle: hand it to the site, then delete it
        ca.pem                        the consortium CA (verifies the coordinator's TLS)
        supernode.key, supernode.pub  the site's SuperNode authentication key pair
        site.audit.pem, site.vkey     the site's Ed25519 audit key pair
        coordinator.vkey              the coordinator's audit verifier key (what the site cosigns)
        enrolment.json                site id, consortium, fingerprints of everything above

Invariants: the consortium keeps only *public* keys of a site (``coordinator/``); a site's
private keys exist only in its bundle (or never leave the site, when it generated them itself
and enrolled with its public keys). Every private key file is ``0600``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONSORTIUM_FILE = "consortium.json"
ENROLMENT_FILE = "enrolment.json"


@dataclass(frozen=True)
class PkiLayout:
    """Paths of a consortium's PKI folder (see the module docstring)."""

    root: Path

    @property
    def consortium_file(self) -> Path:
        """Public facts of the consortium (name, SANs, creation time)."""
        return self.root / CONSORTIUM_FILE

    @property
    def ca_cert(self) -> Path:
        """The consortium CA certificate."""
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The consortium CA private key (0600)."""
        return self.root / "ca" / "ca.key"

    @property
    def coordinator_dir(self) -> Path:
        """The coordinator's folder (its ServerApp's ``consortium-dir``)."""
        return self.root / "coordinator"

    @property
    def tls_cert(self) -> Path:
        """The SuperLink TLS certificate."""
        return self.coordinator_dir / "tls.pem"

    @property
    def tls_key(self) -> Path:
        """The SuperLink TLS private key (0600)."""
        return self.coordinator_dir / "tls.key"

    @property
    def coordinator_audit_key(self) -> Path:
        """The coordinator's Ed25519 audit signing key (0600)."""
        return self.coordinator_dir / "coordinator.audit.pem"

    @property
    def coordinator_verifier_key(self) -> Path:
        """The coordinator's audit verifier key."""
        return self.coordinator_dir / "coordinator.vkey"

    @property
    def site_keys_dir(self) -> Path:
        """Enrolled sites' audit verifier keys, ``<site-id>.vkey``."""
        return self.coordinator_dir / "site-keys"

    @property
    def supernodes_dir(self) -> Path:
        """Enrolled sites' SuperNode public keys, ``<site-id>.pub``."""
        return self.coordinator_dir / "supernodes"

    def site_verifier_key(self, site_id: str) -> Path:
        """An enrolled site's audit verifier key."""
        return self.site_keys_dir / f"{site_id}.vkey"

    def supernode_public_key(self, site_id: str) -> Path:
        """An enrolled site's SuperNode public key."""
        return self.supernodes_dir / f"{site_id}.pub"

    def bundle(self, site_id: str) -> BundleLayout:
        """The enrolment bundle of one site."""
        return BundleLayout(self.root / "bundles" / site_id)

    def enrolled_sites(self) -> list[str]:
        """Site ids with a registered SuperNode public key, sorted."""
        if not self.supernodes_dir.is_dir():
            return []
        return sorted(path.stem for path in self.supernodes_dir.glob("*.pub"))


@dataclass(frozen=True)
class BundleLayout:
    """Paths of one site's enrolment bundle (also the layout a site keeps it in)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The consortium CA certificate."""
        return self.root / "ca.pem"

    @property
    def supernode_key(self) -> Path:
        """The site's SuperNode private key (OpenSSH, 0600)."""
        return self.root / "supernode.key"

    @property
    def supernode_public_key(self) -> Path:
        """The site's SuperNode public key (OpenSSH)."""
        return self.root / "supernode.pub"

    @property
    def audit_key(self) -> Path:
        """The site's Ed25519 audit signing key (0600)."""
        return self.root / "site.audit.pem"

    @property
    def verifier_key(self) -> Path:
        """The site's audit verifier key."""
        return self.root / "site.vkey"

    @property
    def coordinator_verifier_key(self) -> Path:
        """The coordinator's audit verifier key."""
        return self.root / "coordinator.vkey"

    @property
    def enrolment_file(self) -> Path:
        """What the bundle holds, with fingerprints."""
        return self.root / ENROLMENT_FILE
