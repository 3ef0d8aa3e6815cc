"""The interface every embedder offers to the store.

The store records ``model_id`` and ``dimension`` next to the vectors it writes and refuses an
embedder whose pair differs (``ModelMismatchError``): vectors from two models are not comparable,
and that mistake is otherwise silent. A Protocol rather than a base class lets an application
plug in its own embedder (a hosted API, another local model) without importing supa-vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of one model's vector space."""

    @property
    def model_id(self) -> str:
        """Names the vector space; two embedders with equal ids give comparable vectors."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector ``embed`` returns."""
        ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Return a ``(len(texts), dimension)`` float32 array of L2-normalised rows, in input order."""
        ...
