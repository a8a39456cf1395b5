from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedtwin.pki import (
    EXPIRY_WARNING_DAYS,
    Health,
    PkiLayout,
    certificate_health,
    init_consortium,
    inspect_pki,
)

Clock = Callable[..., Callable[[], datetime]]


def _by_role(layout: PkiLayout, clock: Callable[[], datetime]) -> dict[str, Health]:
    return {c.role: c.health for c in inspect_pki(layout, clock).credentials}


def test_fresh_consortium_is_all_ok(consortium: PkiLayout, clock_at: Clock) -> None:
    inventory = inspect_pki(consortium, clock_at())
    assert inventory.worst is Health.OK
    assert inventory.enrolled_sites == ("site-a", "site-b")


def test_tls_certificate_warns_inside_the_last_30_days(
    consortium: PkiLayout, clock_at: Clock, now: datetime
) -> None:
    health = _by_role(consortium, clock_at(now + timedelta(days=90 - 29)))
    assert health["coordinator TLS certificate"] is Health.EXPIRING
    assert health["CA certificate"] is Health.OK


def test_tls_certificate_is_expired_after_its_validity(
    consortium: PkiLayout, clock_at: Clock, now: datetime
) -> None:
    inventory = inspect_pki(consortium, clock_at(now + timedelta(days=91)))
    assert inventory.worst is Health.EXPIRED


def test_a_private_key_readable_by_others_is_flagged_exposed(
    tmp_path: Path, clock_at: Clock
) -> None:
    layout = PkiLayout(tmp_path / "pki")
    init_consortium(layout.root, "Exposed", clock=clock_at())
    layout.tls_key.chmod(0o644)
    assert _by_role(layout, clock_at())["coordinator TLS key"] is Health.EXPOSED


def test_inventory_lists_pending_bundles_and_fingerprints_but_no_key_material(
    consortium: PkiLayout, clock_at: Clock
) -> None:
    inventory = inspect_pki(consortium, clock_at())
    text = inventory.model_dump_json()
    assert inventory.bundles_not_handed_over == ("site-a", "site-b")
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    for site in ("site-a", "site-b"):
        bundle_key = consortium.bundle(site).supernode_key.read_text().splitlines()[1]
        assert bundle_key not in text
    fingerprints = [c.fingerprint for c in inventory.credentials if c.fingerprint]
    assert all(f.lower().startswith("sha256:") for f in fingerprints)


@given(st.integers(min_value=-400, max_value=400))
def test_health_follows_the_days_left(days_left: int) -> None:
    start = datetime(2026, 1, 1).astimezone()
    end = start + timedelta(days=365)
    now = end - timedelta(days=days_left)
    health = certificate_health(start, end, now)
    if now < start:
        assert health is Health.NOT_YET_VALID
    elif days_left <= 0:
        assert health is Health.EXPIRED
    elif days_left < EXPIRY_WARNING_DAYS:
        assert health is Health.EXPIRING
    else:
        assert health is Health.OK


@pytest.mark.parametrize("hours_left", [1, 24 * 29 + 23])
def test_less_than_30_days_warns_even_by_hours(hours_left: int) -> None:
    start = datetime(2026, 1, 1).astimezone()
    end = start + timedelta(days=365)
    assert certificate_health(start, end, end - timedelta(hours=hours_left)) is Health.EXPIRING
