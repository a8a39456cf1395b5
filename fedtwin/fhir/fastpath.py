"""Validated-shape cache: full FHIR validation once per shape, exact leaf checks after that.

A generated or device export holds millions of resources that differ only in a few primitive
leaves (id, subject, time, value). Validating each with its fhir.resources model costs ~200 µs;
this cache makes the same decision in a few µs.

Invariant (the reason it is exact): :meth:`ShapeCache.accepts` returns ``True`` only for a
resource that equals, outside the declared *variable paths*, a resource that fhir.resources
already accepted (same keys at every level, equal values, and the same JSON type for every
number or boolean), whose variable leaves are present exactly where the template has them and
have the template's JSON type (string or number, never null), and whose every variable leaf
passes the *same* pydantic validator that the model applies to that element. The model-level
validators of fhir.resources (``reject_null_complex_elements``, required-primitive and
choice-type checks) depend only on which elements are present, which the shape fixes. So the
full model would accept the resource too. Anything else returns ``False`` and the caller
validates it fully (and may :meth:`learn` its shape). ``tests/fhir`` checks the equivalence
with hypothesis.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from fedtwin.fhir.ndjson import FhirVersion, model_class

Path_ = tuple[str, ...]

#: Templates kept per cache; the least recently matched is evicted beyond this.
MAX_TEMPLATES = 64
#: Accepted leaf values remembered per path before the memo is cleared.
MAX_MEMO = 200_000


class _Marker:
    """Stands for a variable leaf of one JSON type inside a template."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


_STR = _Marker("string")
_NUM = _Marker("number")


_MARKERS: dict[type, _Marker] = {str: _STR, int: _NUM, float: _NUM}


def _field_adapter(resource_type: str, version: FhirVersion, path: Path_) -> TypeAdapter[Any]:
    """The pydantic validator fhir.resources applies to the primitive element at ``path``."""
    model: Any = model_class(resource_type, version)
    for depth, key in enumerate(path):
        fields = {(info.alias or name): info for name, info in model.model_fields.items()}
        info = fields[key]
        if depth == len(path) - 1:
            return TypeAdapter(info.annotation)
        complex_types = [
            arg for arg in typing.get_args(info.annotation) if hasattr(arg, "get_model_klass")
        ]
        if not complex_types and hasattr(info.annotation, "get_model_klass"):
            complex_types = [info.annotation]
        if len(complex_types) != 1:
            raise ValueError(f"{resource_type}.{'.'.join(path)} is not a single complex path")
        model = complex_types[0].get_model_klass()
    raise ValueError("empty path")


def _numeric_leaves(
    node: object, prefix: tuple[object, ...], out: list[tuple[object, ...]]
) -> None:
    """Paths of fixed number/bool leaves (``1 == 1.0 == True`` in Python, not in FHIR)."""
    if isinstance(node, dict):
        for key, value in node.items():
            _numeric_leaves(value, (*prefix, key), out)
    elif isinstance(node, list):
        for position, value in enumerate(node):
            _numeric_leaves(value, (*prefix, position), out)
    elif type(node) in (bool, int, float):
        out.append(prefix)


def _at(node: Any, path: tuple[object, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


class _Template:
    """One validated shape: where its variable leaves are, and the masked resource."""

    __slots__ = ("containers", "leaves", "masked", "numeric_paths", "plan")

    def __init__(
        self, resource: dict[str, Any], paths: Sequence[tuple[int, Path_]], plan: object
    ) -> None:
        present: list[tuple[int, Path_, _Marker]] = []
        for index, path in paths:
            try:
                value = _at(resource, path)
            except (KeyError, TypeError):
                continue
            marker = _MARKERS.get(type(value))
            parent = _at(resource, path[:-1])
            if marker is None or not isinstance(parent, dict):
                raise _Uncacheable
            present.append((index, path, marker))
        # Dicts to copy (parents before children) and the leaves, by container position.
        containers: list[Path_] = [()]
        for _, path, _ in present:
            for depth in range(1, len(path)):
                if path[:depth] not in containers:
                    containers.append(path[:depth])
        self.containers = [(containers.index(c[:-1]), c[-1]) for c in containers[1:]]
        self.leaves = [
            (containers.index(path[:-1]), path[-1], marker, index)
            for index, path, marker in present
        ]
        masked = self.mask(resource)
        if masked is None:
            raise _Uncacheable
        self.masked = masked[0]
        self.plan = plan
        found: list[tuple[object, ...]] = []
        _numeric_leaves(self.masked, (), found)
        self.numeric_paths = [(p, type(_at(self.masked, p))) for p in found]

    def mask(
        self, source: dict[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[int, object]]] | None:
        """A copy of ``source`` with this shape's variable leaves replaced by markers."""
        sources = [source]
        copies = [source.copy()]
        for parent, key in self.containers:
            child = sources[parent].get(key)
            if type(child) is not dict:
                return None
            sources.append(child)
            copy = child.copy()
            copies[parent][key] = copy
            copies.append(copy)
        values: list[tuple[int, object]] = []
        for container, key, marker, index in self.leaves:
            holder = sources[container]
            if key not in holder:
                return None
            value = holder[key]
            if _MARKERS.get(type(value)) is not marker:
                return None
            copies[container][key] = marker
            values.append((index, value))
        return copies[0], values


class _Uncacheable(Exception):
    """A resource whose variable leaves are not plain strings/numbers in plain objects."""


class ShapeCache:
    """Templates of fully validated resources of one type and FHIR release.

    Parameters
    ----------
    resource_type : str
        ``Observation``, ``MedicationAdministration`` …
    version : FhirVersion
        Release whose validators are applied to the variable leaves.
    variable_paths : Sequence[tuple[str, ...]]
        Paths (through single complex elements, no lists) of primitive leaves that may differ
        between resources of one shape.
    memo_paths : Sequence[tuple[str, ...]]
        Variable paths whose accepted values are worth remembering (they repeat: subject,
        time, value); ids are unique and are always checked.
    """

    def __init__(
        self,
        resource_type: str,
        version: FhirVersion,
        variable_paths: Sequence[Path_],
        memo_paths: Sequence[Path_] = (),
    ) -> None:
        self.resource_type = resource_type
        self.version = version
        self._paths = tuple(enumerate(variable_paths))
        for _, path in self._paths:
            if any(path[: len(other)] == other for _, other in self._paths if other != path):
                raise ValueError("a variable path is a prefix of another")
        self._adapters = [_field_adapter(resource_type, version, p) for _, p in self._paths]
        self._memo: list[set[tuple[type, object]] | None] = [
            set() if p in memo_paths else None for _, p in self._paths
        ]
        self._templates: list[_Template] = []
        self.hits = 0

    def _leaf_ok(self, index: int, value: object) -> bool:
        memo = self._memo[index]
        try:
            checked = self._adapters[index].validate_python(value)
        except (ValidationError, ValueError, TypeError):
            return False
        if checked is None:
            return False
        if memo is not None:
            if len(memo) >= MAX_MEMO:
                memo.clear()
            memo.add((type(value), value))
        return True

    def match(self, resource: dict[str, Any]) -> tuple[bool, object]:
        """Whether ``resource`` is accepted without full validation, and its template's plan.

        Returns
        -------
        tuple[bool, object]
            ``(True, plan)`` when a template matches and every variable leaf passes its
            validator; ``(False, None)`` otherwise (validate fully).
        """
        for position, template in enumerate(self._templates):
            masked = template.mask(resource)
            if masked is None or masked[0] != template.masked:
                continue
            for path, kind in template.numeric_paths:
                if type(_at(masked[0], path)) is not kind:
                    return False, None
            memos = self._memo
            for index, value in masked[1]:
                memo = memos[index]
                if (memo is None or (type(value), value) not in memo) and not self._leaf_ok(
                    index, value
                ):
                    return False, None
            if position:
                self._templates.insert(0, self._templates.pop(position))
            self.hits += 1
            return True, template.plan
        return False, None

    def learn(self, resource: dict[str, Any], plan: object) -> None:
        """Remember the shape of a resource that fhir.resources has just accepted."""
        try:
            template = _Template(resource, self._paths, plan)
        except _Uncacheable:
            return
        self._templates.insert(0, template)
        del self._templates[MAX_TEMPLATES:]
