"""Sections 3 and 4: vector search latency and recall, unfiltered and filtered, at 100k x 384.

One store loaded once for both (binary COPY + HNSW build, m=16, ef_construction=64; not timed here, see
the ingest section), and the same rows in a vecs collection with the same HNSW parameters in its own
database on the same server. Queries are stored points plus a little noise; the truth is numpy's exact
cosine top-10 over the same vectors. Every path is called once per query in turn (interleaved), after
one warm-up pass, single client, sequential: queries/s = 1 / mean latency.

Unfiltered paths, at several ef_search:

* ``raw SQL``: the ANN statement match_documents runs inside (embeddings join documents, order by
  the half-precision ``<=>`` the index serves, limit 10), from psycopg with a binary vector
  parameter, ``hnsw.ef_search`` set per session;
* ``RPC direct``: ``select ... from match_documents(...)`` from psycopg, as the table owner;
  ``RPC before``: the same call to the definition before 20261203000900, which walks an index over
  the full-precision vectors (built beside ours as ``bench_vector_idx``);
* ``SDK``: the Postgres transport's ``rpc("match_documents")`` + row parsing, as service_role (one
  pipelined round trip that sets role and JWT claims first), which is what ``VectorStore.search``
  does; ``VectorStore.search`` itself (ef_search chosen by the RPC: 100) is timed too;
* ``vecs``: ``Collection.query(data=vector, limit=10, ef_search=...)``.

Filtered (k=10, ``{"b10": 3}`` matches 10% of rows, ``{"b100": 7}`` 1%): rows returned and recall
against the exact filtered top-10, for the SDK, vecs (ef_search 40, its default), pgvector's iterative
scan alone (relaxed order, ef_search 40: the baseline every p50 is divided by) and a plain
post-filtered HNSW scan; and ``match_documents`` from psycopg twice, as this checkout defines it and as
it was before ``20261203000900_halfvec_index`` (its rollback holds that definition; created here as
``match_documents_before``, over the full-precision index), with the server-side plan of each: every
statement the function ran (auto_explain), with its time and top plan node.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types import TypeInfo
from psycopg.types.json import Jsonb

from bench._common import (
    F32,
    MODEL,
    REPO_ROOT,
    Report,
    bench_stack,
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

K = 10
# The order the HNSW index serves (migration 20261203000900): the normalised half-precision copy.
HALF_ORDER = (
    "(extensions.l2_normalize(e.embedding))::extensions.halfvec(384) operator(extensions.<=>)"
    " (extensions.l2_normalize(%b::extensions.vector))::extensions.halfvec(384)"
)
RAW_SQL = (
    "select d.external_id from public.embeddings e join public.documents d on d.id = e.document_id"
    f" where e.model = %s order by {HALF_ORDER} limit 10"
)
RPC_SQL = (
    "select external_id from public.match_documents("
    "query_embedding => %b, match_count => 10, ef_search => %s)"
)
RPC_BEFORE_SQL = RPC_SQL.replace("match_documents", "match_documents_before")
FILTERED_SQL = (
    "select d.external_id from public.embeddings e join public.documents d on d.id = e.document_id"
    f" where e.model = %s and d.metadata @> %s order by {HALF_ORDER} limit 10"
)

FILTERED_RPC_SQL = (
    "select external_id from public.{function}(query_embedding => %b, match_count => 10, filter => %s)"
)
# The definition match_documents had before 20261203000900 (its rollback restores it), which walks an
# index over the full-precision vectors; that index is built beside ours as bench_vector_idx.
BEFORE_MIGRATION = REPO_ROOT / "supabase" / "rollbacks" / "20261203000900_halfvec_index.sql"
VECTOR_INDEX_SQL = (
    "create index if not exists bench_vector_idx on public.embeddings"
    " using hnsw (embedding extensions.vector_cosine_ops) with (m = 16, ef_construction = 64)"
)

Search = Callable[[F32], list[int]]


def load_vecs(
    target: VecsTarget, url: str, vectors: F32, contents: list[str], meta: list[dict[str, Any]]
) -> None:
    """The same rows into the vecs collection by binary COPY (its upsert is timed in ingest)."""
    target.fresh()
    with psycopg.connect(url, autocommit=True) as conn:
        info = TypeInfo.fetch(conn, "vector")
        assert info is not None
        from pgvector.psycopg.vector import register_vector_info

        register_vector_info(conn, info)
        copy = 'copy vecs."docs" (id, vec, metadata) from stdin (format binary)'
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as cp:
            cp.set_types(["varchar", info.oid, "jsonb"])
            for i, (v, c, m) in enumerate(zip(vectors, contents, meta, strict=True)):
                cp.write_row((f"d{i}", v, Jsonb({"content": c, **m})))
    target.build_index()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('vacuum analyze vecs."docs"')


def measure(
    paths: dict[str, Search], queries: F32
) -> tuple[dict[str, list[float]], dict[str, list[list[int]]]]:
    """Latency (ms) and results per path, every path called once per query in turn, after a warm-up pass."""
    for q in queries:
        for fn in paths.values():
            fn(q)
    times: dict[str, list[float]] = {n: [] for n in paths}
    found: dict[str, list[list[int]]] = {n: [] for n in paths}
    for q in queries:
        for name, fn in paths.items():
            start = time.perf_counter()
            result = fn(q)
            times[name].append((time.perf_counter() - start) * 1000)
            found[name].append(result)
    return times, found


def create_match_documents_before(conn: psycopg.Connection[Any]) -> None:
    """The previous match_documents beside the current one, as ``public.match_documents_before``,
    with the full-precision index it walks."""
    text = BEFORE_MIGRATION.read_text(encoding="utf-8")
    sql = text[text.index("create or replace function public.match_documents(") :]
    conn.execute(sql.replace("match_documents", "match_documents_before"))
    conn.execute("set maintenance_work_mem = '256MB'")  # as create_vector_index() builds
    conn.execute(VECTOR_INDEX_SQL)
    conn.execute("reset maintenance_work_mem")


def nested_plans(url: str, sql: str, params: list[Any]) -> list[str]:
    """Every statement a call ran on the server, with its time and top plan node (auto_explain).

    The call runs once to warm up, then once recorded; the owner's own session, so plans are not
    logged elsewhere.
    """
    notices: list[str] = []
    with owner_connection(url) as conn:
        conn.execute(sql, params).fetchall()
        for setting in (
            "load 'auto_explain'",
            "set auto_explain.log_min_duration = 0",
            "set auto_explain.log_analyze = on",
            "set auto_explain.log_timing = off",
            "set auto_explain.log_nested_statements = on",
            "set auto_explain.log_level = notice",
        ):
            conn.execute(setting)
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute(sql, params).fetchall()
    out = []
    for plan in notices:
        lines = plan.splitlines()
        text = " ".join(lines[1:]).split("Query Text:", 1)[-1].strip()
        if "public." not in text or "metadata_global" in text:
            continue  # settings look-ups and expressions
        node = next((ln.strip() for ln in lines if "(cost=" in ln), "")
        out.append(f"{lines[0].split('plan:')[0].strip()} | {text[:90]} | {node[:150]}")
    return out


def server_ms(conn: psycopg.Connection[Any], sql: str, params: list[Any], repeats: int) -> float:
    """Median server-side execution time (EXPLAIN ANALYZE) of a statement."""
    out = []
    for _ in range(repeats):
        plan = conn.execute(f"explain (analyze, format json) {sql}", params).fetchone()
        assert plan is not None
        out.append(float(plan[0][0]["Execution Time"]))
    return float(np.median(out))


class Loaded:
    """The stack, both stores loaded, and the connections every path uses."""

    def __init__(self, url: str, rows: int) -> None:
        from supa_vectors import VectorStore
        from supa_vectors.transport.postgres import PostgresTransport

        texts = [d.content for d in load_corpus()]
        data = make_rows(rows, "d", seed=rows, texts=texts)
        self.vectors = data.vectors
        self.metadata = data.metadata
        self.conn = owner_connection(url)
        empty_without_index(self.conn)
        load_copy(self.conn, data)
        self.build_s = build_index(self.conn)
        self.conn.execute("vacuum analyze public.documents")
        self.conn.execute("vacuum analyze public.embeddings")
        self.vecs: VecsTarget | None = None
        if vecs_missing() is None:
            self.vecs = VecsTarget(url)
            load_vecs(self.vecs, self.vecs_url(url), data.vectors, data.contents, data.metadata)
        self.store = VectorStore(PostgresTransport(url))
        self.store.settings()
        self.url = url
        create_match_documents_before(self.conn)

    @staticmethod
    def vecs_url(url: str) -> str:
        from bench._common import database_url
        from bench.ingest import VECS_DB

        return database_url(url, VECS_DB)

    def close(self) -> None:
        self.store.close()
        if self.vecs is not None:
            self.vecs.close()
        self.conn.close()

    # ---- paths ---------------------------------------------------------------------------------

    def raw(self, q: F32) -> list[int]:
        return row_numbers([r[0] for r in self.conn.execute(RAW_SQL, [MODEL, q]).fetchall()])

    def rpc(self, ef: int, sql: str = RPC_SQL) -> Search:
        return lambda q: row_numbers([r[0] for r in self.conn.execute(sql, [q, ef]).fetchall()])

    def sdk_rpc(self, ef: int) -> Search:
        from supa_vectors._core import checks, rows

        transport = self.store.transport

        def search(q: F32) -> list[int]:
            params = {**checks.match_params(checks.query_vector(q, 384), K, None, {}), "ef_search": ef}
            return row_numbers(
                [r.id for r in rows.parse_search_rows(transport.rpc("match_documents", params))]
            )

        return search

    def sdk_search(self, q: F32, filter: dict[str, Any] | None = None) -> list[int]:
        return row_numbers([r.id for r in self.store.search(q, k=K, filter=filter)])

    def vecs_query(self, ef: int, filters: dict[str, Any] | None = None) -> dict[str, Search]:
        """The vecs path under ``vecs``, or nothing when vecs is not installed."""
        if self.vecs is None:
            return {}
        collection = self.vecs.collection
        return {
            "vecs": lambda q: row_numbers(collection.query(data=q, limit=K, ef_search=ef, filters=filters))
        }


def run_search(loaded: Loaded, queries: F32, efs: Sequence[int], report: Report) -> None:
    truth = exact_top_k(loaded.vectors, queries, K)
    rows = len(loaded.vectors)
    report.heading(f"{rows:,} rows x 384, {len(queries)} queries, k={K}, single client (latency ms)")
    for ef in efs:
        loaded.conn.execute(f"set hnsw.ef_search = {int(ef)}")
        paths: dict[str, Search] = {
            "raw SQL": loaded.raw,
            "RPC direct": loaded.rpc(ef),
            "RPC before": loaded.rpc(ef, RPC_BEFORE_SQL),
            "SDK": loaded.sdk_rpc(ef),
            **loaded.vecs_query(ef),
        }
        times, found = measure(paths, queries)
        p50 = {n: percentile(t, 50) for n, t in times.items()}
        report.heading(f"ef_search {ef}")
        for name in paths:
            ratios = {}
            if name != "raw SQL":
                ratios["raw SQL"] = ratio(p50[name], p50["raw SQL"])
            if name == "RPC direct":
                ratios["RPC before"] = ratio(p50[name], p50["RPC before"])
            if name == "SDK":
                ratios["RPC direct"] = ratio(p50["SDK"], p50["RPC direct"])
                if "vecs" in p50:
                    ratios["vecs"] = ratio(p50["SDK"], p50["vecs"])
            report.figure(f"{name} p50 ef{ef}", p50[name], "ms", ratios)
            report.figure(f"{name} p95 ef{ef}", percentile(times[name], 95), "ms")
            report.figure(f"{name} queries/s ef{ef}", 1000 / float(np.mean(times[name])), "q/s")
            report.figure(f"{name} recall@10 ef{ef}", recall(found[name], truth, K), "")
        if ef == efs[0]:
            sample = queries[: min(20, len(queries))]
            raw_server = float(np.median([server_ms(loaded.conn, RAW_SQL, [MODEL, q], 1) for q in sample]))
            rpc_server = float(np.median([server_ms(loaded.conn, RPC_SQL, [q, ef], 1) for q in sample]))
            before_server = float(
                np.median([server_ms(loaded.conn, RPC_BEFORE_SQL, [q, ef], 1) for q in sample])
            )
            report.figure(
                f"raw SQL server execution ef{ef}",
                raw_server,
                "ms",
                {"raw SQL client p50": ratio(raw_server, p50["raw SQL"])},
            )
            report.figure(
                f"RPC server execution ef{ef}",
                rpc_server,
                "ms",
                {"RPC direct client p50": ratio(rpc_server, p50["RPC direct"])},
            )
            report.figure(
                f"RPC before server execution ef{ef}",
                before_server,
                "ms",
                {"RPC server execution": ratio(before_server, rpc_server)},
            )
    times, found = measure({"SDK VectorStore.search": loaded.sdk_search}, queries)
    vecs_times, _ = measure(loaded.vecs_query(40), queries)
    report.heading("VectorStore.search(vector) with the RPC's default ef_search (100)")
    sdk_p50 = percentile(times["SDK VectorStore.search"], 50)
    report.figure(
        "SDK VectorStore.search p50",
        sdk_p50,
        "ms",
        {"vecs ef40": ratio(sdk_p50, percentile(vecs_times["vecs"], 50))} if vecs_times else {},
    )
    report.figure("SDK VectorStore.search p95", percentile(times["SDK VectorStore.search"], 95), "ms")
    report.figure("SDK VectorStore.search recall@10", recall(found["SDK VectorStore.search"], truth, K), "")


def filtered_scan(conn: psycopg.Connection[Any], flt: dict[str, Any], *, iterative: bool = True) -> Search:
    """pgvector's own filtered HNSW scan at ef_search 40: iterative (relaxed order), or post-filtered."""

    def run(q: F32) -> list[int]:
        with conn.transaction():
            conn.execute(f"set local hnsw.iterative_scan = {'relaxed_order' if iterative else 'off'}")
            conn.execute("set local hnsw.ef_search = 40")
            return row_numbers([r[0] for r in conn.execute(FILTERED_SQL, [MODEL, Jsonb(flt), q]).fetchall()])

    return run


def filtered_rpc(
    conn: psycopg.Connection[Any], flt: dict[str, Any], function: str = "match_documents"
) -> Search:
    """``function`` (match_documents or a definition created beside it) with ``flt``, k = 10."""
    sql = FILTERED_RPC_SQL.format(function=function)
    return lambda q: row_numbers([r[0] for r in conn.execute(sql, [q, Jsonb(flt)]).fetchall()])


def run_filtered_part(loaded: Loaded, queries: F32, report: Report) -> None:
    rows = len(loaded.vectors)
    b10 = np.array([m["b10"] for m in loaded.metadata])
    b100 = np.array([m["b100"] for m in loaded.metadata])
    cases: list[tuple[str, dict[str, Any], npt.NDArray[np.bool_]]] = [
        ("10%", {"b10": 3}, b10 == 3),
        ("1%", {"b100": 7}, b100 == 7),
    ]
    conn = loaded.conn
    for share, flt, mask in cases:
        truth = exact_top_k(loaded.vectors, queries, K, mask)
        vecs_filter = {key: {"$eq": value} for key, value in flt.items()}

        paths: dict[str, Search] = {
            "pgvector iterative scan": filtered_scan(conn, flt),
            "match_documents before": filtered_rpc(conn, flt, "match_documents_before"),
            "match_documents now": filtered_rpc(conn, flt),
            "ours SDK": lambda q, flt=flt: loaded.sdk_search(q, flt),  # type: ignore[misc]
            **loaded.vecs_query(40, vecs_filter),
            "post-filtered HNSW": filtered_scan(conn, flt, iterative=False),
        }
        times, found = measure(paths, queries)
        report.heading(
            f"filter {flt} ({share} of {rows:,} rows = {int(mask.sum()):,} match), k={K}, "
            f"{len(queries)} queries"
        )
        stats = {}
        for name in paths:
            counts = [len(f) for f in found[name]]
            stats[name] = (
                float(np.mean(counts)),
                float(np.mean([c == K for c in counts])),
                recall(found[name], truth, K),
                percentile(times[name], 50),
            )
        ours = stats["ours SDK"]
        iterative_p50 = stats["pgvector iterative scan"][3]
        for name, (mean_rows, complete, rec, p50) in stats.items():
            vs = {}
            if name == "ours SDK":
                vs = {
                    "vecs": ratio(rec, stats["vecs"][2]),
                    "pgvector iterative": ratio(rec, stats["pgvector iterative scan"][2]),
                }
            report.figure(f"{name} {share} rows returned (mean)", mean_rows, "rows")
            report.figure(f"{name} {share} queries with all {K} rows", complete, "share")
            report.figure(f"{name} {share} recall@10", rec, "", vs)
            report.figure(
                f"{name} {share} p50",
                p50,
                "ms",
                {"pgvector iterative": ratio(p50, iterative_p50)}
                | ({} if name == "ours SDK" else {"ours SDK": ratio(p50, ours[3])}),
            )
            report.figure(f"{name} {share} p95", percentile(times[name], 95), "ms")
        report.note(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        sample = queries[0]
        report.note(f"plan, pgvector iterative scan ({share}):")
        with conn.transaction():
            conn.execute("set local hnsw.iterative_scan = relaxed_order")
            conn.execute("set local hnsw.ef_search = 40")
            plan = conn.execute(f"explain (analyze, timing off) {FILTERED_SQL}", [MODEL, Jsonb(flt), sample])
            lines = [r[0] for r in plan.fetchall()]
        nodes = [ln.strip() for ln in lines if "(cost=" in ln or "Execution" in ln]
        report.note("    " + " / ".join(nodes)[:400])
        for function in ("match_documents_before", "match_documents"):
            report.note(f"plan, {function} ({share}), each statement it ran:")
            sql = FILTERED_RPC_SQL.format(function=function)
            for line in nested_plans(loaded.url, sql, [sample, Jsonb(flt)]):
                report.note("    " + line)


def run_parts(quick: bool, parts: Sequence[str]) -> dict[str, dict[str, float]]:
    """Load once, then run the chosen parts ("search", "filtered"); figures per part."""
    warnings.filterwarnings("ignore", module="vecs")
    rows = 2_000 if quick else 100_000
    results: dict[str, dict[str, float]] = {}
    with bench_stack() as url:
        started = time.perf_counter()
        loaded = Loaded(url, rows)
        print(
            f"  (loaded {rows:,} rows into both stores in {time.perf_counter() - started:.0f} s)", flush=True
        )
        try:
            if "search" in parts:
                report = Report("search")
                queries = near_queries(loaded.vectors, 20 if quick else 300, seed=11)
                run_search(loaded, queries, [40, 100] if quick else [40, 100, 200], report)
                results["search"] = report.values
            if "filtered" in parts:
                report = Report("filtered")
                queries = near_queries(loaded.vectors, 10 if quick else 100, seed=12)
                run_filtered_part(loaded, queries, report)
                results["filtered"] = report.values
        finally:
            loaded.close()
    return results


def run_search_only(quick: bool) -> dict[str, float]:
    return run_parts(quick, ["search"])["search"]


def run_filtered(quick: bool) -> dict[str, float]:
    return run_parts(quick, ["filtered"])["filtered"]
