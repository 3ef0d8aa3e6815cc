"""The direct Postgres transport against the real database: shapes, identity, errors, round trips."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import pq

from supa_vectors.errors import (
    AuthError,
    BackendUnavailableError,
    DocumentError,
    FilterError,
    InvalidInputError,
    NotFoundError,
    SupaVectorsError,
)
from supa_vectors.transport.base import AsyncTransport, Transport
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
from tests.conftest import USER_A, USER_B

DIM = 384


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def docs(*ids: str) -> list[dict[str, Any]]:
    return [{"external_id": i, "content": f"content of {i}", "metadata": {"id": i}} for i in ids]


@pytest.fixture
def transport(clean_url: str) -> Iterator[PostgresTransport]:
    with PostgresTransport(clean_url) as transport:
        yield transport


def test_implements_the_protocols(transport: PostgresTransport, clean_url: str) -> None:
    assert isinstance(transport, Transport)
    assert isinstance(AsyncPostgresTransport(clean_url), AsyncTransport)
    assert transport.identity == Identity.service()
    assert transport.identity_fingerprint == Identity.service().fingerprint()
    user = PostgresTransport(clean_url, identity=Identity.user(USER_A))
    with user:
        assert user.identity_fingerprint != transport.identity_fingerprint


def test_rows_are_dicts_vectors_are_float32_arrays_in_binary(transport: PostgresTransport) -> None:
    vectors = [unit(1), unit(2)]
    rows = transport.rpc("bulk_upsert", {"documents": docs("a", "b"), "embeddings": vectors})
    assert [(r["ordinal"], r["external_id"], r["status"]) for r in rows] == [
        (1, "a", "inserted"),
        (2, "b", "inserted"),
    ]
    listed = transport.rpc("list_documents", {"with_embeddings": True})
    assert [r["external_id"] for r in listed] == ["a", "b"]
    for row, vector in zip(listed, vectors, strict=True):
        assert isinstance(row["embedding"], np.ndarray)
        assert row["embedding"].dtype == np.float32
        np.testing.assert_array_equal(row["embedding"], vector)  # binary both ways: bit-exact
        assert row["metadata"] == {"id": row["external_id"]}
        assert row["owner_id"] is None
    hits = transport.rpc("match_documents", {"query_embedding": vectors[1], "match_count": 1})
    assert hits[0]["external_id"] == "b"
    assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-6)


def test_scalar_rpcs_return_the_scalar(transport: PostgresTransport) -> None:
    assert transport.rpc("count_documents", {}) == 0
    settings = transport.rpc("store_settings", {})
    assert settings["embedding_dimension"] == DIM
    assert transport.rpc("store_stats", {})["documents"] == 0


def test_embeddings_may_leave_out_unchanged_documents(transport: PostgresTransport) -> None:
    transport.rpc("bulk_upsert", {"documents": docs("a"), "embeddings": [unit(1)]})
    rows = transport.rpc(
        "bulk_upsert",
        {"documents": [*docs("a"), *docs("b")], "embeddings": [None, unit(2)]},
    )
    assert [r["status"] for r in rows] == ["unchanged", "inserted"]
    listed = transport.rpc("list_documents", {"with_embeddings": True})
    np.testing.assert_array_equal(listed[0]["embedding"], unit(1))


def test_calls_run_as_the_identity_and_nothing_leaks_into_the_pool(clean_url: str) -> None:
    with PostgresTransport(clean_url, identity=Identity.user(USER_A), min_size=1, max_size=1) as alice:
        rows = alice.rpc("bulk_upsert", {"documents": docs("mine"), "embeddings": [unit(3)]})
        assert rows[0]["status"] == "inserted"
        (row,) = alice.rpc("get_documents", {"external_ids": ["mine"]})
        assert row["owner_id"] == USER_A  # uuid as a string, as PostgREST returns it
        with alice._pool.connection() as conn:  # the same (only) pooled connection
            state = conn.execute(
                "select current_user as role, current_setting('request.jwt.claims', true) as claims"
            ).fetchone()
        assert state == {"role": "postgres", "claims": ""}
    with PostgresTransport(clean_url, identity=Identity.user(USER_B)) as bob:
        assert bob.rpc("get_documents", {"external_ids": ["mine"]}) == []


def test_one_round_trip_per_call(clean_url: str) -> None:
    """Identity and call go out together behind one Sync (pipeline mode)."""
    with (
        PostgresTransport(clean_url, identity=Identity.user(USER_A), min_size=1, max_size=1) as transport,
        tempfile.TemporaryFile("w+") as trace,
    ):
        transport.rpc("count_documents", {})  # opens the pool (and connects once to check the server)
        with transport._pool.connection() as conn:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        transport.rpc("count_documents", {})
        transport.rpc("get_documents", {"external_ids": ["x"]})
        with transport._pool.connection() as conn:
            conn.pgconn.untrace()
        trace.flush()
        os.lseek(trace.fileno(), 0, os.SEEK_SET)
        fields = [line.split("\t") for line in trace.read().splitlines()]
    sent = [f[2].strip() for f in fields if len(f) > 2 and f[0] == "F"]
    assert sent.count("Sync") == 2  # one per call
    assert sent.count("Execute") == 4  # set identity + call, twice


def test_database_errors_map_to_the_tree(transport: PostgresTransport) -> None:
    with pytest.raises(FilterError, match="unknown operator"):
        transport.rpc("count_documents", {"filter": {"a": {"$bogus": 1}}})
    with pytest.raises(NotFoundError):
        transport.rpc("no_such_rpc", {})
    with pytest.raises(InvalidInputError, match="limit"):
        transport.rpc("match_documents", {"query_embedding": unit(1), "match_count": 5000})
    with pytest.raises(DocumentError) as caught:
        transport.rpc(
            "bulk_upsert",
            {
                "documents": [*docs("ok"), {"external_id": "empty", "content": "  "}],
                "embeddings": [unit(1), None],
            },
        )
    assert (caught.value.index, caught.value.document_id) == (1, "empty")
    with pytest.raises(DocumentError) as caught:
        transport.rpc("bulk_upsert", {"documents": [{"external_id": "nul", "content": "a\x00b"}]})
    assert caught.value.index == 0
    nan = np.full(DIM, np.nan, dtype=np.float32)
    with pytest.raises(InvalidInputError):
        transport.rpc("bulk_upsert", {"documents": docs("nan"), "embeddings": [nan]})
    with pytest.raises(InvalidInputError):
        transport.rpc("match_documents", {"query_embedding": np.ones((2, DIM), dtype=np.float32)})
    with pytest.raises(InvalidInputError):
        transport.rpc("count_documents", {"filter": {"x": object()}})
    with pytest.raises(InvalidInputError):
        transport.rpc("count_documents; drop table documents", {})
    assert transport.rpc("count_documents", {}) == 0  # nothing was written by any of the above


def test_privileges_map_to_auth_error(clean_url: str) -> None:
    with PostgresTransport(clean_url, identity=Identity.user(USER_A)) as alice, pytest.raises(AuthError):
        alice.rpc("begin_bulk_load", {"expected_rows": 10})
    with PostgresTransport(clean_url, identity=Identity.anonymous()) as anon, pytest.raises(AuthError):
        anon.rpc("count_documents", {})


def test_session_user_calls_skip_the_identity_switch(transport: PostgresTransport) -> None:
    with pytest.raises(AuthError):  # the service role is not the table owner
        transport.rpc("begin_bulk_load", {"expected_rows": 1000})
    assert transport.rpc_as_session_user("begin_bulk_load", {"expected_rows": 1000}) is True
    assert transport.rpc("store_stats", {})["vector_index"] is False
    assert transport.rpc_as_session_user("finish_bulk_load", {}) is True
    assert transport.rpc("store_stats", {})["vector_index"] is True


def test_unreachable_and_closed_transports_raise_unavailable(clean_url: str) -> None:
    down = PostgresTransport("postgresql://postgres@127.0.0.1:1/postgres", timeout=0.5)
    with down, pytest.raises(BackendUnavailableError):
        down.rpc("count_documents", {})
    closed = PostgresTransport(clean_url)
    closed.close()
    with pytest.raises(BackendUnavailableError):
        closed.rpc("count_documents", {})


def test_no_psycopg_exception_escapes(transport: PostgresTransport) -> None:
    transport.rpc("bulk_upsert", {"documents": docs("a"), "embeddings": [unit(1)]})
    failures: list[BaseException] = []
    calls: list[tuple[str, dict[str, Any]]] = [
        ("count_documents", {"filter": "not an object"}),
        ("list_documents", {"page_size": 0}),
        ("get_documents", {"external_ids": [1, 2]}),
        ("match_documents", {"query_embedding": np.zeros(3, dtype=np.float32)}),
    ]
    for name, params in calls:
        with pytest.raises(SupaVectorsError) as caught:
            transport.rpc(name, params)
        failures.append(caught.value)
    assert not any(isinstance(f, psycopg.Error) for f in failures)


async def test_async_transport(clean_url: str) -> None:
    async with AsyncPostgresTransport(clean_url, identity=Identity.user(USER_A)) as alice:
        rows = await alice.rpc("bulk_upsert", {"documents": docs("a"), "embeddings": [unit(4)]})
        assert rows[0]["status"] == "inserted"
        listed = await alice.rpc("list_documents", {"with_embeddings": True})
        np.testing.assert_array_equal(listed[0]["embedding"], unit(4))
        assert listed[0]["owner_id"] == USER_A
        assert await alice.rpc("count_documents", {"filter": {"id": "a"}}) == 1
        with pytest.raises(FilterError):
            await alice.rpc("count_documents", {"filter": {"$nope": 1}})
    async with AsyncPostgresTransport(clean_url, identity=Identity.anonymous()) as anon:
        with pytest.raises(AuthError):
            await anon.rpc("count_documents", {})
    async with AsyncPostgresTransport(clean_url) as service:
        assert await service.rpc_as_session_user("finish_bulk_load", {}) is False  # index exists
    with pytest.raises(BackendUnavailableError):
        await service.rpc("count_documents", {})  # closed
    down = AsyncPostgresTransport("postgresql://postgres@127.0.0.1:1/postgres", timeout=0.5)
    with pytest.raises(BackendUnavailableError):
        await down.rpc("count_documents", {})
    await down.aclose()
