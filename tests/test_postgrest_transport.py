"""The PostgREST transport against recorded PostgREST answers (respx; no PostgREST binary here).

What is pinned: the exact requests supabase-py sends for our RPCs, how real PostgREST error bodies
and network faults map onto our exception tree, and which failures are retried, for both the
blocking and the asyncio transport (every test below runs against both through ``Harness``).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import respx
from postgrest import APIError
from supabase import AsyncClient, AsyncClientOptions, Client, ClientOptions

from supa_vectors.errors import (
    AuthError,
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    DocumentError,
    FilterError,
    InvalidInputError,
    NotFoundError,
    QueryTimeoutError,
    SupaVectorsError,
)
from supa_vectors.transport.base import AsyncTransport, Transport
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgrest import (
    AsyncPostgrestTransport,
    PostgrestTransport,
    _failure_from_exception,
    _Retry,
)

# supabase-py warns on every client it builds without an httpx client of its own (it passes a
# deprecated timeout= and verify= to postgrest-py); that is the app's client, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The '(timeout|verify)' parameter is deprecated")

FIXTURES = Path(__file__).parent / "fixtures" / "postgrest"
URL = "http://supa.test"
USER_A = "00000000-0000-4000-8000-00000000000a"
USER_B = "00000000-0000-4000-8000-00000000000b"


# One HTTP client for the apps' supabase clients in most tests: building an httpx client loads the
# CA bundle (~50 ms), and supabase-py builds two per client. Apps pass theirs the same way
# (ClientOptions(httpx_client=...)); tests marked "default session" use supabase-py's own.
SHARED_HTTP = httpx.Client()
SHARED_ASYNC_HTTP = httpx.AsyncClient()


def make_jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


ANON_KEY = make_jwt({"iss": "supabase", "ref": "test", "role": "anon", "iat": 1700000000, "exp": 2000000000})
SERVICE_KEY = make_jwt({"iss": "supabase", "ref": "test", "role": "service_role", "exp": 2000000000})
USER_JWT = make_jwt({"sub": USER_A, "role": "authenticated", "aud": "authenticated", "exp": 2000000000})
USER_B_JWT = make_jwt({"sub": USER_B, "role": "authenticated", "aud": "authenticated", "exp": 2000000000})


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def recorded(name: str) -> httpx.Response:
    fx = fixture(name)
    return httpx.Response(fx["status"], headers=fx["headers"], content=fx["body"].encode())


def replay(name: str) -> Callable[[httpx.Request], httpx.Response]:
    """A respx side effect answering every call with the recorded response (a fresh object each time)."""
    return lambda request: recorded(name)


def ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


def sent(route: respx.Route, index: int = -1) -> httpx.Request:
    request: httpx.Request = route.calls[index].request
    return request


def body_of(route: respx.Route, index: int = -1) -> Any:
    return json.loads(sent(route, index).content)


class Harness:
    """One transport (blocking or asyncio) with a recording sleep, called the same way either way."""

    def __init__(self, kind: str, default_session: bool = False, **options: Any) -> None:
        self.kind = kind
        self.sleeps: list[float] = []
        headers = {"Authorization": f"Bearer {USER_JWT}"}  # what a signed-in app's client carries
        if kind == "sync":
            self.client: Any = Client(
                URL,
                ANON_KEY,
                ClientOptions(headers=headers)
                if default_session
                else ClientOptions(headers=headers, httpx_client=SHARED_HTTP),
            )
            self.transport: Any = PostgrestTransport(self.client, sleep=self.sleeps.append, **options)
        else:

            async def sleep(seconds: float) -> None:
                self.sleeps.append(seconds)

            self.client = AsyncClient(
                URL,
                ANON_KEY,
                AsyncClientOptions(headers=headers)
                if default_session
                else AsyncClientOptions(headers=headers, httpx_client=SHARED_ASYNC_HTTP),
            )
            self.transport = AsyncPostgrestTransport(self.client, sleep=sleep, **options)

    async def rpc(self, name: str, params: dict[str, Any]) -> Any:
        if self.kind == "sync":
            return self.transport.rpc(name, params)
        return await self.transport.rpc(name, params)

    async def fails(self, name: str, params: dict[str, Any]) -> SupaVectorsError:
        with pytest.raises(SupaVectorsError) as caught:
            await self.rpc(name, params)
        return caught.value


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=f"{URL}/rest/v1", assert_all_called=False) as mock:
        yield mock


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Callable[..., Harness]:
    return lambda **options: Harness(request.param, **options)


QUERY = np.linspace(-1, 1, 384, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# Requests


async def test_match_documents_request_is_what_supabase_py_sends(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    rows = [{"id": 7, "external_id": "a", "content": "x", "metadata": {}, "similarity": 0.91}]
    route = router.post("/rpc/match_documents").mock(return_value=ok(rows))
    harness = make(default_session=True)  # exactly as supabase-py builds it (HTTP/2 session, 120 s)

    result = await harness.rpc(
        "match_documents", {"query_embedding": QUERY, "match_count": 5, "filter": {"lang": "en"}}
    )

    assert result == rows
    request = sent(route)
    assert request.method == "POST"
    assert request.url == f"{URL}/rest/v1/rpc/match_documents"
    assert request.headers["apikey"] == ANON_KEY
    assert request.headers["authorization"] == f"Bearer {USER_JWT}"  # the user's JWT, so RLS applies
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-profile"] == "public"
    body = body_of(route)
    assert body == {"query_embedding": QUERY.tolist(), "match_count": 5, "filter": {"lang": "en"}}
    assert all(isinstance(x, float) for x in body["query_embedding"])
    # float32 -> JSON -> float32 is exact (what pgvector's vector_in will store).
    assert np.array_equal(np.asarray(body["query_embedding"], dtype=np.float32), QUERY)
    assert harness.sleeps == []


async def test_numpy_scalars_dates_and_uuids_become_json(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    import datetime as dt
    import uuid

    route = router.post("/rpc/list_documents").mock(return_value=ok([]))
    when = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.timezone.utc)

    await make().rpc(
        "list_documents",
        {
            "page_size": np.int64(50),
            "after_id": 0,
            "updated_after": when,
            "filter": {"owner": uuid.UUID(USER_A)},
        },
    )

    assert body_of(route) == {
        "page_size": 50,
        "after_id": 0,
        "updated_after": "2026-11-25T10:00:00+00:00",
        "filter": {"owner": USER_A},
    }


async def test_bulk_upsert_moves_each_vector_into_its_document(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    route = router.post("/rpc/bulk_upsert").mock(
        return_value=ok(
            [
                {"ordinal": 1, "external_id": "a", "id": 1, "status": "inserted"},
                {"ordinal": 2, "external_id": "b", "id": 2, "status": "unchanged"},
            ]
        )
    )
    documents = [
        {"external_id": "a", "content": "alpha", "metadata": {"n": 1}},
        {"external_id": "b", "content": "beta", "metadata": {}},
    ]
    vector = np.full(384, 0.25, dtype=np.float32)

    result = await make().rpc(
        "bulk_upsert", {"documents": documents, "embeddings": [vector, None], "model": None}
    )

    assert [row["status"] for row in result] == ["inserted", "unchanged"]
    assert body_of(route) == {
        "documents": [
            {"external_id": "a", "content": "alpha", "metadata": {"n": 1}, "embedding": [0.25] * 384},
            {"external_id": "b", "content": "beta", "metadata": {}},  # None: keep the stored vector
        ],
        "model": None,
    }
    assert "embedding" not in documents[0]  # the caller's records are not modified


async def test_bulk_upsert_accepts_a_matrix_of_embeddings(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    route = router.post("/rpc/bulk_upsert").mock(return_value=ok([]))
    matrix = np.arange(2 * 384, dtype=np.float32).reshape(2, 384)

    await make().rpc(
        "bulk_upsert",
        {
            "documents": [{"external_id": "a", "content": "x"}, {"external_id": "b", "content": "y"}],
            "embeddings": matrix,
        },
    )

    documents = body_of(route)["documents"]
    assert [d["embedding"] for d in documents] == matrix.tolist()


@pytest.mark.parametrize(
    ("params", "error", "text"),
    [
        (
            {"documents": [{"external_id": "a", "content": "x"}], "embeddings": []},
            InvalidInputError,
            "0 embeddings for 1 documents",
        ),
        (
            {"query_embedding": np.array([0.1, np.nan], dtype=np.float32)},
            InvalidInputError,
            "query_embedding must contain only finite numbers",
        ),
        (
            {"query_embedding": np.zeros((2, 2), dtype=np.float32), "filter": {"x": np.array([1.0, np.inf])}},
            InvalidInputError,
            "filter.x must contain only finite numbers",
        ),
        ({"match_threshold": float("inf")}, InvalidInputError, "finite"),
        ({"filter": {"tags": {"a", "b"}}}, InvalidInputError, "filter.tags: a set cannot be sent as JSON"),
    ],
)
async def test_unsendable_parameters_fail_before_any_request(
    router: respx.MockRouter,
    make: Callable[..., Harness],
    params: dict[str, Any],
    error: type[Exception],
    text: str,
) -> None:
    name = "bulk_upsert" if "documents" in params else "match_documents"
    route = router.post(f"/rpc/{name}").mock(return_value=ok([]))

    caught = await make().fails(name, params)

    assert isinstance(caught, error)
    assert text in str(caught)
    assert not route.called


async def test_non_finite_embedding_names_the_document(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    route = router.post("/rpc/bulk_upsert").mock(return_value=ok([]))
    bad = np.zeros(384, dtype=np.float32)
    bad[3] = np.inf

    caught = await make().fails(
        "bulk_upsert",
        {
            "documents": [{"external_id": "a", "content": "x"}, {"external_id": "b", "content": "y"}],
            "embeddings": [np.zeros(384, dtype=np.float32), bad],
        },
    )

    assert isinstance(caught, DocumentError)
    assert (caught.index, caught.document_id) == (1, "b")
    assert str(caught).startswith("document 2 (external_id b): embedding must contain only finite numbers")
    assert not route.called


# ------------------------------------------------------------------------------------------------
# Results


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("list_documents", {"page_size": 2, "with_embeddings": True}),
        ("get_embeddings", {"external_ids": ["a", "b"]}),
    ],
)
async def test_stored_embeddings_come_back_as_float32_arrays(
    router: respx.MockRouter, make: Callable[..., Harness], name: str, params: dict[str, Any]
) -> None:
    router.post(f"/rpc/{name}").mock(
        return_value=ok(
            [
                {
                    "id": 1,
                    "external_id": "a",
                    "embedding": "[0.5,-1,0.25,1e-08]",
                    "updated_at": "2026-11-25T10:00:00+00:00",
                },
                {"id": 2, "external_id": "b", "embedding": None, "updated_at": "2026-11-25T10:00:01+00:00"},
            ]
        )
    )

    rows = await make().rpc(name, params)

    assert isinstance(rows[0]["embedding"], np.ndarray)
    assert rows[0]["embedding"].dtype == np.float32
    assert np.array_equal(rows[0]["embedding"], np.array([0.5, -1, 0.25, 1e-08], dtype=np.float32))
    assert rows[1]["embedding"] is None


@pytest.mark.parametrize(
    ("name", "answer", "expected"),
    [
        ("count_documents", b"42", 42),
        (
            "store_settings",
            b'{"embedding_dimension":384,"max_batch_size":1000}',
            {"embedding_dimension": 384, "max_batch_size": 1000},
        ),
        ("begin_bulk_load", b"true", True),
        ("store_stats", b"null", None),
    ],
)
async def test_scalar_rpcs_return_the_scalar(
    router: respx.MockRouter, make: Callable[..., Harness], name: str, answer: bytes, expected: Any
) -> None:
    router.post(f"/rpc/{name}").mock(
        return_value=httpx.Response(200, content=answer, headers={"content-type": "application/json"})
    )

    assert await make().rpc(name, {}) == expected


@pytest.mark.parametrize(
    ("name", "answer", "text"),
    [
        ("match_documents", b"<html><body>Sign in to the Wi-Fi</body></html>", "not JSON"),
        ("match_documents", b'[{"id": 1, "external_id": "a", "conte', "not JSON"),
        ("match_documents", b"", "(empty body)"),
        ("match_documents", b'{"id": 1}', "not a list of rows"),
        ("count_documents", b"<html></html>", "not JSON"),
        ("count_documents", b'"42"', "unexpected text"),
        ("list_documents", b'[{"id": 1, "embedding": "[1,2,oops]"}]', "not a vector"),
    ],
)
async def test_malformed_success_bodies_are_backend_errors(
    router: respx.MockRouter, make: Callable[..., Harness], name: str, answer: bytes, text: str
) -> None:
    route = router.post(f"/rpc/{name}").mock(return_value=httpx.Response(200, content=answer))
    harness = make()

    caught = await harness.fails(name, {})

    assert type(caught) is BackendError
    assert text in str(caught)
    assert route.call_count == 1  # a strange answer is not retried
    assert harness.sleeps == []


# ------------------------------------------------------------------------------------------------
# Errors: recorded PostgREST, gateway and proxy answers

# fixture -> (exception type, its .code)
ERROR_FIXTURES: dict[str, tuple[type[SupaVectorsError], str | None]] = {
    "22023_bulk_upsert_document": (DocumentError, None),
    "22023_invalid_filter": (FilterError, None),
    "22023_role_does_not_exist": (AuthError, "22023"),
    "54000_result_limit": (InvalidInputError, None),
    "57014_statement_timeout": (QueryTimeoutError, "57014"),
    "42501_permission_denied_authenticated": (AuthError, "42501"),
    "42501_permission_denied_anon": (AuthError, "42501"),
    "40P01_deadlock": (BackendError, "40P01"),
    "PGRST202_function_not_found": (NotFoundError, "PGRST202"),
    "PGRST301_jwt_expired_v12": (AuthError, "PGRST301"),
    "PGRST301_jwt_bad_signature": (AuthError, "PGRST301"),
    "PGRST302_anonymous_disabled": (AuthError, "PGRST302"),
    "PGRST303_jwt_expired": (AuthError, "PGRST303"),
    "PGRST000_database_connection": (BackendUnavailableError, "PGRST000"),
    "PGRST002_schema_cache": (BackendUnavailableError, "PGRST002"),
    "PGRST003_pool_timeout": (BackendUnavailableError, "PGRST003"),
    "gateway_401_invalid_api_key": (AuthError, "401"),
    "gateway_404_no_route": (NotFoundError, "404"),
    "gateway_429_rate_limited": (BackendUnavailableError, "429"),
    "proxy_500_html": (BackendError, "500"),
    "proxy_502_html": (BackendUnavailableError, "502"),
    "proxy_503_text": (BackendUnavailableError, "503"),
    "proxy_504_html": (BackendUnavailableError, "504"),
    "truncated_json_400": (BackendError, "400"),
}


def test_every_fixture_has_an_expectation() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(ERROR_FIXTURES)


@pytest.mark.parametrize("name", sorted(ERROR_FIXTURES))
async def test_recorded_errors_map_onto_the_tree(
    router: respx.MockRouter, make: Callable[..., Harness], name: str
) -> None:
    router.post("/rpc/get_documents").mock(side_effect=replay(name))
    expected_type, expected_code = ERROR_FIXTURES[name]

    caught = await make(max_attempts=1).fails("get_documents", {"external_ids": ["a", "b"]})

    assert type(caught) is expected_type
    assert getattr(caught, "code", None) == expected_code
    assert isinstance(caught.__cause__, APIError)  # chained, never leaked
    assert str(caught)


async def test_document_error_names_the_record(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    router.post("/rpc/bulk_upsert").mock(side_effect=replay("22023_bulk_upsert_document"))

    caught = await make().fails("bulk_upsert", {"documents": [], "embeddings": []})

    assert isinstance(caught, DocumentError)
    assert (caught.index, caught.document_id) == (1, "b")
    assert str(caught) == "document 2 (external_id b): content is empty"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("PGRST202_function_not_found", "supabase db push"),
        ("gateway_401_invalid_api_key", "Invalid API key"),
        ("gateway_404_no_route", "project's API URL"),
        ("proxy_500_html", "not a PostgREST error: '<html>"),
        ("truncated_json_400", "not a PostgREST error"),
        ("57014_statement_timeout", "canceling statement due to statement timeout"),
    ],
)
async def test_error_messages_say_what_happened(
    router: respx.MockRouter, make: Callable[..., Harness], name: str, text: str
) -> None:
    router.post("/rpc/get_documents").mock(side_effect=replay(name))

    caught = await make(max_attempts=1).fails("get_documents", {"external_ids": []})

    assert text in str(caught)


async def test_a_redirect_says_where_to(router: respx.MockRouter) -> None:
    router.post("/rpc/count_documents").mock(
        return_value=httpx.Response(
            301, headers={"location": "https://supa.test/rest/v1/rpc/count_documents"}
        )
    )

    transport = PostgrestTransport(url=URL, key=ANON_KEY, max_attempts=1)
    with pytest.raises(BackendError) as caught:
        transport.rpc("count_documents", {})
    transport.close()

    assert "redirected to https://supa.test/rest/v1/rpc/count_documents" in str(caught.value)
    assert type(caught.value) is BackendError


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), BackendUnavailableError),
        (httpx.ConnectTimeout("timed out"), BackendUnavailableError),
        (httpx.ReadTimeout("timed out"), BackendUnavailableError),
        (
            httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
            BackendUnavailableError,
        ),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), BackendUnavailableError),
    ],
)
async def test_network_faults_are_unavailable_and_chained(
    router: respx.MockRouter, make: Callable[..., Harness], fault: Exception, error: type[Exception]
) -> None:
    router.post("/rpc/count_documents").mock(side_effect=fault)

    caught = await make(max_attempts=1).fails("count_documents", {})

    assert type(caught) is error
    assert caught.__cause__ is fault


def test_api_error_without_an_observed_response_still_maps() -> None:
    """Fallback for a supabase-py whose session our hook could not see: map from APIError alone."""
    timeout = _failure_from_exception(
        "match_documents",
        APIError({"code": "57014", "message": "canceling statement due to statement timeout"}),
        None,
    )
    assert isinstance(timeout.error, QueryTimeoutError)
    proxy = _failure_from_exception(
        "match_documents", APIError({"code": "502", "message": "Bad Gateway", "details": "<html>"}), None
    )
    assert isinstance(proxy.error, BackendUnavailableError)
    assert proxy.retry is _Retry.IF_IDEMPOTENT
    jwt = _failure_from_exception(
        "match_documents", APIError({"code": "PGRST303", "message": "JWT expired"}), None
    )
    assert isinstance(jwt.error, AuthError)


# ------------------------------------------------------------------------------------------------
# Retries

# fixture -> (retried for an idempotent RPC, retried for a non-idempotent RPC)
RETRY_FIXTURES = {
    "proxy_502_html": (True, False),
    "proxy_503_text": (True, False),
    "proxy_504_html": (True, False),
    "PGRST000_database_connection": (True, True),  # never reached the database
    "PGRST002_schema_cache": (True, True),
    "PGRST003_pool_timeout": (True, True),
    "gateway_429_rate_limited": (True, True),  # refused at the gateway
    "40P01_deadlock": (True, True),  # the transaction was rolled back
    "57014_statement_timeout": (False, False),  # would time out again
    "22023_bulk_upsert_document": (False, False),
    "42501_permission_denied_authenticated": (False, False),
    "PGRST303_jwt_expired": (False, False),
    "PGRST202_function_not_found": (False, False),
    "gateway_401_invalid_api_key": (False, False),
    "proxy_500_html": (False, False),
    "truncated_json_400": (False, False),
}


@pytest.mark.parametrize("name", sorted(RETRY_FIXTURES))
@pytest.mark.parametrize("rpc", ["match_documents", "bulk_upsert", "begin_bulk_load"])
async def test_which_answers_are_retried(
    router: respx.MockRouter, make: Callable[..., Harness], name: str, rpc: str
) -> None:
    route = router.post(f"/rpc/{rpc}").mock(side_effect=replay(name))
    harness = make(max_attempts=3)
    idempotent, always = RETRY_FIXTURES[name]
    retried = always or (idempotent and rpc != "begin_bulk_load")

    await harness.fails(rpc, {})

    assert route.call_count == (3 if retried else 1)
    assert len(harness.sleeps) == (2 if retried else 0)


@pytest.mark.parametrize(
    ("fault", "read_retried", "write_retried"),
    [
        (httpx.ConnectError("refused"), True, True),  # nothing was sent
        (httpx.ConnectTimeout("connect"), True, True),
        (httpx.PoolTimeout("pool"), True, True),
        (httpx.ReadTimeout("read"), True, False),  # it may have run
        (httpx.WriteTimeout("write"), True, False),
        (httpx.RemoteProtocolError("reset"), True, False),
    ],
)
async def test_which_network_faults_are_retried(
    router: respx.MockRouter,
    make: Callable[..., Harness],
    fault: Exception,
    read_retried: bool,
    write_retried: bool,
) -> None:
    reads = router.post("/rpc/hybrid_search").mock(side_effect=[fault, ok([])])
    ddl = router.post("/rpc/finish_bulk_load").mock(side_effect=[fault, ok(True)])
    harness = make()

    if read_retried:
        assert await harness.rpc("hybrid_search", {"query_text": "q", "query_embedding": QUERY}) == []
    else:
        await harness.fails("hybrid_search", {})
    if write_retried:
        assert await harness.rpc("finish_bulk_load", {}) is True
    else:
        caught = await harness.fails("finish_bulk_load", {})
        assert isinstance(caught, BackendUnavailableError)
        assert "may still have run" in str(caught)

    assert reads.call_count == (2 if read_retried else 1)
    assert ddl.call_count == (2 if write_retried else 1)


async def test_backoff_grows_exponentially_with_jitter(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    route = router.post("/rpc/match_documents").mock(side_effect=replay("proxy_503_text"))
    harness = make(max_attempts=5, backoff_base=0.1, backoff_max=0.5)

    caught = await harness.fails("match_documents", {"query_embedding": QUERY})

    assert isinstance(caught, BackendUnavailableError)
    assert route.call_count == 5
    caps = [0.1, 0.2, 0.4, 0.5]  # base * 2**n, capped at backoff_max
    assert len(harness.sleeps) == 4
    for slept, cap in zip(harness.sleeps, caps, strict=True):
        assert cap / 2 <= slept <= cap


async def test_a_retry_that_succeeds_returns_the_result(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    route = router.post("/rpc/delete_documents").mock(
        side_effect=[
            recorded("proxy_504_html"),
            recorded("PGRST003_pool_timeout"),
            ok([{"id": 3, "external_id": "c"}]),
        ]
    )
    harness = make()

    result = await harness.rpc("delete_documents", {"external_ids": ["c"]})

    assert result == [{"id": 3, "external_id": "c"}]
    assert route.call_count == 3
    assert [body_of(route, i) for i in range(3)] == [
        {"external_ids": ["c"]}
    ] * 3  # the same request each time


async def test_retry_after_is_honoured(router: respx.MockRouter, make: Callable[..., Harness]) -> None:
    router.post("/rpc/count_documents").mock(side_effect=[recorded("gateway_429_rate_limited"), ok(5)])
    harness = make(backoff_max=10.0)

    assert await harness.rpc("count_documents", {}) == 5
    assert harness.sleeps == [1.0]


async def test_408_is_retried_and_other_4xx_are_not(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    timeout = router.post("/rpc/store_stats").mock(
        side_effect=[httpx.Response(408, text="Request Timeout"), ok({})]
    )
    conflict = router.post("/rpc/get_documents").mock(
        return_value=httpx.Response(409, json={"code": "23505", "message": "dup"})
    )
    harness = make()

    assert await harness.rpc("store_stats", {}) == {}
    await harness.fails("get_documents", {})

    assert timeout.call_count == 2
    assert conflict.call_count == 1


async def test_max_attempts_one_never_retries(router: respx.MockRouter, make: Callable[..., Harness]) -> None:
    route = router.post("/rpc/match_documents").mock(side_effect=httpx.ConnectError("refused"))
    harness = make(max_attempts=1)

    await harness.fails("match_documents", {})

    assert route.call_count == 1
    assert harness.sleeps == []


async def test_retry_logs_never_contain_the_key_or_jwt(
    router: respx.MockRouter, make: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    router.post("/rpc/match_documents").mock(side_effect=[recorded("PGRST000_database_connection"), ok([])])

    with caplog.at_level(logging.DEBUG):
        await make().rpc("match_documents", {"query_embedding": QUERY})

    assert "rpc match_documents attempt 1 of 3 failed (BackendUnavailableError" in caplog.text
    for secret in (ANON_KEY, USER_JWT, ANON_KEY.split(".")[2], USER_JWT.split(".")[1]):
        assert secret not in caplog.text


# ------------------------------------------------------------------------------------------------
# Identity


async def test_fingerprint_is_the_users_identity_not_the_token(make: Callable[..., Harness]) -> None:
    harness = make()

    fingerprint = harness.transport.identity_fingerprint

    # The Postgres transport's label for the same claims (all but exp: a refreshed token keeps it).
    assert fingerprint == Identity.user(USER_A, aud="authenticated").fingerprint()
    assert USER_JWT not in fingerprint
    assert ANON_KEY not in fingerprint


async def test_fingerprint_follows_the_token_that_goes_out(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    route = router.post("/rpc/count_documents").mock(return_value=ok(1))
    harness = make()
    before = harness.transport.identity_fingerprint

    harness.client.postgrest.auth(USER_B_JWT)  # e.g. the app switched user
    await harness.rpc("count_documents", {})

    assert sent(route).headers["authorization"] == f"Bearer {USER_B_JWT}"
    assert harness.transport.identity_fingerprint == Identity.user(USER_B, aud="authenticated").fingerprint()
    assert harness.transport.identity_fingerprint != before


async def test_a_sign_in_after_construction_is_followed(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    """supabase-py rebuilds its PostgREST client (and HTTP session) on every auth event."""
    route = router.post("/rpc/count_documents").mock(
        side_effect=[ok(1), recorded("gateway_401_invalid_api_key")]
    )
    harness = make(default_session=True)
    assert await harness.rpc("count_documents", {}) == 1
    first_session = harness.client.postgrest.session

    harness.client._listen_to_auth_events("SIGNED_IN", SimpleNamespace(access_token=USER_B_JWT))
    caught = await harness.fails("count_documents", {})

    assert harness.client.postgrest.session is not first_session
    assert sent(route).headers["authorization"] == f"Bearer {USER_B_JWT}"
    assert harness.transport.identity_fingerprint == Identity.user(USER_B, aud="authenticated").fingerprint()
    assert isinstance(caught, AuthError)  # the status is still observed on the new session
    assert caught.code == "401"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_fingerprint_of_keys(kind: str) -> None:
    cls: Any = PostgrestTransport if kind == "sync" else AsyncPostgrestTransport
    service = cls(url=URL, key=SERVICE_KEY)
    anon = cls(url=URL, key=ANON_KEY)
    secret = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz"
    opaque = cls(url=URL, key=secret)
    other = cls(url=URL, key=secret + "x")

    # Every claim but exp/iat: a key's iss and ref are part of its label.
    key_claims = {"iss": "supabase", "ref": "test"}
    service_label = Identity("service_role", {**key_claims, "role": "service_role"}).fingerprint()
    assert service.identity_fingerprint == service_label
    assert anon.identity_fingerprint == Identity("anon", {**key_claims, "role": "anon"}).fingerprint()
    assert len(opaque.identity_fingerprint) == 32
    assert secret not in opaque.identity_fingerprint
    assert opaque.identity_fingerprint != other.identity_fingerprint
    assert opaque.identity_fingerprint not in {service.identity_fingerprint, anon.identity_fingerprint}


# ------------------------------------------------------------------------------------------------
# Construction, timeouts, closing


async def test_client_built_from_url_and_key(router: respx.MockRouter) -> None:
    route = router.post("/rpc/count_documents").mock(return_value=ok(0))
    sync = PostgrestTransport(url=URL, key=SERVICE_KEY, timeout=2.5)
    asynchronous = AsyncPostgrestTransport(url=URL, key=SERVICE_KEY, timeout=httpx.Timeout(7.0, connect=1.5))

    assert sync.rpc("count_documents", {}) == 0
    assert await asynchronous.rpc("count_documents", {}) == 0

    first, second = sent(route, 0), sent(route, 1)
    for request in (first, second):
        assert request.headers["apikey"] == SERVICE_KEY
        assert request.headers["authorization"] == f"Bearer {SERVICE_KEY}"
    # A fractional timeout survives (supabase-py's postgrest_client_timeout would truncate it to 0).
    assert first.extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert second.extensions["timeout"] == {"connect": 1.5, "read": 7.0, "write": 7.0, "pool": 7.0}
    sync.close()
    await asynchronous.aclose()


async def test_default_timeout_is_ours_not_supabase_pys_120_s(router: respx.MockRouter) -> None:
    route = router.post("/rpc/count_documents").mock(return_value=ok(0))

    with PostgrestTransport(url=URL, key=ANON_KEY) as transport:
        transport.rpc("count_documents", {})

    assert sent(route).extensions["timeout"] == {"connect": 10.0, "read": 60.0, "write": 60.0, "pool": 60.0}


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"url": URL},
        {"key": ANON_KEY},
        {"url": "ftp://supa.test", "key": ANON_KEY},
        {"url": URL, "key": ANON_KEY, "max_attempts": 0},
        {"url": URL, "key": ANON_KEY, "backoff_base": -1},
    ],
)
@pytest.mark.parametrize("cls", [PostgrestTransport, AsyncPostgrestTransport])
async def test_bad_construction_is_a_configuration_error(cls: Any, arguments: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        cls(**arguments)


async def test_client_and_timeout_or_wrong_client_kind_are_refused() -> None:
    sync_client = Client(URL, ANON_KEY)
    async_client = AsyncClient(URL, ANON_KEY)

    with pytest.raises(ConfigurationError, match="timeout"):
        PostgrestTransport(sync_client, timeout=5)
    with pytest.raises(ConfigurationError, match="AsyncPostgrestTransport"):
        PostgrestTransport(async_client)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="PostgrestTransport"):
        AsyncPostgrestTransport(sync_client)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="schema public"):
        PostgrestTransport(Client(URL, ANON_KEY, ClientOptions(schema="app")))


async def test_closing_leaves_the_apps_own_client_open(
    router: respx.MockRouter, make: Callable[..., Harness]
) -> None:
    router.post("/rpc/count_documents").mock(return_value=ok(1))
    harness = make(default_session=True)
    await harness.rpc("count_documents", {})

    if harness.kind == "sync":
        harness.transport.close()
    else:
        await harness.transport.aclose()

    assert not harness.client.postgrest.session.is_closed
    caught = await harness.fails("count_documents", {})
    assert isinstance(caught, ConfigurationError)


async def test_closing_a_built_client_closes_its_connections() -> None:
    sync = PostgrestTransport(url=URL, key=ANON_KEY)
    asynchronous = AsyncPostgrestTransport(url=URL, key=ANON_KEY)

    sync.close()
    await asynchronous.aclose()

    assert sync._client.postgrest.session.is_closed
    assert asynchronous._client.postgrest.session.is_closed


async def test_transports_satisfy_the_protocols(make: Callable[..., Harness]) -> None:
    harness = make()
    assert isinstance(harness.transport, Transport if harness.kind == "sync" else AsyncTransport)
