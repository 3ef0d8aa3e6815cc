"""Argument checks and RPC parameters of the read operations: each refuses bad input before anything
is sent, with a typed error that names the argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from supa_vectors._core import rpcs
from supa_vectors._core.ops import RpcCall
from supa_vectors._core.settings import StoreSettings
from supa_vectors._text import text_problem
from supa_vectors.errors import (
    InvalidInputError,
)

__all__ = [
    "ID_CHUNK_SIZE",
    "HybridTuning",
    "check_ef_search",
    "check_ids",
    "check_k",
    "check_page_size",
    "check_query_text",
    "check_threshold",
    "check_weight",
    "count_params",
    "hybrid_call",
    "hybrid_params",
    "hybrid_tuning",
    "id_chunks",
    "list_params",
    "match_call",
    "match_params",
    "query_vector",
]

# get_documents / delete_documents take at most max_result_rows - 1 ids (999 by default).
ID_CHUNK_SIZE = 500


def check_ids(ids: Iterable[str] | str) -> list[str]:
    """A bare string is one id (not its characters); ids must be non-empty strings."""
    if isinstance(ids, str):
        ids = [ids]
    out = list(ids)
    for i, value in enumerate(out):
        if not isinstance(value, str) or not value or text_problem(value, "id"):
            raise InvalidInputError(
                f"ids[{i}] must be a non-empty string without NUL or lone surrogates, got {value!r}"
            )
    return out


def id_chunks(ids: Sequence[str]) -> list[list[str]]:
    unique = list(dict.fromkeys(ids))
    return [unique[i : i + ID_CHUNK_SIZE] for i in range(0, len(unique), ID_CHUNK_SIZE)]


def check_k(k: int, settings: StoreSettings | None = None, *, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {k!r}")
    if settings is not None and k > settings.max_result_rows:
        raise InvalidInputError(
            f"{name} is {k}; the store returns at most {settings.max_result_rows} rows per call"
        )
    return k


def check_page_size(page_size: int) -> int:
    return check_k(page_size, name="page_size")


def check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise InvalidInputError(f"threshold must be a number, got {threshold!r}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise InvalidInputError(f"threshold is {threshold}; cosine similarity lies between -1 and 1")
    return float(threshold)


def check_ef_search(ef_search: int | None) -> int | None:
    """pgvector's own range for hnsw.ef_search; match_documents refuses the rest too, but only after
    a round trip, and offline the mirror would answer a call the backend would refuse."""
    if ef_search is None:
        return None
    if isinstance(ef_search, bool) or not isinstance(ef_search, int) or not 1 <= ef_search <= 1000:
        raise InvalidInputError(f"ef_search must be an integer from 1 to 1000, got {ef_search!r}")
    return ef_search


def check_query_text(query: Any) -> str:
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query must not be empty")
    if problem := text_problem(query, "query"):
        raise InvalidInputError(problem)
    return query


def check_weight(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def query_vector(value: Any, dimension: int) -> npt.NDArray[np.float32]:
    """A caller's query vector as float32, refusing the wrong dimension and non-finite values."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"the query vector is not a sequence of numbers: {exc}") from exc
    if array.ndim != 1 or array.shape[0] != dimension:
        raise InvalidInputError(
            f"the query vector has shape {array.shape}; this store holds {dimension}-dimensional vectors"
        )
    if not np.isfinite(array).all():
        raise InvalidInputError("the query vector contains NaN or infinite values")
    if not array.any():
        raise InvalidInputError("the query vector is all zeros; cosine similarity is undefined for it")
    return array


def match_params(
    vector: npt.NDArray[np.float32],
    k: int,
    threshold: float | None,
    filter: dict[str, Any],
    ef_search: int | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"query_embedding": vector, "match_count": k}
    if threshold is not None:
        params["match_threshold"] = threshold
    if filter:
        params["filter"] = filter
    if ef_search is not None:
        params["ef_search"] = ef_search
    return params


@dataclass(frozen=True)
class HybridTuning:
    full_text_weight: float
    semantic_weight: float
    rrf_k: int


def hybrid_tuning(
    *, full_text_weight: float = 1.0, semantic_weight: float = 1.0, rrf_k: int = 50
) -> HybridTuning:
    """Checked before the query is embedded, so a bad argument costs no model run."""
    full_text_weight = check_weight(full_text_weight, "full_text_weight")
    semantic_weight = check_weight(semantic_weight, "semantic_weight")
    if full_text_weight + semantic_weight == 0:
        raise InvalidInputError("full_text_weight and semantic_weight must not both be 0")
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
        raise InvalidInputError(f"rrf_k must be an integer >= 0, got {rrf_k!r}")
    return HybridTuning(full_text_weight, semantic_weight, rrf_k)


def hybrid_params(
    text: str, vector: npt.NDArray[np.float32], k: int, filter: dict[str, Any], tuning: HybridTuning
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "query_text": text,
        "query_embedding": vector,
        "match_count": k,
        "full_text_weight": tuning.full_text_weight,
        "semantic_weight": tuning.semantic_weight,
        "rrf_k": tuning.rrf_k,
    }
    if filter:
        params["filter"] = filter
    return params


def list_params(after_id: int, page_size: int, filter: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"page_size": page_size, "after_id": after_id}
    if filter:
        params["filter"] = filter
    return params


def count_params(checked: dict[str, Any]) -> dict[str, Any]:
    return {"filter": checked} if checked else {}


def match_call(
    vector: npt.NDArray[np.float32],
    *,
    k: int,
    threshold: float | None,
    filter: dict[str, Any],
    ef_search: int | None = None,
) -> RpcCall:
    """The ``match_documents`` call for a query vector (the offline layer computes the vector)."""
    return rpcs.MATCH_DOCUMENTS.call(match_params(vector, k, threshold, filter, ef_search))


def hybrid_call(
    vector: npt.NDArray[np.float32], *, text: str, k: int, filter: dict[str, Any], tuning: HybridTuning
) -> RpcCall:
    """The ``hybrid_search`` call for a query text and its vector."""
    return rpcs.HYBRID_SEARCH.call(hybrid_params(text, vector, k, filter, tuning))
