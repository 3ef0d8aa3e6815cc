"""The vector index never stays missing (issue 11, part 1; decision 0012), with real faults.

* ``begin_bulk_load`` drops the index only for a load that dwarfs the stored rows, sized by records;
* a bulk load whose owner is gone is finished by whoever comes next: a client SIGKILLed mid-load (the
  next write rebuilds), Postgres SIGKILLed mid-load (``local start`` rebuilds), while a live load in
  another session is left alone;
* with the outbox on, a rebuild that fails because the backend died does not hide the queued rows.

Processes are stopped at known points by blocking reads (a pipe, a FIFO), not timers; killed
processes and backends are awaited through pidfds.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import pytest

from supa_vectors import PostgresTransport, VectorStore
from supa_vectors._core.upsert import EMBED_BATCH_SIZE, MAX_ROWS_PER_REQUEST
from supa_vectors.local import LocalStack
from supa_vectors.migrate import migrate
from tests.conftest import REPO_ROOT, FakeEmbedder, bulk_load_min_rows
from tests.test_migrate import rows, scratch_database, write_json

INDEX = "public.embeddings_embedding_hnsw_idx"
# Embedder calls per written chunk: the upsert flow embeds a full chunk 64 texts at a time.
CALLS_PER_CHUNK = -(-MAX_ROWS_PER_REQUEST // EMBED_BATCH_SIZE)


def index_oid(url: str) -> int | None:
    (oid,) = rows(url, f"select to_regclass('{INDEX}')::oid")[0]
    return None if oid is None else int(oid)


def vector_index(url: str) -> bool:
    return bool(rows(url, "select public.store_stats()->'vector_index'")[0][0])


def docs(count: int, prefix: str = "d") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "content": f"document {i} about cats and dogs {prefix}"} for i in range(count)
    ]


def wait_for_exit(pid: int) -> None:
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([descriptor], [], [], 60)
        assert readable, f"process {pid} did not exit"
    finally:
        os.close(descriptor)


def sdk_backends(url: str) -> list[int]:
    """The backends of SDK connections (application_name 'supa-vectors') to this database."""
    return [
        int(r[0])
        for r in rows(
            url,
            "select pid from pg_stat_activity"
            " where application_name = 'supa-vectors' and datname = current_database()",
        )
    ]


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "bulkindex") as url:
        yield url


@pytest.fixture
def empty_db(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("truncate public.documents, public.ingest_runs restart identity cascade")
        conn.execute("select public.finish_bulk_load()")
    return db


# --------------------------------------------------------------------------------------------------
# When the index is dropped at all


def test_the_index_is_dropped_only_for_a_load_that_dwarfs_the_store(empty_db: str) -> None:
    with psycopg.connect(empty_db) as conn:  # one transaction, rolled back
        assert conn.execute("select public.begin_bulk_load(999)").fetchone() == (False,)  # below 1,000
        conn.execute(
            "insert into public.documents (external_id, content)"
            " select 'x' || i, 'text ' || i from generate_series(1, 200) i"
        )
        conn.execute(
            "insert into public.embeddings (document_id, model, embedding)"
            " select id, 'm', array_fill(0.5, array[384])::real[]::extensions.vector from public.documents"
        )
        # 200 stored: a load must bring 100x as many rows to be worth losing the index for.
        assert conn.execute("select public.begin_bulk_load(19999)").fetchone() == (False,)
        assert conn.execute(f"select to_regclass('{INDEX}') is not null").fetchone() == (True,)
        assert conn.execute("select public.begin_bulk_load(20000)").fetchone() == (True,)
        assert conn.execute(f"select to_regclass('{INDEX}')").fetchone() == (None,)
        state = conn.execute("select public.store_stats()->'bulk_load'").fetchone()
        assert state is not None
        assert state[0] == state[0] | {"expected_rows": 20000, "abandoned": False}
        conn.rollback()


def test_a_finished_load_leaves_statistics_the_planner_can_use(empty_db: str) -> None:
    """Without them the planner takes the freshly loaded embeddings for 0.5% of their rows and ranks
    every row instead of walking the index just built, until autovacuum gets round to the tables."""
    rows = 3000
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute("select public.begin_bulk_load(%s)", [rows]).fetchone() == (True,)
        conn.execute(
            "insert into public.documents (external_id, content)"
            " select 'x' || i, 'text ' || i from generate_series(1, %s) i",
            [rows],
        )
        conn.execute(
            "insert into public.embeddings (document_id, model, embedding)"
            " select id, 'm', array_fill(0.5, array[384])::real[]::extensions.vector from public.documents"
        )
        assert conn.execute("select public.finish_bulk_load()").fetchone() == (True,)
        for table, column, value in (("embeddings", "model", "'m'"), ("documents", "owner_id", "null")):
            op = "=" if value != "null" else "is"
            plan = conn.execute(
                f"explain (format json) select 1 from public.{table} where {column} {op} {value}"
            ).fetchone()
            assert plan is not None
            assert plan[0][0]["Plan"]["Plan Rows"] == rows, (table, plan[0][0]["Plan"]["Plan Rows"])


def test_a_live_load_is_left_alone_and_an_abandoned_one_is_finished(empty_db: str) -> None:
    loader = psycopg.connect(empty_db, autocommit=True)
    try:
        assert loader.execute("select public.begin_bulk_load(5000)").fetchone() == (True,)
        (pid,) = loader.execute("select pg_backend_pid()").fetchone() or (0,)
        with psycopg.connect(empty_db, autocommit=True) as other:
            # Another writer neither rebuilds under the live load nor drops again.
            assert other.execute("select public.restore_vector_index()").fetchone() == (False,)
            assert other.execute("select public.begin_bulk_load(5000)").fetchone() == (False,)
            assert index_oid(empty_db) is None
            # The loader's own session may ask again: its load is still open.
            assert loader.execute("select public.begin_bulk_load(5000)").fetchone() == (True,)
            loader.close()
            wait_for_exit(pid)
            stats = other.execute("select public.store_stats()").fetchone()
            assert stats is not None
            assert stats[0]["bulk_load"]["abandoned"] is True
            assert other.execute("select public.restore_vector_index()").fetchone() == (True,)
            stats = other.execute("select public.store_stats()").fetchone()
            assert stats is not None
            assert (stats[0]["vector_index"], stats[0]["bulk_load"]) == (True, None)
    finally:
        loader.close()


# --------------------------------------------------------------------------------------------------
# A client killed mid-load: the next write rebuilds

CLIENT = r"""
import sys
from supa_vectors import PostgresTransport, VectorStore
from supa_vectors._core.upsert import EMBED_BATCH_SIZE, MAX_ROWS_PER_REQUEST
from tests.conftest import FakeEmbedder

class Gated(FakeEmbedder):
    # Says so and blocks forever once the first chunk is written (the index dropped).
    def embed(self, texts):
        if self.calls == int(sys.argv[3]):
            print("gate", flush=True)
            sys.stdin.read()
        return super().embed(texts)

url, count = sys.argv[1], int(sys.argv[2])
store = VectorStore(PostgresTransport(url), embedder=Gated())
store.upsert([{"id": f"k{i}", "content": f"document {i} about cats"} for i in range(count)], bulk=True)
"""


def test_a_client_killed_mid_load_leaves_the_index_to_the_next_write(empty_db: str) -> None:
    assert sdk_backends(empty_db) == []
    with bulk_load_min_rows(empty_db, 100):
        child = subprocess.Popen(
            [sys.executable, "-c", CLIENT, empty_db, "1200", str(CALLS_PER_CHUNK)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "gate"
            assert vector_index(empty_db) is False  # mid-load, index dropped
            backends = sdk_backends(empty_db)
            assert backends
            child.kill()
            child.wait()
            for pid in backends:
                wait_for_exit(pid)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    loaded = rows(empty_db, "select count(*) from public.embeddings")[0][0]
    assert 0 < loaded < 1200
    assert vector_index(empty_db) is False

    with VectorStore(PostgresTransport(empty_db), embedder=FakeEmbedder()) as store:
        assert [r.status for r in store.upsert([{"id": "next", "content": "the next write"}])] == ["inserted"]
        stats = store.stats()
    assert stats.vector_index is True
    assert stats.bulk_load is None


# --------------------------------------------------------------------------------------------------
# Postgres killed mid-load: local start rebuilds; the outbox's rows are reported, not hidden


class KillsTheServer(FakeEmbedder):
    """Once two chunks are written (the index dropped), the database dies under the load."""

    def __init__(self, stack: LocalStack, url: str) -> None:
        super().__init__()
        self.stack, self.url = stack, url

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.calls == 2 * CALLS_PER_CHUNK:
            assert vector_index(self.url) is False
            postmaster = self.stack.status().pid
            assert postmaster is not None
            backends = [
                int(r[0])
                for r in rows(
                    self.url, "select pid from pg_stat_activity where backend_type = 'client backend'"
                )
            ]
            os.kill(postmaster, signal.SIGKILL)
            for pid in [postmaster, *backends]:
                wait_for_exit(pid)
        return super().embed(texts)


def test_postgres_killed_mid_load_reports_queued_rows_and_local_start_restores_the_index(
    own_stack: LocalStack, tmp_path: Path
) -> None:
    url = own_stack.start()
    count = 3 * MAX_ROWS_PER_REQUEST  # three chunks; the index is dropped (the store is empty)
    store = VectorStore(
        PostgresTransport(url, timeout=2),
        embedder=KillsTheServer(own_stack, url),
        cache_dir=tmp_path / "cache",
        outbox=True,
    )
    with store:
        results = store.upsert(docs(count), bulk=True)  # before: BackendUnavailableError from the cleanup
        statuses = [r.status for r in results]
        assert len(results) == count
        assert statuses.count("inserted") == 2 * MAX_ROWS_PER_REQUEST
        assert statuses.count("queued") == MAX_ROWS_PER_REQUEST
        assert len(store.pending()) > 0

        assert own_stack.start() == url  # restarts, and finishes the load the crash cut short
        assert vector_index(url) is True
        assert rows(url, "select count(*) from supa_vectors_internal.bulk_load") == [(0,)]

        flushed = store.flush()
        assert (flushed.upserted, flushed.remaining, flushed.rejected) == (MAX_ROWS_PER_REQUEST, 0, ())
        stats = store.stats()
    assert stats.vector_index is True
    assert stats.embeddings == count


# --------------------------------------------------------------------------------------------------
# migrate: sized by records, not bytes


def test_migrate_of_a_few_records_beside_an_oversize_file_keeps_the_index(
    empty_db: str, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    write_json(source / "a.json", docs(3, "small"))
    # One record far over max_content_bytes: rejected, yet 1.1 MB of the source's bytes.
    write_json(source / "huge.json", [{"id": "huge", "content": "x" * 1_100_000}])
    before = index_oid(empty_db)
    assert before is not None
    for attempt in range(2):  # the run, then a rerun of the unchanged records
        with VectorStore.from_url(empty_db, embedder=FakeEmbedder()) as store:
            report = migrate([source], store, state_dir=tmp_path / f"state{attempt}")
        assert report.bulk_load is False
        assert report.counts.landed == 3
        assert index_oid(empty_db) == before  # never dropped and rebuilt
