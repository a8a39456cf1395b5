"""Keys a site generates itself, so that its private keys never leave the hospital.

``fedtwin site keygen`` writes the site's SuperNode key pair and its Ed25519 audit key pair
into a folder laid out like an enrolment bundle (:class:`~fedtwin.pki.layout.BundleLayout`);
the site sends only ``supernode.pub`` and ``site.vkey`` to the consortium, which enrols them
with ``fedtwin pki enroll-site SITE_ID --supernode-public-key ... --audit-verifier-key ...``
and returns a bundle holding only public material (the CA and the coordinator's verifier key).

Invariant: private keys are created ``0600`` and never overwritten.
"""

from __future__ import annotations

import re
from pathlib import Path

from fedtwin.errors import ConfigError
from fedtwin.pki.consortium import SITE_ID_PATTERN
from fedtwin.pki.layout import BundleLayout
from fedtwin.pki.supernode import generate_supernode_keys


def generate_site_keys(folder: Path, site_id: str) -> BundleLayout:
    """Create the site's SuperNode and audit key pairs in ``folder``; return its layout."""
    from fedtwin.audit import AuditSigner, write_verifier_key

    if not re.fullmatch(SITE_ID_PATTERN, site_id):
        raise ConfigError(f"site id {site_id!r} must match {SITE_ID_PATTERN}")
    bundle = BundleLayout(folder)
    for path in (bundle.supernode_key, bundle.audit_key):
        if path.exists():
            raise ConfigError(f"{path}: already exists; refusing to overwrite a key")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    generate_supernode_keys(bundle.supernode_key, bundle.supernode_public_key, site_id)
    signer = AuditSigner.generate(site_id)
    signer.save(bundle.audit_key)
    write_verifier_key(signer.verifier_key, bundle.verifier_key)
    return bundle
