"""Who a call runs as: the Postgres role and JWT claims PostgREST would set for a request.

PostgREST starts every request's transaction with ``set_config('role', ...)`` and
``set_config('request.jwt.claims', ...)`` (both transaction-local). The direct Postgres
transport and the test-suite do exactly the same, so Row Level Security, ``auth.uid()`` and
grants behave identically whichever way a call arrives.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

__all__ = ["LIFECYCLE_CLAIMS", "SET_IDENTITY_SQL", "Identity", "bearer_token", "jwt_claims", "verify_jwt"]

# Claims that say when a token is valid, not who holds it or what they may see: a refreshed token
# differs only in these, and keeps the caller's cache, mirror and outbox.
LIFECYCLE_CLAIMS = frozenset({"exp", "iat", "nbf", "jti"})

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

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity | None:
        """The identity a JWT payload names (every claim but :data:`LIFECYCLE_CLAIMS`), None without a role.

        Every other claim is kept because a Row Level Security policy may read any of them through
        ``auth.jwt()`` (``app_metadata``, ``aal``, ``session_id``...): two tokens that differ in one may
        see different rows, so they must never share cached answers. Nothing here is verified.
        """
        role = claims.get("role")
        if not isinstance(role, str) or not role:
            return None
        kept = {key: value for key, value in claims.items() if key not in LIFECYCLE_CLAIMS}
        # Identity's role is a Literal of Supabase's roles; a custom role hashes the same way.
        return cls(cast(Any, role), kept)

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


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` value ("" when there is none)."""
    value = (authorization or "").strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, NOT verified (None when ``token`` is not a JWT).

    Good for labels only: whoever made the token chose these claims. Whether a caller may be served
    anything stored is decided in :mod:`supa_vectors.cache.trust`.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return cast(dict[str, Any], claims) if isinstance(claims, dict) else None


def verify_jwt(
    token: str,
    *,
    now: float,
    secret: str | None = None,
    jwks: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The claims of ``token`` if it is signed by ``secret`` (HS256/384/512) or a key of ``jwks`` and
    is valid at ``now``; otherwise None.

    The algorithm comes from the key, never from the token (``alg: none`` and HS256-signed-with-the-
    public-key tokens are refused), and a token without ``exp`` or past it is refused: an offline
    answer must never outlive the credential it was given for. ``aud`` is not checked: the backend
    does not check it either (PostgREST's default ``jwt-aud`` is unset).
    """
    import jwt  # PyJWT, a dependency of supabase-auth; imported here, on the offline path only

    try:
        header = jwt.get_unverified_header(token)
        keys: list[tuple[Any, list[str]]] = []
        if secret:
            keys.append((secret, ["HS256", "HS384", "HS512"]))
        if jwks:
            for jwk in jwt.PyJWKSet.from_dict(dict(jwks)).keys:
                if jwk.key_id == header.get("kid") and jwk.algorithm_name:
                    keys.append((jwk.key, [jwk.algorithm_name]))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    if str(header.get("alg", "")).lower() in ("", "none"):
        return None
    options = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False}
    for key, algorithms in keys:
        try:
            claims = jwt.decode(token, key, algorithms=algorithms, options=cast(Any, options))
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool) and exp > now:
            nbf = claims.get("nbf")
            if not (isinstance(nbf, int | float) and nbf > now):
                return claims
        return None
    return None
