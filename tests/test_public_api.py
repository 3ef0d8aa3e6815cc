"""The public surface: what ``supa_vectors`` exports, what importing it costs, how configuration resolves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import supa_vectors
from supa_vectors import ConfigurationError, Identity
from supa_vectors._config import Target, target_from_env, target_from_url

# Why each is public: the stores and what builds them (transports, Identity, Embedder, OnnxEmbedder,
# CircuitBreaker), what they return (the models, FlushResult, PendingWrite, SyncResult), what they
# raise (the errors), and what an app writes for them (Filter, validate_filter, Transport protocols).
EXPECTED_ALL = [
    "ArchiveError",
    "AsyncPostgresTransport",
    "AsyncPostgrestTransport",
    "AsyncTransport",
    "AsyncVectorStore",
    "AuthError",
    "BackendError",
    "BackendUnavailableError",
    "BackupError",
    "BackupResult",
    "CircuitBreaker",
    "ConfigurationError",
    "DeleteCount",
    "Document",
    "DocumentError",
    "Embedder",
    "EmbeddingError",
    "Filter",
    "FilterError",
    "FlushResult",
    "HybridSearchResult",
    "Identity",
    "IndexRebuildError",
    "InvalidInputError",
    "LocalStackError",
    "ModelMismatchError",
    "NotFoundError",
    "OnnxEmbedder",
    "PendingWrite",
    "PostgresTransport",
    "PostgrestTransport",
    "ProcessStats",
    "QueryTimeoutError",
    "RestoreResult",
    "RpcStats",
    "SearchResult",
    "StoreStats",
    "StoredDocument",
    "SupaVectorsError",
    "SyncResult",
    "TableSize",
    "Transport",
    "UpsertResult",
    "VectorStore",
    "__version__",
    "validate_filter",
]


def test_all_is_pinned() -> None:
    assert sorted(supa_vectors.__all__) == EXPECTED_ALL
    assert len(set(supa_vectors.__all__)) == len(supa_vectors.__all__)


def test_every_exported_name_resolves() -> None:
    for name in supa_vectors.__all__:
        assert getattr(supa_vectors, name) is not None, name
    assert supa_vectors.PostgresTransport.__module__ == "supa_vectors.transport.postgres"
    assert supa_vectors.PostgrestTransport.__module__ == "supa_vectors.transport.postgrest"
    assert supa_vectors.OnnxEmbedder.__module__.startswith("supa_vectors.embedding")
    with pytest.raises(AttributeError):
        _ = supa_vectors.NoSuchThing


# The modules and packages public by path, each for a reason; every other one is ``_``-prefixed.
PUBLIC_MODULES = {
    "errors": "apps catch its classes and the docs import them by path",
    "filters": "the filter grammar (Filter, validate_filter, the operators) by path, as the docs do",
    "transport": "PostgresTransport by path (README), and the interface a custom transport implements",
    "embedding": "the Embedder protocol, OnnxEmbedder and the model install",
    "migrate": "the migration's own API (migrate, verify, rollback, Retry, reports)",
    "local": "the embedded local stack, used by tests and the CLI",
    "cli": "the console script's package",
    "cache": "the offline layer; its public names (CircuitBreaker, results) are re-exported",
    "integrations": "the LangChain and LlamaIndex adapters, imported by path (each needs its extra)",
}


def test_every_other_module_is_private() -> None:
    package = Path(supa_vectors.__file__).parent
    names = {p.stem for p in package.glob("*.py")} | {p.parent.name for p in package.glob("*/__init__.py")}
    public = {n for n in names if not n.startswith("_")}
    assert public == set(PUBLIC_MODULES)


def test_every_error_is_a_supa_vectors_error() -> None:
    errors = [getattr(supa_vectors, n) for n in supa_vectors.__all__ if n.endswith("Error")]
    assert all(issubclass(e, supa_vectors.SupaVectorsError) for e in errors)


def test_importing_the_package_stays_light() -> None:
    """No ONNX runtime, tokenizer, psycopg or supabase-py until they are used."""
    heavy = ("onnxruntime", "tokenizers", "psycopg", "supabase", "httpx")
    code = f"import sys, supa_vectors; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------------------------------------
# configuration


def test_urls_choose_the_transport() -> None:
    assert target_from_url("https://abc.supabase.co", "key") == Target(
        "postgrest", "https://abc.supabase.co", "key"
    )
    assert target_from_url("postgres://u:p@h/db").kind == "postgres"
    assert target_from_url(" postgresql://u@h:5432/db ").url == "postgresql://u@h:5432/db"
    for url, key in [
        ("https://abc.supabase.co", None),
        ("postgresql://h/db", "key"),
        ("mysql://h/db", None),
        ("", None),
    ]:
        with pytest.raises(ConfigurationError):
            target_from_url(url, key)


def test_targets_never_print_secrets() -> None:
    text = repr(target_from_url("postgresql://user:s3cret@db.example.com:5432/postgres"))
    assert "s3cret" not in text
    assert "db.example.com:5432" in text
    assert "sb-key" not in repr(target_from_url("https://abc.supabase.co", "sb-key"))


def test_environment_order(monkeypatch: pytest.MonkeyPatch) -> None:
    supabase = {"SUPABASE_URL": "https://abc.supabase.co", "SUPABASE_KEY": "k"}
    database = {"SUPA_VECTORS_DATABASE_URL": "postgresql://u@h/db"}
    assert target_from_env({**supabase, **database}).kind == "postgrest"
    assert target_from_env(database) == Target("postgres", "postgresql://u@h/db")
    with pytest.raises(ConfigurationError, match="SUPABASE_KEY"):
        target_from_env({"SUPABASE_URL": "https://abc.supabase.co", **database})

    from supa_vectors.local import LocalStack

    monkeypatch.setattr(LocalStack, "url", lambda self: "postgresql://postgres@127.0.0.1:5555/postgres")
    assert target_from_env({}) == Target("postgres", "postgresql://postgres@127.0.0.1:5555/postgres")
    # Stopped: the URL of its last start, so a store falls back to its cache like with any outage.
    monkeypatch.setattr(LocalStack, "url", lambda self: None)
    monkeypatch.setattr(LocalStack, "last_url", lambda self: "postgresql://postgres@127.0.0.1:5556/postgres")
    assert target_from_env({}) == Target("postgres", "postgresql://postgres@127.0.0.1:5556/postgres")
    # Never started: nothing to try.
    monkeypatch.setattr(LocalStack, "last_url", lambda self: None)
    with pytest.raises(ConfigurationError, match="supa-vectors local start"):
        target_from_env({})


async def test_https_urls_get_the_postgrest_transport() -> None:
    from supa_vectors.transport.postgrest import AsyncPostgrestTransport, PostgrestTransport

    with supa_vectors.VectorStore.from_url("https://abc.supabase.co", "key") as store:
        assert isinstance(store.transport, PostgrestTransport)
    async with supa_vectors.AsyncVectorStore.from_url("https://abc.supabase.co", "key") as astore:
        assert isinstance(astore.transport, AsyncPostgrestTransport)
    with pytest.raises(ConfigurationError, match="identity"):
        supa_vectors.VectorStore.from_url("https://abc.supabase.co", "key", identity=Identity.service())


def test_from_env_builds_a_store(monkeypatch: pytest.MonkeyPatch, clean_url: str) -> None:
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    monkeypatch.setenv("SUPA_VECTORS_DATABASE_URL", clean_url)
    with supa_vectors.VectorStore.from_env(
        identity=Identity.user("00000000-0000-4000-8000-00000000000a")
    ) as store:
        assert store.count() == 0
    monkeypatch.setenv("SUPABASE_URL", "https://abc.supabase.co")
    monkeypatch.setenv("SUPABASE_KEY", "k")
    with pytest.raises(ConfigurationError, match="identity"):
        supa_vectors.VectorStore.from_env(identity=Identity.service())
