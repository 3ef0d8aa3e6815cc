"""The direct Postgres transport: RPCs over a psycopg connection pool, as PostgREST would run them.

Each call is one implicit transaction that first sets the role and JWT claims exactly as PostgREST does
(:data:`~supa_vectors.transport.identity.SET_IDENTITY_SQL`), so Row Level Security and grants behave the
same whichever transport a store uses. Both statements go out in pipeline mode, behind one Sync: one
network round trip per call, and the transaction-local settings cannot outlive the call.

Vectors travel in pgvector's binary format (a 384-dim vector is 1.5 kB instead of ~8 kB of JSON text),
both ways; ``bulk_upsert`` gets its vectors as one binary ``vector[]`` parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from uuid import UUID

import numpy as np
import numpy.typing as npt
import psycopg
import psycopg_pool
from pgvector.psycopg.vector import register_vector_info
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader, PyFormat
from psycopg.pq import Format
from psycopg.rows import DictRow, dict_row
from psycopg.types import TypeInfo
from psycopg.types.json import Json, Jsonb

from supa_vectors._core.rpcs import rpc_named
from supa_vectors.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidInputError,
    SupaVectorsError,
)
from supa_vectors.transport.base import conninfo_label, error_for_sqlstate
from supa_vectors.transport.identity import SET_IDENTITY_SQL, Identity

__all__ = ["AsyncPostgresTransport", "PostgresTransport"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
# Parameters whose SQL type is fixed by the contract: bulk_upsert.documents is `json` (so a NUL inside
# a record can be reported per record), every filter is `jsonb`; there is no implicit cast between them.
_JSON_PARAMS = frozenset({"documents"})
_JSONB_PARAMS = frozenset({"filter"})


class _VectorBinaryLoader(Loader):
    """pgvector binary -> float32 ndarray (pgvector's own loader returns its ``Vector`` class)."""

    format = Format.BINARY

    def load(self, data: Buffer) -> npt.NDArray[np.float32]:
        view = memoryview(data)
        dim = int.from_bytes(view[:2], "big")
        return np.frombuffer(view, dtype=">f4", count=dim, offset=4).astype(np.float32)


class _VectorTextLoader(Loader):
    format = Format.TEXT

    def load(self, data: Buffer) -> npt.NDArray[np.float32]:
        text = bytes(data).decode("ascii").strip("[]")
        return np.array(text.split(",") if text else [], dtype=np.float32)


def _register_vector(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], info: TypeInfo | None
) -> None:
    if info is None:
        # Migrations not applied: leave the connection usable, so the RPC call reports "function does
        # not exist" (NotFoundError) instead of the pool failing to connect at all.
        return
    register_vector_info(conn, info)
    conn.adapters.register_loader(info.oid, _VectorTextLoader)
    conn.adapters.register_loader(info.oid, _VectorBinaryLoader)


def _configure(conn: psycopg.Connection[Any]) -> None:
    _register_vector(conn, TypeInfo.fetch(conn, "extensions.vector"))


async def _aconfigure(conn: psycopg.AsyncConnection[Any]) -> None:
    _register_vector(conn, await TypeInfo.fetch(conn, "extensions.vector"))


def _is_vector(value: Any) -> bool:
    return isinstance(value, np.ndarray)


def _adapt(name: str, value: Any) -> tuple[Any, PyFormat]:
    """Wrap a parameter for psycopg and choose its format (vectors binary, the rest automatic)."""
    if name in _JSON_PARAMS:
        return Json(value), PyFormat.AUTO
    if name in _JSONB_PARAMS or isinstance(value, Mapping):
        return Jsonb(value), PyFormat.AUTO
    if _is_vector(value):
        return value, PyFormat.BINARY
    if isinstance(value, list | tuple) and any(_is_vector(item) for item in value):
        return list(value), PyFormat.BINARY
    return value, PyFormat.AUTO


def _call(name: str, params: Mapping[str, Any]) -> tuple[sql.Composed, list[Any]]:
    """``select * from public.<name>(arg => %s, ...)``; named arguments leave the rest at their defaults."""
    for identifier in (name, *params):
        if not _NAME.match(identifier):
            raise InvalidInputError(f"not an RPC or parameter name: {identifier!r}")
    arguments = []
    values = []
    for key, value in params.items():
        adapted, fmt = _adapt(key, value)
        arguments.append(sql.SQL("{} => {}").format(sql.Identifier(key), sql.Placeholder(format=fmt)))
        values.append(adapted)
    query = sql.SQL("select * from public.{}({})").format(sql.Identifier(name), sql.SQL(", ").join(arguments))
    return query, values


def _plain(row: DictRow) -> dict[str, Any]:
    # uuids as strings, as PostgREST returns them, so both transports give the same rows.
    return {key: str(value) if isinstance(value, UUID) else value for key, value in row.items()}


def _result(name: str, rows: Sequence[DictRow]) -> Any:
    if rpc_named(name).scalar:
        if not rows:
            return None
        (value,) = rows[0].values()
        return value
    return [_plain(row) for row in rows]


def _translate(exc: Exception, timeout: float) -> SupaVectorsError:
    """psycopg's exceptions -> ours, so no psycopg type reaches the caller."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return BackendUnavailableError(f"no database connection within {timeout:g} s ({exc})")
    if isinstance(exc, psycopg_pool.PoolClosed):
        return BackendUnavailableError("the Postgres transport is closed")
    if isinstance(exc, psycopg.Error) and exc.sqlstate:
        message = exc.diag.message_primary or str(exc)
        return error_for_sqlstate(exc.sqlstate, message, detail=exc.diag.message_detail)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return BackendUnavailableError(f"the database connection failed: {exc}")
    if isinstance(exc, psycopg.DataError | psycopg.ProgrammingError):
        # Raised before sending: a parameter psycopg cannot adapt.
        return InvalidInputError(f"cannot send the parameters: {exc}")
    return BackendError(str(exc))


_POOL_NAME = "supa-vectors"
DEFAULT_CONNECT_TIMEOUT = 5.0


class _QuietPoolFilter(logging.Filter):
    """Drops our pools' "error connecting" warnings: the transport reports an unreachable database
    itself (one ``BackendUnavailableError``, which the store turns into an offline answer), so the
    pool's background retries would only repeat it on stderr every few seconds. Other pools' records,
    and every other record of ours, pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            isinstance(args, tuple)
            and args[:1] == (_POOL_NAME,)
            and record.levelno <= logging.WARNING
            and ("error connecting" in str(record.msg) or "reconnection attempt" in str(record.msg))
        )


_QUIET = _QuietPoolFilter()
logging.getLogger("psycopg.pool").addFilter(_QUIET)


def _connect_timeout(seconds: float) -> int:
    # libpq takes whole seconds and treats anything below 2 as 2.
    return max(2, math.ceil(seconds))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _pool_kwargs(connect_timeout: float) -> dict[str, Any]:
    return {
        # Each call's transaction is the pipeline's implicit one, closed by its Sync.
        "autocommit": True,
        # Server-side prepared statements break behind transaction-mode poolers (Supavisor, PgBouncer),
        # and these one-line calls gain little from them.
        "prepare_threshold": None,
        "connect_timeout": _connect_timeout(connect_timeout),
        "application_name": _POOL_NAME,
    }


def _pool_options(
    url: str, *, min_size: int, max_size: int, timeout: float, connect_timeout: float
) -> dict[str, Any]:
    """What both pools (blocking and asyncio) are built with, beside their connection class."""
    return {
        "conninfo": url,
        "kwargs": {**_pool_kwargs(connect_timeout), "row_factory": dict_row},
        "min_size": min_size,
        "max_size": max_size,
        "timeout": timeout,
        "name": _POOL_NAME,
        # Opened by the first call: a store whose calls the breaker refuses never connects at all.
        "open": False,
    }


def _check_timeouts(timeout: float, connect_timeout: float) -> None:
    for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")


class _Base:
    # Vectors go as a binary vector[] parameter, so upserts can send larger chunks (see _core/upsert.py).
    sends_binary_vectors = True

    def __init__(self, url: str, identity: Identity, timeout: float, connect_timeout: float) -> None:
        _check_timeouts(timeout, connect_timeout)
        self._url = url
        self._identity = identity
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        # Whether a connection to the server worked since the last connection failure. Until one has,
        # a call first connects once itself (see _probe) instead of waiting ``timeout`` for the pool.
        self._reachable = False

    def _probe_kwargs(self) -> dict[str, Any]:
        return {**_pool_kwargs(self._connect_timeout), "application_name": f"{_POOL_NAME} probe"}

    def _probe_failed(self, exc: psycopg.Error) -> SupaVectorsError:
        if exc.sqlstate:
            return _translate(exc, self._timeout)  # the server answered: a refused login, say
        return BackendUnavailableError(f"the database is unreachable: {_first_line(exc)}")

    @property
    def identity(self) -> Identity:
        """Who the calls run as; the store uses it to tell its own rows from shared ones."""
        return self._identity

    @property
    def identity_fingerprint(self) -> str:
        return self._identity.fingerprint()

    @property
    def subject(self) -> str | None:
        """The user id the calls run as (None for the service role and anon)."""
        return self._identity.subject

    @property
    def cache_label(self) -> str:
        """Host, port and database this transport talks to; never the user or password."""
        return conninfo_label(self._url)


class PostgresTransport(_Base):
    """Blocking transport over a psycopg pool; ``url`` is a ``postgresql://`` connection string.

    ``timeout`` bounds how long a call waits for a pooled connection; ``connect_timeout`` how long
    one connection attempt may take (libpq rounds it up to whole seconds, at least 2). A database that
    is down surfaces as :class:`~supa_vectors.errors.BackendUnavailableError`: at once when the
    connection is refused, after ``connect_timeout`` when the host does not answer. Until a connection
    has worked (at first, and after the server went away) each call connects once itself rather than
    wait for the pool's background attempts, which retry with backoff for as long as ``timeout``.
    """

    def __init__(
        self,
        url: str,
        *,
        identity: Identity | None = None,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 30.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__(url, identity or Identity.service(), timeout, connect_timeout)
        options = _pool_options(
            url, min_size=min_size, max_size=max_size, timeout=timeout, connect_timeout=connect_timeout
        )
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[DictRow]] = psycopg_pool.ConnectionPool(
            connection_class=psycopg.Connection[DictRow], configure=_configure, **options
        )
        self._open_lock = threading.Lock()
        self._opened = False
        self._closed = False

    def _open(self) -> None:
        if self._opened:
            return
        with self._open_lock:
            if self._closed:
                raise BackendUnavailableError("the Postgres transport is closed")
            if not self._opened:
                self._pool.open(wait=False)
                self._opened = True

    def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
        return self._run(name, params, switch_identity=True)

    def rpc_as_session_user(self, name: str, params: Mapping[str, Any]) -> Any:
        """Call as the connecting role itself (the table owner for ``begin_bulk_load``)."""
        return self._run(name, params, switch_identity=False)

    def _probe(self) -> None:
        """Connect once in this thread: a refused connection is known in milliseconds, an unroutable
        host after ``connect_timeout``, where the pool would wait ``timeout`` for its retries. The pool
        connects in the background meanwhile, so a reachable server costs no extra wait."""
        try:
            psycopg.connect(self._url, **self._probe_kwargs()).close()
        except psycopg.Error as exc:
            raise self._probe_failed(exc) from exc

    def _run(self, name: str, params: Mapping[str, Any], *, switch_identity: bool) -> Any:
        query, values = _call(name, params)
        self._open()
        if not self._reachable:
            self._probe()
        try:
            with self._pool.connection() as conn:
                with conn.pipeline():
                    if switch_identity:
                        conn.execute(SET_IDENTITY_SQL, self._identity.sql_params())
                    cursor = conn.cursor()
                    cursor.execute(query, values, binary=True)
                rows = cursor.fetchall()
            self._reachable = True
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            # The server went away: drop the idle connections it broke too, so the first call after a
            # restart does not fail on a stale one (checking on every checkout would cost a round trip).
            self._reachable = False
            with contextlib.suppress(Exception):
                self._pool.check()
            raise _translate(exc, self._timeout) from exc
        except psycopg.Error as exc:
            raise _translate(exc, self._timeout) from exc
        except (TypeError, ValueError) as exc:
            # A dumper refused a value (not JSON-serialisable, a 2-d array as a vector): the caller's input.
            raise InvalidInputError(f"cannot send the parameters of {name}: {exc}") from exc
        return _result(name, rows)

    def close(self) -> None:
        with self._open_lock:
            self._closed = True
            self._pool.close()

    def __enter__(self) -> PostgresTransport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncPostgresTransport(_Base):
    """Asyncio twin of :class:`PostgresTransport`; the pool opens on the first call (inside a loop)."""

    def __init__(
        self,
        url: str,
        *,
        identity: Identity | None = None,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 30.0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        super().__init__(url, identity or Identity.service(), timeout, connect_timeout)
        options = _pool_options(
            url, min_size=min_size, max_size=max_size, timeout=timeout, connect_timeout=connect_timeout
        )
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = (
            psycopg_pool.AsyncConnectionPool(
                connection_class=psycopg.AsyncConnection[DictRow], configure=_aconfigure, **options
            )
        )
        self._opened = False
        self._closed = False
        self._lock = asyncio.Lock()

    async def _open(self) -> None:
        if self._opened:
            return
        async with self._lock:
            if self._closed:
                raise BackendUnavailableError("the Postgres transport is closed")
            if not self._opened:
                await self._pool.open(wait=False)
                self._opened = True

    async def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
        return await self._run(name, params, switch_identity=True)

    async def rpc_as_session_user(self, name: str, params: Mapping[str, Any]) -> Any:
        return await self._run(name, params, switch_identity=False)

    async def _probe(self) -> None:
        """See :meth:`PostgresTransport._probe`."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, **self._probe_kwargs())
        except psycopg.Error as exc:
            raise self._probe_failed(exc) from exc
        await conn.close()

    async def _run(self, name: str, params: Mapping[str, Any], *, switch_identity: bool) -> Any:
        query, values = _call(name, params)
        await self._open()
        if not self._reachable:
            await self._probe()
        try:
            async with self._pool.connection() as conn:
                async with conn.pipeline():
                    if switch_identity:
                        await conn.execute(SET_IDENTITY_SQL, self._identity.sql_params())
                    cursor = conn.cursor()
                    await cursor.execute(query, values, binary=True)
                rows = await cursor.fetchall()
            self._reachable = True
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            self._reachable = False
            with contextlib.suppress(Exception):
                await self._pool.check()
            raise _translate(exc, self._timeout) from exc
        except psycopg.Error as exc:
            raise _translate(exc, self._timeout) from exc
        except (TypeError, ValueError) as exc:
            # A dumper refused a value (not JSON-serialisable, a 2-d array as a vector): the caller's input.
            raise InvalidInputError(f"cannot send the parameters of {name}: {exc}") from exc
        return _result(name, rows)

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            await self._pool.close()

    async def __aenter__(self) -> AsyncPostgresTransport:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
