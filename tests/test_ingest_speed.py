"""What the faster write path (decision 0024) must keep: the content hash, per-session scratch rows that
every role of a pooled connection can use and nobody sees after commit, caller vectors checked and
converted as before without the list round trip, and chunks within what the RPCs take.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import psycopg
import pytest
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo
from psycopg.types.json import Json

from supa_vectors._core import upsert as _rpc
from supa_vectors._core.checks import ID_CHUNK_SIZE
from supa_vectors._text import MAX_JSON_DEPTH, _json_problem, json_problem
from supa_vectors.errors import DocumentError
from supa_vectors.transport.identity import Identity
from tests.conftest import DIM, MODEL, USER_A, USER_B, FakeEmbedder, act_as

TRICKY_TEXTS = [
    "plain ascii",
    "Grüße, naïve café — ½ € ✓",
    "emoji 🦀🐘 and a ZWJ 👩‍💻",
    'quotes " and \\ backslashes \\n and a real\nnewline\tand tab\r\n',
    "e\u0301 combining accent, \u00e9 precomposed",
    "日本語のテキスト",
    "\u2028line separator\u2029",
    "x" * 5000,
]


def statuses(conn: psycopg.Connection, records: list[dict[str, Any]], vectors: list[Any]) -> list[str]:
    rows = conn.execute(
        "select status from public.bulk_upsert(%s, %s) order by ordinal", [Json(records), vectors]
    ).fetchall()
    return [r[0] for r in rows]


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def test_inline_content_hash_matches_the_column_and_the_sdk(conn: psycopg.Connection) -> None:
    """Rows written before (their hash from the generated column) stay "unchanged" when the same content
    comes through bulk_upsert, whose hash is now written out inline; and both equal the SDK's."""
    act_as(conn, Identity.service())
    for i, text in enumerate(TRICKY_TEXTS):
        row = conn.execute(
            "insert into public.documents (external_id, owner_id, content) values (%s, null, %s)"
            " returning id, content_hash",
            [f"t{i}", text],
        ).fetchone()
        assert row is not None
        assert row[1] == _rpc.content_hash(text)
        conn.execute(
            "insert into public.embeddings (document_id, model, embedding) values (%s, %s, %s)",
            [row[0], MODEL, vector(i)],
        )
    records = [{"external_id": f"t{i}", "content": t} for i, t in enumerate(TRICKY_TEXTS)]
    assert statuses(conn, records, [vector(i) for i in range(len(TRICKY_TEXTS))]) == ["unchanged"] * len(
        TRICKY_TEXTS
    )
    inline = conn.execute(
        "select pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(t, 'UTF8')), 'hex'),"
        " supa_vectors_internal.content_hash(t) from unnest(%s::text[]) as t",
        [TRICKY_TEXTS],
    ).fetchall()
    assert [a for a, _ in inline] == [b for _, b in inline] == [_rpc.content_hash(t) for t in TRICKY_TEXTS]


def test_scratch_rows_serve_every_role_of_a_session_and_end_with_the_transaction(clean_url: str) -> None:
    """PostgREST reuses one connection for requests of different roles: the scratch table the first
    caller created must serve the next one, and hold nothing once a transaction commits."""
    with psycopg.connect(clean_url) as conn:
        register_vector_info(conn, TypeInfo.fetch(conn, "extensions.vector"))
        for n, identity in enumerate([Identity.user(USER_A), Identity.service(), Identity.user(USER_B)]):
            act_as(conn, identity)
            records = [{"external_id": f"s{n}-{i}", "content": f"session text {n} {i}"} for i in range(3)]
            assert statuses(conn, records, [vector(i) for i in range(3)]) == ["inserted"] * 3
            # Two calls in one transaction: the second sees only its own batch.
            assert statuses(conn, records[:1], [vector(0)]) == ["unchanged"]
            conn.commit()
        left = conn.execute("select count(*) from pg_temp.supa_vectors_rows").fetchone()
        assert left == (0,)
        conn.rollback()


def test_caller_ndarrays_are_checked_and_converted_as_lists_were() -> None:
    rng = np.random.default_rng(7)
    f64 = rng.standard_normal(DIM)
    ints = rng.integers(-(2**40), 2**40, DIM)
    f32 = rng.standard_normal(DIM).astype(np.float32)
    prepared = _rpc.prepare_documents(
        [
            {"id": "f64", "content": "a", "embedding": f64},
            {"id": "int", "content": "b", "embedding": ints},
            {"id": "f32", "content": "c", "embedding": f32},
            {"id": "list", "content": "d", "embedding": f64.tolist()},
        ]
    )
    by_id = {d.id: d.embedding for d in prepared}
    # Exactly what the list[float] field gave (Python floats, then float32), bit for bit.
    assert by_id["f64"] is not None
    assert by_id["f64"].dtype == np.float32
    assert by_id["f64"].tobytes() == np.asarray(f64.tolist(), dtype=np.float32).tobytes()
    assert by_id["int"] is not None
    assert by_id["int"].tobytes() == np.asarray(ints.tolist(), dtype=np.float32).tobytes()
    assert by_id["list"] is not None
    assert by_id["list"].tobytes() == by_id["f64"].tobytes()
    # A copy: the caller may reuse its buffer.
    kept = f32.copy()
    f32[:] = 0
    assert by_id["f32"] is not None
    assert by_id["f32"].tobytes() == kept.tobytes()


@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        (np.full(DIM, np.nan), "finite"),
        (np.concatenate([np.ones(DIM - 1), [np.inf]]).astype(np.float32), "finite"),
        (np.ones((2, DIM), dtype=np.float32), "embedding"),
        (np.array(["x"] * DIM), "embedding"),
    ],
)
def test_bad_ndarrays_are_refused_before_anything_is_sent(embedding: np.ndarray, message: str) -> None:
    with pytest.raises(DocumentError, match=message) as caught:
        _rpc.prepare_documents(
            [{"id": "ok", "content": "fine"}, {"id": "bad", "content": "x", "embedding": embedding}]
        )
    assert caught.value.index == 1


def test_ndarrays_of_the_wrong_dimension_are_refused() -> None:
    settings = _rpc.StoreSettings(embedding_model=MODEL, embedding_dimension=DIM)
    prepared = _rpc.prepare_documents([{"id": "short", "content": "x", "embedding": np.ones(DIM - 1)}])
    with pytest.raises(DocumentError, match=f"{DIM - 1} dimensions"):
        _rpc.check_limits(prepared, settings)


def test_json_size_is_exact_without_encoding_each_document() -> None:
    metadata: list[dict[str, Any]] = [{}, {"b10": 3}, {"title": 'Grüße "q"', "n": [1, 2.5, None, True]}]
    docs = [
        {"id": f"id-{i} {t[:3]}", "content": t, "metadata": metadata[i % len(metadata)]}
        for i, t in enumerate(TRICKY_TEXTS)
    ]
    for doc in _rpc.prepare_documents(docs):
        assert doc.json_bytes == len(json.dumps(doc.as_json()))


def test_metadata_is_checked_the_same_on_the_quick_walk() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        deep = [deep]
    values = [
        {"a": 1, "b": [1.5, "x", None, {"c": True}]},
        {"a": float("nan")},
        {"a": ["ok", "nul\x00"]},
        {"a": "\ud800"},
        {1: "int key"},
        {"t": (1, 2)},
        {"big": 10**700},
        {"deep": deep},
        {"deeper": [deep]},
        {"set": {1, 2}},
    ]
    for value in values:
        assert json_problem(value, "metadata") == _json_problem(
            value, "metadata", max_depth=MAX_JSON_DEPTH, depth=1
        )


def test_chunks_never_exceed_what_the_rpcs_take() -> None:
    """bulk_upsert takes max_batch_size documents, get_documents fewer ids: the flow cuts to both."""
    settings = _rpc.StoreSettings(embedding_model=MODEL, embedding_dimension=DIM, max_batch_size=700)
    prepared = _rpc.prepare_documents([f"text number {i}" for i in range(1500)])
    fake = FakeEmbedder()
    written: list[int] = []
    looked_up: list[int] = []
    flow = _rpc.upsert_flow(
        prepared, settings, Identity.service(), vector_bytes_per_float=_rpc.BINARY_BYTES_PER_FLOAT
    )
    reply: Any = None
    while True:
        try:
            op = flow.send(reply)
        except StopIteration as done:
            results = done.value
            break
        if isinstance(op, _rpc.EmbedCall):
            reply = fake.embed(op.texts)
        elif op.name == "get_documents":
            looked_up.append(len(op.params["external_ids"]))
            reply = []
        else:
            written.append(len(op.params["documents"]))
            reply = [{"ordinal": n, "status": "inserted"} for n in range(1, written[-1] + 1)]
    assert written == [700, 700, 100]
    assert max(looked_up) <= ID_CHUNK_SIZE
    assert sum(looked_up) == 1500
    assert [r.id for r in results] == [d.id for d in prepared]


def test_the_lookup_finds_each_owners_row_under_a_shared_id(conn: psycopg.Connection) -> None:
    """Existing rows are found by (owner, id) through the key's two shapes (an owner, or none): the
    shared row and a user's own row under the same id are each updated only by their writer."""
    record = {"external_id": "same", "content": "first"}
    act_as(conn, Identity.service())
    assert statuses(conn, [record], [vector(1)]) == ["inserted"]
    act_as(conn, Identity.user(USER_A))
    assert statuses(conn, [record], [vector(2)]) == ["inserted"]
    assert statuses(conn, [record], [vector(2)]) == ["unchanged"]
    assert statuses(conn, [{**record, "content": "user's second"}], [vector(3)]) == ["updated"]
    act_as(conn, Identity.service())
    assert statuses(conn, [record], [vector(1)]) == ["unchanged"]
    assert statuses(conn, [{**record, "content": "shared second"}], [vector(4)]) == ["updated"]
    rows = conn.execute(
        "select owner_id is null, content from public.documents where external_id = 'same' order by 1"
    ).fetchall()
    assert rows == [(False, "user's second"), (True, "shared second")]
