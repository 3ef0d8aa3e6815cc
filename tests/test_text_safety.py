"""Text UTF-8 cannot encode, NUL, huge and non-finite numbers and deep nesting, through every door.

A lone surrogate (JSON ``"\\ud800"``, or a command-line byte that is not UTF-8, which Python decodes
with ``surrogateescape``) used to escape as a bare ``UnicodeEncodeError`` from ``prepare_documents``,
the cache key and the CLI, and to crash a whole migration (``--resume`` too); an over-long integer
escaped as ``ValueError`` and deep nesting as ``RecursionError``. Here Hypothesis feeds arbitrary JSON
values and arbitrary file bytes to the readers, validation, ``prepare_documents``, the cache key, the
PostgREST encoding and the CLI: only ``SupaVectorsError`` subclasses come out (the CLI: exit 1 or 2, no
traceback), every message and report is itself encodable, and in real migrations against the local
stack the good records land exactly once, resumed or not.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from supabase import Client, ClientOptions

from supa_vectors import AsyncVectorStore, VectorStore, cli
from supa_vectors._core.settings import StoreSettings
from supa_vectors._core.upsert import prepare_documents
from supa_vectors.cache.keys import Scope
from supa_vectors.cli import _migrate as _cli_migrate
from supa_vectors.cli import _search as _cli_search
from supa_vectors.errors import DocumentError, InvalidInputError, SupaVectorsError
from supa_vectors.migrate import Retry, migrate
from supa_vectors.migrate.readers import RawRecord, ReadProblem, SourceFile, read_records
from supa_vectors.migrate.validation import Rules, validate
from supa_vectors.transport.postgrest import PostgrestTransport
from tests.conftest import DIM, MODEL, FakeEmbedder
from tests.test_migrate import _FlakyTransport, empty, scratch_database, stored

SLOW = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


def encodable(text: str | None) -> bool:
    """What every message, id and report field must be: writable as UTF-8."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Arbitrary JSON values, as Python data and as file text


class Raw:
    """A leaf that json.dumps cannot write: an over-long integer or nesting deeper than it recurses."""

    def __init__(self, text: str, python: Any) -> None:
        self.text, self.python = text, python

    def __repr__(self) -> str:
        return f"Raw({self.text[:12]}..., {len(self.text)} chars)"


def nested(depth: int) -> Raw:
    inner: Any = []
    for _ in range(depth - 1):
        inner = [inner] if depth % 2 else {"a": inner}
    opening, closing = ("[", "]") if depth % 2 else ('{"a":', "}")
    return Raw(opening * (depth - 1) + "[]" + closing * (depth - 1), inner)


HUGE = Raw("9" * 5000, 10**5000 - 1)

texts = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),  # any code point, surrogates included
    st.sampled_from(["\ud800", "a\udcff", "\udfff\ud800", "\x00", "nul\x00", "\ufeff", "\ud83d\ude00", "ok"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -0.0, 2**63, -(2**64)]),
    texts,
)
trees = st.recursive(
    scalars | st.sampled_from([HUGE, Raw("-1" + "0" * 4400, -(10**4400))]),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(texts, kids, max_size=3),
    max_leaves=10,
) | st.integers(2, 3000).map(nested)


def to_python(tree: Any) -> Any:
    if isinstance(tree, Raw):
        return tree.python
    if isinstance(tree, list):
        return [to_python(t) for t in tree]
    if isinstance(tree, dict):
        return {k: to_python(v) for k, v in tree.items()}
    return tree


def to_text(tree: Any, ascii_only: bool = True) -> str:
    """JSON text; lone surrogates become \\u escapes (as a JSON file would hold them)."""
    if isinstance(tree, Raw):
        return tree.text
    if isinstance(tree, list):
        return "[" + ",".join(to_text(t, ascii_only) for t in tree) + "]"
    if isinstance(tree, dict):
        return "{" + ",".join(f"{to_text(k)}:{to_text(v, ascii_only)}" for k, v in tree.items()) + "}"
    text = json.dumps(tree, ensure_ascii=ascii_only)
    return text if encodable(text) else json.dumps(tree)


record_trees = st.one_of(
    trees,
    st.fixed_dictionaries(
        {"content": texts | trees},
        optional={"id": texts | trees, "metadata": trees, "extra\udcff": scalars},
    ),
)


# --------------------------------------------------------------------------------------------------
# prepare_documents, the cache key, the PostgREST encoding


@settings(max_examples=400, deadline=None)
@given(record=record_trees)
def test_prepare_documents_raises_only_document_errors_and_passes_only_sendable_documents(
    record: Any,
) -> None:
    try:
        (prepared,) = prepare_documents([to_python(record)])
    except DocumentError as exc:
        refused: DocumentError = exc
    else:
        # What passes can be hashed, sent and stored: UTF-8, finite, no NUL, no over-long integers.
        body = json.dumps(prepared.as_json(), ensure_ascii=False, allow_nan=False)
        assert "\\u0000" not in body
        body.encode("utf-8")
        return
    assert refused.index == 0
    assert encodable(str(refused)), str(refused)


def test_each_text_field_is_named_in_the_error() -> None:
    cases = {
        "content": {"id": "a", "content": "caf\udce9"},
        "id": {"id": "caf\udce9", "content": "ok"},
        "metadata.k": {"id": "a", "content": "ok", "metadata": {"k": "\ud800"}},
        "a key in metadata.k": {"id": "a", "content": "ok", "metadata": {"k": {"\ud800": 1}}},
        "metadata.n": {"id": "a", "content": "ok", "metadata": {"n": 10**5000}},
        "nested deeper": {"id": "a", "content": "ok", "metadata": {"n": to_python(nested(2000))}},
    }
    for field, record in cases.items():
        with pytest.raises(DocumentError) as caught:
            prepare_documents([{"id": "first", "content": "fine"}, record])
        assert caught.value.index == 1
        assert field in str(caught.value)
        assert encodable(str(caught.value))


@settings(max_examples=300, deadline=None)
@given(a=texts, b=texts, key=texts, value=texts)
def test_the_cache_key_never_raises_and_keeps_different_questions_apart(
    a: str, b: str, key: str, value: str
) -> None:
    scope = Scope("postgres:host", "identity", MODEL, "1")
    one = scope.search_key("vector", a, 5, None, {key: value})
    assert one == scope.search_key("vector", a, 5, None, {key: value})
    if a != b:
        assert one != scope.search_key("vector", b, 5, None, {key: value})
    assert scope.embedding_key(a) != scope.embedding_key(a + "\ud800")


@pytest.fixture(scope="module")
def text_db(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "text") as url:
        yield url


@pytest.fixture(scope="module")
def store(text_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorStore]:
    empty(text_db)
    cache_dir = tmp_path_factory.mktemp("cache")
    with VectorStore.from_url(text_db, embedder=FakeEmbedder(), cache_dir=cache_dir) as opened:
        opened.add([{"id": "seed", "content": "a document to find", "metadata": {"k": "v"}}])
        yield opened


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=texts, filter=trees, hybrid=st.booleans())
def test_search_with_any_query_and_filter_raises_only_typed_errors(
    store: VectorStore, query: str, filter: Any, hybrid: bool
) -> None:
    value = to_python(filter)
    with contextlib.suppress(SupaVectorsError):
        store.count(filter=value if isinstance(value, dict) else {"k": value})
    with contextlib.suppress(SupaVectorsError):
        if hybrid:
            store.hybrid_search(query, k=3, filter={"k": value})
        else:
            store.search(query, k=3, filter={"k": value})


def test_a_surrogate_is_refused_before_any_round_trip(store: VectorStore) -> None:
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        store.search("caf\udce9")
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        store.search("coffee", filter={"k": "\ud800"})
    with pytest.raises(DocumentError, match=r"metadata\.k contains '\\ud800'") as caught:
        store.upsert(
            [{"id": "ok", "content": "fine"}, {"id": "bad", "content": "x", "metadata": {"k": "\ud800"}}]
        )
    assert (caught.value.index, caught.value.document_id) == (1, "bad")
    with pytest.raises(InvalidInputError, match="lone surrogates"):
        store.get(["\ud800"])
    assert store.count() == 1


async def test_the_async_store_refuses_the_same_text(text_db: str, tmp_path: Path) -> None:
    async with AsyncVectorStore.from_url(text_db, embedder=FakeEmbedder(), cache_dir=tmp_path) as store:
        with pytest.raises(InvalidInputError, match="lone surrogate"):
            await store.hybrid_search("caf\udce9")
        with pytest.raises(DocumentError, match="a key in metadata") as caught:
            await store.upsert({"id": "a", "content": "fine", "metadata": {"\ud800": 1}})
        assert (caught.value.index, caught.value.document_id) == (0, "a")


@settings(max_examples=150, deadline=None)
@given(document=st.dictionaries(texts, trees, max_size=3), content=texts)
def test_the_postgrest_encoding_refuses_unsendable_values_and_sends_nothing(
    document: dict[str, Any], content: str
) -> None:
    url = "https://text-safety.supabase.co"
    with respx.mock(base_url=f"{url}/rest/v1", assert_all_called=False) as router:
        route = router.post("/rpc/bulk_upsert").mock(return_value=httpx.Response(200, json=[]))
        http = httpx.Client()
        transport = PostgrestTransport(Client(url, "anon-key", ClientOptions(httpx_client=http)))
        params = {"documents": [{"external_id": "x", "content": content, "metadata": to_python(document)}]}
        error: SupaVectorsError | None = None
        try:
            transport.rpc("bulk_upsert", params)
        except SupaVectorsError as exc:
            error = exc
    assert encodable(str(error or ""))
    if isinstance(error, InvalidInputError):
        assert not route.called  # refused before anything was sent
    elif route.called:
        json.loads(route.calls[-1].request.content.decode("utf-8"))  # what was sent is UTF-8 JSON


# --------------------------------------------------------------------------------------------------
# Readers and validation: arbitrary file bytes


RULES = Rules(StoreSettings(MODEL, DIM))


def file_bytes(records: list[Any], shape: str, ascii_only: bool) -> bytes:
    if shape == "jsonl":
        return "".join(to_text(r, ascii_only) + "\n" for r in records).encode("utf-8")
    listed = "[" + ",\n".join(to_text(r, ascii_only) for r in records) + "]"
    return (listed if shape == "list" else '{"documents": ' + listed + "}").encode("utf-8")


damaged_files = st.builds(
    lambda records, shape, ascii_only, bom, cut, junk, at: (
        bom
        + (lambda data: (data[:at] + junk + data[at:])[: cut or None])(
            file_bytes(records, shape, ascii_only)
        ),
        shape,
    ),
    st.lists(record_trees, max_size=4),
    st.sampled_from(["list", "object", "jsonl"]),
    st.booleans(),
    st.sampled_from([b"", codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF32_BE]),
    st.none() | st.integers(1, 400),
    st.sampled_from([b"", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\n", b"]"]),
    st.integers(0, 400),
) | st.tuples(st.binary(max_size=200), st.sampled_from(["list", "jsonl"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged_files, chunk=st.sampled_from([1, 7, 1 << 16]))
def test_any_file_bytes_become_records_or_problems_never_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: tuple[bytes, str], chunk: int
) -> None:
    data, shape = case
    monkeypatch.setattr("supa_vectors.migrate.readers._CHUNK", chunk)
    path = tmp_path / ("f.jsonl" if shape == "jsonl" else "f.json")
    path.write_bytes(data)
    for item in read_records(SourceFile(0, path, path.name, str(path), len(data))):
        if isinstance(item, ReadProblem):
            assert encodable(item.reason), item.reason
            continue
        assert isinstance(item, RawRecord)
        checked = validate(item, RULES)
        assert encodable(checked.id)
        assert all(encodable(issue.reason) for issue in checked.issues)
        assert all(encodable(name) for name in checked.ignored_fields)
        if checked.record is not None:
            record = checked.record
            json.dumps(
                [record.id, record.content, record.metadata], ensure_ascii=False, allow_nan=False
            ).encode()
            assert "\x00" not in record.content + record.id


# --------------------------------------------------------------------------------------------------
# Real migrations: the good records land exactly once, the bad ones are listed one by one


BAD_KINDS: dict[str, Any] = {
    "content": lambda i: {"id": f"bad{i}", "content": "caf\udce9"},
    "id": lambda i: {"id": f"bad{i}\ud800", "content": "fine text"},
    "metadata value": lambda i: {"id": f"bad{i}", "content": "fine", "metadata": {"k": "\udfff"}},
    "metadata key": lambda i: {"id": f"bad{i}", "content": "fine", "metadata": {"\ud800k": 1}},
    "no id, content": lambda i: {"content": f"derived {i} \ud800"},
    "nul": lambda i: {"id": f"bad{i}", "content": "fine", "metadata": {"k": "a\x00b"}},
    "huge integer": lambda i: {"id": f"bad{i}", "content": "fine", "metadata": {"n": HUGE}},
    "deep": lambda i: {"id": f"bad{i}", "content": "fine", "metadata": {"n": nested(1500)}},
    "infinite": lambda i: {"id": f"bad{i}", "content": "fine", "metadata": {"n": Raw("1e999", math.inf)}},
}


def write_source(directory: Path, plan: list[tuple[int, str | None]]) -> dict[str, str]:
    """Files of good and bad records (plan: (file, bad kind or None)); returns the good id -> content."""
    directory.mkdir(parents=True, exist_ok=True)
    by_file: dict[int, list[Any]] = {}
    good: dict[str, str] = {}
    for i, (file, kind) in enumerate(plan):
        if kind is None:
            record: Any = {"id": f"good{i}", "content": f"good record {i} ☕", "metadata": {"i": i}}
            good[record["id"]] = record["content"]
        else:
            record = BAD_KINDS[kind](i)
        by_file.setdefault(file, []).append(record)
    names = {0: "a.json", 1: "b.jsonl", 2: os.fsdecode(b"caf\xe9-latin1-name.json")}
    for file, records in by_file.items():
        shape = "jsonl" if file == 1 else "list"
        (directory / names[file]).write_bytes(file_bytes(records, shape, ascii_only=True))
    return good


def run_main(argv: list[str], embedder: Any) -> tuple[int, str, str]:
    """``supa-vectors ARGV`` in this process (the real ``main``), with the fake embedder."""
    out, err = io.StringIO(), io.StringIO()
    patched = [
        (_cli_migrate, "migrate_command", _cli_migrate.migrate_command),
        (_cli_search, "search_command", _cli_search.search_command),
    ]
    for module, name, original in patched:
        setattr(module, name, functools.partial(original, embedder=embedder))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        for module, name, original in patched:
            setattr(module, name, original)
    return code, out.getvalue(), err.getvalue()


@SLOW
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 2), st.none() | st.sampled_from(sorted(BAD_KINDS))), min_size=1, max_size=12
    )
)
def test_a_migration_lands_the_good_records_once_and_lists_each_bad_one(
    text_db: str, plan: list[tuple[int, str | None]]
) -> None:
    empty(text_db)
    with tempfile.TemporaryDirectory() as tmp:
        good = write_source(Path(tmp) / "src", plan)
        argv = [
            "migrate",
            str(Path(tmp) / "src"),
            "--database-url",
            text_db,
            "--state-dir",
            f"{tmp}/state",
            "--json",
        ]
        code, out, err = run_main(argv, FakeEmbedder())
        assert "Traceback" not in err
        bad = sum(kind is not None for _, kind in plan)
        assert code == (3 if bad else 0), err
        report = json.loads(out)
        assert {k: v[0] for k, v in stored(text_db).items()} == good
        problems = [p for p in report["problems"] if p["severity"] == "error"]
        assert len(problems) == bad
        for problem in problems:
            assert problem["file"]
            assert problem["position"] is not None
            assert problem["reason"]
        # A second run is idempotent: everything good is unchanged, nothing new lands.
        code, out, err = run_main(argv, FakeEmbedder())
        assert json.loads(out)["counts"]["unchanged"] == len(good)
        assert {k: v[0] for k, v in stored(text_db).items()} == good


def test_a_rejected_record_names_file_position_id_and_reason_and_resume_finishes_the_run(
    text_db: str, tmp_path: Path
) -> None:
    empty(text_db)
    plan = [(0, None)] * 25 + [
        (0, "id"),
        (0, "metadata key"),
        (1, "content"),
        (1, None),
        (2, None),
        (2, "deep"),
    ]
    good = write_source(tmp_path / "src", plan)
    state = tmp_path / "state"
    flaky = VectorStore(_FlakyTransport(text_db, lose_at=2), embedder=FakeEmbedder())  # type: ignore[arg-type]
    with flaky, pytest.raises(SupaVectorsError, match="injected"):
        migrate([tmp_path / "src"], flaky, state_dir=state, batch_size=10, retry=Retry(attempts=0))
    assert 0 < len(stored(text_db)) < len(good)
    code, out, err = run_main(
        ["migrate", "--resume", "--database-url", text_db, "--state-dir", str(state), "--json"],
        FakeEmbedder(),
    )
    assert (code, "Traceback" in err) == (3, False), err
    assert {k: v[0] for k, v in stored(text_db).items()} == good
    report = json.loads(out)
    rejected = {(Path(p["file"]).name, p["position"], p["id"]): p["reason"] for p in report["problems"]}
    assert set(rejected) == {
        ("a.json", 25, "bad25\\ud800"),
        ("a.json", 26, "bad26"),
        ("b.jsonl", 0, "bad27"),
        ("caf\\xe9-latin1-name.json", 1, None),
    }
    assert "lone surrogate" in rejected[("a.json", 25, "bad25\\ud800")]
    assert "a key in metadata" in rejected[("a.json", 26, "bad26")]
    assert "nested too deeply" in rejected[("caf\\xe9-latin1-name.json", 1, None)]
    # The file with a non-UTF-8 name landed too, under its escaped name.
    assert stored(text_db)["good29"][0] == "good record 29 ☕"


# --------------------------------------------------------------------------------------------------
# The command line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=texts, filter=trees | texts, hybrid=st.booleans())
def test_cli_search_exits_cleanly_whatever_the_query_and_filter(
    text_db: str, query: str, filter: Any, hybrid: bool
) -> None:
    filter_arg = filter if isinstance(filter, str) else to_text(filter, ascii_only=False)
    argv = [
        "search",
        query,
        "--filter",
        filter_arg,
        "--database-url",
        text_db,
        *(["--hybrid"] if hybrid else []),
    ]
    code, _, err = run_main(argv, FakeEmbedder())
    assert "Traceback" not in err
    if not all(encodable(arg) for arg in argv):
        assert code == 2
        assert "is not valid UTF-8" in err
    else:
        assert code in (0, 1, 2), err


@pytest.mark.parametrize(
    "argv",
    [
        [b"search", b"caf\xe9"],
        [b"search", b"coffee", b"--filter", b'{"k": "caf\xe9"}'],
        [b"migrate", b"caf\xe9.json"],
    ],
)
def test_undecodable_command_line_bytes_are_a_usage_error(
    text_db: str, tmp_path: Path, argv: list[bytes]
) -> None:
    executable = shutil.which("supa-vectors") or pytest.fail("supa-vectors is not installed")
    (tmp_path / os.fsdecode(b"caf\xe9.json")).write_text('[{"id": "a", "content": "x"}]')
    env = {**os.environ, "SUPA_VECTORS_DATABASE_URL": text_db, "LC_ALL": "C.UTF-8", "PYTHONUTF8": "1"}
    result = subprocess.run(
        [executable, *argv, b"--database-url", text_db.encode()],
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert b"Traceback" not in result.stderr
    assert b"is not valid UTF-8" in result.stderr
