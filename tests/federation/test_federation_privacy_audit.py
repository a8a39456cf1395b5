"""The empirical privacy audit and the ε report of a finished run, at its sites."""

import json
import subprocess
import sys

import pytest

from fedtwin.demo import DemoResult
from fedtwin.federation.privacy_audit import audit_site
from fedtwin.federation.site_round import trained_pseudonyms
from fedtwin.federation.sitedata import load_site_data
from fedtwin.privacy.membership import dp_tpr_bound

pytestmark = pytest.mark.slow

FEDTWIN = [sys.executable, "-m", "fedtwin.cli"]


def test_members_are_the_patients_the_rounds_trained_on_and_never_held_out(
    demo_run: DemoResult,
) -> None:
    for site in demo_run.sites:
        trained = trained_pseudonyms(site, "test-run")
        data = load_site_data(site)
        assert trained and trained <= {p.pseudonym for p in data.train}
        assert not trained & {p.pseudonym for p in data.heldout}


def test_audit_reports_both_models_within_the_shape_of_the_dp_bound(
    demo_run: DemoResult,
) -> None:
    site = next(s for s in demo_run.sites if s.site_id == "site-adult")
    audit = audit_site(demo_run.run_dir, site, seed=1)
    assert audit.members >= 5 and audit.non_members >= 5
    assert [r.attack for r in audit.released] == ["loss-threshold"]
    assert [r.attack for r in audit.non_private] == ["loss-threshold"]
    for result in (*audit.released, *audit.non_private):
        assert 0.0 <= result.auc <= 1.0
        assert result.members == audit.members
    card = json.loads((demo_run.run_dir / "model_card.json").read_text())
    assert audit.epsilon == pytest.approx(card["privacy"]["epsilon_per_site"]["site-adult"])
    assert audit.bound(0.01) == dp_tpr_bound(audit.epsilon, audit.delta, 0.01)


def test_privacy_cli_reports_epsilon_per_round_and_writes_the_audit(
    demo_run: DemoResult,
) -> None:
    run_dir = str(demo_run.run_dir)
    report = subprocess.run(
        [*FEDTWIN, "privacy", "report", run_dir, "--json"], capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr
    rows = [json.loads(line) for line in report.stdout.splitlines()]
    by_site: dict[str, list[float]] = {}
    for row in rows:
        by_site.setdefault(row["site"], []).append(row["epsilon"])
    assert set(by_site) == {s.site_id for s in demo_run.sites}
    for epsilons in by_site.values():
        assert len(epsilons) == 2 and epsilons[0] < epsilons[1]
    audit = subprocess.run(
        [*FEDTWIN, "privacy", "audit", run_dir, "--site", "site-paediatric"],
        capture_output=True,
        text=True,
    )
    assert audit.returncode == 0, audit.stderr
    document = json.loads((demo_run.run_dir / "privacy_audit.json").read_text())
    [site] = document["sites"]
    assert site["site_id"] == "site-paediatric" and site["released"][0]["auc"] >= 0
    missing = subprocess.run(
        [*FEDTWIN, "privacy", "audit", run_dir, "--site", "site-nowhere"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "fedtwin: error: --site: no site 'site-nowhere' in this run"
    ]
