"""Offline: what answering without the backend costs, next to answering with it.

Figures (p50 over the same query vectors, so the embedder is never part of a timing):

* live search: ``store.search`` against a running local stack (the baseline of every ratio);
* cached hit: a cache-first store answering from the results cache;
* fallback with the backend really stopped, breaker closed: every call first fails on the transport
  (Postgres and PostgREST: the connection is refused at once);
* fallback with the breaker open: no transport call at all, straight to the cache;
* mirror search: a query never asked before, answered from the mirror (and the numpy search alone,
  also at 100,000 rows); mirror recall@10 against the server's answers;
* sync_mirror: a full sync of the corpus and an incremental sync with nothing changed;
* what ``network-first`` costs over the bare transport (decision 0025): the transport's own
  ``match_documents`` call and row parsing, ``cache="off"``, ``VectorStore.search`` in its default
  mode (its answer written behind) and the same store writing each answer through before returning
  (what it did before 0025), interleaved query by query in rotating order, against the live server
  and again with its replies replayed from memory; with the load average and the CPU's features.

``quick`` uses a slice of the corpus and a hashing embedder; the full run embeds the whole shared
corpus with the ONNX model (minutes on two cores) so recall is measured on real embedding geometry.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import (
    F32,
    MODEL,
    Report,
    clustered,
    cpu_features,
    latencies,
    load_corpus,
    load_queries,
    near_queries,
    percentile,
    ratio,
    spread,
    timed,
)

DIM = 384
NAMESPACE = "bench-offline"  # one cache namespace for the Postgres and the PostgREST stores


class HashingEmbedder:
    """Words hashed into 384 dimensions (the tests' fake): fast, deterministic, model-shaped output."""

    model_id = MODEL
    dimension = DIM

    def embed(self, texts: Sequence[str]) -> F32:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                out[row, int.from_bytes(digest[:4], "little") % (DIM - 1)] += 1.0
            out[row, -1] = 0.05
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _embed_all(embedder: Any, texts: Sequence[str]) -> F32:
    """Embed in batches of 64; the ONNX model's vectors are kept in the temp directory between runs
    (the full corpus takes minutes on two busy cores, and the vectors never change)."""
    key = hashlib.sha256(
        "\x00".join([type(embedder).__name__, embedder.model_id, *texts]).encode()
    ).hexdigest()
    path = Path(tempfile.gettempdir()) / f"supa-vectors-bench-offline-{key[:24]}.npy"
    if isinstance(embedder, HashingEmbedder) or not path.exists():
        vectors = np.concatenate([embedder.embed(list(texts[i : i + 64])) for i in range(0, len(texts), 64)])
        vectors = vectors.astype(np.float32)
        if not isinstance(embedder, HashingEmbedder):
            np.save(path, vectors)
        return vectors
    loaded: F32 = np.load(path)
    return loaded


def _ms(values: Sequence[float]) -> float:
    return percentile(values, 50) * 1000.0


def run(quick: bool) -> dict[str, float]:
    from supa_vectors import CircuitBreaker, VectorStore
    from supa_vectors.cache.mirror import Mirror
    from supa_vectors.local import LocalStack
    from supa_vectors.transport.postgres import PostgresTransport
    from supa_vectors.transport.postgrest import PostgrestTransport

    report = Report("offline")
    docs = load_corpus()
    queries = [q for q, _ in load_queries()]
    if quick:
        docs, queries = spread(docs, 600), spread(queries, 40)
        embedder: Any = HashingEmbedder()
        report.note("quick: 600 corpus sections, 40 queries, hashing embedder")
    else:
        from supa_vectors.embedding import OnnxEmbedder

        embedder = OnnxEmbedder()
        queries = spread(queries, 200)
        report.note(f"{len(docs)} corpus sections, {len(queries)} queries, ONNX {MODEL}")
    started = time.perf_counter()
    doc_vectors = _embed_all(embedder, [d.content for d in docs])
    query_vectors = _embed_all(embedder, queries)
    report.note(f"embedded the corpus and queries in {time.perf_counter() - started:.0f} s (not timed below)")
    half = len(query_vectors) // 2
    asked, unseen = query_vectors[:half], query_vectors[half:]

    base = Path(tempfile.mkdtemp(prefix="supa-vectors-bench-offline-", dir="/tmp"))
    base.chmod(0o755)
    stack = LocalStack(base_dir=base / "stack")
    cache_dir = base / "cache"
    url = stack.start()
    try:

        def postgres(timeout: float = 30.0) -> PostgresTransport:
            transport = PostgresTransport(url, timeout=timeout)
            transport.cache_namespace = NAMESPACE  # type: ignore[attr-defined]
            return transport

        with VectorStore(postgres(), embedder=embedder, cache="off") as loader:
            loader.upsert(
                [
                    {"id": d.id, "content": d.content, "metadata": {"title": d.title}, "embedding": v}
                    for d, v in zip(docs, doc_vectors, strict=True)
                ],
                bulk=True,
            )
        never_opens = CircuitBreaker(failure_threshold=10**9)
        live_store = VectorStore(
            postgres(timeout=1.0), embedder=embedder, cache_dir=cache_dir, breaker=never_opens
        )
        for vector in asked[:5]:
            live_store.search(vector, k=10)  # warm the pool and the plans
        live_times, live_answers = latencies(lambda v: live_store.search(v, k=10), list(asked))
        with VectorStore(postgres(), embedder=embedder, cache="off") as reference:  # caches nothing
            server_unseen = [[r.id for r in reference.search(v, k=10)] for v in unseen]
        live = _ms(live_times)
        report.heading(f"{len(docs)} documents, k=10, p50 over {len(asked)} query vectors")
        report.figure("live search p50 (backend up, network first)", live, "ms")
        network_first_cost(report, postgres, embedder, base / "side-by-side", query_vectors, quick)

        cache_first = VectorStore(
            postgres(), embedder=embedder, cache_dir=cache_dir, cache="cache-first", cache_ttl=3600
        )
        hit_times, hits = latencies(lambda v: cache_first.search(v, k=10), list(asked))
        assert all(r.source == "cache" for answer in hits for r in answer)
        report.figure(
            "cached hit p50 (cache-first)", _ms(hit_times), "ms", {"live search": ratio(_ms(hit_times), live)}
        )
        _telemetry_cost(report, {"cached hit": cache_first, "live search": live_store}, list(asked))
        cache_first.close()

        sync_full = time.perf_counter()
        synced = live_store.sync_mirror()
        sync_full = time.perf_counter() - sync_full
        sync_again = time.perf_counter()
        live_store.sync_mirror()
        sync_again = time.perf_counter() - sync_again
        report.figure(f"sync_mirror, full ({synced.documents} documents)", sync_full * 1000, "ms")
        report.figure("sync_mirror, incremental, nothing changed", sync_again * 1000, "ms")

        stack.stop()
        # The pool's idle connections are broken now and fail at once; after them every call finds the
        # connection refused at once (decision 0015). Measure that steady state.
        for vector in asked[:5]:
            live_store.search(vector, k=10)
        repeats = 3 if quick else 6
        closed_times, _ = latencies(lambda v: live_store.search(v, k=10), list(asked[5 : 5 + repeats]))
        report.figure(
            "fallback p50, backend stopped, breaker closed (Postgres, connection refused)",
            _ms(closed_times),
            "ms",
            {"live search": ratio(_ms(closed_times), live)},
        )

        rest = PostgrestTransport(
            url=f"http://127.0.0.1:{_closed_port()}",
            key=_service_jwt(),
            max_attempts=1,
            jwt_secret=_JWT_SECRET,
        )
        rest.cache_namespace = NAMESPACE  # type: ignore[attr-defined]
        refused_store = VectorStore(rest, embedder=embedder, cache_dir=cache_dir, breaker=never_opens)
        refused_times, refused = latencies(lambda v: refused_store.search(v, k=10), list(asked))
        assert all(r.source == "cache" for answer in refused for r in answer)
        report.figure(
            "fallback p50, breaker closed (PostgREST, connection refused)",
            _ms(refused_times),
            "ms",
            {"live search": ratio(_ms(refused_times), live)},
        )
        refused_store.close()

        open_breaker = CircuitBreaker(failure_threshold=1, reset_timeout=3600)
        open_breaker.record_failure()
        open_store = VectorStore(
            postgres(timeout=1.0), embedder=embedder, cache_dir=cache_dir, breaker=open_breaker
        )
        open_times, opened = latencies(lambda v: open_store.search(v, k=10), list(asked))
        assert all(r.source == "cache" for answer in opened for r in answer)
        report.figure(
            "fallback p50, breaker open (answer from the cache)",
            _ms(open_times),
            "ms",
            {"live search": ratio(_ms(open_times), live)},
        )
        mirror_times, mirrored = latencies(lambda v: open_store.search(v, k=10), list(unseen))
        assert all(r.source == "mirror" for answer in mirrored for r in answer)
        report.figure(
            "mirror search p50, breaker open (a query never asked)",
            _ms(mirror_times),
            "ms",
            {"live search": ratio(_ms(mirror_times), live)},
        )
        found = [[r.id for r in answer] for answer in mirrored]
        recall = float(
            np.mean(
                [len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, server_unseen, strict=True)]
            )
        )
        report.figure("mirror recall@10 against the server's answers", recall, "")
        filtered_times, _ = latencies(
            lambda v: open_store.search(v, k=10, filter={"title": {"$ne": "Description"}}), list(unseen)
        )
        report.figure(
            "mirror search p50 with a metadata filter",
            _ms(filtered_times),
            "ms",
            {"live search": ratio(_ms(filtered_times), live)},
        )
        open_store.close()
        live_store.close()
        del live_answers

        rows = 20_000 if quick else 100_000
        big = Mirror(base / "synthetic.sqlite3")
        vectors = clustered(rows, seed=5)
        from supa_vectors._core.settings import StoreSettings

        big.reset(StoreSettings(MODEL, DIM), "1")
        for start in range(0, rows, 5000):
            big.apply(
                [
                    {
                        "id": i + 1,
                        "external_id": f"s{i}",
                        "content": f"synthetic {i}",
                        "content_hash": "",
                        "metadata": {"n": i},
                        "embedding": vectors[i],
                    }
                    for i in range(start, min(rows, start + 5000))
                ],
                DIM,
            )
        probes = clustered(64 if quick else 200, seed=6)
        big.search(probes[0], 10, None, "", None)  # loads the matrix once
        raw_times, _ = latencies(lambda v: big.search(v, 10, None, "", None), list(probes))
        report.figure(
            f"mirror exact numpy search p50 alone, {rows:,} rows",
            _ms(raw_times),
            "ms",
            {"live search": ratio(_ms(raw_times), live)},
        )
        big.close()
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)
    return report.values


def _telemetry_cost(report: Report, stores: dict[str, Any], vectors: list[Any]) -> None:
    """What an operation's observer (decision 0021) adds to a search: each store's search with it and
    without it (the undecorated flow), interleaved pair by pair in alternating order, first with the
    counters only, then with the OpenTelemetry API imported (spans made, no SDK: non-recording)."""
    from supa_vectors._store import VectorStore

    bare_flow = VectorStore._search_flow.__wrapped__  # type: ignore[attr-defined]
    rounds = 3
    for variant in ("counters", "counters + OpenTelemetry API spans, no SDK"):
        if variant != "counters":
            import opentelemetry.trace  # noqa: F401  (what an app that traces has imported)
        for label, store in stores.items():
            bare: list[float] = []
            observed: list[float] = []
            for turn in range(rounds * len(vectors)):
                vector = vectors[turn % len(vectors)]
                pair = [
                    (bare, functools.partial(_unobserved_search, store, bare_flow, vector)),
                    (observed, functools.partial(store.search, vector, k=10)),
                ]
                for times, call in pair if turn % 2 else reversed(pair):
                    times.append(timed(call))
            report.figure(
                f"{label} p50 with {variant}",
                _ms(observed),
                "ms",
                {"without the observer": ratio(_ms(observed), _ms(bare))},
            )
    report.note(f"load average while measured: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _unobserved_search(store: Any, flow: Any, vector: Any) -> Any:
    return store._run(flow(store, vector, 10, None, None))


class _Replay:
    """A transport that answers every call with the live transport's reply to the first one of its
    name: the SDK and its cache without the server, whose time and noise dwarf them on a busy
    machine."""

    def __init__(self, live: Any, vector: F32) -> None:
        from supa_vectors._core import checks

        self.cache_namespace = f"replay-{id(self)}"
        self.identity_fingerprint = live.identity_fingerprint
        self.identity = live.identity
        self.replies = {
            "store_settings": live.rpc("store_settings", {}),
            "match_documents": live.rpc("match_documents", checks.match_params(vector, 10, None, {})),
        }

    def rpc(self, name: str, params: Any) -> Any:
        return self.replies[name]

    def close(self) -> None:
        pass


def network_first_cost(
    report: Report, transport: Any, embedder: Any, cache_dir: Path, vectors: F32, quick: bool
) -> None:
    """The bare transport against ``VectorStore.search`` in its default mode, query by query: once
    against the live server, once with its replies replayed from memory (the in-process cost alone)."""
    count = 120 if quick else 600
    queries = near_queries(vectors, count + 20, seed=17, noise=0.05)
    _side_by_side(report, "live server", transport, embedder, cache_dir / "live", queries, unit="ms")
    live = transport()
    replay = _Replay(live, queries[0])
    live.close()
    many = near_queries(vectors, 4 * count + 20, seed=18, noise=0.05)
    _side_by_side(report, "replies replayed", lambda: replay, embedder, cache_dir / "replay", many, unit="µs")


def _side_by_side(
    report: Report, label: str, transport: Any, embedder: Any, cache_dir: Path, queries: F32, *, unit: str
) -> None:
    """Every query is a new one (near the asked ones, so each path stores a new answer, as live traffic
    does), asked of every path in turn, the order rotating so no path always runs first. The
    difference is taken per query (a path's time minus the bare transport's on the same query, a
    moment apart) and its median reported, which a load change between queries does not move; the
    calling thread's CPU time and that of every other thread (the cache's writer) are printed too."""
    from supa_vectors import VectorStore
    from supa_vectors._core import checks, rows

    scale = 1000.0 if unit == "ms" else 1e6
    bare_transport = transport()
    default = VectorStore(transport(), embedder=embedder, cache_dir=cache_dir / "behind")
    through = VectorStore(transport(), embedder=embedder, cache_dir=cache_dir / "through")
    off = VectorStore(transport(), embedder=embedder, cache="off")
    written = through._offline.results
    assert written is not None

    def bare(q: F32) -> Any:
        params = checks.match_params(checks.query_vector(q, DIM), 10, None, {})
        return rows.parse_search_rows(bare_transport.rpc("match_documents", params))

    def write_through(q: F32) -> Any:
        found = through.search(q, k=10)
        written.flush()  # the answer on disk before returning, as every search did before 0025
        return found

    paths: dict[str, Any] = {
        "bare transport": bare,
        'cache="off"': lambda q: off.search(q, k=10),
        "VectorStore.search (network-first)": lambda q: default.search(q, k=10),
        "write-through (before 0025)": write_through,
    }
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    load_before = os.getloadavg()
    process_cpu = thread_cpu = 0.0
    for i, q in enumerate(queries):
        order = names[i % len(names) :] + names[: i % len(names)]
        if i == 20:  # the first 20 warm the pools, plans and caches
            process_cpu, thread_cpu = time.process_time(), time.thread_time()
        for name in order:
            start, start_cpu = time.perf_counter(), time.thread_time()
            paths[name](q)
            if i >= 20:
                times[name].append((time.perf_counter() - start) * scale)
                cpu[name].append((time.thread_time() - start_cpu) * 1e6)
    # CPU of every other thread (the cache writers, the pools' workers) over the timed queries.
    others = (time.process_time() - process_cpu) - (time.thread_time() - thread_cpu)
    load_after = os.getloadavg()
    for store in (default, through, off):
        store.close()
    bare_transport.close()

    timed = len(queries) - 20
    report.heading(
        f"network-first against the bare transport, {label}: {timed} new queries, each path in turn "
        f"(load average {load_before[0]:.2f} -> {load_after[0]:.2f}; CPU {cpu_features()})"
    )
    base_p50 = percentile(times["bare transport"], 50)
    for name in names:
        p50, p95 = percentile(times[name], 50), percentile(times[name], 95)
        ratios = {} if name == "bare transport" else {"bare transport": ratio(p50, base_p50)}
        report.figure(f"{label}: {name} p50", p50, unit, ratios)
        report.figure(f"{label}: {name} p95", p95, unit)
        # Against the bare transport, and (the cache's own share) against the same store without it.
        for baseline in ("bare transport", 'cache="off"')[: names.index(name)]:
            extra = [b - a for a, b in zip(times[baseline], times[name], strict=True)]
            report.figure(f"{label}: {name} minus {baseline}, median per query", percentile(extra, 50), unit)
        report.figure(f"{label}: {name}, CPU of the calling thread p50", percentile(cpu[name], 50), "µs")
    # Only the default store queues answers for a writer; write-through writes on the caller.
    report.figure(f"{label}: CPU of other threads per network-first search", others / timed * 1e6, "µs")
    report.figure(f"{label}: load average (1 min) at the end", load_after[0], "")


def _closed_port() -> int:
    """A loopback port nobody listens on (bound and released: refused at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# The secret the PostgREST stand-in's tokens are signed with; the transport is given it, as an app that
# holds its project's JWT secret would be, so the offline layer trusts the token (decision 0013).
_JWT_SECRET = "bench-offline-jwt-secret-0123456789abcdef"


def _service_jwt() -> str:
    """A signed service-role token: the same identity fingerprint as the Postgres store's default."""
    import jwt

    return jwt.encode(
        {"role": "service_role", "exp": int(time.time()) + 3600}, _JWT_SECRET, algorithm="HS256"
    )


if __name__ == "__main__":
    import sys

    values = run("--quick" in sys.argv)
    print(f"{len(values)} figures")
