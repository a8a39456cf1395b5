"""The UVA/Padova 2008 virtual population (30 subjects) as batched float64 tensors.

Invariant: a :class:`VirtualPatientParams` is a batch of ``B`` patients in which row ``i`` of
every tensor (each model parameter, the therapy questionnaire values and ``initial_state``)
belongs to ``names[i]``; values are the published ones, unmodified, in ``float64``. Batches
are built only by :meth:`VirtualPatientParams.select`, which copies, so no batch aliases the
cached tables or another batch.
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
_STATE_COLUMNS = tuple(f"x0_{i}" for i in range(1, N_STATES + 1))
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
