"""Federation fixtures: small simulated sites built by the demo's own generator.

Every site is a real Bulk FHIR export with synthetic consents, a site policy, keys and an empty
state folder (the same files ``fedtwin demo`` writes). Tests that change a site's state work
on a private copy of the pristine tree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from site_trees import SMALL, SiteTree, relocated

from fedtwin.demo import DemoConfig, DemoResult, generate_sites, run_demo


@pytest.fixture(scope="session")
def pristine_sites(tmp_path_factory: pytest.TempPathFactory) -> SiteTree:
    root = tmp_path_factory.mktemp("pristine-sites").resolve()
    return SiteTree(root, SMALL, tuple(generate_sites(SMALL, root)))


@pytest.fixture
def site_tree(pristine_sites: SiteTree, tmp_path: Path) -> SiteTree:
    """A private copy of the pristine tree (fresh ledgers, logs and secrets per test)."""
    root = (tmp_path / "tree").resolve()
    shutil.copytree(pristine_sites.root, root)
    return SiteTree(
        root,
        pristine_sites.config,
        tuple(relocated(s, pristine_sites.root, root) for s in pristine_sites.sites),
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """A whole demo run: 3 sites x 60 patients x 0.5 day, 2 rounds (Flower simulation)."""
    out = tmp_path_factory.mktemp("runs")
    config = DemoConfig(
        rounds=2,
        sites=3,
        patients_per_site=60,
        days=0.5,
        local_steps=5,
        batch_patients=16,
        min_eligible_patients=5,
        seed=3,
        out=out,
    )
    return run_demo(config, run_id="test-run")
