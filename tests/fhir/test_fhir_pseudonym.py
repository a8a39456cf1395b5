"""Keyed pseudonyms and the site secret file."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

import pytest

from fedtwin.errors import ConfigError
from fedtwin.fhir import load_or_create_site_secret, pseudonym


def test_pseudonym_is_hmac_sha256_of_the_domain_separated_id() -> None:
    secret = bytes(range(32))
    expected = hmac.new(secret, b"fedtwin/patient-pseudonym/v1\x00p-17", hashlib.sha256)
    assert pseudonym(secret, "p-17") == expected.hexdigest()[:32]


def test_pseudonym_depends_on_the_secret_and_the_id() -> None:
    one, two = bytes(32), bytes([1]) + bytes(31)
    assert pseudonym(one, "a") != pseudonym(two, "a")
    assert pseudonym(one, "a") != pseudonym(one, "b")
    assert re.fullmatch(r"[0-9a-f]{32}", pseudonym(one, "a"))


def test_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        pseudonym(b"short", "a")


def test_secret_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    draws: list[int] = []

    def fake_random(size: int) -> bytes:
        draws.append(size)
        return bytes([7]) * size

    first = load_or_create_site_secret(tmp_path / "state", token_bytes=fake_random)
    second = load_or_create_site_secret(tmp_path / "state", token_bytes=fake_random)
    assert first == second == bytes([7]) * 32
    assert draws == [32]
    assert (tmp_path / "state" / "site-secret.key").stat().st_mode & 0o777 == 0o600


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_site_secret(tmp_path)
    os.chmod(tmp_path / "site-secret.key", 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_or_create_site_secret(tmp_path)


def test_secret_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site-secret.key"
    path.write_bytes(b"x" * 16)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        load_or_create_site_secret(tmp_path)
