"""The LangChain adapter: LangChain's own standard suite against the real local stack, plus what the
suite does not cover (filters, hybrid, MMR, offline markers, RLS, corpus retrieval equal to the SDK's).

The standard suite embeds with its own ``DeterministicFakeEmbedding``, 6-dimensional by default; the
store holds 384-dimensional vectors, so :meth:`TestStandardSuite.get_embeddings` (the override the
suite documents for this) asks for the same fake embedding with 384 dimensions. No standard test is
skipped or overridden (the suite's own ``test_no_overrides_DO_NOT_OVERRIDE`` checks the latter).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

from supa_vectors import AsyncVectorStore, VectorStore
from supa_vectors.errors import BackendUnavailableError, ConfigurationError, FilterError, InvalidInputError
from supa_vectors.integrations.langchain import (
    SupaVectorsEmbeddings,
    SupaVectorsRetriever,
    SupaVectorsVectorStore,
)
from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
from tests.conftest import DIM, FakeEmbedder, empty_store
from tests.integrations_corpus import (
    FlakyTransport,
    corpus_slice,
    import_error,
    precomputed_mmr_case,
    two_users,
)

COFFEE = [
    ("espresso", "Espresso forces hot water through finely ground coffee under pressure.", "pressure", 1),
    ("pour-over", "Pour-over drips hot water by hand through a paper filter of coffee.", "drip", 4),
    (
        "french-press",
        "A French press steeps coarse coffee grounds, then a mesh plunger presses.",
        "immersion",
        4,
    ),
    ("cold-brew", "Cold brew soaks coarse coffee in cold water for twelve hours.", "immersion", 960),
    ("moka", "A moka pot pushes water up through coffee with steam pressure on the stove.", "pressure", 5),
]


@pytest.fixture(scope="module")
def session_store(database_url: str) -> Iterator[VectorStore]:
    """One blocking store for the module (the standard suite runs 30 tests; each gets it emptied)."""
    with VectorStore(PostgresTransport(database_url), cache="off", outbox=False) as store:
        yield store


class TestStandardSuite(VectorStoreIntegrationTests):
    @staticmethod
    def get_embeddings() -> Embeddings:
        # The suite's own fake embedding at the store's dimension (its default, 6, is not storable).
        return DeterministicFakeEmbedding(size=DIM)

    @pytest.fixture
    async def vectorstore(  # type: ignore[override]
        self, session_store: VectorStore, database_url: str
    ) -> AsyncIterator[SupaVectorsVectorStore]:
        empty_store(database_url)
        # The async store's connection pool belongs to the test's event loop, so it is per test.
        async with AsyncVectorStore(
            AsyncPostgresTransport(database_url), cache="off", outbox=False
        ) as astore:
            yield SupaVectorsVectorStore(session_store, async_store=astore, embedding=self.get_embeddings())


# ------------------------------------------------------------------------------------------------
# beyond the standard suite


@pytest.fixture
def coffee(clean_url: str) -> Iterator[SupaVectorsVectorStore]:
    """The coffee documents, embedded by the store (a bag-of-words fake of the store's model)."""
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off") as store:
        vectorstore = SupaVectorsVectorStore(store)
        vectorstore.add_texts(
            [text for _, text, _, _ in COFFEE],
            metadatas=[{"method": m, "minutes": t, "tags": [m, "coffee"]} for _, _, m, t in COFFEE],
            ids=[i for i, _, _, _ in COFFEE],
        )
        yield vectorstore


def ids(docs: list[Document]) -> list[str | None]:
    return [d.id for d in docs]


def test_filters_take_the_sdk_grammar(coffee: SupaVectorsVectorStore) -> None:
    query = "coffee water pressure"
    assert set(ids(coffee.similarity_search(query, k=5, filter={"method": "pressure"}))) == {
        "espresso",
        "moka",
    }
    found = coffee.similarity_search(
        query, k=5, filter={"$and": [{"minutes": {"$gte": 4, "$lt": 100}}, {"$not": {"method": "drip"}}]}
    )
    assert set(ids(found)) == {"french-press", "moka"}
    assert set(ids(coffee.similarity_search(query, k=5, filter={"tags": {"$contains": "drip"}}))) == {
        "pour-over"
    }
    with pytest.raises(FilterError, match="unknown operator"):
        coffee.similarity_search(query, filter={"minutes": {"$between": [1, 2]}})
    with pytest.raises(InvalidInputError, match="filters"):
        coffee.similarity_search(query, filters={"method": "drip"})  # a typo is not ignored


def test_scores_are_similarities_and_threshold_applies(coffee: SupaVectorsVectorStore) -> None:
    scored = coffee.similarity_search_with_score("cold brew soaks coarse coffee", k=5)
    assert scored[0][0].id == "cold-brew"
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    relevant = coffee.similarity_search_with_relevance_scores("cold brew soaks coarse coffee", k=5)
    assert [s for _, s in relevant] == [s for _, s in scored]
    above = coffee.similarity_search_with_score("cold brew soaks coarse coffee", k=5, threshold=scored[1][1])
    assert len(above) == 2


def test_hybrid_search_is_a_search_type(coffee: SupaVectorsVectorStore) -> None:
    retriever = coffee.as_retriever(
        search_type="hybrid", search_kwargs={"k": 2, "filter": {"method": "pressure"}}
    )
    assert isinstance(retriever, SupaVectorsRetriever)
    docs = retriever.invoke("moka stove")
    assert docs[0].id == "moka"
    assert set(ids(docs)) <= {"espresso", "moka"}
    scored = coffee.hybrid_search_with_score("moka stove", k=3, full_text_weight=2.0)
    assert scored[0][0].id == "moka"
    assert scored[0][1] > scored[-1][1]
    assert ids(coffee.search("moka stove", "hybrid", k=1)) == ["moka"]


async def test_async_without_an_async_store_runs_the_blocking_calls(coffee: SupaVectorsVectorStore) -> None:
    retriever = coffee.as_retriever(search_type="hybrid", search_kwargs={"k": 1})
    assert ids(await retriever.ainvoke("moka stove")) == ["moka"]
    assert ids(await coffee.asimilarity_search("cold brew soaks", k=1)) == ["cold-brew"]
    assert ids(await coffee.aget_by_ids(["moka"])) == ["moka"]


def test_an_async_only_adapter_refuses_blocking_calls(clean_url: str) -> None:
    astore = AsyncVectorStore(AsyncPostgresTransport(clean_url), embedder=FakeEmbedder())
    with pytest.raises(ConfigurationError, match="only an AsyncVectorStore"):
        SupaVectorsVectorStore(async_store=astore).similarity_search("x")
    with pytest.raises(ConfigurationError, match="pass it as async_store="):
        SupaVectorsVectorStore(astore)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"store=.*async_store="):
        SupaVectorsVectorStore()


def test_the_embeddings_adapter_defaults_to_the_local_onnx_model() -> None:
    from supa_vectors import OnnxEmbedder

    embeddings = SupaVectorsEmbeddings()
    assert isinstance(embeddings.embedder, OnnxEmbedder)
    query, (document,) = embeddings.embed_query("espresso"), embeddings.embed_documents(["espresso"])
    assert len(query) == DIM
    assert query == document  # one model for both, as the store embeds
    assert abs(sum(x * x for x in query) - 1) < 1e-4


def test_importing_supa_vectors_loads_no_framework() -> None:
    code = (
        "import sys, supa_vectors; print(sorted(m for m in sys.modules if m.startswith(('langch', 'llama'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_app_embeddings_cannot_hybrid_search(clean_url: str) -> None:
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off") as store:
        built = SupaVectorsVectorStore.from_texts(["tea leaves steep"], None, ids=["tea"], store=store)
        assert ids(built.similarity_search("tea", k=1)) == ["tea"]
        vectorstore = SupaVectorsVectorStore(store, embedding=DeterministicFakeEmbedding(size=DIM))
        with pytest.raises(ConfigurationError, match="hybrid search embeds the query"):
            vectorstore.hybrid_search("moka")
        with pytest.raises(InvalidInputError, match="384-dimensional"):
            SupaVectorsVectorStore(store, embedding=DeterministicFakeEmbedding(size=6)).similarity_search("x")
        with pytest.raises(InvalidInputError, match="deleting everything"):
            vectorstore.delete()


def test_mmr_picks_diverse_candidates_with_their_vectors(clean_url: str) -> None:
    embedder = FakeEmbedder()
    with VectorStore(PostgresTransport(clean_url), embedder=embedder, cache="off") as store:
        vectorstore = SupaVectorsVectorStore(store, embedding=SupaVectorsEmbeddings(embedder))
        texts = ["coffee espresso crema"] * 1 + ["coffee espresso crema shot", "coffee espresso crema cup"]
        vectorstore.add_texts([*texts, "coffee beans roast origin"], ids=["a", "b", "c", "d"])
        plain = vectorstore.similarity_search("coffee espresso crema", k=2)
        assert ids(plain) == ["a", "b"] or ids(plain) == ["a", "c"]
        diverse = vectorstore.max_marginal_relevance_search(
            "coffee espresso crema", k=2, fetch_k=4, lambda_mult=0.1
        )
        assert ids(diverse)[0] == "a"
        assert ids(diverse)[1] == "d"
        retriever = vectorstore.as_retriever(
            search_type="mmr", search_kwargs={"k": 2, "fetch_k": 4, "lambda_mult": 0.1}
        )
        assert ids(retriever.invoke("coffee espresso crema")) == ["a", "d"]
        # hybrid works with the store's own model wrapped as LangChain Embeddings
        assert ids(vectorstore.hybrid_search("roast origin", k=1)) == ["d"]


def test_mmr_compares_the_stored_vectors_not_the_content_embedded_again(clean_url: str) -> None:
    """Stored vectors: b duplicates a, so MMR's second pick is c. Re-embedding the content (the old
    adapter) would see c as a's duplicate and pick b; it would also call the embedder on 3 texts."""
    embedder = FakeEmbedder()
    query, docs = precomputed_mmr_case(embedder)
    with VectorStore(PostgresTransport(clean_url), embedder=embedder, cache="off") as store:
        store.upsert(docs)
        vectorstore = SupaVectorsVectorStore(store)
        embedder.texts.clear()
        picked = vectorstore.max_marginal_relevance_search_by_vector(query, k=2, fetch_k=3, lambda_mult=0.3)
        assert ids(picked) == ["a", "c"]
        assert embedder.texts == []  # nothing embedded: the vectors are the stored ones
        assert ids(vectorstore.max_marginal_relevance_search("alpha", k=2, fetch_k=3, lambda_mult=0.3)) == [
            "a",
            "c",
        ]
        assert embedder.texts == ["alpha"]  # the query only


async def test_async_mmr_compares_the_stored_vectors(clean_url: str) -> None:
    embedder = FakeEmbedder()
    _, docs = precomputed_mmr_case(embedder)
    async with AsyncVectorStore(AsyncPostgresTransport(clean_url), embedder=embedder, cache="off") as astore:
        await astore.upsert(docs)
        vectorstore = SupaVectorsVectorStore(async_store=astore)
        embedder.texts.clear()
        picked = await vectorstore.amax_marginal_relevance_search("alpha", k=2, fetch_k=3, lambda_mult=0.3)
        assert ids(picked) == ["a", "c"]
        assert embedder.texts == ["alpha"]


def test_offline_mmr_embeds_the_candidates_it_got_from_the_mirror(clean_url: str, tmp_path: Path) -> None:
    """Unreachable, the stored vectors cannot be read: MMR runs over the mirror's candidates with
    their content embedded (the only vectors at hand), and says the answer is stale."""
    embedder = FakeEmbedder()
    query, docs = precomputed_mmr_case(embedder)
    transport = FlakyTransport(clean_url)
    with VectorStore(transport, embedder=embedder, cache_dir=tmp_path) as store:
        store.upsert(docs)
        store.sync_mirror()
        vectorstore = SupaVectorsVectorStore(store)
        transport.down = True
        embedder.texts.clear()
        picked = vectorstore.max_marginal_relevance_search_by_vector(query, k=2, fetch_k=3, lambda_mult=0.3)
        assert ids(picked) == ["a", "b"]  # by the content's vectors: c reads as a's duplicate
        assert all(d.metadata["supa_vectors"]["stale"] for d in picked)
        assert sorted(embedder.texts) == ["alpha", "alpha", "beta gamma"]
        with pytest.raises(BackendUnavailableError):
            store.get(["a"], with_vectors=True)


def test_offline_answers_carry_source_and_stale(clean_url: str, tmp_path: Path) -> None:
    transport = FlakyTransport(clean_url)
    with VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path) as store:
        vectorstore = SupaVectorsVectorStore(store)
        vectorstore.add_texts(
            [t for _, t, _, _ in COFFEE],
            ids=[i for i, _, _, _ in COFFEE],
            metadatas=[{"source": f"{i}.md"} for i, _, _, _ in COFFEE],
        )
        live = vectorstore.similarity_search("cold brew soaks", k=2)
        assert live[0].metadata == {"source": "cold-brew.md"}  # nothing added to a live answer
        store.sync_mirror()
        transport.down = True
        cached = vectorstore.similarity_search("cold brew soaks", k=2)
        assert ids(cached) == ids(live)
        assert cached[0].metadata["source"] == "cold-brew.md"  # the app's own "source" is untouched
        assert cached[0].metadata["supa_vectors"]["source"] == "cache"
        assert cached[0].metadata["supa_vectors"]["stale"] is True
        mirrored = vectorstore.similarity_search("moka pot steam", k=1)
        assert mirrored[0].metadata["supa_vectors"] == {
            "source": "mirror",
            "stale": True,
            "age_seconds": mirrored[0].metadata["supa_vectors"]["age_seconds"],
        }
        assert vectorstore.add_texts(["queued while down"], ids=["later"]) == ["later"]
        assert [(w.id, w.status) for w in store.pending()] == [("later", "queued")]


def test_each_identity_sees_its_own_documents(clean_url: str) -> None:
    """RLS is the store's: the adapter over a user's store sees that user's documents only."""
    with two_users(clean_url) as stores:
        a, b = (SupaVectorsVectorStore(s) for s in stores)
        a.add_texts(["alpha private note about espresso"], ids=["note"])
        b.add_texts(["bravo private note about tea"], ids=["note"])
        assert [d.page_content for d in a.get_by_ids(["note"])] == ["alpha private note about espresso"]
        assert [d.page_content for d in b.similarity_search("private note", k=5)] == [
            "bravo private note about tea"
        ]
        b.delete(["note"])
        assert len(a.get_by_ids(["note"])) == 1
        assert b.get_by_ids(["note"]) == []


def test_corpus_retrieval_equals_the_sdks(database_url: str) -> None:
    """Same ids at k=10 as the SDK's own search, over a slice of the shared corpus (see
    tests/test_integrations_corpus.py), both when the store embeds and when the app does."""
    docs, queries = corpus_slice()
    embedder = FakeEmbedder()
    empty_store(database_url)
    with VectorStore(PostgresTransport(database_url), embedder=embedder, cache="off") as store:
        by_store = SupaVectorsVectorStore(store)
        by_app = SupaVectorsVectorStore(store, embedding=SupaVectorsEmbeddings(embedder))
        by_app.add_documents(
            [Document(id=d["id"], page_content=d["content"], metadata=d["metadata"]) for d in docs]
        )
        expected = [[r.id for r in store.search(q, k=10)] for q in queries]
        assert all(len(e) == 10 for e in expected)
        for adapter in (by_store, by_app):
            assert [ids(adapter.similarity_search(q, k=10)) for q in queries] == expected


def test_importing_without_langchain_names_the_extra() -> None:
    message = import_error("supa_vectors.integrations.langchain", "langchain_core")
    assert "pip install 'supa-vectors[langchain]'" in message
