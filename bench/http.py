"""Section http: the store over HTTP (the `vectors` Edge Function under Deno) against the SDK.

The same store (``ROWS`` documents of one user, clustered 384-d vectors, HNSW), the same queries, the
same identity (user A; the function verifies its HS256 token and runs match_documents as that user):

* one client, k = 10: HTTP search p50/p95 against ``VectorStore.search`` with a query vector, the two
  interleaved query by query so that the shared machine's load hits both alike; the difference of the
  medians is what the HTTP layer adds, and the same request without a token (refused before any work)
  splits it into the HTTP round trip itself (client + Deno's server) and the function's own work (JWT
  check, validation, JSON, its transaction). The HTTP client is the standard library's ``http.client``
  on one kept-alive connection with the JSON bodies encoded beforehand, so the figure is the server's
  and the wire's, not a Python client library's: httpx's own per-request cost is printed beside it
  (the same refused request through httpx);
* eight concurrent clients (one httpx client, or one SDK store, per thread): throughput and errors;
* cold start: a fresh ``deno run`` of the function to its first answer, against a bare ``deno eval``;
* text embedded at the edge (``EMBEDDING_MODEL_URL``, the SDK's fp32 graph): ``POST /embed`` of one
  query, against ``OnnxEmbedder.embed`` in process, and the first answer of a fresh process against the
  SDK's first embed (model load).

``serve`` is also how tests/test_edge_functions.py runs the function.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench._common import (
    Report,
    bench_stack,
    clustered,
    load_corpus,
    load_queries,
    near_queries,
    percentile,
    ratio,
    synthetic_content,
)
from supa_vectors.local.functions import LocalFunctions, find_deno

CLIENTS = 8
USER = "00000000-0000-4000-8000-00000000000a"
SECRET = "bench-secret-of-at-least-thirty-two-characters"


def deno() -> str:
    """Deno from PyPI's ``deno`` (in the ``local`` extra), next to this interpreter, or on PATH."""
    found = find_deno()
    if found is None:
        raise RuntimeError("deno comes with the `local` extra: run scripts/setup --dev")
    return found


@contextlib.contextmanager
def serve(database_url: str, **env: str) -> Iterator[str]:
    """The function's own index.ts under Deno on a free port, as ``supa-vectors local start`` serves
    it (``LocalFunctions``); yields its base URL (…/vectors). ``env`` overrides the stack's secret."""
    with tempfile.TemporaryDirectory(prefix="supa-vectors-functions-") as base:
        functions = LocalFunctions(Path(base))
        try:
            yield functions.start(database_url, env=env)
        finally:
            functions.stop()


def user_token() -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": USER, "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _load(url: str, rows: int) -> Any:
    from supa_vectors import PostgresTransport, VectorStore
    from supa_vectors.transport.identity import Identity

    texts = [d.content for d in load_corpus()]
    vectors = clustered(rows, seed=11)
    docs = [
        {"id": f"h{i}", "content": synthetic_content(texts, i), "embedding": v} for i, v in enumerate(vectors)
    ]
    with VectorStore(
        PostgresTransport(url, identity=Identity.user(USER)), cache="off", outbox=False
    ) as store:
        store.upsert(docs)
    # As autovacuum would within a minute: without statistics the planner takes the freshly loaded
    # table for a few dozen rows and ranks every row instead of walking the HNSW index.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("analyze public.documents, public.embeddings")
    return vectors


def _percentiles(report: Report, sdk: tuple[str, list[float]], edge: tuple[str, list[float]]) -> None:
    """p50 and p95 of both, in ms, the edge's as a ratio to the SDK's."""
    for q in (50, 95):
        a, b = percentile(sdk[1], q) * 1000, percentile(edge[1], q) * 1000
        report.figure(f"{sdk[0]} p{q}", a, "ms")
        report.figure(f"{edge[0]} p{q}", b, "ms", {f"SDK p{q}": ratio(b, a)})


class _Connection:
    """One kept-alive HTTP/1.1 connection posting pre-encoded JSON: what the server and the wire cost."""

    def __init__(self, base: str, token: str) -> None:
        url = urllib.parse.urlsplit(base)
        self.path = url.path
        self.connection = http.client.HTTPConnection(url.netloc, timeout=30)
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}

    def post(self, route: str, body: bytes, *, token: bool = True) -> int:
        headers = self.headers if token else {"content-type": "application/json"}
        self.connection.request("POST", self.path + route, body, headers)
        response = self.connection.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.connection.close()


def _sequential(url: str, base: str, queries: Any, report: Report) -> None:
    from supa_vectors import PostgresTransport, VectorStore
    from supa_vectors.transport.identity import Identity

    token = user_token()
    sdk_times, http_times, floor_times, httpx_floor_times = [], [], [], []
    store = VectorStore(
        PostgresTransport(url, identity=Identity.user(USER), max_size=1), cache="off", outbox=False
    )
    bodies = [json.dumps({"vector": query.tolist(), "k": 10}).encode() for query in queries]
    connection = _Connection(base, token)
    with store, httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(5):  # warm both: connections, plans, the function's JIT
            store.search(queries[0], k=10)
            assert connection.post("/search", bodies[0]) == 200
        for query, body in zip(queries, bodies, strict=True):
            start = time.perf_counter()
            store.search(query, k=10)
            sdk_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            status = connection.post("/search", body)
            http_times.append(time.perf_counter() - start)
            assert status == 200, status
            # The same request refused before any work (no token): client + server + routing only.
            start = time.perf_counter()
            connection.post("/search", body, token=False)
            floor_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.post("/search", content=body, headers={"content-type": "application/json"})
            httpx_floor_times.append(time.perf_counter() - start)
    connection.close()
    report.heading(f"search k=10, one client, {len(queries)} queries (interleaved)")
    _percentiles(report, ("SDK search", sdk_times), ("HTTP search", http_times))
    floor = percentile(floor_times, 50) * 1000
    report.figure("HTTP round trip refused before any work p50", floor, "ms")
    httpx_floor = percentile(httpx_floor_times, 50) * 1000
    report.figure("the same through httpx p50", httpx_floor, "ms", {"http.client": ratio(httpx_floor, floor)})
    added = (percentile(http_times, 50) - percentile(sdk_times, 50)) * 1000
    report.figure("HTTP layer adds at p50", added, "ms")
    report.figure("of which the function's own work", added - floor, "ms")


def _concurrent(url: str, base: str, queries: Any, report: Report, each: int) -> None:
    from supa_vectors import PostgresTransport, VectorStore
    from supa_vectors.transport.identity import Identity

    headers = {"Authorization": f"Bearer {user_token()}"}
    errors = [0, 0]

    def http_client(n: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            for i in range(each):
                response = client.post(
                    "/search", json={"vector": queries[(n + i * CLIENTS) % len(queries)].tolist()}
                )
                errors[0] += response.status_code != 200

    def sdk_client(n: int) -> None:
        transport = PostgresTransport(url, identity=Identity.user(USER), max_size=1)
        with VectorStore(transport, cache="off", outbox=False) as store:
            for i in range(each):
                try:
                    store.search(queries[(n + i * CLIENTS) % len(queries)], k=10)
                except Exception:
                    errors[1] += 1

    rates = {}
    for label, target in (("SDK", sdk_client), ("HTTP", http_client)):
        threads = [threading.Thread(target=target, args=(n,)) for n in range(CLIENTS)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rates[label] = CLIENTS * each / (time.perf_counter() - start)
    report.heading(f"search k=10, {CLIENTS} concurrent clients x {each} queries")
    report.figure("SDK throughput", rates["SDK"], "searches/s")
    report.figure("HTTP throughput", rates["HTTP"], "searches/s", {"SDK": ratio(rates["HTTP"], rates["SDK"])})
    report.figure("HTTP errors", errors[0], "requests")
    report.figure("SDK errors", errors[1], "calls")


def _first_answer(url: str, path: str, body: dict[str, Any] | None, **env: str) -> float:
    """Seconds from spawning a fresh function process to its first 200 on ``path``."""
    start = time.perf_counter()
    with serve(url, JWT_SECRET=SECRET, **env) as base:
        headers = {"Authorization": f"Bearer {user_token()}"}
        response = httpx.request(
            "POST" if body else "GET", base + path, json=body, headers=headers, timeout=60
        )
        response.raise_for_status()
        return time.perf_counter() - start


def _cold_start(url: str, report: Report, runs: int) -> None:
    cold, bare = [], []
    for _ in range(runs):
        cold.append(_first_answer(url, "/health", None))
        start = time.perf_counter()
        subprocess.run([deno(), "eval", ""], check=True)
        bare.append(time.perf_counter() - start)
    report.heading(f"cold start (median of {runs})")
    first, baseline = percentile(cold, 50), percentile(bare, 50)
    report.figure(
        "fresh function process to first /health",
        first * 1000,
        "ms",
        {"bare deno eval": ratio(first, baseline)},
    )


def _edge_embedding(url: str, report: Report, texts: list[str]) -> None:
    from supa_vectors.embedding.install import installed_model
    from supa_vectors.embedding.onnx import OnnxEmbedder

    start = time.perf_counter()
    sdk = OnnxEmbedder(precision="fp32")  # the edge runs the fp32 graph: compare like with like
    sdk.embed(["warm up"])
    sdk_first = time.perf_counter() - start
    model = installed_model(quantized=False)
    assert model is not None
    env = {"EMBEDDING_MODEL_URL": model.directory.as_uri() + "/"}
    edge_first = _first_answer(url, "/embed", {"texts": ["warm up"]}, **env)
    sdk_times, edge_times = [], []
    with serve(url, JWT_SECRET=SECRET, **env) as base:
        headers = {"Authorization": f"Bearer {user_token()}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            client.post("/embed", json={"texts": ["warm up"]}).raise_for_status()
            for text in texts:
                start = time.perf_counter()
                sdk.embed([text])
                sdk_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                client.post("/embed", json={"texts": [text]}).raise_for_status()
                edge_times.append(time.perf_counter() - start)
    report.heading(f"one query embedded, {len(texts)} corpus queries (interleaved), fp32")
    _percentiles(report, ("SDK OnnxEmbedder", sdk_times), ("edge POST /embed", edge_times))
    report.figure(
        "edge: fresh process to first vector",
        edge_first * 1000,
        "ms",
        {"SDK first embed": ratio(edge_first, sdk_first)},
    )


def run(quick: bool) -> dict[str, float]:
    report = Report("http")
    rows, queries_n, each, runs = (1_000, 100, 20, 2) if quick else (10_000, 400, 100, 5)
    version = subprocess.run(
        [deno(), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    report.note(f"{rows:,} documents of one user, k=10; Deno {version}")
    with bench_stack() as url:
        vectors = _load(url, rows)
        queries = near_queries(vectors, queries_n, seed=12)
        with serve(url, JWT_SECRET=SECRET) as base:
            _sequential(url, base, queries, report)
            _concurrent(url, base, queries, report, each)
        _cold_start(url, report, runs)
        texts = [q for q, _ in load_queries()][: 30 if quick else 200]
        _edge_embedding(url, report, texts)
    return report.values


if __name__ == "__main__":
    run("--quick" in sys.argv)
