from __future__ import annotations

import ssl
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import given
from hypothesis import strategies as st

from fedtwin.errors import ConfigError
from fedtwin.pki import PkiLayout, parse_host, verify_server_certificate
from fedtwin.pki.tls import new_ca, subject_alternative_names


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_coordinator_certificate_lists_every_requested_host_as_san(consortium: PkiLayout) -> None:
    names = subject_alternative_names(_cert(consortium.tls_cert))
    assert sorted(names) == sorted(["localhost", "127.0.0.1", "::1", "coordinator.example.org"])


def test_coordinator_certificate_chains_to_the_consortium_ca_for_each_san(
    consortium: PkiLayout, san_hosts: tuple[str, ...], now: datetime
) -> None:
    for host in san_hosts:
        verify_server_certificate(
            consortium.ca_cert.read_bytes(), consortium.tls_cert.read_bytes(), host, now
        )


def test_a_host_not_in_the_sans_is_refused(consortium: PkiLayout, now: datetime) -> None:
    with pytest.raises(ConfigError, match=r"not valid for evil\.example\.org"):
        verify_server_certificate(
            consortium.ca_cert.read_bytes(),
            consortium.tls_cert.read_bytes(),
            "evil.example.org",
            now,
        )


def test_certificate_is_refused_after_it_expires(consortium: PkiLayout, now: datetime) -> None:
    with pytest.raises(ConfigError, match="not valid"):
        verify_server_certificate(
            consortium.ca_cert.read_bytes(),
            consortium.tls_cert.read_bytes(),
            "localhost",
            now + timedelta(days=91),
        )


def test_certificate_from_another_ca_is_refused(consortium: PkiLayout, now: datetime) -> None:
    other = new_ca("Other", now, 365)
    with pytest.raises(ConfigError, match="not valid"):
        verify_server_certificate(
            other.certificate_pem, consortium.tls_cert.read_bytes(), "localhost", now
        )


def test_certificates_use_p384_and_the_tls_one_is_a_server_end_entity(
    consortium: PkiLayout,
) -> None:
    ca, tls = _cert(consortium.ca_cert), _cert(consortium.tls_cert)
    for certificate in (ca, tls):
        key = certificate.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp384r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not tls.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = tls.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_python_ssl_loads_the_coordinator_key_pair_and_trusts_the_ca(
    consortium: PkiLayout,
) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(consortium.tls_cert, consortium.tls_key)
    client = ssl.create_default_context(cafile=str(consortium.ca_cert))
    assert client.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize("host", ["", "bad host", "-lead.example", "a..b", "x" * 64 + ".org"])
def test_invalid_host_names_are_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="neither an IP address nor a valid DNS name"):
        parse_host(host)


@given(st.ip_addresses())
def test_any_ip_address_becomes_an_ip_san(address: object) -> None:
    name = parse_host(str(address))
    assert isinstance(name, x509.IPAddress)
    assert str(name.value) == str(address)
