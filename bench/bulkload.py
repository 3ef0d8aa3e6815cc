"""Section bulkload: what other tenants' searches pay while one tenant bulk-loads (decision 0012).

A store holds ``EXISTING`` rows with their HNSW index. Eight searcher threads ask ``match_documents``
(service role, k = 10, each its own connection, vectors near the stored ones) without pause:

* ``idle``: nothing else runs: the baseline, measured again before each load;
* ``load keeping the index``: meanwhile ``VectorStore.upsert`` loads ``LOAD`` more rows (precomputed
  vectors, ``bulk=True``, as the SDK's default does from 10,000 documents), and the server keeps the
  index because the load does not dwarf the store (``bulk_load_growth_factor`` 100);
* ``load dropping the index``: the same with ``bulk_load_growth_factor`` 1, i.e. the rule before
  decision 0012 (drop whenever the load is larger than the store), rebuild included;
* ``near-empty store``: 1% of ``EXISTING`` stored, where the default rule still drops: what
  searches pay there (little is stored for anyone else to search).

Searcher p50/p95 are ratios against the idle run just before; the loads' durations against each other.
The CPU's vector features are printed: HNSW and exact distances both run on them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from bench._common import (
    F32,
    Report,
    bench_stack,
    clustered,
    load_corpus,
    near_queries,
    percentile,
    ratio,
    synthetic_content,
)

SEARCHERS = 8
IDLE_QUERIES = 40  # per searcher


def _documents(prefix: str, vectors: F32, texts: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "content": synthetic_content(texts, i), "embedding": vector}
        for i, vector in enumerate(vectors)
    ]


class Searchers:
    """``SEARCHERS`` threads asking match_documents until stopped (or for a fixed count each)."""

    def __init__(self, url: str, queries: F32) -> None:
        from supa_vectors import PostgresTransport, VectorStore

        self.stores = [
            VectorStore(PostgresTransport(url, max_size=1), cache="off", outbox=False)
            for _ in range(SEARCHERS)
        ]
        self.queries = queries

    def run(self, *, each: int | None = None, until: threading.Event | None = None) -> list[float]:
        times: list[list[float]] = [[] for _ in self.stores]

        def search(n: int) -> None:
            store = self.stores[n]
            i = n
            while (each is not None and len(times[n]) < each) or (until is not None and not until.is_set()):
                query = self.queries[i % len(self.queries)]
                start = time.perf_counter()
                store.search(query, k=10)
                times[n].append(time.perf_counter() - start)
                i += SEARCHERS

        threads = [threading.Thread(target=search, args=(n,)) for n in range(len(self.stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [t for per in times for t in per]

    def close(self) -> None:
        for store in self.stores:
            store.close()


def _reset(url: str, existing: list[dict[str, Any]]) -> None:
    """The store back to ``existing`` rows with a freshly built index."""
    from supa_vectors import PostgresTransport, VectorStore

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate public.documents restart identity cascade")
        conn.execute("select public.finish_bulk_load()")
    with VectorStore(PostgresTransport(url), cache="off", outbox=False) as store:
        store.upsert(existing, bulk=True)  # into an empty store: dropped and rebuilt
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("vacuum analyze public.documents, public.embeddings")


def _growth_factor(url: str, factor: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "update public.metadata_global set value = to_jsonb(%s::int)"
            " where key = 'bulk_load_growth_factor'",
            [factor],
        )


def _load_under_search(
    url: str, searchers: Searchers, load: list[dict[str, Any]]
) -> tuple[list[float], float, bool]:
    """Search latencies while ``load`` goes in, the load's seconds, and whether it dropped the index."""
    from supa_vectors import PostgresTransport, VectorStore

    done = threading.Event()
    found: list[float] = []
    runner = threading.Thread(target=lambda: found.extend(searchers.run(until=done)))
    runner.start()
    dropped = False
    try:
        with VectorStore(PostgresTransport(url), cache="off", outbox=False) as store:
            transport: Any = store.transport
            original = transport.rpc_as_session_user

            def watching(name: str, params: Any) -> Any:
                nonlocal dropped
                result = original(name, params)
                dropped = dropped or (name == "begin_bulk_load" and bool(result))
                return result

            transport.rpc_as_session_user = watching
            start = time.perf_counter()
            store.upsert(load, bulk=True)
            seconds = time.perf_counter() - start
    finally:
        done.set()
        runner.join()
    return found, seconds, dropped


def run(quick: bool) -> dict[str, float]:
    report = Report("bulkload")
    existing_rows, load_rows = (1_000, 2_000) if quick else (10_000, 20_000)
    report.note(f"{existing_rows:,} stored rows, a {load_rows:,}-row load, {SEARCHERS} searchers")
    texts = [d.content for d in load_corpus()]
    vectors = clustered(existing_rows + load_rows, seed=7)
    existing = _documents("old", vectors[:existing_rows], texts)
    load = _documents("new", vectors[existing_rows:], texts)
    queries = near_queries(vectors[:existing_rows], 400, seed=8)

    with bench_stack() as url:
        searchers = Searchers(url, queries)
        try:
            loads: dict[str, float] = {}
            phases = (
                ("keeping the index", 100, existing),
                ("dropping the index", 1, existing),
                ("into a near-empty store", 100, existing[: existing_rows // 100]),
            )
            for label, factor, stored in phases:
                _reset(url, stored)
                _growth_factor(url, factor)
                idle = searchers.run(each=IDLE_QUERIES)
                during, seconds, dropped = _load_under_search(url, searchers, load)
                loads[label] = seconds
                report.heading(f"load {label} (dropped: {dropped})")
                for q in (50, 95):
                    base, busy = percentile(idle, q) * 1000, percentile(during, q) * 1000
                    report.figure(f"idle search p{q} ({label})", base, "ms")
                    report.figure(
                        f"search p{q} during the load {label}", busy, "ms", {"idle": ratio(busy, base)}
                    )
                report.figure(f"searches during the load {label}", len(during), "queries")
                report.figure(
                    f"load of {load_rows:,} rows {label}",
                    seconds,
                    "s",
                    {"keeping the index": ratio(seconds, loads["keeping the index"])},
                )
        finally:
            searchers.close()
    return report.values
