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


def _marker_of(value: object) -> _Marker | None:
    kind = type(value)
    if kind is str:
        return _STR
    if kind is int or kind is float:
        return _NUM
    return None


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


def _spec_tree(paths: Sequence[Path_]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for index, path in enumerate(paths):
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if isinstance(node, int):
                raise ValueError("a variable path is a prefix of another")
        node[path[-1]] = index
    return tree


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
    __slots__ = ("masked", "numeric_paths", "plan")

    def __init__(self, masked: dict[str, Any], plan: object) -> None:
        self.masked = masked
        self.plan = plan
        self.numeric_paths: list[tuple[tuple[object, ...], type]] = []
        found: list[tuple[object, ...]] = []
        _numeric_leaves(masked, (), found)
        self.numeric_paths = [(p, type(_at(masked, p))) for p in found]


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
        self._paths = tuple(variable_paths)
        self._tree = _spec_tree(self._paths)
        self._adapters = [_field_adapter(resource_type, version, p) for p in self._paths]
        self._memo: list[set[tuple[type, object]] | None] = [
            set() if p in memo_paths else None for p in self._paths
        ]
        self._templates: list[_Template] = []
        self.hits = 0

    def _mask(
        self, source: dict[str, Any], tree: dict[str, Any], leaves: list[tuple[int, object]]
    ) -> dict[str, Any] | None:
        masked = dict(source)
        for key, sub in tree.items():
            if key not in source:
                continue
            value = source[key]
            if type(sub) is int:
                marker = _marker_of(value)
                if marker is None:
                    return None
                masked[key] = marker
                leaves.append((sub, value))
            else:
                if type(value) is not dict:
                    return None
                inner = self._mask(value, sub, leaves)
                if inner is None:
                    return None
                masked[key] = inner
        return masked

    def _leaf_ok(self, index: int, value: object) -> bool:
        memo = self._memo[index]
        key = (type(value), value)
        if memo is not None and key in memo:
            return True
        try:
            checked = self._adapters[index].validate_python(value)
        except (ValidationError, ValueError, TypeError):
            return False
        if checked is None:
            return False
        if memo is not None:
            if len(memo) >= MAX_MEMO:
                memo.clear()
            memo.add(key)
        return True

    def match(self, resource: dict[str, Any]) -> tuple[bool, object]:
        """Whether ``resource`` is accepted without full validation, and its template's plan.

        Returns
        -------
        tuple[bool, object]
            ``(True, plan)`` when a template matches and every variable leaf passes its
            validator; ``(False, None)`` otherwise (validate fully).
        """
        leaves: list[tuple[int, object]] = []
        masked = self._mask(resource, self._tree, leaves)
        if masked is None:
            return False, None
        for position, template in enumerate(self._templates):
            if masked != template.masked:
                continue
            for path, kind in template.numeric_paths:
                if type(_at(masked, path)) is not kind:
                    return False, None
            for index, value in leaves:
                if not self._leaf_ok(index, value):
                    return False, None
            if position:
                self._templates.insert(0, self._templates.pop(position))
            self.hits += 1
            return True, template.plan
        return False, None

    def learn(self, resource: dict[str, Any], plan: object) -> None:
        """Remember the shape of a resource that fhir.resources has just accepted."""
        masked = self._mask(resource, self._tree, [])
        if masked is None:
            return
        self._templates.insert(0, _Template(masked, plan))
        del self._templates[MAX_TEMPLATES:]
