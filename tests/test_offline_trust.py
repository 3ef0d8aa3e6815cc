"""Nothing stored offline for an identity is served to, or replayed for, a caller the backend did not verify.

PostgREST side: ``StandIn`` plays PostgREST in front of the real local database. It checks each request's
JWT as PostgREST does (HS256 with the project's secret, ``exp`` enforced, the algorithm fixed by the server,
so ``alg: none`` fails) and answers 401 with PostgREST's recorded bodies, or runs the RPC on the real
database as the token's role and claims (``request.jwt.claims``, through the Postgres transport). The SDK
side (supabase-py, our transport, the store) is the real one; an outage is a refused connection.

Postgres side: the same isolation against the real local stack, with outages injected around a real
transport. Each store is built per request from one caller's credentials and shares one cache directory,
a server app's usual shape.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import psycopg
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from supabase import AsyncClient, AsyncClientOptions, Client, ClientOptions

from supa_vectors import (
    AsyncVectorStore,
    AuthError,
    BackendUnavailableError,
    CircuitBreaker,
    ConfigurationError,
    Identity,
    SupaVectorsError,
    VectorStore,
)
from supa_vectors.transport.postgres import PostgresTransport
from supa_vectors.transport.postgrest import AsyncPostgrestTransport, PostgrestTransport
from tests.conftest import USER_A, USER_B, FakeEmbedder
from tests.test_offline import FaultyTransport

pytestmark = pytest.mark.filterwarnings("ignore:The '(timeout|verify)' parameter is deprecated")

URL = "http://standin.test"
FIXTURES = Path(__file__).parent / "fixtures" / "postgrest"
SECRET = "stand-in-project-jwt-secret-with-at-least-32-chars"
WRONG_SECRET = "some-other-projects-jwt-secret-with-32-chars-too"
HTTP = httpx.Client()
ASYNC_HTTP = httpx.AsyncClient()


def sign(claims: Mapping[str, Any], *, key: str | None = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(dict(claims), key, algorithm=alg)


def claims_of(
    sub: str | None, role: str = "authenticated", *, ttl: float = 3600, **extra: Any
) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role, "exp": int(time.time() + ttl), **extra}
    if sub is not None:
        claims.update(sub=sub, aud="authenticated")
    else:
        claims.update(iss="supabase", ref="standin")
    return claims


A_CLAIMS = claims_of(USER_A)
TOKEN_A = sign(A_CLAIMS)
TOKEN_B = sign(claims_of(USER_B))
SERVICE_CLAIMS = claims_of(None, "service_role")
SERVICE_KEY = sign(SERVICE_CLAIMS)
ANON_KEY = sign(claims_of(None, "anon"))

# Tokens claiming to be user A (the same claims as A's own token) that the backend refuses.
FORGED_A = {
    "wrong secret": sign(A_CLAIMS, key=WRONG_SECRET),
    "alg none": sign(A_CLAIMS, key=None, alg="none"),
    "expired": sign({**A_CLAIMS, "exp": int(time.time()) - 60}),
}


def hmac_signed(header: Mapping[str, Any], claims: Mapping[str, Any], key: bytes) -> str:
    """A token HMAC-signed with any bytes (PyJWT refuses to use a public key as an HMAC secret)."""

    def part(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def recorded(name: str) -> httpx.Response:
    fx = json.loads((FIXTURES / f"{name}.json").read_text())
    return httpx.Response(fx["status"], headers=fx["headers"], content=fx["body"].encode())


def _json(value: Any) -> Any:
    """Rows as PostgREST serialises them (vectors in pgvector's text form, timestamps ISO 8601)."""
    if isinstance(value, np.ndarray):
        return "[" + ",".join(repr(float(x)) for x in value) + "]"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


class StandIn:
    """PostgREST for the tests: JWT checked as PostgREST checks it, then the RPC on the real database."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.down = False
        self.ran: list[tuple[str, str | None, str]] = []  # (rpc, sub, the token it ran with)
        self._transports: dict[tuple[str, str], PostgresTransport] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        name = request.url.path.rsplit("/", 1)[-1]
        token = request.headers.get("authorization", "")[len("Bearer ") :]
        try:
            # PostgREST: the algorithm comes from its configured key, exp is enforced, aud unset.
            claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_aud": False})
        except jwt.ExpiredSignatureError:
            return recorded("PGRST303_jwt_expired")
        except jwt.PyJWTError:
            return recorded("PGRST301_jwt_bad_signature")
        identity = Identity(claims["role"], claims)
        key = identity.sql_params()
        transport = self._transports.get(key)
        if transport is None:
            transport = self._transports[key] = PostgresTransport(
                self.database_url, identity=identity, max_size=1
            )
        params = json.loads(request.content or b"{}")
        if "query_embedding" in params:
            params["query_embedding"] = np.asarray(params["query_embedding"], dtype=np.float32)
        try:
            result = transport.rpc(name, params)
        except SupaVectorsError as exc:
            code = getattr(exc, "code", None) or "P0001"
            return httpx.Response(
                400, json={"code": code, "message": str(exc), "details": None, "hint": None}
            )
        self.ran.append((name, claims.get("sub"), token))
        return httpx.Response(200, content=json.dumps(_json(result)).encode())

    def writes(self) -> list[tuple[str, str | None, str]]:
        return [call for call in self.ran if call[0] in ("bulk_upsert", "delete_documents")]

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()


@pytest.fixture
def standin(clean_url: str) -> Iterator[StandIn]:
    server = StandIn(clean_url)
    with respx.mock(assert_all_called=False) as mock:
        mock.post(url__regex=rf"^{re.escape(URL)}/rest/v1/rpc/\w+$").mock(side_effect=server)
        yield server
    server.close()


def client_for(token: str) -> Client:
    """The app's supabase client for one request, carrying the caller's token."""
    options = ClientOptions(headers={"Authorization": f"Bearer {token}"}, httpx_client=HTTP)
    return Client(URL, ANON_KEY, options)


def store_for(token: str, cache_dir: Path, **options: Any) -> VectorStore:
    """A store built for one request from the caller's token, as a server app does."""
    client = client_for(token)
    transport = PostgrestTransport(client, max_attempts=1, **options)
    return VectorStore(
        transport,
        embedder=FakeEmbedder(),
        cache_dir=cache_dir,
        breaker=CircuitBreaker(failure_threshold=1000),
    )


def async_store_for(token: str, cache_dir: Path) -> AsyncVectorStore:
    client = AsyncClient(
        URL,
        ANON_KEY,
        AsyncClientOptions(headers={"Authorization": f"Bearer {token}"}, httpx_client=ASYNC_HTTP),
    )
    transport = AsyncPostgrestTransport(client, max_attempts=1)
    return AsyncVectorStore(
        transport,
        embedder=FakeEmbedder(),
        cache_dir=cache_dir,
        breaker=CircuitBreaker(failure_threshold=1000),
    )


def seed(cache_dir: Path) -> None:
    """B's and A's private documents and a shared one; A caches answers and syncs A's mirror."""
    with store_for(TOKEN_B, cache_dir) as b:
        b.add({"id": "b-private", "content": "tiger lion secret diary of b"})
    with store_for(SERVICE_KEY, cache_dir) as service:
        service.add({"id": "shared", "content": "tiger lion shared handbook"})
    with store_for(TOKEN_A, cache_dir) as a:
        a.add({"id": "a-private", "content": "tiger lion secret diary of a"})
        assert "a-private" in {r.id for r in a.search("tiger lion", k=5)}
        assert "a-private" in {r.id for r in a.hybrid_search("tiger lion", k=5)}
        assert a.sync_mirror().documents == 2  # a-private and shared


def owned(database_url: str, owner: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select external_id from public.documents where owner_id = %s", (owner,)
        ).fetchall()
    return {row[0] for row in rows}


# --------------------------------------------------------------------------------------------------
# PostgREST: forged tokens offline


def test_the_stand_in_refuses_forged_tokens_and_runs_valid_ones_as_their_user(
    standin: StandIn, tmp_path: Path
) -> None:
    """The premise: online, the backend itself refuses every forged token."""
    seed(tmp_path)
    for forged in FORGED_A.values():
        with store_for(forged, tmp_path) as store, pytest.raises(AuthError):
            store.search("tiger lion", k=5)
    assert owned(standin.database_url, USER_A) == {"a-private"}


@pytest.mark.parametrize("kind", list(FORGED_A))
def test_a_forged_token_for_a_gets_none_of_as_offline_answers(
    standin: StandIn, tmp_path: Path, kind: str
) -> None:
    seed(tmp_path)
    standin.down = True
    with store_for(TOKEN_A, tmp_path) as a:  # A itself keeps its offline answers
        assert {(r.source, r.stale) for r in a.search("tiger lion", k=5)} == {("cache", True)}
        assert {r.source for r in a.hybrid_search("tiger lion", k=5)} == {"cache"}
        assert "a-private" in {r.id for r in a.search("diary secret", k=5) if r.source == "mirror"}

    with store_for(FORGED_A[kind], tmp_path) as forged:
        with pytest.raises(BackendUnavailableError):
            forged.search("tiger lion", k=5)  # A's cached answer
        with pytest.raises(BackendUnavailableError):
            forged.hybrid_search("tiger lion", k=5)  # A's cached hybrid answer
        with pytest.raises(BackendUnavailableError):
            forged.search("diary secret", k=5)  # never asked: A's mirror


@pytest.mark.parametrize("kind", list(FORGED_A))
def test_a_forged_token_for_a_gets_none_of_as_cache_first_answers(
    standin: StandIn, tmp_path: Path, kind: str
) -> None:
    """Cache-first serves without asking the backend at all; the app's client switches token (a new
    request on a reused store) to one that claims to be A: it must be asked, and refuse."""
    seed(tmp_path)
    client = client_for(TOKEN_A)
    transport = PostgrestTransport(client, max_attempts=1)
    with VectorStore(transport, embedder=FakeEmbedder(), cache_dir=tmp_path, cache="cache-first") as store:
        assert {r.source for r in store.search("tiger lion", k=5)} == {"cache"}
        client.postgrest.auth(FORGED_A[kind])
        with pytest.raises(AuthError):
            store.search("tiger lion", k=5)


def test_a_forged_service_role_token_never_gets_the_service_role_mirror(
    standin: StandIn, tmp_path: Path
) -> None:
    seed(tmp_path)
    with store_for(SERVICE_KEY, tmp_path) as service:
        assert service.sync_mirror().documents == 3  # every user's documents
    standin.down = True
    with store_for(SERVICE_KEY, tmp_path) as service:
        assert {"a-private", "b-private"} <= {r.id for r in service.search("diary secret", k=5)}
    forged_service = sign(SERVICE_CLAIMS, key=WRONG_SECRET)
    with store_for(forged_service, tmp_path) as forged, pytest.raises(BackendUnavailableError):
        forged.search("diary secret", k=5)


def test_tokens_differing_only_in_another_claim_never_share_answers(standin: StandIn, tmp_path: Path) -> None:
    """A policy may read any claim (here ``aal``): both tokens are genuine, and still see separate caches."""
    seed(tmp_path)
    mfa = sign(claims_of(USER_A, aal="aal2"))
    with store_for(TOKEN_A, tmp_path) as a, store_for(mfa, tmp_path) as a_mfa:
        assert a.transport.identity_fingerprint != a_mfa.transport.identity_fingerprint
        a_mfa.count()  # accepted online
        standin.down = True
        assert a.search("tiger lion", k=5)[0].source == "cache"
        with pytest.raises(BackendUnavailableError):
            a_mfa.search("tiger lion", k=5)


def test_a_refreshed_token_keeps_its_callers_cache(standin: StandIn, tmp_path: Path) -> None:
    """Only exp/iat/nbf/jti are left out of the label, so a token refresh is the same caller."""
    seed(tmp_path)
    refreshed = sign({**A_CLAIMS, "exp": A_CLAIMS["exp"] + 600, "iat": int(time.time())})
    with store_for(refreshed, tmp_path) as a:
        a.count()
        standin.down = True
        assert {r.source for r in a.search("tiger lion", k=5)} == {"cache"}


@pytest.mark.parametrize("kind", list(FORGED_A))
def test_writes_under_a_forged_token_never_reach_as_outbox(
    standin: StandIn, tmp_path: Path, kind: str
) -> None:
    seed(tmp_path)
    with store_for(TOKEN_A, tmp_path) as a:
        a.add({"id": "a-keep", "content": "a document a keeps"})
    standin.down = True
    with store_for(FORGED_A[kind], tmp_path) as forged:
        with pytest.raises(BackendUnavailableError):
            forged.add({"id": "planted", "content": "planted by the forger"})
        with pytest.raises(BackendUnavailableError):
            forged.delete("a-keep")
        with pytest.raises(AuthError):
            forged.pending()  # nor may it read A's outbox
    standin.down = False
    before = len(standin.writes())
    with store_for(TOKEN_A, tmp_path) as a:
        assert a.pending() == []
        result = a.flush()
    assert (result.upserted, result.deleted, result.remaining) == (0, 0, 0)
    assert standin.writes()[before:] == []
    assert owned(standin.database_url, USER_A) == {"a-private", "a-keep"}


def test_queued_writes_replay_with_the_token_that_queued_them(standin: StandIn, tmp_path: Path) -> None:
    seed(tmp_path)
    with store_for(TOKEN_A, tmp_path) as a:
        standin.down = True
        assert a.add({"id": "offline-a", "content": "written during the outage"})[0].status == "queued"
        assert a.delete("a-private").queued == 1
    standin.down = False
    refreshed = sign({**A_CLAIMS, "exp": A_CLAIMS["exp"] + 600})
    before = len(standin.ran)
    with store_for(refreshed, tmp_path) as a:
        result = a.flush()
    assert (result.upserted, result.deleted, result.remaining) == (1, 1, 0)
    assert {(name, token) for name, _, token in standin.writes()[-2:]} == {
        ("bulk_upsert", TOKEN_A),
        ("delete_documents", TOKEN_A),
    }
    assert all(
        token == refreshed
        for name, _, token in standin.ran[before:]
        if name not in ("bulk_upsert", "delete_documents")
    )
    assert owned(standin.database_url, USER_A) == {"offline-a"}


def test_a_write_whose_token_expired_stays_queued_and_is_reported(standin: StandIn, tmp_path: Path) -> None:
    seed(tmp_path)
    with store_for(TOKEN_A, tmp_path) as a:
        standin.down = True
        assert a.add({"id": "late", "content": "queued before the token expired"})[0].status == "queued"
    standin.down = False
    later = A_CLAIMS["exp"] + 60.0  # A's first token has expired; A signed in again
    fresh = sign({**A_CLAIMS, "exp": int(later + 3600)})
    before = len(standin.writes())
    with store_for(fresh, tmp_path) as a:
        a._offline.clock = lambda: later
        result = a.flush()
        assert [(w.id, w.status) for w in result.expired] == [("late", "queued")]
        assert "expired" in str(result.expired[0].error)
        assert (result.remaining, result.upserted) == (1, 0)
        assert [(w.id, w.status, w.error is not None) for w in a.pending()] == [("late", "queued", True)]
        a.add({"id": "after", "content": "a new write goes straight through"})
        assert a.discard_rejected() == 1
        assert a.pending() == []
    assert [name for name, _, token in standin.writes()[before:]] == ["bulk_upsert"]
    assert all(token == fresh for _, _, token in standin.writes()[before:])
    assert "late" not in owned(standin.database_url, USER_A)


async def test_the_async_store_holds_too(standin: StandIn, tmp_path: Path) -> None:
    seed(tmp_path)
    refreshed = sign({**A_CLAIMS, "exp": A_CLAIMS["exp"] + 600})  # accepted by an async call below
    async with async_store_for(refreshed, tmp_path) as a:
        await a.count()
        standin.down = True
        assert {r.source for r in await a.search("tiger lion", k=5)} == {"cache"}
    for forged_token in FORGED_A.values():
        async with async_store_for(forged_token, tmp_path) as forged:
            with pytest.raises(BackendUnavailableError):
                await forged.search("tiger lion", k=5)
            with pytest.raises(BackendUnavailableError):
                await forged.search("diary secret", k=5)
            with pytest.raises(BackendUnavailableError):
                await forged.add({"id": "planted", "content": "planted by the forger"})
    async with async_store_for(refreshed, tmp_path) as a:
        queued = await a.add({"id": "offline-async", "content": "queued by the async store"})
        assert queued[0].status == "queued"
    standin.down = False
    async with async_store_for(sign({**A_CLAIMS, "exp": A_CLAIMS["exp"] + 900}), tmp_path) as a:
        assert (await a.flush()).upserted == 1
    assert standin.writes()[-1][0::2] == ("bulk_upsert", refreshed)  # the token that queued it


# --------------------------------------------------------------------------------------------------
# keys the app holds: a token the backend has not seen yet may be verified locally


def test_a_token_signed_with_the_configured_secret_gets_offline_answers(
    standin: StandIn, tmp_path: Path
) -> None:
    seed(tmp_path)
    standin.down = True
    unseen = sign({**A_CLAIMS, "exp": A_CLAIMS["exp"] + 1})  # never sent to the backend
    with store_for(unseen, tmp_path) as plain, pytest.raises(BackendUnavailableError):
        plain.search("tiger lion", k=5)
    with store_for(unseen, tmp_path, jwt_secret=SECRET) as verified:
        assert {r.source for r in verified.search("tiger lion", k=5)} == {"cache"}
    for forged_token in FORGED_A.values():
        with (
            store_for(forged_token, tmp_path, jwt_secret=SECRET) as forged,
            pytest.raises(BackendUnavailableError),
        ):
            forged.search("tiger lion", k=5)


def test_verify_jwt_takes_the_algorithm_from_the_key() -> None:
    from supa_vectors.transport.identity import verify_jwt  # here: the module also runs on older code

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = {
        **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key())),
        "kid": "k1",
        "alg": "RS256",
    }
    jwks = {"keys": [jwk]}
    now = time.time()
    good = jwt.encode(A_CLAIMS, private, algorithm="RS256", headers={"kid": "k1"})
    assert verify_jwt(good, now=now, jwks=jwks) == A_CLAIMS
    assert verify_jwt(good, now=A_CLAIMS["exp"] + 1, jwks=jwks) is None  # expired
    assert (
        verify_jwt(
            jwt.encode(A_CLAIMS, private, algorithm="RS256", headers={"kid": "k2"}), now=now, jwks=jwks
        )
        is None
    )
    # The public key used as an HMAC secret (algorithm confusion), alg none, another secret: refused.
    confused = hmac_signed({"alg": "HS256", "typ": "JWT", "kid": "k1"}, A_CLAIMS, public_pem)
    assert verify_jwt(confused, now=now, jwks=jwks) is None
    assert verify_jwt(FORGED_A["alg none"], now=now, secret=SECRET, jwks=jwks) is None
    assert verify_jwt(FORGED_A["wrong secret"], now=now, secret=SECRET) is None
    assert verify_jwt(sign({k: v for k, v in A_CLAIMS.items() if k != "exp"}), now=now, secret=SECRET) is None
    assert verify_jwt(TOKEN_A, now=now, secret=SECRET) == A_CLAIMS


# --------------------------------------------------------------------------------------------------
# files private to the OS user


def modes(root: Path) -> dict[str, int]:
    found = {}
    for path in [root, *root.rglob("*")]:
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def not_private(root: Path) -> dict[str, str]:
    """Every directory under ``root`` that is not 0700 and every file that is not 0600."""
    return {
        name: oct(mode)
        for name, mode in modes(root).items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }


@pytest.fixture(params=[0o022, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_cache_mirror_and_outbox_are_private_whatever_the_umask(
    standin: StandIn, tmp_path: Path, umask: int
) -> None:
    cache_dir = tmp_path / "cache"
    seed(cache_dir)
    with store_for(TOKEN_A, cache_dir) as a:
        standin.down = True
        assert a.add({"id": "queued", "content": "kept on disk"})[0].status == "queued"
        standin.down = False
        a.flush()
    found = modes(cache_dir)
    assert any(name.startswith("outbox/") for name in found)
    assert any(name.startswith("mirror/") for name in found)
    assert not_private(cache_dir) == {}


@pytest.fixture
def foreign_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory that belongs to another OS user."""
    path = tmp_path / "theirs"
    path.mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    return path


def test_a_cache_directory_owned_by_another_user_is_refused(standin: StandIn, foreign_dir: Path) -> None:
    with (
        store_for(SERVICE_KEY, foreign_dir) as store,
        pytest.raises(ConfigurationError, match="another user"),
    ):
        store.search("tiger lion", k=5)


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_a_cache_directory_others_may_write_is_refused(standin: StandIn, tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "open-to-all"
    shared.mkdir()
    shared.chmod(mode)
    with (
        store_for(SERVICE_KEY, shared) as store,
        pytest.raises(ConfigurationError, match="writable by other"),
    ):
        store.search("tiger lion", k=5)


def test_an_older_readable_cache_directory_of_ours_is_tightened(standin: StandIn, tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "outbox").mkdir(parents=True)
    old.chmod(0o755)
    (old / "outbox").chmod(0o755)
    with store_for(TOKEN_A, old) as a:
        a.count()
        standin.down = True
        assert a.add({"id": "kept", "content": "queued"})[0].status == "queued"
    assert stat.S_IMODE(old.stat().st_mode) == 0o700
    assert stat.S_IMODE((old / "outbox").stat().st_mode) == 0o700


# --------------------------------------------------------------------------------------------------
# Postgres transport, real local stack: per-identity cache, mirror and outbox


PAIRS = {
    "claims differing only in aal": (Identity.user(USER_A, aal="aal1"), Identity.user(USER_A, aal="aal2")),
    "service_role claimed by a user": (
        Identity.service(),
        Identity("authenticated", {"sub": USER_A, "role": "service_role"}),
    ),
    "A, and A with an expired exp": (Identity.user(USER_A), Identity.user(USER_A, exp=int(time.time()) - 60)),
}


def pg_store(
    url: str, identity: Identity, cache_dir: Path, namespace: str
) -> tuple[VectorStore, FaultyTransport]:
    transport = FaultyTransport(PostgresTransport(url, identity=identity, max_size=1), namespace)
    store = VectorStore(
        transport,
        embedder=FakeEmbedder(),
        cache_dir=cache_dir,
        breaker=CircuitBreaker(failure_threshold=1000),
    )
    return store, transport


@pytest.mark.parametrize("pair", list(PAIRS))
def test_postgres_transport_keeps_each_identity_apart(clean_url: str, tmp_path: Path, pair: str) -> None:
    first, second = PAIRS[pair]
    namespace = f"trust-{tmp_path.name}"
    owner_store, owner = pg_store(clean_url, first, tmp_path, namespace)
    other_store, other = pg_store(clean_url, second, tmp_path, namespace)
    with owner_store, other_store:
        owner_store.add({"id": "first-doc", "content": "tiger lion secret diary"})
        owner_store.search("tiger lion", k=5)
        owner_store.hybrid_search("tiger lion", k=5)
        owner_store.sync_mirror()
        other_store.count()
        owner.down = other.down = True
        assert owner_store.search("tiger lion", k=5)[0].source == "cache"
        assert owner_store.add({"id": "queued-by-first", "content": "offline"})[0].status == "queued"
        for ask in (
            lambda: other_store.search("tiger lion", k=5),
            lambda: other_store.hybrid_search("tiger lion", k=5),
        ):
            with pytest.raises(BackendUnavailableError):
                ask()
        with pytest.raises(BackendUnavailableError):
            other_store.search("diary secret", k=5)
        assert other_store.pending() == []
        owner.down = other.down = False
        assert other_store.flush().upserted == 0
        assert [w.id for w in owner_store.pending()] == ["queued-by-first"]
        assert owner_store.flush().upserted == 1


def test_postgres_transport_files_are_private(clean_url: str, tmp_path: Path, umask: int) -> None:
    cache_dir = tmp_path / "cache"
    store, transport = pg_store(clean_url, Identity.user(USER_A), cache_dir, f"perm-{tmp_path.name}")
    with store:
        store.add({"id": "d", "content": "tiger lion"})
        store.search("tiger lion", k=5)
        store.sync_mirror()
        transport.down = True
        store.add({"id": "q", "content": "queued"})
    assert not_private(cache_dir) == {}


def test_postgres_transport_refuses_a_foreign_cache_directory(clean_url: str, foreign_dir: Path) -> None:
    store, _ = pg_store(clean_url, Identity.user(USER_A), foreign_dir, "foreign")
    with store, pytest.raises(ConfigurationError, match="another user"):
        store.search("tiger lion", k=5)
