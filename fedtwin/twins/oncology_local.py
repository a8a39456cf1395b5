"""On-site, non-private training of the oncology twin from a site's own Bulk FHIR export.

What a clinician's team runs to get a model file without a federation: the site's tumour-size
Observations, chemotherapy MedicationAdministrations and radiotherapy Procedures (as
:func:`fedtwin.fhir.read_site` grids them by day) train :func:`train_oncology_twin`. The model
never leaves the site and is trained without differential privacy, so it must not either.

Invariants:

* consent first: only patients whose consents permit research use (v3-ActReason ``HRESCH``)
  of the oncology twin's data classes by the given actors, under the site's regime, decided
  at the given instant, are used; the count of the others is
  reported, never their identifiers;
* every patient is accounted for: a patient's days from the first day without a measurement
  on are not used (the twin reads daily volumes; a gap cannot be bridged), and a patient with
  fewer than two measured days is skipped; both are counted;
* patient type is not a FHIR field, so the twin is trained without it
  (:attr:`PatientTypeInput.UNKNOWN`): a constant input, the same at forecast time;
* seeded: the generator seeds initialisation, the validation split and training order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedtwin.errors import ConfigError
from fedtwin.twins.oncology import OncologyTwin, OncologyTwinConfig, TumourSeries
from fedtwin.twins.oncology_files import UNKNOWN_PATIENT_TYPE
from fedtwin.twins.oncology_training import (
    OncologyTrainingConfig,
    OncologyTrainingSummary,
    train_oncology_twin,
)

if TYPE_CHECKING:
    from fedtwin.fhir import OncologySeries, ParsedResource

RESEARCH_PURPOSE = "HRESCH"
MIN_PATIENTS = 2


@dataclass(frozen=True, eq=False)
class SiteTumourData:
    """A site's usable oncology patients as one :class:`TumourSeries`, and the accounting."""

    series: TumourSeries
    patients_used: int
    patients_too_short: int
    days_after_a_gap: int


def tumour_series_of(patients: Sequence[OncologySeries]) -> SiteTumourData:
    """Stack patients' daily series (truncated at their first unmeasured day, NaN-padded)."""
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    too_short = dropped = 0
    for patient in patients:
        unmeasured = np.flatnonzero(~patient.tumour_mask)
        end = int(unmeasured[0]) if unmeasured.size else patient.n_days
        # days after a patient's trajectory ended (death, recovery) are NaN, not a gap
        dropped += int(patient.tumour_mask[end:].sum())
        if end < 2:
            too_short += 1
            continue
        kept.append(
            (
                patient.tumour_volume_cm3[:end],
                patient.chemo_mg[:end] > 0,
                patient.radio_gy[:end] > 0,
            )
        )
    if len(kept) < MIN_PATIENTS:
        raise ConfigError(
            f"{len(kept)} usable oncology patient(s) (>= 2 measured days each); "
            f"training needs at least {MIN_PATIENTS}"
        )
    days = max(volume.shape[0] for volume, _, _ in kept)
    volume = np.full((len(kept), days), np.nan, dtype=np.float32)
    chemo = np.zeros((len(kept), days), dtype=bool)
    radio = np.zeros((len(kept), days), dtype=bool)
    for row, (v, c, r) in enumerate(kept):
        volume[row, : v.shape[0]], chemo[row, : c.shape[0]], radio[row, : r.shape[0]] = v, c, r
    series = TumourSeries(
        torch.from_numpy(volume),
        torch.from_numpy(chemo),
        torch.from_numpy(radio),
        torch.full((len(kept),), UNKNOWN_PATIENT_TYPE, dtype=torch.long),
    )
    return SiteTumourData(series, len(kept), too_short, dropped)


def research_permitted(
    patients: Sequence[OncologySeries],
    consents: Mapping[str, Sequence[ParsedResource]],
    *,
    at: datetime,
    regime: str,
    actors: Sequence[str],
) -> tuple[tuple[OncologySeries, ...], int]:
    """Patients whose consents permit research use at ``at``, and how many were denied.

    ``consents`` is :attr:`fedtwin.fhir.SiteExport.consents`; ``regime`` ``"opt-in"`` (no
    applicable consent: deny) or ``"opt-out"``; ``actors`` who use the data (FHIR references).
    The request covers the oncology twin's data classes up to ``at``.
    """
    from fedtwin.consent import (
        TWIN_DATA_CLASSES,
        ConsentRequest,
        Regime,
        TwinKind,
        consent_records,
        evaluate_all,
    )

    try:
        chosen = Regime(regime)
    except ValueError as error:
        raise ConfigError(f"--regime: {regime!r} is not opt-in or opt-out") from error
    records = consent_records(consents)
    request = ConsentRequest(
        purpose=RESEARCH_PURPOSE,
        actors=tuple(actors),
        data_classes=TWIN_DATA_CLASSES[TwinKind.ONCOLOGY],
        data_to=at,
    )
    snapshot = evaluate_all(
        records, request, at=at, regime=chosen, patient_ids=[p.patient_id for p in patients]
    )
    permitted = set(snapshot.permitted)
    kept = tuple(p for p in patients if p.patient_id in permitted)
    return kept, len(patients) - len(kept)


def train_site_twin(
    data: SiteTumourData,
    twin_config: OncologyTwinConfig,
    training: OncologyTrainingConfig,
    *,
    seed: int,
    validation_fraction: float = 0.2,
) -> tuple[OncologyTwin, OncologyTrainingSummary]:
    """Train a twin on the site's patients, early-stopped on a seeded held-out fraction.

    With fewer than 5 patients there is no held-out set (the training loss decides).
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = OncologyTwin(twin_config)
    count = len(data.series)
    held = round(validation_fraction * count) if count >= 5 else 0
    order = torch.randperm(count, generator=generator)
    train = data.series.take(order[held:])
    validation = data.series.take(order[:held]) if held else None
    summary = train_oncology_twin(twin, train, training, generator, validation)
    return twin, summary
