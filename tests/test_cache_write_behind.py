"""The results cache writes behind (decision 0025): a search queues its answer, a background thread
writes queued answers in batches, one SQLite transaction each.

What must hold: the search's own thread (the event loop, for the async store) never writes the cache;
an answer is readable at once in the process and on disk after ``close()``; a process killed in the
middle of a batch leaves a cache that opens and answers, missing only that batch; identities stay
apart; the queue is bounded; and a cache file never runs code when read. Synchronisation is by events
and explicit flushes, never by sleeping.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import pytest

from supa_vectors import (
    AsyncVectorStore,
    BackendUnavailableError,
    CircuitBreaker,
    Identity,
    VectorStore,
)
from supa_vectors.cache.results import CachedAnswer, ResultsCache
from supa_vectors.cache.writebehind import WriteBehind
from supa_vectors.transport.postgres import AsyncPostgresTransport, PostgresTransport
from tests.conftest import DIM, REPO_ROOT, USER_A, USER_B, FakeEmbedder

DOCS = [
    {"id": f"doc-{i}", "content": f"{word} notes number {i}"}
    for i, word in enumerate(["cat", "dog", "owl", "fox"])
]
WAIT = 30.0  # an upper bound for events that happen at once; never how long a test takes


def vector(seed: int) -> np.ndarray:
    out = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return out / np.linalg.norm(out)


def answer(seed: int) -> CachedAnswer:
    rows = [{"id": f"d{seed}", "content": "x" * 100, "metadata": {}, "similarity": 0.5}]
    return CachedAnswer("search", rows, 100.0, 0, 10, None, {}, vector(seed))


def open_breaker(store: VectorStore | AsyncVectorStore) -> None:
    store.breaker.record_failure()  # threshold 1: calls are refused from now on, as in an outage
    assert store.breaker.state == "open"


def breaker() -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=1, reset_timeout=3600)


@pytest.fixture
def loaded(clean_url: str) -> str:
    with VectorStore(PostgresTransport(clean_url), embedder=FakeEmbedder(), cache="off") as store:
        store.add(DOCS)
    return clean_url


@pytest.fixture
def set_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads every diskcache ``set`` runs on (the results cache's only way to write)."""
    threads: list[int] = []
    original = diskcache.Cache.set

    def recording(self: diskcache.Cache, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(diskcache.Cache, "set", recording)
    return threads


@pytest.fixture
def held_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold every results-cache batch until the test sets ``release``; ``entered`` is set once the
    writer holds one."""
    entered, release = threading.Event(), threading.Event()
    original = ResultsCache._write_batch

    def held(self: ResultsCache, batch: Sequence[tuple[str, Any]]) -> None:
        entered.set()
        assert release.wait(WAIT)
        original(self, batch)

    monkeypatch.setattr(ResultsCache, "_write_batch", held)
    yield entered, release
    release.set()


# --------------------------------------------------------------------------------------------------
# off the search path, and what survives close()


def test_a_search_leaves_its_cache_write_to_the_writer_and_close_persists_it(
    loaded: str, tmp_path: Path, set_threads: list[int]
) -> None:
    store = VectorStore(PostgresTransport(loaded), embedder=FakeEmbedder(), cache_dir=tmp_path)
    online = [r.id for r in store.search("cat notes", k=2)]
    assert threading.get_ident() not in set_threads  # before: the search wrote the cache itself
    store.close()
    assert set_threads  # close() wrote what was queued

    # A new process-like store over the same directory, backend refused: answered from disk.
    again = VectorStore(
        PostgresTransport(loaded), embedder=FakeEmbedder(), cache_dir=tmp_path, breaker=breaker()
    )
    again.settings()
    open_breaker(again)
    served = again.search("cat notes", k=2)
    assert [(r.id, r.source) for r in served] == [(i, "cache") for i in online]
    again.close()


def test_an_answer_is_served_offline_before_it_reaches_the_disk(
    loaded: str, tmp_path: Path, held_writes: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = held_writes
    store = VectorStore(
        PostgresTransport(loaded), embedder=FakeEmbedder(), cache_dir=tmp_path, breaker=breaker()
    )
    online = [r.id for r in store.search("dog notes", k=2)]
    assert entered.wait(WAIT)  # the writer holds the batch: nothing is on disk yet
    open_breaker(store)
    assert [(r.id, r.source) for r in store.search("dog notes", k=2)] == [(i, "cache") for i in online]
    release.set()
    store.close()


async def test_the_async_store_never_writes_the_cache_on_the_event_loop(
    loaded: str, tmp_path: Path, set_threads: list[int]
) -> None:
    store = AsyncVectorStore(AsyncPostgresTransport(loaded), embedder=FakeEmbedder(), cache_dir=tmp_path)
    online = [r.id for r in await store.search("owl notes", k=2)]
    await store.aclose()  # flushes in a thread
    assert set_threads
    assert threading.get_ident() not in set_threads

    again = AsyncVectorStore(
        AsyncPostgresTransport(loaded), embedder=FakeEmbedder(), cache_dir=tmp_path, breaker=breaker()
    )
    await again.settings()
    open_breaker(again)
    assert [(r.id, r.source) for r in await again.search("owl notes", k=2)] == [(i, "cache") for i in online]
    await again.aclose()


def test_identities_stay_apart_in_memory_and_on_disk(
    loaded: str, tmp_path: Path, held_writes: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = held_writes

    def store(user: str) -> VectorStore:
        transport = PostgresTransport(loaded, identity=Identity.user(user))
        return VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path, breaker=breaker())

    alice, bob = store(USER_A), store(USER_B)
    with VectorStore(
        PostgresTransport(loaded, identity=Identity.user(USER_A)), embedder=FakeEmbedder(), cache="off"
    ) as writer:
        writer.add({"id": "alice-only", "content": "fox den secret"})
    assert [r.id for r in alice.search("fox den secret", k=1)] == ["alice-only"]
    bob.settings()
    assert entered.wait(WAIT)
    open_breaker(bob)
    with pytest.raises(BackendUnavailableError):  # Alice's queued answer is not Bob's
        bob.search("fox den secret", k=1)
    release.set()
    alice.close()
    with pytest.raises(BackendUnavailableError):  # nor once it is on disk
        bob.search("fox den secret", k=1)
    bob.close()


# --------------------------------------------------------------------------------------------------
# the queue on its own


def test_the_queue_is_bounded_and_drops_the_oldest() -> None:
    entered, release = threading.Event(), threading.Event()
    written: list[list[str]] = []

    def write(batch: Sequence[tuple[str, int]]) -> None:
        entered.set()
        assert release.wait(WAIT)
        written.append([key for key, _ in batch])

    behind: WriteBehind[int] = WriteBehind(write, max_pending=3)
    behind.put("first", 0)
    assert entered.wait(WAIT)  # "first" is being written; the queue is empty again
    for i in range(5):
        behind.put(f"k{i}", i)
    assert behind.dropped == 2
    assert behind.get("k0") is None
    assert behind.get("k1") is None
    assert (behind.get("first"), behind.get("k2"), behind.get("k4")) == (0, 2, 4)
    assert behind.queued == 4
    release.set()
    behind.close()
    assert [key for batch in written for key in batch] == ["first", "k2", "k3", "k4"]
    assert behind.queued == 0
    behind.put("late", 9)  # after close: written at once, by the caller
    assert written[-1] == ["late"]


def test_without_a_thread_to_write_them_entries_are_written_by_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(_thread, "start_new_thread", refuse)
    written: list[tuple[str, int]] = []
    behind: WriteBehind[int] = WriteBehind(written.extend)
    behind.put("k", 1)
    assert written == [("k", 1)]
    assert behind.queued == 0


def test_a_key_put_again_keeps_its_newest_value(tmp_path: Path) -> None:
    cache = ResultsCache(tmp_path, size_limit=1 << 20)
    cache.put_answer("k", answer(1))
    cache.put_answer("k", answer(2))
    cache.close()
    reopened = ResultsCache(tmp_path, size_limit=1 << 20)
    found = reopened.get_answer("k")
    assert found is not None
    assert found.rows[0]["id"] == "d2"
    reopened.close()


# --------------------------------------------------------------------------------------------------
# a crash in the middle of a batch


KILLED_MID_BATCH = textwrap.dedent(
    """
    import pathlib, sys, threading
    import diskcache
    from tests.test_cache_write_behind import answer
    from supa_vectors.cache.results import ResultsCache

    original_batch = ResultsCache._write_batch

    def reporting(self, batch):
        original_batch(self, batch)
        print("committed", " ".join(key for key, _ in batch), flush=True)

    ResultsCache._write_batch = reporting
    cache = ResultsCache(pathlib.Path(sys.argv[1]), size_limit=1 << 24)
    for i in range(50):
        cache.put_answer(f"flushed-{i}", answer(i))
    cache.flush()
    original_set = diskcache.Cache.set
    count = 0

    def stalling(self, *args, **kwargs):
        global count
        count += 1
        result = original_set(self, *args, **kwargs)
        if count == 10:  # the tenth answer written since: inside a batch's transaction, uncommitted
            print("mid-batch", flush=True)
            threading.Event().wait()
        return result

    diskcache.Cache.set = stalling
    for i in range(100):
        cache.put_answer(f"queued-{i}", answer(1000 + i))
    threading.Event().wait()  # until killed
    """
)


def test_a_process_killed_mid_batch_leaves_a_cache_that_opens_and_answers(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_BATCH, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    committed: set[str] = set()
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("committed "):
                committed.update(line.split()[1:])
            else:
                assert line.strip() == "mid-batch", child.stderr.read() if child.stderr else ""
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
    assert child.returncode == -signal.SIGKILL
    assert {f"flushed-{i}" for i in range(50)} <= committed

    cache = ResultsCache(tmp_path, size_limit=1 << 24)
    assert cache.available
    for i in range(50):  # everything flushed before the crash is there
        found = cache.get_answer(f"flushed-{i}")
        assert found is not None
        assert found.rows[0]["id"] == f"d{i}"
    # Whole batches or nothing: exactly the answers of the batches committed before the kill, none of
    # the one it died in (and at least that one is missing: at most the last moment is lost).
    present = {f"queued-{i}" for i in range(100) if cache.get_answer(f"queued-{i}") is not None}
    assert present == {key for key in committed if key.startswith("queued-")}
    assert len(present) < 100
    cache.put_answer("after", answer(7))
    cache.close()
    reopened = ResultsCache(tmp_path, size_limit=1 << 24)
    assert reopened.get_answer("after") is not None
    assert (cache.errors, reopened.errors) == (0, 0)
    reopened.close()


def test_answers_never_closed_are_written_at_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import pathlib, sys
        from tests.test_cache_write_behind import answer
        from supa_vectors.cache.results import ResultsCache

        cache = ResultsCache(pathlib.Path(sys.argv[1]), size_limit=1 << 24)
        for i in range(20):
            cache.put_answer(f"k{i}", answer(i))
        # no close(), no flush(): the process just ends
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr
    cache = ResultsCache(tmp_path, size_limit=1 << 24)
    assert all(cache.get_answer(f"k{i}") is not None for i in range(20))
    cache.close()


# --------------------------------------------------------------------------------------------------
# reading a cache file never runs code


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_planted_in_the_cache_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    ResultsCache(tmp_path / "cache", size_limit=1 << 20).close()
    with diskcache.Cache(str(tmp_path / "cache" / "results")) as planted:
        planted.set("k", _Planted(marker))  # diskcache's default Disk stores it as a pickle

    cache = ResultsCache(tmp_path / "cache", size_limit=1 << 20)
    assert cache.get_answer("k") is None
    assert not marker.exists()  # before: reading the entry created the directory
    assert cache.errors == 1  # reported once, and dropped
    assert cache.get_answer("k") is None
    assert cache.errors == 1
    cache.close()
