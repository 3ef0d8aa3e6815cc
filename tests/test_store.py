"""Behaviour of VectorStore and AsyncVectorStore against the real database.

One suite runs every behaviour through both stores: ``store`` is parametrised over backends and
sync/async, and the async store is driven through a small blocking adapter. A PostgREST backend can
join by adding a parameter to ``make_store``. The embedder is a deterministic fake (words hashed into
384 dimensions) so the tests do not need the ONNX model, and it counts what it embeds.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from supa_vectors import (
    AsyncVectorStore,
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    Document,
    DocumentError,
    EmbeddingError,
    FilterError,
    HybridSearchResult,
    Identity,
    IndexRebuildError,
    InvalidInputError,
    ModelMismatchError,
    SearchResult,
    StoredDocument,
    StoreStats,
    UpsertResult,
    VectorStore,
)
from supa_vectors._core import upsert as _rpc
from supa_vectors.cli._search import add_search_parser, search_command
from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
from tests.conftest import DIM, MODEL, USER_A, USER_B, FakeEmbedder, bulk_load_min_rows


class AsyncAdapter:
    """Drives an AsyncVectorStore on its own event loop behind the blocking API, so one suite tests both."""

    def __init__(self, store: AsyncVectorStore) -> None:
        self._store = store
        self._loop = asyncio.new_event_loop()

    @property
    def transport(self) -> Any:
        return self._store.transport

    @property
    def inner(self) -> AsyncVectorStore:
        return self._store

    def _run(self, awaitable: Any) -> Any:
        return self._loop.run_until_complete(awaitable)

    def upsert(self, documents: Any, **kwargs: Any) -> list[UpsertResult]:
        return self._run(self._store.upsert(documents, **kwargs))  # type: ignore[no-any-return]

    def add(self, documents: Any, **kwargs: Any) -> list[UpsertResult]:
        return self._run(self._store.add(documents, **kwargs))  # type: ignore[no-any-return]

    def search(self, query: Any, **kwargs: Any) -> list[SearchResult]:
        return self._run(self._store.search(query, **kwargs))  # type: ignore[no-any-return]

    def hybrid_search(self, query: Any, **kwargs: Any) -> list[HybridSearchResult]:
        return self._run(self._store.hybrid_search(query, **kwargs))  # type: ignore[no-any-return]

    def get(self, ids: Any, **kwargs: Any) -> list[StoredDocument]:
        return self._run(self._store.get(ids, **kwargs))  # type: ignore[no-any-return]

    def delete(self, ids: Any) -> int:
        return self._run(self._store.delete(ids))  # type: ignore[no-any-return]

    def count(self, filter: Any = None) -> int:
        return self._run(self._store.count(filter))  # type: ignore[no-any-return]

    def stats(self) -> StoreStats:
        return self._run(self._store.stats())  # type: ignore[no-any-return]

    def iter_documents(self, **kwargs: Any) -> Iterator[StoredDocument]:
        pages: AsyncIterator[StoredDocument] = self._store.iter_documents(**kwargs)

        def step() -> Iterator[StoredDocument]:
            while True:
                try:
                    yield self._run(pages.__anext__())
                except StopAsyncIteration:
                    return

        return step()

    def close(self) -> None:
        self._run(self._store.aclose())
        self._loop.close()


Store = VectorStore | AsyncAdapter
MakeStore = Callable[..., Store]


@pytest.fixture(params=["postgres-sync", "postgres-async"])
def make_store(request: pytest.FixtureRequest, clean_url: str) -> Iterator[MakeStore]:
    """Build stores of one kind on an empty database; all share the kind, each has its own identity."""
    created: list[Store] = []

    def make(identity: Identity | None = None, embedder: Any = None) -> Store:
        embedder = embedder if embedder is not None else FakeEmbedder()
        store: Store
        if request.param == "postgres-sync":
            store = VectorStore(PostgresTransport(clean_url, identity=identity), embedder=embedder)
        else:
            store = AsyncAdapter(
                AsyncVectorStore(AsyncPostgresTransport(clean_url, identity=identity), embedder=embedder)
            )
        created.append(store)
        return store

    yield make
    for store in created:
        store.close()


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def store(make_store: MakeStore, embedder: FakeEmbedder) -> Store:
    return make_store(embedder=embedder)


DOCS: list[dict[str, Any]] = [
    {"id": "cat", "content": "Cats purr and sleep in the sun", "metadata": {"kind": "animal", "legs": 4}},
    {"id": "dog", "content": "Dogs bark and fetch the ball", "metadata": {"kind": "animal", "legs": 4}},
    {"id": "bird", "content": "Birds sing and fly south", "metadata": {"kind": "animal", "legs": 2}},
    {
        "id": "vacuum",
        "content": "VACUUM reclaims storage occupied by dead tuples",
        "metadata": {"kind": "database", "title": "Routine Vacuuming"},
    },
    {
        "id": "index",
        "content": "An index lets the database find rows without a full scan",
        "metadata": {"kind": "database", "title": "Indexes"},
    },
]


def statuses(results: Iterable[UpsertResult]) -> dict[str, str]:
    return {r.id: r.status for r in results}


# --------------------------------------------------------------------------------------------------
# add / upsert


def test_add_reports_inserted_then_unchanged_and_embeds_once(store: Store, embedder: FakeEmbedder) -> None:
    first = store.add(DOCS)
    assert [r.id for r in first] == [d["id"] for d in DOCS]
    assert {r.status for r in first} == {"inserted"}
    assert len(embedder.texts) == len(DOCS)

    again = store.add(DOCS)
    assert {r.status for r in again} == {"unchanged"}
    assert len(embedder.texts) == len(DOCS)  # nothing re-embedded
    assert store.count() == len(DOCS)


def test_metadata_only_change_updates_without_embedding(store: Store, embedder: FakeEmbedder) -> None:
    store.add(DOCS)
    embedded = len(embedder.texts)
    changed = dict(DOCS[0], metadata={"kind": "animal", "legs": 4, "indoor": True})
    assert statuses(store.upsert([changed, DOCS[1]])) == {"cat": "updated", "dog": "unchanged"}
    assert len(embedder.texts) == embedded
    (cat,) = store.get(["cat"])
    assert cat.metadata == {"kind": "animal", "legs": 4, "indoor": True}
    # the vector was kept: searching for the cat still finds it first
    assert store.search("cats purr in the sun", k=1)[0].id == "cat"


def test_changed_content_is_embedded_again(store: Store, embedder: FakeEmbedder) -> None:
    store.add(DOCS)
    embedded = len(embedder.texts)
    result = store.upsert(Document(id="bird", content="Penguins swim and cannot fly", metadata={"legs": 2}))
    assert statuses(result) == {"bird": "updated"}
    assert embedder.texts[embedded:] == ["Penguins swim and cannot fly"]
    assert store.search("penguins swim", k=1)[0].id == "bird"


def test_plain_strings_get_a_stable_id_from_their_content(store: Store) -> None:
    text = "A text without an id"
    (result,) = store.add(text)
    assert result.id == hashlib.sha256(text.encode()).hexdigest()
    (stored,) = store.get(result.id)
    assert stored.content_hash == result.id  # the SDK's hash is the database's
    assert stored.content == text
    assert store.add([text]) == [UpsertResult(id=result.id, status="unchanged")]


def test_documents_dicts_and_strings_mix(store: Store) -> None:
    results = store.add([Document(id="a", content="first doc"), {"id": "b", "content": "second"}, "third"])
    assert [r.status for r in results] == ["inserted"] * 3
    assert store.count() == 3


def test_caller_supplied_embedding_is_used_instead_of_the_embedder(
    store: Store, embedder: FakeEmbedder
) -> None:
    vector = FakeEmbedder().vector("completely different words")
    store.add([Document(id="v", content="text of the document", embedding=vector.tolist())])
    assert embedder.texts == []
    (hit,) = store.search(vector, k=1)
    assert hit.id == "v"
    assert hit.similarity == pytest.approx(1.0, abs=1e-5)


def test_large_upsert_goes_in_several_requests(store: Store, embedder: FakeEmbedder) -> None:
    docs = [
        {"id": f"doc-{i:04d}", "content": f"document number {i}", "metadata": {"i": i}} for i in range(1250)
    ]
    assert {r.status for r in store.add(docs)} == {"inserted"}
    assert store.count() == 1250
    assert len(embedder.texts) == 1250
    # The Postgres transport sends vectors in binary, so rows bind (1,000: what bulk_upsert takes), not
    # bytes; each chunk embeds in batches
    chunks = _rpc.plan_chunks(
        _rpc.prepare_documents(docs), DIM, vector_bytes_per_float=_rpc.BINARY_BYTES_PER_FLOAT
    )
    assert [len(c) for c in chunks] == [1000, 250]
    assert embedder.calls == sum(-(-len(c) // _rpc.EMBED_BATCH_SIZE) for c in chunks)


def test_unknown_identity_retries_with_vectors(clean_url: str) -> None:
    """A transport that does not say who it is (like PostgREST) still gets a user's own copy embedded."""

    class Anonymous:
        def __init__(self, inner: PostgresTransport) -> None:
            self.inner = inner
            self.calls: list[str] = []

        @property
        def identity_fingerprint(self) -> str:
            return self.inner.identity_fingerprint

        def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
            self.calls.append(name)
            return self.inner.rpc(name, params)

        def close(self) -> None:
            self.inner.close()

    shared = VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder())
    shared.add([{"id": "faq", "content": "Shared answer"}])
    transport = Anonymous(PostgresTransport(clean_url, identity=Identity.user(USER_A)))
    with shared, VectorStore(transport, embedder=FakeEmbedder()) as user:
        # The only visible row is the shared one with the same content; the user's own copy is new.
        assert statuses(user.add([{"id": "faq", "content": "Shared answer"}])) == {"faq": "inserted"}
        assert transport.calls.count("bulk_upsert") == 2
        assert sorted(d.owner_id or "" for d in user.get("faq")) == ["", USER_A]


# --------------------------------------------------------------------------------------------------
# validation: nothing is sent, nothing is embedded


@pytest.mark.parametrize(
    ("documents", "index", "document_id"),
    [
        ([{"id": "a", "content": "ok"}, {"id": "b", "content": "   "}], 1, "b"),
        ([{"id": "a", "content": ""}], 0, "a"),
        ([{"id": "a", "content": "nul \x00 inside"}], 0, "a"),
        ([{"id": "a", "content": "x"}, {"id": "a", "content": "y"}], 1, "a"),
        (["same text", "same text"], 1, hashlib.sha256(b"same text").hexdigest()),
        ([{"id": "a", "content": "ok", "metadata": {"score": float("nan")}}], 0, "a"),
        ([{"id": "a", "content": "ok", "metadata": {"k": "nul\x00"}}], 0, "a"),
        ([{"id": "a", "content": "ok", "metadata": {"when": object()}}], 0, "a"),
        ([{"id": "a", "content": "ok", "text": "typo"}], 0, "a"),
        ([{"id": 17, "content": 42}], 0, None),
        ([{"id": "a", "content": "ok", "metadata": "not an object"}], 0, "a"),
        ([{"id": "", "content": "ok"}], 0, ""),
        ([{"id": "x" * 513, "content": "ok"}], 0, "x" * 513),
        ([{"id": "a", "content": "é" * 500_001}], 0, "a"),  # 1,000,002 bytes > max_content_bytes
        ([{"id": "a", "content": "ok", "embedding": [0.1] * 383}], 0, "a"),
        ([{"id": "a", "content": "ok", "embedding": [float("inf")] * 384}], 0, "a"),
        ([{"id": "a", "content": "ok"}, 42], 1, None),
    ],
)
def test_bad_documents_are_refused_before_anything_is_written(
    store: Store, embedder: FakeEmbedder, documents: list[Any], index: int, document_id: str | None
) -> None:
    with pytest.raises(DocumentError) as caught:
        store.add(documents)
    assert caught.value.index == index
    assert caught.value.document_id == document_id
    assert embedder.calls == 0
    assert store.count() == 0


def test_empty_input_is_a_no_op(store: Store) -> None:
    assert store.add([]) == []


# --------------------------------------------------------------------------------------------------
# search


def test_search_ranks_by_similarity(store: Store) -> None:
    store.add(DOCS)
    results = store.search("why do cats purr", k=3)
    assert len(results) == 3
    assert results[0].id == "cat"
    assert results[0].metadata == {"kind": "animal", "legs": 4}
    assert results[0].content == DOCS[0]["content"]
    similarities = [r.similarity for r in results]
    assert similarities == sorted(similarities, reverse=True)
    assert all(isinstance(r, SearchResult) for r in results)


def test_search_k_threshold_and_filter(store: Store) -> None:
    store.add(DOCS)
    assert len(store.search("anything at all", k=2)) == 2
    assert len(store.search("anything at all", k=50)) == len(DOCS)
    exact = store.search(DOCS[3]["content"], k=5, threshold=0.99)
    assert [r.id for r in exact] == ["vacuum"]
    animals = store.search("database storage", k=5, filter={"kind": "animal"})
    assert {r.id for r in animals} == {"cat", "dog", "bird"}
    assert [r.id for r in store.search("sing", k=5, filter={"legs": {"$lt": 4}})] == ["bird"]


def test_ef_search_reaches_the_rpc_and_keys_its_own_cache_entry(clean_url: str, tmp_path: Path) -> None:
    """A wider walk may find other rows, so its answer is cached apart from the default's."""
    sent: list[dict[str, Any]] = []

    class Recording(PostgresTransport):
        def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
            if name == "match_documents":
                sent.append(dict(params))
            return super().rpc(name, params)

    with VectorStore(
        Recording(clean_url), embedder=FakeEmbedder(), cache="cache-first", cache_dir=tmp_path
    ) as store:
        store.add(DOCS)
        default = store.search("dogs fetch", k=2)
        wide = store.search("dogs fetch", k=2, ef_search=400)
        again = store.search("dogs fetch", k=2, ef_search=400)
    assert [r.id for r in wide] == [r.id for r in default]
    assert len(sent) == 2  # the third search was the second's cached answer
    assert "ef_search" not in sent[0]
    assert sent[1]["ef_search"] == 400
    assert {r.source for r in again} == {"cache"}


def test_search_with_a_vector(store: Store, embedder: FakeEmbedder) -> None:
    store.add(DOCS)
    before = embedder.calls
    results = store.search(embedder.vector("dogs fetch the ball"), k=1)
    assert [r.id for r in results] == ["dog"]
    assert embedder.calls == before  # a vector query needs no embedding


@pytest.mark.parametrize(
    ("query", "kwargs"),
    [
        ("", {}),
        ("   ", {}),
        ("text", {"k": 0}),
        ("text", {"k": 1001}),
        ("text", {"threshold": 1.5}),
        ("text", {"ef_search": 0}),
        ("text", {"ef_search": 1001}),
        ("text", {"ef_search": True}),
        ([0.1] * 10, {}),
        ([float("nan")] * DIM, {}),
        ([0.0] * DIM, {}),
        ("text", {"filter": {"$bogus": 1}}),
    ],
)
def test_search_refuses_bad_arguments(store: Store, query: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        store.search(query, **kwargs)


def test_tuning_arguments_are_keyword_only(store: Store) -> None:
    with pytest.raises(TypeError):
        store.search("cats", 3)  # type: ignore[call-arg]


def test_hybrid_search_fuses_words_and_meaning(store: Store) -> None:
    store.add(DOCS)
    results = store.hybrid_search("vacuum dead tuples", k=3)
    assert results[0].id == "vacuum"
    assert isinstance(results[0], HybridSearchResult)
    assert results[0].full_text_rank == 1
    assert results[0].semantic_rank == 1
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    only_animals = store.hybrid_search("vacuum dead tuples", k=3, filter={"kind": "animal"})
    assert {r.id for r in only_animals} <= {"cat", "dog", "bird"}
    assert all(r.full_text_rank is None for r in only_animals)
    words_only = store.hybrid_search("index", k=5, semantic_weight=0.0)
    assert words_only[0].id == "index"
    with pytest.raises(InvalidInputError):
        store.hybrid_search("x", full_text_weight=0, semantic_weight=0)
    with pytest.raises(InvalidInputError):
        store.hybrid_search("x", rrf_k=-1)


# --------------------------------------------------------------------------------------------------
# get / delete / count / iter / stats


def test_get_returns_documents_in_the_order_asked(store: Store) -> None:
    store.add(DOCS)
    docs = store.get(["index", "missing", "cat"])
    assert [d.id for d in docs] == ["index", "cat"]
    assert docs[0].metadata == DOCS[4]["metadata"]
    assert docs[0].owner_id is None
    assert docs[0].content_hash == hashlib.sha256(DOCS[4]["content"].encode()).hexdigest()
    assert store.get([]) == []
    with pytest.raises(InvalidInputError):
        store.get([""])


def test_get_with_vectors_returns_the_stored_vectors(store: Store, embedder: FakeEmbedder) -> None:
    """The vectors as written: the app's own for "mine", the embedder's for "cat", exactly (float32)."""
    mine = np.random.default_rng(3).standard_normal(DIM).astype(np.float32)
    store.add([DOCS[0], {"id": "mine", "content": "Cats purr and sleep in the sun", "embedding": mine}])
    docs = store.get(["mine", "missing", "cat"], with_vectors=True)
    assert [d.id for d in docs] == ["mine", "cat"]
    assert np.array_equal(np.asarray(docs[0].embedding, dtype=np.float32), mine)
    assert np.array_equal(
        np.asarray(docs[1].embedding, dtype=np.float32), embedder.vector(DOCS[0]["content"])
    )
    assert docs[0].content == DOCS[0]["content"]
    assert docs[0].metadata == {}
    assert [d.embedding for d in store.get(["mine", "cat"])] == [None, None]  # only when asked
    assert store.get([], with_vectors=True) == []


def test_delete_removes_documents_and_their_vectors(store: Store) -> None:
    store.add(DOCS)
    assert store.delete(["cat", "dog", "missing"]) == 2
    assert store.count() == 3
    assert store.get(["cat", "dog"]) == []
    assert "cat" not in {r.id for r in store.search("cats purr", k=10)}
    assert store.delete("cat") == 0
    assert store.stats().embeddings == 3


def test_count_with_and_without_filter(store: Store) -> None:
    store.add(DOCS)
    assert store.count() == 5
    assert store.count({"kind": "database"}) == 2
    assert store.count({"legs": {"$gte": 3}}) == 2
    with pytest.raises(FilterError):
        store.count({"legs": {"$gt": True}})


def test_iter_documents_pages_through_everything_in_order(store: Store) -> None:
    docs = [
        {"id": f"d{i:02d}", "content": f"document {i}", "metadata": {"even": i % 2 == 0}} for i in range(23)
    ]
    store.add(docs)
    seen = [d.id for d in store.iter_documents(page_size=5)]
    assert seen == [d["id"] for d in docs]
    evens = [d.id for d in store.iter_documents(filter={"even": True}, page_size=4)]
    assert evens == [f"d{i:02d}" for i in range(0, 23, 2)]
    assert list(store.iter_documents(filter={"even": "neither"})) == []
    with pytest.raises(InvalidInputError):
        store.iter_documents(page_size=0)


def test_iter_documents_is_stable_under_concurrent_inserts(store: Store, make_store: MakeStore) -> None:
    store.add([{"id": f"old-{i}", "content": f"old document {i}"} for i in range(10)])
    writer = make_store()
    pages = store.iter_documents(page_size=3)
    seen = [next(pages).id for _ in range(4)]
    writer.add([{"id": f"new-{i}", "content": f"new document {i}"} for i in range(7)])
    seen += [d.id for d in pages]
    assert len(seen) == len(set(seen))  # nothing repeated
    assert [s for s in seen if s.startswith("old")] == [f"old-{i}" for i in range(10)]  # nothing skipped
    assert [s for s in seen if s.startswith("new")] == [f"new-{i}" for i in range(7)]


def test_stats(store: Store) -> None:
    store.add(DOCS)
    stats = store.stats()
    assert stats.documents == 5
    assert stats.shared_documents == 5
    assert stats.embeddings == 5
    assert stats.models == {MODEL: 5}
    assert stats.vector_index is True
    assert stats.last_updated_at is not None
    assert stats.settings["embedding_dimension"] == DIM


# --------------------------------------------------------------------------------------------------
# model checks, identities, bulk loads, failures


@pytest.mark.parametrize("embedder", [FakeEmbedder(model_id="other/model"), FakeEmbedder(dimension=256)])
def test_model_mismatch_is_refused_before_writing_or_searching(
    make_store: MakeStore, embedder: FakeEmbedder
) -> None:
    store = make_store(embedder=embedder)
    with pytest.raises(ModelMismatchError, match="all-MiniLM-L6-v2"):
        store.add(DOCS)
    with pytest.raises(ModelMismatchError):
        store.search("cats")
    assert embedder.calls == 0
    assert store.count() == 0


def test_embedder_failures_arrive_as_embedding_errors(make_store: MakeStore) -> None:
    class Broken(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            raise RuntimeError("model exploded")

    class Short(FakeEmbedder):
        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            return super().embed(texts)[:, :10]

    for embedder in (Broken(), Short()):
        store = make_store(embedder=embedder)
        with pytest.raises(EmbeddingError):
            store.add(DOCS)
        with pytest.raises(EmbeddingError):
            store.search("cats")
        assert store.count() == 0


def test_users_see_their_own_and_shared_documents_only(make_store: MakeStore) -> None:
    service = make_store()
    alice = make_store(identity=Identity.user(USER_A))
    bob = make_store(identity=Identity.user(USER_B))
    service.add([{"id": "shared", "content": "Shared handbook about cats"}])
    assert statuses(alice.add([{"id": "note", "content": "Alice likes cats"}])) == {"note": "inserted"}
    assert statuses(bob.add([{"id": "note", "content": "Bob likes cats"}])) == {"note": "inserted"}
    assert statuses(alice.add([{"id": "note", "content": "Alice likes cats"}])) == {"note": "unchanged"}
    # Alice's copy of a shared id is her own document, embedded and inserted.
    assert statuses(alice.add([{"id": "shared", "content": "Shared handbook about cats"}])) == {
        "shared": "inserted"
    }

    assert {r.content for r in alice.search("cats", k=10)} == {
        "Alice likes cats",
        "Shared handbook about cats",
    }
    assert [d.content for d in alice.get("note")] == ["Alice likes cats"]
    assert alice.count() == 3
    assert {d.owner_id for d in alice.iter_documents()} == {USER_A, None}
    assert "Bob likes cats" not in {r.content for r in alice.hybrid_search("likes cats", k=10)}
    assert bob.delete("shared") == 0  # Bob has no own "shared"; the shared one is not his to delete
    assert service.count() == 4
    assert alice.delete("note") == 1
    assert [d.content for d in bob.get("note")] == ["Bob likes cats"]


def test_bulk_load_drops_and_rebuilds_the_index_as_owner(
    store: Store, clean_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    transport: Any = store.transport
    original = transport.rpc_as_session_user
    if asyncio.iscoroutinefunction(original):

        async def recording(name: str, params: Mapping[str, Any]) -> Any:
            calls.append(name)
            return await original(name, params)
    else:

        def recording(name: str, params: Mapping[str, Any]) -> Any:  # type: ignore[misc]
            calls.append(name)
            return original(name, params)

    monkeypatch.setattr(transport, "rpc_as_session_user", recording)
    with bulk_load_min_rows(clean_url, len(DOCS)):
        assert {r.status for r in store.add(DOCS, bulk=True)} == {"inserted"}
    assert calls == ["begin_bulk_load", "finish_bulk_load"]
    assert store.stats().vector_index is True
    assert store.search("cats purr", k=1)[0].id == "cat"
    store.add([{"id": "more", "content": "more"}], bulk=False)
    store.add([{"id": "more2", "content": "more"}])  # bulk=None: small loads skip the bulk path
    # ... and only check that no abandoned load left the index dropped.
    assert calls == ["begin_bulk_load", "finish_bulk_load", "restore_vector_index", "restore_vector_index"]


def fail_once(monkeypatch: pytest.MonkeyPatch, store: Store, rpc: str, fault: Exception) -> None:
    """Fault injection: the next session-user call of ``rpc`` raises ``fault`` instead of running."""
    transport: Any = store.transport
    original = transport.rpc_as_session_user
    pending = [rpc]

    def check(name: str) -> None:
        if name in pending:
            pending.remove(name)
            raise fault

    if asyncio.iscoroutinefunction(original):

        async def faulty(name: str, params: Mapping[str, Any]) -> Any:
            check(name)
            return await original(name, params)
    else:

        def faulty(name: str, params: Mapping[str, Any]) -> Any:  # type: ignore[misc]
            check(name)
            return original(name, params)

    monkeypatch.setattr(transport, "rpc_as_session_user", faulty)


@pytest.mark.parametrize(
    "fault",
    [BackendUnavailableError("the server went away"), BackendError("could not extend file", code="53100")],
    ids=["outage", "error"],
)
def test_a_failed_rebuild_never_hides_what_the_load_wrote(
    store: Store, clean_url: str, monkeypatch: pytest.MonkeyPatch, fault: Exception
) -> None:
    fail_once(monkeypatch, store, "finish_bulk_load", fault)
    with bulk_load_min_rows(clean_url, len(DOCS)):
        if isinstance(fault, BackendUnavailableError):
            results = store.add(DOCS, bulk=True)  # the backend died: the results, and a warning
        else:
            with pytest.raises(IndexRebuildError) as caught:
                store.add(DOCS, bulk=True)
            assert caught.value.code == "53100"
            results = caught.value.results
    assert statuses(results) == {d["id"]: "inserted" for d in DOCS}
    assert store.stats().vector_index is False
    # This store's loader session lives on in its pool: its next write finishes the load itself.
    store.add([{"id": "next", "content": "the next write"}])
    stats = store.stats()
    assert stats.vector_index is True
    assert stats.bulk_load is None


def test_bulk_load_as_a_user_falls_back_to_a_normal_load(make_store: MakeStore) -> None:
    alice = make_store(identity=Identity.user(USER_A))
    assert {r.status for r in alice.add(DOCS, bulk=True)} == {"inserted"}
    assert alice.stats().vector_index is True
    assert alice.count() == 5


def test_an_unreachable_database_raises_instead_of_returning_nothing() -> None:
    store = VectorStore(
        PostgresTransport("postgresql://postgres@127.0.0.1:1/postgres", timeout=0.5),
        embedder=FakeEmbedder(),
    )
    with store, pytest.raises(BackendUnavailableError):
        store.search("cats")


def test_stores_refuse_the_wrong_kind_of_transport(clean_url: str) -> None:
    with PostgresTransport(clean_url) as sync_transport, pytest.raises(ConfigurationError):
        AsyncVectorStore(sync_transport)  # type: ignore[arg-type]
    transport = AsyncPostgresTransport(clean_url)
    with pytest.raises(ConfigurationError):
        VectorStore(transport)  # type: ignore[arg-type]


def test_from_url_picks_the_transport(clean_url: str) -> None:
    with VectorStore.from_url(clean_url, embedder=FakeEmbedder()) as store:
        assert isinstance(store.transport, PostgresTransport)
        store.add(DOCS)
    with VectorStore.from_url(clean_url, identity=Identity.user(USER_A), embedder=FakeEmbedder()) as user:
        assert user.count() == 5
        assert user.add("mine")[0].status == "inserted"
    with pytest.raises(ConfigurationError):
        VectorStore.from_url("ftp://example.com/db")
    with pytest.raises(ConfigurationError):
        VectorStore.from_url("https://project.supabase.co")  # no key
    with pytest.raises(ConfigurationError):
        VectorStore.from_url(clean_url, "a-key")  # a key means PostgREST


async def test_async_from_url(clean_url: str) -> None:
    async with AsyncVectorStore.from_url(clean_url, embedder=FakeEmbedder()) as store:
        assert isinstance(store.transport, AsyncPostgresTransport)
        await store.add(DOCS)
        assert [r.id for r in await store.search("cats purr", k=1)] == ["cat"]
        assert [d.id async for d in store.iter_documents(page_size=2)] == [d["id"] for d in DOCS]


# --------------------------------------------------------------------------------------------------
# the sans-I/O upsert flow (no database): chunking, and errors named by the caller's index


def drive(flow: Any, replies: Callable[[Any], Any]) -> Any:
    """What the stores do, without I/O: a reply that is an exception is thrown into the flow."""
    reply = None
    while True:
        try:
            op = flow.throw(reply) if isinstance(reply, Exception) else flow.send(reply)
        except StopIteration as done:
            return done.value
        reply = replies(op)


def test_chunks_respect_row_and_byte_limits() -> None:
    small = _rpc.prepare_documents([f"doc {i}" for i in range(1200)])
    assert [len(c) for c in _rpc.plan_chunks(small, 8)] == [1000, 200]  # short vectors: rows bind
    assert max(len(c) for c in _rpc.plan_chunks(small, DIM)) < 250  # 384-dim vectors as JSON: bytes bind
    binary = _rpc.plan_chunks(small, DIM, vector_bytes_per_float=_rpc.BINARY_BYTES_PER_FLOAT)
    assert [len(c) for c in binary] == [1000, 200]  # in binary: rows bind again
    big = _rpc.prepare_documents([f"{i} " + "x" * 300_000 for i in range(20)])
    chunks = _rpc.plan_chunks(big, DIM)
    assert sum(len(c) for c in chunks) == 20
    for chunk in chunks:
        assert sum(d.json_bytes + DIM * _rpc.JSON_BYTES_PER_FLOAT for d in chunk) <= _rpc.MAX_REQUEST_BYTES
    huge = _rpc.prepare_documents(["y" * 3_000_000, "z"])
    assert [len(c) for c in _rpc.plan_chunks(huge, DIM)] == [1, 1]


def test_server_errors_name_the_callers_index_not_the_chunks() -> None:
    prepared = _rpc.prepare_documents([{"id": f"d{i}", "content": f"text {i}"} for i in range(503)])
    first, second, *_ = _rpc.plan_chunks(prepared, DIM)
    refused = prepared[len(first) + 1]  # the second record of the second chunk
    settings = _rpc.StoreSettings(embedding_model=MODEL, embedding_dimension=DIM)
    flow = _rpc.upsert_flow(prepared, settings, Identity.service())
    fake = FakeEmbedder()
    sent: list[int] = []

    def replies(op: Any) -> Any:
        if isinstance(op, _rpc.EmbedCall):
            return fake.embed(op.texts)
        if op.name == "get_documents":
            return []
        sent.append(len(op.params["documents"]))
        if len(sent) == 2:  # the second chunk: its 2nd record (ordinal 2) is refused
            message = f"document 2 (external_id {refused.id}): content is empty"
            return DocumentError(message, index=1, document_id=refused.id)
        return [{"ordinal": n, "status": "inserted"} for n in range(1, len(op.params["documents"]) + 1)]

    with pytest.raises(DocumentError) as caught:
        drive(flow, replies)
    assert sent == [len(first), len(second)]
    assert caught.value.index == refused.index == len(first) + 1
    assert caught.value.document_id == refused.id
    assert str(caught.value).startswith(f"document {refused.index} (external_id {refused.id})")


def test_transports_say_how_their_vectors_travel() -> None:
    assert _rpc.bytes_per_float(PostgresTransport("postgresql://nobody@127.0.0.1:1/x")) == 4
    assert _rpc.bytes_per_float(object()) == _rpc.JSON_BYTES_PER_FLOAT


def test_chunks_whose_documents_carry_vectors_skip_the_lookup() -> None:
    given = [
        {"id": f"v{i}", "content": f"text {i}", "embedding": [1.0] + [0.0] * (DIM - 1)} for i in range(3)
    ]
    prepared = _rpc.prepare_documents([*given, {"id": "plain", "content": "no vector"}])
    settings = _rpc.StoreSettings(embedding_model=MODEL, embedding_dimension=DIM)
    calls: list[str] = []

    def replies(op: Any) -> Any:
        if isinstance(op, _rpc.EmbedCall):
            calls.append(f"embed {len(op.texts)}")
            return FakeEmbedder().embed(op.texts)
        calls.append(op.name)
        if op.name == "get_documents":
            return []
        return [{"ordinal": n, "status": "unchanged"} for n in range(1, len(op.params["documents"]) + 1)]

    results = drive(_rpc.upsert_flow(prepared[:3], settings, Identity.service()), replies)
    assert calls == ["bulk_upsert"]
    assert [r.status for r in results] == ["unchanged"] * 3
    calls.clear()
    drive(_rpc.upsert_flow(prepared, settings, Identity.service()), replies)
    assert calls == ["get_documents", "embed 1", "bulk_upsert"]


# --------------------------------------------------------------------------------------------------
# the `supa-vectors search` command


def test_search_command(clean_url: str) -> None:
    with VectorStore.from_url(clean_url, embedder=FakeEmbedder()) as store:
        store.add(DOCS)
    parser = argparse.ArgumentParser()
    add_search_parser(parser.add_subparsers(dest="command"))

    out = io.StringIO()
    args = parser.parse_args(["search", "cats purr", "-k", "2", "--json", "--database-url", clean_url])
    assert args.handler is search_command
    assert search_command(args, embedder=FakeEmbedder(), out=out) == 0
    hits = json.loads(out.getvalue())
    assert [h["id"] for h in hits][:1] == ["cat"]
    assert len(hits) == 2

    out = io.StringIO()
    args = parser.parse_args(
        ["search", "vacuum", "--hybrid", "--filter", '{"kind": "database"}', "--database-url", clean_url]
    )
    assert search_command(args, embedder=FakeEmbedder(), out=out) == 0
    assert out.getvalue().splitlines()[0].startswith("  1. vacuum  (score ")

    args = parser.parse_args(["search", "x", "--filter", "{not json", "--database-url", clean_url])
    with pytest.raises(FilterError):
        search_command(args, embedder=FakeEmbedder(), out=io.StringIO())


class _Interrupt(BaseException):
    """Like Ctrl-C or a task's cancellation: not an error of ours, and not an ``Exception``."""


def test_an_interrupted_bulk_load_still_rebuilds_the_index(
    store: Store, embedder: FakeEmbedder, clean_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's driver throws every failure into the flow, so the bulk load's own cleanup runs:
    without ``finish_bulk_load`` the index would stay dropped."""

    def interrupted(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise _Interrupt

    monkeypatch.setattr(embedder, "embed", interrupted)
    with bulk_load_min_rows(clean_url, len(DOCS)), pytest.raises(_Interrupt):
        store.add(DOCS, bulk=True)
    assert store.stats().vector_index is True
