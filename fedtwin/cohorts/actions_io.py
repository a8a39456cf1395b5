"""Read per-minute action CSVs and write glucose CSVs for ``fedtwin cohort replay``.

Invariant: :func:`read_actions_csv` either returns one action per minute ``0 … T-1``, every
value finite and non-negative, or raises :class:`~fedtwin.errors.IngestError` whose message
starts with ``<file>:<line>:`` and names the column and the problem; nothing is skipped
silently (only empty lines are ignored). :func:`write_glucose_csv` writes to a temporary file
in the destination folder and renames it into place, so the destination is either absent,
unchanged, or complete.
"""

from __future__ import annotations

import csv
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedtwin.errors import ConfigError, IngestError

#: Columns of an actions CSV, in the documented order (any order is accepted).
ACTION_COLUMNS = ("minute", "cho_g_per_min", "insulin_u_per_min")
#: Columns of the glucose CSV written by :func:`write_glucose_csv`.
GLUCOSE_COLUMNS = ("minute", "bg_mg_dl")


@dataclass(frozen=True, eq=False)
class MinuteActions:
    """One patient's actions, minute ``i`` in row ``i``.

    Parameters
    ----------
    cho_g_per_min : numpy.ndarray
        Carbohydrate announced at each minute (simglucose ``Action.CHO``), ``float64`` ``[T]``.
    insulin_u_per_min : numpy.ndarray
        Insulin rate during each minute (simglucose ``Action.insulin``), ``float64`` ``[T]``.
    """

    cho_g_per_min: npt.NDArray[np.float64]
    insulin_u_per_min: npt.NDArray[np.float64]

    @property
    def minutes(self) -> int:
        """Number of minutes ``T``."""
        return int(self.cho_g_per_min.shape[0])


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise IngestError(f"{path}:{line}: {column}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise IngestError(f"{path}:{line}: {column}: {text.strip()!r} is not finite")
    return value


def _header(path: Path, row: list[str]) -> dict[str, int]:
    names = [cell.strip() for cell in row]
    for name in names:
        if names.count(name) > 1:
            raise IngestError(f"{path}:1: column {name!r} appears twice")
        if name not in ACTION_COLUMNS:
            raise IngestError(
                f"{path}:1: unknown column {name!r} (expected {', '.join(ACTION_COLUMNS)})"
            )
    for name in ACTION_COLUMNS:
        if name not in names:
            raise IngestError(f"{path}:1: missing column {name!r}")
    return {name: names.index(name) for name in ACTION_COLUMNS}


def read_actions_csv(path: Path) -> MinuteActions:
    """Parse and validate an actions CSV (``minute,cho_g_per_min,insulin_u_per_min``).

    Parameters
    ----------
    path : pathlib.Path
        The file: a header, then one row per minute starting at minute 0 without gaps.

    Returns
    -------
    MinuteActions
        The actions.

    Raises
    ------
    IngestError
        If the file cannot be read, has a missing, unknown or repeated column, a row with the
        wrong number of cells, a non-numeric or non-finite value, a minute that is not a whole
        number, negative carbohydrate or insulin, minutes not starting at 0, a gap or repeat
        in the minutes, or no data rows.
    """
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from exc
    cho: list[float] = []
    insulin: list[float] = []
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise IngestError(f"{path}:1: empty file (expected {','.join(ACTION_COLUMNS)})")
            index = _header(path, header)
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(ACTION_COLUMNS):
                    raise IngestError(
                        f"{path}:{line}: expected {len(ACTION_COLUMNS)} values, got {len(row)}"
                    )
                values = {c: _number(path, line, c, row[i]) for c, i in index.items()}
                minute = values["minute"]
                if not minute.is_integer():
                    raise IngestError(
                        f"{path}:{line}: minute: {row[index['minute']].strip()!r} "
                        "is not a whole number"
                    )
                if int(minute) != len(cho):
                    what = "minutes must start at 0" if not cho else "gap or repeat in minutes"
                    raise IngestError(
                        f"{path}:{line}: minute: {what}: expected {len(cho)}, got {int(minute)}"
                    )
                for column in ("cho_g_per_min", "insulin_u_per_min"):
                    if values[column] < 0.0:
                        raise IngestError(
                            f"{path}:{line}: {column}: must be >= 0, got {values[column]:g}"
                        )
                cho.append(values["cho_g_per_min"])
                insulin.append(values["insulin_u_per_min"])
        except UnicodeDecodeError as exc:
            raise IngestError(f"{path}: not UTF-8 text") from exc
        except csv.Error as exc:
            raise IngestError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from exc
    if not cho:
        raise IngestError(f"{path}:2: no action rows after the header")
    return MinuteActions(np.asarray(cho, dtype=np.float64), np.asarray(insulin, dtype=np.float64))


def write_glucose_csv(path: Path, glucose_mg_dl: npt.NDArray[np.float64]) -> None:
    """Write ``minute,bg_mg_dl`` rows (minute ``i`` in row ``i``) atomically.

    Parameters
    ----------
    path : pathlib.Path
        Destination; its folder must exist.
    glucose_mg_dl : numpy.ndarray
        Glucose per minute, ``[T]``; written with full ``float64`` precision.

    Raises
    ------
    ConfigError
        If the destination folder does not exist or is not writable.
    """
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"--out: folder {folder} does not exist")
    if path.is_dir():
        raise ConfigError(f"--out: {path} is a folder")
    temporary = folder / f".{path.name}.{secrets.token_hex(8)}.partial"
    try:
        handle = temporary.open("x", newline="", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--out: cannot write in {folder} ({exc.strerror})") from exc
    try:
        with handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(GLUCOSE_COLUMNS)
            for minute, value in enumerate(glucose_mg_dl.tolist()):
                writer.writerow((minute, repr(float(value))))
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"--out: cannot write {path} ({exc.strerror})") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
