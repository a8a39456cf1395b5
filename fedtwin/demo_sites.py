"""Build the demo sites' Bulk FHIR exports, in worker processes when the cohort is large.

Each site's export is simulated and written (:mod:`fedtwin.cohorts`), then read once through
the site's cached ingest (:func:`fedtwin.fhir.read_site_cached`), as a site would check a new
export: the validation cost is paid here, in parallel, instead of in the first round. This
module imports only the cohort simulator and the FHIR package, so a spawned worker starts in
a few seconds (no Flower, no Opacus).

Invariants: a site's export is written and validated by exactly one job; workers never share a
site; any job's error stops the build and is raised in the caller (the caller removes the
partial run); the result is the same files whatever the number of workers (every site has its
own seed).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtwin.cohorts.fhir_export import write_site_export
from fedtwin.cohorts.site import SiteSpec, simulate_site
from fedtwin.fhir import IngestOptions, read_site_cached

#: Below this many patient-days in all, sites are built in this process (a worker costs ~4 s).
PARALLEL_FROM_PATIENT_DAYS = 500.0
MAX_WORKERS = 4
SIMULATION_BATCH = 1000

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class SiteJob:
    """Everything one site's export needs (picklable: it crosses to a worker)."""

    spec: SiteSpec
    export_dir: Path
    state_dir: Path
    ground_truth: Path
    seed: int
    consents: dict[str, list[dict[str, Any]]]
    ingest: IngestOptions


def _consents_of(consents: dict[str, list[dict[str, Any]]], patient: str) -> list[dict[str, Any]]:
    return consents.get(patient, [])


def write_export(job: SiteJob, progress: Callable[[float], None] | None = None) -> None:
    """Simulate the site's patients and write its export (with its consents)."""
    write_site_export(
        job.export_dir,
        simulate_site(job.spec, batch_patients=SIMULATION_BATCH, progress=progress),
        seed=job.seed,
        consents_for=functools.partial(_consents_of, job.consents),
        ground_truth=job.ground_truth,
    )


def validate_export(job: SiteJob) -> None:
    """Read the new export once through the site's cached ingest (raises if invalid)."""
    read_site_cached(job.export_dir, state_dir=job.state_dir, options=job.ingest)


_progress_queue: Any = None


def _worker_init(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _report_from_worker(site_id: str, fraction: float) -> None:
    if _progress_queue is not None:
        _progress_queue.put((site_id, fraction))


def _write_in_worker(job: SiteJob) -> None:
    write_export(job, functools.partial(_report_from_worker, job.spec.site_id))


def worker_count(jobs: list[SiteJob]) -> int:
    """1 (in process) for small cohorts; else one worker per site, up to the CPUs and 4."""
    patient_days = sum(job.spec.n_patients * job.spec.days for job in jobs)
    if patient_days < PARALLEL_FROM_PATIENT_DAYS:
        return 1
    return max(1, min(len(jobs), os.cpu_count() or 1, MAX_WORKERS))


def build_sites(jobs: list[SiteJob], progress: Progress | None = None) -> None:
    """Write and validate every job's export (module docstring); ``progress(site, fraction)``."""
    workers = worker_count(jobs)
    if workers == 1:
        for job in jobs:
            site_id = job.spec.site_id
            write_export(job, None if progress is None else functools.partial(progress, site_id))
            validate_export(job)
        return
    context = multiprocessing.get_context("spawn")
    updates = context.Queue()
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(updates,)
    ) as pool:
        # Validation of a written site queues behind the remaining writes (FIFO), so the
        # workers stay busy until the last export is both written and read.
        pending: dict[Future[None], SiteJob | None] = {
            pool.submit(_write_in_worker, job): job for job in jobs
        }
        try:
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(updates, progress)
                for future in done:
                    written = pending.pop(future)
                    future.result()  # a job's error is raised here
                    if written is not None:
                        pending[pool.submit(validate_export, written)] = None
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        _drain(updates, progress)


def _drain(updates: Any, progress: Progress | None) -> None:
    while True:
        try:
            site_id, fraction = updates.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(site_id, fraction)
