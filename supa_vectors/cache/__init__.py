"""The offline layer: keep answering while the backend is unreachable, and lose no write.

It wraps the operations' flows (:mod:`supa_vectors._core.flows`) rather than holding them: a search
flow hands it the call to make, a write flow its prepared documents, and it adds the cache, the
breaker, the outbox and the mirror around them.

One concern per module, each usable on its own and shared unchanged by the sync and async stores:

* :mod:`~supa_vectors.cache.keys`: cache keys (everything that changes an answer, nothing secret).
* :mod:`~supa_vectors.cache.results`: answers, query embeddings and settings in a bounded diskcache.
* :mod:`~supa_vectors.cache.breaker`: the circuit breaker and which failures are outages.
* :mod:`~supa_vectors.cache.outbox`: writes queued on disk, replayed in order, idempotently.
* :mod:`~supa_vectors.cache.mirror`: a local copy of the vectors for offline search of new queries.
* :mod:`~supa_vectors.cache.filtering`: metadata filters with the server's jsonb semantics.
* :mod:`~supa_vectors.cache.layer`: :class:`OfflineLayer`, which wraps a flow's calls with all of them.

See ``docs/decisions/0005-offline-cache-and-outbox.md`` for the choices and measurements.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supa_vectors.cache.breaker import BreakerState, CircuitBreaker, is_outage
    from supa_vectors.cache.layer import (
        DEFAULT_CACHE_SIZE,
        DEFAULT_CACHE_TTL,
        ENV_CACHE_DIR,
        CacheMode,
        default_cache_dir,
    )
    from supa_vectors.cache.mirror import SyncResult
    from supa_vectors.cache.outbox import FlushResult, PendingWrite

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_CACHE_TTL",
    "ENV_CACHE_DIR",
    "BreakerState",
    "CacheMode",
    "CircuitBreaker",
    "FlushResult",
    "PendingWrite",
    "SyncResult",
    "default_cache_dir",
    "is_outage",
]

# Imported on first access, like the package's own names: importing one light module of the cache
# (the breaker) must not import the layer, which brings numpy and pydantic.
_LAZY = {
    "BreakerState": "supa_vectors.cache.breaker",
    "CircuitBreaker": "supa_vectors.cache.breaker",
    "is_outage": "supa_vectors.cache.breaker",
    "DEFAULT_CACHE_SIZE": "supa_vectors.cache.layer",
    "DEFAULT_CACHE_TTL": "supa_vectors.cache.layer",
    "ENV_CACHE_DIR": "supa_vectors.cache.layer",
    "CacheMode": "supa_vectors.cache.layer",
    "default_cache_dir": "supa_vectors.cache.layer",
    "SyncResult": "supa_vectors.cache.mirror",
    "FlushResult": "supa_vectors.cache.outbox",
    "PendingWrite": "supa_vectors.cache.outbox",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'supa_vectors.cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
