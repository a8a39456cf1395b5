"""The UVA/Padova 2008 virtual population (30 subjects) as batched float64 tensors.

Invariant: a :class:`VirtualPatientParams` is a batch of ``B`` patients in which row ``i`` of
every tensor (each model parameter, the therapy questionnaire values and ``initial_state``)
belongs to ``names[i]``; every tensor is ``float64`` with ``B`` rows (checked on
construction). Published subjects come from :meth:`VirtualPatientParams.select` with their
values unmodified; sampled subjects (:mod:`fedtwin.cohorts.virtual_population`) are built with
the constructor. :meth:`~VirtualPatientParams.select`, :meth:`~VirtualPatientParams.take` and
:meth:`~VirtualPatientParams.concat` copy, so no batch aliases the cached tables or another
batch.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch
from torch import Tensor

from fedtwin.cohorts._tables import PATIENT_TABLE, QUEST_TABLE, NumericTable, read_numeric_table
from fedtwin.errors import ConfigError

#: Number of states of the UVA/Padova 2008 model.
N_STATES = 13
#: Names of the initial-state columns of ``vpatient_params.csv``, in state order.
STATE_COLUMNS = tuple(f"x0_{i}" for i in range(1, N_STATES + 1))
_STATE_COLUMNS = STATE_COLUMNS
_NON_PARAMETER_COLUMNS = ("i", "patient_history", *_STATE_COLUMNS)


class AgeGroup(enum.Enum):
    """Age group of a virtual subject; the value is the prefix of the subject's name."""

    CHILD = "child"
    ADOLESCENT = "adolescent"
    ADULT = "adult"


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[NumericTable, NumericTable]:
    patients = read_numeric_table(PATIENT_TABLE, skip=("patient_history",))
    quest = read_numeric_table(QUEST_TABLE)
    if patients.keys != quest.keys:
        raise ConfigError("vpatient_params.csv and Quest.csv list different subjects")
    return patients, quest


def all_patient_names() -> tuple[str, ...]:
    """Return the names of the 30 virtual subjects in table order.

    Returns
    -------
    tuple[str, ...]
        ``adolescent#001`` … ``adolescent#010``, ``adult#001`` … ``adult#010``,
        ``child#001`` … ``child#010``.
    """
    return _tables()[0].keys


def age_group_of(name: str) -> AgeGroup:
    """Return the age group of a virtual subject.

    Parameters
    ----------
    name : str
        A subject name such as ``"child#003"``.

    Returns
    -------
    AgeGroup
        The group named by the prefix before ``#``.

    Raises
    ------
    ConfigError
        If ``name`` is not one of the 30 subjects.
    """
    if name not in all_patient_names():
        raise ConfigError(f"unknown virtual patient {name!r}")
    return AgeGroup(name.split("#", 1)[0])


def names_in_group(group: AgeGroup) -> tuple[str, ...]:
    """Return the names of the subjects in one age group, in table order.

    Parameters
    ----------
    group : AgeGroup
        The age group.

    Returns
    -------
    tuple[str, ...]
        The ten subject names of that group.
    """
    return tuple(n for n in all_patient_names() if n.startswith(group.value + "#"))


@dataclass(frozen=True, eq=False)
class VirtualPatientParams:
    """Published parameters of a batch of virtual subjects (names may repeat).

    Parameters
    ----------
    names : tuple[str, ...]
        Subject name of each batch row.
    params : Mapping[str, torch.Tensor]
        Model parameter name (column of ``vpatient_params.csv``, e.g. ``"BW"``, ``"kabs"``,
        ``"u2ss"``) to a ``float64`` tensor of shape ``[B]``; read-only mapping.
    initial_state : torch.Tensor
        Steady-state initial condition, ``float64`` of shape ``[B, 13]``.
    carb_ratio_g_per_u : torch.Tensor
        Questionnaire carbohydrate ratio ``CR`` (g of carbohydrate covered by 1 U), ``[B]``.
    correction_factor_mg_dl_per_u : torch.Tensor
        Questionnaire correction factor ``CF`` (mg/dL lowered by 1 U), ``[B]``.
    age_years : torch.Tensor
        Questionnaire ``Age`` in years, ``[B]``.
    total_daily_insulin_u : torch.Tensor
        Questionnaire total daily insulin ``TDI`` in U, ``[B]``.
    """

    names: tuple[str, ...]
    params: Mapping[str, Tensor]
    initial_state: Tensor
    carb_ratio_g_per_u: Tensor
    correction_factor_mg_dl_per_u: Tensor
    age_years: Tensor
    total_daily_insulin_u: Tensor

    def __post_init__(self) -> None:
        batch = len(self.names)
        vectors = {
            **self.params,
            "carb_ratio_g_per_u": self.carb_ratio_g_per_u,
            "correction_factor_mg_dl_per_u": self.correction_factor_mg_dl_per_u,
            "age_years": self.age_years,
            "total_daily_insulin_u": self.total_daily_insulin_u,
        }
        for key, value in vectors.items():
            if tuple(value.shape) != (batch,) or value.dtype != torch.float64:
                raise ConfigError(f"patient parameter {key!r} must be float64 of shape [{batch}]")
        state = self.initial_state
        if tuple(state.shape) != (batch, N_STATES) or state.dtype != torch.float64:
            raise ConfigError(f"initial_state must be float64 of shape [{batch}, {N_STATES}]")

    @classmethod
    def select(cls, names: Sequence[str]) -> VirtualPatientParams:
        """Build the batch for a list of subject names.

        Parameters
        ----------
        names : Sequence[str]
            Subject names; repeats are allowed and give identical rows.

        Returns
        -------
        VirtualPatientParams
            A batch with ``B = len(names)`` rows in the given order; tensors are fresh copies.

        Raises
        ------
        ConfigError
            If ``names`` is empty, is a bare string, or contains an unknown name.
        """
        if isinstance(names, str):
            raise ConfigError("names must be a sequence of subject names, not one string")
        if len(names) == 0:
            raise ConfigError("a patient batch needs at least one name")
        patients, quest = _tables()
        lookup = {name: i for i, name in enumerate(patients.keys)}
        unknown = sorted({n for n in names if n not in lookup})
        if unknown:
            raise ConfigError(f"unknown virtual patient(s): {', '.join(unknown)}")
        rows = np.asarray([lookup[n] for n in names], dtype=np.int64)

        def col(table: NumericTable, column: str) -> Tensor:
            return torch.from_numpy(table.column(column)[rows].copy())

        params = {c: col(patients, c) for c in patients.columns if c not in _NON_PARAMETER_COLUMNS}
        state = torch.stack([col(patients, c) for c in _STATE_COLUMNS], dim=1)
        return cls(
            names=tuple(names),
            params=MappingProxyType(params),
            initial_state=state,
            carb_ratio_g_per_u=col(quest, "CR"),
            correction_factor_mg_dl_per_u=col(quest, "CF"),
            age_years=col(quest, "Age"),
            total_daily_insulin_u=col(quest, "TDI"),
        )

    @classmethod
    def population(cls) -> VirtualPatientParams:
        """Return all 30 subjects, in table order.

        Returns
        -------
        VirtualPatientParams
            The full virtual population as one batch.
        """
        return cls.select(all_patient_names())

    def take(self, rows: Sequence[int] | Tensor) -> VirtualPatientParams:
        """Return a batch made of some rows of this one (copies).

        Parameters
        ----------
        rows : Sequence[int] or torch.Tensor
            Row indices, in the order wanted; repeats allowed.

        Returns
        -------
        VirtualPatientParams
            A batch with ``len(rows)`` rows.

        Raises
        ------
        ConfigError
            If ``rows`` is empty or out of range.
        """
        index = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        if index.numel() == 0:
            raise ConfigError("a patient batch needs at least one row")
        if bool(((index < 0) | (index >= self.batch_size)).any()):
            raise ConfigError(f"row index out of range for a batch of {self.batch_size}")
        return VirtualPatientParams(
            names=tuple(self.names[i] for i in index.tolist()),
            params=MappingProxyType({k: v[index].clone() for k, v in self.params.items()}),
            initial_state=self.initial_state[index].clone(),
            carb_ratio_g_per_u=self.carb_ratio_g_per_u[index].clone(),
            correction_factor_mg_dl_per_u=self.correction_factor_mg_dl_per_u[index].clone(),
            age_years=self.age_years[index].clone(),
            total_daily_insulin_u=self.total_daily_insulin_u[index].clone(),
        )

    @classmethod
    def concat(cls, batches: Sequence[VirtualPatientParams]) -> VirtualPatientParams:
        """Stack batches into one, rows in the given order.

        Parameters
        ----------
        batches : Sequence[VirtualPatientParams]
            Batches with the same parameter names.

        Returns
        -------
        VirtualPatientParams
            One batch with the rows of all of them.

        Raises
        ------
        ConfigError
            If ``batches`` is empty or their parameter names differ.
        """
        if len(batches) == 0:
            raise ConfigError("concat needs at least one batch")
        keys = set(batches[0].params)
        if any(set(b.params) != keys for b in batches):
            raise ConfigError("cannot concat batches with different parameter names")
        return cls(
            names=tuple(n for b in batches for n in b.names),
            params=MappingProxyType({k: torch.cat([b.params[k] for b in batches]) for k in keys}),
            initial_state=torch.cat([b.initial_state for b in batches]),
            carb_ratio_g_per_u=torch.cat([b.carb_ratio_g_per_u for b in batches]),
            correction_factor_mg_dl_per_u=torch.cat(
                [b.correction_factor_mg_dl_per_u for b in batches]
            ),
            age_years=torch.cat([b.age_years for b in batches]),
            total_daily_insulin_u=torch.cat([b.total_daily_insulin_u for b in batches]),
        )

    def table(self) -> dict[str, Tensor]:
        """Every per-patient value as one flat table (ground truth for exports).

        Returns
        -------
        dict[str, torch.Tensor]
            Model parameters under their ``vpatient_params.csv`` names, the initial state as
            ``x0_1`` … ``x0_13`` and the questionnaire values as ``CR``, ``CF``, ``Age`` and
            ``TDI``; each ``float64`` ``[B]``, sorted by key.
        """
        values = dict(self.params)
        values.update({c: self.initial_state[:, i] for i, c in enumerate(_STATE_COLUMNS)})
        values.update(
            CR=self.carb_ratio_g_per_u,
            CF=self.correction_factor_mg_dl_per_u,
            Age=self.age_years,
            TDI=self.total_daily_insulin_u,
        )
        return {k: values[k].clone() for k in sorted(values)}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> Tensor:
        """Return one model parameter for the whole batch.

        Parameters
        ----------
        name : str
            Parameter name, e.g. ``"BW"``.

        Returns
        -------
        torch.Tensor
            ``float64`` tensor of shape ``[B]``.

        Raises
        ------
        ConfigError
            If there is no such parameter.
        """
        try:
            return self.params[name]
        except KeyError:
            raise ConfigError(f"no model parameter {name!r}") from None

    @property
    def batch_size(self) -> int:
        """Number of rows ``B`` in the batch."""
        return len(self.names)

    @property
    def body_weight_kg(self) -> Tensor:
        """Body weight ``BW`` in kg, shape ``[B]``."""
        return self["BW"]

    @property
    def basal_glucose_mg_dl(self) -> Tensor:
        """Steady-state plasma glucose ``Gb`` in mg/dL, shape ``[B]``."""
        return self["Gb"]

    @property
    def basal_u_per_min(self) -> Tensor:
        """Steady-state basal insulin rate ``u2ss * BW / 6000`` in U/min, shape ``[B]``."""
        return self["u2ss"] * self["BW"] / 6000.0

    @property
    def age_groups(self) -> tuple[AgeGroup, ...]:
        """Age group of each batch row."""
        return tuple(AgeGroup(n.split("#", 1)[0]) for n in self.names)
