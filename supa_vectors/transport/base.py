"""The transport interface: what every transport implements, and what a transport may also say.

Required (:class:`Transport`, :class:`AsyncTransport`): call an RPC by name and get JSON-shaped rows,
say who the calls run as (``identity_fingerprint``, for cache keys), close. The RPC names and
parameter shapes are the contract of ``supabase/migrations``, declared once in
:mod:`supa_vectors._core.rpcs`, which the transports read for an RPC's shape (rows or scalar,
idempotent, where its vectors travel). Parameters arrive as plain Python values, except vectors,
which are ``numpy.ndarray`` (float32) so the Postgres transport can send them in binary and PostgREST
can turn them into JSON arrays. Set-returning RPCs come back as ``list[dict]``, scalar ones as the value.

Optional, each a small protocol below, read only through the functions of this module (a custom
transport may offer none of them, and gets the documented default):

* ``cache_label`` (:func:`cache_label`): which store it talks to, free of secrets;
* ``identity`` (:func:`identity_of`) and ``subject`` (:func:`subject_of`): who the calls run as;
* ``sends_binary_vectors`` (:func:`sends_binary_vectors`): vectors cost 4 bytes a float, not ~21;
* ``rpc_as_session_user`` (:class:`SupportsSessionUser`): call as the connecting role (table owner);
* ``credentials``, ``accepted_credentials``, ``verifies``, ``rpc_with_credentials``
  (:class:`SupportsCredentials`): per-request credentials, as PostgREST has.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

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
from supa_vectors.transport.identity import Identity

__all__ = [
    "AsyncSupportsSessionUser",
    "AsyncTransport",
    "SupportsCredentials",
    "SupportsSessionUser",
    "Transport",
    "cache_label",
    "conninfo_label",
    "error_for_sqlstate",
    "identity_of",
    "sends_binary_vectors",
    "subject_of",
    "url_label",
]


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


@runtime_checkable
class SupportsSessionUser(Protocol):
    """A transport that can also call an RPC as the connecting role, without switching identity.

    Only a direct Postgres connection can: dropping and rebuilding the vector index for a bulk load
    needs the table owner, which no PostgREST role is.
    """

    def rpc_as_session_user(self, name: str, params: Mapping[str, Any]) -> Any: ...


@runtime_checkable
class AsyncSupportsSessionUser(Protocol):
    """The asyncio twin of :class:`SupportsSessionUser`."""

    async def rpc_as_session_user(self, name: str, params: Mapping[str, Any]) -> Any: ...


@runtime_checkable
class SupportsCredentials(Protocol):
    """A transport that sends per-request credentials (PostgREST: the ``Authorization`` header).

    The offline layer trusts stored data only for credentials the backend accepted (or ``verifies``
    can check), and replays a queued write with the credentials that queued it
    (``rpc_with_credentials``, sync or async like ``rpc``).
    """

    @property
    def credentials(self) -> str | None: ...

    @property
    def accepted_credentials(self) -> str | None: ...

    def verifies(self, credentials: str, now: float) -> bool: ...


def url_label(url: str) -> str:
    """scheme://host:port/path of a URL, without user, password or query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"


def conninfo_label(conninfo: str) -> str:
    """Where a Postgres connection string points (URL or keyword/value DSN), without secrets."""
    if "://" in conninfo:
        return "postgres:" + url_label(conninfo)
    # A keyword/value DSN ("host=... dbname=... password=..."): keep only where it points.
    fields = dict(item.split("=", 1) for item in conninfo.split() if "=" in item)
    return "postgres:{}:{}/{}".format(
        fields.get("host", ""), fields.get("port", ""), fields.get("dbname", "")
    )


def cache_label(transport: object) -> str:
    """Which store a transport talks to, as a label free of secrets.

    ``cache_namespace`` names a logical store (a custom transport, or two stores behind one URL);
    else the transport's own ``cache_label``; else its class.
    """
    namespace = getattr(transport, "cache_namespace", None)
    if isinstance(namespace, str) and namespace:
        return "custom:" + namespace
    label = getattr(transport, "cache_label", None)
    if isinstance(label, str) and label:
        return label
    kind = type(transport)
    return f"transport:{kind.__module__}.{kind.__qualname__}"


def identity_of(transport: object) -> Identity | None:
    """The identity a transport acts as, when it says (the Postgres transports do)."""
    identity = getattr(transport, "identity", None)
    return identity if isinstance(identity, Identity) else None


def subject_of(transport: object) -> str | None:
    """The user id (JWT ``sub``, lower case) the calls run as, or None (service role, anon, unknown)."""
    subject = getattr(transport, "subject", None)
    if subject is None and (identity := identity_of(transport)) is not None:
        subject = identity.subject
    return subject.lower() if isinstance(subject, str) and subject else None


def sends_binary_vectors(transport: object) -> bool:
    """Whether the transport sends vectors in binary (``sends_binary_vectors = True``)."""
    return getattr(transport, "sends_binary_vectors", False) is True


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
