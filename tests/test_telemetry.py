"""The SDK's own monitoring (decision 0021): one OpenTelemetry span per operation, ``process_stats()``,
and the process half of ``supa-vectors stats``, against the real local stack.

Spans are read with the OpenTelemetry SDK's in-memory exporter behind the global tracer provider (set
once per test process, as an app would). Outages are a real stop of a stack of the test's own, or the
fault-injecting transport of tests/test_offline.py; time moves through the breaker's clock only.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from supa_vectors import (
    AsyncPostgresTransport,
    AsyncVectorStore,
    BackendUnavailableError,
    CircuitBreaker,
    InvalidInputError,
    ProcessStats,
    VectorStore,
)
from supa_vectors._core.telemetry import LATENCY_BOUNDS_MS, Telemetry
from supa_vectors.cli import main
from supa_vectors.local import LocalStack
from supa_vectors.transport.postgres import PostgresTransport
from tests.conftest import REPO_ROOT, FakeEmbedder
from tests.test_offline import FakeClock, FaultyTransport

DEAD_URL = "postgresql://postgres@127.0.0.1:1/postgres"  # nothing listens on port 1: refused at once


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)  # once per process, as an app does at start-up
    assert trace.get_tracer_provider() is provider, "another test module set a tracer provider first"
    yield memory
    memory.shutdown()  # the tests after this module keep nothing


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == f"supa_vectors.{name}"]


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = named(exporter, name)
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def docs(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"d{i}", "content": f"coffee beans roast note {i}", "metadata": {"n": i}} for i in range(count)
    ]


# --------------------------------------------------------------------------------------------------
# spans


def test_one_span_per_operation_with_its_rpc_and_rows(
    clean_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache_dir=tmp_path) as store:
        store.add(docs(5))
        store.search("coffee", k=3)
        store.get(["d1", "d2", "missing"])
        store.count()
        store.delete(["d4"])
        list(store.iter_documents(page_size=10))
    expected = {
        "upsert": ("bulk_upsert", 5),
        "search": ("match_documents", 3),
        "get": ("get_documents", 2),
        "count": ("count_documents", None),
        "delete": ("delete_documents", 1),
        "iter_documents": ("list_documents", 4),
    }
    for operation, (rpc, rows) in expected.items():
        span = only(spans, operation)
        attributes = dict(span.attributes or {})
        assert span.kind is SpanKind.CLIENT
        assert attributes["db.system"] == "postgresql"
        assert attributes["db.operation.name"] == rpc
        assert attributes.get("supa_vectors.rows") == rows, operation
        assert span.status.status_code is StatusCode.UNSET
    search = dict(only(spans, "search").attributes or {})
    assert (search["supa_vectors.cache.source"], search["supa_vectors.stale"]) == ("backend", False)
    assert search["supa_vectors.rpc_calls"] == 1
    # The settings, read once inside the first operation, are their own span under it.
    settings = only(spans, "settings")
    assert settings.parent is not None
    assert settings.parent.span_id == only(spans, "upsert").context.span_id


def test_a_stopped_database_answers_from_the_cache_and_the_span_says_so(
    own_stack: LocalStack, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    url = own_stack.start()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30, clock=FakeClock())
    store = VectorStore(
        PostgresTransport(url, max_size=1), embedder=FakeEmbedder(), cache_dir=tmp_path, breaker=breaker
    )
    store.add(docs(6))
    online = store.search("coffee roast", k=3)
    own_stack.stop()  # a real stop: the server process goes away
    offline = store.search("coffee roast", k=3)
    assert [r.id for r in offline] == [r.id for r in online]
    first, second = named(spans, "search")
    assert dict(first.attributes or {})["supa_vectors.cache.source"] == "backend"
    attributes = dict(second.attributes or {})
    assert (attributes["supa_vectors.cache.source"], attributes["supa_vectors.stale"]) == ("cache", True)
    assert attributes["supa_vectors.rows"] == 3
    assert second.status.status_code is StatusCode.UNSET  # answered, from the cache
    figures = store.process_stats()
    assert figures.answers == {"backend": 1, "cache": 1}
    assert figures.cache_hit_rate == 0.5
    assert figures.breaker_state == "open"
    store.close()


def test_errors_are_recorded_by_type_without_their_message(
    clean_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    with (
        VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache_dir=tmp_path) as store,
        pytest.raises(InvalidInputError),
    ):
        store.search("coffee", k=0)
    with (
        VectorStore(PostgresTransport(DEAD_URL), embedder=FakeEmbedder(), cache="off") as dead,
        pytest.raises(BackendUnavailableError) as refused,
    ):
        dead.count()
    bad, down = only(spans, "search"), only(spans, "count")
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.status.description == "InvalidInputError"
    assert dict(bad.attributes or {})["error.type"] == "supa_vectors.errors.InvalidInputError"
    assert down.status.description == type(refused.value).__name__ == "BackendUnavailableError"
    for span in (bad, down):
        assert not span.events  # no exception event: its message could quote the input


SECRETS = {
    "query": "zanzibar-query-secret",
    "content": "marmalade-content-secret",
    "id": "doc-id-secret",
    "metadata": "metadata-value-secret",
    "filter": "filter-field-secret",
    "password": "pw-token-secret",
}


def test_no_query_content_id_vector_or_credential_lands_in_a_span(
    clean_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    url = clean_url.replace("postgres@", f"postgres:{SECRETS['password']}@", 1)
    assert SECRETS["password"] in url
    with VectorStore(PostgresTransport(url), embedder=FakeEmbedder(), cache_dir=tmp_path) as store:
        store.add(
            {"id": SECRETS["id"], "content": SECRETS["content"], "metadata": {"tag": SECRETS["metadata"]}}
        )
        store.search(SECRETS["query"], k=2, filter={"tag": SECRETS["metadata"]})
        store.search([0.5] * 384, k=1)
        store.hybrid_search(SECRETS["query"], k=2)
        store.get(SECRETS["id"])
        with pytest.raises(Exception, match=SECRETS["filter"]):  # its message quotes the field ...
            store.search(SECRETS["query"], filter={SECRETS["filter"]: {"$nope": 1}})
        store.delete(SECRETS["id"])
    finished = spans.get_finished_spans()
    assert len(finished) >= 7
    for span in finished:
        texts = [span.name, span.status.description or ""]
        for key, value in (span.attributes or {}).items():
            assert isinstance(value, str | int | float | bool), (key, value)  # never a vector
            texts += [key, str(value)]
        for event in span.events:
            texts += [event.name, *(f"{key}={value}" for key, value in (event.attributes or {}).items())]
        for secret in SECRETS.values():  # ... which never reaches a span
            assert not any(secret in text for text in texts), (span.name, secret)


async def test_async_spans_parent_under_the_apps_span(
    clean_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("the-app")
    async with AsyncVectorStore(
        AsyncPostgresTransport(clean_url), embedder=FakeEmbedder(), cache_dir=tmp_path
    ) as store:
        await store.add(docs(4))

        async def request(number: int) -> int:
            with tracer.start_as_current_span(f"request-{number}") as parent:
                await store.search(f"coffee {number}", k=2)
                await asyncio.sleep(0)  # let the other request interleave
                await store.count()
                return parent.get_span_context().span_id

        parents = await asyncio.gather(*(request(n) for n in range(3)))
    children = named(spans, "search") + named(spans, "count")
    assert len(children) == 6
    by_parent: dict[int, list[str]] = {}
    for span in children:
        assert span.parent is not None
        by_parent.setdefault(span.parent.span_id, []).append(span.name)
    assert set(by_parent) == set(parents)
    assert all(sorted(names) == ["supa_vectors.count", "supa_vectors.search"] for names in by_parent.values())
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left attached


def test_the_sdk_works_without_opentelemetry_installed(clean_url: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ImportError(f"blocked: {{name}}")
        sys.meta_path.insert(0, Blocker())
        from supa_vectors import VectorStore
        from supa_vectors.transport.postgres import PostgresTransport
        from tests.conftest import FakeEmbedder
        with VectorStore(PostgresTransport({clean_url!r}), embedder=FakeEmbedder(),
                         cache_dir={str(tmp_path)!r}) as store:
            store.add({{"id": "a", "content": "coffee"}})
            assert [r.id for r in store.search("coffee", k=1)] == ["a"]
            print(store.process_stats().operations["search"].calls)
        assert not any(name.startswith("opentelemetry") for name in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


# --------------------------------------------------------------------------------------------------
# process_stats()


def test_process_stats_count_what_was_done_and_the_hit_rate_after_an_outage(
    clean_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    transport = FaultyTransport(PostgresTransport(clean_url))
    store = VectorStore(
        transport,  # type: ignore[arg-type]
        embedder=FakeEmbedder(),
        cache_dir=tmp_path,
        breaker=CircuitBreaker(failure_threshold=1, reset_timeout=30, clock=clock),
    )
    store.add(docs(8))
    for _ in range(3):
        store.search("coffee roast", k=2)
    store.sync_mirror()
    with pytest.raises(InvalidInputError):
        store.search("coffee", k=0)
    before = store.process_stats()
    assert before.answers == {"backend": 3}
    assert before.cache_hit_rate == 0.0
    assert before.errors == {"InvalidInputError": 1}
    assert (before.breaker_state, before.outbox_depth) == ("closed", 0)

    transport.down = True
    store.search("coffee roast", k=2)  # asked before: the cache
    store.search("beans note 3", k=2)  # never asked: the mirror
    with pytest.raises(BackendUnavailableError):
        store.hybrid_search("beans note 3", k=2)  # the mirror has no full-text ranking: no answer
    assert store.add({"id": "late", "content": "written offline"})[0].status == "queued"
    clock.advance(5)
    figures = store.process_stats()
    search = figures.operations["search"]
    assert search.calls == 6
    assert search.errors == {"InvalidInputError": 1}
    assert search.answers == {"backend": 3, "cache": 1, "mirror": 1}
    assert figures.answers == {"backend": 3, "cache": 1, "mirror": 1}
    assert figures.cache_hit_rate == pytest.approx(2 / 5)
    assert figures.operations["hybrid"].errors == {"BackendUnavailableError": 1}
    assert figures.errors == {"InvalidInputError": 1, "BackendUnavailableError": 1}
    assert figures.operations["upsert"].calls == 2
    assert figures.operations["sync_mirror"].calls == 1
    assert figures.calls == sum(op.calls for op in figures.operations.values())
    assert (figures.breaker_state, figures.breaker_times_opened) == ("open", 1)
    assert figures.outbox_depth == 1
    assert figures.outbox_oldest_age_seconds is not None
    assert figures.outbox_oldest_age_seconds >= 0
    assert all(
        op.mean_ms is not None
        and op.p95_ms is not None
        and op.max_ms is not None
        and 0 < op.mean_ms <= op.max_ms
        for op in figures.operations.values()
    )
    assert all(op.p95_ms <= op.max_ms for op in figures.operations.values() if op.p95_ms and op.max_ms)
    with pytest.raises(ValueError, match="frozen"):
        figures.calls = 0
    transport.down = False
    clock.advance(31)
    assert store.flush().upserted == 1
    assert store.process_stats().outbox_depth == 0
    store.close()


async def test_the_async_store_counts_the_same_way(clean_url: str, tmp_path: Path) -> None:
    async with AsyncVectorStore(
        AsyncPostgresTransport(clean_url), embedder=FakeEmbedder(), cache_dir=tmp_path, cache="cache-first"
    ) as store:
        await store.add(docs(3))
        await store.search("coffee", k=2)
        await store.search("coffee", k=2)  # cache-first: answered by the cache, not stale
        figures = store.process_stats()
    assert isinstance(figures, ProcessStats)
    assert figures.operations["search"].answers == {"backend": 1, "cache": 1}
    assert figures.cache_hit_rate == 0.5


class YieldingKey(str):
    """An error type name whose hashing lets other threads run: between a counter's read and its
    write, where an unlocked update loses the other threads' counts."""

    def __hash__(self) -> int:
        time.sleep(0)
        return str.__hash__(self)


def test_counters_lose_nothing_across_threads() -> None:
    telemetry = Telemetry()
    error = YieldingKey("LookupError")

    def work() -> None:
        for _ in range(200):
            telemetry._record("search", 0.001, error, "cache")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counters = telemetry.snapshot()["search"]
    assert counters.calls == sum(counters.histogram) == 1600
    assert counters.errors == {"LookupError": 1600}
    assert counters.answers == {"cache": 1600}


def test_the_p95_comes_from_the_histogram_within_its_bucket_width() -> None:
    telemetry = Telemetry()
    for millis in [1.0] * 94 + [40.0] * 6:
        telemetry._record("search", millis / 1000, None, None)
    counters = telemetry.snapshot()["search"]
    p95 = counters.quantile_ms(0.95)
    assert p95 is not None
    assert 40.0 <= p95 <= 40.0 * 1.25
    assert counters.quantile_ms(0.5) == pytest.approx(min(b for b in LATENCY_BOUNDS_MS if b >= 1.0))


# --------------------------------------------------------------------------------------------------
# supa-vectors stats


def test_the_cli_prints_the_database_and_this_machines_figures(
    clean_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPA_VECTORS_CACHE_DIR", str(tmp_path))
    # A write an earlier process queued while the backend was down waits in the cache directory.
    with VectorStore(PostgresTransport(DEAD_URL), embedder=FakeEmbedder()) as offline:
        assert offline.add({"id": "q", "content": "queued while down"})[0].status == "queued"

    assert main(["stats", "--database-url", clean_url]) == 0
    text = capsys.readouterr().out
    assert "vector index present" in text
    assert "this machine: circuit breaker closed (0 failures in a row); outbox empty" in text
    assert "stats" in text.split("this command")[1]

    capsys.readouterr()
    assert main(["stats", "--json", "--database-url", DEAD_URL]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["database_error"].startswith("BackendUnavailableError")
    process = report["process"]
    assert (process["breaker_state"], process["outbox_depth"]) == ("open", 1)
    assert process["operations"]["stats"]["errors"] == {"BackendUnavailableError": 1}
    assert "unreachable" in captured.err

    assert main(["stats", "--database-url", DEAD_URL]) == 1
    text = capsys.readouterr().out
    assert text.startswith("database: no answer (BackendUnavailableError")
    assert re.search(
        r"circuit breaker open \(\d+ failures in a row\); outbox 1 write waiting, the oldest for", text
    )
