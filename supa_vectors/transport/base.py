"""The one small interface every transport implements: call an RPC by name, get JSON-shaped rows.

The RPC names and parameter shapes are the contract defined by ``supabase/migrations``; the
transports only move them. Parameters arrive as plain Python values, except vectors, which are
``numpy.ndarray`` (float32) so the Postgres transport can send them in binary and PostgREST can
turn them into JSON arrays. Set-returning RPCs come back as ``list[dict]``; scalar RPCs
(``count_documents``, ``store_stats``, ``store_settings``) as the scalar.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from supa_vectors.errors import (
    AuthError,
    BackendError,
    BackendUnavailableError,
    DocumentError,
    FilterError,
    InvalidInputError,
    NotFoundError,
    QueryTimeoutError,
)

__all__ = [
    "SCALAR_RPCS",
    "AsyncTransport",
    "Transport",
    "error_for_sqlstate",
]

# RPCs that return one value rather than a set of rows.
SCALAR_RPCS = frozenset(
    {
        "count_documents",
        "store_stats",
        "store_settings",
        "begin_bulk_load",
        "finish_bulk_load",
        "restore_vector_index",
    }
)


@runtime_checkable
class Transport(Protocol):
    """Blocking transport."""

    @property
    def identity_fingerprint(self) -> str:
        """Stable, non-reversible label of who the calls run as (for cache keys)."""
        ...

    def rpc(self, name: str, params: Mapping[str, Any]) -> Any: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncTransport(Protocol):
    """Asyncio transport; mirrors :class:`Transport`."""

    @property
    def identity_fingerprint(self) -> str: ...

    async def rpc(self, name: str, params: Mapping[str, Any]) -> Any: ...

    async def aclose(self) -> None: ...


def error_for_sqlstate(
    code: str | None, message: str, *, detail: str | None = None
) -> BackendError | InvalidInputError:
    """Map a Postgres SQLSTATE (PostgREST passes it through as ``code``) to our exception tree.

    Both transports use this, so the same database failure is the same exception either way.
    """
    text = message if not detail else f"{message} ({detail})"
    if code is None:
        return BackendError(text)
    if code == "57014":
        return QueryTimeoutError(text, code=code)
    if code in {"42501", "28000", "28P01"}:
        return AuthError(text, code=code)
    if code in {"42883", "42P01", "3F000"}:
        return NotFoundError(text, code=code)
    if code.startswith("08") or code in {"57P01", "57P02", "57P03", "53300"}:
        return BackendUnavailableError(text, code=code)
    # 54000/54001: an input too large or too deeply nested for Postgres (a filter nested ~15,000 levels
    # deep fails in the JSON parser, before any function can answer 22023).
    if code.startswith("22") or code.startswith("23") or code in {"54000", "54001"}:
        if message.startswith("invalid filter:"):
            return FilterError(message)
        if message.startswith("document ") and detail:
            # bulk_upsert names the record in DETAIL as {"ordinal": n, "external_id": "..."} (1-based).
            try:
                where = json.loads(detail)
                return DocumentError(
                    message, index=int(where["ordinal"]) - 1, document_id=where.get("external_id")
                )
            except (ValueError, KeyError, TypeError):
                return DocumentError(text)
        return InvalidInputError(text)
    return BackendError(text, code=code)
