"""The client's core: one table of RPCs, an explicit transport interface, twins that do not drift."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

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
