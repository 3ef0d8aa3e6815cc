"""Metadata filters: every operator on the real database, the client-side validator, and properties.

The properties hold the three implementations to one grammar: random valid filters select exactly the
rows a Python reference evaluator (written from the migration's semantics) selects; random invalid ones
are refused by the client validator and, sent past it, by the server, with FilterError both times; bad
documents are refused with a typed error and write nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supa_vectors import (
    AsyncVectorStore,
    DocumentError,
    FilterError,
    InvalidInputError,
    VectorStore,
    validate_filter,
)
from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
from tests.conftest import DIM, FakeEmbedder

# --------------------------------------------------------------------------------------------------
# A reference evaluator: jsonb semantics in Python (containment, typed comparisons, missing keys).


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def json_equal(a: Any, b: Any) -> bool:
    """jsonb equality: numbers by value (1 = 1.0), booleans never equal numbers, objects unordered."""
    if json_kind(a) != json_kind(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def json_contains(a: Any, b: Any) -> bool:
    """``a @> b`` below the top level (metadata is always an object, so the top-level
    array-contains-scalar exception never applies)."""
    if isinstance(b, dict):
        return isinstance(a, dict) and all(k in a and json_contains(a[k], v) for k, v in b.items())
    if isinstance(b, list):
        return isinstance(a, list) and all(any(json_contains(x, e) for x in a) for e in b)
    return not isinstance(a, dict | list) and json_equal(a, b)


def field_matches(metadata: dict[str, Any], field: str, op: str, operand: Any) -> bool:
    present = field in metadata
    value = metadata.get(field)
    if op == "$eq":
        return present and json_equal(value, operand)
    if op == "$ne":
        return not present or not json_equal(value, operand)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if not present or json_kind(value) != json_kind(operand):
            return False
        return bool(
            {
                "$gt": value > operand,
                "$gte": value >= operand,
                "$lt": value < operand,
                "$lte": value <= operand,
            }[op]
        )
    if op == "$in":
        return present and any(json_contains(value, e) for e in operand)
    if op == "$nin":
        return not (present and any(json_contains(value, e) for e in operand))
    if op == "$contains":
        return present and json_contains(value, operand if isinstance(operand, list) else [operand])
    if op == "$exists":
        return bool(present == operand)
    raise AssertionError(op)


def matches(filter: Any, metadata: dict[str, Any]) -> bool:
    if filter is None:
        return True
    for key, value in filter.items():
        if key == "$and":
            ok = all(matches(f, metadata) for f in value)
        elif key == "$or":
            ok = any(matches(f, metadata) for f in value)
        elif key == "$not":
            ok = not matches(value, metadata)
        elif isinstance(value, dict) and any(k.startswith("$") for k in value):
            ok = all(field_matches(metadata, key, op, operand) for op, operand in value.items())
        else:
            ok = field_matches(metadata, key, "$eq", value)
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Data: metadata drawn from a small vocabulary, so random filters hit and miss.

FIELDS = ["n", "s", "flag", "tags", "obj", "opt"]
# Lower-case ASCII only: strings compare the same under every collation a Supabase database may use.
STRINGS = ["", "a", "ab", "b", "zeta"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.5, 2.0, 2.5]),
    st.sampled_from(STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["k", "m"]), inner, max_size=2)
    ),
    max_leaves=5,
)
metadata_values = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)


def corpus(seed_metadata: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": f"m{i:03d}", "content": f"record {i}", "metadata": m} for i, m in enumerate(seed_metadata)]


FIXED_METADATA: list[dict[str, Any]] = [
    {"n": 1, "s": "a", "flag": True, "tags": ["x", "y"], "obj": {"k": 1, "m": "a"}},
    {"n": 2, "s": "ab", "flag": False, "tags": ["y"], "obj": {"k": 2}},
    {"n": 2.5, "s": "b", "tags": [], "opt": None},
    {"n": -3, "s": "zeta", "flag": True, "tags": ["x", ["nested"]], "obj": {"k": 1}},
    {"n": "2", "s": 7, "tags": "x"},
    {},
    {"n": 0, "tags": [{"k": 1, "m": 2}], "obj": [1, 2]},
    {"opt": 1, "flag": 1},
]


def operand_for(op: str) -> st.SearchStrategy[Any]:
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return st.integers(-3, 3) | st.sampled_from([-1.5, 0.5, 2.5]) | st.sampled_from(STRINGS)
    if op in ("$in", "$nin"):
        return st.lists(scalars, min_size=1, max_size=4)
    if op == "$exists":
        return st.booleans()
    return json_values


OPS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains", "$exists"]
op_conditions = st.dictionaries(st.sampled_from(OPS), st.just(None), min_size=1, max_size=2).flatmap(
    lambda ops: st.fixed_dictionaries({op: operand_for(op) for op in ops})
)
# A plain object as a value is $eq on the object, so its keys must not start with "$".
field_conditions = json_values | op_conditions
leaf_filters = st.dictionaries(st.sampled_from([*FIELDS, "missing"]), field_conditions, max_size=2)


def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    nullable = inner | st.none()
    return st.one_of(
        st.lists(nullable, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
        st.lists(nullable, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
        nullable.map(lambda f: {"$not": f}),
        st.tuples(leaf_filters, inner).map(lambda pair: {**pair[0], "$and": [pair[1]]}),
    )


valid_filters = st.recursive(leaf_filters, extend, max_leaves=6)


def nest(filter: Any, levels: int) -> Any:
    for _ in range(levels):
        filter = {"$not": filter}
    return filter


def nest_list(levels: int) -> Any:
    """A value ``levels`` deep below its field: [[...[0]...]]."""
    value: Any = 0
    for _ in range(levels - 1):
        value = [value]
    return value


invalid_leaves = st.one_of(
    st.sampled_from(["$nor", "$all", "$"]).map(lambda op: {op: [{}]}),
    st.tuples(
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), st.sampled_from([True, None, [1], {"k": 1}])
    ).map(lambda t: {"n": {t[0]: t[1]}}),
    st.tuples(
        st.sampled_from(["$in", "$nin"]), st.sampled_from([[], "x", 1, {"k": 1}, [[1]], [{"k": 1}]])
    ).map(lambda t: {"s": {t[0]: t[1]}}),
    st.just({"s": {"$in": list(range(1001))}}),
    st.sampled_from([1, "yes", None, [True]]).map(lambda v: {"flag": {"$exists": v}}),
    st.sampled_from(["$like", "$regex", "$size", "eq"]).map(lambda op: {"s": {op: 1, "$eq": 1}}),
    st.just({"s": {"$eq": 1, "plain": 2}}),
    st.sampled_from(["", "x" * 257]).map(lambda field: {field: 1}),
    st.sampled_from([[], {}, "x", 1, None]).map(lambda v: {"$and": v} if v is not None else {"$or": []}),
    st.sampled_from([[1], ["x"], [[]]]).map(lambda v: {"$or": v}),
    st.sampled_from([[], 5, "x", True]).map(lambda v: {"$not": v}),
    st.just(nest({}, 11)),
    st.sampled_from([[], [{}], "x", 3, True]),  # not an object at all
    # over the bounds on the whole filter: bytes, JSON depth, values (*_filter_bounds.sql)
    st.just({"s": "x" * 262_144}),
    st.just({"tags": nest_list(65)}),
    st.just({"tags": [0] * 4999}),
)
invalid_filters = st.one_of(
    invalid_leaves,
    st.tuples(
        valid_filters.filter(lambda f: isinstance(f, dict)),
        invalid_leaves.filter(lambda f: isinstance(f, dict)),
    ).map(lambda pair: {**pair[0], **pair[1]}),
    st.tuples(valid_filters, invalid_leaves).map(lambda pair: {"$and": [pair[0], pair[1]]}),
    st.tuples(valid_filters, invalid_leaves).map(lambda pair: {"$or": [pair[1], pair[0]]}),
    invalid_leaves.map(lambda f: {"$not": f}),
)


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def store(clean_url: str) -> Iterator[VectorStore]:
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder()) as store:
        yield store


@pytest.fixture
def loaded(store: VectorStore) -> VectorStore:
    store.add(corpus(FIXED_METADATA))
    return store


def expected_ids(filter: Any, docs: list[dict[str, Any]]) -> list[str]:
    return [d["id"] for d in docs if matches(filter, d["metadata"])]


# --------------------------------------------------------------------------------------------------
# every operator, through the store (sync and async), against the reference

OPERATOR_CASES: list[tuple[dict[str, Any], list[int]]] = [
    ({}, [0, 1, 2, 3, 4, 5, 6, 7]),
    ({"s": "a"}, [0]),
    ({"n": 2}, [1]),
    ({"n": 2.0}, [1]),
    ({"flag": True}, [0, 3]),
    ({"flag": 1}, [7]),
    ({"opt": None}, [2]),
    ({"obj": {"k": 1}}, [3]),
    ({"tags": ["y"]}, [1]),
    ({"s": {"$eq": "ab"}}, [1]),
    ({"obj": {"$eq": {"k": 1, "m": "a"}}}, [0]),
    ({"s": {"$ne": "a"}}, [1, 2, 3, 4, 5, 6, 7]),
    ({"opt": {"$ne": None}}, [0, 1, 3, 4, 5, 6, 7]),
    ({"n": {"$gt": 1}}, [1, 2]),
    ({"n": {"$gte": 1}}, [0, 1, 2]),
    ({"n": {"$lt": 1}}, [3, 6]),
    ({"n": {"$lte": -3}}, [3]),
    ({"n": {"$gt": 0, "$lt": 2.5}}, [0, 1]),
    ({"s": {"$gt": "a"}}, [1, 2, 3]),
    ({"n": {"$lt": "3"}}, [4]),
    ({"s": {"$in": ["a", "b", 7]}}, [0, 2, 4]),
    ({"n": {"$in": [2, "2"]}}, [1, 4]),
    ({"s": {"$nin": ["a", "b"]}}, [1, 3, 4, 5, 6, 7]),
    ({"tags": {"$contains": "x"}}, [0, 3]),
    ({"tags": {"$contains": ["x", "y"]}}, [0]),
    ({"tags": {"$contains": [["nested"]]}}, [3]),
    ({"tags": {"$contains": {"k": 1}}}, [6]),
    ({"obj": {"$contains": 1}}, [6]),
    ({"flag": {"$exists": True}}, [0, 1, 3, 7]),
    ({"flag": {"$exists": False}}, [2, 4, 5, 6]),
    ({"$and": [{"flag": True}, {"n": {"$gt": 0}}]}, [0]),
    ({"$or": [{"s": "a"}, {"n": -3}]}, [0, 3]),
    ({"$not": {"flag": {"$exists": True}}}, [2, 4, 5, 6]),
    ({"$and": [None]}, [0, 1, 2, 3, 4, 5, 6, 7]),
    ({"$not": None}, []),
    ({"flag": True, "$or": [{"s": "zeta"}, {"tags": {"$contains": "y"}}]}, [0, 3]),
    (nest({"s": "a"}, 10), [0]),
    (nest(None, 11), []),  # null needs no depth check; an odd number of $not negates "true"
]


@pytest.mark.parametrize(("filter", "indexes"), OPERATOR_CASES)
def test_every_operator_selects_the_expected_rows(
    loaded: VectorStore, filter: dict[str, Any], indexes: list[int]
) -> None:
    docs = corpus(FIXED_METADATA)
    expected = [docs[i]["id"] for i in indexes]
    assert expected_ids(filter, docs) == expected  # the reference agrees with the hand-written answer
    assert validate_filter(filter) == filter
    assert [d.id for d in loaded.iter_documents(filter=filter, page_size=3)] == expected
    assert loaded.count(filter) == len(expected)
    assert sorted(r.id for r in loaded.search("record", k=20, filter=filter)) == expected
    assert sorted(r.id for r in loaded.hybrid_search("record", k=20, filter=filter)) == expected


async def test_operators_through_the_async_store(clean_url: str) -> None:
    async with AsyncVectorStore(AsyncPostgresTransport(clean_url), embedder=FakeEmbedder()) as store:
        docs = corpus(FIXED_METADATA)
        await store.add(docs)
        for filter, indexes in OPERATOR_CASES:
            expected = [docs[i]["id"] for i in indexes]
            assert [d.id async for d in store.iter_documents(filter=filter)] == expected
            assert await store.count(filter) == len(expected)
            assert sorted(r.id for r in await store.search("record", k=20, filter=filter)) == expected


INVALID_CASES: list[tuple[Any, str]] = [
    ([], "a filter is a JSON object, got array"),
    ({"$nor": []}, 'unknown logical operator "$nor"'),
    ({"$and": []}, "$and needs a non-empty array of filters"),
    ({"$or": {}}, "$or needs a non-empty array of filters"),
    ({"$and": [1]}, "a filter is a JSON object, got number"),
    ({"$not": []}, "a filter is a JSON object, got array"),
    ({"": 1}, "a field name must have 1 to 256 characters"),
    ({"f" * 257: 1}, "a field name must have 1 to 256 characters"),
    ({"n": {"$gt": True}}, '$gt on "n" needs a number or a string, got boolean'),
    ({"n": {"$lte": None}}, '$lte on "n" needs a number or a string, got null'),
    ({"n": {"$in": []}}, '$in on "n" needs a non-empty array'),
    ({"n": {"$nin": "x"}}, '$nin on "n" needs a non-empty array'),
    ({"n": {"$in": [[1]]}}, '$in on "n" takes scalar values only'),
    ({"n": {"$in": list(range(1001))}}, '$in on "n" has 1001 values; the limit is 1000'),
    ({"n": {"$exists": 1}}, '$exists on "n" needs true or false, got number'),
    ({"n": {"$like": "a"}}, 'unknown operator "$like" on "n"'),
    ({"n": {"$eq": 1, "k": 2}}, 'the condition on "n" mixes operators and plain keys'),
    (nest({}, 11), "nested deeper than 10 levels"),
    ({"s": "x" * 262_136}, "the filter has 262145 bytes of JSON; the limit is 262144"),
    ({"tags": nest_list(65)}, "the filter nests deeper than 64 levels of JSON; the limit is 64"),
    ({"tags": [0] * 4999}, "the filter has 5001 JSON values; the limit is 5000"),
]


@pytest.mark.parametrize(("filter", "message"), INVALID_CASES)
def test_invalid_filters_are_refused_by_client_and_server_alike(
    store: VectorStore, filter: Any, message: str
) -> None:
    with pytest.raises(FilterError) as client:
        validate_filter(filter)
    assert message in str(client.value)
    with pytest.raises(FilterError) as server:
        store.transport.rpc("count_documents", {"filter": filter})
    assert message in str(server.value)
    assert str(client.value).startswith("invalid filter: ")
    with pytest.raises(FilterError):
        store.search("x", filter=filter)


@pytest.mark.parametrize(
    "filter",
    [
        {"n": float("nan")},
        {"n": {"$gt": float("inf")}},
        {"s": "nul\x00"},
        {"nul\x00": 1},
        {1: 2},
        {"s": object()},
    ],
)
def test_filters_that_are_not_json_are_refused_client_side(filter: Any) -> None:
    with pytest.raises(FilterError):
        validate_filter(filter)


def test_tuples_are_json_arrays() -> None:
    assert validate_filter({"s": {"$in": ("a", "b")}}) == {"s": {"$in": ["a", "b"]}}
    assert validate_filter(None) == {}


# --------------------------------------------------------------------------------------------------
# properties


def test_metadata_round_trips_exactly(store: VectorStore) -> None:
    """What goes in comes out (jsonb keeps 2.0 as 2.0, nested arrays, nulls)."""

    @settings(max_examples=60, deadline=None)
    @given(st.lists(metadata_values, min_size=1, max_size=15))
    def check(metadata: list[dict[str, Any]]) -> None:
        docs = corpus(metadata)
        store.upsert(docs)
        stored = {d.id: d.metadata for d in store.get([d["id"] for d in docs])}
        for doc in docs:
            assert json_equal(stored[doc["id"]], doc["metadata"])

    check()


def test_random_valid_filters_select_what_the_reference_selects(store: VectorStore) -> None:
    docs = corpus(FIXED_METADATA + [m for m in _generated_metadata()])
    store.add(docs)

    @settings(max_examples=200, deadline=None)
    @given(valid_filters)
    def check(filter: dict[str, Any]) -> None:
        expected = expected_ids(filter, docs)
        assert validate_filter(filter) == filter
        assert [d.id for d in store.iter_documents(filter=filter, page_size=1000)] == expected
        assert store.count(filter) == len(expected)

    check()


def _generated_metadata() -> list[dict[str, Any]]:
    """A fixed, varied set drawn once from the same strategy as the filters' values."""
    import random

    rng = random.Random(20261125)
    vocabulary = [None, True, False, -3, 0, 1, 2, 2.0, 2.5, -1.5, "", "a", "ab", "b", "zeta"]

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth < 2 and roll < 0.15:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if depth < 2 and roll < 0.25:
            return {k: value(depth + 1) for k in rng.sample(["k", "m"], rng.randint(0, 2))}
        return rng.choice(vocabulary)

    return [{f: value(0) for f in rng.sample(FIELDS, rng.randint(0, len(FIELDS)))} for _ in range(40)]


def test_random_invalid_filters_are_refused_everywhere_and_change_nothing(loaded: VectorStore) -> None:
    before = loaded.stats()

    @settings(max_examples=150, deadline=None)
    @given(invalid_filters)
    def check(filter: Any) -> None:
        with pytest.raises(FilterError):
            validate_filter(filter)
        with pytest.raises(FilterError):
            loaded.count(filter)
        # Past the client check, straight to the RPCs: the server refuses the same filters.
        with pytest.raises(FilterError):
            loaded.transport.rpc("count_documents", {"filter": filter})
        with pytest.raises(FilterError):
            loaded.transport.rpc("list_documents", {"filter": filter})

    check()
    after = loaded.stats()
    assert (after.documents, after.embeddings, after.last_updated_at) == (
        before.documents,
        before.embeddings,
        before.last_updated_at,
    )


# --------------------------------------------------------------------------------------------------
# bad documents (property): a typed error naming the record, nothing embedded, nothing written


good_documents = st.lists(
    st.builds(
        lambda i, words, metadata: {"id": f"g{i}", "content": " ".join(words), "metadata": metadata},
        st.integers(0, 10_000),
        st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta"]), min_size=1, max_size=5),
        metadata_values,
    ),
    max_size=5,
    unique_by=lambda d: d["id"],
)


def bad_document(good: list[dict[str, Any]]) -> st.SearchStrategy[Any]:
    kinds: list[st.SearchStrategy[Any]] = [
        st.sampled_from(["", " ", "\n\t  "]).map(lambda c: {"id": "bad", "content": c}),
        st.text(max_size=5).map(lambda t: {"id": "bad", "content": t + "\x00" + t}),
        st.just({"id": "bad\x00", "content": "ok"}),
        st.sampled_from([math.nan, math.inf, -math.inf]).map(
            lambda v: {"id": "bad", "content": "ok", "metadata": {"x": [v]}}
        ),
        st.just({"id": "bad", "content": "ok", "metadata": {"x": "\x00"}}),
        st.sampled_from([42, None, ["list"], b"bytes"]).map(lambda c: {"id": "bad", "content": c}),
        st.sampled_from([17, "", 513]).map(lambda i: {"id": "x" * i if i == 513 else i, "content": "ok"}),
        st.just({"id": "bad", "content": "ok", "metadata": ["not", "an", "object"]}),
        st.just({"id": "bad", "page_content": "wrong key"}),
        st.builds(lambda: {"id": "bad", "content": "x" * 1_000_001}),  # one byte over the limit
        st.builds(
            lambda value, size: {"id": "bad", "content": "ok", "embedding": [value] * size},
            st.sampled_from([0.1, math.nan, math.inf]),
            st.sampled_from([10, DIM, 1536]),
        ).filter(lambda d: d["embedding"][0] != 0.1 or len(d["embedding"]) != DIM),
        st.sampled_from([42, 1.5, None, object()]),
    ]
    if good:
        kinds.append(st.sampled_from(good).map(lambda d: {"id": d["id"], "content": "a duplicate id"}))
    return st.one_of(kinds)


def test_bad_documents_raise_typed_errors_and_write_nothing(clean_url: str) -> None:
    embedder = FakeEmbedder()
    store = VectorStore(PostgresTransport(clean_url), embedder=embedder)

    @settings(max_examples=120, deadline=None)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        good = data.draw(good_documents)
        bad = data.draw(bad_document(good))
        duplicate = isinstance(bad, dict) and bad.get("content") == "a duplicate id"
        # a duplicate is reported where it repeats an earlier id, so it goes after all the good ones
        position = data.draw(st.integers(len(good) if duplicate else 0, len(good)))
        batch: list[Any] = [*good[:position], bad, *good[position:]]
        with pytest.raises(DocumentError) as caught:
            store.add(batch)
        assert caught.value.index == position
        assert isinstance(caught.value, InvalidInputError)
        assert embedder.texts == []
        assert store.count() == 0

    with store:
        # Warm the pool first: it draws jitter from `random` while connecting, which Hypothesis flags.
        assert store.count() == 0
        check()
