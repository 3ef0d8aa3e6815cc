"""The `vectors` Edge Function (supabase/functions/vectors) end to end: the real Deno runtime serving
the function's own entry point, over HTTP, against the real local Postgres.

``supabase functions serve`` needs Docker; the function is plain Deno (``Deno.serve`` + npm packages),
so ``deno run index.ts`` serves exactly the code ``supabase functions deploy`` ships.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import jwt
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from bench.http import deno, serve
from supa_vectors import VectorStore
from supa_vectors.embedding.install import installed_model
from supa_vectors.embedding.onnx import OnnxEmbedder
from supa_vectors.transport.base import error_for_sqlstate
from supa_vectors.transport.identity import Identity
from supa_vectors.transport.postgres import PostgresTransport
from tests.conftest import CORPUS, DIM, REPO_ROOT, USER_A, USER_B, FakeEmbedder

FUNCTION_DIR = REPO_ROOT / "supabase" / "functions" / "vectors"
OPENAPI = REPO_ROOT / "docs" / "openapi.json"
SECRET = "edge-test-secret-of-at-least-thirty-two-characters"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def token(
    claims: dict[str, Any] | None = None, *, key: Any = SECRET, alg: str = "HS256", **headers: Any
) -> str:
    now = int(time.time())
    payload = {"iat": now, "exp": now + 600, **(claims or {})}
    return jwt.encode(
        {k: v for k, v in payload.items() if v is not None}, key, algorithm=alg, headers=headers or None
    )


def user_token(user: str, **claims: Any) -> str:
    return token({"sub": user, "role": "authenticated", "aud": "authenticated", **claims})


ANON = token({"role": "anon"})
SERVICE = token({"role": "service_role"})


@contextlib.contextmanager
def serve_function(database_url: str, **env: str) -> Iterator[httpx.Client]:
    """The function under Deno on a free port (bench.http.serve), with this file's signing keys."""
    keys = json.dumps({"keys": [public_jwk(EC_KEY, "key-1")]})
    with (
        serve(database_url, JWT_SECRET=SECRET, JWT_JWKS=keys, **env) as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def edge(database_url: str) -> Iterator[httpx.Client]:
    with serve_function(database_url) as client:
        yield client


def auth(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}


def vec(seed: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) <= {"code", "message", "field"}
    return body


def upsert(edge: httpx.Client, bearer: str, docs: list[dict[str, Any]]) -> httpx.Response:
    return edge.post("/documents", headers=auth(bearer), json={"documents": docs})


# --------------------------------------------------------------------------------------------------
# the OpenAPI document


def test_openapi_json_is_current(edge: httpx.Client) -> None:
    served = edge.get("/openapi.json").json()
    assert served["openapi"] == "3.1.0"
    assert {"/search", "/documents", "/documents/get", "/documents/delete", "/health", "/stats"} <= set(
        served["paths"]
    )
    committed = json.loads(OPENAPI.read_text())
    assert served == committed, (
        "docs/openapi.json is stale: "
        "deno task --config supabase/functions/vectors/deno.json openapi > docs/openapi.json"
    )


# --------------------------------------------------------------------------------------------------
# who may call


@pytest.mark.parametrize(
    ("name", "bearer"),
    [
        ("none", ""),
        ("not a jwt", "not-a-token"),
        ("forged signature", token({"sub": USER_A, "role": "authenticated"}, key="another-secret-" * 3)),
        ("expired", user_token(USER_A, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
        ("not yet valid", user_token(USER_A, nbf=int(time.time()) + 3600)),
        ("no exp", user_token(USER_A, exp=None)),
        ("wrong audience", user_token(USER_A, aud="someone-else")),
        (
            "alg none",
            jwt.encode({"sub": USER_A, "role": "authenticated", "exp": 2**40}, None, algorithm="none"),
        ),
        ("role outside the three", token({"role": "postgres"})),
        ("authenticated without sub", token({"role": "authenticated"})),
        (
            "ES256 by a key not in the JWKS",
            token({"sub": USER_A, "role": "authenticated"}, key=OTHER_EC_KEY, alg="ES256", kid="key-1"),
        ),
    ],
)
def test_bad_tokens_get_401(edge: httpx.Client, clean_url: str, name: str, bearer: str) -> None:
    for response in (
        edge.post("/search", headers=auth(bearer), json={"vector": vec(1)}),
        edge.get("/documents", headers=auth(bearer)),
    ):
        assert error_of(response, 401)["code"] == "invalid_token", name


def test_tokens_signed_with_the_projects_keys_are_accepted(edge: httpx.Client, clean_url: str) -> None:
    es256 = token(
        {"sub": USER_A, "role": "authenticated", "aud": "authenticated"}, key=EC_KEY, alg="ES256", kid="key-1"
    )
    for bearer in (es256, user_token(USER_A), SERVICE):
        assert edge.get("/documents", headers=auth(bearer)).status_code == 200


def test_anon_gets_nothing(edge: httpx.Client, clean_url: str) -> None:
    assert (
        upsert(edge, SERVICE, [{"id": "shared", "content": "shared text", "embedding": vec(1)}]).status_code
        == 200
    )
    calls = [
        edge.post("/search", headers=auth(ANON), json={"vector": vec(1)}),
        edge.post("/search", headers=auth(ANON), json={"query": "shared", "mode": "full_text"}),
        upsert(edge, ANON, [{"id": "x", "content": "anon text", "embedding": vec(2)}]),
        edge.post("/documents/get", headers=auth(ANON), json={"ids": ["shared"]}),
        edge.get("/documents", headers=auth(ANON)),
        edge.post("/documents/delete", headers=auth(ANON), json={"ids": ["shared"]}),
        edge.get("/stats", headers=auth(ANON)),
    ]
    for response in calls:
        assert error_of(response, 403)["code"] == "forbidden", response.request.url
    health = edge.get("/health", headers=auth(ANON)).json()
    assert health == {
        "status": "ok",
        "database": "reachable",
        "schema_version": None,
        "role": "anon",
        "embedding": False,
    }


# --------------------------------------------------------------------------------------------------
# Row Level Security over HTTP


def test_user_b_cannot_read_change_or_delete_user_a_documents(edge: httpx.Client, clean_url: str) -> None:
    alice, bob = user_token(USER_A), user_token(USER_B)
    docs = [{"id": f"a{i}", "content": f"alice's private note {i}", "embedding": vec(i)} for i in range(3)]
    assert [r["status"] for r in upsert(edge, alice, docs).json()["results"]] == ["inserted"] * 3

    assert edge.post("/documents/get", headers=auth(bob), json={"ids": ["a0", "a1"]}).json() == {
        "documents": []
    }
    assert edge.get("/documents", headers=auth(bob)).json() == {"documents": [], "next_cursor": None}
    assert edge.post("/search", headers=auth(bob), json={"vector": vec(0)}).json()["results"] == []
    full_text = edge.post("/search", headers=auth(bob), json={"query": "private note", "mode": "full_text"})
    assert full_text.json()["results"] == []
    assert (
        edge.post("/search", headers=auth(bob), json={"query": "note", "vector": vec(0)}).json()["results"]
        == []
    )
    assert edge.get("/stats", headers=auth(bob)).json()["documents"] == 0
    assert edge.post("/documents/delete", headers=auth(bob), json={"ids": ["a0"]}).json() == {"deleted": []}
    # Bob's write under Alice's id makes Bob's own document; Alice's stays as it was.
    assert upsert(edge, bob, [{"id": "a0", "content": "bob's text", "embedding": vec(9)}]).json()[
        "results"
    ] == [{"id": "a0", "status": "inserted"}]

    mine = edge.post("/documents/get", headers=auth(alice), json={"ids": ["a0", "a1", "a2"]}).json()[
        "documents"
    ]
    assert [(d["id"], d["content"], d["owner_id"]) for d in mine] == [
        (f"a{i}", f"alice's private note {i}", USER_A) for i in range(3)
    ]
    assert edge.post("/documents/delete", headers=auth(alice), json={"ids": ["a0"]}).json() == {
        "deleted": ["a0"]
    }
    bobs = edge.post("/documents/get", headers=auth(bob), json={"ids": ["a0"]}).json()["documents"]
    assert [(d["content"], d["owner_id"]) for d in bobs] == [("bob's text", USER_B)]


def test_documents_round_trip_with_statuses_and_keyset_pages(edge: httpx.Client, clean_url: str) -> None:
    alice = user_token(USER_A)
    docs = [
        {"id": f"d{i}", "content": f"text number {i}", "metadata": {"n": i}, "embedding": vec(i)}
        for i in range(5)
    ]
    assert {r["status"] for r in upsert(edge, alice, docs).json()["results"]} == {"inserted"}
    # Unchanged content needs no vector; changed content without one is refused, naming the field.
    again = upsert(edge, alice, [{"id": "d0", "content": "text number 0", "metadata": {"n": 0}}])
    assert again.json()["results"] == [{"id": "d0", "status": "unchanged"}]
    changed = upsert(
        edge,
        alice,
        [
            {"id": "d1", "content": "new text", "embedding": vec(11)},
            {"id": "d2", "content": "other new text"},
        ],
    )
    body = error_of(changed, 400)
    assert body["field"] == "documents[1].embedding", body
    assert (
        edge.post("/documents/get", headers=auth(alice), json={"ids": ["d1"]}).json()["documents"][0][
            "content"
        ]
        == "text number 1"
    )

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"page_size": 2, "filter": json.dumps({"n": {"$gte": 1}})}
        if cursor:
            params["cursor"] = cursor
        page = edge.get("/documents", headers=auth(alice), params=params).json()
        pages.append([d["id"] for d in page["documents"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [i for page in pages for i in page] == ["d1", "d2", "d3", "d4"]

    derived = upsert(edge, alice, [{"content": "no id given", "embedding": vec(20)}]).json()["results"][0][
        "id"
    ]
    assert derived == __import__("hashlib").sha256(b"no id given").hexdigest()


def test_http_search_returns_what_the_sdk_returns(edge: httpx.Client, clean_url: str) -> None:
    embedder = FakeEmbedder()
    texts = [
        f"{w} document about {w} things" for w in ("apple", "banana", "cherry", "durian", "elder", "fig")
    ]
    with VectorStore(
        PostgresTransport(clean_url, identity=Identity.user(USER_A)), embedder=embedder
    ) as store:
        store.upsert([{"id": f"t{i}", "content": t, "metadata": {"i": i}} for i, t in enumerate(texts)])
        query = embedder.vector("banana things")
        sdk = store.search(query, k=4, filter={"i": {"$lt": 5}})
        sdk_hybrid = store.hybrid_search("banana", k=4)
    alice = user_token(USER_A)
    http = edge.post(
        "/search", headers=auth(alice), json={"vector": query.tolist(), "k": 4, "filter": {"i": {"$lt": 5}}}
    )
    assert http.json()["mode"] == "semantic"
    got = http.json()["results"]
    assert [r["id"] for r in got] == [r.id for r in sdk]
    assert np.allclose([r["similarity"] for r in got], [r.similarity for r in sdk], atol=1e-6, rtol=0)

    hybrid = edge.post(
        "/search",
        headers=auth(alice),
        json={"query": "banana", "vector": embedder.vector("banana").tolist(), "k": 4},
    )
    assert hybrid.json()["mode"] == "hybrid"
    assert [r["id"] for r in hybrid.json()["results"]] == [r.id for r in sdk_hybrid]
    assert np.allclose(
        [r["score"] for r in hybrid.json()["results"]], [r.score for r in sdk_hybrid], atol=1e-6, rtol=0
    )

    full_text = edge.post(
        "/search", headers=auth(alice), json={"query": "cherry", "mode": "full_text"}
    ).json()
    assert [r["id"] for r in full_text["results"]] == ["t2"]
    assert full_text["results"][0]["similarity"] is None


# --------------------------------------------------------------------------------------------------
# bad input: 4xx naming the field, never a 5xx


BAD_SEARCHES: list[tuple[dict[str, Any], str | None]] = [
    ({"vector": vec(1), "k": 0}, "k"),
    ({"vector": vec(1), "k": 1001}, "k"),
    ({"vector": vec(1), "k": "10"}, "k"),
    ({"vector": vec(1), "k": 2.5}, "k"),
    ({"vector": vec(1), "threshold": 1.5}, "threshold"),
    ({"vector": vec(1), "ef_search": 0}, "ef_search"),
    ({"vector": vec(1)[:383]}, "vector"),
    ({"vector": [0.0] * DIM}, "vector"),
    ({"vector": [*vec(1)[:-1], "x"]}, "vector[383]"),
    ({"vector": [*vec(1)[:-1], 1e39]}, "vector"),
    ({"vector": []}, "vector"),
    ({}, "vector"),
    ({"query": "   "}, "query"),
    ({"query": "a\u0000b", "mode": "full_text"}, "query"),
    ({"query": "x", "vector": vec(1), "semantic_weight": 0, "full_text_weight": 0}, "semantic_weight"),
    ({"query": "x", "vector": vec(1), "rrf_k": -1}, "rrf_k"),
    ({"mode": "hybrid", "vector": vec(1)}, "query"),
    ({"mode": "sideways", "vector": vec(1)}, "mode"),
    ({"vector": vec(1), "filter": {"n": {"$regex": "x"}}}, "filter"),
    ({"vector": vec(1), "filter": {"$or": "no"}}, "filter"),
    ({"vector": vec(1), "filter": [1]}, "filter"),
    ({"vector": vec(1), "kk": 3}, None),
    # options of another mode are refused, not ignored
    ({"vector": vec(1), "rrf_k": 10}, "rrf_k"),
    ({"vector": vec(1), "semantic_weight": 2}, "semantic_weight"),
    ({"query": "x", "vector": vec(1), "threshold": 0.5}, "threshold"),
    ({"query": "x", "mode": "full_text", "ef_search": 10}, "ef_search"),
]


@pytest.mark.parametrize(("body", "field"), BAD_SEARCHES)
def test_bad_search_input_is_a_400_naming_the_field(
    edge: httpx.Client, clean_url: str, body: dict[str, Any], field: str | None
) -> None:
    error = error_of(edge.post("/search", headers=auth(user_token(USER_A)), json=body), 400)
    assert error.get("field") == field, error
    assert error["code"] in {"invalid_input", "filter_error"}


def test_query_text_without_an_edge_embedder_is_a_501_naming_the_alternatives(
    edge: httpx.Client, clean_url: str
) -> None:
    error = error_of(edge.post("/search", headers=auth(user_token(USER_A)), json={"query": "apples"}), 501)
    assert error["code"] == "embedding_not_configured"
    assert "vector" in error["message"]
    assert "full_text" in error["message"]


BAD_DOCUMENTS: list[tuple[Any, str | None, str]] = [
    ({"documents": []}, "documents", "invalid_input"),
    (
        {"documents": [{"content": f"c{i}", "embedding": vec(1)} for i in range(501)]},
        "documents",
        "invalid_input",
    ),
    ({"documents": [{"content": "", "embedding": vec(1)}]}, "documents[0].content", "invalid_input"),
    ({"documents": [{"content": "  \n", "embedding": vec(1)}]}, "documents[0].content", "invalid_input"),
    ({"documents": [{"content": "x\u0000y", "embedding": vec(1)}]}, "documents[0].content", "invalid_input"),
    ({"documents": [{"id": "", "content": "x", "embedding": vec(1)}]}, "documents[0].id", "invalid_input"),
    (
        {"documents": [{"id": "i" * 513, "content": "x", "embedding": vec(1)}]},
        "documents[0].id",
        "invalid_input",
    ),
    ({"documents": [{"content": "x", "embedding": vec(1)[:10]}]}, "documents[0].embedding", "invalid_input"),
    (
        {"documents": [{"content": "x", "metadata": [1], "embedding": vec(1)}]},
        "documents[0].metadata",
        "invalid_input",
    ),
    ({"documents": [{"content": "x", "embedding": vec(1), "colour": 1}]}, "documents[0]", "invalid_input"),
    (
        {
            "documents": [
                {"id": "a", "content": "x", "embedding": vec(1)},
                {"id": "a", "content": "y", "embedding": vec(2)},
            ]
        },
        "documents[1].id",
        "document_error",
    ),
    (
        {"documents": [{"content": "same", "embedding": vec(1)}, {"content": "same", "embedding": vec(2)}]},
        "documents[1].content",
        "document_error",
    ),
    ({"documents": [{"content": "new text, no vector"}]}, "documents[0].embedding", "document_error"),
    ({"documents": "all of them"}, "documents", "invalid_input"),
    ([1, 2], None, "invalid_input"),
]


@pytest.mark.parametrize(("body", "field", "code"), BAD_DOCUMENTS)
def test_bad_documents_are_a_400_naming_the_field_and_write_nothing(
    edge: httpx.Client, clean_url: str, body: Any, field: str | None, code: str
) -> None:
    alice = user_token(USER_A)
    error = error_of(edge.post("/documents", headers=auth(alice), json=body), 400)
    assert (error.get("field"), error["code"]) == (field, code), error
    assert edge.get("/stats", headers=auth(alice)).json()["documents"] == 0


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "field"),
    [
        ("post", "/documents/get", {"json": {"ids": []}}, "ids"),
        ("post", "/documents/get", {"json": {"ids": "a"}}, "ids"),
        ("post", "/documents/get", {"json": {"ids": ["a", ""]}}, "ids[1]"),
        ("post", "/documents/delete", {"json": {"ids": [f"x{i}" for i in range(501)]}}, "ids"),
        ("get", "/documents", {"params": {"page_size": "0"}}, "page_size"),
        ("get", "/documents", {"params": {"page_size": "lots"}}, "page_size"),
        ("get", "/documents", {"params": {"cursor": "abc"}}, "cursor"),
        ("get", "/documents", {"params": {"filter": "{not json"}}, "filter"),
        ("get", "/documents", {"params": {"filter": '{"n": {"$near": 1}}'}}, "filter"),
        (
            "post",
            "/documents/get",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            None,
        ),
        (
            "post",
            "/documents/get",
            {"content": b'{"ids": ["a"]}', "headers": {"content-type": "text/plain"}},
            None,
        ),
    ],
)
def test_bad_ids_pages_and_bodies_are_400(
    edge: httpx.Client, clean_url: str, method: str, path: str, kwargs: dict[str, Any], field: str | None
) -> None:
    headers = {**auth(user_token(USER_A)), **kwargs.pop("headers", {})}
    error = error_of(edge.request(method.upper(), path, headers=headers, **kwargs), 400)
    assert error.get("field") == field, error


def test_bodies_over_the_limit_are_413(edge: httpx.Client, clean_url: str) -> None:
    big = {"documents": [{"content": "x" * 1_000_000, "id": str(i)} for i in range(7)]}
    assert (
        error_of(edge.post("/documents", headers=auth(user_token(USER_A)), json=big), 413)["code"]
        == "payload_too_large"
    )


def test_unknown_routes_are_404_json(edge: httpx.Client) -> None:
    assert error_of(edge.get("/nowhere", headers=auth(SERVICE)), 404)["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/search", "POST"), ("DELETE", "/documents", "POST, GET"), ("PUT", "/health", "GET")],
)
def test_other_methods_on_a_documented_path_are_405(
    edge: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = edge.request(method, path, headers=auth(SERVICE))
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert response.headers["allow"] == allow


def test_an_unreachable_database_is_a_503_without_its_address(database_url: str) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = f"postgresql://postgres:s3cret@127.0.0.1:{port}/postgres"
    with serve_function(down) as client:
        response = client.post("/search", headers=auth(user_token(USER_A)), json={"vector": vec(1)})
    error = error_of(response, 503)
    assert error["code"] == "backend_unavailable"
    assert str(port) not in error["message"]
    assert "s3cret" not in response.text


def test_health_and_stats(edge: httpx.Client, clean_url: str) -> None:
    health = edge.get("/health", headers=auth(user_token(USER_A))).json()
    assert health == {
        "status": "ok",
        "database": "reachable",
        "schema_version": "1",
        "role": "authenticated",
        "embedding": False,
    }
    stats = edge.get("/stats", headers=auth(SERVICE)).json()
    assert stats["documents"] == 0
    assert stats["settings"]["embedding_dimension"] == DIM


# --------------------------------------------------------------------------------------------------
# the SQLSTATE table is the SDK's


SQLSTATES = [
    "57014",
    "42501",
    "28000",
    "28P01",
    "42883",
    "42P01",
    "3F000",
    "08006",
    "08001",
    "57P01",
    "57P03",
    "53300",
    "22023",
    "22P02",
    "23505",
    "54000",
    "54001",
    "XX000",
    "40001",
    "P0001",
]


def test_sqlstate_table_mirrors_the_sdk() -> None:
    script = (
        "import { errorForSqlstate, SQLSTATE_TABLE } from './errors.ts';"
        "const sdk = Object.fromEntries(SQLSTATE_TABLE.map((r) => [r.code, r.sdk]));"
        "Object.assign(sdk, {filter_error: 'FilterError', document_error: 'DocumentError',"
        " backend_error: 'BackendError'});"
        "const cases = JSON.parse(Deno.args[0]);"
        "console.log(JSON.stringify(cases.map(([s, m, d]) => {"
        " const e = errorForSqlstate(s, m, d ?? undefined); return [sdk[e.code], e.status]; })));"
    )
    cases: list[tuple[str, str, str | None]] = [(s, "boom", None) for s in SQLSTATES]
    cases += [
        ("22023", "invalid filter: unknown operator $x", None),
        ("22023", "document 2 has no embedding", '{"ordinal": 2, "external_id": "b"}'),
    ]
    out = subprocess.run(
        [deno(), "eval", "--ext=ts", script, json.dumps(cases)],
        cwd=FUNCTION_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    edge_side = json.loads(out.strip().splitlines()[-1])
    sdk_side = [type(error_for_sqlstate(s, m, detail=d)).__name__ for s, m, d in cases]
    assert [name for name, _ in edge_side] == sdk_side
    # Input the database refuses is the caller's: a 4xx; only the backend's own failures are 5xx.
    for (sqlstate, _, _), (name, status) in zip(cases, edge_side, strict=True):
        assert (status < 500) == (
            name in {"InvalidInputError", "FilterError", "DocumentError", "AuthError"}
        ), sqlstate


# --------------------------------------------------------------------------------------------------
# the README's curl example, as written


def readme_curl_example() -> str:
    section = (REPO_ROOT / "README.md").read_text().split("## The HTTP API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    curl = [b for b in blocks if b.startswith("curl")]
    assert curl, "README's HTTP API section has no curl example"
    return curl[0]


def test_readme_curl_example_runs(edge: httpx.Client, clean_url: str) -> None:
    alice = user_token(USER_A)
    docs = [
        {"id": "cold-brew", "content": "Cold brew steeps coarse coffee in cold water", "embedding": vec(1)},
        {"id": "espresso", "content": "Espresso forces hot water through fine coffee", "embedding": vec(2)},
    ]
    assert upsert(edge, alice, docs).status_code == 200
    env = {**os.environ, "VECTORS_URL": str(edge.base_url).rstrip("/"), "TOKEN": alice}
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_curl_example()],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    decoder, bodies, at = json.JSONDecoder(), [], 0
    while at < len(out.rstrip()):
        body, at = decoder.raw_decode(out, at)
        bodies.append(body)
        at += len(out[at:]) - len(out[at:].lstrip())
    search, page = bodies
    assert [r["id"] for r in search["results"]] == ["cold-brew"]
    assert [d["id"] for d in page["documents"]] == ["cold-brew", "espresso"]


# --------------------------------------------------------------------------------------------------
# text embedded at the edge (EMBEDDING_MODEL_URL): the SDK's graph, the SDK's vectors


@pytest.fixture(scope="module")
def sdk_embedder() -> OnnxEmbedder:
    # fp32 pinned: the edge runs model.onnx (fp32), and "auto" would pick int8 on a VNNI CPU.
    embedder = OnnxEmbedder(precision="fp32")
    embedder.load()  # installs the model when missing (one time)
    return embedder


STORAGE_KEY = "service-key-of-the-test-project"
MODEL_PATH = "/storage/v1/object/authenticated/models/all-MiniLM-L6-v2/"


class ModelStorage:
    """A stand-in for a private Storage bucket: serves the installed model under MODEL_PATH only to a
    request that carries the service key, and records every request's headers."""

    def __init__(self, directory: Path, *, key: str | None) -> None:
        self.requests: list[dict[str, str]] = []
        storage = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                storage.requests.append({k.lower(): v for k, v in self.headers.items()})
                name = self.path.removeprefix(MODEL_PATH)
                authorized = key is None or (
                    self.headers.get("authorization") == f"Bearer {key}" and self.headers.get("apikey") == key
                )
                target = directory / name
                if not authorized or name == self.path or "/" in name or not target.is_file():
                    self.send_error(400 if not authorized else 404)  # Storage answers 400 without a key
                    return
                body = target.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def model_storage(*, key: str | None) -> Iterator[ModelStorage]:
    model = installed_model(quantized=False)
    assert model is not None
    storage = ModelStorage(model.directory, key=key)
    try:
        yield storage
    finally:
        storage.close()


@pytest.fixture(scope="module")
def edge_embedding(database_url: str, sdk_embedder: OnnxEmbedder) -> Iterator[httpx.Client]:
    """The function loading the SDK's fp32 graph from a private bucket of its own project, checksum
    pinned, as a hosted deployment with a model would."""
    model = installed_model(quantized=False)
    assert model is not None
    with (
        model_storage(key=STORAGE_KEY) as storage,
        serve_function(
            database_url,
            SUPABASE_URL=storage.origin,
            SUPABASE_SERVICE_ROLE_KEY=STORAGE_KEY,
            EMBEDDING_MODEL_URL=storage.origin + MODEL_PATH,
            EMBEDDING_MODEL_SHA256=hashlib.sha256(model.onnx.read_bytes()).hexdigest(),
        ) as client,
    ):
        yield client
        fetched = {r.get("authorization") for r in storage.requests}
        assert fetched == {f"Bearer {STORAGE_KEY}"}, fetched


def test_the_service_key_goes_only_to_the_project_and_a_wrong_checksum_refuses_the_model(
    database_url: str, sdk_embedder: OnnxEmbedder
) -> None:
    """A model URL on another origin is fetched without the project's key; a graph whose SHA-256 is not
    the pinned one is never run: text queries answer 503 and vectors keep working."""
    with (
        model_storage(key=STORAGE_KEY) as project,
        model_storage(key=None) as elsewhere,
        serve_function(
            database_url,
            SUPABASE_URL=project.origin,
            SUPABASE_SERVICE_ROLE_KEY=STORAGE_KEY,
            EMBEDDING_MODEL_URL=elsewhere.origin + MODEL_PATH,
            EMBEDDING_MODEL_SHA256="0" * 64,
        ) as client,
    ):
        alice = user_token(USER_A)
        refused = client.post("/embed", headers=auth(alice), json={"texts": ["vacuum"]})
        assert error_of(refused, 503)["code"] == "embedding_unavailable"
        by_vector = client.post("/search", headers=auth(alice), json={"vector": vec(1), "k": 1})
        assert by_vector.status_code == 200, by_vector.text
    assert len(elsewhere.requests) >= 2
    assert all("authorization" not in r and "apikey" not in r for r in elsewhere.requests)
    assert project.requests == []


def corpus_texts() -> list[str]:
    queries = [
        json.loads(line)["query"]
        for line in (CORPUS / "postgres-docs" / "queries.jsonl").open()
        if line.strip()
    ]
    # Whole sections too: most run past 256 tokens, so truncation must match as well.
    sections = json.loads((CORPUS / "postgres-docs" / "documents" / "amcheck.json").read_text())
    return queries + [s["content"] for s in sections[:8]]


def test_edge_vectors_match_the_sdks(edge_embedding: httpx.Client, sdk_embedder: OnnxEmbedder) -> None:
    texts = corpus_texts()
    alice = user_token(USER_A)
    got: list[list[float]] = []
    for start in range(0, len(texts), 32):
        response = edge_embedding.post(
            "/embed", headers=auth(alice), json={"texts": texts[start : start + 32]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == sdk_embedder.model_id
        got.extend(response.json()["vectors"])
    edge_vectors = np.asarray(got, dtype=np.float64)
    sdk_vectors = sdk_embedder.embed(texts).astype(np.float64)
    cosines = (edge_vectors * sdk_vectors).sum(axis=1) / (
        np.linalg.norm(edge_vectors, axis=1) * np.linalg.norm(sdk_vectors, axis=1)
    )
    assert len(texts) > 411
    assert cosines.min() >= 0.9999, (cosines.min(), texts[int(cosines.argmin())][:80])


def test_text_queries_and_vectorless_upserts_embed_at_the_edge(
    edge_embedding: httpx.Client, clean_url: str, sdk_embedder: OnnxEmbedder
) -> None:
    alice = user_token(USER_A)
    docs = [
        {"id": "cold-brew", "content": "Cold brew steeps coarse coffee in cold water for hours"},
        {"id": "espresso", "content": "Espresso forces hot water through finely ground coffee"},
        {"id": "tea", "content": "Green tea is steeped briefly at a low temperature"},
    ]
    assert [r["status"] for r in upsert(edge_embedding, alice, docs).json()["results"]] == ["inserted"] * 3
    with VectorStore(
        PostgresTransport(clean_url, identity=Identity.user(USER_A)), embedder=sdk_embedder
    ) as store:
        sdk = store.search("iced coffee", k=3)
    http = edge_embedding.post("/search", headers=auth(alice), json={"query": "iced coffee", "k": 3}).json()
    assert http["mode"] == "semantic"
    assert [r["id"] for r in http["results"]] == [r.id for r in sdk]
    assert np.allclose(
        [r["similarity"] for r in http["results"]], [r.similarity for r in sdk], atol=1e-5, rtol=0
    )
    health = edge_embedding.get("/health", headers=auth(alice)).json()
    assert health["embedding"] is True
    assert (
        error_of(edge_embedding.post("/embed", headers=auth(ANON), json={"texts": ["x"]}), 403)["code"]
        == "forbidden"
    )


def test_schemathesis_finds_no_5xx_and_every_response_matches_the_document(
    edge_embedding: httpx.Client, clean_url: str, tmp_path: Path
) -> None:
    """Property-based requests from docs/openapi.json against the function with its model configured
    (without one, text queries answer the documented 501, which schemathesis counts as a server error)."""
    checks = [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "negative_data_rejection",  # schema-invalid input is refused (4xx)
        "ignored_auth",  # no operation answers without a valid token
    ]
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "run",
            str(OPENAPI),
            "--url",
            str(edge_embedding.base_url).rstrip("/"),
            "-H",
            f"Authorization: Bearer {user_token(USER_A)}",
            "--checks",
            ",".join(checks),
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--no-color",
        ],
        cwd=tmp_path,  # schemathesis keeps a cache (.schemathesis/) in its working directory
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_embed_without_an_edge_model_is_a_501(edge: httpx.Client) -> None:
    response = edge.post("/embed", headers=auth(user_token(USER_A)), json={"texts": ["x"]})
    assert error_of(response, 501)["code"] == "embedding_not_configured"


# --------------------------------------------------------------------------------------------------
# a real supabase-js client


COLD_BREW = {"id": "cold-brew", "content": "Cold brew steeps coffee in cold water", "embedding": vec(1)}


def supabase_js(edge: httpx.Client, script: Path, user_bearer: str) -> dict[str, Any]:
    """Run a Deno script (supabase-js from the function's lockfile) with the gateway URL, the anon key
    and a user's token; its last line of output is JSON."""
    # supabase-js calls <url>/functions/v1/vectors/...; the function answers on that path as well.
    base = str(edge.base_url).removesuffix("/").removesuffix("/vectors")
    config = str(FUNCTION_DIR / "deno.json")
    argv = [deno(), "run", "--frozen", "--allow-net", "--allow-env", "--config", config, str(script)]
    result = subprocess.run([*argv, base, ANON, user_bearer], capture_output=True, text=True, check=True)
    return cast(dict[str, Any], json.loads(result.stdout.strip().splitlines()[-1]))


def test_supabase_js_functions_invoke_with_a_users_token(edge: httpx.Client, clean_url: str) -> None:
    alice = user_token(USER_A)
    assert upsert(edge, alice, [COLD_BREW]).status_code == 200
    out = supabase_js(edge, REPO_ROOT / "tests" / "edge" / "supabase_js_invoke.ts", alice)
    assert out["searchError"] is None
    assert [r["id"] for r in out["search"]["results"]] == ["cold-brew"]
    assert out["anonStatus"] == 403


def test_readme_supabase_js_example_runs(edge: httpx.Client, clean_url: str, tmp_path: Path) -> None:
    alice = user_token(USER_A)
    assert upsert(edge, alice, [COLD_BREW]).status_code == 200
    section = (REPO_ROOT / "README.md").read_text().split("## The HTTP API", 1)[1].split("\n## ", 1)[0]
    example = re.findall(r"```js\n(.*?)```", section, re.DOTALL)[0]
    script = tmp_path / "example.ts"
    script.write_text(
        "const [SUPABASE_URL, SUPABASE_ANON_KEY, accessToken] = Deno.args;\n"
        + example
        + "console.log(JSON.stringify({ data, error: error?.message ?? null }));\n"
    )
    out = supabase_js(edge, script, alice)
    assert out["error"] is None
    assert [r["id"] for r in out["data"]["results"]] == ["cold-brew"]
