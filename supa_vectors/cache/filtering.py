"""Metadata filters evaluated in Python, with the server's semantics, for the mirror and invalidation.

The server compiles a filter into jsonb SQL (``compile_field_filter`` in ``*_metadata_filters.sql``);
an offline answer must select exactly the same rows, so this module reproduces the jsonb operators it
uses rather than "what a filter obviously means":

* ``$eq`` on a scalar is containment ``metadata @> {field: value}``: same JSON type and equal value
  (``1`` equals ``1.0``, ``true`` does not equal ``1``); on an object or array it is exact equality.
* ``$ne`` is ``is distinct from``: a missing field matches.
* ``$gt``/``$gte``/``$lt``/``$lte`` only match values of the operand's JSON type.
* ``$in``/``$nin`` are OR-ed scalar ``$eq`` (a missing field matches ``$nin``).
* ``$contains``: the field is an array containing the operand (every element of an array operand),
  with jsonb's deep containment for nested values.
* ``$exists``: the key is present (even with a null value).

The test-suite checks this against the server's compiled SQL on generated metadata and filters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Predicate", "compile_predicate", "json_contains", "json_equal"]

Predicate = Callable[[Mapping[str, Any]], bool]

_MISSING = object()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def json_equal(a: Any, b: Any) -> bool:
    """jsonb ``=``: same type, numbers compared by value, arrays in order, objects by key set."""
    kind = _kind(a)
    if kind != _kind(b):
        return False
    if kind == "array":
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if kind == "object":
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    return bool(a == b)


def json_contains(a: Any, b: Any) -> bool:
    """jsonb ``a @> b`` below the top level (where an array never contains a bare scalar)."""
    kind = _kind(a)
    if kind != _kind(b):
        return False
    if kind == "object":
        return all(key in a and json_contains(a[key], value) for key, value in b.items())
    if kind == "array":
        scalars = [x for x in a if _kind(x) not in ("array", "object")]
        containers = [x for x in a if _kind(x) in ("array", "object")]
        for item in b:
            if _kind(item) in ("array", "object"):
                if not any(json_contains(x, item) for x in containers):
                    return False
            elif not any(json_equal(x, item) for x in scalars):
                return False
        return True
    return json_equal(a, b)


def _compare(op: str, value: Any, operand: Any) -> bool:
    if value is _MISSING or _kind(value) != _kind(operand):
        return False
    if op == "$gt":
        return bool(value > operand)
    if op == "$gte":
        return bool(value >= operand)
    if op == "$lt":
        return bool(value < operand)
    return bool(value <= operand)


def _field_test(field: str, op: str, operand: Any) -> Predicate:
    def get(metadata: Mapping[str, Any]) -> Any:
        return metadata.get(field, _MISSING)

    if op == "$eq":
        return lambda m: (v := get(m)) is not _MISSING and json_equal(v, operand)
    if op == "$ne":
        return lambda m: (v := get(m)) is _MISSING or not json_equal(v, operand)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return lambda m: _compare(op, get(m), operand)
    if op == "$in":
        return lambda m: (v := get(m)) is not _MISSING and any(json_equal(v, x) for x in operand)
    if op == "$nin":
        return lambda m: (v := get(m)) is _MISSING or not any(json_equal(v, x) for x in operand)
    if op == "$contains":
        wanted = operand if isinstance(operand, list) else [operand]
        return lambda m: (v := get(m)) is not _MISSING and json_contains(v, wanted)
    if op == "$exists":
        return lambda m: (field in m) is bool(operand)
    raise ValueError(f"unknown operator {op!r}")  # validate_filter refuses it before we get here


def _all(tests: list[Predicate]) -> Predicate:
    if not tests:
        return lambda m: True
    if len(tests) == 1:
        return tests[0]
    return lambda m: all(test(m) for test in tests)


def _any(alternatives: list[Predicate]) -> Predicate:
    return lambda m: any(alternative(m) for alternative in alternatives)


def _negate(inner: Predicate) -> Predicate:
    return lambda m: not inner(m)


def compile_predicate(filter: Mapping[str, Any] | None) -> Predicate:
    """A function of a document's metadata that is true where the server's filter is true.

    ``filter`` must already have passed :func:`supa_vectors.filters.validate_filter`.
    """
    if filter is None:
        return lambda m: True
    tests: list[Predicate] = []
    for key, value in filter.items():
        if key == "$and":
            tests.append(_all([compile_predicate(item) for item in value]))
        elif key == "$or":
            tests.append(_any([compile_predicate(item) for item in value]))
        elif key == "$not":
            tests.append(_negate(compile_predicate(value)))
        elif isinstance(value, dict) and value and all(k.startswith("$") for k in value):
            tests.extend(_field_test(key, op, operand) for op, operand in value.items())
        else:
            tests.append(_field_test(key, "$eq", value))
    return _all(tests)
