"""The store's settings (its model and shared limits), and what the store needs of an embedder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from supa_vectors.errors import (
    BackendError,
    ModelMismatchError,
)
from supa_vectors.filters import DEFAULT_FILTER_LIMITS, FilterLimits

__all__ = [
    "EmbedderLike",
    "StoreSettings",
    "check_embedder",
]


class EmbedderLike(Protocol):
    """What the store needs of an embedder (``supa_vectors.embedding.Embedder`` satisfies it)."""

    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class StoreSettings:
    """The store's ``metadata_global``: which model its vectors come from, and the shared limits."""

    embedding_model: str
    embedding_dimension: int
    max_content_bytes: int = 1_000_000
    max_result_rows: int = 1000
    max_batch_size: int = 1000
    filter_limits: FilterLimits = DEFAULT_FILTER_LIMITS
    schema_version: int | None = None  # metadata_global's, recorded in a backup's manifest

    @classmethod
    def from_json(cls, value: Any) -> StoreSettings:
        if not isinstance(value, Mapping):
            raise BackendError(f"store_settings() returned {type(value).__name__}, not an object")
        try:
            return cls(
                embedding_model=str(value["embedding_model"]),
                embedding_dimension=int(value["embedding_dimension"]),
                max_content_bytes=int(value.get("max_content_bytes", 1_000_000)),
                max_result_rows=int(value.get("max_result_rows", 1000)),
                max_batch_size=int(value.get("max_batch_size", 1000)),
                filter_limits=FilterLimits.from_settings(value),
                schema_version=int(value["schema_version"]) if "schema_version" in value else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"store_settings() is incomplete: {exc!r}") from exc


def check_embedder(embedder: EmbedderLike, settings: StoreSettings) -> None:
    """Refuse an embedder whose vectors would not be comparable with the store's."""
    if embedder.model_id != settings.embedding_model or embedder.dimension != settings.embedding_dimension:
        raise ModelMismatchError(
            f"the embedder produces {embedder.dimension}-dimensional vectors of {embedder.model_id!r}, "
            f"but this store holds {settings.embedding_dimension}-dimensional vectors of "
            f"{settings.embedding_model!r}; use the store's model (or migrate the store to the new one)"
        )
