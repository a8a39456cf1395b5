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

from fedtwin.demo import generate_sites


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
