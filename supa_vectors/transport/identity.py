"""Who a call runs as: the Postgres role and JWT claims PostgREST would set for a request.

PostgREST starts every request's transaction with ``set_config('role', ...)`` and
``set_config('request.jwt.claims', ...)`` (both transaction-local). The direct Postgres
transport and the test-suite do exactly the same, so Row Level Security, ``auth.uid()`` and
grants behave identically whichever way a call arrives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["SET_IDENTITY_SQL", "Identity"]

Role = Literal["anon", "authenticated", "service_role"]

SET_IDENTITY_SQL = (
    "select pg_catalog.set_config('role', %s, true), pg_catalog.set_config('request.jwt.claims', %s, true)"
)


@dataclass(frozen=True)
class Identity:
    """A role plus the JWT claims of the caller; ``subject`` is the user id (``sub``) if any."""

    role: Role
    claims: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def service(cls) -> Identity:
        return cls("service_role", {"role": "service_role"})

    @classmethod
    def user(cls, subject: str, **claims: Any) -> Identity:
        return cls("authenticated", {"sub": subject, "role": "authenticated", **claims})

    @classmethod
    def anonymous(cls) -> Identity:
        return cls("anon", {"role": "anon"})

    @property
    def subject(self) -> str | None:
        sub = self.claims.get("sub")
        return str(sub) if sub is not None else None

    def sql_params(self) -> tuple[str, str]:
        """Parameters for :data:`SET_IDENTITY_SQL`."""
        return self.role, json.dumps(dict(self.claims), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """A stable, non-reversible label for cache keys: one identity never reads another's entries."""
        role, claims = self.sql_params()
        return hashlib.sha256(f"{role}\x00{claims}".encode()).hexdigest()[:32]
