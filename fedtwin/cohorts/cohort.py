"""Simulate a cohort of virtual patients in one batch and store the result as safetensors.

Invariant: :func:`simulate_cohort` is a pure function of its arguments: one integer seed is
split (``numpy.random.SeedSequence``) into independent generators for initial glucose, meals,
behaviour and sensor noise, so equal arguments give bit-identical :class:`CohortSeries`. A
:class:`CohortSeries` always holds ``[B, T]`` float32 tensors on one ``step_min`` grid whose bin
``k`` covers minutes ``[k * step_min, (k + 1) * step_min)``; ``save``/``load`` round-trip it
exactly and never use pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from fedtwin.cohorts.controller import BasalBolusController, BehaviourNoise, HypoTreatment
from fedtwin.cohorts.population import VirtualPatientParams
from fedtwin.cohorts.scenario import meal_size_scale, random_meal_scenario
from fedtwin.cohorts.sensor import CGMSensor, SensorParams
from fedtwin.cohorts.uva_padova import BatchedT1DPatient
from fedtwin.errors import ConfigError, IngestError

STEP_MIN = 5
_SERIES = ("cgm_mg_dl", "bg_true_mg_dl", "insulin_u", "carbs_g")
_FORMAT = "fedtwin.cohort-series/1"
#: Relative SD of the per-patient initial glucose jitter (truncated at two SDs).
INITIAL_BG_JITTER = 0.03


@dataclass(frozen=True, eq=False)
class CohortSeries:
    """Simulated time series of a cohort on a regular grid.

    Parameters
    ----------
    patient_names : tuple[str, ...]
        Virtual subject of each row (names may repeat).
    cgm_mg_dl : torch.Tensor
        CGM reading at the start of each bin, float32 ``[B, T]``.
    bg_true_mg_dl : torch.Tensor
        True subcutaneous glucose at the start of each bin, float32 ``[B, T]``.
    insulin_u : torch.Tensor
        Insulin delivered during each bin (basal and bolus), U, float32 ``[B, T]``.
    carbs_g : torch.Tensor
        Carbohydrate eaten during each bin, g, float32 ``[B, T]``.
    step_min : int, default 5
        Bin width, minutes.
    start_minute_of_day : int, default 0
        Clock time of the start of bin 0, minutes after midnight.

    Raises
    ------
    ConfigError
        If shapes, dtypes or names are inconsistent.
    """

    patient_names: tuple[str, ...]
    cgm_mg_dl: Tensor
    bg_true_mg_dl: Tensor
    insulin_u: Tensor
    carbs_g: Tensor
    step_min: int = STEP_MIN
    start_minute_of_day: int = 0

    def __post_init__(self) -> None:
        shape = tuple(self.cgm_mg_dl.shape)
        if len(shape) != 2 or shape[0] != len(self.patient_names):
            raise ConfigError("series must have shape [len(patient_names), T]")
        for name in _SERIES:
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
                raise ConfigError(f"{name} must be float32 with shape {list(shape)}")
        if self.step_min < 1 or not 0 <= self.start_minute_of_day < 1440:
            raise ConfigError("step_min must be >= 1 and start_minute_of_day in [0, 1440)")

    @property
    def n_steps(self) -> int:
        """Number of bins ``T``."""
        return int(self.cgm_mg_dl.shape[1])

    def save(self, path: str | PathLike[str]) -> None:
        """Write the series to a safetensors file (names and grid in its metadata).

        Parameters
        ----------
        path : str or os.PathLike
            Destination file.
        """
        metadata = {
            "format": _FORMAT,
            "patient_names": json.dumps(list(self.patient_names)),
            "step_min": str(self.step_min),
            "start_minute_of_day": str(self.start_minute_of_day),
        }
        tensors = {name: getattr(self, name).contiguous() for name in _SERIES}
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | PathLike[str]) -> CohortSeries:
        """Read a series written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            Source file.

        Returns
        -------
        CohortSeries
            The stored series.

        Raises
        ------
        IngestError
            If the file is missing, not a safetensors file, or not a cohort series.
        """
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != _FORMAT:
                    raise IngestError(f"{path}: not a fedtwin cohort series")
                tensors = {name: handle.get_tensor(name) for name in _SERIES}
            names = json.loads(metadata["patient_names"])
            step_min = int(metadata["step_min"])
            start = int(metadata["start_minute_of_day"])
        except IngestError:
            raise
        except Exception as exc:  # OSError, KeyError, ValueError, safetensors' own errors
            raise IngestError(f"{path}: cannot read cohort series ({type(exc).__name__})") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise IngestError(f"{path}: patient_names metadata is not a list of strings")
        try:
            return cls(tuple(names), **tensors, step_min=step_min, start_minute_of_day=start)
        except ConfigError as exc:
            raise IngestError(f"{path}: inconsistent cohort series: {exc}") from exc


def _generators(seed: int, count: int) -> list[torch.Generator]:
    words = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64)
    return [torch.Generator().manual_seed(int(w)) for w in words]


def _jittered_initial_state(params: VirtualPatientParams, gen: torch.Generator) -> Tensor:
    z = torch.randn(params.batch_size, generator=gen, dtype=torch.float64).clamp(-2.0, 2.0)
    state = params.initial_state.clone()
    factor = 1.0 + INITIAL_BG_JITTER * z
    for glucose_state in (3, 4, 12):
        state[:, glucose_state] *= factor
    return state


def _bin_sum(per_minute: Tensor) -> Tensor:
    batch, minutes = per_minute.shape
    return per_minute.reshape(batch, minutes // STEP_MIN, STEP_MIN).sum(dim=2)


def simulate_cohort(
    names: Sequence[str],
    days: float,
    seed: int,
    *,
    start_minute_of_day: int = 0,
    progress: Callable[[float], None] | None = None,
    behaviour: BehaviourNoise | None = None,
    sensor: SensorParams | None = None,
    hypo_treatment: HypoTreatment | None = None,
) -> CohortSeries:
    """Simulate patients under random meals, basal-bolus therapy and a CGM, in one batch.

    Each patient starts near steady state (glucose jittered by ~3 %), eats a
    :func:`~fedtwin.cohorts.scenario.random_meal_scenario` (children's meals scaled by body
    weight), is dosed by a :class:`~fedtwin.cohorts.controller.BasalBolusController` that sees
    the latest CGM reading, wears a GuardianRT-like sensor read every 5 minutes, and eats
    rescue carbohydrate (:class:`~fedtwin.cohorts.controller.HypoTreatment`) when the CGM shows
    hypoglycaemia.

    Parameters
    ----------
    names : Sequence[str]
        Virtual subject of each patient; repeats give physiologically identical patients whose
        meals, behaviour and sensor noise still differ.
    days : float
        Simulated duration; ``days * 1440`` must be a positive whole multiple of 5 minutes.
    seed : int
        Non-negative seed of every random choice.
    start_minute_of_day : int, default 0
        Clock time at the start, minutes after midnight.
    progress : Callable[[float], None] or None, optional
        Called with the completed fraction after every simulated hour and at the end.
    behaviour : BehaviourNoise or None, optional
        Patient behaviour noise; defaults to :class:`BehaviourNoise` ``()``.
    sensor : SensorParams or None, optional
        CGM parameters; ``sample_time_min`` must be 5. Defaults to GuardianRT.
    hypo_treatment : HypoTreatment or None, optional
        Rescue-carbohydrate policy; defaults to :class:`HypoTreatment` ``()``; pass
        :meth:`HypoTreatment.off` for none.

    Returns
    -------
    CohortSeries
        The cohort on a 5-minute grid.

    Raises
    ------
    ConfigError
        On an unknown name, a bad duration, seed, start time or sensor sample time.
    """
    minutes_f = days * 1440.0
    minutes = round(minutes_f) if math.isfinite(minutes_f) else -1
    if minutes <= 0 or minutes % STEP_MIN or abs(minutes - minutes_f) > 1e-6:
        raise ConfigError(f"days * 1440 must be a positive multiple of {STEP_MIN} minutes")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError("seed must be a non-negative integer")
    sensor_params = SensorParams() if sensor is None else sensor
    hypo = HypoTreatment() if hypo_treatment is None else hypo_treatment
    if sensor_params.sample_time_min != STEP_MIN:
        raise ConfigError(f"sensor sample_time_min must be {STEP_MIN}")
    params = VirtualPatientParams.select(names)
    batch, n_bins = params.batch_size, minutes // STEP_MIN
    gen_init, gen_meals, gen_behaviour, gen_sensor = _generators(seed, 4)

    meals_g = random_meal_scenario(
        batch,
        minutes,
        gen_meals,
        start_minute_of_day=start_minute_of_day,
        carb_scale=meal_size_scale(params),
    )
    meal_minutes = set(torch.nonzero(meals_g.any(dim=0)).flatten().tolist())
    patient = BatchedT1DPatient(params, initial_state=_jittered_initial_state(params, gen_init))
    controller = BasalBolusController(params, gen_behaviour, behaviour=behaviour)
    cgm_sensor = CGMSensor(batch, n_bins, gen_sensor, sensor_params)

    bg = torch.empty(batch, n_bins, dtype=torch.float64)
    cgm = torch.empty(batch, n_bins, dtype=torch.float64)
    insulin_u_per_min = torch.empty(batch, minutes, dtype=torch.float64)
    eaten_g = torch.empty(batch, minutes, dtype=torch.float64)
    no_meal = torch.zeros(batch, dtype=torch.float64)
    basal = controller.basal_u_per_min
    latest_cgm = no_meal
    last_rescue_minute = torch.full((batch,), -math.inf, dtype=torch.float64)
    with torch.no_grad():
        for minute in range(minutes):
            rescue_g = None
            if minute % STEP_MIN == 0:
                k = minute // STEP_MIN
                bg[:, k] = patient.bg_mg_dl
                latest_cgm = cgm_sensor.read(bg[:, k], k)
                cgm[:, k] = latest_cgm
                rescue_g = hypo.rescue_carbs_g(latest_cgm, minute - last_rescue_minute)
                if bool(rescue_g.any()):
                    last_rescue_minute[rescue_g > 0.0] = float(minute)
                else:
                    rescue_g = None
            if minute in meal_minutes:
                cho = meals_g[:, minute]
                rate = controller.insulin_u_per_min(latest_cgm, cho)
            else:
                cho, rate = no_meal, basal
            if rescue_g is not None:
                cho = cho + rescue_g
            insulin_u_per_min[:, minute] = rate
            eaten_g[:, minute] = patient.step(cho, rate)
            if progress is not None and (minute + 1) % 60 == 0 and minute + 1 < minutes:
                progress((minute + 1) / minutes)
    if progress is not None:
        progress(1.0)
    return CohortSeries(
        patient_names=params.names,
        cgm_mg_dl=cgm.to(torch.float32),
        bg_true_mg_dl=bg.to(torch.float32),
        insulin_u=_bin_sum(insulin_u_per_min).to(torch.float32),
        carbs_g=_bin_sum(eaten_g).to(torch.float32),
        step_min=STEP_MIN,
        start_minute_of_day=start_minute_of_day,
    )
