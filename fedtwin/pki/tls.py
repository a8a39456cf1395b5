"""The consortium CA and the coordinator's TLS certificate: fixed, safe choices only.

Every key here is ECDSA on NIST P-384 and every signature ECDSA with SHA-384: the SuperLink
serves HTTPS through uvicorn (Python's ``ssl``/OpenSSL) and the SuperNodes verify it with
``httpx``, and both accept these without any configuration. The CA is a root with
``pathLenConstraint = 0`` (it signs end-entity certificates only); the coordinator's certificate
is an end entity for ``serverAuth`` whose subject alternative names list every DNS name and IP
address the sites use to reach it (a name that is not listed fails the sites' TLS check).

Invariant: :func:`verify_server_certificate` accepts a certificate only if it chains to the
consortium CA, is valid at the given time and names the given host, using ``cryptography``'s
RFC 5280 path validation (the same rules a TLS client applies).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedtwin.errors import ConfigError

CURVE = ec.SECP384R1
SIGNATURE_HASH = hashes.SHA384
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
"""SANs of a coordinator certificate when none are given: loopback only."""

_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class IssuedCredential:
    """A certificate and its private key, both PEM (the key is PKCS#8, unencrypted)."""

    certificate_pem: bytes
    private_key_pem: bytes


def parse_host(host: str) -> x509.GeneralName:
    """A SAN entry: an IP address when ``host`` parses as one, else a DNS name (checked)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.strip().lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(f"host {host!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(name)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def new_ca(consortium: str, now: datetime, days: int) -> IssuedCredential:
    """A self-signed consortium root CA valid from ``now`` for ``days`` days."""
    key = ec.generate_private_key(CURVE())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} consortium CA"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, SIGNATURE_HASH())
    )
    return IssuedCredential(certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def _load_ca_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError("CA key is not an unencrypted PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("CA key is not an ECDSA key")
    return key


def load_certificate(pem: bytes, what: str) -> x509.Certificate:
    """Parse one PEM certificate; a malformed one raises :class:`ConfigError`."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise ConfigError(f"{what} is not a PEM certificate") from error


def issue_server_certificate(
    ca: IssuedCredential, hosts: Sequence[str], now: datetime, days: int
) -> IssuedCredential:
    """The coordinator's TLS certificate for ``hosts``, signed by the consortium CA."""
    if not hosts:
        raise ConfigError("a TLS certificate needs at least one host name or IP address")
    names = [parse_host(host) for host in hosts]
    ca_certificate = load_certificate(ca.certificate_pem, "CA certificate")
    ca_key = _load_ca_key(ca.private_key_pem)
    key = ec.generate_private_key(CURVE())
    first = names[0].value
    not_after = min(now + timedelta(days=days), ca_certificate.not_valid_after_utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first))]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, SIGNATURE_HASH())
    )
    return IssuedCredential(certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def subject_alternative_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for, as text."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in extension.value]


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """``sha256:`` and the hex SHA-256 of the DER certificate, lower-case without colons."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def verify_server_certificate(
    ca_pem: bytes, certificate_pem: bytes, host: str, now: datetime
) -> None:
    """Raise :class:`ConfigError` unless the certificate chains to the CA and names ``host``.

    Steps, each fail-closed: (1) both parse as certificates; (2) ``host`` is a valid IP
    address or DNS name; (3) RFC 5280 path validation from the certificate to the CA at ``now``
    for a TLS server named ``host``.
    """
    # (1): parse.
    ca_certificate = load_certificate(ca_pem, "CA certificate")
    certificate = load_certificate(certificate_pem, "TLS certificate")
    # (2): the name the clients will check.
    subject = parse_host(host)
    if not isinstance(subject, x509.DNSName | x509.IPAddress):
        raise ConfigError(f"host {host!r} cannot be checked")
    # (3): path validation.
    verifier = (
        PolicyBuilder().store(Store([ca_certificate])).time(now).build_server_verifier(subject)
    )
    try:
        verifier.verify(certificate, [])
    except VerificationError as error:
        raise ConfigError(f"TLS certificate is not valid for {host}: {error}") from error
