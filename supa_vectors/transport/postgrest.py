"""The PostgREST transport: RPCs over HTTP through supabase-py, as the app's own user.

Apps that already hold a ``supabase.Client`` (signed in, so its JWT carries the user's id) pass it
in, and every RPC runs under that user's Row Level Security, exactly as the app's own queries do.
The request itself is built by supabase-py (``client.postgrest.rpc(name, params).execute()``), so
URL, ``apikey``/``Authorization`` headers and schema profile are whatever the client would send.

Three things supabase-py does not give us, and why this module adds them:

* The HTTP status. ``APIError`` carries PostgREST's ``code`` but not the status, and a JSON error
  without a ``code`` (the API gateway's ``401 {"message": "Invalid API key"}``, a rate limiter's
  429) would be indistinguishable from a database failure. A response hook records the last
  response of the call (in a ``ContextVar``, so concurrent calls never see each other's).
* Strict bodies. supabase-py returns a non-JSON 2xx body as a ``str`` in ``data``; a proxy's HTML
  page must be an error, not a "result".
* Retries that are safe. postgrest-py retries only GET/HEAD and sleeps for real; RPCs are POSTs.
  We retry idempotent RPCs on transient failures, and any RPC when the failure proves the call
  never ran (see ``_Retry``).

Everything that does no I/O (encoding, decoding, error mapping, retry policy) is a plain function
shared by the blocking and the asyncio classes, which only do the I/O.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import functools
import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, cast

import httpx
import numpy as np
from postgrest import APIError, AsyncPostgrestClient, SyncPostgrestClient
from supabase import AsyncClient, AsyncClientOptions, Client, ClientOptions

from supa_vectors._core.rpcs import rpc_named
from supa_vectors._text import MAX_JSON_DEPTH, json_problem, unencodable_at
from supa_vectors.errors import (
    AuthError,
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    DocumentError,
    InvalidInputError,
    NotFoundError,
    SupaVectorsError,
)
from supa_vectors.transport.base import error_for_sqlstate, url_label
from supa_vectors.transport.identity import Identity, bearer_token, jwt_claims, verify_jwt

__all__ = ["DEFAULT_TIMEOUT", "AsyncPostgrestTransport", "PostgrestTransport"]

logger = logging.getLogger(__name__)

# Which RPCs may be sent again after a failure that leaves unknown whether they ran is the table's
# ``idempotent`` (supa_vectors._core.rpcs says why for each).

# supabase-py's default is 120 s for everything; a search should fail over to the cache long
# before that, while a 500-document bulk_upsert still fits comfortably in a minute.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

_VECTOR_COLUMNS = frozenset({"embedding"})
_SNIPPET = 200


# ------------------------------------------------------------------------------------------------
# Retry policy


class _Retry(enum.Enum):
    """How safe it is to send a failed call again."""

    NEVER = "never"
    # The call may have run (response lost, proxy timed out): only idempotent RPCs are replayed.
    IF_IDEMPOTENT = "if_idempotent"
    # The call provably did not run or was rolled back (no connection, pool exhausted, rate
    # limited at the gateway, serialization failure): any RPC may be sent again.
    ALWAYS = "always"


@dataclass(frozen=True)
class _Failure:
    error: SupaVectorsError
    retry: _Retry
    cause: BaseException | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class _RetryPolicy:
    max_attempts: int
    backoff_base: float
    backoff_max: float

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not (self.backoff_base >= 0 and self.backoff_max >= 0):
            raise ConfigurationError("backoff_base and backoff_max must be >= 0 seconds")

    def delay(self, name: str, attempt: int, failure: _Failure, rand: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None when the failure is final.

        Equal jitter (half fixed, half random) keeps the exponential growth visible while still
        spreading out clients that failed together.
        """
        if attempt >= self.max_attempts or failure.retry is _Retry.NEVER:
            return None
        if failure.retry is _Retry.IF_IDEMPOTENT and not rpc_named(name).idempotent:
            return None
        if failure.retry_after is not None:
            return min(failure.retry_after, self.backoff_max)
        cap = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return cap / 2 + rand * cap / 2


# ------------------------------------------------------------------------------------------------
# Parameter encoding


def _encode_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Turn the store's parameters into plain JSON values before supabase-py sees them.

    postgrest-py's encoder rejects numpy types and NaN with TypeError/ValueError from deep inside
    ``execute()``; failing here names the parameter and sends nothing.
    """
    beside = rpc_named(name).vectors_beside
    encoded = {
        key: _to_json(value, key)
        for key, value in params.items()
        if not (beside is not None and key == "embeddings")
    }
    if beside is not None and params.get("embeddings") is not None:
        encoded[beside] = _merge_embeddings(name, params.get(beside), params["embeddings"])
    return encoded


def _merge_embeddings(name: str, documents: Any, embeddings: Any) -> list[Any]:
    """Move vector i into document i's ``"embedding"``.

    ``bulk_upsert(documents json, embeddings vector[])`` takes either; the binary ``vector[]`` is
    for the Postgres transport, while over JSON a per-document array keeps each vector next to the
    record the server names in its errors.
    """
    if not isinstance(documents, Sequence) or isinstance(documents, (str, bytes)):
        raise InvalidInputError(f"{name}: documents must be a list of objects")
    vectors = list(embeddings)
    if len(vectors) != len(documents):
        raise InvalidInputError(
            f"{name}: {len(vectors)} embeddings for {len(documents)} documents; "
            "pass one embedding (or None) per document"
        )
    merged: list[Any] = []
    for index, (document, vector) in enumerate(zip(documents, vectors, strict=True)):
        if not isinstance(document, Mapping):
            raise DocumentError(f"document {index + 1}: is not a JSON object", index=index, document_id=None)
        record = {key: _to_json(value, f"documents[{index}].{key}") for key, value in document.items()}
        if vector is not None:
            external_id = document.get("external_id")
            try:
                # Worded like the server's own check, which names the record the same way.
                record["embedding"] = _vector_to_list(vector, "embedding")
            except InvalidInputError as exc:
                raise DocumentError(
                    f"document {index + 1} (external_id {external_id}): {exc}",
                    index=index,
                    document_id=external_id if isinstance(external_id, str) else None,
                ) from None
        merged.append(record)
    return merged


def _vector_to_list(value: Any, where: str) -> list[Any]:
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.ndim != 1:
        raise InvalidInputError(f"{where} must be a 1-dimensional array of numbers")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError(
            f"{where} must contain only finite numbers (NaN and Infinity are not JSON numbers)"
        )
    # float32.tolist() gives the exact float32 values as Python floats, which pgvector's vector_in
    # parses back to the same float32 bits.
    return cast(list[Any], array.tolist())


def _to_json(value: Any, where: str, depth: int = 0) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise InvalidInputError(f"{where} is nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, str)):
        # A lone surrogate or an over-long integer makes the JSON body unencodable (or a server-side
        # syntax error naming no record): refused here, naming the parameter. NUL is the server's to
        # refuse: bulk_upsert names the record holding it.
        problem = (
            json_problem(value, where)
            if isinstance(value, int) or unencodable_at(value) is not None
            else None
        )
        if problem:
            raise InvalidInputError(problem)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{where} must be a finite number, got {value}")
        return value
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.dtype.kind in "fiu":
            return _vector_to_list(value, where)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InvalidInputError(f"{where} must contain only finite numbers")
        return _to_json(value.tolist(), where)
    if isinstance(value, np.generic):
        return _to_json(value.item(), where)
    if isinstance(value, Mapping):
        return {
            _to_json(str(key), f"a key in {where}"): _to_json(item, f"{where}.{key}", depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return _to_json(float(value), where)
    raise InvalidInputError(f"{where}: a {type(value).__name__} cannot be sent as JSON")


# ------------------------------------------------------------------------------------------------
# Result decoding


def _decode_success(name: str, status: int, content: bytes) -> Any:
    """Parse a 2xx body; anything that is not the JSON the RPC returns is a backend error."""
    try:
        value = json.loads(content)
    except ValueError:
        raise BackendError(
            f"PostgREST answered rpc {name} with HTTP {status} and a body that is not JSON: "
            f"{_snippet(content)}",
            code=str(status),
        ) from None
    return _decode_value(name, value)


def _decode_value(name: str, value: Any) -> Any:
    rpc = rpc_named(name)
    if rpc.scalar:
        if isinstance(value, str):
            raise BackendError(f"PostgREST answered rpc {name} with unexpected text: {value[:_SNIPPET]!r}")
        return value
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise BackendError(
            f"PostgREST answered rpc {name} with {type(value).__name__}, not a list of rows: "
            f"{_snippet(json.dumps(value).encode())}"
        )
    rows = cast(list[dict[str, Any]], value)
    if not rpc.vectors:
        return rows
    for row in rows:
        for column in _VECTOR_COLUMNS.intersection(row):
            row[column] = _parse_vector(name, row[column])
    return rows


def _parse_vector(name: str, value: Any) -> Any:
    """pgvector's text form ``"[1,2,3]"`` (what PostgREST sends) -> float32 ndarray, as from Postgres."""
    if value is None:
        return None
    try:
        items = json.loads(value) if isinstance(value, str) else value
        if not isinstance(items, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in items
        ):
            raise ValueError("not a list of numbers")
        return np.asarray(items, dtype=np.float32)
    except ValueError:
        raise BackendError(
            f"PostgREST answered rpc {name} with an embedding that is not a vector: {str(value)[:_SNIPPET]!r}"
        ) from None


def _snippet(content: bytes) -> str:
    text = content.decode("utf-8", errors="replace").strip()
    return repr(text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else "")) if text else "(empty body)"


# ------------------------------------------------------------------------------------------------
# Error mapping

_UNAVAILABLE_STATUSES = frozenset({408, 429, 502, 503, 504, 520, 521, 522, 523, 524})
# PostgREST's own "could not reach the database" codes: the request never got a connection.
_NOT_EXECUTED_CODES = frozenset({"PGRST000", "PGRST002", "PGRST003"})
# A serialization failure or deadlock rolls back PostgREST's per-request transaction.
_ROLLED_BACK_SQLSTATES = frozenset({"40001", "40P01"})


def _error_body(content: bytes) -> dict[str, Any] | None:
    """The PostgREST error object, or None when the body is something else (HTML, truncated...)."""
    try:
        body = json.loads(content)
    except ValueError:
        return None
    if not isinstance(body, dict) or not ({"code", "message"} & body.keys()):
        return None
    if not all(body.get(key) is None or isinstance(body[key], str) for key in ("code", "message")):
        return None
    return cast(dict[str, Any], body)


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: rare from these servers; fall back to our own backoff
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _status_error(status: int, message: str) -> BackendError | None:
    if status in (401, 403):
        return AuthError(message, code=str(status))
    if status == 404:
        return NotFoundError(message, code=str(status))
    if status in _UNAVAILABLE_STATUSES:
        return BackendUnavailableError(message, code=str(status))
    return None


def _failure_from_response(
    name: str, status: int, headers: Mapping[str, str], content: bytes, cause: BaseException | None
) -> _Failure:
    """Map one non-2xx answer to our exception tree and say whether it may be retried."""
    body = _error_body(content)
    retry_after = _retry_after(headers)
    code = body.get("code") if body else None
    if body is not None and code:
        failure = _failure_from_code(name, status, code, body)
        return _Failure(failure.error, failure.retry, cause, retry_after)

    # Not PostgREST speaking: a gateway, proxy or load balancer answered. The status is all we know.
    if body is not None:
        what = f"HTTP {status}: {body.get('message')}"
        if body.get("hint"):
            what += f" ({body['hint']})"
    else:
        what = f"HTTP {status} with a body that is not a PostgREST error: {_snippet(content)}"
    message = f"rpc {name} failed: {what}"
    if 300 <= status < 400 and headers.get("location"):
        message += f"; redirected to {headers['location']} (use that URL)"
    if status == 404:
        message += "; is the URL the project's API URL (https://<ref>.supabase.co)?"
    error = _status_error(status, message)
    if error is None:
        return _Failure(BackendError(message, code=str(status)), _Retry.NEVER, cause)
    if status == 429:
        retry = _Retry.ALWAYS  # refused before it reached PostgREST
    elif isinstance(error, BackendUnavailableError):
        retry = _Retry.IF_IDEMPOTENT
    else:
        retry = _Retry.NEVER
    return _Failure(error, retry, cause, retry_after)


def _failure_from_code(name: str, status: int | None, code: str, body: Mapping[str, Any]) -> _Failure:
    message = str(body.get("message") or f"rpc {name} failed")
    details = _text(body.get("details"))
    hint = _text(body.get("hint"))
    if code.startswith("PGRST"):
        text = message + (f" ({details})" if details else "") + (f" Hint: {hint}" if hint else "")
        if code in _NOT_EXECUTED_CODES:
            return _Failure(BackendUnavailableError(text, code=code), _Retry.ALWAYS)
        if code == "PGRST001":
            return _Failure(BackendUnavailableError(text, code=code), _Retry.IF_IDEMPOTENT)
        if code in {"PGRST301", "PGRST302", "PGRST303"} or status in (401, 403):
            return _Failure(AuthError(text, code=code), _Retry.NEVER)
        if code in {"PGRST202", "PGRST205"}:
            text += " Are the supa-vectors migrations applied to this project (supabase db push)?"
            return _Failure(NotFoundError(text, code=code), _Retry.NEVER)
        return _Failure(BackendError(text, code=code), _Retry.NEVER)

    # A database error: the same SQLSTATE maps to the same exception as over the Postgres transport.
    error = error_for_sqlstate(code, message, detail=details)
    if status in (401, 403) and not isinstance(error, AuthError):
        # PostgREST answers 401/403 only for authorization failures, whatever the SQLSTATE
        # (e.g. 22023 "role ... does not exist" for a JWT whose role is unknown).
        error = AuthError(str(error), code=code)
    elif type(error) is BackendError and status is not None:
        error = _status_error(status, str(error)) or error
        error.code = code
    if code in _ROLLED_BACK_SQLSTATES:
        retry = _Retry.ALWAYS
    elif isinstance(error, BackendUnavailableError):
        retry = _Retry.IF_IDEMPOTENT
    else:
        retry = _Retry.NEVER
    return _Failure(error, retry)


def _failure_from_exception(name: str, exc: Exception, response: httpx.Response | None) -> _Failure:
    """Map whatever ``execute()`` raised; nothing from supabase-py, postgrest-py or httpx escapes."""
    if response is not None and not response.is_success:
        return _failure_from_response(name, response.status_code, response.headers, response.content, exc)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        # No connection was made (or none was free): the request was never sent.
        return _Failure(
            BackendUnavailableError(f"rpc {name}: cannot connect to PostgREST ({type(exc).__name__}: {exc})"),
            _Retry.ALWAYS,
            exc,
        )
    if isinstance(exc, httpx.TimeoutException):
        return _Failure(
            BackendUnavailableError(
                f"rpc {name}: PostgREST did not answer in time ({type(exc).__name__}); "
                "the call may still have run"
            ),
            _Retry.IF_IDEMPOTENT,
            exc,
        )
    if isinstance(exc, httpx.UnsupportedProtocol):
        return _Failure(ConfigurationError(f"rpc {name}: bad PostgREST URL: {exc}"), _Retry.NEVER, exc)
    if isinstance(exc, httpx.TransportError):
        return _Failure(
            BackendUnavailableError(
                f"rpc {name}: connection to PostgREST failed ({type(exc).__name__}: {exc}); "
                "the call may still have run"
            ),
            _Retry.IF_IDEMPOTENT,
            exc,
        )
    if isinstance(exc, APIError):
        # An error whose response our hook did not see: map from the fields it carries. When the
        # body was not PostgREST JSON, postgrest-py puts the HTTP status in ``code``.
        code = exc.code if isinstance(exc.code, str) else None
        fields = {"message": exc.message, "details": exc.details, "hint": exc.hint}
        if code and len(code) == 3 and code.isdigit():
            return _failure_from_response(name, int(code), {}, str(exc.details or "").encode(), exc)
        if code:
            failure = _failure_from_code(name, None, code, fields)
            return _Failure(failure.error, failure.retry, exc)
        return _Failure(BackendError(f"rpc {name} failed: {exc.message}"), _Retry.NEVER, exc)
    return _Failure(BackendError(f"rpc {name} failed: {type(exc).__name__}: {exc}"), _Retry.NEVER, exc)


# ------------------------------------------------------------------------------------------------
# Identity


def _fingerprint(authorization: str | None, api_key: str | None) -> str:
    """Label the caller by every claim of its JWT that says who it is, like ``Identity.fingerprint``.

    ``Identity.from_claims`` keeps all claims but the lifecycle ones (exp, iat, nbf, jti): a policy
    may read any other, so tokens differing in one never share a cache, while a refreshed token keeps
    its caller's cache and outbox. The label is NOT proof of anything (the token is not verified
    here): the offline layer serves stored data only to callers it trusts (``cache/trust.py``). A
    token that is not a JWT (the ``sb_...`` API keys) is hashed instead, so no secret ever reaches a
    log line or a cache key.
    """
    token = bearer_token(authorization)
    claims = jwt_claims(token) if token else None
    identity = Identity.from_claims(claims) if claims is not None else None
    if identity is not None:
        return identity.fingerprint()
    secret = token or api_key or ""
    return hashlib.sha256(b"supa-vectors:opaque-key\x00" + secret.encode()).hexdigest()[:32]


def _accepted_credentials() -> str | None:
    """The ``Authorization`` the last call in this context sent, when the server answered it 2xx.

    PostgREST answers 401 to a token it cannot verify (bad signature, ``alg: none``, expired), so a
    2xx proves the backend accepted exactly these credentials.
    """
    response = _last_response.get()
    if response is None or not response.is_success:
        return None
    sent: str | None = response.request.headers.get("authorization")
    return sent


def _current_credentials(postgrest: Any) -> str | None:
    value: str | None = postgrest.headers.get("authorization")
    return value


def _with_credentials(postgrest: Any, credentials: str, factory: Callable[..., Any]) -> Any:
    """A PostgREST client like ``postgrest`` (same URL, schema, headers and HTTP session) that sends
    ``credentials`` instead of the app client's current ones; the app's client is not touched."""
    headers = {key: value for key, value in postgrest.headers.items() if key.lower() != "authorization"}
    headers["Authorization"] = credentials
    schema = postgrest.headers.get("accept-profile", "public")
    return factory(str(postgrest.base_url), schema=schema, headers=headers, http_client=postgrest.session)


# ------------------------------------------------------------------------------------------------
# Observing the response behind execute()

_last_response: ContextVar[httpx.Response | None] = ContextVar(
    "supa_vectors_postgrest_response", default=None
)


def _record_response(response: httpx.Response) -> None:
    _last_response.set(response)


async def _arecord_response(response: httpx.Response) -> None:
    _last_response.set(response)


def _observe(session: httpx.Client | httpx.AsyncClient, hook: Callable[[httpx.Response], Any]) -> None:
    """Add our response hook to the session once; supabase-py builds a new session on auth events."""
    hooks = session.event_hooks["response"]
    if hook not in hooks:
        hooks.append(hook)


def _check_client_schema(options: Any) -> None:
    schema = getattr(options, "schema", "public")
    if schema != "public":
        raise ConfigurationError(
            f"the supa-vectors RPCs live in schema public, but this client calls schema {schema!r}; "
            "pass a client created with ClientOptions(schema='public')"
        )


def _check_own_client_args(url: str | None, key: str | None) -> tuple[str, str]:
    if not url or not key:
        raise ConfigurationError(
            "PostgREST transport needs either a supabase client or both url= and key= "
            "(the project URL and its anon/publishable or service key)"
        )
    return url, key


def _as_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
    # supabase-py's postgrest_client_timeout goes through int(): 0.5 s becomes 0 (every call times
    # out) and it warns that the option is deprecated, so the timeout is set on our httpx client.
    if timeout is None:
        return DEFAULT_TIMEOUT
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(float(timeout))


# ------------------------------------------------------------------------------------------------
# The transports


C = TypeVar("C", Client, AsyncClient)


def _app_client(
    client: Any, kind: type[C], url: str | None, key: str | None, timeout: Any, name: str, other: str
) -> C:
    """The app's own supabase client, checked: the right kind, schema public, no url/key beside it."""
    if url is not None or key is not None or timeout is not None:
        raise ConfigurationError(
            "pass either a supabase client or url=/key=/timeout=, not both; configure the "
            "timeout on the client's httpx client"
        )
    if not isinstance(client, kind):
        twin = "PostgrestTransport" if name.startswith("Async") else "AsyncPostgrestTransport"
        raise ConfigurationError(
            f"{name} needs a supabase.{kind.__name__}, got {type(client).__name__} "
            f"(use {twin} for supabase.{other})"
        )
    _check_client_schema(client.options)
    return client


def _own_client(
    kind: Callable[..., C], url: str, key: str, options: Any, close_http: Callable[[], None]
) -> C:
    """A supabase client built here over our httpx client, which is closed again if this fails."""
    try:
        return kind(url, key, options)
    except Exception as exc:
        close_http()
        raise ConfigurationError(f"cannot create a supabase client for {url!r}: {exc}") from exc


_closing: set[asyncio.Task[None]] = set()


def _close_unused(http: httpx.AsyncClient) -> None:
    """Close an ``AsyncClient`` from a constructor, which cannot await: on the running loop as a task
    (kept referenced until done), or on a loop of its own when there is none."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(http.aclose())
        return
    task = loop.create_task(http.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class _PostgrestBase:
    """What the blocking and asyncio transports share: who the calls run as, and where they go."""

    _client: Client | AsyncClient

    def __init__(
        self,
        jwt_secret: str | None,
        jwks: Mapping[str, Any] | None,
        max_attempts: int,
        backoff_base: float,
        backoff_max: float,
    ) -> None:
        self._keys = _Keys(jwt_secret, jwks)
        self._policy = _RetryPolicy(max_attempts, backoff_base, backoff_max)
        self._random = random.Random()  # noqa: S311 - jitter, not cryptography
        self._closed = False

    @property
    def identity_fingerprint(self) -> str:
        # Read per call: a sign-in or token refresh changes who the next call runs as.
        headers = self._client.postgrest.headers
        return _fingerprint(headers.get("authorization"), headers.get("apikey"))

    @property
    def credentials(self) -> str | None:
        """The ``Authorization`` value the next call sends (the app's key or its user's JWT)."""
        return _current_credentials(self._client.postgrest)

    @property
    def accepted_credentials(self) -> str | None:
        """What the last call in this context sent, if the server accepted it (answered 2xx)."""
        return _accepted_credentials()

    def verifies(self, credentials: str, now: float) -> bool:
        """Whether ``credentials`` is a JWT signed by the configured secret or JWKS, valid at ``now``."""
        return self._keys.verifies(credentials, now)

    @property
    def subject(self) -> str | None:
        """The JWT ``sub`` the calls run as (read, not verified: PostgREST verifies), or None."""
        claims = jwt_claims(bearer_token(self.credentials))
        sub = claims.get("sub") if claims is not None else None
        return str(sub).lower() if sub is not None else None

    @property
    def cache_label(self) -> str:
        """The project URL this transport talks to; never a key."""
        return "postgrest:" + url_label(str(self._client.supabase_url))

    def _next_delay(self, name: str, attempt: int, outcome: _Failure) -> float:
        """The wait before the next attempt; raises the failure when it is final."""
        delay = self._policy.delay(name, attempt, outcome, self._random.random())
        if delay is None:
            raise outcome.error from outcome.cause
        _log_retry(name, outcome, attempt, self._policy.max_attempts, delay)
        return delay

    def _payload(self, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise ConfigurationError(f"this {type(self).__name__} is closed")
        return _encode_params(name, params)


class PostgrestTransport(_PostgrestBase):
    """Blocking transport over PostgREST; see the module docstring for what it adds to supabase-py."""

    def __init__(
        self,
        client: Client | None = None,
        *,
        url: str | None = None,
        key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_attempts: int = 3,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        jwt_secret: str | None = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        """Use the app's ``client`` (its JWT decides what RLS lets through), or build one from url/key.

        ``timeout`` applies only to a client built here; an app's own client keeps the timeouts the
        app gave its httpx client (``ClientOptions(httpx_client=httpx.Client(timeout=...))``).

        ``jwt_secret`` (the project's HS256 JWT secret) or ``jwks`` (its JSON Web Key Set, for
        asymmetric signing keys) let a token the backend has not seen yet get offline answers: it is
        verified against them. Without them, offline answers go only to tokens the backend accepted
        while it was reachable (see "When Supabase is down" in the README).
        """
        super().__init__(jwt_secret, jwks, max_attempts, backoff_base, backoff_max)
        self._sleep = sleep
        self._http: httpx.Client | None = None
        if client is not None:
            self._client = _app_client(client, Client, url, key, timeout, "PostgrestTransport", "AsyncClient")
            return
        url, key = _check_own_client_args(url, key)
        http = httpx.Client(timeout=_as_timeout(timeout))
        options = ClientOptions(httpx_client=http, auto_refresh_token=False, persist_session=False)
        self._client = _own_client(Client, url, key, options, http.close)
        self._http = http

    def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
        """Call one RPC, retrying as the policy allows; raises only ``SupaVectorsError``."""
        return self._rpc(name, params, None)

    def rpc_with_credentials(self, name: str, params: Mapping[str, Any], credentials: str) -> Any:
        """Call one RPC with these ``Authorization`` credentials instead of the client's current ones.

        The outbox replays each queued write this way, as the caller that queued it.
        """
        return self._rpc(name, params, credentials)

    def _rpc(self, name: str, params: Mapping[str, Any], credentials: str | None) -> Any:
        payload = self._payload(name, params)
        postgrest = self._client.postgrest
        if credentials is not None:
            postgrest = _with_credentials(postgrest, credentials, SyncPostgrestClient)
        attempt = 1
        while True:
            outcome = self._attempt(name, payload, postgrest)
            if not isinstance(outcome, _Failure):
                return outcome.value
            self._sleep(self._next_delay(name, attempt, outcome))
            attempt += 1

    def _attempt(self, name: str, payload: dict[str, Any], postgrest: Any) -> _Result | _Failure:
        _last_response.set(None)
        try:
            _observe(postgrest.session, _record_response)
            result = postgrest.rpc(name, payload).execute()
        except Exception as exc:
            return _failure_from_exception(name, exc, _last_response.get())
        return _result(name, _last_response.get(), result)

    def close(self) -> None:
        """Close the HTTP connections of a client built here; an app's own client stays the app's."""
        self._closed = True
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> PostgrestTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncPostgrestTransport(_PostgrestBase):
    """Asyncio twin of :class:`PostgrestTransport`."""

    def __init__(
        self,
        client: AsyncClient | None = None,
        *,
        url: str | None = None,
        key: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        max_attempts: int = 3,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        jwt_secret: str | None = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> None:
        """See :class:`PostgrestTransport`; ``sleep`` defaults to ``asyncio.sleep``."""
        super().__init__(jwt_secret, jwks, max_attempts, backoff_base, backoff_max)
        self._sleep: Callable[[float], Awaitable[None]] = sleep or asyncio.sleep
        self._http: httpx.AsyncClient | None = None
        if client is not None:
            self._client = _app_client(
                client, AsyncClient, url, key, timeout, "AsyncPostgrestTransport", "Client"
            )
            return
        url, key = _check_own_client_args(url, key)
        http = httpx.AsyncClient(timeout=_as_timeout(timeout))
        options = AsyncClientOptions(httpx_client=http, auto_refresh_token=False, persist_session=False)
        self._client = _own_client(AsyncClient, url, key, options, functools.partial(_close_unused, http))
        self._http = http

    async def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
        """Call one RPC, retrying as the policy allows; raises only ``SupaVectorsError``."""
        return await self._rpc(name, params, None)

    async def rpc_with_credentials(self, name: str, params: Mapping[str, Any], credentials: str) -> Any:
        """See :meth:`PostgrestTransport.rpc_with_credentials`."""
        return await self._rpc(name, params, credentials)

    async def _rpc(self, name: str, params: Mapping[str, Any], credentials: str | None) -> Any:
        payload = self._payload(name, params)
        postgrest = self._client.postgrest
        if credentials is not None:
            postgrest = _with_credentials(postgrest, credentials, AsyncPostgrestClient)
        attempt = 1
        while True:
            outcome = await self._attempt(name, payload, postgrest)
            if not isinstance(outcome, _Failure):
                return outcome.value
            await self._sleep(self._next_delay(name, attempt, outcome))
            attempt += 1

    async def _attempt(self, name: str, payload: dict[str, Any], postgrest: Any) -> _Result | _Failure:
        _last_response.set(None)
        try:
            _observe(postgrest.session, _arecord_response)
            result = await postgrest.rpc(name, payload).execute()
        except Exception as exc:
            return _failure_from_exception(name, exc, _last_response.get())
        return _result(name, _last_response.get(), result)

    async def aclose(self) -> None:
        """Close the HTTP connections of a client built here; an app's own client stays the app's."""
        self._closed = True
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncPostgrestTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class _Keys:
    """The keys this app holds to verify its users' tokens offline (none by default)."""

    secret: str | None
    jwks: Mapping[str, Any] | None

    def __post_init__(self) -> None:
        if self.secret is not None and (not isinstance(self.secret, str) or len(self.secret) < 32):
            raise ConfigurationError("jwt_secret must be the project's JWT secret (at least 32 characters)")
        keys = self.jwks.get("keys") if isinstance(self.jwks, Mapping) else None
        if self.jwks is not None and not isinstance(keys, list):
            raise ConfigurationError('jwks must be a JSON Web Key Set: {"keys": [...]}')

    def verifies(self, credentials: str, now: float) -> bool:
        token = bearer_token(credentials)
        if not token or (self.secret is None and self.jwks is None):
            return False
        return verify_jwt(token, now=now, secret=self.secret, jwks=self.jwks) is not None


@dataclass(frozen=True)
class _Result:
    value: Any


def _result(name: str, response: httpx.Response | None, api_response: Any) -> _Result | _Failure:
    """Decode a successful ``execute()`` from the raw body when we saw it, else from ``.data``."""
    try:
        if response is not None:
            return _Result(_decode_success(name, response.status_code, response.content))
        return _Result(_decode_value(name, getattr(api_response, "data", None)))
    except BackendError as exc:
        return _Failure(exc, _Retry.NEVER)


def _log_retry(name: str, failure: _Failure, attempt: int, max_attempts: int, delay: float) -> None:
    # Only our own message: it never contains request headers, so no key or JWT reaches the log.
    logger.warning(
        "rpc %s attempt %d of %d failed (%s: %s); retrying in %.2f s",
        name,
        attempt,
        max_attempts,
        type(failure.error).__name__,
        failure.error,
        delay,
    )
