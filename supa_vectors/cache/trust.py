"""Which callers may be served what is stored for their identity while the backend cannot say.

The identity label of a PostgREST caller comes from its token's claims, which whoever made the token
chose: a token claiming user A's id, signed with the wrong secret, with ``alg: none`` or expired, has
A's label. Online the backend refuses it; offline nobody checks. So anything stored for an identity
(cached answers, cached settings, the mirror, the outbox) is used only for a caller that is either:

* **accepted**: these exact credentials got a 2xx from the backend before (PostgREST verifies the
  signature and expiry of every request), remembered in this cache directory by a keyed hash with
  the token's ``exp``; or
* **verified locally**: a JWT signed by a key the app gave the transport (``jwt_secret=``, ``jwks=``).

Either way an expired token is never trusted. Transports without per-request credentials (the Postgres
transport: the app itself sets the identity, with the database's own password) are trusted as they are.

The registry is one SQLite file (0600, see :mod:`supa_vectors.cache.private`) holding HMAC-SHA256
digests under a random key kept in the same file: a copy of it confirms no token.
"""

from __future__ import annotations

import hmac
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any

from supa_vectors.cache.private import open_private_sqlite
from supa_vectors.transport.identity import bearer_token, jwt_claims

__all__ = ["AcceptedCredentials", "credentials_expiry", "expired"]

_SCHEMA = """
create table if not exists hmac_key (id integer primary key check (id = 1), key blob not null);
create table if not exists accepted (digest text primary key, expires_at real);
"""


def credentials_expiry(credentials: str) -> float | None:
    """The ``exp`` of a bearer JWT (None for an opaque key, or a JWT without one)."""
    claims = jwt_claims(bearer_token(credentials))
    exp = claims.get("exp") if claims is not None else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def expired(credentials: str | None, now: float) -> bool:
    expiry = credentials_expiry(credentials) if credentials else None
    return expiry is not None and expiry <= now


def _ensure_key(conn: sqlite3.Connection) -> None:
    conn.execute("insert or ignore into hmac_key values (1, ?)", (secrets.token_bytes(32),))


class AcceptedCredentials:
    """Credentials the backend accepted, remembered (keyed hashes only) in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._key = b""
        self._lock = threading.Lock()
        self._known: dict[str, float | None] = {}

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is None:
            if not create and not self.path.exists():
                return None
            conn = open_private_sqlite(self.path, _SCHEMA, setup=_ensure_key)
            self._key = bytes(conn.execute("select key from hmac_key").fetchone()[0])
            self._conn = conn
        return self._conn

    def _digest(self, credentials: str) -> str:
        return hmac.new(self._key, credentials.encode("utf-8", "surrogatepass"), "sha256").hexdigest()

    def remember(self, credentials: str, now: float) -> None:
        """Record that the backend accepted ``credentials`` (a no-op for expired or known ones).

        Called after every successful PostgREST call: a known token returns before its claims are
        decoded (12.7 µs a call otherwise)."""
        if credentials in self._known:
            return
        expiry = credentials_expiry(credentials)
        if expiry is not None and expiry <= now:
            return
        with self._lock:
            conn = self._connect(create=True)
            assert conn is not None
            conn.execute("insert or replace into accepted values (?, ?)", (self._digest(credentials), expiry))
            conn.execute("delete from accepted where expires_at is not null and expires_at <= ?", (now,))
            self._known[credentials] = expiry

    def accepted(self, credentials: str, now: float) -> bool:
        """Whether the backend accepted exactly ``credentials`` before, and they have not expired."""
        if expired(credentials, now):
            return False
        if credentials in self._known:
            return True
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return False
            row: Any = conn.execute(
                "select expires_at from accepted where digest = ?", (self._digest(credentials),)
            ).fetchone()
        if row is None:
            return False
        self._known[credentials] = row[0]
        return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
