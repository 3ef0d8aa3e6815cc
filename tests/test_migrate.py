"""``supa-vectors migrate``: readers, validation, and whole runs against a real database.

The runs use a database of their own in the session's server (created from template1, which carries the
Supabase bootstrap, and migrated with the builtin applier), so they never race other test modules that
empty the shared store, and the deterministic ``FakeEmbedder``. Crashes and signals are in
``test_migrate_crash.py``; the real model and the shared corpus in ``test_migrate_corpus.py``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import tarfile
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supa_vectors import VectorStore
from supa_vectors.cli import build_parser
from supa_vectors.cli._migrate import migrate_command
from supa_vectors.errors import AuthError, BackendUnavailableError, InvalidInputError
from supa_vectors.local import apply_migrations
from supa_vectors.migrate import FieldMap, Retry, migrate, rollback, runs, verify
from supa_vectors.migrate import readers as readers_module
from supa_vectors.migrate.readers import RawRecord, ReadProblem, SourceFile, discover, read_records
from supa_vectors.migrate.validation import Rules, derived_id, validate
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgres import PostgresTransport
from tests.conftest import CORPUS, REPO_ROOT, USER_A, USER_B, FakeEmbedder, act_as

EXAMPLES = REPO_ROOT / "examples" / "documents"
BAD = CORPUS / "bad-documents"
POSTGRES_DOCS = CORPUS / "postgres-docs" / "documents"


# --------------------------------------------------------------------------------------------------
# A database of our own


@contextmanager
def scratch_database(server_url: str, label: str) -> Iterator[str]:
    """A fresh, migrated database in the server of ``server_url``; dropped afterwards."""
    name = f"migrate_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"'.encode())
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    try:
        apply_migrations(url, migrator="builtin")
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)'.encode())


def empty(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("truncate public.documents, public.ingest_runs restart identity cascade")
        conn.execute("select supa_vectors_internal.create_vector_index()")


@pytest.fixture(scope="module")
def module_db(database_url: str) -> Iterator[str]:
    with scratch_database(database_url, "api") as url:
        yield url


@pytest.fixture
def db(module_db: str) -> str:
    empty(module_db)
    return module_db


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def store_for(url: str, embedder: Any = None) -> VectorStore:
    return VectorStore.from_url(url, embedder=embedder or FakeEmbedder())


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def stored(url: str) -> dict[str, tuple[str, Any]]:
    return {
        r[0]: (r[1], r[2]) for r in rows(url, "select external_id, content, metadata from public.documents")
    }


def write_json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def source_file(path: Path, key: str | None = None) -> SourceFile:
    return SourceFile(0, path, key or path.name, str(path), path.stat().st_size)


def records_of(path: Path) -> list[Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else data["documents"]


# --------------------------------------------------------------------------------------------------
# Readers


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_reader_streams_both_shapes_in_any_chunk_size(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(readers_module, "_CHUNK", chunk)
    files = [*sorted(EXAMPLES.glob("*.json")), *sorted(POSTGRES_DOCS.glob("*.json"))[:40]]
    shapes = set()
    for path in files:
        got = list(read_records(source_file(path)))
        assert all(isinstance(item, RawRecord) for item in got), path
        assert [item.value for item in got if isinstance(item, RawRecord)] == records_of(path)
        assert [item.position for item in got if isinstance(item, RawRecord)] == list(range(len(got)))
        shapes.add(type(json.loads(path.read_text())).__name__)
    assert shapes == {"list", "dict"}


json_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
json_records = st.lists(
    st.fixed_dictionaries(
        {"id": json_text, "content": json_text},
        optional={
            "metadata": st.dictionaries(
                json_text, st.integers() | json_text | st.floats(-1e9, 1e9), max_size=3
            )
        },
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=json_records,
    shape=st.sampled_from(["list", "object", "object-after"]),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
    chunk=st.integers(1, 64),
)
def test_any_json_list_reads_back_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[dict[str, Any]],
    shape: str,
    indent: int | None,
    ascii_only: bool,
    chunk: int,
) -> None:
    # Chunk boundaries fall inside multi-byte characters, numbers, escapes and keys.
    value: Any = records
    if shape == "object":
        value = {"documents": records, "version": 2}
    elif shape == "object-after":
        value = {"source": {"kind": "faiss", "n": [1, 2]}, "documents": records}
    path = tmp_path_factory.mktemp("h") / "f.json"
    path.write_text(json.dumps(value, indent=indent, ensure_ascii=ascii_only), encoding="utf-8")
    original = readers_module._CHUNK
    readers_module._CHUNK = chunk
    try:
        got = list(read_records(source_file(path)))
    finally:
        readers_module._CHUNK = original
    assert [g.value for g in got if isinstance(g, RawRecord)] == records
    assert [g for g in got if isinstance(g, ReadProblem)] == []


def test_jsonl_bad_lines_are_records_with_problems_and_the_rest_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_bytes(
        b'{"id": "n1", "content": "first"}\n'
        b"\n"
        b'{"id": "n2", "content": \n'
        b'{"id": "n3", "content": "caf\xe9"}\n'
        b'{"id": "n4", "content": "last"}\n'
    )
    got = list(read_records(source_file(path)))
    summary = [
        (g.position, g.line, g.value["id"]) if isinstance(g, RawRecord) else (g.position, g.line, g.code)
        for g in got
    ]
    assert summary == [(0, 1, "n1"), (1, 3, "invalid_json"), (2, 4, "not_utf8"), (3, 5, "n4")]
    assert not any(g.fatal for g in got if isinstance(g, ReadProblem))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("problem", "empty")),
        ("   \n", ("problem", "empty")),
        ('"just a string"', ("problem", "not_a_list")),
        ("[]", ()),
        ('{"items2": [{"content": "x"}]}', ("problem", "not_a_list")),
        ('{"id": "one", "content": "a whole file is one record", "tags": ["a"]}', ("record", "one")),
        ('\ufeff[{"id": "bom", "content": "byte order mark"}]', ("record", "bom")),
        ('[{"id": "a", "content": "x"}] trailing', ("record", "a", "problem", "invalid_json")),
        ('[{"id": "a", "content": "x"},', ("record", "a", "problem", "truncated")),
        ('[{"id": "a", "content": "x"} {"id": "b"}]', ("record", "a", "problem", "invalid_json")),
    ],
)
def test_json_file_shapes_and_file_level_problems(
    tmp_path: Path, text: str, expected: tuple[str, ...]
) -> None:
    path = tmp_path / "f.json"
    path.write_text(text, encoding="utf-8")
    got: list[str] = []
    for item in read_records(source_file(path)):
        got += ["record", item.value["id"]] if isinstance(item, RawRecord) else ["problem", item.code]
    assert tuple(got) == expected


def test_discover_orders_files_and_skips_hidden_folders(tmp_path: Path) -> None:
    for name in ["b.json", "a/z.jsonl", "a/y.json", ".supa-vectors/migrations/x.json", "notes.txt"]:
        write_json(tmp_path / name, [])
    assert [f.key for f in discover([tmp_path])] == ["a/y.json", "a/z.jsonl", "b.json"]
    assert [f.key for f in discover([tmp_path / "b.json", tmp_path])] == ["b.json", "a/y.json", "a/z.jsonl"]
    with pytest.raises(InvalidInputError, match="no such file"):
        discover([tmp_path / "missing"])


# --------------------------------------------------------------------------------------------------
# Validation


def rules(**kwargs: Any) -> Rules:
    from supa_vectors._core.settings import StoreSettings

    return Rules(settings=StoreSettings("sentence-transformers/all-MiniLM-L6-v2", 384), **kwargs)


def check(value: Any, *, key: str = "f.json", **kwargs: Any) -> Any:
    raw = RawRecord(SourceFile(0, Path(key), key, key, 0), 0, 1, value, 0)
    return validate(raw, rules(**kwargs))


def test_ids_come_from_the_configured_fields_or_are_derived_stably() -> None:
    assert check({"id": "x", "content": "c"}).record.id == "x"
    assert check({"page_content": "c", "metadata": {"doc_id": "from-meta"}}).record.id == "from-meta"
    custom = FieldMap(id=("uuid",), content=("body",), metadata=("meta",))
    got = check({"uuid": "u1", "body": "b", "meta": {"k": 1}}, fields=custom).record
    assert (got.id, got.content, got.metadata) == ("u1", "b", {"k": 1})
    derived = check({"content": "same text"}, key="notes/a.json").record.id
    assert (
        derived
        == derived_id("notes/a.json", "same text")
        == check({"content": "same text"}, key="notes/a.json").record.id
    )
    assert derived != check({"content": "same text"}, key="notes/b.json").record.id
    assert derived != check({"content": "other text"}, key="notes/a.json").record.id


def test_vectors_are_reused_only_when_they_are_the_stores_model_and_dimension() -> None:
    good = [0.1] * 384
    assert check({"content": "c", "embedding": good}).record.embedding is None  # model unknown
    assert check({"content": "c", "embedding": good}).unknown_model_vector
    named = check(
        {"content": "c", "embedding": good}, embeddings_model="sentence-transformers/all-MiniLM-L6-v2"
    )
    assert named.record.embedding is not None
    assert not named.issues
    other = check({"content": "c", "embedding": good, "embedding_model": "text-embedding-ada-002"})
    assert other.record.embedding is None
    assert [i.code for i in other.issues] == ["embedding_recomputed"]
    rejected = check({"content": "c", "embedding": [0.1] * 1536}, embedding_mismatch="reject")
    assert rejected.record is None
    assert "1536 dimensions" in rejected.issues[0].reason


# --------------------------------------------------------------------------------------------------
# Whole runs


def test_examples_land_with_provenance_and_answer_a_search(db: str, state: Path) -> None:
    with store_for(db) as store:
        report = migrate([EXAMPLES], store, state_dir=state)
        assert report.status == "completed"
        assert report.all_landed
        assert report.exit_code == 0
        assert (report.counts.inserted, report.counts.updated, report.counts.unchanged) == (14, 0, 0)
        assert report.verify is not None
        assert report.verify.ok
        assert report.verify.matched == 14
        hits = store.search("cold coffee served over ice", k=3)
    assert hits[0].id == "brewing/cold-brew"
    assert {f.path: f.inserted for f in report.files} == {
        str(EXAMPLES / "brewing.json"): 8,
        str(EXAMPLES / "roasting.json"): 6,
    }
    # Both shapes: the list's ids, and the LangChain records' metadata.doc_id.
    assert "roasting/first-crack" in stored(db)
    assert stored(db)["roasting/first-crack"][1]["title"] == "First crack"
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in EXAMPLES.glob("*.json")}
    provenance = rows(
        db,
        "select d.external_id, m.source_file, m.source_checksum, m.ingest_run_id, m.extra"
        " from public.documents d join public.document_metadata m on m.document_id = d.id",
    )
    assert len(provenance) == 14
    for external_id, source, checksum, run, extra in provenance:
        assert Path(source).parent == EXAMPLES
        assert checksum == sha[Path(source).name]
        assert run == report.run_id
        assert extra["position"] == [
            r.get("id") or r["metadata"]["doc_id"] for r in records_of(Path(source))
        ].index(external_id)
    assert rows(db, "select status, (summary->>'inserted')::int from public.ingest_runs") == [
        ("completed", 14)
    ]


WRITTEN_STATE = """
select d.external_id, d.updated_at, m.ingest_run_id, m.updated_at, e.created_at
  from public.documents d
  join public.document_metadata m on m.document_id = d.id
  join public.embeddings e on e.document_id = d.id
 order by 1"""


def test_a_second_run_changes_nothing_and_embeds_nothing(db: str, state: Path) -> None:
    with store_for(db) as store:
        first = migrate([EXAMPLES], store, state_dir=state)
    snapshot = rows(
        db,
        WRITTEN_STATE,
    )
    embedder = FakeEmbedder()
    with store_for(db, embedder) as store:
        second = migrate([EXAMPLES], store, state_dir=state)
    assert (second.counts.inserted, second.counts.updated, second.counts.unchanged) == (0, 0, 14)
    assert second.exit_code == 0
    assert second.run_id != first.run_id
    assert embedder.calls == 0
    assert (
        rows(
            db,
            WRITTEN_STATE,
        )
        == snapshot
    )
    assert rows(db, "select count(*) from public.document_history where run_id = %s", second.run_id) == [(0,)]


def test_dry_run_validates_and_predicts_without_writing(db: str, state: Path, tmp_path: Path) -> None:
    with store_for(db) as store:
        store.upsert([{"id": "brewing/espresso", "content": "an older text"}])
        source = tmp_path / "src"
        shutil.copytree(EXAMPLES, source)
        shutil.copy(BAD / "missing-content.json", source / "zz-missing-content.json")
        before = stored(db)
        embedder_calls = store.embedder.calls  # type: ignore[attr-defined]
        report = migrate([source], store, state_dir=state, dry_run=True)
        assert store.embedder.calls == embedder_calls  # type: ignore[attr-defined]
    assert report.status == "dry_run"
    assert (report.counts.inserted, report.counts.updated, report.counts.unchanged) == (14, 1, 0)
    assert report.counts.rejected == 1
    assert report.exit_code == 3
    assert [(p.file.endswith("zz-missing-content.json"), p.position, p.code) for p in report.problems] == [
        (True, 0, "missing_content")
    ]
    assert stored(db) == before
    assert not state.exists()
    assert rows(db, "select count(*) from public.ingest_runs") == [(0,)]


def test_backup_archives_every_source_file_with_its_checksum(db: str, state: Path) -> None:
    with store_for(db) as store:
        report = migrate([EXAMPLES, BAD / "truncated.json"], store, state_dir=state)
    assert report.backup is not None
    manifest = json.loads(Path(report.backup["manifest"]).read_text())
    assert manifest["run_id"] == report.run_id
    with tarfile.open(report.backup["archive"]) as tar:
        assert json.loads(tar.extractfile("MANIFEST.json").read()) == manifest  # type: ignore[union-attr]
        for entry in manifest["files"]:
            original = Path(entry["path"]).read_bytes()
            assert entry["sha256"] == hashlib.sha256(original).hexdigest()
            assert tar.extractfile(entry["archived_as"]).read() == original  # type: ignore[union-attr]
    assert len(manifest["files"]) == 3
    with store_for(db) as store:
        skipped = migrate([EXAMPLES], store, state_dir=state, backup=False)
    assert skipped.backup is None
    assert not (state / skipped.run_id / "backup.tar.gz").exists()


EXPECTED_BAD = {
    # file: (position or None for the whole file, severity, code, lands)
    "deep-metadata.json": [(0, "error", "metadata_too_deep")],
    "duplicate-ids.json": [(1, "error", "duplicate_id")],
    "empty-content.json": [(0, "error", "empty_content")],
    "empty.json": [(None, "error", "empty")],
    "huge-content.json": [(0, "error", "content_too_large")],
    "missing-content.json": [(0, "error", "missing_content")],
    "nan-embedding.json": [(0, "warning", "embedding_recomputed")],
    "not-a-list.json": [(None, "error", "not_a_list")],
    "not-utf8.json": [(None, "error", "not_utf8")],
    "nul-character.json": [(0, "error", "nul_character")],
    "truncated.json": [(None, "error", "truncated")],
    "wrong-embedding-dim.json": [(0, "warning", "embedding_recomputed")],
    "wrong-types.json": [(0, "error", "invalid_content"), (1, "error", "invalid_content")],
}
GOOD_IN_BAD = {"e1": "first version", "b2": None, "i1": None, "a1": None, "h1": None}


def test_every_bad_file_gives_its_own_clear_error_while_good_records_land_once(db: str, state: Path) -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(EXPECTED_BAD)
    with store_for(db) as store:
        report = migrate([BAD, EXAMPLES], store, state_dir=state)
    found: dict[str, list[tuple[int | None, str, str]]] = {}
    for problem in report.problems:
        found.setdefault(Path(problem.file).name, []).append(
            (problem.position, problem.severity, problem.code)
        )
        assert problem.reason
        assert problem.file
    assert found == EXPECTED_BAD
    # Good records (the bad files' good neighbours included) landed exactly once.
    landed = stored(db)
    assert set(landed) == set(GOOD_IN_BAD) | {
        r.get("id") or r["metadata"]["doc_id"] for p in EXAMPLES.glob("*.json") for r in records_of(p)
    }
    assert landed["e1"][0] == "first version"
    assert rows(db, "select count(*), count(distinct external_id) from public.documents") == [(19, 19)]
    assert rows(db, "select count(*) from public.embeddings") == [(19,)]
    assert report.counts.inserted == 19
    assert report.counts.rejected == 8
    assert report.counts.file_errors == 4
    assert report.exit_code == 3
    assert not report.all_landed
    # The JSON report names every problem with file, position and reason; the reasons say why.
    on_disk = json.loads(Path(report.report_path or "").read_text())
    assert len(on_disk["problems"]) == report.problems_total == 14
    reasons = {Path(p["file"]).name: p["reason"] for p in on_disk["problems"]}
    assert "2,400,000 bytes" in reasons["huge-content.json"]
    assert "NUL" in reasons["nul-character.json"]
    assert "UTF-8" in reasons["not-utf8.json"]
    assert "1536 dimensions" in reasons["wrong-embedding-dim.json"]
    assert "NaN" in reasons["nan-embedding.json"]
    assert "already appeared" in reasons["duplicate-ids.json"]
    truncated = next(f for f in on_disk["files"] if f["path"].endswith("truncated.json"))
    assert (truncated["inserted"], truncated["error"]) == (
        1,
        "the file ends in the middle of record 1 (truncated JSON)",
    )


def test_mismatched_vectors_can_be_rejected_instead(db: str, state: Path) -> None:
    with store_for(db) as store:
        report = migrate(
            [BAD / "nan-embedding.json", BAD / "wrong-embedding-dim.json", EXAMPLES],
            store,
            state_dir=state,
            embedding_mismatch="reject",
        )
    assert sorted((Path(p.file).name, p.code) for p in report.problems) == [
        ("nan-embedding.json", "embedding_mismatch"),
        ("wrong-embedding-dim.json", "embedding_mismatch"),
    ]
    assert "i1" not in stored(db)
    assert "h1" not in stored(db)
    assert len(stored(db)) == 14


def test_vectors_of_the_stores_model_are_reused_not_recomputed(db: str, state: Path, tmp_path: Path) -> None:
    fake = FakeEmbedder()
    vector = fake.vector("something else entirely")
    write_json(
        tmp_path / "v.json", [{"id": "v1", "content": "with its own vector", "embedding": vector.tolist()}]
    )
    embedder = FakeEmbedder()
    with store_for(db, embedder) as store:
        report = migrate(
            [tmp_path / "v.json"],
            store,
            state_dir=state,
            embeddings_model="sentence-transformers/all-MiniLM-L6-v2",
        )
    assert report.counts.reused_embeddings == 1
    assert report.counts.embedded == 0
    assert embedder.calls == 0
    got = rows(db, "select e.embedding::text from public.embeddings e")[0][0]
    assert np.allclose(np.array(json.loads(got)), vector, atol=1e-6)


class _RefusingTransport:
    """The real transport, but store_settings claims a bigger content limit than the server enforces,
    so a record passes the client's checks and the server refuses it inside a batch."""

    def __init__(self, url: str, *, fail_first_writes: int = 0) -> None:
        self._inner = PostgresTransport(url)
        self.identity = self._inner.identity
        self.fail_first_writes = fail_first_writes

    @property
    def identity_fingerprint(self) -> str:
        return self._inner.identity_fingerprint

    def rpc(self, name: str, params: Any) -> Any:
        if name == "bulk_upsert" and self.fail_first_writes:
            self.fail_first_writes -= 1
            raise BackendUnavailableError("connection reset (injected)")
        reply = self._inner.rpc(name, params)
        if name == "store_settings":
            reply = {**reply, "max_content_bytes": 10_000_000}
        return reply

    def close(self) -> None:
        self._inner.close()


def test_a_record_the_server_refuses_is_reported_and_its_batch_still_lands(db: str, state: Path) -> None:
    store = VectorStore(_RefusingTransport(db, fail_first_writes=2), embedder=FakeEmbedder())  # type: ignore[arg-type]
    with store:
        report = migrate(
            [EXAMPLES / "brewing.json", BAD / "huge-content.json", EXAMPLES / "roasting.json"],
            store,
            state_dir=state,
            batch_size=500,
            retry=Retry(attempts=3, base=0.01),
        )
    assert [(Path(p.file).name, p.code) for p in report.problems] == [
        ("huge-content.json", "rejected_by_store")
    ]
    assert "content has 2400000 bytes" in report.problems[0].reason
    assert report.counts.inserted == 14
    assert len(stored(db)) == 14


class _FlakyTransport(_RefusingTransport):
    """Loses the database for good at the ``lose_at``-th bulk_upsert (and reports the real settings)."""

    def __init__(self, url: str, lose_at: int) -> None:
        super().__init__(url)
        self.lose_at = lose_at
        self.writes = 0

    def rpc(self, name: str, params: Any) -> Any:
        if name == "bulk_upsert":
            self.writes += 1
            if self.writes >= self.lose_at:
                raise BackendUnavailableError("the database connection failed (injected)")
        return self._inner.rpc(name, params)


def many_records(directory: Path, files: int = 3, per_file: int = 30) -> Path:
    for f in range(files):
        write_json(
            directory / f"f{f}.json",
            [{"id": f"r{f}-{i}", "content": f"record {i} of file {f}"} for i in range(per_file)],
        )
    return directory


def test_a_lost_connection_stops_the_run_and_resume_finishes_it(db: str, state: Path, tmp_path: Path) -> None:
    source = many_records(tmp_path / "src")
    flaky = VectorStore(_FlakyTransport(db, lose_at=3), embedder=FakeEmbedder())  # type: ignore[arg-type]
    with flaky, pytest.raises(BackendUnavailableError, match="injected"):
        migrate([source], flaky, state_dir=state, batch_size=20, retry=Retry(attempts=0))
    (run_id,) = [p.name for p in state.iterdir()]
    report = json.loads((state / run_id / "report.json").read_text())
    assert report["status"] == "failed"
    assert "injected" in report["error"]
    assert len(stored(db)) == 40  # two batches: the first (20) and the second
    with store_for(db) as store:
        with pytest.raises(InvalidInputError, match="resume it without paths or with the same ones"):
            migrate([EXAMPLES], store, state_dir=state, resume=run_id)
        resumed = migrate(None, store, state_dir=state, resume=True)
        assert resumed.resumed
        assert resumed.run_id == run_id
        assert resumed.all_landed
        assert (resumed.counts.inserted, resumed.counts.unchanged) == (90, 0)
        assert len(stored(db)) == 90
        with pytest.raises(InvalidInputError, match="already completed"):
            migrate(None, store, state_dir=state, resume=run_id)
        with pytest.raises(InvalidInputError, match="no unfinished run"):
            migrate(None, store, state_dir=state, resume=True)


def test_several_embedding_workers_still_write_in_source_order(db: str, state: Path, tmp_path: Path) -> None:
    source = many_records(tmp_path / "src", files=4, per_file=25)
    with store_for(db) as store:
        report = migrate([source], store, state_dir=state, batch_size=7, workers=3)
    assert report.all_landed
    assert report.counts.inserted == 100
    # Batches commit in order, so insertion order (the identity column) is source order.
    ids = [r[0] for r in rows(db, "select external_id from public.documents order by id")]
    assert ids == [f"r{f}-{i}" for f in range(4) for i in range(25)]


def test_resume_refuses_a_source_that_changed_since(db: str, state: Path, tmp_path: Path) -> None:
    source = many_records(tmp_path / "src")
    flaky = VectorStore(_FlakyTransport(db, lose_at=2), embedder=FakeEmbedder())  # type: ignore[arg-type]
    with flaky, pytest.raises(BackendUnavailableError):
        migrate([source], flaky, state_dir=state, batch_size=20, retry=Retry(attempts=0))
    write_json(source / "f1.json", [{"id": "new", "content": "edited after the crash"}])
    with store_for(db) as store, pytest.raises(InvalidInputError, match=r"the source changed .*f1\.json"):
        migrate(None, store, state_dir=state, resume=True)


def test_progress_on_a_terminal_is_a_live_bar_and_otherwise_log_lines() -> None:
    from supa_vectors.migrate import LogProgress, progress_for

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress_for(Terminal())
    # rich is optional (a live bar when it is installed, log lines otherwise).
    assert type(bar).__name__ == ("_RichProgress" if importlib.util.find_spec("rich") else "LogProgress")
    bar.start(total_bytes=1000, files=2, run_id="r", resumed=False)
    bar.advance(documents=10, bytes_done=500)
    bar.note("hello")
    bar.finish()
    log = io.StringIO()
    lines = LogProgress(log, interval=0)
    lines.start(total_bytes=1000, files=2, run_id="r1", resumed=True)
    lines.advance(documents=10, bytes_done=500)
    text = log.getvalue()
    assert "resuming run r1: 2 files, 1,000 bytes" in text
    assert "10 documents (50% of the source)" in text
    assert "documents/s, ETA" in text
    assert isinstance(progress_for(io.StringIO()), LogProgress)


def test_verify_says_exactly_what_differs(db: str, state: Path) -> None:
    with store_for(db) as store:
        migrate([EXAMPLES], store, state_dir=state)
        store.upsert(
            [{"id": "brewing/espresso", "content": "changed in the store", "metadata": {"title": "Espresso"}}]
        )
        espresso = records_of(EXAMPLES / "brewing.json")[0]
        water = records_of(EXAMPLES / "brewing.json")[6]
        store.upsert(
            [
                {
                    "id": water["id"],
                    "content": water["content"],
                    "metadata": {**water["metadata"], "title": "Hot water"},
                }
            ]
        )
        store.delete("roasting/decaf")
        result = verify([EXAMPLES], store)
    assert not result.ok
    assert result.exit_code == 4
    assert (
        result.checked,
        result.matched,
        result.missing,
        result.content_differs,
        result.metadata_differs,
    ) == (14, 11, 1, 1, 1)
    diffs = {(Path(d.file).name, d.position, d.id, d.kind) for d in result.differences}
    assert diffs == {
        ("brewing.json", 0, espresso["id"], "content_differs"),
        ("brewing.json", 6, "brewing/water", "metadata_differs"),
        ("roasting.json", 5, "roasting/decaf", "missing"),
    }
    detail = next(d.detail for d in result.differences if d.kind == "metadata_differs")
    assert detail == "title: source 'Water temperature and quality', store 'Hot water'"
    per_file = {Path(f.path).name: (f.records, f.matched, f.missing, f.differs) for f in result.files}
    assert per_file == {"brewing.json": (8, 6, 0, 2), "roasting.json": (6, 5, 1, 0)}


def embedding_of(url: str, external_id: str) -> npt.NDArray[np.float32]:
    text = rows(
        url,
        "select e.embedding::text from public.embeddings e join public.documents d on d.id = e.document_id"
        " where d.external_id = %s",
        external_id,
    )[0][0]
    return np.array(json.loads(text), dtype=np.float32)


PROVENANCE_OF_X = """
select m.source_file, m.source_checksum, m.ingest_run_id
  from public.document_metadata m join public.documents d on d.id = m.document_id
 where d.external_id = 'x'"""


def test_rollback_restores_the_previous_state_of_an_updated_document(
    db: str, state: Path, tmp_path: Path
) -> None:
    fake = FakeEmbedder()
    with store_for(db, fake) as store:
        # Before the run: "x" as the app left it (with provenance from an earlier run), and "z".
        first = tmp_path / "old" / "docs.json"
        write_json(
            first,
            [
                {"id": "x", "content": "old text of x", "metadata": {"v": 0}},
                {"id": "z", "content": "z stays"},
            ],
        )
        earlier = migrate([first.parent], store, state_dir=state)
        before_docs = stored(db)
        before_meta = rows(
            db,
            PROVENANCE_OF_X,
        )
        before_vector = embedding_of(db, "x")

        new = write_json(
            tmp_path / "new" / "docs.json",
            [
                {"id": "x", "content": "new text of x", "metadata": {"v": 1}},
                {"id": "y", "content": "y is new"},
            ],
        )
        run = migrate([new.parent], store, state_dir=state)
        assert (run.counts.inserted, run.counts.updated) == (1, 1)
        assert stored(db)["x"] == ("new text of x", {"v": 1})
        assert not np.allclose(embedding_of(db, "x"), before_vector)

        undone = rollback(run.run_id, store)
        assert (undone.deleted, undone.restored, undone.conflicts) == (1, 1, [])
        assert stored(db) == before_docs
        assert np.allclose(embedding_of(db, "x"), before_vector)
        assert (
            rows(
                db,
                PROVENANCE_OF_X,
            )
            == before_meta
        )
        assert before_meta[0][2] == earlier.run_id
        assert rollback(run.run_id, store).already_rolled_back
        assert rows(db, "select status from public.ingest_runs where run_id = %s", run.run_id) == [
            ("rolled_back",)
        ]
        # What the rolled-back run wrote is gone: verifying its source now finds x differing and y missing.
        check = verify([new.parent], store)
        assert (check.content_differs, check.missing) == (1, 1)


def test_rollback_leaves_documents_changed_since_the_run_unless_forced(
    db: str, state: Path, tmp_path: Path
) -> None:
    with store_for(db) as store:
        store.upsert([{"id": "x", "content": "v0"}])
        run = migrate(
            [write_json(tmp_path / "a.json", [{"id": "x", "content": "v1"}])], store, state_dir=state
        )
        store.upsert([{"id": "x", "content": "v2 by the app"}])
        undone = rollback(run.run_id, store)
        assert (undone.restored, undone.conflicts, undone.exit_code) == (0, ["x"], 4)
        assert stored(db)["x"][0] == "v2 by the app"
        forced = rollback(run.run_id, store, force=True)
        assert (forced.restored, forced.conflicts) == (1, [])
        assert stored(db)["x"][0] == "v0"


def test_runs_and_history_follow_row_level_security(db: str, state: Path, tmp_path: Path) -> None:
    source = write_json(tmp_path / "mine.json", [{"id": "m1", "content": "user A's note"}])
    user_a = VectorStore.from_url(db, embedder=FakeEmbedder(), identity=Identity.user(USER_A))
    user_b = VectorStore.from_url(db, embedder=FakeEmbedder(), identity=Identity.user(USER_B))
    anonymous = VectorStore.from_url(db, embedder=FakeEmbedder(), identity=Identity.anonymous())
    with user_a, user_b, anonymous:
        run = migrate([source], user_a, state_dir=state)
        assert run.all_landed
        assert rows(db, "select owner_id::text from public.documents") == [(USER_A,)]
        assert rows(db, "select owner_id::text, action from public.document_history") == [
            (USER_A, "inserted")
        ]
        assert [r["run_id"] for r in runs(user_a)] == [run.run_id]
        assert runs(user_b) == []
        with pytest.raises(InvalidInputError, match="not yours"):
            rollback(run.run_id, user_b)
        with pytest.raises(AuthError):
            rollback(run.run_id, anonymous)
        assert verify([source], user_b).missing == 1  # B cannot see A's document
        assert rollback(run.run_id, user_a).deleted == 1
    assert stored(db) == {}


def test_a_users_run_of_the_same_name_never_reaches_the_operators_run(
    db: str, state: Path, tmp_path: Path
) -> None:
    """Issue 10: B reads the service run's id from document_metadata and writes under it; the
    operator's ``runs`` and ``rollback`` still see only what the service run wrote."""
    service = store_for(db)
    user_b = VectorStore.from_url(db, embedder=FakeEmbedder(), identity=Identity.user(USER_B))
    with service, user_b:
        service.upsert([{"id": "handbook", "content": "The handbook"}])
        run = migrate(
            [write_json(tmp_path / "guide.json", [{"id": "guide", "content": "The guide"}])],
            service,
            state_dir=state,
        )
        note = {
            "external_id": "p1",
            "content": "B's note",
            "embedding": FakeEmbedder().vector("B").tolist(),
            "system": {"ingest_run_id": run.run_id},
        }
        assert user_b.transport.rpc("bulk_upsert", {"documents": [note]})[0]["status"] == "inserted"
        with psycopg.connect(db) as conn:
            act_as(conn, Identity.user(USER_B))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    "insert into public.document_history (run_id, document_id, owner_id, external_id, action,"
                    " model, previous_content, previous_metadata, written_hash, written_metadata)"
                    " select %s, id, %s, 'p2', 'updated', 'm', 'Handbook replaced by user B',"
                    " '{\"evil\": true}', content_hash, metadata from public.documents"
                    " where external_id = 'handbook'",
                    (run.run_id, USER_B),
                )
        theirs = [
            (r["owner_id"], r["inserted"], r["updated"]) for r in runs(service) if r["run_id"] == run.run_id
        ]
        assert set(theirs) == {(None, 1, 0), (USER_B, 1, 0)}
        assert [(r["run_id"], r["inserted"]) for r in runs(user_b)] == [(run.run_id, 1)]
        undone = rollback(run.run_id, service, force=True)
        assert (undone.deleted, undone.restored, undone.conflicts) == (1, 0, [])
        # The operator's run of that name, not B's (still running, and newer), is the one reported on.
        assert rollback(run.run_id, service).already_rolled_back
    assert stored(db) == {"handbook": ("The handbook", {}), "p1": ("B's note", {})}


# --------------------------------------------------------------------------------------------------
# The command


def run_cli(argv: Sequence[str], embedder: Any = None) -> tuple[int, str]:
    args = build_parser().parse_args(["migrate", *argv])
    out = io.StringIO()
    code = migrate_command(args, embedder=embedder or FakeEmbedder(), out=out)
    return code, out.getvalue()


def test_cli_migrate_verify_runs_and_rollback(db: str, state: Path) -> None:
    common = ["--database-url", db, "--state-dir", str(state)]
    code, text = run_cli([str(EXAMPLES), *common])
    assert code == 0
    assert "14 landed (14 inserted, 0 updated, 0 unchanged)" in text
    assert "verify passed" in text
    run_id = text.split()[1].rstrip(":")
    code, text = run_cli([str(EXAMPLES), "--json", *common])
    report = json.loads(text)
    assert code == 0
    assert report["counts"]["unchanged"] == 14
    assert report["problems"] == []
    code, text = run_cli(["verify", *common])  # the newest run's paths and options
    assert code == 0
    assert text.startswith("verify passed: 14 records checked, 14 match")
    code, text = run_cli(["runs", *common])
    assert code == 0
    assert run_id in text
    assert text.splitlines()[1].endswith("service role")  # runs are per owner; this one is the operator's
    code, text = run_cli(["rollback", run_id, *common])
    assert code == 0
    assert "14 documents deleted" in text
    assert stored(db) == {}
    code, text = run_cli([str(EXAMPLES), str(BAD / "empty.json"), *common])
    assert code == 3
    assert "the file is empty" in text
    code, text = run_cli([str(EXAMPLES), "--dry-run", *common])
    assert code == 0
    assert "would land" in text
    with pytest.raises(InvalidInputError, match="no unfinished run"):
        run_cli(["--resume", *common])


def test_cli_rejects_nonsense_before_doing_anything(db: str, state: Path) -> None:
    common = ["--database-url", db, "--state-dir", str(state)]
    with pytest.raises(InvalidInputError, match="give one or more PATHs"):
        run_cli(common)
    with pytest.raises(InvalidInputError, match="no such file"):
        run_cli([str(EXAMPLES / "missing"), *common])
    with pytest.raises(InvalidInputError, match="batch_size"):
        run_cli([str(EXAMPLES), "--batch-size", "5000", *common])
    with pytest.raises(InvalidInputError, match="rollback"):
        run_cli(["rollback", *common])
    assert not state.exists() or not any(state.iterdir())


# --------------------------------------------------------------------------------------------------
# Memory


class _QuietEmbedder(FakeEmbedder):
    """FakeEmbedder without its record of every text (which would itself grow with the corpus)."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)


def synthetic_corpus(directory: Path, copies: int) -> int:
    """``copies`` times the first 100 shared-corpus sections, in 4 files (the file count stays fixed)."""
    sections = []
    for path in sorted(POSTGRES_DOCS.glob("*.json"))[:30]:
        for record in records_of(path):
            sections.append((record.get("content") or record["page_content"], record["metadata"]))
    sections = sections[:100]
    per_file = copies * len(sections) // 4
    n = 0
    for f in range(4):
        records = []
        for i in range(per_file):
            content, metadata = sections[(f * per_file + i) % len(sections)]
            records.append({"id": f"s{n}", "content": f"{content} [{n}]", "metadata": metadata})
            n += 1
        write_json(directory / f"part-{f}.json", records)
    return n


def peak_memory(url: str, source: Path, state: Path) -> tuple[int, int]:
    empty(url)
    with store_for(url, _QuietEmbedder()) as store:
        store.settings()
        tracemalloc.start()
        try:
            report = migrate([source], store, state_dir=state, batch_size=128, bulk_load=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert report.all_landed
    return peak, report.counts.inserted


def test_memory_stays_flat_as_the_corpus_grows_tenfold(module_db: str, tmp_path: Path) -> None:
    one, ten = tmp_path / "x1", tmp_path / "x10"
    assert synthetic_corpus(one, 5) == 500
    assert synthetic_corpus(ten, 50) == 5000
    peak_1, landed_1 = peak_memory(module_db, one, tmp_path / "s1")
    peak_10, landed_10 = peak_memory(module_db, ten, tmp_path / "s10")
    assert (landed_1, landed_10) == (500, 5000)
    source_10 = sum(p.stat().st_size for p in ten.iterdir())
    # Ten times the documents (~9 MB of JSON) cost well under twice the memory: nothing grows with N.
    assert peak_10 < 2 * peak_1, (peak_1, peak_10)
    assert peak_10 < source_10 / 2, (peak_10, source_10)
