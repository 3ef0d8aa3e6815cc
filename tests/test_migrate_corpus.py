"""The shared corpus (2,889 PostgreSQL manual sections, two JSON shapes) through the real model.

This is the issue's acceptance run: migrate, verify, migrate again (all unchanged, nothing embedded),
then ask ``queries.jsonl`` through ``search`` and hold retrieval quality to a floor. The figures it
measures go to BENCHMARKS.md through ``bench/migration.py``; here they are floors a little below what
was measured with fp32 (recall@10 0.791, MRR@10 0.526 on the 411 queries), so that a regression fails
while the approximate index's small run-to-run differences do not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from supa_vectors.embedding import OnnxEmbedder
from supa_vectors.migrate import migrate, verify
from tests.conftest import CORPUS
from tests.test_migrate import POSTGRES_DOCS, rows, scratch_database, store_for

QUERIES = CORPUS / "postgres-docs" / "queries.jsonl"
SECTIONS = 2889
FILES = 1058


class Counting:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    model = OnnxEmbedder()
    model.load()
    return model


@pytest.fixture(scope="module")
def corpus_db(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "corpus") as url:
        yield url


def test_the_shared_corpus_migrates_verifies_stays_unchanged_and_answers_queries(
    corpus_db: str, embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first_embedder = Counting(embedder)
    with store_for(corpus_db, first_embedder) as store:
        report = migrate([POSTGRES_DOCS], store, state_dir=state)
    assert report.status == "completed", report.error
    assert report.all_landed, report.problems
    assert (report.counts.files, report.counts.records, report.counts.inserted) == (FILES, SECTIONS, SECTIONS)
    assert report.counts.rejected == report.counts.warnings == 0
    assert first_embedder.texts == SECTIONS
    assert report.verify is not None
    assert report.verify.ok
    assert report.verify.matched == SECTIONS
    assert all(f.inserted == f.records for f in report.files)
    assert rows(corpus_db, "select count(*), count(distinct external_id) from public.documents") == [
        (SECTIONS, SECTIONS)
    ]
    assert rows(corpus_db, "select count(*) from public.embeddings") == [(SECTIONS,)]

    second_embedder = Counting(embedder)
    with store_for(corpus_db, second_embedder) as store:
        again = migrate([POSTGRES_DOCS], store, state_dir=state)
        assert (again.counts.inserted, again.counts.updated, again.counts.unchanged) == (0, 0, SECTIONS)
        assert second_embedder.texts == 0
        assert verify([POSTGRES_DOCS], store).ok

        queries = [json.loads(line) for line in QUERIES.read_text().splitlines() if line.strip()]
        ranks = []
        for query in queries:
            hits = [hit.id for hit in store.search(query["query"], k=10)]
            ranks.append(hits.index(query["answer_id"]) + 1 if query["answer_id"] in hits else None)
    recall_at_10 = sum(r is not None for r in ranks) / len(ranks)
    mrr = sum(1 / r for r in ranks if r is not None) / len(ranks)
    print(
        f"\nshared corpus through search: recall@10 {recall_at_10:.3f}, MRR@10 {mrr:.3f} "
        f"({len(ranks)} queries, migration {report.documents_per_second:.0f} documents/s)"
    )
    assert len(ranks) == 411
    assert recall_at_10 >= 0.74
    assert mrr >= 0.48
