"""The one write step (``_core.upsert.send_chunk``) that the store's upsert and the migration share.

The case it exists for is a race: between a writer's lookup (which says the store already holds this
content, so no vector is sent) and its ``bulk_upsert``, another writer changes the document. The
server then refuses the document for lacking a vector, and the writer must embed it and send the
chunk once more, whichever path it writes through. The race is forced by a transport that lets the
other writer in right after the lookup; everything else runs against the real database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from supa_vectors import VectorStore
from supa_vectors._core import rpcs, upsert
from supa_vectors._core.ops import EmbedCall
from supa_vectors._core.retry import Retry, call
from supa_vectors.errors import BackendUnavailableError, DocumentError
from supa_vectors.migrate import migrate
from supa_vectors.transport.postgres import PostgresTransport
from tests.conftest import FakeEmbedder

SOURCE_TEXT = "the text every writer agrees on"


class OtherWriterAfterLookup:
    """Fault injection: after the first ``get_documents``, another writer changes ``doc_id``."""

    def __init__(self, url: str, doc_id: str) -> None:
        self._inner = PostgresTransport(url)
        self._url = url
        self._doc_id = doc_id
        self.interfered = False

    def rpc(self, name: str, params: Any) -> Any:
        reply = self._inner.rpc(name, params)
        if name == "get_documents" and not self.interfered:
            self.interfered = True
            with VectorStore.from_url(self._url, embedder=FakeEmbedder()) as other:
                other.upsert({"id": self._doc_id, "content": "what the other writer wrote"})
        return reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def stored_content(url: str, doc_id: str) -> tuple[str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "select d.content, count(e.document_id)::int from public.documents d"
            " left join public.embeddings e on e.document_id = d.id"
            " where d.external_id = %s group by d.content",
            (doc_id,),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_store_embeds_and_resends_a_document_changed_after_its_lookup(clean_url: str) -> None:
    with VectorStore.from_url(clean_url, embedder=FakeEmbedder()) as first:
        first.upsert({"id": "x", "content": SOURCE_TEXT})
    transport = OtherWriterAfterLookup(clean_url, "x")
    embedder = FakeEmbedder()
    with VectorStore(transport, embedder=embedder) as store:
        results = store.upsert([{"id": "x", "content": SOURCE_TEXT}])
    assert transport.interfered
    assert [(r.id, r.status) for r in results] == [("x", "updated")]
    assert embedder.texts == [SOURCE_TEXT]  # nothing before the refusal, the document after it
    assert stored_content(clean_url, "x") == (SOURCE_TEXT, 1)


def test_the_migration_embeds_and_resends_a_record_changed_after_its_lookup(
    clean_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "docs.json"
    source.write_text(json.dumps([{"id": "x", "content": SOURCE_TEXT}]), encoding="utf-8")
    with VectorStore.from_url(clean_url, embedder=FakeEmbedder()) as first:
        first.upsert({"id": "x", "content": SOURCE_TEXT})
    transport = OtherWriterAfterLookup(clean_url, "x")
    embedder = FakeEmbedder()
    with VectorStore(transport, embedder=embedder) as store:
        report = migrate([source], store, state_dir=tmp_path / "state", backup=False)
    assert transport.interfered
    assert report.status == "completed"
    assert report.all_landed
    assert (report.counts.updated, report.counts.rejected, report.counts.embedded) == (1, 0, 1)
    assert embedder.texts == [SOURCE_TEXT]
    assert stored_content(clean_url, "x") == (SOURCE_TEXT, 1)


def test_a_refusal_of_a_document_sent_with_its_vector_is_not_resent() -> None:
    """Recognised by what was sent, not by the message: the same words about a document that did
    carry a vector go up at once, without embedding anything."""
    vector = FakeEmbedder().embed(["a"])[0]
    flow = upsert.send_chunk([{"external_id": "a", "content": "a", "metadata": {}}], [vector], len(vector))
    op = next(flow)
    assert not isinstance(op, EmbedCall)
    refusal = DocumentError("document 1 (external_id a): is new and has no embedding", index=0)
    with pytest.raises(DocumentError) as raised:
        flow.throw(refusal)
    assert raised.value is refusal


def test_the_retry_rule_replays_only_what_the_rpc_table_allows() -> None:
    """One retry rule: an outage is ridden out for an RPC the table marks idempotent, never for one
    that may not be replayed (a bulk load's DDL)."""
    sent: list[str] = []

    def unavailable(name: str, params: Any) -> Any:
        sent.append(name)
        raise BackendUnavailableError("connection refused")

    quick = Retry(attempts=2, base=0.0, cap=0.0)
    for op, tries in ((rpcs.BULK_UPSERT.call({}), 3), (rpcs.BEGIN_BULK_LOAD.call({}), 1)):
        sent.clear()
        with pytest.raises(BackendUnavailableError):
            call(unavailable, op, quick)
        assert sent == [op.name] * tries
