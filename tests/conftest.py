"""Shared fixtures: one real local stack (embedded Postgres + migrations) for the whole session.

``SUPA_VECTORS_TEST_DATABASE_URL`` points the suite at an already running, migrated database
(what ``.ci/run`` does after ``supa-vectors local start``); otherwise the session starts its own
stack in a temporary directory and stops it at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psycopg
import pytest
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

from supa_vectors.local import LocalStack
from supa_vectors.transport.identity import SET_IDENTITY_SQL, Identity

REPO_ROOT = Path(__file__).resolve().parent.parent
# Test and benchmark data ships with the repository (provenance in NOTICE and corpus/README.md).
CORPUS = REPO_ROOT / "corpus"

USER_A = "00000000-0000-4000-8000-00000000000a"
USER_B = "00000000-0000-4000-8000-00000000000b"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("SUPA_VECTORS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from supa_vectors.local import LocalStack

    stack = LocalStack(base_dir=tmp_path_factory.mktemp("local-stack"))
    url = stack.start()
    try:
        yield url
    finally:
        stack.stop()


def empty_store(url: str) -> None:
    """Remove every document (as the owner, bypassing RLS) so each test starts from nothing."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate public.documents restart identity cascade")
        conn.execute("select public.finish_bulk_load()")  # the index back, no bulk load open


@pytest.fixture
def clean_url(database_url: str) -> str:
    empty_store(database_url)
    return database_url


@pytest.fixture
def conn(clean_url: str) -> Iterator[psycopg.Connection]:
    """A connection in a transaction, rolled back afterwards; switch identity with ``act_as``."""
    with psycopg.connect(clean_url) as connection:
        register_vector_info(connection, TypeInfo.fetch(connection, "extensions.vector"))
        yield connection
        connection.rollback()


@contextlib.contextmanager
def bulk_load_min_rows(url: str, rows: int) -> Iterator[None]:
    """Let loads of ``rows`` or more drop the index (the store's setting, 1,000 by default)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "update public.metadata_global set value = to_jsonb(%s::int) where key = 'bulk_load_min_rows'",
            [rows],
        )
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("update public.metadata_global set value = '1000' where key = 'bulk_load_min_rows'")


def act_as(conn: psycopg.Connection, identity: Identity) -> None:
    """Switch role and JWT claims for the rest of the transaction, as PostgREST does per request."""
    conn.execute(SET_IDENTITY_SQL, identity.sql_params())


@pytest.fixture
def own_stack() -> Iterator[LocalStack]:
    """A local stack of the test's own, to kill: in /tmp so the unprivileged server user (when we are
    root) can enter it; stopped and deleted afterwards."""
    base = Path(tempfile.mkdtemp(prefix="supa-vectors-own-stack-", dir="/tmp"))
    base.chmod(0o755)
    stack = LocalStack(base_dir=base)
    try:
        yield stack
    finally:
        try:
            stack.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


class FakeEmbedder:
    """Bag of words hashed into 384 dimensions, L2-normalised: texts sharing words are similar."""

    def __init__(self, model_id: str = MODEL, dimension: int = DIM) -> None:
        self.model_id = model_id
        self.dimension = dimension
        self.texts: list[str] = []
        self.calls = 0

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        out = np.zeros(self.dimension, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            digest = hashlib.sha256(word.encode()).digest()
            out[int.from_bytes(digest[:4], "little") % (self.dimension - 1)] += 1.0
        out[-1] = 0.05  # never the zero vector
        return out / np.linalg.norm(out)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        self.texts.extend(texts)
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)
