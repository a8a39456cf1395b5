"""A simulated site as a hospital would hand it over: a Bulk FHIR export, plus ground truth.

Invariants:

* the site's records go out only through :func:`fedtwin.fhir.write_site` (the profile of
  ``docs/fhir-profile.md``), so whatever reads them back takes the same path as real data;
* what the export holds is what a hospital would have: CGM readings (with the sensor's noise
  and drop-outs), insulin as boluses and basal rates, carbohydrate as the patient logged it
  (announced meals and rescue carbohydrate, at the time announced), demographics and consents;
  the noise-free glucose and the virtual physiology stay in ``ground_truth`` beside it;
* patients stream batch by batch; nothing of a batch is kept after it is written (the ground
  truth too: one safetensors shard per batch, :class:`GroundTruthWriter`);
* every choice (sex, birthday within the year of the age) is keyed by the patient id and the
  seed, so the export is a pure function of the site's spec, consents and seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors.numpy import save_file

from fedtwin.cohorts.site import SiteBatch
from fedtwin.errors import ConfigError
from fedtwin.fhir import ExportOptions, GlucoseHistory, WrittenExport, write_site

ConsentsFor = Callable[[str], Sequence[Mapping[str, Any]]]

_SEXES = ("female", "male")


def _keyed_fraction(seed: int, patient_id: str, purpose: str) -> float:
    digest = hashlib.sha256(f"{seed}/{purpose}/{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def demographics(patient_id: str, age_years: float, start: datetime, seed: int) -> tuple[date, str]:
    """Birth date (consistent with the age at ``start``) and administrative sex."""
    sex = _SEXES[int(_keyed_fraction(seed, patient_id, "sex") * 2)]
    days_into_year = _keyed_fraction(seed, patient_id, "birthday") * 365.0
    born = start - timedelta(days=365.25 * float(age_years) + days_into_year)
    return born.date(), sex


@dataclass(frozen=True)
class GroundTruthBatch:
    """What the simulator knows about a batch and a hospital never does."""

    patient_ids: tuple[str, ...]
    names: tuple[str, ...]
    bg_true_mg_dl: np.ndarray
    parameters: dict[str, np.ndarray]

    def arrays(self) -> dict[str, np.ndarray]:
        """Named per-patient arrays (first axis: the batch's patients) for the shard."""
        return {
            "bg_true_mg_dl": self.bg_true_mg_dl,
            **{f"param/{name}": values for name, values in self.parameters.items()},
        }


class TruthBatch(Protocol):
    """Anything :class:`GroundTruthWriter` stores: ids, subject names, per-patient arrays."""

    @property
    def patient_ids(self) -> tuple[str, ...]: ...  # noqa: D102

    @property
    def names(self) -> tuple[str, ...]: ...  # noqa: D102

    def arrays(self) -> dict[str, np.ndarray]: ...  # noqa: D102


class GroundTruthWriter:
    """Writes a site's ground truth batch by batch: memory stays one batch.

    Layout of ``folder``: ``trajectories-<k:05d>.safetensors`` per batch (arrays whose first
    axis is the batch's patients) and, on :meth:`close`, ``patients.json`` with every
    patient id, its virtual subject name and the shard and row holding it.

    Parameters
    ----------
    folder : Path
        Created if missing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._ids: list[str] = []
        self._names: list[str] = []
        self._shards: list[dict[str, Any]] = []

    def add(self, batch: TruthBatch) -> None:
        """Write one batch's shard."""
        arrays = {k: np.ascontiguousarray(v) for k, v in batch.arrays().items()}
        if any(v.shape[:1] != (len(batch.patient_ids),) for v in arrays.values()):
            raise ConfigError("ground-truth arrays must have one row per patient")
        name = f"trajectories-{len(self._shards):05d}.safetensors"
        save_file(arrays, str(self.folder / name))
        self._shards.append({"file": name, "first": len(self._ids), "rows": len(batch.names)})
        self._ids.extend(batch.patient_ids)
        self._names.extend(batch.names)

    def close(self) -> None:
        """Write ``patients.json`` (the index of the shards)."""
        if not self._shards:
            raise ConfigError("no ground truth to write")
        index = {"patient_ids": self._ids, "subjects": self._names, "shards": self._shards}
        (self.folder / "patients.json").write_text(json.dumps(index, indent=1) + "\n")


def site_histories(
    batches: Iterable[SiteBatch],
    *,
    seed: int,
    consents_for: ConsentsFor | None = None,
    on_batch: Callable[[GroundTruthBatch], None] | None = None,
) -> Iterator[GlucoseHistory]:
    """Each simulated patient as a :class:`fedtwin.fhir.GlucoseHistory`, batch by batch.

    Parameters
    ----------
    batches : Iterable[SiteBatch]
        The site's batches (:func:`fedtwin.cohorts.site.simulate_site`).
    seed : int
        Keys the patients' sex and birthday.
    consents_for : Callable or None
        Consent resources (FHIR JSON) of a patient id; none when omitted.
    on_batch : Callable or None
        Receives each batch's ground truth (noise-free glucose, parameters) before its
        patients are yielded.
    """
    for batch in batches:
        spec, trajectory = batch.spec, batch.trajectory
        start = datetime.combine(spec.start_date, datetime.min.time(), tzinfo=UTC) + timedelta(
            minutes=spec.start_minute_of_day + trajectory.start_minute
        )
        ids = batch.patient_ids
        if on_batch is not None:
            on_batch(
                GroundTruthBatch(
                    patient_ids=ids,
                    names=batch.params.names,
                    bg_true_mg_dl=trajectory.bg_mg_dl.numpy().astype(np.float32),
                    parameters={k: v.numpy() for k, v in batch.params.table().items()},
                )
            )
        step_h = trajectory.step_min / 60.0
        cgm = trajectory.cgm_mg_dl.numpy()
        bolus = trajectory.bolus_u.numpy()
        basal_u = np.clip(trajectory.insulin_u.numpy() - bolus, 0.0, None)
        carbs = trajectory.carbs_announced_g.numpy()
        ages = batch.params.age_years.numpy()
        weights = batch.params.body_weight_kg.numpy()
        for row, patient_id in enumerate(ids):
            birth, sex = demographics(patient_id, float(ages[row]), start, seed)
            yield GlucoseHistory(
                patient_id=patient_id,
                birth_date=birth,
                sex=sex,  # type: ignore[arg-type]
                start=start,
                cgm_mg_dl=cgm[row],
                carbs_g=carbs[row],
                bolus_u=bolus[row],
                # Basal is what was delivered besides boluses, as a rate; constant runs
                # become one MedicationAdministration each.
                basal_u_per_h=np.round(basal_u[row] / step_h, 6),
                weight_kg=round(float(weights[row]), 1),
                consents=tuple(dict(c) for c in (consents_for(patient_id) if consents_for else ())),
                step_min=trajectory.step_min,
            )


def write_ground_truth(folder: Path, batches: Sequence[TruthBatch]) -> None:
    """``ground_truth/``: noise-free glucose and parameters per patient (safetensors + JSON)."""
    writer = GroundTruthWriter(folder)
    for batch in batches:
        writer.add(batch)
    writer.close()


def write_site_export(
    folder: Path,
    batches: Iterable[SiteBatch],
    *,
    seed: int,
    consents_for: ConsentsFor | None = None,
    ground_truth: Path | None = None,
    options: ExportOptions | None = None,
) -> WrittenExport:
    """Write a simulated site's Bulk FHIR export (and its ground truth, kept apart)."""
    truth = GroundTruthWriter(ground_truth) if ground_truth is not None else None
    written = write_site(
        folder,
        site_histories(
            batches,
            seed=seed,
            consents_for=consents_for,
            on_batch=truth.add if truth is not None else None,
        ),
        options=options,
    )
    if truth is not None:
        truth.close()
    return written
