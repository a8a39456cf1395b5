"""The warm executor's parent reads the site's export once; its forked tasks inherit the read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from site_trees import SiteTree

from fedtwin.deploy.site import site_toml
from fedtwin.deploy.warm_executor import warm_site_state
from fedtwin.federation import SiteConfig, sitedata
from fedtwin.federation.sitedata import load_site_data
from fedtwin.fhir import cache, read_site


def _config_file(site: SiteConfig, folder: Path) -> Path:
    path = folder / f"{site.site_id}.toml"
    path.write_text(site_toml(site.model_dump(mode="json"), {}))
    return path


class _CountingReader:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        monkeypatch.setattr(cache, "read_site", self)
        monkeypatch.setattr(cache, "load_entry", lambda *args: None)  # no on-disk cache

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return read_site(*args, **kwargs)  # type: ignore[arg-type]


@dataclass
class _Warmed:
    site: SiteConfig
    reader: _CountingReader
    line: str
    verified: int


@pytest.fixture
def warmed(site_tree: SiteTree, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> _Warmed:
    """The first site's state warmed as a fresh warm executor does, reads counted."""
    site = site_tree.sites[0]
    sitedata._cache.clear()
    reader = _CountingReader(monkeypatch)
    line, verified = warm_site_state(_config_file(site, tmp_path))
    return _Warmed(site, reader, line, verified)


def test_tasks_forked_after_the_warm_read_do_not_read_the_export_again(warmed: _Warmed) -> None:
    expected = load_site_data(warmed.site)
    assert warmed.verified == 0
    assert warmed.line == (
        f"site export ready ({len(expected.train)} training, "
        f"{len(expected.heldout)} held-out patients)"
    )
    assert warmed.reader.calls == 1
    child = os.fork()
    if child == 0:  # a task: same split, and no read of its own
        data = load_site_data(warmed.site)
        os._exit(0 if warmed.reader.calls == 1 and data.heldout == expected.heldout else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_changed_export_is_read_by_the_task_not_taken_from_the_parent(warmed: _Warmed) -> None:
    site = warmed.site
    before = sum(map(len, load_site_data(site).consents.values()))
    consents = next(site.data_dir.glob("Consent.ndjson*"))
    consents.write_bytes(b"".join(consents.read_bytes().splitlines(keepends=True)[:-1]))
    assert sum(map(len, load_site_data(site).consents.values())) == before - 1
    assert warmed.reader.calls == 2


def test_a_site_the_parent_cannot_read_is_left_to_the_task(
    site_tree: SiteTree, tmp_path: Path
) -> None:
    site = site_tree.sites[0].model_copy(update={"data_dir": tmp_path / "no-such-export"})
    line, _ = warm_site_state(_config_file(site, tmp_path))
    assert line.startswith("site state not preloaded, each task reads it itself: ")
    assert "no-such-export" in line
    missing, _ = warm_site_state(tmp_path / "missing.toml")
    assert missing.startswith("site state not preloaded") and "missing.toml" in missing
