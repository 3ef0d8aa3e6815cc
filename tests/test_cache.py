"""The offline pieces on their own: breaker, keys, invalidation, the results cache, the outbox, filters,
and the store over PostgREST with transport faults injected by respx.

No sleeping anywhere: the breaker and the cache take injectable clocks. The filter semantics are checked
against the server's own compiled SQL (read-only queries on the session's database).
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supa_vectors import (
    AsyncVectorStore,
    AuthError,
    BackendError,
    BackendUnavailableError,
    CircuitBreaker,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    PostgresTransport,
    QueryTimeoutError,
    VectorStore,
)
from supa_vectors.cache import is_outage
from supa_vectors.cache.filtering import compile_predicate
from supa_vectors.cache.keys import Scope, store_label
from supa_vectors.cache.outbox import Outbox, QueuedWrite, next_batch
from supa_vectors.cache.results import CachedAnswer, Change, ResultsCache, still_valid
from supa_vectors.filters import validate_filter
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgrest import AsyncPostgrestTransport, PostgrestTransport
from tests.conftest import DIM, MODEL, FakeEmbedder

pytestmark = pytest.mark.filterwarnings("ignore:The '(timeout|verify)' parameter is deprecated")

FIXTURES = Path(__file__).parent / "fixtures" / "postgrest"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------------------------------
# circuit breaker


def test_breaker_opens_after_consecutive_outages_and_probes_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=30, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record(BackendUnavailableError("down"))
    breaker.record(AuthError("an answer, even an error, proves the backend is up"))
    assert breaker.failures == 0
    for _ in range(3):
        breaker.record(BackendUnavailableError("down"))
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_in() == 30
    assert "circuit breaker open" in str(breaker.refusal())
    assert is_outage(breaker.refusal())

    clock.advance(30)
    assert breaker.state == "half-open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.record_failure()  # the probe failed: open for another full period
    assert breaker.state == "open"
    assert breaker.times_opened == 2
    clock.advance(29)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()
    breaker.record_success()
    assert (breaker.state, breaker.failures) == ("closed", 0)


def test_a_probe_that_never_reports_is_forgotten() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10, clock=clock)
    breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()  # its task is then cancelled: no success, no failure
    clock.advance(5)
    assert not breaker.allow()
    clock.advance(5)
    assert breaker.allow()


@pytest.mark.parametrize(
    "options",
    [{"failure_threshold": 0}, {"failure_threshold": True}, {"reset_timeout": -1}, {"reset_timeout": "1"}],
)
def test_breaker_settings_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker(**options)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (BackendUnavailableError("refused"), True),
        (QueryTimeoutError("57014", code="57014"), True),
        (BackendError("HTTP 502 from a gateway", code="502"), True),
        (BackendError("HTTP 200 with an HTML body", code="200"), True),
        (BackendError("HTTP 540 project paused", code="540"), True),
        (BackendError("internal error", code="XX000"), False),
        (BackendError("reply breaks the contract"), False),
        (AuthError("invalid API key", code="401"), False),
        (NotFoundError("no such RPC", code="404"), False),
        (InvalidInputError("bad filter"), False),
    ],
)
def test_which_failures_are_outages(error: Exception, outage: bool) -> None:
    assert is_outage(error) is outage


# --------------------------------------------------------------------------------------------------
# keys


def test_store_labels_carry_no_secret() -> None:
    url = PostgresTransport("postgresql://app:s3cret@db.example.com:6543/postgres?sslmode=require")
    dsn = PostgresTransport("host=db.example.com port=5432 dbname=app password=s3cret user=me")
    assert store_label(url) == "postgres:postgresql://db.example.com:6543/postgres"
    assert store_label(dsn) == "postgres:db.example.com:5432/app"
    url.close()
    dsn.close()
    with PostgrestTransport(url="https://abc.supabase.co", key="sb_secret_key") as transport:
        assert store_label(transport) == "postgrest:https://abc.supabase.co"
        assert "sb_secret_key" not in transport.identity_fingerprint

    class Named:
        cache_namespace = "tenant-7"

    assert store_label(Named()) == "custom:tenant-7"


def test_keys_cover_everything_that_changes_an_answer() -> None:
    scope = Scope("store", Identity.user("a").fingerprint(), MODEL, "1")
    base = scope.search_key("search", "cats", 10, None, {"a": 1, "b": 2})
    assert base == scope.search_key("search", "cats", 10, None, {"b": 2, "a": 1})  # key order is no change
    others = {
        scope.search_key("search", "dogs", 10, None, {"a": 1, "b": 2}),
        scope.search_key("hybrid", "cats", 10, None, {"a": 1, "b": 2}),
        scope.search_key("search", "cats", 5, None, {"a": 1, "b": 2}),
        scope.search_key("search", "cats", 10, 0.5, {"a": 1, "b": 2}),
        scope.search_key("search", "cats", 10, None, {"a": 1}),
        scope.search_key("search", "cats", 10, None, {"a": 1, "b": 2}, {"rrf_k": 60}),
        Scope("store", Identity.user("b").fingerprint(), MODEL, "1").search_key(
            "search", "cats", 10, None, {"a": 1, "b": 2}
        ),
        Scope("other", scope.identity, MODEL, "1").search_key("search", "cats", 10, None, {"a": 1, "b": 2}),
        Scope("store", scope.identity, "other-model", "1").search_key(
            "search", "cats", 10, None, {"a": 1, "b": 2}
        ),
        Scope("store", scope.identity, MODEL, "2").search_key("search", "cats", 10, None, {"a": 1, "b": 2}),
        scope.search_key("search", np.ones(DIM, dtype=np.float32), 10, None, {"a": 1, "b": 2}),
    }
    assert base not in others
    assert len(others) == 11
    assert scope.embedding_key("cats") != Scope("store", "other", MODEL, "1").embedding_key("cats")


# --------------------------------------------------------------------------------------------------
# invalidation


def unit(*hot: int) -> np.ndarray:
    vector = np.full(DIM, 0.01, dtype=np.float32)
    for index in hot:
        vector[index] = 1.0
    return vector / np.linalg.norm(vector)


def answer(ids: list[str], similarities: list[float], **overrides: Any) -> CachedAnswer:
    rows = [
        {"id": i, "content": i, "metadata": {}, "similarity": s}
        for i, s in zip(ids, similarities, strict=True)
    ]
    values: dict[str, Any] = {
        "mode": "search",
        "rows": rows,
        "created_at": 0.0,
        "generation": 0,
        "k": len(ids),
        "threshold": None,
        "filter": {},
        "query_vector": unit(1),
    }
    values.update(overrides)
    return CachedAnswer(**values)


def test_only_writes_that_could_change_an_answer_invalidate_it() -> None:
    cached = answer(["a", "b"], [0.9, 0.8])
    close, far = unit(1), unit(200)
    assert still_valid(cached, [])
    assert not still_valid(cached, None)  # unknown writes
    assert not still_valid(cached, [Change("a", deleted=True)])  # a listed document went
    assert still_valid(cached, [Change("zz", deleted=True)])  # an unlisted one cannot matter
    assert not still_valid(cached, [Change("b", vector=far, metadata={})])  # listed: content changed
    assert not still_valid(cached, [Change("new", vector=close, metadata={})])  # enters the top k
    assert still_valid(cached, [Change("new", vector=far, metadata={})])  # stays below the k-th
    assert still_valid(cached, [Change("new", vector=None, metadata={})])  # same content, no filter
    assert not still_valid(cached, [Change("new", vector=far, metadata=None)])  # unknown metadata

    fewer = answer(["a"], [0.9], k=5)  # fewer rows than k: anything above the threshold enters
    assert not still_valid(fewer, [Change("new", vector=far, metadata={})])
    high = answer(["a"], [0.9], k=5, threshold=0.5)
    assert still_valid(high, [Change("new", vector=far, metadata={})])

    filtered = answer(["a", "b"], [0.9, 0.8], filter={"lang": "en"})
    assert still_valid(filtered, [Change("new", vector=close, metadata={"lang": "fr"})])
    assert not still_valid(filtered, [Change("new", vector=None, metadata={"lang": "en"})])

    hybrid = answer(["a", "b"], [0.9, 0.8], mode="hybrid")
    assert not still_valid(hybrid, [Change("new", vector=far, metadata={})])  # words rank too
    assert still_valid(hybrid, [Change("zz", deleted=True)])


# --------------------------------------------------------------------------------------------------
# results cache: bounded, shared, and never a crash


def test_the_cache_stays_within_its_size_limit(tmp_path: Path) -> None:
    limit = 2 * 1024 * 1024
    cache = ResultsCache(tmp_path, size_limit=limit)
    rows = [{"id": f"d{i}", "content": "x" * 2000, "metadata": {}, "similarity": 0.5} for i in range(5)]
    for i in range(600):  # ~6 MB written
        cache.put_answer(f"key-{i}", answer([r["id"] for r in rows], [0.5] * 5, rows=rows))
    cache.flush()  # answers are written behind
    assert cache.volume() <= limit * 1.1
    assert cache.get_answer("key-0") is None  # the oldest went first
    assert cache.get_answer("key-599") is not None
    cache.record_writes("store", [Change("x", deleted=True)])
    for i in range(600, 900):
        cache.put_answer(f"key-{i}", answer(["a"], [0.5], rows=rows[:1]))
    cache.flush()
    assert cache.generation("store") == 1  # generation counters are never evicted
    assert cache.errors == 0
    cache.close()


def test_a_corrupted_cache_database_is_reported_and_bypassed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clean_url: str
) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cache.db").write_bytes(b"this is not a SQLite database" * 100)
    with caplog.at_level(logging.WARNING, logger="supa_vectors.cache"):
        cache = ResultsCache(tmp_path, size_limit=2**20)
    assert not cache.available
    assert cache.errors == 1
    assert "unusable" in caplog.text
    assert cache.get_answer("k") is None  # a miss, not an exception

    from supa_vectors.transport.postgres import PostgresTransport

    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache_dir=tmp_path) as store:
        store.add("cats purr")
        assert [r.source for r in store.search("cats", k=1)] == ["backend"]
        assert store.cache_errors >= 1


def test_a_garbled_entry_is_dropped_and_counted(tmp_path: Path) -> None:
    import diskcache

    cache = ResultsCache(tmp_path, size_limit=2**20)
    with diskcache.Cache(str(tmp_path / "results")) as raw:
        raw.set("answer", b"SVC1\xff\xff\xff\x7fnot json")
        raw.set("vector", "a string, not our bytes")
    assert cache.get_answer("answer") is None
    assert cache.get_vector("vector") is None
    assert cache.errors == 2
    with diskcache.Cache(str(tmp_path / "results")) as raw:
        assert "answer" not in raw
    cache.close()


def test_a_cache_directory_that_is_a_file_is_bypassed(tmp_path: Path, clean_url: str) -> None:
    from supa_vectors.transport.postgres import PostgresTransport

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache_dir=blocker) as store:
        store.add("cats purr", bulk=False)
        assert [r.id for r in store.search("cats", k=1)]
        assert store.cache_errors >= 1


# --------------------------------------------------------------------------------------------------
# outbox


def upsert(doc_id: str, content: str, **metadata: Any) -> QueuedWrite:
    return QueuedWrite(
        op="upsert", id=doc_id, content=content, content_hash=f"h-{content}", metadata=metadata
    )


def test_the_outbox_keeps_order_and_skips_repeats(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "box.sqlite3")
    assert not box.has_pending()
    assert not box.path.exists()  # nothing is created until a write waits
    writes = [upsert("a", "one"), upsert("b", "two"), QueuedWrite(op="delete", id="c")]
    assert box.enqueue(writes) == 3
    assert box.enqueue(writes) == 0  # the same writes again: nothing new
    assert box.enqueue([upsert("a", "one", lang="en")]) == 1  # new metadata is a new write
    assert box.enqueue([upsert("a", "one")]) == 1  # back to the first version: after the change
    assert box.enqueue([QueuedWrite(op="delete", id="c")]) == 0

    again = Outbox(tmp_path / "box.sqlite3")  # another process: everything is on disk
    assert [(w.op, w.id, w.metadata) for w in again.head()] == [
        ("upsert", "a", {}),
        ("upsert", "b", {}),
        ("delete", "c", None),
        ("upsert", "a", {"lang": "en"}),
        ("upsert", "a", {}),
    ]
    pending = again.pending()
    assert [p.seq for p in pending] == sorted(p.seq for p in pending)
    assert {p.status for p in pending} == {"queued"}
    box.close()
    again.close()


def test_batches_stop_at_a_change_of_kind_or_a_repeated_id() -> None:
    entries = [upsert("a", "1"), upsert("b", "2"), upsert("a", "3"), QueuedWrite(op="delete", id="c")]
    assert [e.id for e in next_batch(entries)] == ["a", "b"]
    assert [e.id for e in next_batch(entries[2:])] == ["a"]
    assert [e.id for e in next_batch(entries[3:])] == ["c"]
    assert len(next_batch([upsert(str(i), str(i)) for i in range(1200)])) == 500


def test_rejected_writes_stay_visible_until_discarded(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "box.sqlite3")
    box.enqueue([upsert("a", "one"), upsert("b", "two")])
    first = box.head()[0]
    refused = box.reject(first, "document 0: content has 2000000 bytes; the limit is 1000000")
    assert refused.status == "rejected"
    assert [(p.id, p.status) for p in box.pending()] == [("b", "queued"), ("a", "rejected")]
    assert box.count() == 1
    assert box.discard_rejected() == 1
    assert [p.id for p in box.pending()] == ["b"]
    box.close()


def test_one_flusher_at_a_time(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "box.sqlite3")
    box.enqueue([upsert("a", "one")])
    with open(box.path.with_name(box.path.name + ".lock"), "a+b") as other_process:
        fcntl.flock(other_process.fileno(), fcntl.LOCK_EX)
        with box.flushing(blocking=False) as acquired:
            assert not acquired
        fcntl.flock(other_process.fileno(), fcntl.LOCK_UN)
    with box.flushing(blocking=False) as acquired:
        assert acquired
        with box.flushing(blocking=False) as nested:
            assert not nested  # another thread of ours would not get it either
    box.close()


# --------------------------------------------------------------------------------------------------
# filters: Python evaluation == the server's compiled SQL

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.sampled_from(["a", "b", "B", "é"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["x", "y"]), inner, max_size=2)
    ),
    max_leaves=5,
)
fields = st.sampled_from(["f", "g", "tags"])
metadata_values = st.dictionaries(fields, values, max_size=3)


def field_conditions() -> st.SearchStrategy[dict[str, Any]]:
    ops = st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne", "$contains"]), values),
        st.tuples(
            st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
            st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b"])),
        ),
        st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(scalars, min_size=1, max_size=3)),
        st.tuples(st.just("$exists"), st.booleans()),
    )
    return st.builds(lambda f, op: {f: {op[0]: op[1]}}, fields, ops) | st.builds(
        lambda f, v: {f: v}, fields, values
    )


filters = st.recursive(
    field_conditions(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"$and": xs}, st.lists(inner, min_size=1, max_size=2)),
        st.builds(lambda xs: {"$or": xs}, st.lists(inner, min_size=1, max_size=2)),
        st.builds(lambda x: {"$not": x}, inner),
    ),
    max_leaves=4,
)


@pytest.fixture(scope="module")
def sql(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filter=filters, documents=st.lists(metadata_values, min_size=1, max_size=6))
def test_filters_select_what_the_server_selects(
    sql: psycopg.Connection, filter: dict[str, Any], documents: list[dict[str, Any]]
) -> None:
    checked = validate_filter(filter)
    compiled = sql.execute("select supa_vectors_internal.compile_filter(%s::jsonb)", (json.dumps(checked),))
    (expression,) = compiled.fetchone()  # type: ignore[misc]
    rows = sql.execute(
        f"select {expression} from jsonb_array_elements(%s::jsonb) as d(metadata)",
        (json.dumps(documents),),
    ).fetchall()
    predicate = compile_predicate(checked)
    assert [bool(r[0]) for r in rows] == [predicate(m) for m in documents], (checked, documents)


# --------------------------------------------------------------------------------------------------
# the store over PostgREST, with real transport faults injected by respx

URL = "http://supa.test"
SETTINGS = {
    "embedding_model": MODEL,
    "embedding_dimension": DIM,
    "schema_version": 1,
    "max_batch_size": 1000,
    "max_content_bytes": 1000000,
    "max_result_rows": 1000,
}
ROWS = [
    {
        "id": 1,
        "external_id": "cat",
        "content": "cats purr",
        "metadata": {"kind": "animal"},
        "similarity": 0.9,
    },
    {
        "id": 2,
        "external_id": "dog",
        "content": "dogs bark",
        "metadata": {"kind": "animal"},
        "similarity": 0.7,
    },
]


def recorded(name: str) -> Callable[[httpx.Request], httpx.Response]:
    fx = json.loads((FIXTURES / f"{name}.json").read_text())
    return lambda request: httpx.Response(fx["status"], headers=fx["headers"], content=fx["body"].encode())


FAULTS: dict[str, Any] = {
    "connection refused": httpx.ConnectError("[Errno 111] Connection refused"),
    "connect timeout": httpx.ConnectTimeout("timed out"),
    "read timeout": httpx.ReadTimeout("timed out"),
    "502": recorded("proxy_502_html"),
    "503": recorded("proxy_503_text"),
    "504": recorded("proxy_504_html"),
    "PostgREST lost the database": recorded("PGRST000_database_connection"),
    "200 with an HTML body": lambda request: httpx.Response(200, text="<html>captive portal</html>"),
}


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=f"{URL}/rest/v1", assert_all_called=False) as mock:
        mock.post("/rpc/store_settings").mock(return_value=httpx.Response(200, json=SETTINGS))
        yield mock


def postgrest_store(tmp_path: Path, breaker: CircuitBreaker | None = None) -> VectorStore:
    transport = PostgrestTransport(url=URL, key="service-key", max_attempts=1, sleep=lambda s: None)
    return VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path, breaker=breaker)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_postgrest_faults_fall_back_to_the_cache_and_queue_writes(
    router: respx.MockRouter, tmp_path: Path, fault: str
) -> None:
    search = router.post("/rpc/match_documents").mock(return_value=httpx.Response(200, json=ROWS))
    store = postgrest_store(tmp_path, CircuitBreaker(failure_threshold=100))
    fresh = store.search("cats", k=2)
    assert [(r.id, r.source, r.stale) for r in fresh] == [
        ("cat", "backend", False),
        ("dog", "backend", False),
    ]

    search.mock(side_effect=FAULTS[fault])
    router.post("/rpc/get_documents").mock(side_effect=FAULTS[fault])
    stale = store.search("cats", k=2)
    assert [(r.id, r.source, r.stale) for r in stale] == [("cat", "cache", True), ("dog", "cache", True)]
    assert stale[0].similarity == 0.9
    with pytest.raises(BackendError):
        store.search("never asked", k=2)  # no cached answer, no mirror: the error itself
    assert [r.status for r in store.add({"id": "bird", "content": "birds sing"})] == ["queued"]
    assert [(p.op, p.id) for p in store.pending()] == [("upsert", "bird")]
    store.close()


def test_a_reply_that_breaks_the_contract_is_raised_not_masked(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    search = router.post("/rpc/match_documents").mock(return_value=httpx.Response(200, json=ROWS))
    store = postgrest_store(tmp_path)
    store.search("cats", k=2)
    search.mock(return_value=httpx.Response(200, json={"rows": "not a list"}))
    with pytest.raises(BackendError, match="not a list of rows"):
        store.search("cats", k=2)
    search.mock(return_value=httpx.Response(401, json={"message": "Invalid API key"}))
    with pytest.raises(AuthError):
        store.search("cats", k=2)
    assert store.breaker.state == "closed"
    store.close()


def test_the_breaker_stops_calling_a_dead_postgrest_and_probes_later(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    clock = FakeClock()
    search = router.post("/rpc/match_documents").mock(return_value=httpx.Response(200, json=ROWS))
    store = postgrest_store(tmp_path, CircuitBreaker(failure_threshold=2, reset_timeout=30, clock=clock))
    store.search("cats", k=2)
    search.mock(side_effect=httpx.ConnectTimeout("timed out"))
    for _ in range(2):
        assert store.search("cats", k=2)[0].source == "cache"
    assert store.breaker.state == "open"
    calls = search.call_count
    for _ in range(5):
        assert store.search("cats", k=2)[0].source == "cache"  # fast: not even tried
    assert search.call_count == calls
    clock.advance(30)
    search.mock(return_value=httpx.Response(200, json=ROWS[:1]))
    assert [(r.id, r.source) for r in store.search("cats", k=2)] == [("cat", "backend")]
    assert search.call_count == calls + 1
    assert store.breaker.state == "closed"
    store.close()


def test_queued_writes_replay_through_postgrest_once_it_answers(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    get_docs = router.post("/rpc/get_documents").mock(side_effect=httpx.ConnectError("refused"))
    delete = router.post("/rpc/delete_documents").mock(side_effect=httpx.ConnectError("refused"))
    # Queued writes carry their vectors, so replaying them skips get_documents: bulk_upsert must be down too.
    upserts = router.post("/rpc/bulk_upsert").mock(side_effect=httpx.ConnectError("refused"))
    store = postgrest_store(tmp_path, CircuitBreaker(failure_threshold=100))
    assert store.add([{"id": "a", "content": "alpha"}, {"id": "b", "content": "beta"}])[0].status == "queued"
    assert store.delete("old").queued == 1
    assert [(w.op, w.id) for w in store.pending()] == [("upsert", "a"), ("upsert", "b"), ("delete", "old")]
    refused = upserts.call_count

    get_docs.mock(return_value=httpx.Response(200, json=[]))
    delete.mock(return_value=httpx.Response(200, json=[{"id": 9, "external_id": "old"}]))
    upserts.mock(
        side_effect=lambda request: httpx.Response(
            200,
            json=[
                {"ordinal": i + 1, "external_id": d["external_id"], "id": i, "status": "inserted"}
                for i, d in enumerate(json.loads(request.content)["documents"])
            ],
        )
    )
    result = store.flush()
    assert (result.upserted, result.deleted, result.remaining) == (2, 1, 0)
    assert upserts.call_count == refused + 1
    sent = json.loads(upserts.calls[-1].request.content)["documents"]
    assert [d["external_id"] for d in sent] == ["a", "b"]
    assert all(len(d["embedding"]) == DIM for d in sent)  # embedded when queued, not again at replay
    assert store.pending() == []
    store.close()


async def test_the_async_store_falls_back_over_postgrest_too(
    router: respx.MockRouter, tmp_path: Path
) -> None:
    search = router.post("/rpc/match_documents").mock(return_value=httpx.Response(200, json=ROWS))

    async def no_sleep(seconds: float) -> None:
        return None

    transport = AsyncPostgrestTransport(url=URL, key="service-key", max_attempts=1, sleep=no_sleep)
    async with AsyncVectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path) as store:
        await store.search("cats", k=2)
        search.mock(side_effect=recorded("proxy_503_text"))
        assert {(r.source, r.stale) for r in await store.search("cats", k=2)} == {("cache", True)}
        router.post("/rpc/get_documents").mock(side_effect=httpx.ConnectError("refused"))
        assert (await store.add("offline note"))[0].status == "queued"


def test_an_unwritable_outbox_fails_loudly(router: respx.MockRouter, tmp_path: Path) -> None:
    router.post("/rpc/get_documents").mock(side_effect=httpx.ConnectError("refused"))
    (tmp_path / "outbox").write_text("a file where the outbox directory should be")
    store = postgrest_store(tmp_path)
    with pytest.raises(BackendUnavailableError, match="outbox"):
        store.add("cannot be kept")
    store.close()
