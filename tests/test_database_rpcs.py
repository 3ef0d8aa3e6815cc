"""The RPCs, called exactly as PostgREST calls them: one transaction, role and JWT claims set first.

Everything here runs against the real local stack; nothing about the database is mocked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Json, Jsonb

from supa_vectors.transport.identity import Identity
from tests.conftest import USER_A, USER_B, act_as

DIM = 384


def unit(seed: int, *, near: np.ndarray | None = None, spread: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(DIM).astype(np.float32)
    if near is not None:
        v = near + spread * v / np.linalg.norm(v)
    return (v / np.linalg.norm(v)).astype(np.float32)


def doc(
    external_id: str, content: str | None = None, *, seed: int | None = None, **extra: Any
) -> dict[str, Any]:
    record: dict[str, Any] = {"external_id": external_id, "content": content or f"content of {external_id}"}
    if seed is not None:
        record["embedding"] = unit(seed).tolist()
    record.update(extra)
    return record


def call(conn: psycopg.Connection, fn: str, **params: Any) -> list[dict[str, Any]]:
    args = ", ".join(f"{name} => %({name})s" for name in params)
    # documents is `json` (so NUL characters can be named), filter is `jsonb`.
    wrap = {"documents": Json, "filter": Jsonb}
    values = {k: wrap[k](v) if k in wrap else v for k, v in params.items()}
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"select * from public.{fn}({args})", values)
        return cur.fetchall()


def upsert(conn: psycopg.Connection, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["external_id"], r["status"]) for r in call(conn, "bulk_upsert", documents=records)]


def sqlstate_of(conn: psycopg.Connection, fn: str, **params: Any) -> psycopg.Error:
    conn.execute("savepoint attempt")
    with pytest.raises(psycopg.Error) as caught:
        call(conn, fn, **params)
    conn.execute("rollback to savepoint attempt")
    return caught.value


def count_rows(conn: psycopg.Connection) -> tuple[int, int, int]:
    row = conn.execute(
        "select (select count(*) from public.documents), (select count(*) from public.embeddings),"
        " (select count(*) from public.document_metadata)"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@pytest.fixture
def service(conn: psycopg.Connection) -> psycopg.Connection:
    act_as(conn, Identity.service())
    return conn


# --- bulk_upsert -------------------------------------------------------------------------------


def test_bulk_upsert_inserts_then_leaves_unchanged_then_updates(service: psycopg.Connection) -> None:
    records = [doc(f"d{i}", seed=i, metadata={"i": i}) for i in range(3)]
    assert upsert(service, records) == [("d0", "inserted"), ("d1", "inserted"), ("d2", "inserted")]
    before = service.execute("select id, updated_at from public.documents order by id").fetchall()

    assert upsert(service, records) == [("d0", "unchanged"), ("d1", "unchanged"), ("d2", "unchanged")]
    assert service.execute("select id, updated_at from public.documents order by id").fetchall() == before

    records[0]["content"] = "a new text"
    records[1]["metadata"] = {"i": 1, "extra": True}
    assert upsert(service, records) == [("d0", "updated"), ("d1", "updated"), ("d2", "unchanged")]
    assert count_rows(service)[:2] == (3, 3)


def test_metadata_only_change_needs_no_embedding_and_keeps_the_vector(service: psycopg.Connection) -> None:
    upsert(service, [doc("d", "same text", seed=1)])
    vector_before = service.execute("select embedding, created_at from public.embeddings").fetchone()
    assert upsert(service, [{"external_id": "d", "content": "same text", "metadata": {"tag": "x"}}]) == [
        ("d", "updated")
    ]
    assert service.execute("select embedding, created_at from public.embeddings").fetchone() == vector_before
    assert service.execute("select metadata from public.documents").fetchone() == ({"tag": "x"},)


def test_changed_content_replaces_the_vector(service: psycopg.Connection) -> None:
    upsert(service, [doc("d", "old", seed=1)])
    upsert(service, [doc("d", "new", seed=2)])
    stored = service.execute("select embedding from public.embeddings").fetchone()
    assert stored is not None
    assert np.allclose(stored[0].to_numpy(), unit(2), atol=1e-6)


def test_content_hash_matches_python_sha256(service: psycopg.Connection) -> None:
    import hashlib

    text = "naïve café — 東京 🚀"
    upsert(service, [doc("d", text, seed=1)])
    assert service.execute("select content_hash from public.documents").fetchone() == (
        hashlib.sha256(text.encode()).hexdigest(),
    )


def test_binary_vectors_travel_beside_the_json(service: psycopg.Connection) -> None:
    records = [doc("a"), doc("b")]
    vectors = [unit(1), unit(2)]
    rows = service.execute(
        "select external_id, status from public.bulk_upsert(%s, %s)", [Json(records), vectors]
    ).fetchall()
    assert rows == [("a", "inserted"), ("b", "inserted")]
    stored = service.execute("select embedding from public.embeddings order by document_id").fetchall()
    assert np.allclose(stored[1][0].to_numpy(), vectors[1])


def test_system_metadata_lands_in_document_metadata(service: psycopg.Connection) -> None:
    system = {
        "source_file": "docs/a.json",
        "source_checksum": "abc",
        "ingest_run_id": "run-1",
        "chunk_index": 2,
    }
    upsert(service, [doc("d", seed=1, system=system)])
    row = service.execute(
        "select source_file, source_checksum, ingest_run_id, chunk_index from public.document_metadata"
    ).fetchone()
    assert row == ("docs/a.json", "abc", "run-1", 2)
    # The caller's metadata stays the caller's: system fields never appear in it.
    assert service.execute("select metadata from public.documents").fetchone() == ({},)


BAD_BATCHES: list[tuple[str, Any, str]] = [
    (
        "wrong dimension",
        [doc("ok", seed=1), {**doc("bad"), "embedding": [0.1] * 1536}],
        "document 2 (external_id bad): embedding has 1536 dimensions",
    ),
    (
        "NaN",
        [{**doc("bad"), "embedding": ["NaN"] * DIM}],
        "document 1 (external_id bad): embedding must contain only finite numbers",
    ),
    (
        "empty content",
        [doc("ok", seed=1), {"external_id": "bad", "content": "", "embedding": unit(1).tolist()}],
        "document 2 (external_id bad): content is empty",
    ),
    (
        "blank content",
        [{"external_id": "bad", "content": " \n\t", "embedding": unit(1).tolist()}],
        "content is empty",
    ),
    (
        "missing content",
        [{"external_id": "bad", "embedding": unit(1).tolist()}],
        "document 1 (external_id bad): content must be a string",
    ),
    (
        "NUL character",
        [doc("ok", seed=1), {"external_id": "bad", "content": "a\u0000b", "embedding": unit(1).tolist()}],
        "document 2 (external_id bad): contains a NUL character",
    ),
    (
        "missing id",
        [{"content": "x", "embedding": unit(1).tolist()}],
        "document 1 (external_id missing): external_id must be a string",
    ),
    ("not an object", [doc("ok", seed=1), 42], "document 2 (external_id missing): is not a JSON object"),
    (
        "duplicate id",
        [doc("same", seed=1), doc("other", seed=2), doc("same", seed=3)],
        "document 3 (external_id same): appears more than once in this batch (first at 1)",
    ),
    ("new without embedding", [doc("bad")], "document 1 (external_id bad): is new and has no embedding"),
    (
        "metadata not an object",
        [doc("bad", seed=1, metadata=[1, 2])],
        "document 1 (external_id bad): metadata must be a JSON object",
    ),
    (
        "oversize content",
        [{"external_id": "big", "content": "x" * 1_000_001, "embedding": unit(1).tolist()}],
        "document 1 (external_id big): content has 1000001 bytes; the limit is 1000000",
    ),
    ("not an array", {"external_id": "x"}, "documents must be a JSON array of objects"),
]


@pytest.mark.parametrize(
    ("records", "message"), [(b, m) for _, b, m in BAD_BATCHES], ids=[n for n, _, _ in BAD_BATCHES]
)
def test_bad_batches_name_the_record_and_write_nothing(
    service: psycopg.Connection, records: Any, message: str
) -> None:
    upsert(service, [doc("existing", seed=9)])
    before = count_rows(service)
    error = sqlstate_of(service, "bulk_upsert", documents=records)
    assert error.diag.sqlstate == "22023"
    assert message in (error.diag.message_primary or "")
    assert count_rows(service) == before


def test_oversize_batch_is_refused_as_a_limit(service: psycopg.Connection) -> None:
    records = [{"external_id": f"d{i}", "content": "x"} for i in range(1001)]
    error = sqlstate_of(service, "bulk_upsert", documents=records)
    assert error.diag.sqlstate == "54000"
    assert "a batch of 1001 documents exceeds the limit of 1000" in (error.diag.message_primary or "")
    assert count_rows(service) == (0, 0, 0)


def test_a_failure_late_in_the_batch_writes_nothing(service: psycopg.Connection) -> None:
    # The vector is checked by the vector type itself only while writing: a wrong dimension in the
    # binary array must still roll back the documents written before it.
    records = [doc("a"), doc("b")]
    service.execute("savepoint attempt")
    with pytest.raises(psycopg.Error) as caught:
        service.execute(
            "select * from public.bulk_upsert(%s, %s)", [Json(records), [unit(1), np.ones(10, np.float32)]]
        )
    service.execute("rollback to savepoint attempt")
    assert "document 2 (external_id b): embedding has 10 dimensions" in str(caught.value)
    assert count_rows(service) == (0, 0, 0)


# --- match_documents ---------------------------------------------------------------------------


def test_match_documents_ranks_by_cosine_similarity(service: psycopg.Connection) -> None:
    query = unit(100)
    records = [
        {**doc(f"near{i}"), "embedding": unit(i, near=query, spread=0.1 * (i + 1)).tolist()} for i in range(5)
    ]
    records += [doc(f"far{i}", seed=200 + i) for i in range(20)]
    upsert(service, records)
    rows = call(service, "match_documents", query_embedding=query, match_count=5)
    assert [r["external_id"] for r in rows] == [f"near{i}" for i in range(5)]
    similarities = [r["similarity"] for r in rows]
    assert similarities == sorted(similarities, reverse=True)
    assert similarities[0] == pytest.approx(float(unit(0, near=query, spread=0.1) @ query), abs=1e-5)


def test_match_threshold_drops_dissimilar_rows(service: psycopg.Connection) -> None:
    query = unit(100)
    upsert(
        service, [{**doc("near"), "embedding": unit(1, near=query, spread=0.05).tolist()}, doc("far", seed=5)]
    )
    rows = call(service, "match_documents", query_embedding=query, match_count=10, match_threshold=0.5)
    assert [r["external_id"] for r in rows] == ["near"]


def test_match_documents_filters_by_metadata(service: psycopg.Connection) -> None:
    upsert(
        service, [doc(f"d{i}", seed=i, metadata={"lang": "en" if i % 2 else "de", "n": i}) for i in range(10)]
    )
    rows = call(
        service,
        "match_documents",
        query_embedding=unit(3),
        match_count=10,
        filter={"lang": "en", "n": {"$gte": 5}},
    )
    assert sorted(r["external_id"] for r in rows) == ["d5", "d7", "d9"]


@pytest.mark.parametrize("exact_scan_max_rows", [0, 3, 2**31 - 1])
def test_every_exact_scan_bound_gives_the_exact_answer(
    service: psycopg.Connection, exact_scan_max_rows: int
) -> None:
    # 0 and 3 send the 5 matching rows to the index scan (via the bounded exact scan's overflow), the
    # largest integer to the exact scan; none may overflow an integer or lose a row.
    upsert(service, [doc(f"d{i}", seed=i, metadata={"lang": "en" if i % 2 else "de"}) for i in range(10)])
    rows = call(
        service,
        "match_documents",
        query_embedding=unit(3),
        match_count=10,
        filter={"lang": "en"},
        exact_scan_max_rows=exact_scan_max_rows,
    )
    assert sorted(r["external_id"] for r in rows) == ["d1", "d3", "d5", "d7", "d9"]
    assert rows[0]["external_id"] == "d3"


def test_negative_exact_scan_bound_is_an_error(service: psycopg.Connection) -> None:
    error = sqlstate_of(
        service, "match_documents", query_embedding=unit(1), filter={"a": 1}, exact_scan_max_rows=-1
    )
    assert error.diag.sqlstate == "22023"
    assert "exact_scan_max_rows must be >= 0" in str(error)


@pytest.mark.parametrize(
    ("bad_filter", "message"),
    [
        ({"a": {"$regex": "x"}}, 'unknown operator "$regex" on "a"'),
        ({"$nor": []}, 'unknown logical operator "$nor"'),
        ({"a": {"$in": []}}, '$in on "a" needs a non-empty array'),
        ({"a": {"$gt": [1]}}, '$gt on "a" needs a number or a string, got array'),
        ({"a": {"$exists": "yes"}}, '$exists on "a" needs true or false, got string'),
        ({"$and": {"a": 1}}, "$and needs a non-empty array of filters"),
        ({"a": {"$eq": 1, "b": 2}}, 'the condition on "a" mixes operators and plain keys'),
        ([1, 2], "a filter is a JSON object, got array"),
    ],
)
def test_malformed_filters_are_clear_errors(
    service: psycopg.Connection, bad_filter: Any, message: str
) -> None:
    error = sqlstate_of(service, "match_documents", query_embedding=unit(1), filter=bad_filter)
    assert error.diag.sqlstate == "22023"
    assert message in (error.diag.message_primary or "")


def test_filter_keys_and_values_are_data_never_sql(service: psycopg.Connection) -> None:
    upsert(service, [doc("d", seed=1, metadata={"it's": "a'); drop table public.documents; --"})])
    rows = call(
        service,
        "match_documents",
        query_embedding=unit(1),
        filter={"it's": "a'); drop table public.documents; --"},
    )
    assert [r["external_id"] for r in rows] == ["d"]
    assert count_rows(service)[0] == 1


def test_query_vector_of_another_dimension_is_an_error(
    service: psycopg.Connection,
) -> None:
    error = sqlstate_of(service, "match_documents", query_embedding=np.ones(10, np.float32), filter={"a": 1})
    assert error.diag.sqlstate == "22023"
    assert "query_embedding has 10 dimensions; this store holds 384-dimensional vectors" in str(error)


@pytest.mark.parametrize(("count", "state"), [(0, "22023"), (1001, "54000")])
def test_result_size_is_capped_below_postgrest_limit(
    service: psycopg.Connection, count: int, state: str
) -> None:
    error = sqlstate_of(service, "match_documents", query_embedding=unit(1), match_count=count)
    assert error.diag.sqlstate == state


# --- hybrid_search -----------------------------------------------------------------------------


def test_hybrid_search_fuses_full_text_and_vector_rankings(service: psycopg.Connection) -> None:
    query = unit(100)
    upsert(
        service,
        [
            {**doc("both", "vacuum reclaims storage"), "embedding": unit(1, near=query, spread=0.3).tolist()},
            {
                **doc("vector_only", "unrelated words here"),
                "embedding": unit(2, near=query, spread=0.1).tolist(),
            },
            {
                **doc("text_only", "vacuum reclaims storage occupied by dead tuples"),
                "embedding": unit(3).tolist(),
            },
            *[doc(f"noise{i}", f"noise {i}", seed=10 + i) for i in range(10)],
        ],
    )
    rows = call(service, "hybrid_search", query_text="vacuum storage", query_embedding=query, match_count=3)
    assert rows[0]["external_id"] == "both"
    assert {r["external_id"] for r in rows} == {"both", "vector_only", "text_only"}
    assert rows[0]["full_text_rank"] is not None
    assert rows[0]["semantic_rank"] is not None

    semantic_only = call(
        service,
        "hybrid_search",
        query_text="vacuum storage",
        query_embedding=query,
        match_count=1,
        full_text_weight=0,
    )
    assert semantic_only[0]["external_id"] == "vector_only"
    text_only = call(
        service,
        "hybrid_search",
        query_text="dead tuples",
        query_embedding=query,
        match_count=1,
        semantic_weight=0,
    )
    assert text_only[0]["external_id"] == "text_only"


def test_hybrid_search_matches_titles_in_metadata(service: psycopg.Connection) -> None:
    upsert(
        service,
        [
            doc("titled", "body text", seed=1, metadata={"title": "Write-Ahead Logging"}),
            doc("other", "something else", seed=2),
        ],
    )
    rows = call(
        service,
        "hybrid_search",
        query_text="write-ahead logging",
        query_embedding=unit(2),
        match_count=2,
        semantic_weight=0,
    )
    assert rows[0]["external_id"] == "titled"


def test_hybrid_search_ranks_a_matching_heading_above_a_body_that_repeats_the_words(
    service: psycopg.Connection,
) -> None:
    # Cover density (ts_rank_cd) put "repeats" first: it sums a score per cover of the OR query.
    repeats = (
        "Backups can be taken while the server runs. A hot backup copies files; hot backups need WAL "
        "archiving. Standalone backups keep their WAL. "
    ) * 3
    upsert(
        service,
        [
            doc(
                "heading",
                "How to take a backup that restores on its own.",
                seed=1,
                metadata={"title": "Standalone Hot Backups"},
            ),
            doc("repeats", repeats, seed=2),
        ],
    )
    rows = call(
        service,
        "hybrid_search",
        query_text="Standalone Hot Backups",
        query_embedding=unit(3),
        match_count=2,
        semantic_weight=0,
    )
    assert [r["external_id"] for r in rows] == ["heading", "repeats"]


def test_hybrid_search_rejects_empty_text_and_zero_weights(service: psycopg.Connection) -> None:
    assert (
        sqlstate_of(service, "hybrid_search", query_text=" ", query_embedding=unit(1)).diag.sqlstate
        == "22023"
    )
    error = sqlstate_of(
        service,
        "hybrid_search",
        query_text="x",
        query_embedding=unit(1),
        full_text_weight=0,
        semantic_weight=0,
    )
    assert "must be >= 0 and not both 0" in (error.diag.message_primary or "")


# --- get, delete, list, count, stats -----------------------------------------------------------


def test_get_and_delete_by_external_id_cascade(service: psycopg.Connection) -> None:
    upsert(service, [doc(f"d{i}", seed=i, system={"source_file": "f.json"}) for i in range(3)])
    got = call(service, "get_documents", external_ids=["d1", "missing"])
    assert [(r["external_id"], r["content"]) for r in got] == [("d1", "content of d1")]
    deleted = call(service, "delete_documents", external_ids=["d1", "missing"])
    assert [r["external_id"] for r in deleted] == ["d1"]
    assert count_rows(service) == (2, 2, 2)
    assert call(service, "delete_documents", external_ids=["d1"]) == []


def test_list_documents_pages_by_keyset_and_stays_stable_under_inserts(service: psycopg.Connection) -> None:
    upsert(service, [doc(f"d{i:02}", seed=i) for i in range(25)])
    seen: list[str] = []
    after = 0
    while True:
        page = call(service, "list_documents", page_size=10, after_id=after)
        if not page:
            break
        seen += [r["external_id"] for r in page]
        after = page[-1]["id"]
        if len(seen) == 10:
            # A concurrent writer adds a document while the reader is between pages.
            upsert(service, [doc("late", seed=99)])
    assert seen == [f"d{i:02}" for i in range(25)] + ["late"]


def test_list_documents_can_carry_vectors_and_filter(service: psycopg.Connection) -> None:
    upsert(service, [doc(f"d{i}", seed=i, metadata={"even": i % 2 == 0}) for i in range(6)])
    page = call(service, "list_documents", page_size=100, filter={"even": True}, with_embeddings=True)
    assert [r["external_id"] for r in page] == ["d0", "d2", "d4"]
    assert np.allclose(page[1]["embedding"].to_numpy(), unit(2))


def test_count_and_stats(service: psycopg.Connection) -> None:
    upsert(service, [doc(f"d{i}", seed=i, metadata={"n": i}) for i in range(7)])
    assert service.execute("select public.count_documents(%s)", [Jsonb({"n": {"$lt": 3}})]).fetchone() == (3,)
    stats = service.execute("select public.store_stats()").fetchone()
    assert stats is not None
    assert stats[0]["documents"] == 7
    assert stats[0]["embeddings"] == 7
    assert stats[0]["vector_index"] is True
    assert stats[0]["settings"]["embedding_dimension"] == DIM


# --- Row Level Security through the RPCs --------------------------------------------------------


def seed_two_users_and_shared(conn: psycopg.Connection) -> None:
    act_as(conn, Identity.service())
    upsert(conn, [doc("shared", "shared text", seed=1)])
    act_as(conn, Identity.user(USER_A))
    upsert(conn, [doc("mine", "text of a", seed=2)])
    act_as(conn, Identity.user(USER_B))
    upsert(conn, [doc("mine", "text of b", seed=3)])


def visible(conn: psycopg.Connection) -> list[str]:
    rows = call(conn, "match_documents", query_embedding=unit(1), match_count=10)
    return sorted(f"{r['external_id']}:{r['content']}" for r in rows)


def test_users_see_their_own_and_shared_documents_only(conn: psycopg.Connection) -> None:
    seed_two_users_and_shared(conn)
    act_as(conn, Identity.user(USER_A))
    assert visible(conn) == ["mine:text of a", "shared:shared text"]
    assert [r["content"] for r in call(conn, "get_documents", external_ids=["mine"])] == ["text of a"]
    assert conn.execute("select public.count_documents('{}')").fetchone() == (2,)
    assert len(call(conn, "list_documents")) == 2
    hybrid = call(conn, "hybrid_search", query_text="text", query_embedding=unit(1))
    assert sorted(r["content"] for r in hybrid) == ["shared text", "text of a"]
    act_as(conn, Identity.service())
    assert len(visible(conn)) == 3


def test_users_cannot_change_or_delete_others_or_shared_documents(conn: psycopg.Connection) -> None:
    seed_two_users_and_shared(conn)
    act_as(conn, Identity.user(USER_A))
    assert call(conn, "delete_documents", external_ids=["mine"], owner_id=USER_B) == []
    assert call(conn, "delete_documents", external_ids=["shared"]) == []
    error = sqlstate_of(
        conn, "bulk_upsert", documents=[{**doc("mine", "hijack", seed=4), "owner_id": USER_B}]
    )
    assert error.diag.sqlstate == "42501"  # new row violates row-level security policy
    # Writing "shared" as A creates A's own document; the shared one is untouched.
    assert upsert(conn, [doc("shared", "my copy", seed=4)]) == [("shared", "inserted")]
    act_as(conn, Identity.service())
    contents = sorted(r["content"] for r in call(conn, "get_documents", external_ids=["shared", "mine"]))
    assert contents == ["my copy", "shared text", "text of a", "text of b"]


def test_anon_cannot_call_any_rpc(conn: psycopg.Connection) -> None:
    act_as(conn, Identity.anonymous())
    for fn, params in [
        ("match_documents", {"query_embedding": unit(1)}),
        ("bulk_upsert", {"documents": [doc("x", seed=1)]}),
        ("get_documents", {"external_ids": ["x"]}),
        ("get_embeddings", {"external_ids": ["x"]}),
        ("list_documents", {}),
    ]:
        assert sqlstate_of(conn, fn, **params).diag.sqlstate == "42501", fn


def test_bulk_load_needs_the_table_owner(conn: psycopg.Connection) -> None:
    act_as(conn, Identity.service())
    error = sqlstate_of(conn, "begin_bulk_load", expected_rows=1000)
    assert error.diag.sqlstate == "42501"
    conn.execute("reset role")
    assert conn.execute("select public.begin_bulk_load(1000)").fetchone() == (True,)
    assert conn.execute("select to_regclass('public.embeddings_embedding_hnsw_idx')").fetchone() == (None,)
    assert conn.execute("select public.finish_bulk_load()").fetchone() == (True,)
    assert conn.execute("select public.finish_bulk_load()").fetchone() == (False,)


# --- ingest runs (issue 10) ----------------------------------------------------------------------


def outcome_of(conn: psycopg.Connection, fn: str, **params: Any) -> str:
    """What a caller learns from a call: its SQLSTATE, or "ok"."""
    conn.execute("savepoint probe")
    try:
        call(conn, fn, **params)
    except psycopg.Error as exc:
        conn.execute("rollback to savepoint probe")
        return str(exc.diag.sqlstate)
    conn.execute("release savepoint probe")
    return "ok"


def test_run_ids_are_per_owner_so_no_answer_reveals_another_users_run(conn: psycopg.Connection) -> None:
    act_as(conn, Identity.user(USER_A))
    call(conn, "begin_ingest_run", run_id="a-run", sources=Jsonb({"paths": ["a"]}))
    act_as(conn, Identity.user(USER_B))
    assert [outcome_of(conn, "begin_ingest_run", run_id=run) for run in ("a-run", "never-seen")] == [
        "ok",
        "ok",
    ]
    assert outcome_of(conn, "finish_ingest_run", run_id="other", final_status="completed") == "22023"
    assert outcome_of(conn, "rollback_ingest_run", run_id="other") == "22023"
    act_as(conn, Identity.user(USER_A))
    assert [(r["run_id"], r["sources"]) for r in call(conn, "list_ingest_runs")] == [
        ("a-run", {"paths": ["a"]})
    ]


def test_a_batch_belongs_to_one_ingest_run(service: psycopg.Connection) -> None:
    mixed = [
        doc("x", seed=1, system={"ingest_run_id": "r1"}),
        doc("y", seed=2, system={"ingest_run_id": "r2"}),
    ]
    untagged = [doc("x", seed=1, system={"ingest_run_id": "r1"}), doc("y", seed=2)]
    for batch in (mixed, untagged):
        error = sqlstate_of(service, "bulk_upsert", documents=batch)
        assert error.diag.sqlstate == "22023"
        assert str(error.diag.message_primary).startswith("a batch belongs to one ingest run")
    assert count_rows(service) == (0, 0, 0)
