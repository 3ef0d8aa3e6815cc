"""``supa-vectors doctor`` (issue 15): each thing broken on the real local stack, and doctor naming it.

Every test breaks one thing (and puts it back), runs the command with ``--json`` as a script would, and
checks the finding of that name: its status, what it says, its fix, and the exit status (1 iff a check
fails). The cache directory is the test's own; the model directory is an empty one (``model`` warns
"not installed", which costs nothing) except where the model itself is tested, on a copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx
from conftest import USER_A, FakeEmbedder, act_as

from supa_vectors import VectorStore
from supa_vectors._config import target_from_url
from supa_vectors.cli import main
from supa_vectors.cli._doctor import _pgvector, check_store, worst
from supa_vectors.embedding.install import MODEL_DIR_ENV, install_model, installed_model
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgres import PostgresTransport

REFUSED = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1: refused at once
MIGRATIONS = Path(__file__).resolve().parent.parent / "supabase" / "migrations"
NEWEST = sorted(MIGRATIONS.glob("*.sql"))[-1]
DIAGNOSTICS = MIGRATIONS / "20261203000200_store_diagnostics.sql"


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SUPA_VECTORS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "no-model"))
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    return tmp_path / "cache"


def doctor(
    capsys: pytest.CaptureFixture[str], url: str, *extra: str
) -> tuple[int, dict[str, Any], dict[str, dict[str, Any]]]:
    """Run ``supa-vectors doctor --json``: exit status, the report, its findings by name."""
    code = main(["doctor", "--json", "--database-url", url, *extra])
    report = json.loads(capsys.readouterr().out)
    return code, report, {finding["name"]: finding for finding in report["findings"]}


def owner_sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def doctor_while(
    capsys: pytest.CaptureFixture[str], url: str, broken: str, restored: str, *extra: str
) -> tuple[int, dict[str, Any], dict[str, dict[str, Any]]]:
    """Doctor's report while ``broken`` (SQL as the owner) holds; ``restored`` puts it back, always."""
    owner_sql(url, broken)
    try:
        return doctor(capsys, url, *extra)
    finally:
        owner_sql(url, restored)


def store(url: str, cache_dir: Path, **options: Any) -> VectorStore:
    return VectorStore.from_url(url, embedder=FakeEmbedder(), cache_dir=cache_dir, **options)


DATABASE_CHECKS = {
    "schema",
    "rls",
    "policies",
    "vector index",
    "pgvector",
    "maintenance_work_mem",
    "hnsw.ef_search",
}


def test_a_healthy_stack_is_green(
    clean_url: str, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with store(clean_url, own_cache) as s:
        s.add({"id": "a", "content": "vacuum reclaims storage"})
        s.sync_mirror()
    code, report, findings = doctor(capsys, clean_url)
    assert code == 0
    assert set(report) == {"version", "status", "findings", "repairs"}
    assert report["version"] == 1
    assert report["repairs"] == []
    assert all(set(f) == {"name", "status", "detail", "fix"} for f in report["findings"])
    assert {"configuration", "connectivity", "cache", "outbox", "mirror"} | DATABASE_CHECKS <= set(findings)
    not_ok = {name: f for name, f in findings.items() if f["status"] != "ok"}
    assert set(not_ok) == {"model"}  # an empty model directory here: "not installed", a warning
    assert not_ok["model"]["status"] == "warn"
    assert not_ok["model"]["fix"] == "supa-vectors model install"
    assert report["status"] == "warn"
    assert "127.0.0.1" in findings["configuration"]["detail"]
    assert "@" not in findings["configuration"]["detail"]

    # The human form: one line per check, the fix under what is wrong, a summary.
    assert main(["doctor", "--database-url", clean_url]) == 0
    text = capsys.readouterr().out
    assert "ok    rls" in text
    assert "WARN  model" in text
    assert "fix: supa-vectors model install" in text
    assert "0 failed, 1 warnings" in text


def test_an_unreachable_database_is_named_and_the_local_checks_still_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, report, findings = doctor(capsys, REFUSED, "--timeout", "2")
    assert code == 1
    assert report["status"] == "fail"
    assert findings["connectivity"]["status"] == "fail"
    assert "Connection refused" in findings["connectivity"]["detail"]
    assert findings["connectivity"]["fix"] == "`supa-vectors local start`"
    assert not DATABASE_CHECKS & set(findings)  # not run, rather than reported as fine
    assert {"model", "cache", "outbox", "mirror"} <= set(findings)


def test_a_bad_configuration_fails_before_anything_is_asked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, findings = doctor(capsys, "mysql://somewhere/db")
    assert code == 1
    assert findings["configuration"]["status"] == "fail"
    assert "unsupported URL scheme" in findings["configuration"]["detail"]


def test_a_pending_migration_is_named(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    version = NEWEST.name.split("_", 1)[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "delete from supabase_migrations.schema_migrations where version = %s returning version, name, "
            "statements",
            [version],
        ).fetchone()
        assert row is not None
        try:
            code, _, findings = doctor(capsys, database_url)
        finally:
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, name, statements) "
                "values (%s, %s, %s)",
                row,
            )
    assert code == 1
    assert findings["schema"]["status"] == "fail"
    assert findings["schema"]["detail"] == f"1 pending migration(s): {NEWEST.name}"
    assert "supabase db push" in findings["schema"]["fix"]


def test_a_database_without_the_diagnostics_rpc_has_pending_migrations(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stack without the migration that adds store_diagnostics: rolled back, then re-applied."""
    code, _, findings = doctor_while(
        capsys,
        database_url,
        (MIGRATIONS.parent / "rollbacks" / DIAGNOSTICS.name).read_text(),
        DIAGNOSTICS.read_text(),
    )
    assert code == 1
    assert findings["schema"]["status"] == "fail"
    assert "no store_diagnostics()" in findings["schema"]["detail"]


def test_a_schema_version_behind_the_package_fails(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, findings = doctor_while(
        capsys,
        database_url,
        "update public.metadata_global set value = '0' where key = 'schema_version'",
        "update public.metadata_global set value = '1' where key = 'schema_version'",
    )
    assert code == 1
    assert findings["schema"]["status"] == "fail"
    assert findings["schema"]["detail"] == "metadata_global.schema_version is 0; this package expects 1"


def test_row_level_security_disabled_on_a_table_fails(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, findings = doctor_while(
        capsys,
        database_url,
        "alter table public.ingest_runs disable row level security",
        "alter table public.ingest_runs enable row level security",
    )
    assert code == 1
    assert findings["rls"]["status"] == "fail"
    assert "public.ingest_runs" in findings["rls"]["detail"]
    assert findings["rls"]["fix"] == "alter table public.ingest_runs enable row level security"


def test_a_dropped_policy_is_named_with_the_migration_that_creates_it(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, findings = doctor_while(
        capsys,
        database_url,
        "drop policy metadata_global_select on public.metadata_global",
        "create policy metadata_global_select on public.metadata_global for select to authenticated "
        "using (true)",
    )
    assert code == 1
    assert findings["policies"]["status"] == "fail"
    assert "metadata_global_select on metadata_global" in findings["policies"]["detail"]
    assert "20261125000100_store_schema.sql" in findings["policies"]["fix"]


def test_a_dropped_vector_index_fails_and_fix_rebuilds_it(
    clean_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    owner_sql(clean_url, "drop index public.embeddings_embedding_hnsw_idx")
    try:
        code, _, findings = doctor(capsys, clean_url)
        assert code == 1
        assert findings["vector index"]["status"] == "fail"
        assert "missing" in findings["vector index"]["detail"]
        assert "--fix" in findings["vector index"]["fix"]

        code, report, findings = doctor(capsys, clean_url, "--fix")
        assert report["repairs"] == ["rebuilt public.embeddings_embedding_hnsw_idx (restore_vector_index())"]
        assert findings["vector index"]["status"] == "ok"
        assert code == 0
    finally:
        owner_sql(clean_url, "select public.finish_bulk_load()")


def test_an_unfinished_bulk_load_is_named_and_fix_finishes_it(
    clean_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    loader = psycopg.connect(clean_url, autocommit=True)
    try:
        assert loader.execute("select public.begin_bulk_load(1000000)").fetchone() == (True,)
        pid = loader.info.backend_pid

        # While its loader lives, the load is in progress: a warning, and --fix leaves it alone.
        code, report, findings = doctor(capsys, clean_url, "--fix")
        assert findings["vector index"]["status"] == "warn"
        assert "bulk load in progress" in findings["vector index"]["detail"]
        assert report["repairs"] == []

        # The loader is killed (pg_terminate_backend waits until its backend is gone).
        owner_sql(clean_url, f"select pg_terminate_backend({pid}, 10000)")
        code, _, findings = doctor(capsys, clean_url)
        assert code == 1
        assert findings["vector index"]["status"] == "fail"
        assert "was left unfinished" in findings["vector index"]["detail"]

        code, report, findings = doctor(capsys, clean_url, "--fix")
        assert report["repairs"] == ["rebuilt public.embeddings_embedding_hnsw_idx (restore_vector_index())"]
        assert findings["vector index"]["status"] == "ok"
        assert code == 0
        with psycopg.connect(clean_url) as conn:
            assert conn.execute("select count(*) from supa_vectors_internal.bulk_load").fetchone() == (0,)
    finally:
        loader.close()
        owner_sql(clean_url, "select public.finish_bulk_load()")


@pytest.fixture
def model_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The int8 model, copied (manifest, tokenizer, graph) into a directory of the test's own."""
    monkeypatch.delenv(MODEL_DIR_ENV)  # the shared installation, read only
    model = installed_model(True)
    if model is None:
        install_model(quantized=True)
        model = installed_model(True)
    assert model is not None
    target = tmp_path / "models" / model.directory.name
    target.mkdir(parents=True)
    manifest = json.loads((model.directory / "manifest.json").read_text())
    manifest["variants"] = {"int8": manifest["variants"]["int8"]}
    (target / "manifest.json").write_text(json.dumps(manifest))
    shutil.copyfile(model.tokenizer, target / "tokenizer.json")
    shutil.copyfile(model.onnx, target / model.onnx.name)
    monkeypatch.setenv(MODEL_DIR_ENV, str(target.parent))
    return target / model.onnx.name


def test_a_corrupted_model_file_fails_its_checksum(
    database_url: str, model_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, findings = doctor(capsys, database_url)
    assert findings["model"]["status"] == "ok"
    assert findings["model"]["detail"].startswith("int8 verified (SHA-256)")

    with model_copy.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    code, _, findings = doctor(capsys, database_url)
    assert code == 1
    assert findings["model"]["status"] == "fail"
    assert "int8 graph model.int8.onnx: sha256" in findings["model"]["detail"]
    assert findings["model"]["fix"] == "supa-vectors model install --force"

    with (model_copy.parent / "tokenizer.json").open("a") as handle:
        handle.write(" ")
    _, _, findings = doctor(capsys, database_url)
    assert "tokenizer.json: sha256" in findings["model"]["detail"]


def test_pending_writes_in_the_outbox_are_counted_with_their_age(
    own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with store(REFUSED, own_cache) as s:
        assert [r.status for r in s.add([{"id": "x", "content": "one"}, {"id": "y", "content": "two"}])] == [
            "queued",
            "queued",
        ]
    code, _, findings = doctor(capsys, REFUSED)
    assert code == 1  # the outage; the outbox itself is a warning
    assert findings["outbox"]["status"] == "warn"
    assert findings["outbox"]["detail"].startswith("2 write(s) waiting; the oldest queued ")
    assert findings["outbox"]["detail"].endswith(" s ago")
    assert "store.flush()" in findings["outbox"]["fix"]


def test_a_mirror_older_than_the_store_is_stale(
    clean_url: str, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, findings = doctor(capsys, clean_url)
    assert findings["mirror"]["status"] == "warn"
    assert findings["mirror"]["detail"].startswith("never synced")
    with store(clean_url, own_cache) as s:
        s.add({"id": "a", "content": "first"})
        s.sync_mirror()
    _, _, findings = doctor(capsys, clean_url)
    assert findings["mirror"]["status"] == "ok"
    with store(clean_url, own_cache, cache="off") as other:  # another app writes; this mirror misses it
        other.add({"id": "b", "content": "second"})
    _code, _, findings = doctor(capsys, clean_url)
    assert findings["mirror"]["status"] == "warn"
    assert findings["mirror"]["detail"].startswith("stale: synced ")
    assert findings["mirror"]["fix"] == "supa-vectors mirror sync"


def test_a_small_index_build_memory_is_a_warning(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store's index_build_memory is what a build gets (create_vector_index() sets it), so it is
    what doctor weighs against the graph, and what its fix raises."""
    setting = "update public.metadata_global set value = '{}' where key = 'index_build_memory'"
    code, _, findings = doctor_while(capsys, database_url, setting.format('"1MB"'), setting.format('"256MB"'))
    assert findings["maintenance_work_mem"]["status"] == "warn"
    assert findings["maintenance_work_mem"]["detail"].startswith("index_build_memory 1 MB; building the")
    assert findings["maintenance_work_mem"]["fix"].startswith(
        "update public.metadata_global set value = '\"64MB\"' where key = 'index_build_memory'"
    )
    assert code == 0  # a warning, not a failure


def test_the_server_setting_does_not_count_where_the_store_sets_its_own(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alter = "do $$ begin execute format('alter database %I {}', current_database()); end $$"
    _code, _, findings = doctor_while(
        capsys,
        database_url,
        alter.format("set maintenance_work_mem = ''1MB''"),
        alter.format("reset maintenance_work_mem"),
    )
    assert findings["maintenance_work_mem"]["status"] == "ok"
    assert findings["maintenance_work_mem"]["detail"].startswith("index_build_memory 256 MB")


def test_a_build_uses_the_stores_index_build_memory(clean_url: str) -> None:
    """create_vector_index() sets maintenance_work_mem from the store for its build: a value Postgres
    refuses fails the build with Postgres' message, and the index stays as it was."""
    owner_sql(
        clean_url, "update public.metadata_global set value = '\"lots\"' where key = 'index_build_memory'"
    )
    try:
        with psycopg.connect(clean_url, autocommit=True) as conn:
            conn.execute("drop index public.embeddings_embedding_hnsw_idx")
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="maintenance_work_mem"):
                conn.execute("select supa_vectors_internal.create_vector_index()")
            assert conn.execute("select to_regclass('public.embeddings_embedding_hnsw_idx')").fetchone() == (
                None,
            )
    finally:
        owner_sql(
            clean_url,
            "update public.metadata_global set value = '\"256MB\"' where key = 'index_build_memory'",
        )
        owner_sql(clean_url, "select supa_vectors_internal.create_vector_index()")


def test_a_signed_in_user_is_told_which_checks_need_the_service_key(clean_url: str, own_cache: Path) -> None:
    transport = PostgresTransport(clean_url, identity=Identity.user(USER_A))
    with VectorStore(transport, cache_dir=own_cache) as user_store:
        findings = {f.name: f for f in check_store(user_store, target_from_url(clean_url))}
    assert findings["connectivity"].status == "ok"
    assert findings["schema"].status == "ok"  # the schema version, which store_settings shows anyone
    assert findings["vector index"].status == "ok"  # present, from store_stats
    for name in ("rls", "policies", "pgvector", "maintenance_work_mem", "hnsw.ef_search"):
        assert findings[name].status == "warn"
        assert findings[name].detail == "not checked: needs the service role"
        assert "service_role key" in (findings[name].fix or "")
    assert worst(list(findings.values())) == "warn"

    # Without the service role, whether the index is there still comes from store_stats.
    owner_sql(clean_url, "drop index public.embeddings_embedding_hnsw_idx")
    try:
        with VectorStore(
            PostgresTransport(clean_url, identity=Identity.user(USER_A)), cache_dir=own_cache
        ) as s:
            findings = {f.name: f for f in check_store(s, target_from_url(clean_url))}
    finally:
        owner_sql(clean_url, "select public.finish_bulk_load()")
    assert findings["vector index"].status == "fail"
    assert worst(list(findings.values())) == "fail"


def test_a_match_documents_without_its_own_ef_search_is_a_warning(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alter = (
        "do $$ declare f regprocedure; begin for f in select oid from pg_proc "
        "where proname = 'match_documents' and pronamespace = 'public'::regnamespace "
        "loop execute format('alter function %s {}', f); end loop; end $$"
    )
    code, _, findings = doctor_while(
        capsys,
        database_url,
        alter.format("reset hnsw.ef_search"),
        alter.format("set hnsw.ef_search = 40"),
    )
    assert findings["hnsw.ef_search"]["status"] == "warn"
    assert findings["hnsw.ef_search"]["detail"].startswith(
        "match_documents no longer sets its own hnsw.ef_search"
    )
    assert code == 0


@pytest.mark.parametrize(
    ("version", "status"), [("0.7.4", "fail"), (None, "fail"), ("0.8.0", "ok"), ("0.10.1", "ok")]
)
def test_pgvector_older_than_0_8_fails(version: str | None, status: str) -> None:
    # Not broken on the stack (its pgvector is what the wheel ships): the rule, on the reported version.
    assert _pgvector(version).status == status


@pytest.mark.parametrize("who", [Identity.anonymous(), Identity.user(USER_A)], ids=["anon", "authenticated"])
@pytest.mark.parametrize(
    "call", ["select public.store_diagnostics()", "select supa_vectors_internal.applied_migrations()"]
)
def test_only_the_service_role_may_read_the_diagnostics(
    conn: psycopg.Connection, who: Identity, call: str
) -> None:
    act_as(conn, who)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(call)  # type: ignore[arg-type]


def test_the_service_role_reads_every_fact_doctor_uses(conn: psycopg.Connection) -> None:
    act_as(conn, Identity.service())
    row = conn.execute("select public.store_diagnostics()").fetchone()
    assert row is not None
    facts = row[0]
    assert set(facts) == {
        "migrations",
        "schema_version",
        "tables",
        "vector_index",
        "bulk_load",
        "embeddings",
        "dimension",
        "pgvector",
        "settings",
    }
    assert facts["migrations"][-1] == NEWEST.name.split("_", 1)[0]
    assert {t["name"] for t in facts["tables"]} >= {"documents", "embeddings", "bulk_load"}
    assert facts["vector_index"] == {
        **facts["vector_index"],
        "present": True,
        "valid": True,
        "method": "hnsw",
    }
    assert facts["dimension"] == 384


# ---------------------------------------------------------------------------------------------------
# Over PostgREST (respx: no PostgREST binary here), where --fix cannot build an index.

HTTP_URL = "http://supa.test"


@pytest.fixture
def postgrest(database_url: str) -> Iterator[tuple[respx.MockRouter, dict[str, Any], dict[str, Any]]]:
    """PostgREST answering store_stats and store_diagnostics with what the local stack answers."""
    with psycopg.connect(database_url) as conn:
        act_as(conn, Identity.service())
        row = conn.execute("select public.store_stats(), public.store_diagnostics()").fetchone()
        assert row is not None
        stats, facts = row
    with respx.mock(base_url=f"{HTTP_URL}/rest/v1", assert_all_called=False) as router:
        router.post("/rpc/store_stats").mock(side_effect=lambda _: httpx.Response(200, json=stats))
        router.post("/rpc/store_diagnostics").mock(side_effect=lambda _: httpx.Response(200, json=facts))
        yield router, stats, facts


def test_over_postgrest_fix_says_it_needs_the_table_owner(
    postgrest: tuple[respx.MockRouter, dict[str, Any], dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, stats, facts = postgrest
    stats["vector_index"] = facts["vector_index"]["present"] = False
    stats["bulk_load"] = facts["bulk_load"] = {"started_at": "2026-12-03T08:00:00+00:00", "abandoned": True}
    code, report, findings = doctor(capsys, HTTP_URL, "--key", "service-key", "--fix")
    assert code == 1
    assert findings["configuration"]["detail"] == f"postgrest {HTTP_URL}"
    assert findings["vector index"]["status"] == "fail"
    assert "left unfinished" in findings["vector index"]["detail"]
    assert report["repairs"] == [
        "nothing: rebuilding the index needs the table owner; run with --database-url postgresql://..."
    ]


def test_over_postgrest_a_user_token_gets_warnings_not_failures(
    postgrest: tuple[respx.MockRouter, dict[str, Any], dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    router, _, _ = postgrest
    refused = json.loads(
        (Path(__file__).parent / "fixtures/postgrest/42501_permission_denied_authenticated.json").read_text()
    )
    router.post("/rpc/store_diagnostics").mock(
        return_value=httpx.Response(refused["status"], headers=refused["headers"], content=refused["body"])
    )
    code, report, findings = doctor(capsys, HTTP_URL, "--key", "user-jwt")
    assert code == 0
    assert report["status"] == "warn"
    assert findings["rls"]["detail"] == "not checked: needs the service role"
    assert findings["vector index"]["status"] == "ok"
