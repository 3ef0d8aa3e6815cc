"""Which backend a store talks to, from a URL or the environment.

``http(s)://`` is a Supabase project (PostgREST, needs a key); ``postgresql://``/``postgres://`` is a
direct database connection. The environment is read in a fixed order so that a deployed app (with
``SUPABASE_URL``) never silently falls back to a developer's local database.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from supa_vectors.errors import ConfigurationError, SupaVectorsError
from supa_vectors.transport.base import AsyncTransport, Transport
from supa_vectors.transport.identity import Identity

__all__ = [
    "ENV_DATABASE_URL",
    "ENV_SUPABASE_KEY",
    "ENV_SUPABASE_URL",
    "ENV_TIMEOUT",
    "Target",
    "async_transport_for",
    "resolve_target",
    "target_from_env",
    "target_from_url",
    "timeout_from_env",
    "transport_for",
]

ENV_SUPABASE_URL = "SUPABASE_URL"
ENV_SUPABASE_KEY = "SUPABASE_KEY"
ENV_DATABASE_URL = "SUPA_VECTORS_DATABASE_URL"
# Seconds the CLI waits for a connection to the backend before calling it down.
ENV_TIMEOUT = "SUPA_VECTORS_TIMEOUT"

Kind = Literal["postgrest", "postgres"]


@dataclass(frozen=True)
class Target:
    """A resolved backend: the kind of transport, its URL and (PostgREST only) the API key."""

    kind: Kind
    url: str
    key: str | None = None

    @property
    def shown_url(self) -> str:
        """The URL without user, password or query: what may be printed or logged."""
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return f"{parts.scheme}://{netloc}{parts.path}"

    def __repr__(self) -> str:
        # Never print a key or a database password.
        return f"Target(kind={self.kind!r}, url='{self.shown_url}')"


def target_from_url(url: str, key: str | None = None) -> Target:
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("the URL is empty")
    url = url.strip()
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        if not key:
            raise ConfigurationError(
                f"a Supabase URL ({scheme}://) needs an API key: pass key=, or set {ENV_SUPABASE_KEY}"
            )
        return Target("postgrest", url, key)
    if scheme in ("postgresql", "postgres"):
        if key:
            raise ConfigurationError(
                "a key is only used with a Supabase http(s):// URL; a postgresql:// URL carries its own "
                "credentials"
            )
        return Target("postgres", url)
    raise ConfigurationError(
        f"unsupported URL scheme {scheme or '(none)'!r}: use https://<project>.supabase.co with a key, "
        "or postgresql://user:password@host:port/database"
    )


def resolve_target(url: str | None, key: str | None = None) -> Target:
    """A command's backend: the URL it was given (``--database-url``), else the environment's."""
    return target_from_url(url, key) if url else target_from_env()


def target_from_env(environ: Mapping[str, str] | None = None) -> Target:
    """``SUPABASE_URL`` + ``SUPABASE_KEY``, else ``SUPA_VECTORS_DATABASE_URL``, else the local stack."""
    env = os.environ if environ is None else environ
    supabase_url = env.get(ENV_SUPABASE_URL, "").strip()
    if supabase_url:
        key = env.get(ENV_SUPABASE_KEY, "").strip()
        if not key:
            raise ConfigurationError(f"{ENV_SUPABASE_URL} is set but {ENV_SUPABASE_KEY} is not")
        return target_from_url(supabase_url, key)
    database_url = env.get(ENV_DATABASE_URL, "").strip()
    if database_url:
        return target_from_url(database_url)
    return target_from_url(_local_stack_url())


def _local_stack_url() -> str:
    hint = (
        f"set {ENV_SUPABASE_URL} and {ENV_SUPABASE_KEY}, or {ENV_DATABASE_URL}, "
        "or start the local stack with `supa-vectors local start`"
    )
    try:
        from supa_vectors.local import LocalStack
    except ImportError as exc:
        raise ConfigurationError(f"no backend configured: {hint}") from exc
    try:
        stack = LocalStack()
        # A stopped stack is an outage like any other: its last URL fails fast, and the store answers
        # from its offline cache. Only a stack never started leaves nothing to try.
        url = stack.url() or stack.last_url()
    except SupaVectorsError as exc:
        raise ConfigurationError(
            f"no backend configured and the local stack is not available ({exc}): {hint}"
        ) from exc
    if not url:
        raise ConfigurationError(f"no backend configured and the local stack was never started: {hint}")
    return str(url)


def timeout_from_env(default: float, environ: Mapping[str, str] | None = None) -> float:
    """``$SUPA_VECTORS_TIMEOUT`` in seconds, else ``default``; anything but a positive number is an error."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_TIMEOUT, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{ENV_TIMEOUT} must be a positive number of seconds, got {text!r}")
    return value


def transport_for(
    target: Target, *, identity: Identity | None = None, connect_timeout: float | None = None
) -> Transport:
    """A transport for ``target``; ``connect_timeout`` (seconds to get a connection to the backend
    before calling it down) defaults to each transport's own; calls themselves keep their timeouts."""
    if target.kind == "postgres":
        from supa_vectors.transport.postgres import PostgresTransport

        if connect_timeout is None:
            return PostgresTransport(target.url, identity=identity)
        return PostgresTransport(target.url, identity=identity, connect_timeout=connect_timeout)
    _no_identity_over_http(identity)
    try:
        import httpx

        from supa_vectors.transport.postgrest import DEFAULT_TIMEOUT, PostgrestTransport
    except ImportError as exc:
        raise ConfigurationError(f"the PostgREST transport is not available: {exc}") from exc
    timeout = DEFAULT_TIMEOUT
    if connect_timeout is not None:
        timeout = httpx.Timeout(DEFAULT_TIMEOUT.read, connect=connect_timeout)
    return PostgrestTransport(url=target.url, key=target.key, timeout=timeout)


def async_transport_for(target: Target, *, identity: Identity | None = None) -> AsyncTransport:
    if target.kind == "postgres":
        from supa_vectors.transport.postgres import AsyncPostgresTransport

        return AsyncPostgresTransport(target.url, identity=identity)
    _no_identity_over_http(identity)
    try:
        from supa_vectors.transport.postgrest import AsyncPostgrestTransport
    except ImportError as exc:
        raise ConfigurationError(f"the PostgREST transport is not available: {exc}") from exc
    return AsyncPostgrestTransport(url=target.url, key=target.key)


def _no_identity_over_http(identity: Identity | None) -> None:
    if identity is not None:
        raise ConfigurationError(
            "identity= applies to postgresql:// URLs; over PostgREST the key (or a user's JWT) decides "
            "who the calls run as"
        )
