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

Before the grammar, the whole filter is measured against :class:`FilterLimits` (the store's
``max_filter_*`` settings, checked by ``check_filter_bounds`` in ``*_filter_bounds.sql``): the bytes of
jsonb's text form, the JSON nesting depth and the number of JSON values. The walk that measures is
iterative, so a filter nested 100,000 levels deep is refused with :class:`FilterError`, not
``RecursionError``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeAlias

from supa_vectors._text import text_problem
from supa_vectors.errors import FilterError

__all__ = [
    "COMPARISON_OPERATORS",
    "DEFAULT_FILTER_LIMITS",
    "MAX_DEPTH",
    "MAX_FIELD_LENGTH",
    "MAX_IN_VALUES",
    "Filter",
    "FilterLimits",
    "validate_filter",
]

Filter: TypeAlias = Mapping[str, Any]

COMPARISON_OPERATORS = frozenset({"$gt", "$gte", "$lt", "$lte"})
MAX_DEPTH = 10
MAX_FIELD_LENGTH = 256
MAX_IN_VALUES = 1000


@dataclass(frozen=True)
class FilterLimits:
    """Bounds on a whole filter: the store's ``max_filter_bytes``, ``max_filter_json_depth`` and
    ``max_filter_values`` settings (``metadata_global``); the defaults are what the migration seeds.

    They keep a filter's compiled SQL small enough that Postgres parses and plans it within moments
    (docs/decisions/0011-filter-bounds.md), whatever the statement timeout.
    """

    max_bytes: int = 262_144  # bytes of the filter's jsonb text form
    max_json_depth: int = 64  # levels of JSON nesting below the filter itself
    max_values: int = 5000  # JSON values (objects, arrays, scalars), the filter included

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> FilterLimits:
        """The limits in a ``store_settings()`` reply; a store migrated before they existed has none."""
        return cls(
            max_bytes=int(settings.get("max_filter_bytes", cls.max_bytes)),
            max_json_depth=int(settings.get("max_filter_json_depth", cls.max_json_depth)),
            max_values=int(settings.get("max_filter_values", cls.max_values)),
        )


DEFAULT_FILTER_LIMITS = FilterLimits()


def validate_filter(
    filter: Filter | None, *, limits: FilterLimits | None = DEFAULT_FILTER_LIMITS
) -> dict[str, Any]:
    """Check ``filter`` and return it as plain JSON data (dicts and lists), ready to send.

    ``limits`` are the store's (``store.settings().filter_limits``); ``None`` checks the grammar only,
    for a caller that checks the bounds later, once it knows the store's limits. Raises
    :class:`FilterError` naming the offending clause or the exceeded limit.
    """
    if filter is None:
        return {}
    plain, size = _to_json(filter)
    if limits is not None:
        _check_bounds(size, limits)
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


@dataclass
class _Size:
    """What the server's bounds measure: bytes of jsonb's text form, deepest level, values."""

    bytes: int = 0
    depth: int = 0
    values: int = 0


# A place in the filter: its last step and the place it is in ("filter" has none).
_Place: TypeAlias = tuple[str, "_Place | None"]


def _to_json(value: Any) -> tuple[Any, _Size]:
    """Copy ``value`` into JSON data, refusing what JSON or jsonb cannot hold (NaN, NUL, lone
    surrogates, huge integers, odd types), and measure it as the server will.

    Iterative (an explicit stack, children in document order), so no nesting exhausts Python's stack
    and the first problem reported is the first in the document. A value's place ("filter.a[2]") is
    kept as a chain and spelled out only for an error, so a deep filter costs linear time.
    """
    size = _Size()
    root: list[Any] = [None]
    # (value, its place, its level, the copy's container and slot, whether slot is a key to check)
    stack: list[tuple[Any, _Place, int, Any, Any, bool]] = [(value, ("filter", None), 0, root, 0, False)]
    while stack:
        item, place, level, parent, slot, is_key = stack.pop()
        if is_key:
            assert place[1] is not None
            if not isinstance(slot, str):
                raise FilterError(f"invalid filter: key {slot!r} in {_spell(place[1])} is not a string")
            size.bytes += _string_bytes(slot, place[1], key=True) + 2  # ": "
        size.values += 1
        size.depth = max(size.depth, level)
        if isinstance(item, list | tuple):
            copy: Any = [None] * len(item)
            size.bytes += 2 + 2 * max(len(item) - 1, 0)  # "[]" and ", "
            stack.extend(
                (child, (f"[{i}]", place), level + 1, copy, i, False)
                for i, child in reversed(list(enumerate(item)))
            )
        elif isinstance(item, Mapping):
            copy = {}
            size.bytes += 2 + 2 * max(len(item) - 1, 0)  # "{}" and ", "
            stack.extend(
                (child, (f".{key}", place), level + 1, copy, key, True)
                for key, child in reversed(list(item.items()))
            )
        else:
            copy = item
            size.bytes += _scalar_bytes(item, place)
        parent[slot] = copy
    return root[0], size


def _spell(place: _Place) -> str:
    steps: list[str] = []
    at: _Place | None = place
    while at is not None:
        steps.append(at[0])
        at = at[1]
    return "".join(reversed(steps))


def _string_bytes(text: str, place: _Place, *, key: bool = False) -> int:
    """Bytes of ``text`` as jsonb prints it: quoted, escaped like json.dumps(ensure_ascii=False), UTF-8.

    The place is spelled out only for an error: spelling it walks the whole chain, which for every
    string of a deep filter would cost quadratic time."""
    if "\x00" not in text:
        with contextlib.suppress(UnicodeEncodeError):
            return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))
    where = f"a key in {_spell(place)}" if key else _spell(place)
    raise FilterError(f"invalid filter: {text_problem(text, where, store='jsonb')}")


def _scalar_bytes(value: Any, place: _Place) -> int:
    if value is None or value is True:
        return 4  # null, true
    if value is False:
        return 5
    if isinstance(value, int):
        try:
            return len(int.__repr__(value))
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            where = _spell(place)
            raise FilterError(f"invalid filter: {where} has too many digits to send as JSON") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"invalid filter: {_spell(place)} is {value}; JSON numbers are finite")
        return len(_numeric_text(value))
    if isinstance(value, str):
        return _string_bytes(value, place)
    raise FilterError(f"invalid filter: {_spell(place)} is a {type(value).__name__}, which is not JSON")


def _numeric_text(value: float) -> str:
    """How jsonb prints the float json.dumps sends (repr): numeric keeps the digits after the point
    and expands the exponent (1e+16 -> 10000000000000000, 1.5e-07 -> 0.00000015); it has no -0."""
    text = format(Decimal(float.__repr__(value)), "f")
    return text.removeprefix("-") if value == 0 else text


def _check_bounds(size: _Size, limits: FilterLimits) -> None:
    # Same order and wording as check_filter_bounds() on the server.
    if size.bytes > limits.max_bytes:
        raise FilterError(
            f"invalid filter: the filter has {size.bytes} bytes of JSON; the limit is {limits.max_bytes}"
        )
    if size.depth > limits.max_json_depth:
        raise FilterError(
            f"invalid filter: the filter nests deeper than {limits.max_json_depth} levels of JSON; "
            f"the limit is {limits.max_json_depth}"
        )
    if size.values > limits.max_values:
        raise FilterError(
            f"invalid filter: the filter has {size.values} JSON values; the limit is {limits.max_values}"
        )


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
