"""Policy documents: examples load, bad ones are one clear line, hashes cover values only."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedtwin.consent import (
    ConsortiumPolicy,
    Regime,
    SitePolicy,
    load_consortium_policy,
    load_site_policy,
    policy_hash,
)
from fedtwin.errors import ConfigError

POLICIES = Path(__file__).resolve().parents[2] / "policies"
SITE = POLICIES / "site-opt-in-research.toml"


def test_every_example_policy_loads() -> None:
    consortium = load_consortium_policy(POLICIES / "consortium.toml")
    sites = [load_site_policy(path) for path in sorted(POLICIES.glob("site-*.toml"))]
    assert consortium.purpose == "HRESCH"
    assert consortium.max_epsilon_per_patient == 8.0
    assert consortium.delta == 1e-5
    assert {site.regime for site in sites} == {Regime.OPT_IN, Regime.OPT_OUT}
    assert all(consortium.consortium_id in site.trusted_consortia for site in sites)


def _site_text() -> str:
    return SITE.read_text()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('regime = "opt-in"', 'regime = "opt-in"\nregim = "opt-out"', "regim: unknown key"),
        ("max_epsilon_per_patient = 8.0", "max_epsilon_per_patient = 0.0",
         "max_epsilon_per_patient: Input should be greater than 0"),
        ("max_epsilon_per_patient = 8.0", "max_epsilon_per_patient = -1",
         "max_epsilon_per_patient: Input should be greater than 0"),
        ("max_delta = 1e-5", "max_delta = 1.0", "max_delta: Input should be less than 1"),
        ('accepted_purposes = ["HRESCH"]', 'accepted_purposes = ["SCIENCE"]',
         "accepted_purposes.0: unknown v3-ActReason purpose of use code 'SCIENCE'"),
        ('regime = "opt-in"', 'regime = "maybe"', "regime: Input should be 'opt-in' or 'opt-out'"),
        ('regime = "opt-in"\n', "", "regime: required key is missing"),
        ("lookback_days = 1826", "start = 2025-01-01T00:00:00Z\nend = 2024-01-01T00:00:00Z",
         "data_window: end lies before start"),
        ("lookback_days = 1826", "lookback_days = 1826\nstart = 2020-01-01T00:00:00Z",
         "data_window: give start or lookback_days, not both"),
        ('trusted_actors = ["Organization/fedtwin-consortium"]', 'trusted_actors = ["consortium"]',
         "trusted_actors.0: 'consortium' is not a FHIR reference"),
        ("approved_app_hashes = []", 'approved_app_hashes = ["md5:abc"]',
         "approved_app_hashes.0: String should match pattern"),
        ('site_id = "site-a"', "site_id = ", "invalid TOML"),
    ],
)  # fmt: skip
def test_bad_site_policy_is_one_line_naming_file_and_field(
    old: str, new: str, expected: str, tmp_path: Path
) -> None:
    text = _site_text()
    assert old in text
    path = tmp_path / "site.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as raised:
        load_site_policy(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_consortium_policy_refuses_epsilon_of_zero(tmp_path: Path) -> None:
    path = tmp_path / "consortium.toml"
    text = (POLICIES / "consortium.toml").read_text()
    path.write_text(text.replace("max_epsilon_per_patient = 8.0", "max_epsilon_per_patient = 0"))
    with pytest.raises(ConfigError, match=r"consortium\.toml: max_epsilon_per_patient: "):
        load_consortium_policy(path)


def test_missing_policy_file_is_an_error_not_a_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_site_policy(tmp_path / "absent.toml")


def test_policy_hash_ignores_comments_and_key_order_but_not_values(tmp_path: Path) -> None:
    original = load_site_policy(SITE)
    lines = [line for line in _site_text().splitlines() if not line.startswith("#")]
    top, table = lines[: lines.index("[data_window]")], lines[lines.index("[data_window]") :]
    reordered = tmp_path / "reordered.toml"
    reordered.write_text("\n".join([*reversed(top), *table]) + "\n")
    changed = tmp_path / "changed.toml"
    changed.write_text(
        _site_text().replace(
            "min_eligible_patients_per_round = 20", "min_eligible_patients_per_round = 21"
        )
    )
    assert policy_hash(load_site_policy(reordered)) == policy_hash(original)
    assert policy_hash(load_site_policy(changed)) != policy_hash(original)
    assert policy_hash(original).startswith("sha256:") and len(policy_hash(original)) == 71


def test_data_window_never_reaches_past_the_round() -> None:
    site = load_site_policy(SITE)
    at = datetime(2026, 3, 1, tzinfo=UTC)
    window = site.data_window.interval(at)
    assert window.end == at
    assert window.start is not None and (at - window.start).days == 1826


def test_policies_are_frozen() -> None:
    site = load_site_policy(SITE)
    with pytest.raises(ValueError, match="frozen"):
        site.regime = Regime.OPT_OUT  # type: ignore[misc]
    assert isinstance(site, SitePolicy) and not isinstance(site, ConsortiumPolicy)


def test_policy_toml_reads_back_equal_with_the_same_hash(tmp_path: Path) -> None:
    from fedtwin.consent import load_consortium_policy, load_site_policy, policy_hash, policy_toml

    for name, load in (
        ("site-opt-in-research.toml", load_site_policy),
        ("site-opt-out.toml", load_site_policy),
        ("consortium.toml", load_consortium_policy),
    ):
        original = load(POLICIES / name)
        written = tmp_path / name
        written.write_text(policy_toml(original, header="generated\nfor a test"))
        again = load(written)
        assert again == original
        assert policy_hash(again) == policy_hash(original)
        assert written.read_text().startswith("# generated\n# for a test\n")
