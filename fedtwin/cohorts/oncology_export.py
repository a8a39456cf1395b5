"""A simulated oncology site as a hospital would hand it over, plus its ground truth.

Invariants:

* the records are what the observational benchmarks see (Geng et al. 2017 as used by CRN and
  the Causal Transformer): the daily tumour volume while the patient is followed, and the
  chemotherapy and radiotherapy actually given under the site's confounded assignment
  policy; they are written as :class:`fedtwin.fhir.OncologyHistory` (tumour size
  Observations, chemotherapy MedicationAdministrations, radiotherapy Procedures of 2 Gy); the
  model's chemotherapy dose of 5 (its concentration unit) is written as 5 mg;
* the ground truth beside them holds each patient's parameters, the assignment
  probabilities, the day of death or recovery and the untreated counterfactual volume (the
  same patient and the same noise, no treatment at all);
* patients stream in batches; patient ``i`` of a site is the same whatever the batching
  (parameters and noise are keyed by ``i``);
* demographics (age, sex, weight) are not part of the tumour model: they are drawn per patient
  from fixed distributions (age ~ N(68, 9) years in [35, 95], weight ~ N(76, 15) kg in
  [40, 150]; assumed, typical of lung-cancer cohorts) so the export has valid Patients.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedtwin.cohorts.fhir_export import ConsentsFor, demographics
from fedtwin.cohorts.oncology import (
    CHEMO_DOSE,
    RADIO_DOSE_GY,
    ConfoundedAssignment,
    Regimen,
    Stage,
    TumourPatients,
    TumourTrajectory,
    draw_tumour_noise,
    sample_tumour_patients,
    simulate_tumours,
)
from fedtwin.errors import ConfigError
from fedtwin.fhir import OncologyHistory

_STANDARD_NORMAL = NormalDist()


class OncologySiteSpec(BaseModel):
    """Everything that defines one simulated oncology site.

    Parameters
    ----------
    site_id : str
        Lower-case id, as for :class:`fedtwin.cohorts.SiteSpec`.
    n_patients : int
        Patients at the site.
    days : int
        Simulated days (one record per day).
    start_date : datetime.date
        Calendar date of day 0.
    gamma : float
        Confounding of chemo and radio assignment by the recent tumour diameter (0-10).
    seed : int
        Seed of every random choice (combined with ``site_id``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    n_patients: int = Field(ge=1, le=1_000_000)
    days: int = Field(ge=1, le=3660)
    start_date: dt.date = dt.date(2026, 1, 5)
    gamma: float = Field(2.0, ge=0.0, le=10.0)
    seed: int = Field(0, ge=0)

    def seeds(self) -> tuple[int, int]:
        """Seeds of the patients' parameters and of their daily noise (from seed, id)."""
        words = np.random.SeedSequence([self.seed, zlib.crc32(self.site_id.encode())])
        patients, noise = words.generate_state(2, dtype=np.uint32).tolist()
        return int(patients), int(noise)


@dataclass(frozen=True)
class OncologyTruthBatch:
    """Ground truth of a batch of oncology patients (for :class:`GroundTruthWriter`)."""

    patient_ids: tuple[str, ...]
    names: tuple[str, ...]
    patients: TumourPatients
    observed: TumourTrajectory
    untreated: TumourTrajectory

    def arrays(self) -> dict[str, np.ndarray]:
        """Parameters, factual and untreated trajectories, one row per patient."""
        p, t = self.patients, self.observed
        return {
            "volume_cm3": t.volume_cm3.numpy(),
            "volume_untreated_cm3": self.untreated.volume_cm3.numpy(),
            "chemo_concentration": t.chemo_concentration.numpy(),
            "chemo_probability": t.chemo_probability.numpy(),
            "radio_probability": t.radio_probability.numpy(),
            "death_day": t.death_day.numpy(),
            "recovery_day": t.recovery_day.numpy(),
            "param/patient_type": p.patient_type.numpy(),
            "param/stage": p.stage.numpy(),
            "param/initial_volume_cm3": p.initial_volume_cm3.numpy(),
            "param/rho": p.rho.numpy(),
            "param/alpha": p.alpha.numpy(),
            "param/beta": p.beta.numpy(),
            "param/beta_c": p.beta_c.numpy(),
            "param/carrying_capacity_cm3": p.carrying_capacity_cm3.numpy(),
        }


def _keyed_normal(seed: int, patient_id: str, purpose: str) -> float:
    digest = hashlib.sha256(f"{seed}/{purpose}/{patient_id}".encode()).digest()
    fraction = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64
    return _STANDARD_NORMAL.inv_cdf(fraction)


def _age_and_weight(seed: int, patient_id: str) -> tuple[float, float]:
    age = min(95.0, max(35.0, 68.0 + 9.0 * _keyed_normal(seed, patient_id, "age")))
    weight = min(150.0, max(40.0, 76.0 + 15.0 * _keyed_normal(seed, patient_id, "weight")))
    return age, round(weight, 1)


def oncology_histories(
    spec: OncologySiteSpec,
    *,
    batch_patients: int = 500,
    consents_for: ConsentsFor | None = None,
    on_batch: Callable[[OncologyTruthBatch], None] | None = None,
    progress: Callable[[float], None] | None = None,
) -> Iterator[OncologyHistory]:
    """Simulate the site batch by batch and yield each patient as an ``OncologyHistory``.

    Parameters
    ----------
    spec : OncologySiteSpec
        The site.
    batch_patients : int, default 500
        Patients simulated together.
    consents_for : Callable or None
        Consent resources (FHIR JSON) of a patient id; none when omitted.
    on_batch : Callable or None
        Receives each batch's ground truth before its patients are yielded.
    progress : Callable[[float], None] or None
        Called with the site's completed fraction after each batch.

    Yields
    ------
    OncologyHistory
        Patients ``<site_id>-000000`` … in order.

    Raises
    ------
    ConfigError
        If ``batch_patients < 1``.
    """
    if isinstance(batch_patients, bool) or not isinstance(batch_patients, int):
        raise ConfigError("batch_patients must be a positive integer")
    if batch_patients < 1:
        raise ConfigError("batch_patients must be a positive integer")
    patient_seed, noise_seed = spec.seeds()
    policy = ConfoundedAssignment(gamma_chemo=spec.gamma, gamma_radio=spec.gamma)
    start = dt.datetime.combine(spec.start_date, dt.time(), tzinfo=dt.UTC)
    for first in range(0, spec.n_patients, batch_patients):
        rows = list(range(first, min(spec.n_patients, first + batch_patients)))
        patients = sample_tumour_patients(len(rows), patient_seed, patient_keys=rows)
        noise = draw_tumour_noise(len(rows), spec.days, noise_seed, patient_keys=rows)
        observed = simulate_tumours(patients, noise, policy)
        untreated = simulate_tumours(
            patients,
            noise,
            Regimen.standard(len(rows), spec.days, chemo_every_days=None),
        )
        ids = tuple(f"{spec.site_id}-{i:06d}" for i in rows)
        if on_batch is not None:
            names = tuple(
                f"tumour#type{t}-stage{Stage(s).name}"
                for t, s in zip(
                    patients.patient_type.tolist(), patients.stage.tolist(), strict=True
                )
            )
            on_batch(OncologyTruthBatch(ids, names, patients, observed, untreated))
        volume = observed.volume_cm3.numpy()
        chemo = observed.chemo.numpy() * CHEMO_DOSE
        radio = observed.radio.numpy() * RADIO_DOSE_GY
        for row, patient_id in enumerate(ids):
            age, weight = _age_and_weight(spec.seed, patient_id)
            birth, sex = demographics(patient_id, age, start, spec.seed)
            yield OncologyHistory(
                patient_id=patient_id,
                birth_date=birth,
                sex=sex,  # type: ignore[arg-type]
                start=start,
                tumour_volume_cm3=volume[row],
                chemo_mg=chemo[row],
                radio_gy=radio[row],
                weight_kg=weight,
                consents=tuple(dict(c) for c in (consents_for(patient_id) if consents_for else ())),
            )
        if progress is not None:
            progress((rows[-1] + 1) / spec.n_patients)
