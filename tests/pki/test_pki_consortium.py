from __future__ import annotations

import json
import stat
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from fedtwin.audit import AuditSigner, load_verifier_key
from fedtwin.errors import ConfigError
from fedtwin.pki import (
    PkiLayout,
    enroll_site,
    generate_site_keys,
    init_consortium,
    read_consortium,
    renew_tls,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_private_key_is_written_0600(consortium: PkiLayout) -> None:
    private = [consortium.ca_key, consortium.tls_key, consortium.coordinator_audit_key]
    for site in ("site-a", "site-b"):
        bundle = consortium.bundle(site)
        private += [bundle.supernode_key, bundle.audit_key]
    assert {_mode(path) for path in private} == {0o600}


def test_consortium_folder_keeps_only_public_keys_of_sites(consortium: PkiLayout) -> None:
    coordinator_files = [p for p in consortium.coordinator_dir.rglob("*") if p.is_file()]
    site_files = [p for p in coordinator_files if "site-a" in p.name or "site-b" in p.name]
    assert sorted(p.name for p in site_files) == [
        "site-a.pub",
        "site-a.vkey",
        "site-b.pub",
        "site-b.vkey",
    ]
    assert all(b"PRIVATE KEY" not in p.read_bytes() for p in site_files)


def test_bundle_holds_what_the_site_needs_and_its_manifest_matches(
    consortium: PkiLayout,
) -> None:
    bundle = consortium.bundle("site-a")
    manifest = json.loads(bundle.enrolment_file.read_text())
    assert bundle.ca_cert.read_bytes() == consortium.ca_cert.read_bytes()
    assert bundle.coordinator_verifier_key.read_bytes() == (
        consortium.coordinator_verifier_key.read_bytes()
    )
    signer = AuditSigner.load(bundle.audit_key, "site-a")
    assert manifest["site_audit_key"] == signer.verifier_key.encode()
    assert load_verifier_key(consortium.site_verifier_key("site-a")) == signer.verifier_key
    assert manifest["private_keys_in_bundle"] is True
    assert manifest["ca_fingerprint"] == read_consortium(consortium).ca_fingerprint


def test_coordinator_audit_key_is_named_coordinator(consortium: PkiLayout) -> None:
    signer = AuditSigner.load(consortium.coordinator_audit_key, "coordinator")
    assert load_verifier_key(consortium.coordinator_verifier_key) == signer.verifier_key


def test_init_refuses_an_existing_pki_folder(
    consortium: PkiLayout, clock_at: Callable[..., Callable[[], datetime]]
) -> None:
    before = consortium.ca_key.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_consortium(consortium.root, "Again", clock=clock_at())
    assert consortium.ca_key.read_bytes() == before


def test_init_with_a_bad_host_leaves_nothing_behind(
    tmp_path: Path, clock_at: Callable[..., Callable[[], datetime]]
) -> None:
    with pytest.raises(ConfigError, match="valid DNS name"):
        init_consortium(tmp_path / "pki", "Bad", ["ok.example", "not a host"], clock=clock_at())
    assert list(tmp_path.iterdir()) == []


def test_enrolling_a_site_twice_is_refused(
    consortium: PkiLayout, clock_at: Callable[..., Callable[[], datetime]]
) -> None:
    before = consortium.supernode_public_key("site-a").read_bytes()
    with pytest.raises(ConfigError, match="already enrolled"):
        enroll_site(consortium, "site-a", clock=clock_at())
    assert consortium.supernode_public_key("site-a").read_bytes() == before


@pytest.mark.parametrize("site_id", ["Site-A", "site_a", "-site", ""])
def test_invalid_site_ids_are_refused(
    consortium: PkiLayout, site_id: str, clock_at: Callable[..., Callable[[], datetime]]
) -> None:
    with pytest.raises(ConfigError, match="site id"):
        enroll_site(consortium, site_id, clock=clock_at())


def test_site_generated_keys_enrol_without_any_private_key_at_the_consortium(
    consortium: PkiLayout, tmp_path: Path, clock_at: Callable[..., Callable[[], datetime]]
) -> None:
    own = generate_site_keys(tmp_path / "keys", "site-own")
    enrolment = enroll_site(
        consortium,
        "site-own",
        clock=clock_at(),
        supernode_public_key=own.supernode_public_key,
        audit_verifier_key=own.verifier_key,
    )
    bundle = consortium.bundle("site-own")
    assert not enrolment.private_keys_in_bundle
    assert not bundle.supernode_key.exists() and not bundle.audit_key.exists()
    assert (
        consortium.supernode_public_key("site-own").read_bytes().split()[:2]
        == (own.supernode_public_key.read_bytes().split()[:2])
    )
    assert _mode(own.supernode_key) == 0o600 and _mode(own.audit_key) == 0o600


def test_a_verifier_key_of_another_site_is_refused(
    consortium: PkiLayout, tmp_path: Path, clock_at: Callable[..., Callable[[], datetime]]
) -> None:
    own = generate_site_keys(tmp_path / "keys", "site-x")
    with pytest.raises(ConfigError, match="is not 'site-y'"):
        enroll_site(
            consortium,
            "site-y",
            clock=clock_at(),
            supernode_public_key=own.supernode_public_key,
            audit_verifier_key=own.verifier_key,
        )
    assert not consortium.supernode_public_key("site-y").exists()
    assert not consortium.bundle("site-y").root.exists()


def test_renewing_tls_keeps_the_ca_and_changes_the_certificate(
    tmp_path: Path, clock_at: Callable[..., Callable[[], datetime]]
) -> None:
    layout = PkiLayout(tmp_path / "pki")
    first = init_consortium(layout.root, "Renew", clock=clock_at(), tls_days=30)
    renewed = renew_tls(layout, ["coordinator.example.org"], clock=clock_at(), tls_days=60)
    assert renewed.ca_fingerprint == first.ca_fingerprint
    assert renewed.tls_fingerprint != first.tls_fingerprint
    assert renewed.hosts == ("coordinator.example.org",)
    assert _mode(layout.tls_key) == 0o600
