"""The framework adapters against the frameworks' own Supabase stores: filtered search, side by side.

One store and one vecs collection with the same rows (binary COPY, HNSW m=16, ef_construction=64, as
the search section loads them), the same near-data queries, k=10, filters matching 10% and 1% of the
rows. Every path is called once per query in turn (interleaved), after one warm-up pass:

* ``SDK``: ``VectorStore.search(vector, filter=...)``, the baseline every ratio is against;
* ``ours LangChain``: ``SupaVectorsVectorStore.similarity_search_by_vector(..., filter=...)``;
* ``ours LlamaIndex``: ``SupaVectorsVectorStore.query(VectorStoreQuery(..., filters=MetadataFilters))``;
* ``LlamaIndex vecs``: llama-index-vector-stores-supabase's ``SupabaseVectorStore.query``, which runs
  vecs' ``Collection.query`` (HNSW at vecs' default ef_search, 40; the filter applied after the scan).
  Its rows carry LlamaIndex's node metadata, as its ``add`` writes them.

langchain-community's ``SupabaseVectorStore`` is not run: it calls the ``match_documents`` RPC through
supabase-py, that is over PostgREST, which this machine cannot run (the local stack is Postgres
alone); it would also need its own ``match_documents`` SQL. The report says so rather than faking it.

Figures: rows returned (mean), share of queries with all 10 rows, recall@10 against the exact
filtered top 10 (numpy), p50 latency; ratios against the SDK.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb

from bench._common import (
    F32,
    Report,
    bench_stack,
    cpu_features,
    exact_top_k,
    load_corpus,
    near_queries,
    percentile,
    ratio,
    recall,
    row_numbers,
)
from bench.ingest import (
    VecsTarget,
    build_index,
    empty_without_index,
    load_copy,
    make_rows,
    owner_connection,
    vecs_missing,
)
from bench.search import K, measure

Search = Callable[[F32], list[int]]
COLLECTION = "docs"


def llama_vecs_missing() -> str | None:
    """Why LlamaIndex's vecs-based store cannot run here, or None."""
    if (missing := vecs_missing()) is not None:
        return missing
    try:
        import llama_index.vector_stores.supabase  # noqa: F401
    except ImportError as exc:
        return (
            f"llama-index-vector-stores-supabase is not installed ({exc}); "
            "pip install --no-deps llama-index-vector-stores-supabase==0.6.0"
        )
    return None


def load_noderow_numbers(
    target: VecsTarget,
    url: str,
    ids: list[str],
    contents: list[str],
    meta: list[dict[str, Any]],
    vectors: F32,
) -> None:
    """The rows into vecs with the metadata LlamaIndex's ``add`` writes (node_to_metadata_dict)."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.utils import node_to_metadata_dict
    from pgvector.psycopg.vector import register_vector_info

    target.fresh()
    with psycopg.connect(url, autocommit=True) as conn:
        info = TypeInfo.fetch(conn, "vector")
        assert info is not None
        register_vector_info(conn, info)
        copy = f'copy vecs."{COLLECTION}" (id, vec, metadata) from stdin (format binary)'
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
            cp.set_types(["varchar", info.oid, "jsonb"])
            for i, c, m, v in zip(ids, contents, meta, vectors, strict=True):
                node = TextNode(id_=i, text=c, metadata=m)
                cp.write_row((i, v, Jsonb(node_to_metadata_dict(node, remove_text=False))))
    target.build_index()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'vacuum analyze vecs."{COLLECTION}"')


def run(quick: bool) -> dict[str, float]:
    warnings.filterwarnings("ignore", module="vecs")
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

    from supa_vectors import VectorStore
    from supa_vectors.integrations.langchain import SupaVectorsVectorStore as LangChainStore
    from supa_vectors.integrations.llama_index import SupaVectorsVectorStore as LlamaStore
    from supa_vectors.transport.postgres import PostgresTransport

    rows = 2_000 if quick else 100_000
    report = Report("integrations")
    report.note(f"CPU features: {cpu_features()}; load average {os.getloadavg()}")
    report.note(
        "langchain-community SupabaseVectorStore: not run (it searches through supabase-py over PostgREST, "
        "which this machine cannot run; the local stack is Postgres only)"
    )
    with bench_stack() as url:
        started = time.perf_counter()
        data = make_rows(rows, "d", seed=rows, texts=[d.content for d in load_corpus()])
        conn = owner_connection(url)
        empty_without_index(conn)
        load_copy(conn, data)
        build_index(conn)
        conn.execute("vacuum analyze public.documents")
        conn.execute("vacuum analyze public.embeddings")
        theirs: Any = None
        if (why := llama_vecs_missing()) is None:
            from llama_index.vector_stores.supabase import SupabaseVectorStore

            from bench.search import Loaded

            target = VecsTarget(url)
            vecs_url = Loaded.vecs_url(url)
            load_noderow_numbers(target, vecs_url, list(data.ids), data.contents, data.metadata, data.vectors)
            theirs = SupabaseVectorStore(
                postgres_connection_string=vecs_url.replace("postgresql://", "postgresql+psycopg2://", 1),
                collection_name=COLLECTION,
                dimension=384,
            )
        else:
            report.note(f"LlamaIndex vecs SupabaseVectorStore: not run ({why})")
        print(
            f"  (loaded {rows:,} rows into both stores in {time.perf_counter() - started:.0f} s)", flush=True
        )
        store = VectorStore(PostgresTransport(url), cache="off")
        langchain, llama = LangChainStore(store), LlamaStore(store)
        queries = near_queries(data.vectors, 10 if quick else 100, seed=17)
        b10 = np.array([m["b10"] for m in data.metadata])
        b100 = np.array([m["b100"] for m in data.metadata])
        cases: list[tuple[str, str, int, npt.NDArray[np.bool_]]] = [
            ("10%", "b10", 3, b10 == 3),
            ("1%", "b100", 7, b100 == 7),
        ]
        try:
            for share, key, value, mask in cases:
                filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value)])

                def llama_query(q: F32, on: Any, filters: MetadataFilters = filters) -> list[int]:
                    found = on.query(
                        VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K, filters=filters)
                    )
                    return row_numbers(found.ids)

                paths: dict[str, Search] = {
                    "SDK": lambda q, f={key: value}: row_numbers(
                        r.id for r in store.search(q, k=K, filter=f)
                    ),  # type: ignore[misc]
                    "ours LangChain": lambda q, f={key: value}: row_numbers(  # type: ignore[misc]
                        d.id for d in langchain.similarity_search_by_vector(q.tolist(), k=K, filter=f)
                    ),
                    "ours LlamaIndex": lambda q: llama_query(q, llama),
                }
                if theirs is not None:
                    paths["LlamaIndex vecs"] = lambda q: llama_query(q, theirs)
                times, found = measure(paths, queries)
                truth = exact_top_k(data.vectors, queries, K, mask)
                report.heading(
                    f"filter {{{key!r}: {value}}} ({share} of {rows:,} rows = {int(mask.sum()):,} match), "
                    f"k={K}, {len(queries)} queries"
                )
                sdk_p50 = percentile(times["SDK"], 50)
                for name in paths:
                    counts = [len(f) for f in found[name]]
                    report.figure(f"{name} {share} rows returned (mean)", float(np.mean(counts)), "rows")
                    report.figure(
                        f"{name} {share} queries with all {K} rows",
                        float(np.mean([c == K for c in counts])),
                        "share",
                    )
                    report.figure(f"{name} {share} recall@10", recall(found[name], truth, K), "")
                    p50 = percentile(times[name], 50)
                    report.figure(
                        f"{name} {share} p50",
                        p50,
                        "ms",
                        {} if name == "SDK" else {"SDK": ratio(p50, sdk_p50)},
                    )
        finally:
            store.close()
            conn.close()
            if theirs is not None:
                target.close()
    return report.values
