"""A site's data as its ClientApp uses it: the FHIR export, ingested, split, windowed.

Invariants:

* records reach training and evaluation only through :func:`fedtwin.fhir.read_site`
  (validated resources, units normalised, every record counted); there is no other path;
* the split into training and held-out patients is a keyed hash of the local patient id under
  the site secret: stable across rounds and runs, and unpredictable from outside the site;
* a patient's data outside the site policy's data window is masked out before any window is
  cut, so it can enter neither training nor evaluation;
* an export is read once per process and re-read when any of its files changes (names, sizes,
  modification times); consents are part of the export, so a new withdrawal is always seen; a
  process keeps the latest state of up to 16 exports (simulation runs several sites per process);
  across processes, the site's authenticated ingest cache (:mod:`fedtwin.fhir.cache`, keyed by the
  files' SHA-256) spares re-validating unchanged bytes;
* each Consent is reduced to its :class:`~fedtwin.consent.ConsentRecord` once per export state
  (an invalid one is kept as read, so using it still fails exactly as before);
* what this module returns for use beyond the site names patients by keyed pseudonym only.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedtwin.consent import ConsentRecord, consent_record
from fedtwin.errors import IngestError
from fedtwin.federation.config import SiteConfig
from fedtwin.fhir import (
    IngestOptions,
    IngestPolicy,
    IngestReport,
    ParsedResource,
    PatientSeries,
    load_or_create_site_secret,
    read_site_cached,
)
from fedtwin.twins import PatientBatch

_SPLIT_DOMAIN = b"fedtwin/heldout-split/v1\x00"
_SPLIT_BUCKETS = 10_000


@dataclass(frozen=True)
class SiteData:
    """One site's ingested export, split into training and held-out patients.

    Attributes
    ----------
    train, heldout : tuple[PatientSeries, ...]
        Usable glucose patients of each part, in export order.
    consents : Mapping[str, Sequence[ConsentRecord | ParsedResource]]
        Local patient id → its validated Consents, reduced to records (an invalid one as read).
    report : IngestReport
        The ingest counts (no patient identifiers).
    """

    train: tuple[PatientSeries, ...]
    heldout: tuple[PatientSeries, ...]
    consents: Mapping[str, Sequence[ConsentRecord | ParsedResource]]
    report: IngestReport


def is_heldout(secret: bytes, patient_id: str, fraction: float) -> bool:
    """Whether the patient belongs to the held-out part (keyed hash, stable)."""
    digest = hmac.new(secret, _SPLIT_DOMAIN + patient_id.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % _SPLIT_BUCKETS < fraction * _SPLIT_BUCKETS


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    if not folder.is_dir():
        raise IngestError(f"{folder}: site data folder missing")
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()))


_CACHE_FOLDERS = 16
_cache_lock = threading.Lock()
_cache: dict[tuple[Path, tuple[tuple[str, int, int], ...], str, str], SiteData] = {}


def ingest_options(site: SiteConfig) -> IngestOptions:
    """How the site reads its export (its ingest policy and FHIR release rule)."""
    policy = IngestPolicy.strict() if site.ingest_policy == "strict" else IngestPolicy.lenient()
    return IngestOptions(policy=policy, fhir_version=site.fhir_version)


def load_site_data(site: SiteConfig) -> SiteData:
    """Ingest the site's export (once per process and export state) and split it.

    Raises
    ------
    IngestError
        ``<file>:<line>: <reason>`` if the export is invalid under the site's ingest policy.
    """
    folder = site.data_dir.resolve()
    key = (folder, _fingerprint(folder), site.ingest_policy, site.fhir_version)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    export = read_site_cached(folder, state_dir=site.state_dir, options=ingest_options(site))
    secret = load_or_create_site_secret(site.state_dir)
    heldout = tuple(
        p for p in export.patients if is_heldout(secret, p.patient_id, site.heldout_fraction)
    )
    held_ids = {p.patient_id for p in heldout}
    data = SiteData(
        train=tuple(p for p in export.patients if p.patient_id not in held_ids),
        heldout=heldout,
        consents={k: tuple(_reduced(c) for c in v) for k, v in export.consents.items()},
        report=export.report,
    )
    with _cache_lock:
        # One entry per export folder: a stale state of this folder is dropped; other sites'
        # exports stay (in simulation one process serves several sites in turn).
        for stale in [k for k in _cache if k[0] == folder]:
            del _cache[stale]
        while len(_cache) >= _CACHE_FOLDERS:
            del _cache[next(iter(_cache))]
        _cache[key] = data
    return data


def _reduced(parsed: ParsedResource) -> ConsentRecord | ParsedResource:
    try:
        return consent_record(parsed)
    except IngestError:
        return parsed


@dataclass(frozen=True, eq=False)
class _WindowedRecord:
    """A patient's series with everything outside the data window masked out."""

    pseudonym: str
    cgm_mg_dl: NDArray[np.float32]
    cgm_mask: NDArray[np.bool_]
    insulin_u: NDArray[np.float32]
    insulin_mask: NDArray[np.bool_]
    carbs_g: NDArray[np.float32]
    carbs_mask: NDArray[np.bool_]


def _first_bin_at_or_after(series: PatientSeries, moment: datetime) -> int:
    step = timedelta(minutes=series.step_min)
    return max(0, min(series.n_steps, math.ceil((moment - series.start) / step)))


def _within(series: PatientSeries, start: datetime | None, end: datetime | None) -> _WindowedRecord:
    # Bin k starts at series.start + k·step; it is inside when start <= that < end.
    first = 0 if start is None else _first_bin_at_or_after(series, start)
    stop = series.n_steps if end is None else _first_bin_at_or_after(series, end)
    inside = np.zeros(series.n_steps, dtype=bool)
    inside[first:stop] = True
    return _WindowedRecord(
        pseudonym=series.pseudonym,
        cgm_mg_dl=series.cgm_mg_dl,
        cgm_mask=series.cgm_mask & inside,
        insulin_u=series.insulin_u,
        insulin_mask=series.insulin_mask & inside,
        carbs_g=series.carbs_g,
        carbs_mask=series.carbs_mask & inside,
    )


def patient_batch(
    records: Sequence[PatientSeries],
    history_steps: int,
    horizon_steps: int,
    *,
    only: set[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> PatientBatch:
    """The patients (optionally only the local ids in ``only``) as a batch, data-windowed."""
    chosen = [r for r in records if only is None or r.patient_id in only]
    windowed = [_within(r, start, end) for r in chosen]
    return PatientBatch.from_records(windowed, history_steps, horizon_steps)
