"""store_rpc_stats and store_table_sizes (migration 20261203000100): the operator's view of how the
store's RPCs perform and how large it is, for service_role only, counting every role's calls."""

from __future__ import annotations

import json

import psycopg
import pytest

from supa_vectors import AsyncPostgresTransport, AsyncVectorStore, AuthError, VectorStore
from supa_vectors.cli import main
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgres import PostgresTransport
from tests.conftest import USER_A, FakeEmbedder, act_as


def rpc_stats(url: str) -> dict[str, tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        act_as(conn, Identity.service())
        rows = conn.execute("select * from public.store_rpc_stats()").fetchall()
    return {str(row[0]): row[1:] for row in rows}


def calls(stats: dict[str, tuple[object, ...]], rpc: str) -> int:
    return int(stats[rpc][0]) if rpc in stats else 0  # type: ignore[call-overload]


def test_every_roles_calls_are_counted_per_rpc(clean_url: str) -> None:
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off") as service:
        service.add([{"id": f"d{i}", "content": f"coffee note {i}"} for i in range(20)])
        before = rpc_stats(clean_url)
        for _ in range(3):
            service.search("coffee", k=5)
    user = Identity.user(USER_A)
    with VectorStore(
        PostgresTransport(clean_url, identity=user), embedder=FakeEmbedder(), cache="off"
    ) as store:
        for _ in range(2):
            store.search("coffee", k=5)
    after = rpc_stats(clean_url)
    assert calls(after, "match_documents") - calls(before, "match_documents") >= 5
    _, total_ms, mean_ms, p95_ms, max_ms, rows = after["match_documents"]
    assert 0 < mean_ms <= p95_ms <= max_ms  # type: ignore[operator]
    assert total_ms >= mean_ms  # type: ignore[operator]
    assert rows >= 5 * 5  # type: ignore[operator]


def test_table_sizes_cover_the_tables_and_the_vector_index(clean_url: str) -> None:
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off") as service:
        service.add([{"id": f"d{i}", "content": f"coffee note {i}"} for i in range(20)])
    with psycopg.connect(clean_url) as conn:
        act_as(conn, Identity.service())
        sizes = {
            row[0]: row[1:] for row in conn.execute("select * from public.store_table_sizes()").fetchall()
        }
    assert {"documents", "embeddings", "document_metadata", "metadata_global"} <= set(sizes)
    kind, table, size, _ = sizes["embeddings_embedding_hnsw_idx"]
    assert (kind, table) == ("index", "embeddings")
    assert size > 0  # type: ignore[operator]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize(
    "call",
    [
        "select * from public.store_rpc_stats()",
        "select * from public.store_table_sizes()",
        "select * from supa_vectors_internal.rpc_statement_stats()",
    ],
)
def test_only_the_service_role_may_read_them(conn: psycopg.Connection, role: str, call: str) -> None:
    act_as(conn, Identity.anonymous() if role == "anon" else Identity.user(USER_A))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(call)


def test_the_stores_and_the_cli_read_them(clean_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off") as service:
        service.add([{"id": "d1", "content": "coffee note"}])
        service.search("coffee", k=1)
        stats = {row.rpc: row for row in service.rpc_stats()}
        assert stats["match_documents"].calls >= 1
        assert any(size.relation == "embeddings_embedding_hnsw_idx" for size in service.table_sizes())
    user = Identity.user(USER_A)
    with (
        VectorStore(
            PostgresTransport(clean_url, identity=user), embedder=FakeEmbedder(), cache="off"
        ) as store,
        pytest.raises(AuthError),
    ):
        store.rpc_stats()
    assert main(["stats", "--json", "--database-url", clean_url]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["store"]["vector_index"] is True
    assert "match_documents" in {row["rpc"] for row in printed["rpcs"]}


async def test_the_async_store_reads_them_too(clean_url: str) -> None:
    async with AsyncVectorStore(
        AsyncPostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off"
    ) as store:
        assert any(size.table_name == "documents" for size in await store.table_sizes())
        assert isinstance(await store.rpc_stats(), list)
