"""Read the vendored simglucose CSV tables shipped in ``fedtwin/cohorts/data``.

Invariant: tables are read through :mod:`importlib.resources` (never from a path relative to
the working directory), parsed with :mod:`csv` and :mod:`numpy` only, and returned with their
rows in file order; every numeric cell becomes a finite ``float64``. A malformed table raises
:class:`fedtwin.errors.ConfigError`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

from fedtwin.errors import ConfigError

_PACKAGE = "fedtwin.cohorts"
PATIENT_TABLE = "vpatient_params.csv"
QUEST_TABLE = "Quest.csv"


@dataclass(frozen=True)
class NumericTable:
    """A CSV table with one text key column and numeric value columns.

    Parameters
    ----------
    keys : tuple[str, ...]
        Row keys (the ``Name`` column), in file order.
    columns : tuple[str, ...]
        Names of the numeric columns, in file order, whitespace stripped.
    values : numpy.ndarray
        ``float64`` array of shape ``[len(keys), len(columns)]``.
    """

    keys: tuple[str, ...]
    columns: tuple[str, ...]
    values: npt.NDArray[np.float64]

    def column(self, name: str) -> npt.NDArray[np.float64]:
        """Return one numeric column.

        Parameters
        ----------
        name : str
            Column name as listed in :attr:`columns`.

        Returns
        -------
        numpy.ndarray
            ``float64`` vector with one entry per row.

        Raises
        ------
        ConfigError
            If the column does not exist.
        """
        try:
            index = self.columns.index(name)
        except ValueError:
            raise ConfigError(f"table has no column {name!r}") from None
        return self.values[:, index]


def read_numeric_table(
    filename: str, *, key_column: str = "Name", skip: tuple[str, ...] = ()
) -> NumericTable:
    """Read a vendored CSV table whose cells, other than the key, are numbers.

    Parameters
    ----------
    filename : str
        File name inside ``fedtwin/cohorts/data``.
    key_column : str, default "Name"
        Column whose text values key the rows.
    skip : tuple[str, ...], default ()
        Columns to leave out of the numeric array.

    Returns
    -------
    NumericTable
        The parsed table.

    Raises
    ------
    ConfigError
        If the file is missing, empty, has ragged rows, duplicate keys or non-finite values.
    """
    try:
        text = resources.files(_PACKAGE).joinpath("data", filename).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ConfigError(f"vendored table {filename!r} is missing") from exc
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if len(rows) < 2:
        raise ConfigError(f"vendored table {filename!r} has no data rows")
    header = [cell.replace(" ", "") for cell in rows[0]]
    if key_column not in header:
        raise ConfigError(f"vendored table {filename!r} has no {key_column!r} column")
    key_index = header.index(key_column)
    keep = [i for i, name in enumerate(header) if i != key_index and name not in skip]
    keys: list[str] = []
    numbers: list[list[str]] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ConfigError(f"{filename}:{line_no}: expected {len(header)} cells, got {len(row)}")
        keys.append(row[key_index].strip())
        numbers.append([row[i] for i in keep])
    if len(set(keys)) != len(keys):
        raise ConfigError(f"vendored table {filename!r} has duplicate keys")
    try:
        values = np.asarray(numbers, dtype=np.float64)
    except ValueError as exc:
        raise ConfigError(f"vendored table {filename!r} has a non-numeric cell") from exc
    if not np.all(np.isfinite(values)):
        raise ConfigError(f"vendored table {filename!r} has a non-finite value")
    return NumericTable(keys=tuple(keys), columns=tuple(header[i] for i in keep), values=values)
