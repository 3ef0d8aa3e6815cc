"""The HNSW index holds half-precision vectors; the table and every returned similarity stay full
precision (migration 20261203000900, decision 0027).

Against the real server: similarities agree with float64 to 1e-6 (half precision alone is ~1e-3 off),
a vector whose components exceed halfvec's range is stored and found, and the migration swaps the
index of a loaded store, keeps its name, leaves a live bulk load alone, and rolls back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo
from psycopg.types.json import Json

from supa_vectors.errors import LocalStackError
from supa_vectors.local import applied_versions, apply_migrations, rollback_last
from supa_vectors.transport.identity import Identity
from tests.conftest import DIM, act_as
from tests.test_migrate import scratch_database

INDEX = "public.embeddings_embedding_hnsw_idx"
VERSION = "20261203000900"


def connect(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url)
    register_vector_info(conn, TypeInfo.fetch(conn, "extensions.vector"))
    return conn


def put(conn: psycopg.Connection, vectors: np.ndarray, prefix: str = "d") -> None:
    docs = [{"external_id": f"{prefix}{i}", "content": f"document {i}"} for i in range(len(vectors))]
    for start in range(0, len(docs), 1000):
        conn.execute(
            "select count(*) from public.bulk_upsert(%s, %b)",
            [Json(docs[start : start + 1000]), list(vectors[start : start + 1000])],
        )


def search(conn: psycopg.Connection, query: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
    rows = conn.execute(
        "select external_id, similarity"
        " from public.match_documents(query_embedding => %b, match_count => %s)",
        [query, k],
    ).fetchall()
    return [(r[0], float(r[1])) for r in rows]


def index_definition(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "select pg_get_indexdef(to_regclass(%s)) where to_regclass(%s) is not null", [INDEX, INDEX]
    ).fetchone()
    return None if row is None else str(row[0])


def hnsw_indexes(conn: psycopg.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "select c.relname from pg_index i join pg_class c on c.oid = i.indexrelid"
            " join pg_am a on a.oid = c.relam where i.indrelid = 'public.embeddings'::regclass"
            " and a.amname = 'hnsw'"
        ).fetchall()
    ]


@pytest.fixture
def store(clean_url: str) -> Iterator[psycopg.Connection]:
    with connect(clean_url) as conn:
        act_as(conn, Identity.service())
        yield conn
        conn.rollback()


def test_the_index_is_half_precision_and_similarities_are_not(store: psycopg.Connection) -> None:
    definition = index_definition(store)
    assert definition is not None
    assert "halfvec_cosine_ops" in definition
    assert "l2_normalize" in definition
    rng = np.random.default_rng(5)
    # Lengths from 0.01 to 100: cosine ignores them, and the stored vectors keep them.
    vectors = (rng.standard_normal((600, DIM)) * rng.uniform(0.01, 100, (600, 1))).astype(np.float32)
    put(store, vectors)
    unit = vectors.astype(np.float64) / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    worst = 0.0
    for q in rng.standard_normal((12, DIM)).astype(np.float32):
        exact = unit @ (q / np.linalg.norm(q))
        found = search(store, q)
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
        for external_id, similarity in found:
            worst = max(worst, abs(similarity - exact[int(external_id[1:])]))
        # The ten best by the full-precision distance, not by the rounded one.
        assert [e for e, _ in found] == [f"d{i}" for i in np.argsort(-exact, kind="stable")[:10]]
    assert worst < 1e-6, worst


def test_a_vector_beyond_half_precisions_range_is_stored_and_found(store: psycopg.Connection) -> None:
    """halfvec ends at 65504; the index normalises before it converts, so no write fails on it."""
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((50, DIM)).astype(np.float32)
    vectors[7] *= 1e6  # components around 1e6
    put(store, vectors)
    stored = store.execute(
        "select e.embedding from public.embeddings e join public.documents d on d.id = e.document_id"
        " where d.external_id = 'd7'"
    ).fetchone()
    assert stored is not None
    assert np.array_equal(stored[0].to_numpy(), vectors[7])
    assert search(store, vectors[7], k=1)[0][0] == "d7"


@pytest.fixture
def before_halfvec(database_url: str) -> Iterator[str]:
    """A scratch store migrated up to, not including, 20261203000900."""
    with scratch_database(database_url, "halfvec") as url:
        undone = []
        while VERSION not in undone:
            version = rollback_last(url)
            assert version is not None
            undone.append(version)
        yield url


def test_the_migration_swaps_a_loaded_stores_index_and_the_rollback_swaps_it_back(
    before_halfvec: str,
) -> None:
    url = before_halfvec
    rng = np.random.default_rng(8)
    vectors = rng.standard_normal((1500, DIM)).astype(np.float32)
    queries = vectors[rng.integers(0, 1500, 10)] + 0.1 * rng.standard_normal((10, DIM)).astype(np.float32)
    with connect(url) as conn:
        assert "vector_cosine_ops" in (index_definition(conn) or "")
        put(conn, vectors)
        conn.commit()
        before = [[e for e, _ in search(conn, q)] for q in queries]

    assert apply_migrations(url, migrator="builtin")[0] == VERSION
    with connect(url) as conn:
        assert "halfvec_cosine_ops" in (index_definition(conn) or "")
        assert hnsw_indexes(conn) == ["embeddings_embedding_hnsw_idx"]
        valid = conn.execute("select indisvalid from pg_index where indexrelid = %s::regclass", [INDEX])
        assert valid.fetchone() == (True,)
        after = [[e for e, _ in search(conn, q)] for q in queries]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(after, before, strict=True)])
    assert overlap >= 0.95, overlap

    assert rollback_last(url) == VERSION
    with connect(url) as conn:
        assert "vector_cosine_ops" in (index_definition(conn) or "")
        assert hnsw_indexes(conn) == ["embeddings_embedding_hnsw_idx"]
        assert len(search(conn, queries[0])) == 10


def test_the_migration_leaves_a_live_bulk_load_alone(before_halfvec: str) -> None:
    """The index a live load dropped stays dropped; the load's finish builds the new definition."""
    url = before_halfvec
    with connect(url) as loader:
        loader.autocommit = True
        assert loader.execute("select public.begin_bulk_load(1000000)").fetchone() == (True,)
        assert index_definition(loader) is None
        apply_migrations(url, migrator="builtin")
        assert index_definition(loader) is None
        put(loader, np.random.default_rng(9).standard_normal((100, DIM)).astype(np.float32))
        assert loader.execute("select public.finish_bulk_load()").fetchone() == (True,)
        assert "halfvec_cosine_ops" in (index_definition(loader) or "")


def test_a_migration_killed_mid_build_leaves_the_store_as_it_was(before_halfvec: str) -> None:
    """The migration's backend is killed while its build waits behind an open write: everything it
    did (rename, function, setting) rolls back with it, and running it again finishes it."""
    url = before_halfvec
    rng = np.random.default_rng(10)
    vectors = rng.standard_normal((200, DIM)).astype(np.float32)
    with connect(url) as conn:
        put(conn, vectors)
        conn.commit()
    failures: list[BaseException] = []

    def migrate() -> None:
        try:
            apply_migrations(url, migrator="builtin")
        except BaseException as exc:  # handed to the test thread
            failures.append(exc)

    with psycopg.connect(url) as writer:
        writer.execute("lock table public.embeddings in row exclusive mode")  # as an open write does
        thread = threading.Thread(target=migrate)
        thread.start()
        deadline = time.monotonic() + 60

        def building_backend() -> int | None:
            # The writer's transaction stays open: clear its snapshot of pg_stat_activity each look.
            writer.execute("select pg_catalog.pg_stat_clear_snapshot()")
            row = writer.execute(
                "select pid from pg_stat_activity where wait_event_type = 'Lock'"
                " and datname = current_database() and query like '%lock_bulk_load%'"
            ).fetchone()
            return None if row is None else int(row[0])

        while (pid := building_backend()) is None:
            assert time.monotonic() < deadline, "the migration never reached its build"
            time.sleep(0.05)
        writer.execute("select pg_terminate_backend(%s)", [pid])
        thread.join()
        writer.rollback()
    assert len(failures) == 1
    assert isinstance(failures[0], LocalStackError)
    with connect(url) as conn:
        assert "vector_cosine_ops" in (index_definition(conn) or "")
        assert hnsw_indexes(conn) == ["embeddings_embedding_hnsw_idx"]
        setting = conn.execute("select 1 from public.metadata_global where key = 'index_build_memory'")
        assert setting.fetchone() is None
        assert search(conn, vectors[5], k=1)[0][0] == "d5"
    assert VERSION not in applied_versions(url)
    assert apply_migrations(url, migrator="builtin") == [VERSION]
    with connect(url) as conn:
        assert "halfvec_cosine_ops" in (index_definition(conn) or "")
        assert search(conn, vectors[5], k=1)[0][0] == "d5"
