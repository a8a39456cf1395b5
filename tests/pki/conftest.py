"""A consortium PKI made once per test module (key generation is cheap, but not free)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from fedtwin.pki import PkiLayout, enroll_site, init_consortium

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOSTS = ("localhost", "127.0.0.1", "::1", "coordinator.example.org")


def _fixed_clock(moment: datetime = NOW) -> Callable[[], datetime]:
    return lambda: moment


@pytest.fixture
def now() -> datetime:
    """The time every PKI test pretends it is (the consortium was made then)."""
    return NOW


@pytest.fixture
def clock_at() -> Callable[..., Callable[[], datetime]]:
    """``clock_at(moment)``: a clock that always reads ``moment`` (default: :data:`NOW`)."""
    return _fixed_clock


@pytest.fixture
def san_hosts() -> tuple[str, ...]:
    """The SANs of the module consortium's TLS certificate."""
    return HOSTS


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """A consortium with two enrolled sites (``site-a``, ``site-b``), made at :data:`NOW`."""
    root = tmp_path_factory.mktemp("pki") / "pki"
    init_consortium(root, "Test Consortium", HOSTS, clock=_fixed_clock(), tls_days=90)
    layout = PkiLayout(root)
    for site in ("site-a", "site-b"):
        enroll_site(layout, site, clock=_fixed_clock())
    return layout
