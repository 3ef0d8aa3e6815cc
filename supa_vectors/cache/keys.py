"""Cache keys: everything that changes an answer is in the key, and nothing secret is.

A cached answer may only be served for the same question to the same caller of the same store: the
key hashes the query (text, or the vector's bytes), the mode (vector or hybrid search and its tuning),
``k``, the threshold, the filter (canonical JSON), the embedding model, the store's schema version,
the store (host, port and database or project URL; never a password or key) and the caller's identity
fingerprint (a hash of the role and JWT claims, or of an opaque key). Keys are sha256 hex digests, so
neither a query nor an identity can be read back from a cache directory listing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from supa_vectors.transport.base import cache_label, subject_of

__all__ = [
    "CACHE_FORMAT",
    "Scope",
    "canonical_json",
    "digest",
    "store_label",
    "transport_subject",
]

# Bumped when the layout of cached values changes: old entries then simply stop matching.
CACHE_FORMAT = "1"


def canonical_json(value: Any) -> str:
    """One spelling per JSON value (sorted keys, no spaces), so equal filters give equal keys."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(*parts: str) -> str:
    """sha256 over the parts, NUL-separated (no part contains NUL: query text and ids refuse it).

    The one place a key's text becomes bytes: ``surrogatepass`` keeps a lone surrogate (refused as input
    upstream, but a key must never raise) distinct from every other text instead of failing.
    """
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def store_label(transport: object) -> str:
    """Which store a transport talks to, as a label free of secrets (the transport says: see
    :func:`supa_vectors.transport.base.cache_label`)."""
    return cache_label(transport)


def transport_subject(transport: object) -> str | None:
    """The user id (JWT ``sub``) the calls run as, or None (service role, anon, or unknown).

    Only used to tell the caller's own rows from shared ones in the local mirror.
    """
    return subject_of(transport)


@dataclass(frozen=True)
class Scope:
    """Who asks which store: the part shared by every key of one caller."""

    store: str
    identity: str
    model: str
    schema_version: str

    @property
    def file_stem(self) -> str:
        """A file name for this store and identity (outbox, mirror): hashed, so it leaks neither."""
        return digest("file", CACHE_FORMAT, self.store, self.identity)[:32]

    def search_key(
        self,
        mode: str,
        query: str | npt.NDArray[np.float32],
        k: int,
        threshold: float | None,
        filter: dict[str, Any],
        tuning: dict[str, Any] | None = None,
    ) -> str:
        if isinstance(query, str):
            query_part = "text:" + query
        else:
            query_part = (
                "vector:" + hashlib.sha256(np.ascontiguousarray(query, dtype="<f4").tobytes()).hexdigest()
            )
        return digest(
            "results",
            CACHE_FORMAT,
            self.store,
            self.identity,
            self.model,
            self.schema_version,
            mode,
            query_part,
            str(k),
            "" if threshold is None else repr(float(threshold)),
            canonical_json(filter),
            canonical_json(tuning or {}),
        )

    def embedding_key(self, text: str) -> str:
        return digest("embedding", CACHE_FORMAT, self.store, self.identity, self.model, text)


def settings_key(store: str, identity: str) -> str:
    return digest("settings", CACHE_FORMAT, store, identity)


def generation_key(store: str) -> str:
    return digest("generation", CACHE_FORMAT, store)


def write_log_key(store: str, generation: int) -> str:
    return digest("writes", CACHE_FORMAT, store, str(generation))
