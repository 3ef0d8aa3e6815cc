"""Backups that restore (issue 15, part 4): ``store.backup(path)`` / ``store.restore(path)``.

Against the real local Postgres: over the Postgres transport directly, and over the PostgREST
transport through a bridge that answers supabase-py's requests the way PostgREST does (the RPC run as
the JWT's role with its claims, rows as JSON, vectors as pgvector's text). Vectors come from the test
suite's FakeEmbedder (the model over 2,889 sections would take minutes); the documents are the shared
corpus's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
import respx
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo
from supabase import Client, ClientOptions

from supa_vectors import (
    ArchiveError,
    AsyncVectorStore,
    AuthError,
    BackupError,
    Identity,
    InvalidInputError,
    PostgresTransport,
    PostgrestTransport,
    VectorStore,
)
from tests.conftest import REPO_ROOT, USER_A, USER_B, FakeEmbedder, empty_store
from tests.test_offline import load_corpus
from tests.test_postgrest_transport import ANON_KEY, URL, make_jwt

pytestmark = pytest.mark.filterwarnings("ignore:The '(timeout|verify)' parameter is deprecated")

CORPUS = load_corpus()
_VECTORS: dict[str, list[float]] = {}


def with_vectors(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents with the FakeEmbedder's vectors, computed once per session (2.5 s for the corpus)."""
    missing = [d for d in documents if d["id"] not in _VECTORS]
    if missing:
        vectors = FakeEmbedder().embed([d["content"] for d in missing])
        _VECTORS.update({d["id"]: v.tolist() for d, v in zip(missing, vectors, strict=True)})
    return [{**d, "embedding": _VECTORS[d["id"]]} for d in documents]


def service_store(url: str) -> VectorStore:
    return VectorStore.from_url(url, embedder=FakeEmbedder(), cache="off")


def user_store(url: str, user: str) -> VectorStore:
    return VectorStore(
        PostgresTransport(url, identity=Identity.user(user)), embedder=FakeEmbedder(), cache="off"
    )


def stored(url: str) -> dict[tuple[str | None, str], tuple[str, Any, Any, bytes | None]]:
    """Every document as the table owner sees it: (owner, id) -> (content hash, metadata, system
    metadata, the vector's float32 bytes)."""
    with psycopg.connect(url) as conn:
        register_vector_info(conn, TypeInfo.fetch(conn, "extensions.vector"))
        rows = conn.execute(
            "select d.owner_id::text, d.external_id, d.content_hash, d.metadata,"
            " case when m.document_id is not null then jsonb_build_object('source_file', m.source_file,"
            " 'chunk_index', m.chunk_index, 'extra', m.extra) end, e.embedding"
            " from public.documents d left join public.document_metadata m on m.document_id = d.id"
            " left join public.embeddings e on e.document_id = d.id",
            binary=True,  # vectors as float32, bit for bit
        ).fetchall()
    found: dict[tuple[str | None, str], tuple[str, Any, Any, bytes | None]] = {}
    for owner, doc_id, digest, metadata, system, vector in rows:
        assert (owner, doc_id) not in found, f"duplicate {(owner, doc_id)}"
        found[(owner, doc_id)] = (
            digest,
            metadata,
            system,
            None if vector is None else vector.to_numpy().astype(np.float32).tobytes(),
        )
    return found


def archived(path: Path) -> list[dict[str, Any]]:
    manifest = json.loads((path / "manifest.json").read_text())
    lines: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        lines += [json.loads(line) for line in (path / entry["name"]).read_text("utf-8").splitlines()]
    return lines


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


# ------------------------------------------------------------------------------------------------
# the shared corpus, round trip


def test_corpus_round_trip_into_an_empty_store_is_exact(clean_url: str, tmp_path: Path) -> None:
    with service_store(clean_url) as store:
        store.upsert(with_vectors(CORPUS), bulk=True)
        # System metadata (where a document came from) travels too.
        sql(
            clean_url,
            "insert into public.document_metadata (document_id, source_file, chunk_index, extra)"
            " select id, 'manual/' || external_id || '.html', 0, '{\"k\": 1}' from public.documents"
            " where id %% 7 = 0",
        )
        before = stored(clean_url)
        result = store.backup(tmp_path / "archive", shard_size=1000)
        assert (result.documents, result.files, result.attempts) == (len(CORPUS), 3, 1)

        empty_store(clean_url)
        restored = store.restore(tmp_path / "archive")

    assert (restored.inserted, restored.verified) == (len(CORPUS), len(CORPUS))
    after = stored(clean_url)
    assert len(after) == len(CORPUS) == len(before)
    assert after == before  # content hash, metadata, system metadata and vector bytes, each exactly
    manifest = json.loads((tmp_path / "archive" / "manifest.json").read_text())
    assert (manifest["embedding_dimension"], manifest["documents"]) == (384, len(CORPUS))
    for entry in manifest["files"]:
        data = (tmp_path / "archive" / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_vectors_round_trip_bit_for_bit(clean_url: str, tmp_path: Path) -> None:
    """Values JSON or a careless float cast would change: subnormals, -0.0, the largest float32."""
    tricky = np.full(384, 0.1, dtype=np.float32)
    tricky[:5] = [np.float32(1e-45), np.float32(-0.0), np.finfo(np.float32).max, 1 / 3, -np.pi]
    with service_store(clean_url) as store:
        store.upsert({"id": "tricky", "content": "edge values", "embedding": tricky.tolist()})
        store.backup(tmp_path / "a")
        line = archived(tmp_path / "a")[0]
        assert base64.b64decode(line["embedding"]) == tricky.astype("<f4").tobytes()
        empty_store(clean_url)
        store.restore(tmp_path / "a")
    assert stored(clean_url)[(None, "tricky")][3] == tricky.tobytes()


def test_async_store_mirrors_backup_and_restore(clean_url: str, tmp_path: Path) -> None:
    import asyncio

    async def main() -> tuple[int, int]:
        async with AsyncVectorStore.from_url(clean_url, embedder=FakeEmbedder(), cache="off") as store:
            await store.upsert(CORPUS[:50])
            taken = await store.backup(tmp_path / "a")
            empty_store(clean_url)
            back = await store.restore(tmp_path / "a")
            return taken.documents, back.verified

    assert asyncio.run(main()) == (50, 50)


# ------------------------------------------------------------------------------------------------
# Row Level Security, over PostgREST (a bridge to the real database)


def _postgrest_bridge(url: str) -> Callable[[httpx.Request], httpx.Response]:
    """Answer ``POST /rest/v1/rpc/<fn>`` as PostgREST does: as the bearer token's role and claims,
    the JSON body's keys as named arguments, set-returning results as a JSON array of rows."""

    def answer(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[1]
        body = json.loads(request.content or b"{}")
        token = request.headers["authorization"].split()[1]
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        identity = Identity.from_claims(claims)
        assert identity is not None
        with psycopg.connect(url) as conn:
            names, types, returns_set = conn.execute(
                "select p.proargnames, array(select format_type(t, null) from unnest(p.proargtypes) t),"
                " p.proretset from pg_proc p"
                " where p.pronamespace = 'public'::regnamespace and p.proname = %s",
                (name,),
            ).fetchone() or (None, None, None)
            columns = [(n, t) for n, t in zip(names or [], types or [], strict=False) if n in body]
            record = ", ".join(f"{n} {t}" for n, t in columns) or "_ int"
            args = ", ".join(f"{n} => x.{n}" for n, _ in columns)
            source = f"json_to_record(%s::json) as x({record})"
            call = f"public.{name}({args})"
            query = (
                f"select coalesce(json_agg(r), '[]'::json) from {source} cross join lateral {call} r"
                if returns_set
                else f"select to_json({call}) from {source}"
            )
            try:
                conn.execute(
                    "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                    identity.sql_params(),
                )
                (value,) = conn.execute(query, (json.dumps(body),)).fetchone()  # type: ignore[misc]
            except psycopg.Error as exc:
                diag = exc.diag
                error = {
                    "code": diag.sqlstate,
                    "message": diag.message_primary,
                    "details": diag.message_detail,
                }
                return httpx.Response(403 if diag.sqlstate == "42501" else 400, json={**error, "hint": None})
            conn.commit()
        return httpx.Response(200, json=value)

    return answer


@pytest.fixture
def postgrest(clean_url: str) -> Iterator[Callable[[str], VectorStore]]:
    """Stores over the PostgREST transport, one per user (their JWT), answered by the bridge."""
    with respx.mock(base_url=f"{URL}/rest/v1", assert_all_called=False) as router:
        router.post(path__regex=r"/rpc/\w+").mock(side_effect=_postgrest_bridge(clean_url))
        http = httpx.Client()
        stores: list[VectorStore] = []

        def make(user: str) -> VectorStore:
            jwt = make_jwt({"sub": user, "role": "authenticated", "aud": "authenticated", "exp": 2000000000})
            client = Client(
                URL, ANON_KEY, ClientOptions(headers={"Authorization": f"Bearer {jwt}"}, httpx_client=http)
            )
            store = VectorStore(
                PostgrestTransport(client, max_attempts=1), embedder=FakeEmbedder(), cache="off"
            )
            stores.append(store)
            return store

        yield make
        for store in stores:
            store.close()
        http.close()


def test_a_users_backup_holds_only_their_documents_and_restores_as_the_restorer(
    clean_url: str, postgrest: Callable[[str], VectorStore], tmp_path: Path
) -> None:
    a, b = postgrest(USER_A), postgrest(USER_B)
    a.upsert(with_vectors(CORPUS[:40]))
    b.upsert(with_vectors(CORPUS[40:60]))
    with service_store(clean_url) as service:
        service.upsert(with_vectors(CORPUS[60:70]))  # shared: every user reads them, none owns them

    taken = b.backup(tmp_path / "b")
    assert taken.documents == 20
    assert {line["id"] for line in archived(tmp_path / "b")} == {d["id"] for d in CORPUS[40:60]}
    assert {line["owner_id"] for line in archived(tmp_path / "b")} == {USER_B}
    a.backup(tmp_path / "a")
    assert {line["owner_id"] for line in archived(tmp_path / "a")} == {USER_A}

    a_before = {key: value for key, value in stored(clean_url).items() if key[0] == USER_A}
    result = b.restore(tmp_path / "a")  # B restores A's archive: B's documents, never A's
    assert (result.inserted, result.verified) == (40, 40)
    after = stored(clean_url)
    assert {key: value for key, value in after.items() if key[0] == USER_A} == a_before
    restored_as_b = {key[1]: value for key, value in after.items() if key[0] == USER_B}
    assert len(restored_as_b) == 60
    for key, value in a_before.items():
        assert restored_as_b[key[1]] == value  # same content hash, metadata and vector bytes
    assert len(after) == 40 + 60 + 10


def test_the_service_role_backs_up_every_owner_and_restores_each_to_its_owner(
    clean_url: str, tmp_path: Path
) -> None:
    with user_store(clean_url, USER_A) as a, service_store(clean_url) as service:
        a.upsert(CORPUS[:5])
        service.upsert(CORPUS[:3])  # the same ids, shared: (owner, id) is the key
        before = stored(clean_url)
        assert service.backup(tmp_path / "all").documents == 8
        empty_store(clean_url)
        service.restore(tmp_path / "all")
    assert stored(clean_url) == before


def test_anon_can_neither_back_up_nor_restore(clean_url: str, tmp_path: Path) -> None:
    with service_store(clean_url) as service:
        service.upsert(CORPUS[:3])
        service.backup(tmp_path / "a")
    with VectorStore(PostgresTransport(clean_url, identity=Identity.anonymous()), cache="off") as anon:
        with pytest.raises(AuthError):
            anon.backup(tmp_path / "anon")
        with pytest.raises(AuthError):
            anon.restore(tmp_path / "a")
        assert not (tmp_path / "anon").exists()


# ------------------------------------------------------------------------------------------------
# damaged archives: refused before anything is written


# Each damages the last shard (documents 21 to 30).


def _flip_a_byte(path: Path) -> None:
    shard = path / "documents-000003.jsonl"
    data = bytearray(shard.read_bytes())
    at = data.index(b'"content":"') + 12
    data[at] ^= 0x01
    shard.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    shard = path / "documents-000003.jsonl"
    shard.write_bytes(shard.read_bytes()[:-100])


def _drop_manifest(path: Path) -> None:
    (path / "manifest.json").unlink()


def _edit_and_reseal(path: Path) -> None:
    """A record edited and the manifest's checksum recomputed: the record's own content hash still
    refuses it."""
    shard = path / "documents-000003.jsonl"
    lines = shard.read_text("utf-8").splitlines(keepends=True)
    record = json.loads(lines[3])
    record["content"] = "something else"
    lines[3] = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
    shard.write_text("".join(lines), "utf-8")
    manifest = json.loads((path / "manifest.json").read_text())
    data = shard.read_bytes()
    manifest["files"][-1].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (path / "manifest.json").write_text(json.dumps(manifest))


def _future_format(path: Path) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 2
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage", [_flip_a_byte, _truncate, _drop_manifest, _edit_and_reseal, _future_format]
)
def test_a_damaged_archive_is_refused_and_nothing_is_written(
    clean_url: str, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    with service_store(clean_url) as store:
        store.upsert(CORPUS[:30])
        store.backup(tmp_path / "a", shard_size=10)
        empty_store(clean_url)
        damage(tmp_path / "a")
        with pytest.raises(ArchiveError):
            store.restore(tmp_path / "a", chunk_rows=5)  # the damage is in the last of 6 chunks
    assert stored(clean_url) == {}


def test_backup_refuses_a_path_that_holds_something(clean_url: str, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    (tmp_path / "new.partial").mkdir()  # not left by a backup: not ours to delete
    (tmp_path / "new.partial" / "notes.txt").write_text("keep me too")
    with service_store(clean_url) as store:
        with pytest.raises(InvalidInputError):
            store.backup(tmp_path / "full")
        with pytest.raises(InvalidInputError):
            store.backup(tmp_path / "new")
        (tmp_path / "new.partial" / "notes.txt").rename(tmp_path / "notes.txt")
        (tmp_path / "new.partial" / "documents-000001.jsonl").write_text("{}\n")  # an interrupted backup's
        assert store.backup(tmp_path / "new").documents == 0
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert (tmp_path / "notes.txt").read_text() == "keep me too"
    assert not (tmp_path / "new.partial").exists()


# ------------------------------------------------------------------------------------------------
# kill -9 in the middle of a restore, then the same restore again

DRIVER = r"""
import sys
from tests.conftest import FakeEmbedder
from supa_vectors import VectorStore

url, path, stop_after = sys.argv[1], sys.argv[2], int(sys.argv[3])

def progress(done, total):
    print(f"{done}/{total}", flush=True)
    if done == stop_after:
        sys.stdin.readline()  # the test lets it go on once it holds the lock

with VectorStore.from_url(url, embedder=FakeEmbedder(), cache="off") as store:
    store.restore(path, chunk_rows=50, progress=progress)
print("finished", flush=True)
"""


def test_kill_9_in_the_middle_of_a_restore_then_a_rerun_finishes_exactly(
    clean_url: str, tmp_path: Path
) -> None:
    with service_store(clean_url) as store:
        store.upsert(with_vectors(CORPUS[:600]))
        before = stored(clean_url)
        store.backup(tmp_path / "a")
    empty_store(clean_url)

    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, clean_url, str(tmp_path / "a"), "150"],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.strip() == "150/600":
                break
        # The fourth chunk's bulk_upsert will wait on this lock, inside its transaction: kill it there.
        with psycopg.connect(clean_url) as blocker:
            blocker.execute("lock table public.embeddings in exclusive mode")
            process.stdin.write("go\n")
            process.stdin.flush()
            deadline = time.monotonic() + 60

            # pg_stat_activity is read once per transaction unless its snapshot is cleared, and the
            # lock keeps this transaction open: without the clear, a first look taken before the
            # restore got there would be all this loop ever saw.
            def restore_waits() -> bool:
                blocker.execute("select pg_catalog.pg_stat_clear_snapshot()")
                row = blocker.execute(
                    "select exists (select 1 from pg_stat_activity where wait_event_type = 'Lock'"
                    " and query like '%bulk_upsert%')"
                ).fetchone()
                return bool(row and row[0])

            while not restore_waits():
                assert time.monotonic() < deadline, "the restore never reached its fourth chunk"
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
            process.wait()
            blocker.rollback()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    landed = len(stored(clean_url))
    assert 150 <= landed < 600, landed

    with service_store(clean_url) as store:
        result = store.restore(tmp_path / "a")
    assert result.unchanged >= 150
    assert result.inserted + result.unchanged == 600
    assert result.verified == 600
    assert stored(clean_url) == before  # exact, and no duplicates (stored() asserts it)


# ------------------------------------------------------------------------------------------------
# one snapshot while writes go on


class Interfering:
    """A transport that runs ``write`` (on another connection) the n-th time ``rpc`` names ``when``,
    ``times`` times in all: a writer that lands between the backup's calls."""

    def __init__(
        self, url: str, when: str, write: Callable[[], None], *, nth: int = 1, times: int = 1
    ) -> None:
        self._inner = PostgresTransport(url)
        self._when, self._write, self._nth, self._left = when, write, nth, times
        self._seen = 0

    @property
    def identity_fingerprint(self) -> str:
        return self._inner.identity_fingerprint

    def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
        if name == self._when:
            self._seen += 1
            if self._left and self._seen % self._nth == 0:
                self._left -= 1
                self._write()
        return self._inner.rpc(name, params)

    def close(self) -> None:
        self._inner.close()


def _writes(url: str) -> dict[str, Callable[[], None]]:
    first = CORPUS[0]["id"]
    return {
        "update": lambda: sql(
            url,
            "update public.documents set content = content || ' (edited)' where external_id = %s",
            (first,),
        ),
        "metadata": lambda: sql(
            url, "update public.documents set metadata = '{\"v\": 2}' where external_id = %s", (first,)
        ),
        "delete": lambda: sql(url, "delete from public.documents where external_id = %s", (first,)),
        "vector": lambda: sql(
            url,
            "update public.embeddings set embedding = array_fill(0.5, array[384])::extensions.vector,"
            " created_at = now()"
            " where document_id = (select id from public.documents where external_id = %s)",
            (first,),
        ),
        "insert": lambda: VectorStore.from_url(url, embedder=FakeEmbedder(), cache="off").upsert(
            {"id": "late", "content": "written during the backup"}
        ),
    }


@pytest.mark.parametrize("write", ["update", "metadata", "delete", "vector", "insert"])
def test_a_backup_is_one_snapshot_while_writes_happen(clean_url: str, tmp_path: Path, write: str) -> None:
    with service_store(clean_url) as store:
        store.upsert(with_vectors(CORPUS[:120]))
    # The write lands after the first page was archived (an insert: after the last page), so the
    # first pass holds a state that never existed at any one instant.
    when = "export_snapshot" if write == "insert" else "export_documents"
    transport = Interfering(clean_url, when, _writes(clean_url)[write], nth=2 if write != "insert" else 1)
    with VectorStore(transport, embedder=FakeEmbedder(), cache="off") as store:
        result = store.backup(tmp_path / "a", page_size=50)
    assert result.attempts == 2
    now = stored(clean_url)
    lines = archived(tmp_path / "a")
    assert len(lines) == len(now)
    for line in lines:
        digest, metadata, _, vector = now[(line["owner_id"], line["id"])]
        assert (line["content_hash"], line["metadata"]) == (digest, metadata)
        assert base64.b64decode(line["embedding"]) == vector


def test_a_store_that_never_holds_still_gets_a_backup_error_and_no_archive(
    clean_url: str, tmp_path: Path
) -> None:
    with service_store(clean_url) as store:
        store.upsert(with_vectors(CORPUS[:120]))
    edits = iter(range(1000))

    def edit() -> None:
        sql(
            clean_url,
            "update public.documents set metadata = jsonb_build_object('v', %s::int) where id = 1",
            (next(edits),),
        )

    transport = Interfering(clean_url, "export_documents", edit, nth=2, times=99)
    with VectorStore(transport, embedder=FakeEmbedder(), cache="off") as store, pytest.raises(BackupError):
        store.backup(tmp_path / "a", page_size=50, attempts=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# the command line


def test_cli_backup_and_restore(clean_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from supa_vectors.cli import main

    with service_store(clean_url) as store:
        store.upsert(CORPUS[:20])
    before = stored(clean_url)
    assert (
        main(["backup", str(tmp_path / "a"), "--shard-size", "8", "--database-url", clean_url, "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["documents"] == 20
    empty_store(clean_url)
    assert main(["restore", str(tmp_path / "a"), "--database-url", clean_url]) == 0
    assert "20 inserted" in capsys.readouterr().out
    assert stored(clean_url) == before
    _flip_a_byte(tmp_path / "a")
    empty_store(clean_url)
    assert main(["restore", str(tmp_path / "a"), "--database-url", clean_url]) == 1
    assert "is damaged" in capsys.readouterr().err
    assert stored(clean_url) == {}
