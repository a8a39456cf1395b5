r"""RFC 8785 (JSON Canonicalization Scheme) bytes of an audit event: the Merkle leaf data.

Invariant: :func:`canonical_json` returns exactly what ``rfc8785.dumps`` returns for every value
it accepts (property-tested against the package), only faster on the append path. Strings are
escaped by the standard library's C encoder, whose escaping rules (only ``"``, ``\\`` and
control characters, lower-case ``\\u00xx``) are those of RFC 8785 §3.2.2.2; object keys are
sorted by their UTF-16 code units (§3.2.3); numbers follow ECMAScript's ``Number.toString``
(§3.2.2.3): floats in [1e-4, 1e16) print as Python's shortest repr without a trailing ``.0``,
those in [1e-6, 1e-4) as the same digits in fixed notation, every other float is formatted by
the ``rfc8785`` package itself.
"""

from __future__ import annotations

import json.encoder
import math
from collections.abc import Mapping, Sequence
from typing import Any

import rfc8785
from pydantic import BaseModel

_INT_LIMIT = 2**53 - 1
_encode_string = json.encoder.encode_basestring


class CanonicalizationError(ValueError):
    """A value has no RFC 8785 form (NaN, infinity, huge integer, non-string key, …)."""


def _float(value: float) -> str:
    magnitude = abs(value)
    if 1e-4 <= magnitude < 1e16:
        text = float.__repr__(value)
        return text[:-2] if text.endswith(".0") else text
    if 1e-6 <= magnitude < 1e-4:  # repr says d.ddde-0k; ECMAScript writes 0.0…0ddd
        mantissa, exponent = float.__repr__(magnitude).split("e")
        text = "0." + "0" * (-int(exponent) - 1) + mantissa.replace(".", "")
        return "-" + text if value < 0 else text
    if math.isnan(value) or math.isinf(value):
        raise CanonicalizationError(f"{value} has no JSON form")
    return rfc8785.dumps(value).decode("ascii")


def _utf16_order(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _write_object(value: Mapping[Any, Any], parts: list[str]) -> None:
    keys = list(value)
    try:
        ascii_keys = "".join(keys).isascii()
    except TypeError as error:
        raise CanonicalizationError("object keys must be strings") from error
    keys.sort(key=None if ascii_keys else _utf16_order)
    separator = "{"
    for key in keys:
        parts.append(separator)
        parts.append(_encode_string(key))
        parts.append(":")
        _write(value[key], parts)
        separator = ","
    parts.append("}" if keys else "{}")


def _write(value: Any, parts: list[str]) -> None:
    kind = type(value)
    if kind is str:
        parts.append(_encode_string(value))
    elif kind is dict:
        _write_object(value, parts)
    elif kind is float:
        parts.append(_float(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        if not -_INT_LIMIT <= value <= _INT_LIMIT:
            raise CanonicalizationError(f"{value} exceeds the JSON safe integer range")
        parts.append(str(int(value)))
    elif isinstance(value, str):
        parts.append(_encode_string(value))
    elif isinstance(value, float):
        parts.append(_float(float(value)))
    elif isinstance(value, Mapping):
        _write_object(value, parts)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        separator = "["
        for item in value:
            parts.append(separator)
            _write(item, parts)
            separator = ","
        parts.append("]" if separator == "," else "[]")
    else:
        raise CanonicalizationError(f"unsupported type {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value.

    Raises
    ------
    CanonicalizationError
        If the value (or a part of it) has no canonical JSON form.
    """
    parts: list[str] = []
    _write(value, parts)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as error:
        raise CanonicalizationError("string contains a lone surrogate") from error


def event_bytes(event: BaseModel) -> bytes:
    """The canonical bytes of an event: one log line without its newline, one Merkle leaf."""
    return canonical_json(event.model_dump(mode="json"))
