"""Client-side check of metadata filters, with exactly the grammar the server compiles.

The server (``supa_vectors_internal.compile_filter`` in ``*_metadata_filters.sql``) is the authority; this
module repeats its rules so a bad filter fails before any round trip, with the same wording, and so the
filter that reaches the server is always plain JSON. Grammar::

    filter := { clause, ... }                          clauses are AND-ed; {} and None match everything
    clause := "field": value                           shorthand for {"$eq": value}
           |  "field": { op: operand, ... }             operators on one field are AND-ed
           |  "$and": [filter, ...] | "$or": [filter, ...] | "$not": filter
    op     := $eq $ne $gt $gte $lt $lte $in $nin $contains $exists

A JSON ``null`` in the place of a filter (top level, inside ``$and``/``$or``, under ``$not``) means "no
condition", as on the server. Nesting deeper than 10 levels, empty or over-long field names, unknown
operators and mistyped operands are refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeAlias

from supa_vectors.errors import FilterError

__all__ = [
    "COMPARISON_OPERATORS",
    "FIELD_OPERATORS",
    "LOGICAL_OPERATORS",
    "MAX_DEPTH",
    "MAX_FIELD_LENGTH",
    "MAX_IN_VALUES",
    "Filter",
    "validate_filter",
]

Filter: TypeAlias = Mapping[str, Any]

FIELD_OPERATORS = frozenset(
    {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains", "$exists"}
)
COMPARISON_OPERATORS = frozenset({"$gt", "$gte", "$lt", "$lte"})
LOGICAL_OPERATORS = frozenset({"$and", "$or", "$not"})
MAX_DEPTH = 10
MAX_FIELD_LENGTH = 256
MAX_IN_VALUES = 1000


def validate_filter(filter: Filter | None) -> dict[str, Any]:
    """Check ``filter`` and return it as plain JSON data (dicts and lists), ready to send.

    Raises :class:`FilterError` naming the offending clause.
    """
    if filter is None:
        return {}
    plain = _to_json(filter, "filter")
    _check_filter(plain, 0)
    assert isinstance(plain, dict)  # _check_filter refused everything else
    return plain


def json_type(value: Any) -> str:
    """The name ``jsonb_typeof`` gives a value, so messages match the server's."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def comparisons(filter: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """Every ``$gt``/``$gte``/``$lt``/``$lte`` clause of a checked filter, as ``(field, op, operand)``.

    Such a clause matches only values of its operand's JSON type (as jsonb orders them: a number never
    compares with a string), which is why a filter with the wrong operand type finds nothing; the CLI
    names these clauses when a filtered search comes back empty.
    """
    found: list[tuple[str, str, Any]] = []
    for key, value in filter.items():
        if key in ("$and", "$or"):
            for item in value if isinstance(value, list) else []:
                found += comparisons(item) if isinstance(item, Mapping) else []
        elif key == "$not":
            found += comparisons(value) if isinstance(value, Mapping) else []
        elif isinstance(value, Mapping):
            found += [(key, op, operand) for op, operand in value.items() if op in COMPARISON_OPERATORS]
    return found


def _to_json(value: Any, where: str) -> Any:
    """Copy ``value`` into JSON data, refusing what JSON or jsonb cannot hold (NaN, NUL, odd types)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"invalid filter: {where} is {value}; JSON numbers are finite")
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise FilterError(f"invalid filter: {where} contains a NUL character, which jsonb cannot store")
        return value
    if isinstance(value, list | tuple):
        return [_to_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise FilterError(f"invalid filter: key {key!r} in {where} is not a string")
            if "\x00" in key:
                raise FilterError(f"invalid filter: a key in {where} contains a NUL character")
            out[key] = _to_json(item, f"{where}.{key}")
        return out
    raise FilterError(f"invalid filter: {where} is a {type(value).__name__}, which is not JSON")


def _check_filter(filter: Any, depth: int) -> None:
    # Same order of checks as compile_filter(), so both sides report the same first problem.
    if filter is None:
        return
    if not isinstance(filter, dict):
        raise FilterError(f"invalid filter: a filter is a JSON object, got {json_type(filter)}")
    if depth > MAX_DEPTH:
        raise FilterError(f"invalid filter: nested deeper than {MAX_DEPTH} levels")
    for key, value in filter.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"invalid filter: {key} needs a non-empty array of filters")
            for item in value:
                _check_filter(item, depth + 1)
        elif key == "$not":
            _check_filter(value, depth + 1)
        elif key.startswith("$"):
            raise FilterError(
                f'invalid filter: unknown logical operator "{key}"; use $and, $or or $not, '
                "or a metadata field name"
            )
        elif key == "" or len(key) > MAX_FIELD_LENGTH:
            raise FilterError(f"invalid filter: a field name must have 1 to {MAX_FIELD_LENGTH} characters")
        elif isinstance(value, dict) and any(k.startswith("$") for k in value):
            if any(not k.startswith("$") for k in value):
                raise FilterError(f'invalid filter: the condition on "{key}" mixes operators and plain keys')
            for op, operand in value.items():
                _check_operator(key, op, operand)
        # else: a plain value, shorthand for $eq, which takes anything


def _check_operator(field: str, op: str, operand: Any) -> None:
    kind = json_type(operand)
    if op in ("$eq", "$ne", "$contains"):
        return
    if op in COMPARISON_OPERATORS:
        if kind not in ("number", "string"):
            raise FilterError(f'invalid filter: {op} on "{field}" needs a number or a string, got {kind}')
        return
    if op in ("$in", "$nin"):
        if kind != "array" or not operand:
            raise FilterError(f'invalid filter: {op} on "{field}" needs a non-empty array')
        if len(operand) > MAX_IN_VALUES:
            raise FilterError(
                f'invalid filter: {op} on "{field}" has {len(operand)} values; the limit is {MAX_IN_VALUES}'
            )
        if any(isinstance(item, dict | list) for item in operand):
            raise FilterError(f'invalid filter: {op} on "{field}" takes scalar values only')
        return
    if op == "$exists":
        if kind != "boolean":
            raise FilterError(f'invalid filter: $exists on "{field}" needs true or false, got {kind}')
        return
    raise FilterError(
        f'invalid filter: unknown operator "{op}" on "{field}"; '
        "use one of $eq $ne $gt $gte $lt $lte $in $nin $contains $exists"
    )
