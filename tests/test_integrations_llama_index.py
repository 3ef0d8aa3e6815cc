"""The LlamaIndex adapter with the real ``llama-index-core``: a ``VectorStoreIndex`` built and queried
over examples/documents, every ``FilterOperator`` checked against LlamaIndex's own evaluation of it,
nested AND/OR/NOT, node round trips, RLS, and corpus retrieval equal to the SDK's.

The fake embedder (bag of words, tests/conftest.py) stands in for the ONNX model: what is tested is the
adapter over the real store and framework, not the model. The node parser gets a whitespace tokenizer:
LlamaIndex's default one loads a tiktoken encoding from the network, which this machine cannot reach.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from llama_index.core.vector_stores.utils import build_metadata_filter_fn

from supa_vectors import AsyncVectorStore, VectorStore
from supa_vectors.errors import FilterError, InvalidInputError
from supa_vectors.integrations.llama_index import SupaVectorsEmbedding, SupaVectorsVectorStore, to_filter
from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
from tests.conftest import REPO_ROOT, FakeEmbedder, empty_store
from tests.integrations_corpus import (
    FlakyTransport,
    corpus_slice,
    import_error,
    precomputed_mmr_case,
    two_users,
)


def example_documents() -> list[Document]:
    """examples/documents in both of its shapes, as LlamaIndex documents with the files' ids."""
    docs = []
    for path in sorted((REPO_ROOT / "examples" / "documents").glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        records = data["documents"] if isinstance(data, dict) else data
        for r in records:
            meta = dict(r.get("metadata") or {})
            doc_id = r.get("id") or meta.pop("doc_id")
            docs.append(Document(id_=doc_id, text=r.get("content") or r["page_content"], metadata=meta))
    return docs


@pytest.fixture
def store(clean_url: str) -> Iterator[VectorStore]:
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off") as store:
        yield store


def build_index(store: VectorStore, **kwargs: Any) -> tuple[VectorStoreIndex, list[Document]]:
    docs = example_documents()
    index = VectorStoreIndex.from_documents(
        docs,
        storage_context=StorageContext.from_defaults(vector_store=SupaVectorsVectorStore(store, **kwargs)),
        embed_model=SupaVectorsEmbedding(store.embedder),
        transformations=[SentenceSplitter(chunk_size=512, tokenizer=str.split)],
    )
    return index, docs


async def test_vector_store_index_builds_and_answers(store: VectorStore, clean_url: str) -> None:
    index, docs = build_index(store)
    assert store.count() == len(docs) == 14
    retriever = index.as_retriever(similarity_top_k=3)
    hits = retriever.retrieve("coarse coffee soaked in cold water for hours")
    assert hits[0].node.ref_doc_id == "brewing/cold-brew"
    cold_brew = next(d for d in docs if d.doc_id == "brewing/cold-brew")
    assert hits[0].node.get_content() == cold_brew.text
    assert hits[0].node.metadata == cold_brew.metadata
    assert hits[0].node.relationships[NodeRelationship.SOURCE].node_id == "brewing/cold-brew"
    assert hits[0].score is not None
    assert hits[0].score > hits[-1].score

    immersion = MetadataFilters(filters=[MetadataFilter(key="method", value="immersion")])
    filtered = index.as_retriever(similarity_top_k=5, filters=immersion).retrieve("coffee water")
    assert {h.node.ref_doc_id for h in filtered} == {"brewing/french-press", "brewing/cold-brew"}

    hybrid = index.as_retriever(similarity_top_k=2, vector_store_query_mode="hybrid")
    assert hybrid.retrieve("moka pot stove")[0].node.ref_doc_id == "brewing/moka-pot"
    words = index.as_retriever(similarity_top_k=2, vector_store_query_mode="text_search")
    assert words.retrieve("crema")[0].node.ref_doc_id == "brewing/espresso"
    # alpha=0 is LlamaIndex's "keywords only": the same ranking as text search
    keywords = index.as_retriever(similarity_top_k=3, vector_store_query_mode="hybrid", alpha=0.0)
    assert [h.node.node_id for h in keywords.retrieve("coarse grounds")] == [
        h.node.node_id
        for h in index.as_retriever(similarity_top_k=3, vector_store_query_mode="text_search").retrieve(
            "coarse grounds"
        )
    ]

    index.delete_ref_doc("brewing/espresso")
    assert store.count() == 13
    assert all(h.node.ref_doc_id != "brewing/espresso" for h in retriever.retrieve("espresso crema pressure"))

    # the async path, over an AsyncVectorStore on the same database
    async with AsyncVectorStore(
        AsyncPostgresTransport(clean_url), embedder=store.embedder, cache="off"
    ) as astore:
        async_index = VectorStoreIndex.from_vector_store(
            SupaVectorsVectorStore(async_store=astore), embed_model=SupaVectorsEmbedding(store.embedder)
        )
        hits = await async_index.as_retriever(similarity_top_k=1).aretrieve("first crack popping steam")
        assert hits[0].node.ref_doc_id == "roasting/first-crack"
        await async_index.adelete_ref_doc("roasting/first-crack")
        assert await astore.count() == 12


def test_nodes_round_trip(store: VectorStore) -> None:
    vector_store = SupaVectorsVectorStore(store)
    source = RelatedNodeInfo(node_id="book", metadata={"edition": 2})
    nodes = [
        TextNode(
            id_=f"n{i}",
            text=f"chapter {i} text about coffee",
            metadata={"chapter": i, "tags": ["a", "b"][: i + 1]},
            relationships={NodeRelationship.SOURCE: source},
        )
        for i in range(2)
    ]
    nodes[1].relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id="n0")
    assert vector_store.add(nodes) == ["n0", "n1"]  # no embeddings: the store embeds them
    back = vector_store.get_nodes(node_ids=["n1", "n0"])
    assert [n.node_id for n in back] == ["n1", "n0"]
    for got, original in zip(back, reversed(nodes), strict=True):
        assert got.get_content() == original.get_content()
        assert got.metadata == original.metadata
        assert got.relationships == original.relationships
    assert {n.node_id for n in vector_store.get_nodes()} == {"n0", "n1"}
    by_filter = vector_store.get_nodes(
        filters=MetadataFilters(filters=[MetadataFilter(key="chapter", value=1)])
    )
    assert [n.node_id for n in by_filter] == ["n1"]
    vector_store.delete_nodes(
        node_ids=["n0", "n1"], filters=MetadataFilters(filters=[MetadataFilter(key="chapter", value=0)])
    )
    assert [n.node_id for n in vector_store.get_nodes()] == ["n1"]
    vector_store.delete("book")
    assert vector_store.get_nodes() == []
    with pytest.raises(InvalidInputError, match="clear"):
        vector_store.delete_nodes()
    # a document the SDK wrote (no LlamaIndex keys) reads as a TextNode
    store.upsert({"id": "plain", "content": "written by the SDK", "metadata": {"kind": "note"}})
    (plain,) = vector_store.get_nodes(node_ids=["plain"])
    assert isinstance(plain, TextNode)
    assert (plain.node_id, plain.get_content(), plain.metadata) == (
        "plain",
        "written by the SDK",
        {"kind": "note"},
    )
    assert vector_store.query(VectorStoreQuery(query_str="written by the SDK", similarity_top_k=1)).ids == [
        "plain"
    ]


async def test_async_methods_over_an_async_store(clean_url: str) -> None:
    async with AsyncVectorStore(
        AsyncPostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off"
    ) as astore:
        vector_store = SupaVectorsVectorStore(async_store=astore)
        assert vector_store.client is astore
        source = RelatedNodeInfo(node_id="book")
        nodes = [
            TextNode(
                id_=f"n{i}",
                text=f"page {i} about tea",
                metadata={"page": i},
                relationships={NodeRelationship.SOURCE: source},
            )
            for i in range(3)
        ]
        assert await vector_store.async_add(nodes) == ["n0", "n1", "n2"]
        got = await vector_store.aget_nodes(node_ids=["n2"])
        assert [(n.node_id, n.metadata, n.ref_doc_id) for n in got] == [("n2", {"page": 2}, "book")]
        page_0 = MetadataFilters(filters=[MetadataFilter(key="page", value=0)])
        await vector_store.adelete_nodes(filters=page_0)
        result = await vector_store.aquery(VectorStoreQuery(query_str="tea", similarity_top_k=5))
        assert sorted(result.ids or []) == ["n1", "n2"]
        await vector_store.aclear()
        assert await vector_store.aget_nodes() == []


# ------------------------------------------------------------------------------------------------
# filters: every operator, on the server, against LlamaIndex's own evaluation

ROWS: list[dict[str, Any]] = [
    {"year": 2019, "genre": "drama", "tags": ["classic", "long"], "note": "x"},
    {"year": 2021, "genre": "comedy", "tags": ["short"], "note": ""},
    {"year": 2022, "genre": "drama", "tags": ["short", "award"], "note": None},
    {"year": 2024, "genre": "horror", "tags": [], "rating": 7},
    {"year": 2025, "genre": "comedy", "tags": ["award", "classic", "long"]},
]

OPERATOR_CASES: dict[FilterOperator, MetadataFilter] = {
    FilterOperator.EQ: MetadataFilter(key="genre", value="drama", operator=FilterOperator.EQ),
    FilterOperator.NE: MetadataFilter(key="genre", value="drama", operator=FilterOperator.NE),
    FilterOperator.GT: MetadataFilter(key="year", value=2021, operator=FilterOperator.GT),
    FilterOperator.GTE: MetadataFilter(key="year", value=2021, operator=FilterOperator.GTE),
    FilterOperator.LT: MetadataFilter(key="year", value=2022, operator=FilterOperator.LT),
    FilterOperator.LTE: MetadataFilter(key="year", value=2022, operator=FilterOperator.LTE),
    FilterOperator.IN: MetadataFilter(key="genre", value=["comedy", "horror"], operator=FilterOperator.IN),
    FilterOperator.NIN: MetadataFilter(key="genre", value=["comedy", "horror"], operator=FilterOperator.NIN),
    FilterOperator.ANY: MetadataFilter(key="tags", value=["award", "long"], operator=FilterOperator.ANY),
    FilterOperator.ALL: MetadataFilter(key="tags", value=["award", "classic"], operator=FilterOperator.ALL),
    FilterOperator.CONTAINS: MetadataFilter(key="tags", value="short", operator=FilterOperator.CONTAINS),
    FilterOperator.IS_EMPTY: MetadataFilter(key="note", value=None, operator=FilterOperator.IS_EMPTY),
    FilterOperator.TEXT_MATCH: MetadataFilter(key="genre", value="dram", operator=FilterOperator.TEXT_MATCH),
    FilterOperator.TEXT_MATCH_INSENSITIVE: MetadataFilter(
        key="genre", value="DRAM", operator=FilterOperator.TEXT_MATCH_INSENSITIVE
    ),
}
UNSUPPORTED = {FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE}


def test_every_filter_operator_has_a_case() -> None:
    assert set(OPERATOR_CASES) == set(FilterOperator)


@pytest.fixture
def rows(store: VectorStore) -> SupaVectorsVectorStore:
    vector_store = SupaVectorsVectorStore(store)
    vector_store.add([TextNode(id_=f"r{i}", text=f"row {i}", metadata=m) for i, m in enumerate(ROWS)])
    return vector_store


def expected(filters: MetadataFilters) -> set[str]:
    """LlamaIndex's own answer (its in-memory store's filter function) over the same rows."""
    matches = build_metadata_filter_fn(lambda node_id: ROWS[int(node_id[1:])], filters)
    return {f"r{i}" for i in range(len(ROWS)) if matches(f"r{i}")}


@pytest.mark.parametrize("operator", list(FilterOperator), ids=lambda o: o.name)
def test_filter_operator_selects_what_llama_index_selects(
    rows: SupaVectorsVectorStore, operator: FilterOperator
) -> None:
    filters = MetadataFilters(filters=[OPERATOR_CASES[operator]])
    if operator in UNSUPPORTED:
        with pytest.raises(FilterError, match=f"{operator.name}.*no counterpart"):
            rows.get_nodes(filters=filters)
        return
    got = {n.node_id for n in rows.get_nodes(filters=filters)}
    assert got == expected(filters)
    assert got  # every case selects something, and not everything
    assert got != {f"r{i}" for i in range(len(ROWS))}


@pytest.mark.parametrize("condition", [FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT])
def test_conditions_combine_like_llama_index(
    rows: SupaVectorsVectorStore, condition: FilterCondition
) -> None:
    filters = MetadataFilters(
        filters=[OPERATOR_CASES[FilterOperator.EQ], OPERATOR_CASES[FilterOperator.GT]], condition=condition
    )
    assert {n.node_id for n in rows.get_nodes(filters=filters)} == expected(filters)


def test_nested_filters(rows: SupaVectorsVectorStore) -> None:
    # (genre == comedy AND year >= 2025) OR (NOT (tags contains "short" OR year > 2022))
    nested = MetadataFilters(
        filters=[
            MetadataFilters(
                filters=[
                    MetadataFilter(key="genre", value="comedy"),
                    MetadataFilter(key="year", value=2025, operator=FilterOperator.GTE),
                ]
            ),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="tags", value="short", operator=FilterOperator.CONTAINS),
                    MetadataFilter(key="year", value=2022, operator=FilterOperator.GT),
                ],
                condition=FilterCondition.NOT,
            ),
        ],
        condition=FilterCondition.OR,
    )
    assert to_filter(nested) == {
        "$or": [
            {"$and": [{"genre": {"$eq": "comedy"}}, {"year": {"$gte": 2025}}]},
            {"$not": {"$or": [{"tags": {"$contains": "short"}}, {"year": {"$gt": 2022}}]}},
        ]
    }
    assert {n.node_id for n in rows.get_nodes(filters=nested)} == {"r0", "r4"}
    query = VectorStoreQuery(query_str="row", similarity_top_k=5, filters=nested)
    assert set(rows.query(query).ids or []) == {"r0", "r4"}


def test_unsupported_queries_say_so(rows: SupaVectorsVectorStore) -> None:
    with pytest.raises(InvalidInputError, match="'sparse' is not offered"):
        rows.query(VectorStoreQuery(query_str="row", mode=VectorStoreQueryMode.SPARSE))
    with pytest.raises(InvalidInputError, match="MMR query needs query_embedding"):
        rows.query(VectorStoreQuery(query_str="row", mode=VectorStoreQueryMode.MMR))
    with pytest.raises(InvalidInputError, match="does not take mmr_lambda"):
        rows.query(
            VectorStoreQuery(query_embedding=[1.0] * 384, mode=VectorStoreQueryMode.MMR), mmr_lambda=0.5
        )
    with pytest.raises(InvalidInputError, match="takes no options"):
        rows.query(VectorStoreQuery(query_str="row"), mmr_threshold=0.5)
    with pytest.raises(InvalidInputError, match="node_ids"):
        rows.query(VectorStoreQuery(query_str="row", node_ids=["r1"]))
    with pytest.raises(InvalidInputError, match="needs query_str"):
        rows.query(VectorStoreQuery(query_embedding=[1.0] * 384, mode=VectorStoreQueryMode.HYBRID))


def mmr_nodes(embedder: FakeEmbedder) -> tuple[list[float], list[TextNode]]:
    query, docs = precomputed_mmr_case(embedder)
    return query, [TextNode(id_=d.id, text=d.content, embedding=d.embedding) for d in docs]


def test_mmr_compares_the_stored_vectors(clean_url: str) -> None:
    """Nodes written with their own embeddings: MMR (query mode and retriever) picks by those, not by
    their text embedded again ("c" reads as a duplicate of "a" by its text, not by its vector)."""
    embedder = FakeEmbedder()
    query, nodes = mmr_nodes(embedder)
    with VectorStore(PostgresTransport(clean_url), embedder=embedder, cache="off") as store:
        vector_store = SupaVectorsVectorStore(store)
        vector_store.add(nodes)
        embedder.texts.clear()
        mmr = VectorStoreQuery(query_embedding=query, similarity_top_k=2, mode=VectorStoreQueryMode.MMR)
        found = vector_store.query(mmr, mmr_threshold=0.3, mmr_prefetch_k=3)
        assert found.ids == ["a", "c"]
        assert embedder.texts == []
        index = VectorStoreIndex.from_vector_store(vector_store, embed_model=SupaVectorsEmbedding(embedder))
        retriever = index.as_retriever(
            similarity_top_k=2, vector_store_query_mode="mmr", vector_store_kwargs={"mmr_threshold": 0.3}
        )
        assert [h.node.node_id for h in retriever.retrieve("alpha")] == ["a", "c"]


async def test_async_mmr_compares_the_stored_vectors(clean_url: str) -> None:
    embedder = FakeEmbedder()
    query, nodes = mmr_nodes(embedder)
    async with AsyncVectorStore(AsyncPostgresTransport(clean_url), embedder=embedder, cache="off") as astore:
        vector_store = SupaVectorsVectorStore(async_store=astore)
        await vector_store.async_add(nodes)
        mmr = VectorStoreQuery(query_embedding=query, similarity_top_k=2, mode=VectorStoreQueryMode.MMR)
        found = await vector_store.aquery(mmr, mmr_threshold=0.3, mmr_prefetch_factor=1.5)
        assert found.ids == ["a", "c"]


def test_each_identity_sees_its_own_nodes(clean_url: str) -> None:
    with two_users(clean_url) as stores:
        a, b = (SupaVectorsVectorStore(s) for s in stores)
        a.add([TextNode(id_="n", text="alpha secret espresso")])
        b.add([TextNode(id_="n", text="bravo secret tea")])
        assert [n.get_content() for n in a.get_nodes()] == ["alpha secret espresso"]
        b.clear()
        assert b.get_nodes() == []
        assert len(a.get_nodes()) == 1


def test_offline_answers_carry_source_and_stale(clean_url: str, tmp_path: Path) -> None:
    transport = FlakyTransport(clean_url)
    with VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path) as store:
        vector_store = SupaVectorsVectorStore(store)
        vector_store.add([TextNode(id_="n", text="moka pot on the stove", metadata={"source": "moka.md"})])
        query = VectorStoreQuery(query_str="moka pot", similarity_top_k=1)
        assert vector_store.query(query).nodes[0].metadata == {"source": "moka.md"}  # type: ignore[index]
        transport.down = True
        (node,) = vector_store.query(query).nodes or []
        assert node.node_id == "n"
        assert node.metadata["source"] == "moka.md"
        assert node.metadata["supa_vectors"]["source"] == "cache"
        assert node.metadata["supa_vectors"]["stale"] is True


def test_corpus_retrieval_equals_the_sdks(database_url: str) -> None:
    """Same ids at k=10 as the SDK's own search over a slice of the corpus (tests/integrations_corpus.py)."""
    docs, queries = corpus_slice()
    empty_store(database_url)
    embedder = FakeEmbedder()
    with VectorStore(PostgresTransport(database_url), embedder=embedder, cache="off") as store:
        vector_store = SupaVectorsVectorStore(store)
        embed_model = SupaVectorsEmbedding(embedder)
        nodes = [TextNode(id_=d["id"], text=d["content"], metadata=d["metadata"]) for d in docs]
        for node, vector in zip(
            nodes, embed_model.get_text_embedding_batch([n.text for n in nodes]), strict=True
        ):
            node.embedding = vector
        vector_store.add(nodes)
        expected = [[r.id for r in store.search(q, k=10)] for q in queries]
        assert all(len(e) == 10 for e in expected)
        got = [
            vector_store.query(
                VectorStoreQuery(query_embedding=embed_model.get_query_embedding(q), similarity_top_k=10)
            ).ids
            for q in queries
        ]
        assert got == expected


def test_importing_without_llama_index_names_the_extra() -> None:
    message = import_error("supa_vectors.integrations.llama_index", "llama_index", "llama_index.core")
    assert "pip install 'supa-vectors[llama-index]'" in message
