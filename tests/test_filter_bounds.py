"""Bounds on a whole metadata filter (issue 10, part 3): bytes, JSON depth and values, checked first.

A filter used to be limited only part by part, so ``{"$or": [{"k": {"$in": [0..999]}} x 1000]}``
(4.9 MB) compiled to 1M clauses and 37 MB of SQL that Postgres parsed and planned past the statement
timeout, and a filter nested deeper than Python's recursion limit broke the client check with
RecursionError. The server (``check_filter_bounds`` in ``*_filter_bounds.sql``) and the SDK
(``supa_vectors.filters``) now measure the whole filter first, with the store's ``max_filter_*``
settings, and refuse what exceeds them with the same 22023 / FilterError message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supa_vectors import AsyncVectorStore, FilterError, VectorStore, validate_filter
from supa_vectors._core.settings import StoreSettings
from supa_vectors.filters import DEFAULT_FILTER_LIMITS, FilterLimits
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
from tests.conftest import USER_A, FakeEmbedder, act_as
from tests.test_offline import FaultyTransport

LIMITS = DEFAULT_FILTER_LIMITS
VECTOR = "[" + ",".join(str(x) for x in FakeEmbedder().vector("record")) + "]"
# A field name that jsonb prints six bytes per character ("\u0001"): the longest SQL per $in value.
LONG_FIELD = "\x01" * 256

# Each RPC that takes a filter, called as PostgREST calls it, with the filter as JSON text (json.dumps
# of a filter 100,000 levels deep would raise RecursionError in the test itself).
RPC_SQL = {
    "count_documents": "select public.count_documents(filter => %(filter)s::jsonb)",
    "list_documents": "select count(*) from public.list_documents("
    "page_size => 1000, filter => %(filter)s::jsonb)",
    "match_documents": "select count(*) from public.match_documents("
    "query_embedding => %(vector)s::extensions.vector, match_count => 10, filter => %(filter)s::jsonb)",
    "hybrid_search": "select count(*) from public.hybrid_search(query_text => 'record', "
    "query_embedding => %(vector)s::extensions.vector, match_count => 10, filter => %(filter)s::jsonb)",
}


def run_rpc(conn: psycopg.Connection, rpc: str, filter_text: str) -> psycopg.Error | None:
    """Call ``rpc`` in a savepoint; the error it raised, or None."""
    conn.execute("savepoint attempt")
    try:
        conn.execute(RPC_SQL[rpc], {"filter": filter_text, "vector": VECTOR}).fetchall()
    except psycopg.Error as exc:
        conn.execute("rollback to savepoint attempt")
        return exc
    conn.execute("release savepoint attempt")
    return None


def as_user(conn: psycopg.Connection) -> psycopg.Connection:
    act_as(conn, Identity.user(USER_A))
    return conn


def message(error: psycopg.Error | None) -> str:
    assert error is not None, "the filter was accepted"
    assert error.sqlstate == "22023", (error.sqlstate, str(error))
    return str(error.diag.message_primary)


# --------------------------------------------------------------------------------------------------
# filters at and just over each bound (text built by hand where json.dumps would recurse)


def with_bytes(total: int) -> dict[str, Any]:
    """{"s": "xx..."}: jsonb prints it as {"s": "<n x>"}, 9 bytes plus the string."""
    return {"s": "x" * (total - 9)}


def with_depth(levels: int) -> dict[str, Any]:
    """$eq on an array nested so that its innermost value sits ``levels`` below the filter."""
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return {"k": value}


def with_values(count: int) -> dict[str, Any]:
    """$eq on an array: the filter, the array and its elements are ``count`` values."""
    return {"k": [0] * (count - 2)}


def deep_not_text(levels: int) -> str:
    return '{"$not": ' * levels + '{"k": 1}' + "}" * levels


def deep_not(levels: int) -> dict[str, Any]:
    filter: dict[str, Any] = {"k": 1}
    for _ in range(levels):
        filter = {"$not": filter}
    return filter


def deep_array(levels: int) -> dict[str, Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return {"k": value}


def or_of_in_lists() -> dict[str, Any]:
    """The issue's filter: 4.9 MB, 1M clauses once compiled."""
    return {"$or": [{"k": {"$in": list(range(1000))}} for _ in range(1000)]}


def worst_allowed() -> dict[str, Any]:
    """The filter within the bounds whose compiled SQL is largest (9 MB) and slowest to plan: $in lists
    of the longest escaped field name, max_values values in all (docs/decisions/0011)."""
    lists, left = [], LIMITS.max_values - 2  # the filter and its $or array
    while left > 3:
        n = min(1000, left - 3)  # each list: {field: {"$in": [...]}} is 3 values plus its elements
        lists.append({LONG_FIELD: {"$in": list(range(n))}})
        left -= n + 3
    return {"$or": lists}


BOUNDS = {
    "bytes": (with_bytes, LIMITS.max_bytes, f"the filter has {LIMITS.max_bytes + 1} bytes of JSON"),
    "depth": (with_depth, LIMITS.max_json_depth, f"nests deeper than {LIMITS.max_json_depth} levels"),
    "values": (with_values, LIMITS.max_values, f"the filter has {LIMITS.max_values + 1} JSON values"),
}


def test_the_limits_are_store_settings_the_sdk_reads(conn: psycopg.Connection) -> None:
    row = conn.execute("select public.store_settings()").fetchone()
    assert row is not None
    seeded = {key: row[0][key] for key in row[0] if key.startswith("max_filter_")}
    assert seeded == {"max_filter_bytes": 262_144, "max_filter_json_depth": 64, "max_filter_values": 5000}
    assert FilterLimits.from_settings(row[0]) == DEFAULT_FILTER_LIMITS
    assert StoreSettings.from_json(row[0]).filter_limits == DEFAULT_FILTER_LIMITS
    # A store migrated before the limits existed reports none: the SDK falls back to the same numbers.
    assert StoreSettings.from_json({"embedding_model": "m", "embedding_dimension": 3}).filter_limits == LIMITS
    assert worst_allowed() == validate_filter(worst_allowed())  # the worst filter is allowed


@pytest.mark.parametrize("rpc", sorted(RPC_SQL))
@pytest.mark.parametrize("bound", sorted(BOUNDS))
def test_a_filter_over_a_bound_is_refused_by_every_rpc_and_the_client_alike(
    conn: psycopg.Connection, bound: str, rpc: str
) -> None:
    make, limit, expected = BOUNDS[bound]
    as_user(conn)
    at_limit, over = make(limit), make(limit + 1)
    assert run_rpc(conn, rpc, json.dumps(at_limit)) is None
    assert validate_filter(at_limit) == at_limit
    server = message(run_rpc(conn, rpc, json.dumps(over)))
    assert expected in server
    assert f"the limit is {limit}" in server
    with pytest.raises(FilterError) as client:
        validate_filter(over)
    assert str(client.value) == server


@pytest.mark.parametrize("rpc", sorted(RPC_SQL))
def test_huge_and_deep_filters_get_22023_not_a_timeout_or_54001(conn: psycopg.Connection, rpc: str) -> None:
    as_user(conn)
    conn.execute("set local statement_timeout = '8s'")
    assert "the filter has 4908009 bytes of JSON" in message(run_rpc(conn, rpc, json.dumps(or_of_in_lists())))
    # As deep as Postgres' JSON parser reads at the default max_stack_depth (it refuses ~14,500
    # levels and more itself, with 54001, before any function runs).
    assert "nests deeper than 64 levels" in message(run_rpc(conn, rpc, deep_not_text(10_000)))
    assert "nests deeper than 64 levels" in message(
        run_rpc(conn, rpc, '{"k": ' + "[" * 1000 + "]" * 1000 + "}")
    )


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        (or_of_in_lists(), "the filter has 4908009 bytes of JSON; the limit is 262144"),
        (deep_not(100_000), "the filter has 1000008 bytes of JSON; the limit is 262144"),
        (deep_array(100_000), "the filter nests deeper than 64 levels of JSON; the limit is 64"),
        (deep_not(1000), "the filter nests deeper than 64 levels of JSON; the limit is 64"),
    ],
    ids=["4.9MB-or-of-in", "100k-deep-not", "100k-deep-array", "1000-deep-not"],
)
def test_the_client_refuses_huge_and_deep_filters_with_filter_error(filter: Any, expected: str) -> None:
    with pytest.raises(FilterError) as caught:
        validate_filter(filter)
    assert str(caught.value) == f"invalid filter: {expected}"


# --------------------------------------------------------------------------------------------------
# through the stores: refused before any call that would carry the filter


# Just over each bound, and deeper than Python's recursion limit (the 4.9 MB filter is in the test above).
OVER = [BOUNDS[b][0](BOUNDS[b][1] + 1) for b in sorted(BOUNDS)] + [deep_not(20_000)]


def test_the_store_refuses_over_bound_filters_before_any_call_that_carries_them(clean_url: str) -> None:
    transport = FaultyTransport(PostgresTransport(clean_url))  # never down: records calls
    with VectorStore(transport, embedder=FakeEmbedder(), cache="off") as store:
        with pytest.raises(FilterError):
            store.count(OVER[0])
        assert transport.calls == ["store_settings"]  # a new store reads the limits first, once
        for filter in OVER:
            with pytest.raises(FilterError):
                store.search("record", filter=filter)
            with pytest.raises(FilterError):
                store.hybrid_search("record", filter=filter)
            with pytest.raises(FilterError):
                store.count(filter)
            with pytest.raises(FilterError):
                store.iter_documents(filter=filter)
        assert transport.calls == ["store_settings"]


async def test_the_async_store_refuses_them_the_same_way(clean_url: str) -> None:
    async with AsyncVectorStore(
        AsyncPostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off"
    ) as store:
        # Before the store knows its settings, iter_documents (a plain method) checks the grammar now
        # and the bounds before the first page.
        pages = store.iter_documents(filter=OVER[0])
        with pytest.raises(FilterError):
            await anext(aiter(pages))
        for filter in OVER:
            with pytest.raises(FilterError):
                await store.search("record", filter=filter)
            with pytest.raises(FilterError):
                await store.hybrid_search("record", filter=filter)
            with pytest.raises(FilterError):
                await store.count(filter)
            with pytest.raises(FilterError):
                store.iter_documents(filter=filter)


@pytest.fixture
def lowered_limits(clean_url: str) -> Iterator[FilterLimits]:
    """The store's limits lowered (and restored): the SDK must use the store's numbers, not its own."""
    lowered = FilterLimits(max_bytes=300, max_json_depth=5, max_values=20)
    with psycopg.connect(clean_url, autocommit=True) as owner:
        set_limits(owner, lowered)
        try:
            yield lowered
        finally:
            set_limits(owner, DEFAULT_FILTER_LIMITS)


def set_limits(conn: psycopg.Connection, limits: FilterLimits) -> None:
    for key, value in (
        ("max_filter_bytes", limits.max_bytes),
        ("max_filter_json_depth", limits.max_json_depth),
        ("max_filter_values", limits.max_values),
    ):
        conn.execute("update public.metadata_global set value = %s::jsonb where key = %s", (str(value), key))


def test_the_client_check_uses_the_store_limits(clean_url: str, lowered_limits: FilterLimits) -> None:
    transport = FaultyTransport(PostgresTransport(clean_url))  # never down: records calls
    with VectorStore(transport, embedder=FakeEmbedder(), cache="off") as store:
        assert store.settings().filter_limits == lowered_limits
        with pytest.raises(FilterError, match="the filter has 21 JSON values; the limit is 20"):
            store.count(with_values(21))
        assert store.count(with_values(20)) == 0
        assert transport.calls == ["store_settings", "count_documents"]


def test_offline_the_mirror_takes_exactly_the_filters_the_server_takes(
    clean_url: str, tmp_path: Path
) -> None:
    transport = FaultyTransport(PostgresTransport(clean_url))
    with VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path) as store:
        at_limit = with_values(LIMITS.max_values)
        store.add(
            [{"id": "big", "content": "record", "metadata": at_limit}, {"id": "small", "content": "record"}]
        )
        store.sync_mirror()
        transport.down = True
        answer = store.search("record", filter=at_limit)
        assert [(r.id, r.stale) for r in answer] == [("big", True)]
        calls = len(transport.calls)
        for filter in OVER:
            with pytest.raises(FilterError):
                store.search("record", filter=filter)
        assert transport.calls[calls:] == []


# --------------------------------------------------------------------------------------------------
# property: with small limits, the client and the server refuse exactly the same filters, in the
# same words (sizes depend on how jsonb prints numbers and escapes strings)

SMALL = FilterLimits(max_bytes=160, max_json_depth=4, max_values=12)
keys = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=6)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    keys,
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)
near_bound_filters = st.one_of(
    st.dictionaries(keys, values, max_size=3),
    st.lists(st.dictionaries(keys, values, max_size=2), min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
    values.map(lambda v: {"$not": {"k": v}}),
    st.lists(st.integers(0, 9), max_size=14).map(lambda v: {"k": v}),  # many values in few bytes
)


def test_client_and_server_refuse_the_same_filters_in_the_same_words(conn: psycopg.Connection) -> None:
    set_limits(conn, SMALL)  # rolled back with the test's transaction
    as_user(conn)
    outcomes: set[str] = set()

    @settings(max_examples=400, deadline=None)
    @given(near_bound_filters)
    def check(filter: dict[str, Any]) -> None:
        try:
            validate_filter(filter, limits=SMALL)
            client = None
        except FilterError as exc:
            client = str(exc)
        error = run_rpc(conn, "count_documents", json.dumps(filter))
        server = None if error is None else f"{error.sqlstate} {error.diag.message_primary}"
        assert server == (None if client is None else f"22023 {client}")
        bound = [
            word for word in ("bytes of JSON", "levels of JSON", "JSON values") if word in (client or "")
        ]
        outcomes.add(bound[0] if bound else "accepted" if client is None else "grammar")

    check()
    assert outcomes >= {"accepted", "bytes of JSON", "levels of JSON", "JSON values"}  # both sides of each


# --------------------------------------------------------------------------------------------------
# the statement timeout holds


@pytest.mark.parametrize("timeout", [0.3, 8.0])  # 8 s: Supabase's statement_timeout for authenticated
@pytest.mark.parametrize("rpc", sorted(RPC_SQL))
def test_the_worst_filter_allowed_ends_within_the_statement_timeout(
    clean_url: str, rpc: str, timeout: float
) -> None:
    """The issue's filter is refused at once; the worst filter allowed completes, or is cancelled
    (57014) close to the timeout: its compiled SQL is parsed and planned in moments, not past the
    timeout as the 4.9 MB filter's was (cancelled after 9.9 to 14.5 s with an 8 s timeout).

    The one timing assertion is deliberately generous, 1.5x the timeout (the issue's bound) plus 1 s
    for a machine busy with other tests; measured on 2 shared cores (decision 0011): cancelled at
    1.1 to 1.3x a 0.3 s timeout, and completed in under 2 s under an 8 s one."""
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off") as service:
        service.add(
            [{"id": f"d{i}", "content": f"record {i}", "metadata": {"k": i % 1500}} for i in range(2000)]
        )
    with psycopg.connect(clean_url) as conn:
        as_user(conn)
        conn.execute("select set_config('statement_timeout', %s, true)", (f"{int(timeout * 1000)}ms",))
        # Under the short timeout, reading and measuring 4.9 MB may itself be cut short: 57014 is prompt too.
        issue = {"22023"} if timeout > 1 else {"22023", "57014"}
        for filter, outcomes in ((or_of_in_lists(), issue), (worst_allowed(), {None, "57014"})):
            started = time.perf_counter()
            error = run_rpc(conn, rpc, json.dumps(filter))
            elapsed = time.perf_counter() - started
            assert (error.sqlstate if error else None) in outcomes, error
            assert elapsed < 1.5 * timeout + 1.0, (rpc, elapsed)
