"""Searches scale out to a streaming read replica through the Postgres transport (docs/operations/scaling.md).

A real standby of a real primary (``pg_basebackup -R``, streaming replication, hot standby), both
embedded Postgres 18 servers: the standby answers searches as the service role and as a signed-in
user (RLS holds there too) with what the primary answers, a write sent to it fails with a typed
error, and a write to the primary is searchable on the standby once the primary's commit returns
(``synchronous_commit = remote_apply``, so no waiting on a clock). PostgREST calls a volatile function
in a read-write transaction, which a standby refuses: the last test shows the refusal that makes
hosted read replicas accept only GET requests.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psycopg
import pytest

from supa_vectors import BackendError, PostgresTransport, VectorStore
from supa_vectors.local import LocalStack
from supa_vectors.local import server as local_server
from supa_vectors.transport.identity import Identity
from tests.conftest import DIM, USER_A, USER_B


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[str, str]]:
    """A primary of the module's own (in /tmp, for the server's OS user) and a standby of it."""
    primary_base = Path(tempfile.mkdtemp(prefix="supa-vectors-primary-", dir="/tmp"))
    primary_base.chmod(0o755)
    primary_stack = LocalStack(base_dir=primary_base)
    try:
        yield from with_replica(primary_stack.start())
    finally:
        try:
            primary_stack.stop()
        finally:
            shutil.rmtree(primary_base, ignore_errors=True)


def with_replica(primary: str) -> Iterator[tuple[str, str]]:
    with psycopg.connect(primary, autocommit=True) as conn:
        # Every commit waits until a standby has applied it: reads on the standby see it at once.
        conn.execute("alter system set synchronous_standby_names = '*'")
        conn.execute("select pg_reload_conf()")
    base = Path(tempfile.mkdtemp(prefix="supa-vectors-replica-", dir="/tmp"))
    base.chmod(0o755)
    replica = LocalStack(base_dir=base)
    try:
        user = local_server._server_os_user()
        pginstall = local_server._resolve_pginstall(base, user)
        replica._prepare_dirs(user)  # an empty data directory the server's OS user owns
        backup = local_server._run(
            [
                pginstall / "bin" / "pg_basebackup",
                *("-D", replica.data_dir, "-R", "-X", "stream"),
                *("-h", "127.0.0.1", "-p", str(urlsplit(primary).port), "-U", "postgres"),
            ],
            user=user,
            cwd=base,
            timeout=120,
        )
        assert backup.returncode == 0, backup.stderr
        # Launched, not started: `local start` would apply migrations, which a standby cannot take.
        yield primary, local_server._url(replica._launch(pginstall / "bin", user))
    finally:
        try:
            replica.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def documents(prefix: str, count: int, seed: int) -> list[dict[str, object]]:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return [
        {"id": f"{prefix}{i}", "content": f"{prefix} document {i}", "embedding": vectors[i]}
        for i in range(count)
    ]


def ids(store: VectorStore, query: np.ndarray) -> list[tuple[str, float]]:
    return [(r.id, round(r.similarity, 6)) for r in store.search(query, k=5)]


def test_a_standby_answers_searches_and_refuses_writes(primary_and_replica: tuple[str, str]) -> None:
    primary_url, replica_url = primary_and_replica
    with psycopg.connect(replica_url) as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
    queries = np.random.default_rng(3).standard_normal((5, DIM)).astype(np.float32)
    shared = documents("s", 40, seed=1)
    mine = documents("a", 10, seed=2)
    with (
        VectorStore(PostgresTransport(primary_url), cache="off") as primary,
        VectorStore(PostgresTransport(replica_url), cache="off") as replica,
        VectorStore(PostgresTransport(primary_url, identity=Identity.user(USER_A)), cache="off") as a,
        VectorStore(PostgresTransport(replica_url, identity=Identity.user(USER_A)), cache="off") as a_replica,
        VectorStore(PostgresTransport(replica_url, identity=Identity.user(USER_B)), cache="off") as b_replica,
    ):
        primary.upsert(shared)
        a.upsert(mine)  # the primary's commit returns once the standby has applied it
        for q in queries:
            assert ids(replica, q) == ids(primary, q)
            assert ids(a_replica, q) == ids(a, q)
            assert not any(r.id.startswith("a") for r in b_replica.search(q, k=50))
        assert a_replica.search(mine[3]["embedding"], k=1)[0].id == "a3"
        with pytest.raises(BackendError):
            a_replica.upsert(documents("x", 1, seed=4))
        assert all(not r.id.startswith("x") for r in primary.search(queries[0], k=60))


def test_a_read_write_transaction_is_what_a_standby_refuses(primary_and_replica: tuple[str, str]) -> None:
    """What PostgREST opens for a POST to a volatile function; a plain (read-only) one is fine."""
    _, replica_url = primary_and_replica
    with psycopg.connect(replica_url, autocommit=True) as conn:
        conn.execute("begin")
        conn.execute("select count(*) from public.documents")
        conn.execute("rollback")
        with pytest.raises(psycopg.Error, match="read-write mode during recovery"):
            conn.execute("begin transaction read write")
