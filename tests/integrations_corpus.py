"""What the framework adapters' tests share: a slice of the shared corpus for the retrieval-equality
tests, two users' stores for the RLS tests, an import without the framework, a transport to take down.

The equality checked is of the adapters against the SDK on the same store and vectors, so the fake
embedder (bag of words, tests/conftest.py) stands in for the model: running the ONNX model over the
corpus takes minutes on two busy cores. A slice (every fifth section, 578 of 2,889, and the 80 queries
answered in it) keeps the two test files within seconds; the full corpus is in bench/integrations.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from supa_vectors import Document, Identity, VectorStore
from supa_vectors.errors import BackendUnavailableError
from supa_vectors.transport.postgres import PostgresTransport
from tests.conftest import CORPUS, DIM, USER_A, USER_B, FakeEmbedder


@contextlib.contextmanager
def two_users(url: str) -> Iterator[tuple[VectorStore, VectorStore]]:
    """Stores signed in as USER_A and USER_B (RLS applies), closed afterwards."""
    with (
        VectorStore(PostgresTransport(url, identity=Identity.user(USER_A)), embedder=FakeEmbedder()) as a,
        VectorStore(PostgresTransport(url, identity=Identity.user(USER_B)), embedder=FakeEmbedder()) as b,
    ):
        yield a, b


def corpus_slice(step: int = 5, queries: int = 80) -> tuple[list[dict[str, Any]], list[str]]:
    """Every ``step``-th section ({id, content, metadata}) and up to ``queries`` queries answered by them."""
    docs: list[dict[str, Any]] = []
    for path in sorted((CORPUS / "postgres-docs" / "documents").glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, list):
            docs += [{"id": d["id"], "content": d["content"], "metadata": d["metadata"]} for d in data]
        else:
            docs += [
                {"id": d["metadata"]["doc_id"], "content": d["page_content"], "metadata": d["metadata"]}
                for d in data["documents"]
            ]
    docs = docs[::step]
    kept = {d["id"] for d in docs}
    lines = (CORPUS / "postgres-docs" / "queries.jsonl").read_text("utf-8").splitlines()
    asked = [json.loads(line) for line in lines if line.strip()]
    return docs, [q["query"] for q in asked if q["answer_id"] in kept][:queries]


def import_error(module: str, *missing: str) -> str:
    """The ImportError message of importing ``module`` in a fresh interpreter without ``missing``."""
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({list(missing)!r}))\n"
        f"try:\n    import {module}\nexcept ImportError as e:\n    print(e)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


class FlakyTransport(PostgresTransport):
    """Fault injection: while ``down``, every call fails as unreachable."""

    down = False

    def rpc(self, name: str, params: Mapping[str, Any]) -> Any:
        if self.down:
            raise BackendUnavailableError(f"injected: connection refused ({name})")
        return super().rpc(name, params)


def precomputed_mmr_case(embedder: FakeEmbedder) -> tuple[list[float], list[Document]]:
    """MMR by stored vectors: a query and three documents written with the app's own vectors, which
    differ from what the embedder makes of their content: "a" is the query's vector, "b" a
    near-duplicate of it (content unrelated), "c" half-way to another direction (content "alpha",
    which embeds exactly as "a")."""
    query = embedder.vector("alpha")
    rng = np.random.default_rng(17)
    x, y = (v - (v @ query) * query for v in rng.standard_normal((2, DIM)).astype(np.float32))
    unit = [
        v / np.linalg.norm(v)
        for v in (query, 0.9 * query + 0.1 * x / np.linalg.norm(x), query + y / np.linalg.norm(y))
    ]
    docs = [
        Document(id="a", content="alpha", embedding=unit[0]),
        Document(id="b", content="beta gamma", embedding=unit[1]),
        Document(id="c", content="alpha", embedding=unit[2]),
    ]
    return query.tolist(), docs
