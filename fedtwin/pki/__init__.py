"""Consortium PKI: CA, coordinator TLS, SuperNode authentication keys, audit keys.

Safe recipes with fixed algorithm choices (ECDSA P-384 for TLS and SuperNode authentication,
Ed25519 for audit signatures); private keys are written ``0600``, refused when others may read
them, and never printed or logged. See :mod:`fedtwin.pki.layout` for the folder layout.
"""

from fedtwin.pki.consortium import (
    COORDINATOR_PARTY,
    ConsortiumInfo,
    Enrolment,
    enroll_site,
    init_consortium,
    read_consortium,
    renew_tls,
)
from fedtwin.pki.inventory import (
    EXPIRY_WARNING_DAYS,
    Credential,
    Health,
    Inventory,
    certificate_health,
    inspect_pki,
)
from fedtwin.pki.layout import BundleLayout, PkiLayout
from fedtwin.pki.site_keys import generate_site_keys
from fedtwin.pki.supernode import (
    check_supernode_private_key,
    load_supernode_public_key,
    supernode_public_key_fingerprint,
)
from fedtwin.pki.tls import DEFAULT_HOSTS, parse_host, verify_server_certificate

__all__ = [
    "COORDINATOR_PARTY",
    "DEFAULT_HOSTS",
    "EXPIRY_WARNING_DAYS",
    "BundleLayout",
    "ConsortiumInfo",
    "Credential",
    "Enrolment",
    "Health",
    "Inventory",
    "PkiLayout",
    "certificate_health",
    "check_supernode_private_key",
    "enroll_site",
    "generate_site_keys",
    "init_consortium",
    "inspect_pki",
    "load_supernode_public_key",
    "parse_host",
    "read_consortium",
    "renew_tls",
    "supernode_public_key_fingerprint",
    "verify_server_certificate",
]
