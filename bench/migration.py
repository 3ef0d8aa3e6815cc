"""Section 7: the shared corpus through the migration path, against the naive path, and its memory.

* documents/s of the whole migration (``supa_vectors.migrate.migrate``: discover, back up, validate,
  embed, write, rebuild the index, verify) of the postgres-docs corpus into an empty store, with the
  production embedder (OnnxEmbedder's default: int8 on a CPU with VNNI, else fp32), and the share of
  that run the embedder was busy: the pipeline
  overlaps writing with embedding, so the migration runs at that share of the embedder's own speed
  (the target is >= 90%), a figure the machine's changing load cannot skew;
* the same comparison side by side on a sample, in alternating rounds (this machine's load changes by
  the minute, so paths measured minutes apart are not comparable): the migration, the naive path most
  first versions write (per document: embed it, INSERT the document, INSERT its embedding: two round
  trips), and the embedder alone (batches of 256) on the same texts;
* the write path alone: the whole corpus through the migration and through the naive path with a fast
  deterministic embedder, so what is compared is batching, binary vectors and the index, not the model;
* retrieval through the migrated store: the ``queries.jsonl`` queries whose answer was migrated, asked
  through ``VectorStore.search`` (recall@10, MRR@10), so the figure covers what the migration wrote;
* peak traced Python memory (tracemalloc) of a migration of the corpus at 1x and of synthetic copies at
  10x (each record ten times per file, new ids and texts), with the fast embedder: memory should not
  grow with the corpus.

Everything runs on a fresh local stack of its own (``bench_stack``), one new database per measurement.
``quick`` takes 40 files (~100 sections), samples of 16, and 1x/10x of 300 sections (with batches of
64, so 1x fills the pipeline as 10x does): it proves the code runs, in CI, in well under a minute.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

from bench._common import (
    DIM,
    MODEL,
    Report,
    bench_stack,
    corpus_dir,
    database_url,
    load_queries,
    ratio,
    spread,
)
from bench.quality import K, metrics

__all__ = ["run"]


# --------------------------------------------------------------------------------------------------
# Data


def corpus_files(quick: bool) -> list[Path]:
    files = sorted((corpus_dir() / "postgres-docs" / "documents").glob("*.json"))
    return files[:: max(1, len(files) // 40)][:40] if quick else files


def records_of(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return list(data if isinstance(data, list) else data["documents"])


def record_id(record: dict[str, Any]) -> str:
    """The id in either corpus shape: ``id``, or LangChain's ``metadata.doc_id``."""
    return str(record.get("id") or record["metadata"]["doc_id"])


def record_text(record: dict[str, Any]) -> str:
    return str(record.get("content") or record["page_content"])


def texts_of(files: Sequence[Path]) -> list[str]:
    return [record_text(r) for f in files for r in records_of(f)]


def ids_of(files: Sequence[Path]) -> set[str]:
    return {record_id(r) for f in files for r in records_of(f)}


def copy_sources(files: Sequence[Path], target: Path) -> Path:
    target.mkdir(parents=True)
    for path in files:
        shutil.copy(path, target / path.name)
    return target


def multiplied(files: Sequence[Path], target: Path, times: int, limit: int | None) -> int:
    """The corpus with each record ``times`` times per file (new id, new text); returns the count."""
    target.mkdir(parents=True)
    written = 0
    for path in files:
        if limit is not None and written >= limit * times:
            break
        data = json.loads(path.read_text(encoding="utf-8"))
        records = data if isinstance(data, list) else data["documents"]
        out = []
        for copy in range(times):
            for record in records:
                record = json.loads(json.dumps(record))
                if "content" in record:
                    record["id"] = f"{record['id']}#{copy}"
                    record["content"] = f"{record['content']} [{copy}]"
                else:
                    record["metadata"]["doc_id"] = f"{record['metadata']['doc_id']}#{copy}"
                    record["page_content"] = f"{record['page_content']} [{copy}]"
                out.append(record)
        written += len(out)
        shaped: Any = out if isinstance(data, list) else {"documents": out}
        (target / path.name).write_text(json.dumps(shaped), encoding="utf-8")
    return written


class Timed:
    """An embedder that keeps the seconds spent inside ``embed`` (its busy time in the pipeline)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.seconds = 0.0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)  # type: ignore[no-any-return]
        finally:
            self.seconds += time.perf_counter() - started


class HashEmbedder:
    """Deterministic bag-of-words vectors (as tests/conftest.py's FakeEmbedder), without its memory."""

    model_id = MODEL
    dimension = DIM

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                out[row, int.from_bytes(digest, "little") % (DIM - 1)] += 1.0
            out[row, -1] = 0.05
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# Databases


@contextmanager
def fresh_database(server: str, name: str) -> Iterator[str]:
    from supa_vectors.local import apply_migrations

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)'.encode())
        conn.execute(f'create database "{name}"'.encode())
    url = database_url(server, name)
    try:
        apply_migrations(url, migrator="builtin")
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)'.encode())


def count_documents(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("select count(*) from public.documents").fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------------------------------
# The three paths


def migrate_once(url: str, source: Path, state: Path, embedder: Any) -> tuple[float, Any]:
    from supa_vectors import VectorStore
    from supa_vectors.migrate import migrate

    with VectorStore.from_url(url, embedder=embedder) as store:
        store.settings()
        started = time.perf_counter()
        report = migrate([source], store, state_dir=state)
        seconds = time.perf_counter() - started
    if not report.all_landed:
        raise RuntimeError(f"the benchmark migration did not land everything: {report.counts}")
    return seconds, report


def search_quality(url: str, embedder: Any, present: set[str]) -> tuple[float, float, int]:
    """recall@10 and MRR@10 of the corpus queries whose answer was migrated, asked through the SDK."""
    from supa_vectors import VectorStore

    queries = [(q, answer) for q, answer in load_queries() if answer in present]
    with VectorStore.from_url(url, embedder=embedder) as store:
        ranked = [[hit.id for hit in store.search(q, k=K)] for q, _ in queries]
    _, recall_10, mrr = metrics(ranked, [answer for _, answer in queries])
    return recall_10, mrr, len(queries)


def naive(url: str, texts: Sequence[str], embedder: Any) -> float:
    """One document at a time: embed it, insert it, insert its vector; three steps, two round trips."""
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector_info(conn, TypeInfo.fetch(conn, "extensions.vector"))
        started = time.perf_counter()
        for i, text in enumerate(texts):
            vector = embedder.embed([text])[0]
            row = conn.execute(
                "insert into public.documents (external_id, content) values (%s, %s) returning id",
                (f"naive-{i}", text),
            ).fetchone()
            assert row is not None
            conn.execute(
                "insert into public.embeddings (document_id, model, embedding) values (%s, %s, %s)",
                (row[0], MODEL, vector),
            )
        return time.perf_counter() - started


def embedder_alone(texts: Sequence[str], embedder: Any, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        embedder.embed(list(texts[start : start + batch]))
    return time.perf_counter() - started


def peak_memory(url: str, source: Path, state: Path, batch_size: int) -> tuple[int, int]:
    from supa_vectors import VectorStore
    from supa_vectors.migrate import migrate

    with VectorStore.from_url(url, embedder=HashEmbedder()) as store:
        store.settings()
        tracemalloc.start()
        try:
            report = migrate([source], store, state_dir=state, batch_size=batch_size)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    if not report.all_landed:
        raise RuntimeError(f"the memory run did not land everything: {report.counts}")
    return peak, report.counts.landed


# --------------------------------------------------------------------------------------------------


def sample_source(files: Sequence[Path], count: int, target: Path) -> tuple[Path, list[str]]:
    """``count`` records spread over the corpus, as one list-shaped file (ids and texts kept)."""
    records = [r for f in files for r in records_of(f)]
    picked = spread(records, count)
    target.mkdir(parents=True)
    out = [{"id": record_id(r), "content": record_text(r), "metadata": r["metadata"]} for r in picked]
    (target / "sample.json").write_text(json.dumps(out), encoding="utf-8")
    return target, [str(r["content"]) for r in out]


def side_by_side(
    server: str, files: Sequence[Path], count: int, rounds: int, embedder: Any, work: Path
) -> tuple[float, float, float]:
    """docs/s of (migration, naive, embedder alone) on the same sample, in alternating rounds."""
    source, texts = sample_source(files, count, work / "sample")
    seconds = {"migration": 0.0, "naive": 0.0, "alone": 0.0}
    for r in range(rounds):
        order = ["migration", "naive", "alone"] if r % 2 == 0 else ["alone", "naive", "migration"]
        for leg in order:
            if leg == "alone":
                seconds["alone"] += embedder_alone(texts, embedder, 256)
                continue
            with fresh_database(server, f"bench_{leg}_{r}") as url:
                if leg == "naive":
                    seconds["naive"] += naive(url, texts, embedder)
                else:
                    seconds["migration"] += migrate_once(url, source, work / f"state-{r}", embedder)[0]
    total = count * rounds
    return total / seconds["migration"], total / seconds["naive"], total / seconds["alone"]


def run(quick: bool) -> dict[str, float]:
    from supa_vectors.embedding import OnnxEmbedder

    report = Report("migration")
    files = corpus_files(quick)
    texts = texts_of(files)
    embedder = OnnxEmbedder()
    embedder.load()
    embedder.embed(texts[:64])  # warm up
    work = Path(tempfile.mkdtemp(prefix="supa-vectors-bench-migration-"))
    try:
        source = copy_sources(files, work / "source")
        with bench_stack() as server:
            report.heading(
                f"{len(texts):,} sections in {len(files)} files, ONNX {embedder.variant}, into an empty store"
            )
            timed = Timed(embedder)
            with fresh_database(server, "bench_migration") as url:
                seconds, result = migrate_once(url, source, work / "state", timed)
                rate = result.counts.landed / seconds
                assert count_documents(url) == len(texts)
                recall_10, mrr, asked = search_quality(url, embedder, ids_of(files))
            busy = timed.seconds / seconds
            report.figure("migration, whole run (backup, embed, write, index, verify)", rate, "docs/s")
            # The rest of the run is what the pipeline adds: reading, backup, the last write, index, verify.
            report.figure("embedder busy during the migration", 100 * busy, "% of the run")
            report.figure("migration, of which verify", result.verify.seconds if result.verify else 0.0, "s")
            report.note(f"bulk load (index dropped and rebuilt): {result.bulk_load}")
            report.heading(
                f"the migrated store through VectorStore.search: {asked} queries.jsonl queries, k=10"
            )
            report.figure("recall@10", recall_10, "")
            report.figure("MRR@10", mrr, "")

            count, rounds = (16, 2) if quick else (150, 2)
            report.heading(f"side by side: {count} sections x {rounds} rounds, ONNX fp32, alternating order")
            m_rate, n_rate, a_rate = side_by_side(server, files, count, rounds, embedder, work / "side")
            report.figure("embedder alone, batches of 256", a_rate, "docs/s")
            report.figure(
                "migration",
                m_rate,
                "docs/s",
                {"embedder alone": ratio(m_rate, a_rate), "naive": ratio(m_rate, n_rate)},
            )
            report.figure("naive: embed + 2 INSERTs per document", n_rate, "docs/s")

            report.heading(f"write path: {len(texts):,} sections, fast hash embedder")
            hashing = HashEmbedder()
            with fresh_database(server, "bench_write_migration") as url:
                w_seconds, _ = migrate_once(url, source, work / "state-hash", hashing)
            with fresh_database(server, "bench_write_naive") as url:
                wn_seconds = naive(url, texts, hashing)
            w_rate, wn_rate = len(texts) / w_seconds, len(texts) / wn_seconds
            report.figure("migration (write path)", w_rate, "docs/s", {"naive": ratio(w_rate, wn_rate)})
            report.figure("naive (write path)", wn_rate, "docs/s")

            base = 300 if quick else None
            small, large = work / "x1", work / "x10"
            n1 = multiplied(files, small, 1, base)
            n10 = multiplied(files, large, 10, base)
            report.heading(f"peak traced memory, {n1:,} vs {n10:,} documents (hash embedder)")
            batch = 64 if quick else 256
            with fresh_database(server, "bench_memory_1") as url:
                peak1, landed1 = peak_memory(url, small, work / "m1", batch)
            with fresh_database(server, "bench_memory_10") as url:
                peak10, landed10 = peak_memory(url, large, work / "m10", batch)
            if (landed1, landed10) != (n1, n10):
                raise RuntimeError(f"memory runs landed {landed1} and {landed10} of {n1} and {n10}")
            report.figure("peak memory at 1x", peak1 / 2**20, "MiB")
            report.figure("peak memory at 10x", peak10 / 2**20, "MiB", {"1x": ratio(peak10, peak1)})
            size10 = sum(p.stat().st_size for p in large.iterdir())
            report.figure("source size at 10x", size10 / 2**20, "MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report.values


if __name__ == "__main__":
    import sys

    values = run("--quick" in sys.argv)
    print(json.dumps(values, indent=2))
