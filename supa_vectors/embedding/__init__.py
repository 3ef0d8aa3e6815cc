"""Local sentence embeddings: the ``Embedder`` protocol and the ONNX all-MiniLM-L6-v2 model.

Importing this package stays cheap: onnxruntime and tokenizers load on the first ``embed``.
"""

from __future__ import annotations

from supa_vectors.embedding.install import MODEL_DIR_ENV, MODEL_ID, install_model, models_root
from supa_vectors.embedding.onnx import OnnxEmbedder
from supa_vectors.embedding.precision import PRECISION_ENV, Precision
from supa_vectors.embedding.protocol import Embedder

__all__ = [
    "MODEL_DIR_ENV",
    "MODEL_ID",
    "PRECISION_ENV",
    "Embedder",
    "OnnxEmbedder",
    "Precision",
    "install_model",
    "models_root",
]
