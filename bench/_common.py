"""What every section shares: the local stack, the data, the clock and the report lines.

Every figure a section prints comes with its ratio against a baseline measured in the same process,
minutes apart at most: this machine (2 cores, shared with other jobs) is too noisy for absolute
numbers to mean much from one run to the next, while ratios measured side by side hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_ENV = "SUPA_VECTORS_CORPUS_DIR"
DIM = 384
MODEL = "sentence-transformers/all-MiniLM-L6-v2"

F32 = npt.NDArray[np.float32]


# --------------------------------------------------------------------------------------------------
# The shared corpus


def corpus_dir() -> Path:
    """``$SUPA_VECTORS_CORPUS_DIR``, else the ``corpus/`` that ships with the repository."""
    override = os.environ.get(CORPUS_ENV)
    return Path(override) if override else REPO_ROOT / "corpus"


@dataclass(frozen=True)
class CorpusDoc:
    id: str
    content: str
    title: str


def load_corpus() -> list[CorpusDoc]:
    """The postgres-docs sections, in both shapes the files come in, in file-name order."""
    docs: list[CorpusDoc] = []
    for path in sorted((corpus_dir() / "postgres-docs" / "documents").glob("*.json")):
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            for record in data["documents"]:
                meta = record.get("metadata") or {}
                docs.append(
                    CorpusDoc(str(meta["doc_id"]), record["page_content"], str(meta.get("title", "")))
                )
        else:
            for record in data:
                meta = record.get("metadata") or {}
                docs.append(CorpusDoc(str(record["id"]), record["content"], str(meta.get("title", ""))))
    return docs


def load_queries() -> list[tuple[str, str]]:
    """``(query, answer_id)`` pairs of ``queries.jsonl``."""
    path = corpus_dir() / "postgres-docs" / "queries.jsonl"
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            pairs.append((str(item["query"]), str(item["answer_id"])))
    return pairs


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items taken evenly across ``items`` (so lengths are representative of the whole)."""
    if count >= len(items):
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


# --------------------------------------------------------------------------------------------------
# Synthetic vectors


def clustered(rows: int, seed: int, *, centers: int = 500, rank: int = 12, noise: float = 0.05) -> F32:
    """Unit vectors with a low intrinsic dimension, as sentence embeddings have.

    ``centers`` cluster centres, each cluster spread over its own ``rank``-dimensional subspace, plus
    a little isotropic noise (the generator of tests/test_database_search_plans.py, with 500 centres).
    Uniform random 384-d vectors would be the worst case for HNSW and unlike any text embedding.
    """
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centers, DIM)).astype(np.float32)
    bases = rng.standard_normal((centers, rank, DIM)).astype(np.float32) * 0.25
    out = np.empty((rows, DIM), dtype=np.float32)
    for start in range(0, rows, 10_000):
        n = min(10_000, rows - start)
        members = rng.integers(0, centers, n)
        x = middle[members] + np.einsum(
            "nk,nkd->nd", rng.standard_normal((n, rank)).astype(np.float32), bases[members]
        )
        x += noise * rng.standard_normal((n, DIM)).astype(np.float32)
        out[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def near_queries(vectors: F32, count: int, seed: int, noise: float = 0.02) -> F32:
    """Queries that lie near the data: stored points plus a little noise, normalised."""
    rng = np.random.default_rng(seed)
    picked = vectors[rng.integers(0, len(vectors), count)]
    q = picked + noise * rng.standard_normal(picked.shape).astype(np.float32)
    out: F32 = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return out


def exact_top_k(
    vectors: F32, queries: F32, k: int, mask: npt.NDArray[np.bool_] | None = None
) -> list[list[int]]:
    """Row numbers of the ``k`` most cosine-similar stored vectors per query (vectors are unit length)."""
    out: list[list[int]] = []
    for start in range(0, len(queries), 64):
        sims = queries[start : start + 64] @ vectors.T
        if mask is not None:
            sims[:, ~mask] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        for row, candidates in enumerate(top):
            ordered = candidates[np.argsort(-sims[row, candidates], kind="stable")]
            out.append([int(i) for i in ordered])
    return out


def recall(found: Sequence[Sequence[Any]], truth: Sequence[Sequence[Any]], k: int) -> float:
    """Mean share of the true top ``k`` present in the first ``k`` found."""
    if not truth:
        return float("nan")
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def row_numbers(external_ids: Iterable[Any]) -> list[int]:
    """Row numbers of the synthetic rows ``d<i>`` a search returned (what ``exact_top_k`` yields)."""
    return [int(str(i)[1:]) for i in external_ids]


def synthetic_content(texts: Sequence[str], i: int, chars: int = 200) -> str:
    """A short, realistic text for synthetic row ``i``: a corpus section's opening, clipped."""
    text = re.sub(r"\s+", " ", texts[i % len(texts)]).strip()[:chars]
    return f"{text} [{i}]"


# --------------------------------------------------------------------------------------------------
# Clock


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def latencies(fn: Callable[[Any], Any], inputs: Sequence[Any]) -> tuple[list[float], list[Any]]:
    """Seconds per call and each call's result, one call per input, sequentially."""
    times: list[float] = []
    results: list[Any] = []
    for item in inputs:
        start = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - start)
    return times, results


# --------------------------------------------------------------------------------------------------
# The local stack


@contextlib.contextmanager
def bench_stack() -> Iterator[str]:
    """A fresh local stack of our own in a temporary directory, stopped and deleted afterwards.

    Never the developers' stack: other engineers' test runs use it, and a benchmark must not share a
    server with them. The directory sits in /tmp, which the unprivileged server user can traverse.
    """
    from supa_vectors.local import LocalStack

    base = tempfile.mkdtemp(prefix="supa-vectors-bench-", dir="/tmp")
    stack = LocalStack(base_dir=base)
    try:
        yield stack.start()
    finally:
        try:
            stack.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def database_url(url: str, database: str) -> str:
    return re.sub(r"/[^/?]+(\?|$)", f"/{database}\\1", url, count=1)


# --------------------------------------------------------------------------------------------------
# Report


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9@/.%]+", "_", text.lower()).strip("_")


@dataclass
class Report:
    """Prints a section's figures as they are measured and collects them for ``--json``.

    Each figure is stored under a slug of its label; each ratio under ``<label> / <baseline>``.
    """

    section: str
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        print(f"\n[{self.section}] {text}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def figure(
        self,
        label: str,
        value: float,
        unit: str,
        ratios: dict[str, float] | None = None,
        *,
        digits: int = 3,
    ) -> None:
        key = _slug(label)
        self.values[key] = float(value)
        parts = []
        for baseline, ratio in (ratios or {}).items():
            self.values[f"{key} / {_slug(baseline)}"] = float(ratio)
            parts.append(f"{ratio:.{digits}g}x {baseline}")
        shown = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
        tail = f"   ({', '.join(parts)})" if parts else ""
        print(f"  {label:<58} {shown:>10} {unit}{tail}", flush=True)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def cpu_features() -> str:
    """The SIMD features numpy, onnxruntime and pgvector can use here: every figure depends on them, and
    the machines this runs on differ (AVX2 only, or AVX-512 with VNNI), so each run prints them. Read
    as ``OnnxEmbedder`` reads them to pick its int8 or fp32 graph."""
    from supa_vectors.embedding.precision import INT8_DOT_PRODUCT
    from supa_vectors.embedding.precision import cpu_features as read

    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", *INT8_DOT_PRODUCT)
    flags = read()
    if not flags:
        return "unknown"
    return " ".join(f for f in wanted if f in flags) or "none of sse4.2/avx*"
