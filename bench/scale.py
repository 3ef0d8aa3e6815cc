"""Section 13: how cost grows from 10k to 100k to 1M rows, and ``halfvec`` against ``vector`` at 1M.

One store per size, on one local stack (embedded Postgres 18 + pgvector 0.8.6 at its defaults:
shared_buffers 128 MB; the index built by ``create_vector_index()`` with its 256 MB of
maintenance_work_mem, as every user's store builds it). Rows are section 2's: clustered 384-d unit
vectors, a 200-character text, metadata ``{"b10": i % 10, "b100": i % 100}``. Per size:

* **ingest** into the empty store with its index dropped by a live bulk load (as section 2): binary
  COPY (the baseline), the ``bulk_upsert`` RPC from psycopg in 1,000-row calls, and the SDK's
  ``upsert``; best of two interleaved rounds up to 100k, one round at 1M (each takes minutes);
* **index**: build time of ``create_vector_index()`` over the SDK's load (against the COPY load of the
  same rows), index and table sizes (against the raw float32 bytes of the vectors), and the row count
  at which pgvector reported that the graph no longer fit in maintenance_work_mem;
* **search**, unfiltered, k=10, at the default ef_search (100, what ``match_documents`` picks): raw SQL
  (the ANN statement alone: the baseline), ``match_documents`` from psycopg, ``VectorStore.search``
  (cache off), interleaved, with recall@10 against numpy's exact top-10; and the exact scan the index
  replaces, over fewer queries (it reads every row);
* **filtered** 10% and 1% through ``match_documents``, against pgvector's bare iterative scan;
* **server memory**: the proportional set size (PSS, shared memory split among the processes mapping
  it) of every server process, peak while building the index and while searching, sampled every
  0.25 s.

At the largest size, ``halfvec(384)`` against ``vector(384)``: our index (over the expression
``l2_normalize(embedding)::halfvec(384)``, migration 20261203000900) against an index over the
full-precision column (the definition before it: the baseline) and against a copy of the table that
stores halfvec with its own index; build time, index and table size, recall@10 and latency at
ef_search 40 and 100, interleaved; and ``match_documents`` against its definition before
20261203000900 over the full-precision index. Every figure carries its ratio against a baseline
measured in the same run; the closing table gives each size's figure against the smallest size's
(the growth).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types.json import Jsonb

from bench._common import (
    DIM,
    F32,
    MODEL,
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
    Rows,
    empty_without_index,
    load_copy,
    load_rpc,
    make_rows,
    owner_connection,
    sdk_loader,
)
from bench.search import (
    RAW_SQL,
    VECTOR_INDEX_SQL,
    Search,
    create_match_documents_before,
    filtered_rpc,
    filtered_scan,
    measure,
)

K = 10
DEFAULT_EF = 100  # what match_documents picks for an unfiltered search

HALF = "extensions.halfvec(384)"
# The statement match_documents ran before 20261203000900, over an index on the full-precision column.
VECTOR_SQL = (
    "select d.external_id from public.embeddings e join public.documents d on d.id = e.document_id"
    " where e.model = %s order by e.embedding operator(extensions.<=>) %b limit 10"
)
HALF_TABLE_SQL = (
    "select d.external_id from public.bench_half_embeddings e join public.documents d"
    " on d.id = e.document_id where e.model = %s order by e.embedding operator(extensions.<=>)"
    f" (%b::extensions.vector)::{HALF} limit 10"
)
RPC_DEFAULT_SQL = "select external_id from public.match_documents(query_embedding => %b, match_count => 10)"
RPC_BEFORE_DEFAULT_SQL = RPC_DEFAULT_SQL.replace("match_documents", "match_documents_before")
# The full-precision statement with index scans switched off: what a search costs without HNSW.
EXACT_SETTINGS = ("set local enable_indexscan = off", "set local enable_bitmapscan = off")


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------------------------------
# Server memory


def _pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # the process ended, or this platform has no smaps_rollup
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def server_pids(conn: psycopg.Connection[Any]) -> list[int]:
    """The postmaster and its children (backends, parallel workers, background processes)."""
    row = conn.execute("select pg_backend_pid()").fetchone()
    assert row is not None
    postmaster = int(Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == postmaster:
                pids.append(int(entry.name))
    return pids


def server_pss_mib(conn: psycopg.Connection[Any]) -> float:
    return sum(_pss_kib(pid) for pid in server_pids(conn)) / 1024


@contextmanager
def peak_server_memory(url: str) -> Iterator[list[float]]:
    """Samples the server's PSS every 0.25 s on a connection of its own; the list holds the peak (MiB)
    once the block ends. A sampler, not synchronisation: a short peak between samples can be missed."""
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not done.is_set():
                peak[0] = max(peak[0], server_pss_mib(conn))
                done.wait(0.25)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


# --------------------------------------------------------------------------------------------------
# Index builds


def build(conn: psycopg.Connection[Any], sql: str) -> tuple[float, int | None]:
    """Seconds a build took and the row count at which pgvector said the graph outgrew
    maintenance_work_mem (None when it fit)."""
    notices: list[str] = []

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(diag.message_primary or "")

    conn.add_notice_handler(keep)
    try:
        start = time.perf_counter()
        conn.execute(sql)
        spent = time.perf_counter() - start
    finally:
        conn.remove_notice_handler(keep)
    spilled = next((m for m in notices if "no longer fits into maintenance_work_mem" in m), None)
    count = re.search(r"after (\d+) tuples", spilled or "")
    return spent, int(count.group(1)) if count else None


def relation_mib(conn: psycopg.Connection[Any], relation: str, total: bool = False) -> float:
    size_fn = "pg_total_relation_size" if total else "pg_relation_size"
    row = conn.execute(f"select {size_fn}(%s::regclass)", [relation]).fetchone()
    assert row is not None
    return float(row[0]) / 2**20


# --------------------------------------------------------------------------------------------------
# Search paths


class Paths:
    """Every search this section times, over one store."""

    def __init__(self, url: str, conn: psycopg.Connection[Any]) -> None:
        from supa_vectors import VectorStore
        from supa_vectors.transport.postgres import PostgresTransport

        self.conn = conn
        self.store = VectorStore(PostgresTransport(url), cache="off")
        self.store.settings()
        self.ef = 0  # the session's hnsw.ef_search, as statement() last set it

    def close(self) -> None:
        self.store.close()

    def statement(self, sql: str, ef: int, *settings: str) -> Search:
        """One statement per query, as match_documents is one call: ef_search is set for the session
        only when it changes. With settings (the exact scan), a transaction that sets them locally."""
        conn = self.conn

        def run(q: F32) -> list[int]:
            if not settings:
                if self.ef != ef:
                    conn.execute(f"set hnsw.ef_search = {int(ef)}")
                    self.ef = ef
                return row_numbers([r[0] for r in conn.execute(sql, [MODEL, q]).fetchall()])
            with conn.transaction():
                conn.execute(f"set local hnsw.ef_search = {int(ef)}")
                for setting in settings:
                    conn.execute(setting)
                # Never prepared: psycopg prepares a statement on its fifth run, and the plan cached
                # on the server would outlive these settings (the index switch would not take).
                return row_numbers([r[0] for r in conn.execute(sql, [MODEL, q], prepare=False).fetchall()])

        return run

    def rpc(self, q: F32) -> list[int]:
        return row_numbers([r[0] for r in self.conn.execute(RPC_DEFAULT_SQL, [q]).fetchall()])

    def rpc_before(self, q: F32) -> list[int]:
        return row_numbers([r[0] for r in self.conn.execute(RPC_BEFORE_DEFAULT_SQL, [q]).fetchall()])

    def sdk(self, q: F32) -> list[int]:
        return row_numbers([r.id for r in self.store.search(q, k=K)])


def uses_index(conn: psycopg.Connection[Any], sql: str, q: F32, index: str) -> bool:
    plan = conn.execute(f"explain {sql}", [MODEL, q]).fetchall()
    return any(index in line[0] for line in plan)


# --------------------------------------------------------------------------------------------------
# One size


def ingest(
    conn: psycopg.Connection[Any], sdk_load: Callable[[Rows], None], rows: Rows, rounds: int
) -> tuple[dict[str, float], float]:
    """Rows/s per method, best of ``rounds`` interleaved; the COPY load's seconds (the build's
    baseline). Leaves the SDK's load in the store, index absent."""
    methods: list[tuple[str, Callable[[], Any]]] = [
        ("binary COPY", partial(load_copy, conn, rows)),
        ("RPC", partial(load_rpc, conn, rows)),
        ("SDK", partial(sdk_load, rows)),
    ]
    rates: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in methods:
            empty_without_index(conn)
            start = time.perf_counter()
            fn()
            rates[name] = max(rates.get(name, 0.0), len(rows) / (time.perf_counter() - start))
    return rates, len(rows) / rates["binary COPY"]


def run_size(
    url: str,
    conn: psycopg.Connection[Any],
    sdk_load: Callable[[Rows], None],
    size: int,
    *,
    quick: bool,
    largest: bool,
    texts: list[str],
    report: Report,
) -> dict[str, float]:
    label = f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}M"
    out: dict[str, float] = {}
    rows = make_rows(size, "d", seed=size, texts=texts)
    report.heading(f"{label} rows x {DIM}-d, load average {_load_average()}")

    rates, copy_s = ingest(conn, sdk_load, rows, 1 if quick or size >= 1_000_000 else 2)
    for name in ("SDK", "RPC", "binary COPY"):
        out[f"ingest {name} rows/s"] = rates[name]
        report.figure(
            f"ingest {name} {label}",
            rates[name],
            "rows/s",
            {"binary COPY": ratio(rates[name], rates["binary COPY"])},
        )

    raw_mib = size * DIM * 4 / 2**20
    with peak_server_memory(url) as build_peak:
        build_s, spilled_at = build(conn, "select supa_vectors_internal.create_vector_index()")
    conn.execute("select public.finish_bulk_load()")  # ends the bulk load; analyzes what it loaded
    conn.execute("vacuum analyze public.embeddings")
    index_mib = relation_mib(conn, "public.embeddings_embedding_hnsw_idx")
    heap_mib = relation_mib(conn, "public.embeddings")
    documents_mib = relation_mib(conn, "public.documents", total=True)
    out |= {
        "index build s": build_s,
        "index MiB": index_mib,
        "embeddings heap MiB": heap_mib,
        "documents total MiB": documents_mib,
        "server PSS peak, index build MiB": build_peak[0],
    }
    report.figure(f"index build {label}", build_s, "s", {"COPY load of the same rows": build_s / copy_s})
    report.note(
        f"{label}: the graph outgrew maintenance_work_mem (256 MB) after {spilled_at:,} rows"
        if spilled_at
        else f"{label}: the graph fit in maintenance_work_mem (256 MB)"
    )
    report.figure(f"HNSW index size {label}", index_mib, "MiB", {"raw vectors": index_mib / raw_mib})
    report.figure(f"embeddings table {label}", heap_mib, "MiB", {"raw vectors": heap_mib / raw_mib})
    report.figure(
        f"documents table + indexes {label}", documents_mib, "MiB", {"raw vectors": documents_mib / raw_mib}
    )
    report.figure(
        f"server PSS peak, index build {label}",
        build_peak[0],
        "MiB",
        {"index size": build_peak[0] / index_mib},
    )

    paths = Paths(url, conn)
    try:
        queries = near_queries(rows.vectors, 20 if quick else 200, seed=21)
        truth = exact_top_k(rows.vectors, queries, K)
        raw = paths.statement(RAW_SQL, DEFAULT_EF)
        if not uses_index(conn, RAW_SQL, queries[0], "embeddings_embedding_hnsw_idx"):
            report.note(f"{label}: the planner ranks every row instead of walking the index (small table)")
        with peak_server_memory(url) as search_peak:
            times, found = measure({"raw SQL": raw, "match_documents": paths.rpc, "SDK": paths.sdk}, queries)
            exact_queries = queries[: 5 if quick else (10 if size >= 1_000_000 else 30)]
            exact_times, exact_found = measure(
                {"exact": paths.statement(VECTOR_SQL, DEFAULT_EF, *EXACT_SETTINGS)}, exact_queries
            )
        base = percentile(times["raw SQL"], 50)
        for name in ("SDK", "match_documents", "raw SQL"):
            p50 = percentile(times[name], 50)
            out[f"search {name} p50 ms"] = p50
            out[f"search {name} recall@10"] = recall(found[name], truth, K)
            report.figure(f"search {name} p50 {label}", p50, "ms", {"raw SQL": ratio(p50, base)})
            report.figure(f"search {name} p95 {label}", percentile(times[name], 95), "ms")
            report.figure(f"search {name} recall@10 {label}", out[f"search {name} recall@10"], "")
        exact_p50 = percentile(exact_times["exact"], 50)
        out["search exact scan p50 ms"] = exact_p50
        report.figure(
            f"exact scan p50 {label} ({len(exact_queries)} queries)",
            exact_p50,
            "ms",
            {"raw SQL with HNSW": ratio(exact_p50, base)},
        )
        report.figure(
            f"exact scan recall@10 {label}", recall(exact_found["exact"], truth[: len(exact_queries)], K), ""
        )
        out["server PSS peak, search MiB"] = search_peak[0]
        report.figure(
            f"server PSS peak, search {label}",
            search_peak[0],
            "MiB",
            {"index size": search_peak[0] / index_mib},
        )

        metadata = rows.metadata
        b10 = np.array([m["b10"] for m in metadata])
        b100 = np.array([m["b100"] for m in metadata])
        filtered: list[tuple[str, dict[str, Any], npt.NDArray[np.bool_]]] = [
            ("10%", {"b10": 3}, b10 == 3),
            ("1%", {"b100": 7}, b100 == 7),
        ]
        fq = near_queries(rows.vectors, 10 if quick else 60, seed=22)
        for share, flt, mask in filtered:
            ftruth = exact_top_k(rows.vectors, fq, K, mask)
            # What match_documents decides its plan by (decision 0023): the planner's row estimate.
            plan = conn.execute(
                "explain (format json) select 1 from public.documents d where d.metadata @> %s", [Jsonb(flt)]
            ).fetchone()
            assert plan is not None
            estimate = plan[0][0]["Plan"]["Plan Rows"]
            report.note(f"{label} {share}: {int(mask.sum()):,} rows match; planner estimate {estimate:,}")
            ftimes, ffound = measure(
                {"iterative scan": filtered_scan(conn, flt), "match_documents": filtered_rpc(conn, flt)}, fq
            )
            scan = percentile(ftimes["iterative scan"], 50)
            for name in ("match_documents", "iterative scan"):
                p50 = percentile(ftimes[name], 50)
                complete = float(np.mean([len(f) == K for f in ffound[name]]))
                out[f"filtered {share} {name} p50 ms"] = p50
                out[f"filtered {share} {name} recall@10"] = recall(ffound[name], ftruth, K)
                report.figure(
                    f"filtered {share} {name} p50 {label}", p50, "ms", {"iterative scan": ratio(p50, scan)}
                )
                report.figure(f"filtered {share} {name} p95 {label}", percentile(ftimes[name], 95), "ms")
                report.figure(
                    f"filtered {share} {name} recall@10 {label}",
                    out[f"filtered {share} {name} recall@10"],
                    "",
                )
                report.figure(f"filtered {share} {name} all {K} rows {label}", complete, "share")
        report.note(f"{label} done, load average {_load_average()}")
        if largest:
            out |= halfvec(
                url,
                conn,
                paths,
                queries,
                truth,
                label,
                report,
                (build_s, spilled_at, build_peak[0]),
                rows.vectors,
            )
    finally:
        paths.close()
    return out


# --------------------------------------------------------------------------------------------------
# halfvec


def halfvec(
    url: str,
    conn: psycopg.Connection[Any],
    paths: Paths,
    queries: F32,
    truth: list[list[int]],
    label: str,
    report: Report,
    ours_build: tuple[float, int | None, float],
    vectors: F32,
) -> dict[str, float]:
    """Our index (half precision over the normalised vector column, built just before: its seconds,
    spill point and peak memory) against an index over the full-precision column (the definition
    before 20261203000900, the baseline) and against a copy of the table that stores halfvec."""
    out: dict[str, float] = {}
    report.heading(f"{label}: halfvec(384) against vector(384), load average {_load_average()}")
    conn.execute("set maintenance_work_mem = '256MB'")  # what create_vector_index() builds with
    with peak_server_memory(url) as vector_peak:
        vector_s, vector_spill = build(conn, VECTOR_INDEX_SQL)
    conn.execute(
        "create table public.bench_half_embeddings as select document_id, model,"
        f" embedding::{HALF} as embedding from public.embeddings"
    )
    conn.execute("alter table public.bench_half_embeddings add primary key (document_id, model)")
    with peak_server_memory(url) as table_peak:
        table_s, table_spill = build(
            conn,
            "create index bench_half_table_idx on public.bench_half_embeddings using hnsw"
            " (embedding extensions.halfvec_cosine_ops) with (m = 16, ef_construction = 64)",
        )
    conn.execute("reset maintenance_work_mem")
    conn.execute("vacuum analyze public.bench_half_embeddings")
    conn.execute("vacuum analyze public.embeddings")
    create_match_documents_before(conn)  # over bench_vector_idx, already built
    for name, spent, spill, peak in (
        ("vector", vector_s, vector_spill, vector_peak[0]),
        ("halfvec expression (ours)", *ours_build),
        ("halfvec table", table_s, table_spill, table_peak[0]),
    ):
        out[f"{name} build s"] = spent
        report.figure(f"{name} index build {label}", spent, "s", {"vector build": ratio(spent, vector_s)})
        report.figure(
            f"{name} server PSS peak, build {label}",
            peak,
            "MiB",
            {"vector build": ratio(peak, vector_peak[0])},
        )
        report.note(
            f"{name}: graph outgrew maintenance_work_mem after {spill:,} rows"
            if spill
            else f"{name}: graph fit"
        )
    vector_mib = relation_mib(conn, "public.bench_vector_idx")
    heap_mib = relation_mib(conn, "public.embeddings")
    for name, mib, base in (
        ("vector index", vector_mib, vector_mib),
        (
            "halfvec expression index (ours)",
            relation_mib(conn, "public.embeddings_embedding_hnsw_idx"),
            vector_mib,
        ),
        ("halfvec table index", relation_mib(conn, "public.bench_half_table_idx"), vector_mib),
        ("vector table (ours)", heap_mib, heap_mib),
        ("halfvec table", relation_mib(conn, "public.bench_half_embeddings"), heap_mib),
    ):
        out[f"{name} MiB"] = mib
        report.figure(f"{name} size {label}", mib, "MiB", {"vector": ratio(mib, base)})

    for sql, index in (
        (VECTOR_SQL, "bench_vector_idx"),
        (RAW_SQL, "embeddings_embedding_hnsw_idx"),
        (HALF_TABLE_SQL, "bench_half_table_idx"),
    ):
        if not uses_index(conn, sql, queries[0], index):
            report.note(f"{label}: the plan does not use {index} (small table)")
    for ef in (40, DEFAULT_EF):
        times, found = measure(
            {
                "vector": paths.statement(VECTOR_SQL, ef),
                "halfvec expression (ours)": paths.statement(RAW_SQL, ef),
                "halfvec table": paths.statement(HALF_TABLE_SQL, ef),
            },
            queries,
        )
        compare(times, found, truth, "vector", f"ef{ef} {label}", out, report)
    # The whole function: over the halfvec index with its re-ranking (now) and over the vector one
    # (the definition before 20261203000900), at their default ef_search.
    times, found = measure(
        {"match_documents before (vector)": paths.rpc_before, "match_documents (ours)": paths.rpc}, queries
    )
    compare(times, found, truth, "match_documents before (vector)", label, out, report)
    # Half precision alone, without a graph: the exact top-10 by halfvec distances, and the top 2k by
    # them re-ranked by float32 (what match_documents returns), against the float32 truth. Whatever
    # recall the indexes lose beyond this is their graphs' (HNSW draws node levels at random).
    half = vectors.astype(np.float16).astype(np.float32)
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    half_queries = queries.astype(np.float16).astype(np.float32)
    by_half = exact_top_k(half, half_queries, 2 * K)
    reranked = [
        [int(c[n]) for n in np.argsort(-(vectors[c] @ q), kind="stable")[:K]]
        for c, q in zip((np.asarray(c) for c in by_half), queries, strict=True)
    ]
    for name, found_rows in (
        ("exact top-10 by halfvec", [c[:K] for c in by_half]),
        ("top-20 by halfvec re-ranked", reranked),
    ):
        rec = recall(found_rows, truth, K)
        out[f"{name} recall@10"] = rec
        report.figure(f"{name} recall@10 {label}", rec, "", {"exact float32": rec})
    report.note(f"halfvec done, load average {_load_average()}")
    conn.execute("drop table public.bench_half_embeddings")
    conn.execute("drop function public.match_documents_before")
    conn.execute("drop index public.bench_vector_idx")
    return out


def compare(
    times: dict[str, list[float]],
    found: dict[str, list[list[int]]],
    truth: list[list[int]],
    baseline: str,
    suffix: str,
    out: dict[str, float],
    report: Report,
) -> None:
    """p50, p95 and recall@10 of each path, against the baseline path's."""
    base_p50 = percentile(times[baseline], 50)
    base_recall = recall(found[baseline], truth, K)
    for name in times:
        p50 = percentile(times[name], 50)
        rec = recall(found[name], truth, K)
        out[f"{name} p50 ms {suffix}"] = p50
        out[f"{name} recall@10 {suffix}"] = rec
        report.figure(f"{name} p50 {suffix}", p50, "ms", {baseline: ratio(p50, base_p50)})
        report.figure(f"{name} p95 {suffix}", percentile(times[name], 95), "ms")
        report.figure(f"{name} recall@10 {suffix}", rec, "", {baseline: ratio(rec, base_recall)})
        report.figure(f"{name} recall@10 {suffix}, points over {baseline}", (rec - base_recall) * 100, "pt")


# --------------------------------------------------------------------------------------------------


def run(quick: bool) -> dict[str, float]:
    report = Report("scale")
    sizes: tuple[int, ...] = (1_000, 4_000) if quick else (10_000, 100_000, 1_000_000)
    only = os.environ.get("SUPA_VECTORS_BENCH_SCALE_SIZES")  # e.g. "10000,100000" while developing
    if only:
        sizes = tuple(int(s) for s in only.split(","))
    texts = [d.content for d in load_corpus()]
    results: dict[int, dict[str, float]] = {}
    with bench_stack() as url:
        conn = owner_connection(url)
        sdk_load, sdk_close = sdk_loader(url)
        try:
            for size in sizes:
                results[size] = run_size(
                    url,
                    conn,
                    sdk_load,
                    size,
                    quick=quick,
                    largest=size == sizes[-1],
                    texts=texts,
                    report=report,
                )
        finally:
            sdk_close()
            conn.close()
    first = sizes[0]
    report.heading(f"growth: each size against {first:,} rows, same run (rows grow {sizes[-1] // first}x)")
    for size in sizes[1:]:
        for key, value in results[size].items():
            if key in results[first]:
                report.figure(
                    f"{key} at {size:,}", value, "", {f"{first:,} rows": ratio(value, results[first][key])}
                )
    return report.values
