"""A slice of the shared corpus for the framework adapters' retrieval-equality tests.

The equality checked is of the adapters against the SDK on the same store and vectors, so the fake
embedder (bag of words, tests/conftest.py) stands in for the model: running the ONNX model over the
corpus takes minutes on two busy cores. A slice (every fifth section, 578 of 2,889, and the 80 queries
answered in it) keeps the two test files within seconds; the full corpus is in bench/integrations.py.
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import CORPUS


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
