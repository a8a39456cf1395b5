"""Building the demo sites: the same files with or without worker processes, errors surface."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedtwin import demo_sites
from fedtwin.cohorts import AgeGroup
from fedtwin.cohorts.site import SiteSpec
from fedtwin.consent import synthetic_consents
from fedtwin.demo_sites import SiteJob, build_sites
from fedtwin.fhir import IngestOptions, load_or_create_site_secret
from fedtwin.fhir.cache import CACHE_FOLDER


def _jobs(root: Path, sites: int = 2, patients: int = 12) -> list[SiteJob]:
    jobs = []
    for index in range(sites):
        site_id = f"site-{index}"
        state = root / site_id / "state"
        load_or_create_site_secret(state, token_bytes=lambda n, i=index: bytes([i + 1]) * n)
        ids = [f"{site_id}-{k:06d}" for k in range(patients)]
        consents: dict[str, list[dict[str, object]]] = {}
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for consent in synthetic_consents(
            ids, study_start=start, study_end=start + timedelta(days=30), seed=index
        ):
            patient = str(consent.get("patient", consent.get("subject", {}))["reference"])
            consents.setdefault(patient.rsplit("/", 1)[-1], []).append(consent)
        jobs.append(
            SiteJob(
                spec=SiteSpec(
                    site_id=site_id,
                    n_patients=patients,
                    age_mix={AgeGroup.ADULT: 1.0},
                    days=0.25,
                    seed=index,
                ),
                export_dir=root / site_id / "export",
                state_dir=state,
                ground_truth=root / "ground_truth" / site_id,
                seed=index,
                consents=consents,
                ingest=IngestOptions(),
            )
        )
    return jobs


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and CACHE_FOLDER not in p.parts
    }


@pytest.mark.slow
def test_workers_write_the_same_exports_as_one_process_and_warm_each_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    build_sites(_jobs(serial))
    monkeypatch.setattr(demo_sites, "PARALLEL_FROM_PATIENT_DAYS", 0.0)
    seen: list[tuple[str, float]] = []
    jobs = _jobs(parallel)
    assert demo_sites.worker_count(jobs) == min(2, demo_sites.os.cpu_count() or 1)
    build_sites(jobs, lambda site, fraction: seen.append((site, fraction)))
    assert _files(serial) == _files(parallel)
    for job in jobs:
        assert len(list((job.state_dir / CACHE_FOLDER).glob("*.bin"))) == 1
    if demo_sites.worker_count(jobs) > 1:
        assert {site for site, _ in seen} == {"site-0", "site-1"}


@pytest.mark.slow
def test_an_error_in_a_worker_is_raised_in_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_sites, "PARALLEL_FROM_PATIENT_DAYS", 0.0)
    jobs = _jobs(tmp_path)
    # The second site's export folder is taken by a file: its writer must fail.
    jobs[1].export_dir.parent.mkdir(parents=True, exist_ok=True)
    jobs[1].export_dir.write_text("not a folder")
    with pytest.raises(Exception) as raised:
        build_sites(jobs)
    assert str(jobs[1].export_dir) in str(raised.value)


def test_small_cohorts_are_built_in_process() -> None:
    spec = SiteSpec(site_id="s", n_patients=100, age_mix={AgeGroup.ADULT: 1.0}, days=1.0, seed=0)
    tiny = SiteJob(spec, Path("e"), Path("s"), Path("g"), 0, {}, IngestOptions())
    assert demo_sites.worker_count([tiny, tiny]) == 1
    big = dataclasses.replace(tiny, spec=spec.model_copy(update={"n_patients": 1000}))
    assert demo_sites.worker_count([big, big, big]) == min(3, demo_sites.os.cpu_count() or 1)
