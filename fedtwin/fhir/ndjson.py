"""Stream FHIR NDJSON files (plain or gzip) line by line and validate each resource.

Invariants:

* a file is never read whole: lines are pulled one at a time (``gzip`` decompresses as it
  goes), so memory does not grow with the file;
* every non-blank line yields exactly one outcome: a JSON object, or a :class:`Rejection`
  naming the file and the 1-based line (blank lines are not records and are skipped);
* JSON is parsed strictly (UTF-8, one object per line, no ``NaN``/``Infinity``);
* the FHIR version of a resource follows one documented rule (:func:`detect_version`), and the
  resource is validated by the fhir.resources model of that version: ``fhir.resources.R4B``
  for R4/R4B data, ``fhir.resources`` (R5) otherwise;
* a truncated or corrupt gzip stream is reported as
  ``<file>: truncated gzip stream after line N``, never as a crash.
"""

from __future__ import annotations

import gzip
import importlib
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import ValidationError

from fedtwin.errors import IngestError
from fedtwin.fhir.report import ErrorClass, Rejection


class FhirVersion(StrEnum):
    """FHIR release a resource is validated against."""

    R4B = "R4B"
    R5 = "R5"


VersionChoice = Literal["auto", "R4B", "R5"]

#: Resource types fedtwin reads, and the module name of each in fhir.resources.
RESOURCE_MODULES: dict[str, str] = {
    "Patient": "patient",
    "Observation": "observation",
    "MedicationAdministration": "medicationadministration",
    "Procedure": "procedure",
    "Consent": "consent",
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True)
class ParsedResource:
    """One validated resource and where it came from.

    Attributes
    ----------
    file : Path
        The NDJSON file.
    line : int
        1-based line number in ``file``.
    fhir_version : FhirVersion
        Release the resource was validated against.
    resource : Any
        The fhir.resources model instance (``fhir.resources.R4B.<type>.<Type>`` or
        ``fhir.resources.<type>.<Type>``).
    """

    file: Path
    line: int
    fhir_version: FhirVersion
    resource: Any


@cache
def model_class(resource_type: str, version: FhirVersion) -> Any:
    """The fhir.resources model class of ``resource_type`` in ``version``."""
    module = RESOURCE_MODULES[resource_type]
    package = "fhir.resources.R4B" if version is FhirVersion.R4B else "fhir.resources"
    return getattr(importlib.import_module(f"{package}.{module}"), resource_type)


@cache
def r5_only_keys(resource_type: str) -> frozenset[str]:
    """JSON keys a resource of this type can carry only in R5 (derived from both models).

    Computed from the two fhir.resources models, so the table is exact for the installed
    release: a key that R5 defines and R4B does not (``Consent.decision``,
    ``MedicationAdministration.occurenceDateTime`` …), with its ``_key`` extension sibling.
    """
    r4 = model_class(resource_type, FhirVersion.R4B).model_fields
    r5 = model_class(resource_type, FhirVersion.R5).model_fields
    keys: set[str] = set()
    for name, field in r5.items():
        if name.endswith("__ext") or name in r4:
            continue
        alias = field.alias or name
        keys.update({alias, f"_{alias}"})
    return frozenset(keys)


def detect_version(resource: dict[str, Any], choice: VersionChoice = "auto") -> FhirVersion:
    """The FHIR release a resource is validated against.

    Rule: an explicit ``choice`` ("R4B" or "R5") wins. With ``"auto"`` a resource is R5 when
    it carries at least one top-level element that only R5 defines for its type
    (:func:`r5_only_keys`), otherwise R4B (R4 data validates as R4B).
    """
    if choice != "auto":
        return FhirVersion(choice)
    resource_type = resource.get("resourceType")
    if resource_type in RESOURCE_MODULES and not r5_only_keys(resource_type).isdisjoint(resource):
        return FhirVersion.R5
    return FhirVersion.R4B


def _open_binary(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def iter_json_lines(
    path: Path,
    resource_type: str | None = None,
    *,
    on_file_problem: Callable[[ErrorClass, str], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any] | Rejection]]:
    """Yield ``(line, object_or_rejection)`` for every non-blank line of an NDJSON file.

    Parameters
    ----------
    path : Path
        ``<Type>.ndjson`` or ``<Type>.ndjson.gz``.
    resource_type : str or None
        When given, an object whose ``resourceType`` differs is a rejection.
    on_file_problem : Callable[[ErrorClass, str], None] or None
        When given, called (instead of raising) for an unreadable or truncated file and for a
        file without any record; it may raise to stop.

    Yields
    ------
    tuple[int, dict or Rejection]
        The 1-based line number and the parsed JSON object, or why the line is unusable.

    Raises
    ------
    IngestError
        Without ``on_file_problem``: if the file cannot be opened or its gzip stream is
        truncated or corrupt (the records before the damage have been yielded already).
    """
    line_no = records = 0
    problem: tuple[ErrorClass, str] | None = None
    try:
        with _open_binary(path) as handle:
            for raw in handle:
                line_no += 1
                if not raw.strip():
                    continue
                records += 1
                yield line_no, parse_line(raw, path, line_no, resource_type)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        problem = (
            ErrorClass.UNREADABLE_FILE,
            f"{path}: truncated gzip stream after line {line_no}",
        )
        if on_file_problem is None:
            raise IngestError(problem[1]) from exc
    except OSError as exc:
        problem = (ErrorClass.UNREADABLE_FILE, f"{path}: cannot read file ({exc.strerror or exc})")
        if on_file_problem is None:
            raise IngestError(problem[1]) from exc
    if on_file_problem is not None:
        if problem is not None:
            on_file_problem(*problem)
        if records == 0:
            on_file_problem(ErrorClass.EMPTY_FILE, f"{path}: empty file (no resources)")


def parse_line(
    raw: bytes, path: Path, line_no: int, resource_type: str | None
) -> dict[str, Any] | Rejection:
    """Parse one NDJSON line into a JSON object, or say why it is not one."""
    try:
        obj = _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Rejection(ErrorClass.INVALID_JSON, path, line_no, "line is not UTF-8")
    except ValueError as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return Rejection(ErrorClass.INVALID_JSON, path, line_no, f"invalid JSON ({detail})")
    except RecursionError:
        return Rejection(ErrorClass.INVALID_JSON, path, line_no, "invalid JSON (nested too deep)")
    if not isinstance(obj, dict):
        return Rejection(ErrorClass.INVALID_JSON, path, line_no, "line is not a JSON object")
    if resource_type is not None and obj.get("resourceType") != resource_type:
        found = obj.get("resourceType")
        shown = repr(found) if isinstance(found, str) and len(found) <= 64 else "missing"
        return Rejection(
            ErrorClass.WRONG_RESOURCE_TYPE,
            path,
            line_no,
            f"resourceType {shown} in a {resource_type} file",
        )
    return obj


_NAIVE_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?")


def timestamp_diagnosis(resource: dict[str, Any], location: tuple[object, ...]) -> str | None:
    """A clearer reason when FHIR rejected a date-time because it lacks its UTC offset."""
    node: Any = resource
    for step in location:
        in_dict = isinstance(node, dict) and step in node
        in_list = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        if not (in_dict or in_list):
            return None
        node = node[step]
    if isinstance(node, str) and _NAIVE_DATETIME.fullmatch(node):
        where = ".".join(str(s) for s in location)
        return f"{where}: time has no UTC offset (FHIR requires one when a time is given)"
    return None


def validation_reason(error: ValidationError, version: FhirVersion) -> str:
    """One line from a pydantic error: the element path and the message, never the value."""
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "resource"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"fails FHIR {version} validation at {where}: {first['msg']}{more}"


def validate_resource(obj: dict[str, Any], path: Path, line_no: int, version: FhirVersion) -> Any:
    """Validate one resource with its fhir.resources model.

    Returns
    -------
    Any or Rejection
        The model instance, or a :class:`Rejection` of class ``fhir_invalid``.
    """
    resource_type = obj.get("resourceType")
    if resource_type not in RESOURCE_MODULES:
        return Rejection(
            ErrorClass.WRONG_RESOURCE_TYPE, path, line_no, "resourceType not read by fedtwin"
        )
    try:
        return model_class(resource_type, version).model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        naive = timestamp_diagnosis(obj, tuple(first["loc"]))
        if naive is not None:
            return Rejection(ErrorClass.TIMESTAMP, path, line_no, naive)
        return Rejection(ErrorClass.FHIR_INVALID, path, line_no, validation_reason(exc, version))
    except (ValueError, TypeError, RecursionError) as exc:  # a validator that raised directly
        reason = f"fails FHIR {version} validation: {type(exc).__name__}"
        return Rejection(ErrorClass.FHIR_INVALID, path, line_no, reason)


def iter_resources(
    path: Path, resource_type: str, *, fhir_version: VersionChoice = "auto"
) -> Iterator[ParsedResource]:
    """Stream and fully validate the resources of one NDJSON file, stopping at the first error.

    Parameters
    ----------
    path : Path
        ``<Type>.ndjson`` or ``<Type>.ndjson.gz``.
    resource_type : str
        Expected ``resourceType`` of every line (one of :data:`RESOURCE_MODULES`).
    fhir_version : {"auto", "R4B", "R5"}, default "auto"
        Release rule, see :func:`detect_version`.

    Yields
    ------
    ParsedResource
        Each validated resource with its file and line.

    Raises
    ------
    IngestError
        ``<file>:<line>: <reason>`` for invalid JSON, a wrong ``resourceType`` or a resource
        failing FHIR validation; ``<file>: ...`` for an empty, unreadable or truncated file.
    """
    if resource_type not in RESOURCE_MODULES:
        raise IngestError(f"{path}: resource type {resource_type!r} is not read by fedtwin")
    seen = 0
    for line_no, outcome in iter_json_lines(path, resource_type):
        if isinstance(outcome, Rejection):
            raise IngestError(outcome.message)
        version = detect_version(outcome, fhir_version)
        model = validate_resource(outcome, path, line_no, version)
        if isinstance(model, Rejection):
            raise IngestError(model.message)
        seen += 1
        yield ParsedResource(file=path, line=line_no, fhir_version=version, resource=model)
    if seen == 0:
        raise IngestError(f"{path}: empty file (no resources)")


def find_resource_file(folder: Path, resource_type: str) -> Path | None:
    """``<Type>.ndjson`` or ``<Type>.ndjson.gz`` in ``folder``; error if both exist."""
    plain = folder / f"{resource_type}.ndjson"
    packed = folder / f"{resource_type}.ndjson.gz"
    if plain.exists() and packed.exists():
        raise IngestError(f"{folder}: both {plain.name} and {packed.name} exist; keep one")
    if plain.exists():
        return plain
    if packed.exists():
        return packed
    return None
