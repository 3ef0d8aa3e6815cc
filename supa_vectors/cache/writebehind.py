"""Write-behind: cache entries queued in memory and written to disk by a background thread, in batches.

Why: in the default ``network-first`` mode every answer the backend gives is stored for the next outage.
Written inline, that store (a diskcache ``set``: an SQLite transaction, plus encoding the answer) was
most of what ``VectorStore.search`` cost over the bare transport (decision 0025). Queued, a search pays
for a dictionary insert; the thread pays for the disk, one transaction per batch.

Guarantees:

* **read-your-writes within the process**: :meth:`WriteBehind.get` sees an entry from the moment it is
  put until it is on disk (queued or being written), so a fallback right after an answer finds it;
* **bounded**: at most ``max_pending`` entries wait; under pressure the oldest is dropped (it is only
  a cache entry) and counted in :attr:`WriteBehind.dropped`;
* **flushed** by :meth:`WriteBehind.flush` and :meth:`WriteBehind.close` (``VectorStore.close()``, a
  ``with`` block's exit), and at interpreter exit for every write-behind still open;
* **crash-safe**: each batch is written by ``write`` in one transaction (diskcache's SQLite), so a
  process killed at any moment loses at most what was queued and not yet committed, and the cache it
  leaves opens and answers.

The thread runs only while there is something to write (it exits after ``idle`` seconds without work
and is started again by the next put), so a store that is never closed does not keep a thread alive.
It is started with :func:`_thread.start_new_thread`, which does not wait for the new thread to be
scheduled (``threading.Thread.start`` does: 44 µs at the median and 1.7 ms at p95 on a loaded
two-core machine, on the search that starts it). Its timed waits batch writes; they are never how a
caller waits for a write (that is :meth:`flush`).
"""

from __future__ import annotations

import _thread
import atexit
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["WriteBehind"]

logger = logging.getLogger("supa_vectors.cache")

V = TypeVar("V")

# Every write-behind not yet closed, flushed at interpreter exit (weakly held: an unreachable one has
# nothing queued, its thread having written everything before it exited).
_OPEN: weakref.WeakSet[WriteBehind[Any]] = weakref.WeakSet()


class WriteBehind(Generic[V]):
    """Entries ``put`` by key, written by ``write`` (a batch of ``(key, value)``, in one transaction)
    from a background thread; the newest value of a key wins."""

    def __init__(
        self,
        write: Callable[[Sequence[tuple[str, V]]], None],
        *,
        max_pending: int = 1000,
        max_batch: int = 256,
        linger: float = 0.1,
        idle: float = 30.0,
    ) -> None:
        self._write = write
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.linger = linger
        self.idle = idle
        self.dropped = 0
        self.closed = False
        self._reset()
        _OPEN.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()  # one batch on its way to disk at a time
        self._pending: OrderedDict[str, V] = OrderedDict()
        self._inflight: dict[str, V] = {}
        self._writer: object | None = None  # the running writer's token, None when none runs

    # ---- the caller's side -------------------------------------------------------------------------

    def put(self, key: str, value: V) -> None:
        """Queue ``value`` under ``key`` (replacing a queued one); written at once, by the caller, after
        :meth:`close` or when no writer thread can be started."""
        with self._cond:
            self._pending[key] = value
            self._pending.move_to_end(key)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.dropped += 1
                if self.dropped == 1:
                    logger.warning(
                        "supa-vectors cache: more than %d entries waited for the disk; dropping the "
                        "oldest (counted in dropped)",
                        self.max_pending,
                    )
            inline = self.closed
            if not inline and self._writer is None:
                self._writer = token = object()
                try:
                    _thread.start_new_thread(self._run, (token,))
                except RuntimeError:  # no more threads, or the interpreter is shutting down
                    self._writer = None
                    inline = True
            elif not inline and (len(self._pending) == 1 or len(self._pending) >= self.max_batch):
                self._cond.notify()  # wake an idle writer, or cut a lingering batch short
        if inline:
            self.flush()

    def get(self, key: str) -> V | None:
        """The value queued or being written under ``key``, or None (then ask the disk)."""
        with self._cond:
            found = self._pending.get(key)
            return found if found is not None else self._inflight.get(key)

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._inflight)

    def flush(self) -> None:
        """Write everything queued before this call (on the calling thread, unless the background
        thread is writing it already: then wait for that batch)."""
        while self._write_once():
            pass

    def close(self) -> None:
        """Flush; later puts are written at once, by the caller."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self.flush()
        _OPEN.discard(self)

    # ---- the writer's side -------------------------------------------------------------------------

    def _write_once(self) -> bool:
        """Write one batch of what is queued; False when nothing was."""
        with self._write_lock:
            with self._cond:
                if not self._pending:
                    return False
                while self._pending and len(self._inflight) < self.max_batch:
                    key, value = self._pending.popitem(last=False)
                    self._inflight[key] = value
                batch = list(self._inflight.items())
            try:
                self._write(batch)  # reports its own failures; a batch that fails is dropped
            finally:
                with self._cond:
                    self._inflight.clear()
            return True

    def _run(self, token: object) -> None:
        try:
            while True:
                with self._cond:
                    if not self._pending and not self.closed:
                        self._cond.wait(self.idle)
                    if not self._pending or self.closed:
                        self._stop(token)  # under the lock: a put from now on starts a new writer
                        return
                    if len(self._pending) < self.max_batch:
                        # Let a burst of answers gather into one transaction.
                        self._cond.wait(self.linger)
                self._write_once()
        except BaseException:
            with self._cond:
                self._stop(token)
            raise

    def _stop(self, token: object) -> None:
        if self._writer is token:
            self._writer = None


def _flush_all() -> None:
    for behind in list(_OPEN):
        behind.close()


def _after_fork_in_child() -> None:
    # The parent's thread and locks did not come along (a lock may have been held mid-write), and the
    # parent writes what it queued: the child starts empty.
    for behind in list(_OPEN):
        behind._reset()


atexit.register(_flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
