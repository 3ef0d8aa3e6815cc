"""A circuit breaker, and the rule for which failures count as "the backend is down".

Without a breaker every call during an outage waits for its own timeout (a connection pool's 30 s, an
HTTP connect timeout) before the store can fall back to the cache. After ``failure_threshold``
consecutive outage failures the breaker *opens*: calls are refused at once (the store answers from the
cache or the mirror in microseconds) until ``reset_timeout`` has passed. Then one call is let through as
a probe (*half-open*): if it succeeds the breaker closes, if it fails the breaker opens again.

The clock is injectable (``clock=``) so tests advance time instead of sleeping. The breaker is pure state
and a lock: the sync and async stores share it unchanged.

With ``state_file=`` what the breaker learned outlives the process: the consecutive failures and when it
opened (wall-clock time) are written there, private (0600), whenever they change, and read back by the
next breaker given the same file. A command-line call that found the backend down spares the next one
its timeout. A file that is missing, unreadable or from the future counts as "closed".
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from supa_vectors.cache.private import private_dir
from supa_vectors.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    QueryTimeoutError,
)

__all__ = ["BreakerState", "CircuitBreaker", "is_outage"]

BreakerState = Literal["closed", "open", "half-open"]


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` means the backend could not answer (fall back, count towards the breaker).

    Unreachable, timed out (connect, read or statement timeout) and 502/503/504 arrive as
    ``BackendUnavailableError`` or ``QueryTimeoutError``. A ``BackendError`` whose code is an HTTP status
    was written by something in front of PostgREST (a gateway's HTML error page, a paused project, a
    captive portal's 200 with a body that is not JSON): the database never answered either. A reply
    that is well-formed JSON but breaks the contract, an auth failure or a bad input is *not* an
    outage: serving stale data would hide a bug or a misconfiguration.
    """
    if isinstance(error, BackendUnavailableError | QueryTimeoutError):
        return True
    if type(error) is BackendError:  # AuthError (401/403), NotFoundError (404) are subclasses: not outages
        code = error.code
        return code is not None and len(code) == 3 and code.isdigit()
    return False


class CircuitBreaker:
    """Stops calling a backend that keeps failing, and probes it again after ``reset_timeout`` seconds.

    ``failure_threshold`` consecutive outage failures open it; one successful call closes it. A probe
    that never reports back (its task was cancelled) is forgotten after another ``reset_timeout``, so
    the breaker cannot stay half-open for ever.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        state_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ConfigurationError(
                f"failure_threshold must be a positive integer, got {failure_threshold!r}"
            )
        if not isinstance(reset_timeout, int | float) or not reset_timeout >= 0:
            raise ConfigurationError(f"reset_timeout must be a number of seconds >= 0, got {reset_timeout!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None
        self.times_opened = 0
        self.state_file = Path(state_file) if state_file is not None else None
        self._load()

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self.state!r}, failures={self._failures}, "
            f"failure_threshold={self.failure_threshold}, reset_timeout={self.reset_timeout:g})"
        )

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self.clock())

    @property
    def failures(self) -> int:
        """Consecutive outage failures since the last success."""
        return self._failures

    def _state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if now - self._opened_at < self.reset_timeout:
            return "open"
        return "half-open"

    def allow(self) -> bool:
        """Whether a call may go to the backend now; in half-open state only one probe at a time."""
        with self._lock:
            now = self.clock()
            state = self._state(now)
            if state == "closed":
                return True
            if state == "open":
                return False
            if self._probe_started is not None and now - self._probe_started < self.reset_timeout:
                return False
            self._probe_started = now
            return True

    def retry_in(self) -> float:
        """Seconds until the next probe may go out (0 when calls are allowed now)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._opened_at + self.reset_timeout - self.clock())

    def record_success(self) -> None:
        with self._lock:
            changed = self._failures != 0 or self._opened_at is not None
            self._failures = 0
            self._opened_at = None
            self._probe_started = None
            if changed:
                self._save()

    def record_failure(self) -> None:
        with self._lock:
            now = self.clock()
            self._failures += 1
            self._probe_started = None
            if self._opened_at is not None or self._failures >= self.failure_threshold:
                # A failed probe re-opens for a full reset_timeout, as does reaching the threshold.
                if self._opened_at is None or self._state(now) == "half-open":
                    self.times_opened += 1
                self._opened_at = now
            self._save()

    # ---- persistence (state_file) ------------------------------------------------------------------

    def _load(self) -> None:
        if self.state_file is None:
            return
        try:
            data = json.loads(self.state_file.read_text("utf-8"))
            failures = data["failures"]
            opened = data["opened_at"]
        except (OSError, ValueError, TypeError, KeyError):
            return
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            return
        self._failures = failures
        if isinstance(opened, int | float) and not isinstance(opened, bool):
            elapsed = time.time() - opened
            if elapsed >= 0:
                # The monotonic clocks of two processes share no origin: carry over how long ago it opened.
                self._opened_at = self.clock() - elapsed

    def _save(self) -> None:
        """Write the state (called under the lock); a cache that cannot be written only costs the next
        process a timeout, so failures are ignored."""
        if self.state_file is None:
            return
        opened = None if self._opened_at is None else time.time() - (self.clock() - self._opened_at)
        text = json.dumps({"failures": self._failures, "opened_at": opened})
        tmp = self.state_file.with_name(f"{self.state_file.name}.{os.getpid()}.{threading.get_ident()}")
        with contextlib.suppress(OSError, ConfigurationError):
            private_dir(self.state_file.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self.state_file)

    def record(self, error: BaseException | None) -> None:
        """Count one finished call: an outage is a failure; any answer (even an error) is a success."""
        if error is not None and is_outage(error):
            self.record_failure()
        else:
            self.record_success()

    def refusal(self) -> BackendUnavailableError:
        """The error an open breaker raises instead of calling (the store's fallback catches it)."""
        return BackendUnavailableError(
            f"the backend failed {self._failures} times in a row; not calling it for another "
            f"{self.retry_in():.1f} s (circuit breaker open)",
            code="circuit-open",
        )
