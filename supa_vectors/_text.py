"""The one rule for what text and JSON values the store can hold, checked before any round trip.

Python strings can hold lone surrogates: JSON's ``"\\ud800"`` decodes to one, and so does a command-line
argument or a file name with bytes that are not UTF-8 (Python decodes them with ``surrogateescape``).
UTF-8 cannot encode them, so Postgres, PostgREST, SQLite checkpoints, sha256 content hashes and every
file the SDK writes would fail on them with a bare ``UnicodeEncodeError`` or a server-side JSON syntax
error that names no record. NUL cannot be stored either: Postgres ``text`` and ``jsonb`` refuse it, and
the server's ``bulk_upsert`` rejects it, so the client rejects it too (never strips it: a stored text
would silently differ from its source and its content hash). Both are invalid input, refused where the
input enters with the field that holds them (:func:`text_problem`, :func:`json_problem`); callers raise
their own typed error (``DocumentError``, ``FilterError``, ``InvalidInputError``) or reject the record.

:func:`printable` is the inverse concern: a file name or a rejected id that holds such text still has to
appear in messages and reports, so it is shown with escapes (``\\xe9`` for a byte, ``\\ud800`` otherwise).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "HugeInteger",
    "json_problem",
    "parse_int",
    "printable",
    "text_problem",
    "unencodable_at",
]

# Nesting beyond this is refused: json.dumps and Python's JSON parser give up near 1,000 levels
# (RecursionError), and filters only reach top-level keys anyway.
MAX_JSON_DEPTH = 256


class HugeInteger:
    """An integer literal in a source file too long for Python to convert (``sys.int_max_str_digits``).

    The migration's JSON reader yields this instead of raising ``ValueError`` mid-file, so the record
    holding it is one rejected record and the records after it still read.
    """

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"HugeInteger(digits={self.digits})"


def parse_int(literal: str) -> int | HugeInteger:
    """``json.JSONDecoder(parse_int=...)``: an int, or :class:`HugeInteger` when it is too long."""
    try:
        return int(literal)
    except ValueError:
        return HugeInteger(len(literal.lstrip("-")))


def unencodable_at(text: str) -> int | None:
    """The index of the first character UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def text_problem(text: str, where: str, *, store: str = "Postgres text") -> str | None:
    """Why ``text`` cannot be stored (NUL, or a lone surrogate), naming ``where``; None if it can."""
    if "\x00" in text:
        return f"{where} contains a NUL character (\\u0000), which {store} cannot store"
    at = unencodable_at(text)
    if at is not None:
        return (
            f"{where} contains {text[at]!r} at character {at}, a lone surrogate that UTF-8 cannot encode "
            "(an unpaired \\ud800-\\udfff escape, or bytes that were not UTF-8)"
        )
    return None


def printable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode written as escapes, for messages, reports and file keys.

    Bytes that were not UTF-8 (a file name, ``surrogateescape``) show as themselves (``\\xe9``), other
    lone surrogates as ``\\ud800``; text without either comes back unchanged.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _int_problem(value: int, where: str) -> str | None:
    if value.bit_length() < 2000:  # < 603 digits: below any limit Python allows (640, or 0 for none)
        return None
    try:
        str(value)
    except ValueError:
        return f"{where} is an integer of more than {sys.get_int_max_str_digits()} digits, too long to send"
    return None


def _storable(value: Any, max_depth: int, depth: int) -> bool:
    """True when :func:`json_problem` would find nothing; builds no paths, so the common case (every
    document's metadata) costs one walk. False sends the caller to the walk that names the problem."""
    kind = type(value)
    if kind is str:
        return "\x00" not in value and (value.isascii() or unencodable_at(value) is None)
    if value is None or kind is bool:
        return True
    if kind is int:
        return bool(value.bit_length() < 2000)
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        return depth <= max_depth and all(
            type(key) is str and _storable(key, max_depth, depth) and _storable(item, max_depth, depth + 1)
            for key, item in value.items()
        )
    if kind is list:
        return depth <= max_depth and all(_storable(item, max_depth, depth + 1) for item in value)
    return False  # subclasses, tuples, other mappings: the full walk decides


def json_problem(value: Any, where: str, *, max_depth: int = MAX_JSON_DEPTH, depth: int = 1) -> str | None:
    """Why jsonb cannot (or should not) hold ``value``: NUL, lone surrogates, NaN, huge integers,
    non-string keys, non-JSON types, nesting deeper than ``max_depth``. None when it can."""
    if _storable(value, max_depth, depth):
        return None
    return _json_problem(value, where, max_depth=max_depth, depth=depth)


def _json_problem(value: Any, where: str, *, max_depth: int, depth: int) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _int_problem(value, where)
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value}, which JSON cannot hold"
    if isinstance(value, str):
        return text_problem(value, where, store="jsonb")
    if isinstance(value, HugeInteger):
        return f"{where} is an integer of {value.digits} digits, too long to read"
    if isinstance(value, list | tuple | Mapping):
        if depth > max_depth:
            return f"metadata is nested deeper than {max_depth} levels (at {where})"
        items = (
            [(f"[{i}]", item) for i, item in enumerate(value)]
            if not isinstance(value, Mapping)
            else list(value.items())
        )
        for key, item in items:
            if isinstance(value, Mapping):
                if not isinstance(key, str):
                    return f"{where} has the key {key!r}; JSON keys are strings"
                problem = text_problem(key, f"a key in {where}", store="jsonb")
                if problem:
                    return problem
                sub = f"{where}.{key}"
            else:
                sub = f"{where}{key}"
            problem = _json_problem(item, sub, max_depth=max_depth, depth=depth + 1)  # key checked above
            if problem:
                return problem
        return None
    return f"{where} holds a {type(value).__name__}, which is not JSON"
