"""``supa-vectors doctor``: what is wrong with this installation and its store, and how to fix it.

Each check gives one :class:`Finding` (name, ``ok``/``warn``/``fail``, what it found, the fix as a
command); the command exits 1 iff one fails. The checks, in order:

* ``configuration`` and ``connectivity``: which backend the CLI resolves to (``resolve_target``, as
  every command) and whether it answers, with the CLI's outage handling (a refused connection is known
  at once, a silent host is given up after ``--timeout``). Unreachable, the database checks are left
  out and the local ones (model, cache, outbox, mirror) still run.
* ``schema``: metadata_global's ``schema_version`` against the one the shipped migrations set (any
  caller), and, for the service role, the applied migrations against the shipped ones.
* ``rls``, ``policies``, ``vector index``, ``pgvector``, ``maintenance_work_mem``, ``hnsw.ef_search``:
  catalog facts from ``store_diagnostics()``, service role only (decision 0019); another caller gets
  a warning per check saying it needs the service key. A signed-in user still learns whether the index
  is there from ``store_stats``.
* ``model``, ``cache``, ``outbox``, ``mirror``: this machine's files, for the caller's identity.

``--fix`` repairs only what is safe to repair unattended: a vector index an unfinished bulk load left
dropped (``restore_vector_index()``, as the table owner, which rebuilds only when no live load holds
it). It says what it did, and the checks run again after it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import urlsplit

from supa_vectors._config import Target, resolve_target
from supa_vectors._core import rpcs
from supa_vectors._store import VectorStore
from supa_vectors.cli import GROUP_HELP
from supa_vectors.cli._search import add_backend_arguments, age_text, open_store
from supa_vectors.errors import AuthError, ConfigurationError, NotFoundError, SupaVectorsError

if TYPE_CHECKING:
    from supa_vectors.local.migrations import Migration

__all__ = ["Finding", "add_doctor_parser", "check_store", "doctor_command", "run_checks", "worst"]

Status = Literal["ok", "warn", "fail"]
# The version of the --json document: a consumer can rely on its keys while it stays the same.
REPORT_VERSION = 1
# Below Postgres' own default (64 MB) someone lowered it; above, a build fits when the setting holds
# the whole graph (pgvector: "hnsw graph no longer fits into maintenance_work_mem" slows it manyfold).
MIN_MAINTENANCE_WORK_MEM = 64 * 1024 * 1024
# What a build holds per row at m = 16, measured by where pgvector said the graph outgrew 256 MB
# (BENCHMARKS.md section 13): 1,473 bytes a row for the half-precision index (after 182,226 rows),
# 2,253 for the full-precision one (after 119,124): 2 or 4 bytes a dimension plus ~710 for neighbour
# lists and headers. The index is half precision since migration 20261203000900.
HNSW_BUILD_BYTES_PER_DIMENSION = 2
HNSW_BUILD_BYTES_PER_ROW_BEYOND_VECTOR = 710
# pgvector 0.8.0 brought the iterative index scans match_documents relies on for filtered searches.
MIN_PGVECTOR = (0, 8, 0)
INDEX_NAME = "public.embeddings_embedding_hnsw_idx"
SERVICE_ONLY = ("rls", "policies", "vector index", "pgvector", "maintenance_work_mem", "hnsw.ef_search")
PUSH = "supabase db push (hosted), or `supa-vectors local start` (the local stack)"


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``detail`` says what was found (what is wrong, unless ``ok``), ``fix``
    the command that repairs it (None when there is nothing to do)."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


def add_doctor_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = commands.add_parser(
        "doctor",
        help=GROUP_HELP["doctor"],
        description="Check the configuration, the connection, the schema, Row Level Security, the "
        "vector index, the model files, the offline cache and the Postgres settings that matter; say "
        "what is wrong and the command that fixes it. Exit 1 when a check fails. The catalog checks "
        "need the service role (a service key, or a postgresql:// URL).",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object (stable keys) instead")
    doctor.add_argument(
        "--fix",
        action="store_true",
        help="repair what is safe to repair: rebuild a vector index an unfinished bulk load left "
        "dropped (needs the table owner: a postgresql:// URL); then check again",
    )
    add_backend_arguments(doctor)
    doctor.set_defaults(handler=doctor_command, parser=doctor)


def doctor_command(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    findings, repairs = run_checks(args, fix=args.fix)
    status = worst(findings)
    if args.json:
        report = {
            "version": REPORT_VERSION,
            "status": status,
            "findings": [asdict(finding) for finding in findings],
            "repairs": repairs,
        }
        print(json.dumps(report, indent=2, ensure_ascii=False), file=out)
    else:
        _print_human(findings, repairs, out)
    return 1 if status == "fail" else 0


def worst(findings: Sequence[Finding]) -> Status:
    """The report's status: the worst of its findings'."""
    statuses = {finding.status for finding in findings}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def _print_human(findings: Sequence[Finding], repairs: Sequence[str], out: TextIO) -> None:
    for repair in repairs:
        print(f"fixed: {repair}", file=out)
    width = max(len(finding.name) for finding in findings)
    for finding in findings:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[finding.status]
        print(f"{mark}  {finding.name:<{width}}  {finding.detail}", file=out)
        if finding.fix is not None:
            print(f"      {'':<{width}}  fix: {finding.fix}", file=out)
    fails = sum(finding.status == "fail" for finding in findings)
    warns = sum(finding.status == "warn" for finding in findings)
    print(f"\n{fails} failed, {warns} warnings, {len(findings) - fails - warns} ok", file=out)


def run_checks(args: argparse.Namespace, *, fix: bool = False) -> tuple[list[Finding], list[str]]:
    """The findings for the backend ``args`` name (``--database-url``/``--key``/``--timeout``, else
    the environment), and what ``fix`` repaired (the checks are run again after a repair)."""
    try:
        target = resolve_target(args.database_url, args.key)
    except ConfigurationError as exc:
        configuration = Finding(
            "configuration",
            "fail",
            str(exc),
            "set SUPABASE_URL + SUPABASE_KEY, or SUPA_VECTORS_DATABASE_URL, or `supa-vectors local start`",
        )
        return [configuration, *_local_checks(None)], []
    with open_store(args, None, ask_anyway=True) as store:
        findings = check_store(store, target)
        if not fix:
            return findings, []
        repairs = _repair(store, findings)
        return (check_store(store, target) if repairs else findings), repairs


def check_store(store: VectorStore, target: Target) -> list[Finding]:
    """Every check, against ``store`` (its transport decides who asks: the catalog checks need the
    service role, and warn for anyone else); ``target`` is what the store was opened on."""
    findings = [Finding("configuration", "ok", f"{target.kind} {target.shown_url}")]
    try:
        stats = store.stats()
    except SupaVectorsError as exc:
        findings.append(_unreachable(exc, target))
        return findings + _local_checks(store)
    findings.append(Finding("connectivity", "ok", "the backend answered"))
    local = _local_checks(store, stats.last_updated_at)
    try:
        facts: Mapping[str, Any] = store.transport.rpc(rpcs.STORE_DIAGNOSTICS.name, {})
    except AuthError:
        unseen = Finding("", "warn", "not checked: needs the service role", _SERVICE_KEY_FIX)
    except NotFoundError:
        missing = (
            f"the database has no {rpcs.STORE_DIAGNOSTICS.name}(): migrations this package ships are "
            "not applied"
        )
        return [*findings, Finding("schema", "fail", missing, PUSH), *local]
    except SupaVectorsError as exc:
        unseen = Finding("", "fail", f"not checked: {rpcs.STORE_DIAGNOSTICS.name}() failed ({exc})", None)
    else:
        return [
            *findings,
            _schema(stats.settings.get("schema_version"), facts),
            *_catalog_checks(facts, stats.settings),
            *local,
        ]
    # What the caller can see without the catalog: the schema version and whether the index is there.
    findings.append(_schema(stats.settings.get("schema_version"), None))
    for name in SERVICE_ONLY:
        findings.append(
            _index_from_stats(stats.vector_index) if name == "vector index" else replace(unseen, name=name)
        )
    return findings + local


_SERVICE_KEY_FIX = (
    "run doctor with the service role: SUPABASE_KEY=<service_role key>, or a postgresql:// URL "
    "(--database-url)"
)


def _unreachable(exc: SupaVectorsError, target: Target) -> Finding:
    message = " ".join(str(exc).split())
    if isinstance(exc, AuthError):
        return Finding(
            "connectivity",
            "fail",
            f"the backend refused these credentials: {message} (the anon key can do nothing)",
            "use the service key or a signed-in user's JWT as SUPABASE_KEY (or check the URL's user "
            "and password)",
        )
    local = urlsplit(target.url).hostname in ("127.0.0.1", "localhost", "::1")
    return Finding(
        "connectivity",
        "fail",
        f"the backend did not answer: {message}; the database checks were not run",
        "`supa-vectors local start`"
        if local
        else "check the URL, the network and that the project is "
        "not paused (Supabase dashboard); --timeout waits longer",
    )


# ---------------------------------------------------------------------------------------------------
# Schema


def _schema(schema_version: object, facts: Mapping[str, Any] | None) -> Finding:
    shipped = _shipped_migrations()
    expected = _expected_schema_version(shipped)
    if expected is not None and schema_version is not None and str(schema_version) != expected:
        behind = _version_key(str(schema_version)) < _version_key(expected)
        return Finding(
            "schema",
            "fail",
            f"metadata_global.schema_version is {schema_version}; this package expects {expected}",
            PUSH if behind else "upgrade supa-vectors (pip install -U supa-vectors): the database is newer",
        )
    applied = facts.get("migrations") if facts is not None else None
    if facts is None or not isinstance(applied, list):
        note = "" if facts is None else "; no migrations recorded (supabase_migrations.schema_migrations)"
        return Finding("schema", "ok", f"schema version {schema_version}{note}")
    versions = {str(version) for version in applied}
    pending = [name for version, name in shipped if version not in versions]
    if pending:
        return Finding(
            "schema",
            "fail",
            f"{len(pending)} pending migration(s): {', '.join(pending)}",
            PUSH,
        )
    unknown = sorted(versions - {version for version, _ in shipped})
    if unknown:
        return Finding(
            "schema",
            "warn",
            f"the database has migrations this package does not ship: {', '.join(unknown)}",
            "upgrade supa-vectors (pip install -U supa-vectors)",
        )
    return Finding("schema", "ok", f"schema version {schema_version}, {len(versions)} migrations applied")


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _shipped_migrations() -> list[tuple[str, str]]:
    """(version, file name) of the migrations this installation ships, oldest first."""
    return [(m.version, m.filename) for m in _shipped()]


def _shipped() -> list[Migration]:
    """The migrations this installation ships, oldest first; none if it ships
    none (a checkout without supabase/)."""
    try:
        from supa_vectors.local.migrations import find_migrations_dir, list_local_migrations

        return list(list_local_migrations(find_migrations_dir()))
    except SupaVectorsError:
        return []


def _migration_texts() -> Iterator[tuple[str, str]]:
    """(file name, SQL without comments) of each shipped migration."""
    for migration in _shipped():
        yield migration.filename, re.sub(r"--[^\n]*", "", migration.read())


def _expected_schema_version(shipped: Sequence[tuple[str, str]]) -> str | None:
    """The schema version the shipped migrations leave in metadata_global (the last one they set)."""
    found: str | None = None
    if shipped:
        for _, text in _migration_texts():
            for match in re.finditer(r"\(\s*'schema_version'\s*,\s*'([^']*)'\s*\)", text):
                found = match.group(1)
    return found


_POLICY = re.compile(
    r"\b(create|drop)\s+policy\s+(?:if\s+exists\s+)?\"?(\w+)\"?\s+on\s+(?:\"?\w+\"?\.)?\"?(\w+)\"?",
    re.IGNORECASE,
)


def _expected_policies() -> dict[tuple[str, str], str]:
    """(table, policy) -> the migration that creates it, as the shipped migrations leave them."""
    expected: dict[tuple[str, str], str] = {}
    try:
        texts = list(_migration_texts())
    except (SupaVectorsError, OSError):
        return expected
    for filename, text in texts:
        for match in _POLICY.finditer(text):
            verb, policy, table = match.group(1).lower(), match.group(2), match.group(3)
            if verb == "create":
                expected[(table, policy)] = filename
            else:
                expected.pop((table, policy), None)
    return expected


# ---------------------------------------------------------------------------------------------------
# The catalog (store_diagnostics)


def _catalog_checks(facts: Mapping[str, Any], store_settings: Mapping[str, Any]) -> list[Finding]:
    tables: list[Mapping[str, Any]] = list(facts.get("tables") or [])
    return [
        _rls(tables),
        _policies(tables),
        _vector_index(facts.get("vector_index") or {}, facts.get("bulk_load")),
        _pgvector(facts.get("pgvector")),
        _maintenance_work_mem(facts, store_settings.get("index_build_memory")),
        _ef_search(facts.get("settings") or {}),
    ]


def _rls(tables: Sequence[Mapping[str, Any]]) -> Finding:
    off = [f"{t['schema']}.{t['name']}" for t in tables if not t.get("rls")]
    if off:
        return Finding(
            "rls",
            "fail",
            f"Row Level Security is disabled on {', '.join(off)}: every role with a grant reads and writes "
            "all rows",
            "; ".join(f"alter table {name} enable row level security" for name in off),
        )
    return Finding("rls", "ok", f"enabled on all {len(tables)} tables")


def _policies(tables: Sequence[Mapping[str, Any]]) -> Finding:
    present = {(str(t["name"]), str(p)) for t in tables for p in t.get("policies") or []}
    missing = {key: origin for key, origin in _expected_policies().items() if key not in present}
    if missing:
        names = ", ".join(f"{policy} on {table}" for table, policy in sorted(missing))
        origins = ", ".join(sorted(set(missing.values())))
        return Finding(
            "policies",
            "fail",
            f"missing: {names} (their callers are denied, or see less than they should)",
            f"re-create them from supabase/migrations/{origins} (its `create policy` statements)",
        )
    return Finding("policies", "ok", f"{len(present)} policies, every one the migrations create")


def _index_from_stats(present: bool) -> Finding:
    if present:
        return Finding("vector index", "ok", "present (its validity needs the service role)")
    return Finding(
        "vector index",
        "fail",
        "the HNSW index is missing: searches scan every row",
        "`supa-vectors doctor --fix` as the table owner (a postgresql:// URL)",
    )


def _vector_index(index: Mapping[str, Any], bulk_load: Mapping[str, Any] | None) -> Finding:
    fix = "`supa-vectors doctor --fix` as the table owner (a postgresql:// URL)"
    if bulk_load and not index.get("present"):
        started = bulk_load.get("started_at")
        if bulk_load.get("abandoned"):
            return Finding(
                "vector index",
                "fail",
                f"missing: a bulk load started at {started} was left unfinished (its loader is gone)",
                fix,
            )
        return Finding(
            "vector index",
            "warn",
            f"dropped by a bulk load in progress (started at {started}, {bulk_load.get('expected_rows')} "
            "rows); its loader rebuilds it when it finishes",
            None,
        )
    if not index.get("present"):
        return Finding("vector index", "fail", f"{INDEX_NAME} is missing: searches scan every row", fix)
    if not index.get("valid") or not index.get("ready"):
        return Finding(
            "vector index",
            "fail",
            f"{INDEX_NAME} is invalid (a build that failed or was interrupted): the planner ignores it",
            f"reindex index concurrently {INDEX_NAME}",
        )
    if index.get("method") != "hnsw":
        return Finding("vector index", "warn", f"{INDEX_NAME} uses {index.get('method')}, not hnsw", None)
    return Finding("vector index", "ok", f"hnsw, valid, {_bytes(int(index.get('bytes') or 0))}")


def _pgvector(version: object) -> Finding:
    text = str(version or "")
    parts = tuple(int(p) if p.isdigit() else 0 for p in text.split("."))
    if not text or parts < MIN_PGVECTOR:
        return Finding(
            "pgvector",
            "fail",
            f"pgvector {text or 'is not installed'}; the store needs 0.8.0 or later (iterative index scans)",
            "alter extension vector update (hosted Supabase: upgrade the project's Postgres)",
        )
    return Finding("pgvector", "ok", f"version {text}")


def _maintenance_work_mem(facts: Mapping[str, Any], build_memory: object) -> Finding:
    """The memory an index build gets: the store's ``index_build_memory`` where the schema has it
    (create_vector_index() sets it for the build, so the server's maintenance_work_mem does not
    count), else the server's maintenance_work_mem."""
    settings = facts.get("settings") or {}
    own = _memory_bytes(build_memory) if isinstance(build_memory, str) else None
    have = own if own is not None else int(settings.get("maintenance_work_mem") or 0)
    index = facts.get("vector_index") or {}
    rows = int(facts.get("embeddings") or 0)
    dimension = int(facts.get("dimension") or 384)
    per_row = HNSW_BUILD_BYTES_PER_DIMENSION * dimension + HNSW_BUILD_BYTES_PER_ROW_BEYOND_VECTOR
    graph = max(int(index.get("bytes") or 0), rows * per_row)
    need = max(MIN_MAINTENANCE_WORK_MEM, graph)
    what = "index_build_memory" if own is not None else "maintenance_work_mem"
    if have < need:
        megabytes = -(-need // (1024 * 1024))
        fix = (
            f"update public.metadata_global set value = '\"{megabytes}MB\"' where key = 'index_build_memory'"
            " (as the service role; keep it within the database's RAM)"
            if own is not None
            else f"alter database postgres set maintenance_work_mem = '{megabytes}MB'"
        )
        return Finding(
            "maintenance_work_mem",
            "warn",
            f"{what} {_bytes(have)}; building the vector index over {rows} rows needs about "
            f"{_bytes(need)}, or the build (a bulk load's finish, --fix) spills and takes many times longer",
            fix,
        )
    return Finding(
        "maintenance_work_mem", "ok", f"{what} {_bytes(have)} (an index build needs about {_bytes(graph)})"
    )


_MEMORY_UNITS = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def _memory_bytes(text: str) -> int | None:
    """A Postgres memory setting ('256MB', '1GB', '65536' in kB) in bytes; None when it is not one."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT][bB])?\s*", text)
    if match is None:
        return None
    return int(match.group(1)) * (_MEMORY_UNITS[match.group(2).lower()] if match.group(2) else 1024)


def _ef_search(settings: Mapping[str, Any]) -> Finding:
    own = settings.get("match_documents_ef_search")
    server = settings.get("hnsw.ef_search")
    if own is None:
        return Finding(
            "hnsw.ef_search",
            "warn",
            f"match_documents no longer sets its own hnsw.ef_search (server default {server}): recall "
            "depends on the server's setting",
            PUSH,
        )
    return Finding(
        "hnsw.ef_search",
        "ok",
        f"match_documents sets {own} (more for larger k and filtered searches); server default {server}",
    )


# ---------------------------------------------------------------------------------------------------
# This machine: model, cache, outbox, mirror


def _local_checks(store: VectorStore | None, last_updated_at: datetime | None = None) -> list[Finding]:
    findings = [_model()]
    if store is None:
        return findings
    return [*findings, _cache(store), _outbox(store), _mirror(store, last_updated_at)]


def _model() -> Finding:
    from supa_vectors.embedding.install import verify_model

    check = verify_model()
    if check.problems:
        return Finding(
            "model",
            "fail",
            f"{check.directory}: {'; '.join(check.problems)}",
            "supa-vectors model install --force",
        )
    if not check.verified:
        return Finding(
            "model",
            "warn",
            f"not installed in {check.directory}: the first search or write downloads and builds it",
            "supa-vectors model install",
        )
    return Finding("model", "ok", f"{', '.join(check.verified)} verified (SHA-256) in {check.directory}")


def _offline_part(store: VectorStore, name: str, check: Callable[[], Finding]) -> Finding:
    try:
        return check()
    except ConfigurationError as exc:
        return Finding(name, "fail", str(exc), "chmod 700 the cache directory, or set SUPA_VECTORS_CACHE_DIR")
    except AuthError as exc:
        return Finding(name, "warn", f"not checked: {exc}", None)


def _cache(store: VectorStore) -> Finding:
    def check() -> Finding:
        directory: Path = store._offline.cache_directory
        if store._offline.mode == "off":
            return Finding("cache", "ok", "off")
        return Finding("cache", "ok", f"{directory} (private)")

    return _offline_part(store, "cache", check)


def _outbox(store: VectorStore) -> Finding:
    def check() -> Finding:
        pending = store.pending()
        if not pending:
            return Finding("outbox", "ok", "no writes waiting")
        queued = [p for p in pending if p.status == "queued"]
        rejected = [p for p in pending if p.status == "rejected"]
        oldest = min(p.queued_at for p in pending)
        age = age_text(max(0.0, time.time() - oldest.timestamp()))
        parts = [f"{len(queued)} write(s) waiting"] if queued else []
        if rejected:
            parts.append(f"{len(rejected)} refused by the server on replay ({rejected[0].error})")
        return Finding(
            "outbox",
            "warn",
            f"{', '.join(parts)}; the oldest queued {age} ago",
            "store.flush() in the app that queued them (or any call that reaches the backend); "
            "store.discard_rejected() for refused ones",
        )

    return _offline_part(store, "outbox", check)


def _mirror(store: VectorStore, last_updated_at: datetime | None) -> Finding:
    def check() -> Finding:
        if store._offline.mode == "off":
            return Finding("mirror", "ok", "off (the cache is off)")
        age = store._offline.mirror_age()
        fix = "supa-vectors mirror sync"
        if age is None:
            return Finding(
                "mirror", "warn", "never synced: a new question cannot be answered while offline", fix
            )
        synced = time.time() - age
        if last_updated_at is not None and last_updated_at.timestamp() > synced:
            return Finding(
                "mirror",
                "warn",
                f"stale: synced {age_text(age)} ago, and the store changed after that "
                f"(at {last_updated_at:%Y-%m-%d %H:%M:%S %Z})",
                fix,
            )
        return Finding("mirror", "ok", f"synced {age_text(age)} ago, nothing changed since")

    return _offline_part(store, "mirror", check)


# ---------------------------------------------------------------------------------------------------
# --fix


def _repair(store: VectorStore, findings: Sequence[Finding]) -> list[str]:
    """Rebuild the vector index when the findings say it is missing; nothing else is repaired here."""
    index = next((f for f in findings if f.name == "vector index"), None)
    if index is None or index.status != "fail" or "--fix" not in (index.fix or ""):
        return []
    restore = getattr(store.transport, "rpc_as_session_user", None)
    if not callable(restore):
        return [
            "nothing: rebuilding the index needs the table owner; run with --database-url postgresql://..."
        ]
    try:
        rebuilt = bool(restore(rpcs.RESTORE_VECTOR_INDEX.name, {}))
    except SupaVectorsError as exc:
        return [f"nothing: restore_vector_index() failed: {' '.join(str(exc).split())}"]
    if rebuilt:
        return [f"rebuilt {INDEX_NAME} (restore_vector_index())"]
    return ["nothing: restore_vector_index() found nothing to rebuild (a live bulk load holds the index)"]


def _bytes(value: int) -> str:
    if value >= 1024 * 1024 * 1024:
        return f"{value / 1024**3:.1f} GB"
    if value >= 1024 * 1024:
        return f"{value / 1024**2:.0f} MB"
    return f"{value / 1024:.0f} kB"
