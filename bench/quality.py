"""Section 5: retrieval quality on the shared corpus queries (``queries.jsonl``).

Each query is a section's title; its answer is that section (its body, with the title kept in
``metadata.title``, which the full-text column indexes at weight A). All 2,889 sections are embedded with
our ONNX model (fp32, then int8), loaded through the SDK's bulk path (HNSW built after), and each of the
411 queries is answered by:

* ``vector exact``: numpy's exact cosine top-10 over the same vectors (what an exact scan returns);
* ``vector HNSW``: ``VectorStore.search(query_vector)`` (match_documents, HNSW, ef_search 100);
* ``full-text``: ``hybrid_search`` with semantic_weight 0, keeping the rows full-text found;
* ``hybrid``: ``VectorStore.hybrid_search(query)`` (reciprocal rank fusion, rrf_k 50, equal weights).

Cross-precision: a store written by one variant and searched by the other (``OnnxEmbedder``'s default
picks int8 or fp32 by CPU, so an app's machines may differ): exact top-10 of fp32 documents for int8
queries and the other way round, against each variant alone.

Figures: recall@1, recall@10 (answer in the top 10) and MRR@10. ``--quick`` uses 30 queries and 100
sections clipped to 400 characters (their answers among them): not comparable with the full run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from bench._common import (
    F32,
    CorpusDoc,
    Report,
    bench_stack,
    cpu_features,
    exact_top_k,
    load_corpus,
    load_queries,
    ratio,
    spread,
)

K = 10


def metrics(ranked: Sequence[Sequence[str]], answers: Sequence[str]) -> tuple[float, float, float]:
    """recall@1, recall@10 and MRR@10 of ranked id lists against one answer each."""
    r1, r10, rr = [], [], []
    for found, answer in zip(ranked, answers, strict=True):
        top = list(found[:K])
        r1.append(float(top[:1] == [answer]))
        r10.append(float(answer in top))
        rr.append(1.0 / (top.index(answer) + 1) if answer in top else 0.0)
    return float(np.mean(r1)), float(np.mean(r10)), float(np.mean(rr))


def pick(quick: bool) -> tuple[list[CorpusDoc], list[tuple[str, str]]]:
    docs = load_corpus()
    queries = load_queries()
    if not quick:
        return docs, queries
    # Small and clipped: quick mode only proves the code runs.
    queries = spread(queries, 30)
    answers = {a for _, a in queries}
    others = [d for d in docs if d.id not in answers]
    chosen = [d for d in docs if d.id in answers] + spread(others, 100 - len(answers))
    return [CorpusDoc(d.id, d.content[:400], d.title) for d in chosen], queries


def run(quick: bool) -> dict[str, float]:
    import psycopg

    from supa_vectors import VectorStore
    from supa_vectors.embedding import OnnxEmbedder
    from supa_vectors.transport.postgres import PostgresTransport

    report = Report("quality")
    docs, queries = pick(quick)
    texts = [q for q, _ in queries]
    answers = [a for _, a in queries]
    ids = [d.id for d in docs]
    report.heading(f"{len(queries)} queries over {len(docs):,} corpus sections, k={K}")
    table: dict[str, tuple[float, float, float]] = {}
    embed_rate: dict[str, float] = {}
    vectors: dict[str, tuple[F32, F32]] = {}
    report.note(f"CPU features: {cpu_features()}")
    with bench_stack() as url:
        for variant in ("fp32", "int8"):
            embedder = OnnxEmbedder(precision="int8" if variant == "int8" else "fp32")
            embedder.load()
            start = time.perf_counter()
            doc_vectors = embedder.embed([d.content for d in docs])
            embed_rate[variant] = len(docs) / (time.perf_counter() - start)
            query_vectors = embedder.embed(texts)
            vectors[variant] = (doc_vectors, query_vectors)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("truncate public.documents restart identity cascade")
            with VectorStore(PostgresTransport(url), embedder=embedder) as store:
                store.upsert(
                    [
                        {"id": d.id, "content": d.content, "metadata": {"title": d.title}, "embedding": v}
                        for d, v in zip(docs, doc_vectors, strict=True)
                    ],
                    bulk=True,
                )
                exact = [[ids[i] for i in row] for row in exact_top_k(doc_vectors, query_vectors, K)]
                hnsw = [[r.id for r in store.search(v, k=K)] for v in query_vectors]
                hybrid = [[r.id for r in store.hybrid_search(q, k=K)] for q in texts]
                table[f"vector exact {variant}"] = metrics(exact, answers)
                table[f"vector HNSW {variant}"] = metrics(hnsw, answers)
                table[f"hybrid {variant}"] = metrics(hybrid, answers)
                if variant == "fp32":
                    full_text = [
                        [r.id for r in store.hybrid_search(q, k=K, semantic_weight=0.0) if r.full_text_rank]
                        for q in texts
                    ]
                    table["full-text"] = metrics(full_text, answers)

    for docs_of, queries_of in (("fp32", "int8"), ("int8", "fp32")):
        found = exact_top_k(vectors[docs_of][0], vectors[queries_of][1], K)
        table[f"vector exact docs {docs_of} queries {queries_of}"] = metrics(
            [[ids[i] for i in row] for row in found], answers
        )
    base = table["vector exact fp32"]
    for name, (r1, r10, mrr) in table.items():
        variant = "int8" if name.endswith("int8") else "fp32"
        own_exact = table.get(f"vector exact {variant}", base)
        vs: dict[str, float] = {}
        if name != "vector exact fp32":
            vs["exact fp32"] = ratio(r10, base[1])
        if name.startswith(("hybrid", "vector HNSW")) and variant == "int8":
            vs["exact int8"] = ratio(r10, own_exact[1])
        report.figure(f"{name} recall@1", r1, "")
        report.figure(f"{name} recall@10", r10, "", vs)
        report.figure(
            f"{name} MRR@10",
            mrr,
            "",
            {} if name == "vector exact fp32" else {"exact fp32": ratio(mrr, base[2])},
        )
    report.heading("differences in points (1 point = 0.01)")
    for docs_of, queries_of in (("fp32", "int8"), ("int8", "fp32")):
        cross = table[f"vector exact docs {docs_of} queries {queries_of}"]
        report.figure(
            f"cross docs {docs_of} queries {queries_of} - fp32 recall@10", 100 * (cross[1] - base[1]), "pt"
        )
        report.figure(
            f"cross docs {docs_of} queries {queries_of} - fp32 MRR@10", 100 * (cross[2] - base[2]), "pt"
        )
    cosines = (vectors["fp32"][0] * vectors["int8"][0]).sum(axis=1)
    report.figure("cosine fp32 to int8 per section, min", float(cosines.min()), "")
    report.figure("cosine fp32 to int8 per section, mean", float(cosines.mean()), "")
    for variant in ("fp32", "int8"):
        exact_r10 = table[f"vector exact {variant}"][1]
        report.figure(
            f"HNSW - exact recall@10 {variant}", 100 * (table[f"vector HNSW {variant}"][1] - exact_r10), "pt"
        )
    report.heading("embedding the corpus sections for this section (documents/s)")
    report.figure("ours ONNX fp32 corpus", embed_rate["fp32"], "docs/s")
    report.figure(
        "ours ONNX int8 corpus",
        embed_rate["int8"],
        "docs/s",
        {"fp32": ratio(embed_rate["int8"], embed_rate["fp32"])},
    )
    return report.values
