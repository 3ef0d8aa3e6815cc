"""The client's core: one table of RPCs, an explicit transport interface, twins that do not drift."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from supa_vectors._core.checks import hybrid_tuning
from supa_vectors._core.rpcs import RPCS, rpc_named
from supa_vectors.errors import ConfigurationError
from supa_vectors.transport import postgrest
from supa_vectors.transport.base import cache_label, subject_of
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgres import PostgresTransport

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "supa_vectors"


def _public_functions() -> set[str]:
    """Every function the migrations create in schema public (the RPCs; triggers are internal)."""
    names: set[str] = set()
    for path in sorted((ROOT / "supabase" / "migrations").glob("*.sql")):
        text = path.read_text()
        for match in re.finditer(
            r"create (?:or replace )?function public\.(\w+)\((.*?)\)\s*returns (\w+)", text, re.S
        ):
            if match.group(3) != "trigger":
                names.add(match.group(1))
    return names


def test_the_table_declares_every_rpc_of_the_migrations() -> None:
    assert set(RPCS) == _public_functions()


def test_rpc_names_are_written_in_one_python_file() -> None:
    """Adding or renaming an RPC touches one table entry, not every module that calls it."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RPCS:
                found.setdefault(node.value, set()).add(str(path.relative_to(PACKAGE)))
    assert {file for files in found.values() for file in files} == {"_core/rpcs.py"}


def test_an_unknown_rpc_is_moved_as_rows_and_never_replayed() -> None:
    custom = rpc_named("my_own_function")
    assert (custom.scalar, custom.idempotent, custom.vectors) == (False, False, True)
    assert rpc_named("count_documents").scalar
    assert rpc_named("bulk_upsert").vectors_beside == "documents"
    assert not rpc_named("begin_bulk_load").idempotent
    assert rpc_named("begin_bulk_load").owner


def test_transports_describe_themselves_through_the_interface() -> None:
    alice = Identity.user("0A1B2C3D-0000-0000-0000-000000000001")
    with PostgresTransport("postgresql://app:s3cret@db.example.com/app", identity=alice) as transport:
        assert cache_label(transport) == "postgres:postgresql://db.example.com/app"
        assert subject_of(transport) == "0a1b2c3d-0000-0000-0000-000000000001"

    class Custom:
        pass

    assert cache_label(Custom()).startswith("transport:")
    assert subject_of(Custom()) is None


class _Recording(httpx.AsyncClient):
    made: ClassVar[list[_Recording]] = []

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        _Recording.made.append(self)


def test_async_postgrest_transport_closes_its_http_client_when_setup_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The twin of the blocking transport's close on a failed setup (it leaked its client)."""
    monkeypatch.setattr(postgrest.httpx, "AsyncClient", _Recording)
    with pytest.raises(ConfigurationError, match="cannot create a supabase client"):
        postgrest.AsyncPostgrestTransport(url="not a url", key="sb_publishable_x")
    assert len(_Recording.made) == 1
    assert _Recording.made[0].is_closed


def _methods(tree: ast.Module, cls: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    return {
        item.name: item
        for item in node.body
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and not item.name.startswith("_")
    }


def test_every_store_operation_is_one_line_over_its_flow() -> None:
    """The twins cannot drift: checks, parameters and parsing live in the flow both run."""
    tree = ast.parse((PACKAGE / "_store.py").read_text())
    sync, asynchronous = _methods(tree, "VectorStore"), _methods(tree, "AsyncVectorStore")
    assert set(sync) - {"close"} == set(asynchronous) - {"aclose"}
    operations = {
        "upsert",
        "search",
        "hybrid_search",
        "get",
        "delete",
        "count",
        "stats",
        "flush",
        "sync_mirror",
    }
    for methods in (sync, asynchronous):
        for name in operations:
            body = [
                s
                for s in methods[name].body
                if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
            ]
            assert len(body) == 1, name
            assert "_flow(" in ast.unparse(body[0]), name


def test_hybrid_search_still_refuses_an_unknown_option() -> None:
    """Its tuning options travel as ``**tuning`` to ``hybrid_tuning``, whose keywords are the contract."""
    with pytest.raises(TypeError):
        hybrid_tuning(full_text_wieght=2.0)  # type: ignore[call-arg]
    assert hybrid_tuning(rrf_k=10).rrf_k == 10
