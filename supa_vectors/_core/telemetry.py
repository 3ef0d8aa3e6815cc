"""What the process itself sees of its operations: counters for ``process_stats()`` and, when the app
uses OpenTelemetry, one span per operation (decision 0021).

Every public operation's flow runs inside :meth:`Telemetry.observe` (applied once, by
:func:`supa_vectors._core.flows.operation`), which times it, counts it per operation (calls, errors by
exception type, a latency histogram) and, for reads, where the answer came from (the offline layer
says so through :func:`note_answer`, the stores count the RPCs they send through :func:`note_rpc`).

OpenTelemetry is optional (the ``otel`` extra, ``opentelemetry-api`` only) and never imported by this
module: spans are made only once something in the process has imported ``opentelemetry.trace``
(an app that configures tracing, or ``opentelemetry-instrument``). A process that never did has no
tracer provider that could send anything, so it skips the import and pays nothing for it. Spans go to
the global tracer provider: without an SDK and an exporter configured by the app they are no-ops.

A span carries what identifies the operation and its outcome, never what the app passed in: no query
text, vector, document id or content, filter, credentials or exception message (those can quote
input); the error is its exception type.
"""

from __future__ import annotations

import bisect
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from supa_vectors._core.ops import Flow

__all__ = [
    "LATENCY_BOUNDS_MS",
    "OperationCounters",
    "Telemetry",
    "count_rows",
    "note_answer",
    "note_rpc",
]

T = TypeVar("T")

# Upper bounds (ms) of the latency histogram: 0.05 ms to ~27 s in steps of 25 %, so the p95 read from
# it is within 25 % of the true one, for 61 integers per operation and a bisect per call.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(0.05 * 1.25**i for i in range(60))

TRACER_NAME = "supa_vectors"
DB_SYSTEM = "postgresql"


@dataclass
class _Observation:
    """One running operation: what the layers below it noted while it ran."""

    source: str | None = None
    stale: bool = False
    rpc_calls: int = 0


# The operation running in this thread or task (nested operations, a store's settings read inside a
# search, stack and unstack through the token).
_CURRENT: ContextVar[_Observation | None] = ContextVar("supa_vectors_operation", default=None)


def note_answer(source: str, *, stale: bool) -> None:
    """Say where the running read's answer came from: ``backend``, ``cache`` or ``mirror``."""
    observation = _CURRENT.get()
    if observation is not None:
        observation.source = source
        observation.stale = stale


def note_rpc() -> None:
    """Count one RPC sent (or refused by the breaker) for the running operation."""
    observation = _CURRENT.get()
    if observation is not None:
        observation.rpc_calls += 1


@dataclass
class OperationCounters:
    """One operation's figures since the store was made (mutated under :class:`Telemetry`'s lock)."""

    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    def copy(self) -> OperationCounters:
        return OperationCounters(
            self.calls,
            dict(self.errors),
            dict(self.answers),
            self.total_seconds,
            self.max_seconds,
            list(self.histogram),
        )

    def quantile_ms(self, q: float) -> float | None:
        """The upper bound of the histogram bucket holding quantile ``q``, capped at the maximum."""
        if not self.calls:
            return None
        rank = q * self.calls
        seen = 0
        for bucket, count in enumerate(self.histogram):
            seen += count
            if seen >= rank and count:
                bound = LATENCY_BOUNDS_MS[bucket] if bucket < len(LATENCY_BOUNDS_MS) else float("inf")
                return min(bound, self.max_seconds * 1000.0)
        return self.max_seconds * 1000.0


class Telemetry:
    """One store's counters, and its spans when OpenTelemetry is in use. Thread-safe: one lock, held
    only to add a finished call's figures."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._operations: dict[str, OperationCounters] = {}
        self.started_at = time.time()
        self._tracer: Any = None

    def snapshot(self) -> dict[str, OperationCounters]:
        with self._lock:
            return {name: counters.copy() for name, counters in self._operations.items()}

    def _record(self, name: str, seconds: float, error: str | None, source: str | None) -> None:
        bucket = bisect.bisect_left(LATENCY_BOUNDS_MS, seconds * 1000.0)
        with self._lock:
            counters = self._operations.get(name)
            if counters is None:
                counters = self._operations[name] = OperationCounters()
            counters.calls += 1
            counters.total_seconds += seconds
            if seconds > counters.max_seconds:
                counters.max_seconds = seconds
            counters.histogram[bucket] += 1
            if error is not None:
                counters.errors[error] = counters.errors.get(error, 0) + 1
            if source is not None:
                counters.answers[source] = counters.answers.get(source, 0) + 1

    def observe(self, name: str, rpc: str, flow: Flow[T], rows: Callable[[T], int | None]) -> Flow[T]:
        """``flow``, timed and counted as operation ``name`` (its RPC ``rpc``), inside a span when
        OpenTelemetry is in use."""
        observation = _Observation()
        token = _CURRENT.set(observation)
        span = self._start_span(name, rpc) if "opentelemetry.trace" in sys.modules else None
        error: BaseException | None = None
        found: int | None = None
        started = time.perf_counter()
        try:
            result: T = yield from flow
            found = rows(result)
            return result
        except GeneratorExit:  # abandoned half-way: neither an answer nor an error
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            try:  # noqa: SIM105 (contextlib.suppress costs a microsecond on every operation)
                _CURRENT.reset(token)
            except ValueError:  # closed from another context (garbage collection)
                pass
            self._record(name, elapsed, None if error is None else type(error).__name__, observation.source)
            if span is not None:
                _end_span(span, observation, error, found)

    def _start_span(self, name: str, rpc: str) -> _Span | None:
        context, trace = _opentelemetry()
        if self._tracer is None:
            from supa_vectors import __version__

            self._tracer = trace.get_tracer(TRACER_NAME, __version__)
        span = self._tracer.start_span(
            f"supa_vectors.{name}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "db.system": DB_SYSTEM,
                "db.system.name": DB_SYSTEM,
                "db.operation.name": rpc,
                "supa_vectors.operation": name,
            },
        )
        if not span.get_span_context().is_valid:
            return None  # no tracer provider configured: a no-op span, nothing to attach or end
        # Current while the operation runs, so what the transport does (an instrumented httpx or
        # psycopg) nests under it; detached in the same thread or task at the end.
        return _Span(span, context.attach(trace.set_span_in_context(span)))


@dataclass(frozen=True)
class _Span:
    span: Any
    token: object


_MODULES: tuple[Any, Any] | None = None


def _opentelemetry() -> tuple[Any, Any]:
    """``opentelemetry.context`` and ``opentelemetry.trace``, imported once (only ever called after
    the app imported them)."""
    global _MODULES
    if _MODULES is None:
        from opentelemetry import context, trace

        _MODULES = (context, trace)
    return _MODULES


def _end_span(
    opened: _Span, observation: _Observation, error: BaseException | None, rows: int | None
) -> None:
    context, trace = _opentelemetry()
    span = opened.span
    try:
        if span.is_recording():
            attributes: dict[str, Any] = {"supa_vectors.rpc_calls": observation.rpc_calls}
            if rows is not None:
                attributes["supa_vectors.rows"] = rows
            if observation.source is not None:
                attributes["supa_vectors.cache.source"] = observation.source
                attributes["supa_vectors.stale"] = observation.stale
            if error is not None:
                kind = type(error)
                attributes["error.type"] = f"{kind.__module__}.{kind.__qualname__}"
                # The type only: a message can quote the query, a document or an id.
                span.set_status(trace.Status(trace.StatusCode.ERROR, kind.__name__))
            span.set_attributes(attributes)
    finally:
        context.detach(opened.token)
        span.end()


def count_rows(result: object) -> int | None:
    """How many rows an operation returned: the length of a list (a search, ``get``, an upsert's
    statuses), the documents of a page; None for anything else."""
    if isinstance(result, list):
        return len(result)
    if isinstance(result, tuple) and result and isinstance(result[0], list):
        return len(result[0])
    return None
