"""Site data via the on-disk ingest cache: only for the same bytes, authenticated, fail closed."""

from __future__ import annotations

import logging
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from site_trees import SiteTree, relocated

from fedtwin.federation import SiteConfig, sitedata
from fedtwin.federation.sitedata import SiteData, load_site_data
from fedtwin.fhir import cache, read_site
from fedtwin.fhir.cache import CACHE_FOLDER


class _CountingReader:
    """Counts real reads of the export (the real :func:`read_site` does the work).

    The demo's generator leaves every site's cache warm; each test starts with none.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tree: SiteTree) -> None:
        self.calls = 0
        monkeypatch.setattr(cache, "read_site", self)
        for site in tree.sites:
            shutil.rmtree(site.state_dir / CACHE_FOLDER, ignore_errors=True)

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return read_site(*args, **kwargs)  # type: ignore[arg-type]


def _fresh_process_load(site: SiteConfig) -> SiteData:
    """Load as a new process would: nothing in this process's memory."""
    sitedata._cache.clear()
    return load_site_data(site)


def _entries(site: SiteConfig) -> list[Path]:
    return sorted((site.state_dir / CACHE_FOLDER).glob("*.bin"))


def _same(a: SiteData, b: SiteData) -> None:
    assert [p.pseudonym for p in a.train] == [p.pseudonym for p in b.train]
    assert [p.pseudonym for p in a.heldout] == [p.pseudonym for p in b.heldout]
    for left, right in zip(a.train, b.train, strict=True):
        np.testing.assert_array_equal(left.cgm_mg_dl, right.cgm_mg_dl)
    assert a.consents == b.consents
    assert a.report == b.report


def test_second_process_reads_the_cache_not_the_export(
    site_tree: SiteTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_tree.sites[0]
    reader = _CountingReader(monkeypatch, site_tree)
    first = _fresh_process_load(site)
    second = _fresh_process_load(site)
    assert reader.calls == 1
    _same(first, second)
    folder = site.state_dir / CACHE_FOLDER
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in _entries(site)] == [0o600]


def test_a_changed_export_file_is_read_again(
    site_tree: SiteTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_tree.sites[0]
    reader = _CountingReader(monkeypatch, site_tree)
    before = _fresh_process_load(site)
    consents = next(site.data_dir.glob("Consent.ndjson*"))
    lines = consents.read_bytes().splitlines(keepends=True)
    consents.write_bytes(b"".join(lines[:-1]))  # the last consent removed, same mtime second
    after = _fresh_process_load(site)
    assert reader.calls == 2
    assert sum(map(len, after.consents.values())) == sum(map(len, before.consents.values())) - 1


@pytest.mark.parametrize("offset", [0, 20, -1])
def test_a_tampered_entry_is_never_used(
    site_tree: SiteTree,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    offset: int,
) -> None:
    site = site_tree.sites[0]
    reader = _CountingReader(monkeypatch, site_tree)
    expected = _fresh_process_load(site)
    (entry,) = _entries(site)
    blob = bytearray(entry.read_bytes())
    blob[offset] ^= 0x01
    entry.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="fedtwin.fhir.cache"):
        again = _fresh_process_load(site)
    assert reader.calls == 2
    assert "failed authentication" in caplog.text
    _same(expected, again)
    assert entry.read_bytes() != bytes(blob)  # replaced by a good entry


def test_an_entry_made_under_another_site_secret_is_not_used(
    site_tree: SiteTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, other = site_tree.sites[0], site_tree.sites[1]
    reader = _CountingReader(monkeypatch, site_tree)
    _fresh_process_load(one)
    # The other site's export bytes replaced by the first's: same key, other secret.
    shutil.rmtree(other.data_dir)
    shutil.copytree(one.data_dir, other.data_dir)
    shutil.copytree(one.state_dir / CACHE_FOLDER, other.state_dir / CACHE_FOLDER)
    _fresh_process_load(other)
    assert reader.calls == 2


def test_a_moved_export_hits_the_cache_and_names_its_new_files(
    site_tree: SiteTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = _CountingReader(monkeypatch, site_tree)
    site = site_tree.sites[0]
    _fresh_process_load(site)
    moved_root = tmp_path / "moved"
    shutil.copytree(site_tree.root, moved_root)
    moved = relocated(site, site_tree.root, moved_root)
    data = _fresh_process_load(moved)
    assert reader.calls == 1
    sources = {c.source for items in data.consents.values() for c in items}  # type: ignore[union-attr]
    assert sources and all(s.startswith(str(moved.data_dir)) for s in sources)
