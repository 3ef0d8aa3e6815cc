"""Offline behaviour against a real database: a real Postgres stop and restart, a real crash mid-flush.

The module runs its own local stack (never the shared dev stack: one test stops it) in a directory the
unprivileged Postgres user can traverse. Outages are either real (``stack.stop()``) or injected by
``FaultyTransport`` (a real transport that can be switched off); time only moves through the breaker's
injectable clock, never by sleeping. The embedder is the deterministic ``FakeEmbedder`` except in the
recall test on the shared corpus, which uses the real ONNX model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supa_vectors import (
    AsyncVectorStore,
    BackendUnavailableError,
    CircuitBreaker,
    Identity,
    SearchResult,
    VectorStore,
)
from supa_vectors.cache.keys import store_label
from supa_vectors.local import LocalStack
from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
from tests.conftest import CORPUS, REPO_ROOT, USER_A, USER_B, FakeEmbedder, empty_store

# --------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def own_stack() -> Iterator[tuple[LocalStack, str]]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is mode 700, which the server's OS user cannot traverse.
    root = Path(tempfile.mkdtemp(prefix="supa-vectors-offline-test-"))
    root.chmod(0o755)
    stack = LocalStack(base_dir=root / "stack")
    try:
        url = stack.start()
        yield stack, url
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def url(own_stack: tuple[LocalStack, str]) -> str:
    stack, start_url = own_stack
    live = stack.start()  # a no-op when running; a test that stopped it restarts it in its finally
    assert live == start_url
    empty_store(live)
    return live


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FaultyTransport:
    """Fault injection around a real transport: while ``down``, every call fails as unreachable."""

    def __init__(self, inner: PostgresTransport, namespace: str | None = None) -> None:
        self.inner = inner
        self.down = False
        self.calls: list[str] = []
        self.cache_namespace = namespace or store_label(inner)

    @property
    def identity_fingerprint(self) -> str:
        return self.inner.identity_fingerprint

    @property
    def identity(self) -> Identity:
        return self.inner.identity

    def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
        self.calls.append(name)
        if self.down:
            raise BackendUnavailableError(f"injected: connection refused ({name})")
        return self.inner.rpc(name, params)

    def close(self) -> None:
        self.inner.close()


def ids(results: list[SearchResult]) -> list[str]:
    return [r.id for r in results]


def same_ranking(answer: list[SearchResult], expected: list[SearchResult]) -> bool:
    """Same similarities rank by rank, and the same documents wherever no tie makes the order arbitrary
    (the fake embedder gives many documents exactly the same similarity)."""
    if len(answer) != len(expected):
        return False
    if any(abs(a.similarity - b.similarity) > 1e-5 for a, b in zip(answer, expected, strict=True)):
        return False
    cut = expected[-1].similarity + 1e-5 if expected else 0.0
    return {r.id for r in answer if r.similarity > cut} == {r.id for r in expected if r.similarity > cut}


def stored(url: str, *, owner: str | None = None) -> dict[str, str]:
    """external_id -> content_hash straight from the table (as the owner, bypassing RLS)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select external_id, content_hash from public.documents where owner_id is not distinct from %s",
            (owner,),
        ).fetchall()
    return dict(rows)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


TOPICS = {
    "databases": "postgres index vacuum query planner table row transaction wal replica",
    "animals": "cat dog bird horse fish whale tiger lion rabbit mouse",
    "cooking": "bread butter flour oven pasta sauce garlic onion pepper salt",
}


def topic_docs(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        topic = list(TOPICS)[i % len(TOPICS)]
        words = rng.sample(TOPICS[topic].split(), 5)
        docs.append(
            {
                "id": f"doc-{i}",
                "content": " ".join(words),
                "metadata": {"topic": topic, "n": i, "even": i % 2 == 0},
            }
        )
    return docs


# --------------------------------------------------------------------------------------------------
# a real stop of the database


def test_stopping_postgres_mid_run_serves_cache_and_mirror_and_flushes_once(
    own_stack: tuple[LocalStack, str], url: str, tmp_path: Path
) -> None:
    stack, _ = own_stack
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30, clock=clock)
    # One pooled connection: psycopg_pool does not check idle connections on checkout, so a second one
    # opened before the stop would fail the first probe after the restart (a real app's next probe,
    # reset_timeout later, then succeeds; the test would have to loop for it).
    transport = PostgresTransport(url, max_size=1)
    store = VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path / "cache", breaker=breaker)
    docs = topic_docs(60)
    assert {r.status for r in store.add(docs)} == {"inserted"}

    repeated = ["postgres index vacuum", "cat dog bird", "bread butter flour", "query planner row"]
    seen = {q: ids(store.search(q, k=5)) for q in repeated}
    # The server's answers to queries this store never asks while online (so never cached).
    unseen = [
        ("tiger lion whale", None),
        ("garlic onion pepper", {"topic": "cooking"}),
        ("transaction wal replica", {"$and": [{"topic": "databases"}, {"even": True}]}),
        ("horse fish", {"n": {"$gte": 30}}),
    ]
    with VectorStore(PostgresTransport(url), embedder=FakeEmbedder(), cache="off") as reference:
        expected = {q: reference.search(q, k=5, filter=f) for q, f in unseen}
    assert store.sync_mirror().documents == 60

    stack.stop()  # a real stop: the server process goes away
    try:
        for _ in range(2):
            for query in repeated:
                answer = store.search(query, k=5)
                assert ids(answer) == seen[query]
                assert {(r.source, r.stale) for r in answer} == {("cache", True)}
                assert all(r.age_seconds is not None and r.age_seconds >= 0 for r in answer)
            for query, where in unseen:
                answer = store.search(query, k=5, filter=where)
                assert same_ranking(answer, expected[query]), query
                assert {(r.source, r.stale) for r in answer} == {("mirror", True)}
        assert breaker.state == "open"

        new = [
            {"id": "new-1", "content": "quantum physics electron", "metadata": {"topic": "science"}},
            {"id": "new-2", "content": "galaxy telescope nebula", "metadata": {"topic": "science"}},
        ]
        changed = {"id": "doc-1", "content": "volcano lava magma eruption", "metadata": {"topic": "geology"}}
        assert {r.status for r in store.add([*new, changed])} == {"queued"}
        assert {r.status for r in store.add(new)} == {"queued"}  # the same writes again: idempotent
        gone = store.delete(["doc-0", "doc-3"])
        assert (int(gone), gone.queued) == (0, 2)
        pending = store.pending()
        assert [(p.op, p.id) for p in pending] == [
            ("upsert", "new-1"),
            ("upsert", "new-2"),
            ("upsert", "doc-1"),
            ("delete", "doc-0"),
            ("delete", "doc-3"),
        ]
        assert pending[2].content_hash == sha(changed["content"])
        assert all(p.status == "queued" for p in pending)

        # Queued writes that cannot enter an answer leave it cached; one that lists a deleted document
        # is invalidated and answered by the mirror instead (where the deleted documents are gone too).
        for query in repeated:
            answer = store.search(query, k=5)
            if {"doc-0", "doc-1", "doc-3"} & set(seen[query]):
                assert {r.source for r in answer} == {"mirror"}
                assert not {"doc-0", "doc-3"} & set(ids(answer))
            else:
                assert ids(answer) == seen[query]
                assert {r.source for r in answer} == {"cache"}
    finally:
        stack.start()

    assert stored(url).get("new-1") is None  # nothing reached the server while it was down
    clock.advance(31)  # the breaker lets a probe through: the next call replays the outbox first
    fresh = store.search("quantum physics", k=1)
    assert (ids(fresh), fresh[0].source, fresh[0].stale) == (["new-1"], "backend", False)
    assert store.pending() == []
    assert breaker.state == "closed"

    expected_rows = {d["id"]: sha(d["content"]) for d in docs if d["id"] not in ("doc-0", "doc-3")}
    expected_rows.update({d["id"]: sha(d["content"]) for d in [*new, changed]})
    assert stored(url) == expected_rows  # every queued write exactly once, with its content
    assert store.flush().upserted == 0  # nothing left to replay
    assert stored(url) == expected_rows
    store.close()


# --------------------------------------------------------------------------------------------------
# a real crash in the middle of a flush

CRASHING_FLUSH = textwrap.dedent(
    """
    import os, sys
    from supa_vectors import VectorStore
    from supa_vectors.transport.postgres import PostgresTransport

    url, cache_dir, crash_after = sys.argv[1:4]

    class Crashing(PostgresTransport):
        cache_namespace = "crash-test"

        def rpc(self, name, params):
            reply = super().rpc(name, params)
            if name == crash_after:
                os._exit(3)  # the server committed; the outbox has not recorded it
            return reply

    VectorStore(Crashing(url), cache_dir=cache_dir).flush()
    """
)


@pytest.mark.parametrize("crash_after", ["bulk_upsert", "delete_documents"])
def test_a_crash_in_the_middle_of_a_flush_replays_safely(url: str, tmp_path: Path, crash_after: str) -> None:
    transport = FaultyTransport(PostgresTransport(url), namespace="crash-test")
    store = VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path)
    store.add({"id": "keep", "content": "already there"})
    transport.down = True
    first = [{"id": f"d{i}", "content": f"first version {i}"} for i in range(10)]
    store.add(first)
    store.delete(["d3", "keep"])
    store.add([{"id": "d3", "content": "second version 3"}, {"id": "d10", "content": "ten"}])
    assert len(store.pending()) == 14

    crash = subprocess.run(
        [sys.executable, "-c", CRASHING_FLUSH, url, str(tmp_path), crash_after],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert crash.returncode == 3, crash.stderr
    left = store.pending()
    assert 0 < len(left) < 14 or crash_after == "bulk_upsert"
    assert left[0].op == ("upsert" if crash_after == "bulk_upsert" else "delete")

    transport.down = False
    result = store.flush()
    assert result.remaining == 0
    assert store.pending() == []
    expected = {f"d{i}": sha(f"first version {i}") for i in range(10)}
    expected.update({"d3": sha("second version 3"), "d10": sha("ten")})
    assert stored(url) == expected
    store.close()


# --------------------------------------------------------------------------------------------------
# identities, invalidation, cache-first


def test_one_users_cached_answers_are_never_served_to_another(url: str, tmp_path: Path) -> None:
    cache = tmp_path / "shared-cache"  # one directory for both users, as on one app server
    alice_t = FaultyTransport(PostgresTransport(url, identity=Identity.user(USER_A)))
    bob_t = FaultyTransport(PostgresTransport(url, identity=Identity.user(USER_B)))
    alice = VectorStore(alice_t, embedder=FakeEmbedder(), cache_dir=cache, cache="cache-first")
    bob = VectorStore(bob_t, embedder=FakeEmbedder(), cache_dir=cache, cache="cache-first")
    alice.add({"id": "a-secret", "content": "alice private diary entry about cats"})
    bob.add({"id": "b-note", "content": "bob shopping list with cat food"})

    assert ids(alice.search("cats diary", k=5)) == ["a-secret"]
    assert ids(alice.search("private diary", k=5)) == ["a-secret"]
    # cache-first: Bob's identical question must not hit Alice's entry, it goes to the backend
    bob_calls = len(bob_t.calls)
    answer = bob.search("cats diary", k=5)
    assert ids(answer) == ["b-note"]
    assert answer[0].source == "backend"
    assert len(bob_t.calls) == bob_calls + 1

    # Offline, each gets their own cached answer; a question only Alice asked fails for Bob.
    alice_t.down = bob_t.down = True
    assert [(r.id, r.source) for r in bob.search("cats diary", k=5)] == [("b-note", "cache")]
    assert [(r.id, r.source) for r in alice.search("cats diary", k=5)] == [("a-secret", "cache")]
    with pytest.raises(BackendUnavailableError):
        bob.search("private diary", k=5)
    for store in (alice, bob):
        store.close()


def test_writes_invalidate_the_cached_answers_they_could_change(url: str, tmp_path: Path) -> None:
    transport = FaultyTransport(PostgresTransport(url))
    store = VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path)
    store.add(topic_docs(30))
    store.search("cat dog", k=3)
    cooking = store.search("bread butter", k=3)
    store.search("bread", k=3, filter={"topic": "databases"})

    # An unrelated document cannot enter either answer; a document about dogs enters the first; a
    # metadata change moves a document into the filtered answer's reach.
    store.add({"id": "unrelated", "content": "quantum electron", "metadata": {"topic": "science"}})
    store.add({"id": "dogs", "content": "cat dog dog cat", "metadata": {"topic": "animals"}})
    moved = next(
        d for d in topic_docs(30) if d["metadata"]["topic"] == "cooking" and d["id"] not in ids(cooking)
    )
    store.upsert({**moved, "metadata": {**moved["metadata"], "topic": "databases"}})
    transport.down = True
    with pytest.raises(BackendUnavailableError):
        store.search("cat dog", k=3)  # invalidated, and no mirror
    assert ids(store.search("bread butter", k=3)) == ids(cooking)
    with pytest.raises(BackendUnavailableError):
        store.search("bread", k=3, filter={"topic": "databases"})
    # a delete invalidates exactly the answers that listed the document
    transport.down = False
    store.delete(ids(cooking)[0])
    transport.down = True
    with pytest.raises(BackendUnavailableError):
        store.search("bread butter", k=3)
    store.close()


def test_cache_first_serves_fresh_answers_without_asking(url: str, tmp_path: Path) -> None:
    transport = FaultyTransport(PostgresTransport(url))
    store = VectorStore(
        transport, embedder=FakeEmbedder(), cache_dir=tmp_path, cache="cache-first", cache_ttl=60
    )
    clock = FakeClock()
    store._offline.clock = clock
    store.add(topic_docs(12))
    first = store.search("cat dog", k=2)
    calls = len(transport.calls)
    again = store.search("cat dog", k=2)
    assert (ids(again), again[0].source, again[0].stale) == (ids(first), "cache", False)
    assert len(transport.calls) == calls  # no round trip
    clock.advance(61)  # older than the TTL: asked again
    assert store.search("cat dog", k=2)[0].source == "backend"
    assert len(transport.calls) == calls + 1
    store.close()


def test_writes_queue_when_unreachable_unless_the_app_opts_out(url: str, tmp_path: Path) -> None:
    transport = FaultyTransport(PostgresTransport(url))
    strict = VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path, outbox=False)
    strict.count()
    transport.down = True
    with pytest.raises(BackendUnavailableError):
        strict.add("must not be queued")
    with pytest.raises(BackendUnavailableError):
        strict.delete("x")
    assert strict.pending() == []
    strict.close()


def test_a_store_that_never_reached_the_backend_still_queues_writes(url: str, tmp_path: Path) -> None:
    transport = FaultyTransport(PostgresTransport(url), namespace="never-seen")
    transport.down = True
    store = VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path)
    assert store.add("written during the outage")[0].status == "queued"
    with pytest.raises(BackendUnavailableError):
        store.search("outage")  # no settings, no cache, no mirror: nothing to answer from
    transport.down = False
    store.breaker.record_success()
    assert store.flush().upserted == 1  # embedded at replay, once the store's model is known
    assert list(stored(url).values()) == [sha("written during the outage")]
    store.close()


async def test_the_async_store_falls_back_and_flushes_the_same_way(url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    store = AsyncVectorStore(
        AsyncPostgresTransport(url),
        embedder=FakeEmbedder(),
        cache_dir=tmp_path,
        breaker=CircuitBreaker(failure_threshold=1, reset_timeout=10, clock=clock),
    )
    await store.add(topic_docs(12))
    cached = await store.search("cat dog", k=3)
    await store.sync_mirror()
    store.breaker.record_failure()  # as after a failed call: calls are refused while open
    assert store.breaker.state == "open"
    assert [(r.id, r.source) for r in await store.search("cat dog", k=3)] == [(r.id, "cache") for r in cached]
    assert {r.source for r in await store.search("bread oven", k=3)} == {"mirror"}
    assert (await store.add({"id": "late", "content": "late arrival"}))[0].status == "queued"
    assert (await store.delete("doc-0")).queued == 1
    clock.advance(11)
    result = await store.flush()
    assert (result.upserted, result.deleted, result.remaining) == (1, 1, 0)
    assert store.pending() == []
    assert "late" in stored(url)
    assert "doc-0" not in stored(url)
    await store.aclose()


# --------------------------------------------------------------------------------------------------
# the mirror against the server on the shared corpus


def load_corpus() -> list[dict[str, Any]]:
    """The shared corpus in its two shapes: lists of {id, content, metadata}, or LangChain-style
    {"documents": [{page_content, metadata}]} whose id is metadata.doc_id."""
    docs: list[dict[str, Any]] = []
    for path in sorted((CORPUS / "postgres-docs" / "documents").glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, list):
            docs += [{"id": d["id"], "content": d["content"], "metadata": d["metadata"]} for d in data]
        else:
            docs += [
                {"id": d["metadata"]["doc_id"], "content": d["page_content"], "metadata": d["metadata"]}
                for d in data["documents"]
            ]
    return docs


def test_mirror_matches_the_servers_top_10_on_the_shared_corpus(url: str, tmp_path: Path) -> None:
    # The fake embedder, not the ONNX model: embedding 2,889 sections with the model takes minutes on
    # two busy cores, and what is measured here is the mirror's search against the server's (HNSW for
    # the unfiltered queries, exact scans for the filtered ones) over the same vectors. The same
    # comparison with the ONNX model's vectors is in bench/offline.py (run(quick=False)).
    embedder = FakeEmbedder()
    docs = load_corpus()
    queries = [
        json.loads(line)["query"]
        for line in (CORPUS / "postgres-docs" / "queries.jsonl").read_text("utf-8").splitlines()
        if line.strip()
    ]
    assert len(docs) == 2889
    assert len(queries) > 400

    transport = FaultyTransport(PostgresTransport(url))
    store = VectorStore(transport, embedder=embedder, cache_dir=tmp_path)
    store.upsert(docs, bulk=True)
    assert store.sync_mirror().documents == 2889

    cases: list[tuple[str, dict[str, Any] | None]] = [(q, None) for q in queries]
    cases += [(q, {"kind": "reference"}) for q in queries[:100]]
    cases += [(q, {"$and": [{"kind": "guide"}, {"chars": {"$gte": 500}}]}) for q in queries[100:200]]
    with VectorStore(PostgresTransport(url), embedder=embedder, cache="off") as server:
        expected = [server.search(q, k=10, filter=f) for q, f in cases]

    transport.down = True
    recalls = []
    for (query, where), server_answer in zip(cases, expected, strict=True):
        answer = store.search(query, k=10, filter=where)
        assert {r.source for r in answer} == {"mirror"}
        recalls.append(len(set(ids(answer)) & set(ids(server_answer))) / len(server_answer))
    recall = sum(recalls) / len(recalls)
    print(f"mirror recall@10 against the server: {recall:.4f} over {len(cases)} queries")
    assert recall >= 0.95
    store.close()


def test_sync_is_incremental_and_notices_deletions(url: str, tmp_path: Path) -> None:
    transport = FaultyTransport(PostgresTransport(url))
    store = VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path)
    store.add(topic_docs(30))
    first = store.sync_mirror()
    assert (first.fetched, first.documents, first.full) == (30, 30, True)
    # Another client (not this store) changes one document and deletes two: the next sync sees both.
    with VectorStore(PostgresTransport(url), embedder=FakeEmbedder(), cache="off") as other:
        other.upsert({"id": "doc-4", "content": "zebra giraffe savanna", "metadata": {"topic": "animals"}})
        other.delete(["doc-5", "doc-6"])
    second = store.sync_mirror()
    assert second.full is False
    assert second.removed == 2
    assert second.documents == 28
    assert second.fetched < 30  # only the rows changed since the watermark (and its overlap)
    transport.down = True
    assert ids(store.search("zebra giraffe", k=1)) == ["doc-4"]
    assert not {"doc-5", "doc-6"} & set(ids(store.search("cat dog bird", k=28)))
    store.close()


def test_the_mirror_is_per_identity(url: str, tmp_path: Path) -> None:
    service = VectorStore(PostgresTransport(url), embedder=FakeEmbedder(), cache_dir=tmp_path)
    service.add({"id": "owned", "content": "alice secret plans"})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("update public.documents set owner_id = %s where external_id = 'owned'", (USER_A,))
    service.add({"id": "shared", "content": "public notice plans"})
    assert service.sync_mirror().documents == 2
    bob_t = FaultyTransport(PostgresTransport(url, identity=Identity.user(USER_B)))
    bob = VectorStore(bob_t, embedder=FakeEmbedder(), cache_dir=tmp_path)
    assert bob.sync_mirror().documents == 1  # his own mirror: shared rows only
    bob_t.down = True
    assert ids(bob.search("secret plans", k=5)) == ["shared"]
    for store in (service, bob):
        store.close()


def test_environment_points_the_default_cache_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from supa_vectors.cache import default_cache_dir

    monkeypatch.setenv("SUPA_VECTORS_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("SUPA_VECTORS_CACHE_DIR")
    assert default_cache_dir().name == "supa-vectors"
    assert os.sep in str(default_cache_dir())
