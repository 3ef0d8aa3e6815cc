"""all-MiniLM-L6-v2 sentence embeddings on onnxruntime, without torch.

onnxruntime and tokenizers are imported on the first ``embed`` call, not at import time: an app
that only reads from the store, or brings its own ``Embedder``, never pays for them. If the model
is not installed yet, that first call installs it (see ``install.py``) and logs what it does.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from supa_vectors.embedding.graph import HIDDEN_SIZE, MAX_TOKENS
from supa_vectors.embedding.install import MODEL_ID, InstalledModel, install_model, installed_model
from supa_vectors.embedding.precision import Precision, Variant, choose_variant
from supa_vectors.errors import EmbeddingError, InvalidInputError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["OnnxEmbedder"]

logger = logging.getLogger("supa_vectors.embedding")

# Texts are tokenised in chunks of this many, sorted by token count within the chunk and cut into
# batches: sorting keeps padding low, chunking keeps memory flat for very long inputs.
_CHUNK = 4096


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class OnnxEmbedder:
    """Local embeddings of ``sentence-transformers/all-MiniLM-L6-v2`` (384 dimensions).

    ``precision`` picks the graph: ``"fp32"``, ``"int8"`` (a 58 MB file instead of 90 MB, vectors
    within a few hundredths of cosine of fp32, retrieval quality kept) or ``"auto"`` (the default):
    int8 where the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX), fp32 elsewhere,
    unless ``$SUPA_VECTORS_EMBEDDING_PRECISION`` says otherwise (see ``precision.py``). With VNNI int8
    measured ~1.6x fp32's throughput; without it onnxruntime's int8 GEMM runs at the fp32 rate, so
    fp32, the exact one, is kept. Both share ``model_id``: quantisation approximates the same vector
    space rather than defining a new one, and documents embedded by one variant are found by queries
    of the other as well as by their own (docs/decisions/0026-int8-by-cpu.md). ``variant`` says which
    graph runs and ``variant_reason`` why.

    ``batch_size`` caps the texts per onnxruntime call and ``max_batch_tokens`` caps their padded
    tokens: a call's activations must stay in the CPU's caches. Measured on whole corpus sections
    (mostly 256 tokens) on a 2-core Zen 1, fp32: 15.3 sections/s at 1-8 per call, 12.9 at 32; on
    65-token texts the best was 16 per call (~1,000 tokens); on 7-token queries 32 per call. A 1,024-token
    budget with at most 32 rows picks each of those. ``threads`` defaults to the physical core count,
    since hyper-threads do not speed up these matrix kernels.
    """

    model_id: Final[str] = MODEL_ID
    dimension: Final[int] = HIDDEN_SIZE

    def __init__(
        self,
        *,
        precision: Precision = "auto",
        batch_size: int = 32,
        max_batch_tokens: int = 1024,
        model_dir: Path | str | None = None,
        threads: int | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens)):
            if not _is_positive_int(value):
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if threads is not None and not _is_positive_int(threads):
            raise InvalidInputError(f"threads must be a positive integer or None, got {threads!r}")
        choice = choose_variant(precision)
        self.precision: Precision = precision
        self.variant: Variant = choice.variant
        self.variant_reason = choice.reason
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.threads = threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Tokenizer | None = None
        self._output_name = "sentence_embedding"

    def __repr__(self) -> str:
        return (
            f"OnnxEmbedder(variant={self.variant!r} ({self.variant_reason}), batch_size={self.batch_size}, "
            f"max_batch_tokens={self.max_batch_tokens}, threads={self.threads})"
        )

    def load(self) -> None:
        """Install (if needed) and load the model now rather than on the first ``embed``."""
        self._ensure_loaded()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` in the caller's order; texts over 256 tokens are truncated, as upstream."""
        if isinstance(texts, (str, bytes)):
            raise InvalidInputError(
                "embed() takes a sequence of texts, not a single string; wrap it in a list"
            )
        items = list(texts)
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise InvalidInputError(f"texts[{index}] is {type(text).__name__}, not str")
        out = np.empty((len(items), HIDDEN_SIZE), dtype=np.float32)
        if not items:
            return out
        session, tokenizer = self._ensure_loaded()
        for start in range(0, len(items), _CHUNK):
            chunk = items[start : start + _CHUNK]
            ids = encode(tokenizer, chunk)
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            for rows in self._batches(order, [len(x) for x in ids]):
                width = len(ids[rows[-1]])  # sorted: the last row is the longest
                input_ids = np.zeros((len(rows), width), dtype=np.int64)
                attention_mask = np.zeros((len(rows), width), dtype=np.int64)
                for r, i in enumerate(rows):
                    input_ids[r, : len(ids[i])] = ids[i]
                    attention_mask[r, : len(ids[i])] = 1
                try:
                    (vectors,) = session.run(
                        [self._output_name], {"input_ids": input_ids, "attention_mask": attention_mask}
                    )
                except Exception as exc:  # onnxruntime's errors are not a public hierarchy
                    raise EmbeddingError(
                        f"onnxruntime failed on a batch of {len(rows)} texts: {exc}"
                    ) from exc
                out[[start + i for i in rows]] = vectors
        return out

    def _batches(self, order: Sequence[int], lengths: Sequence[int]) -> Iterator[list[int]]:
        """Cut ``order`` (indices sorted by ascending length) into onnxruntime calls of at most
        ``batch_size`` rows and ``max_batch_tokens`` padded tokens (one row always fits)."""
        start = 0
        while start < len(order):
            end = start + 1
            while (
                end < len(order)
                and end - start < self.batch_size
                and (end - start + 1) * lengths[order[end]] <= self.max_batch_tokens
            ):
                end += 1
            yield list(order[start:end])
            start = end

    def _ensure_loaded(self) -> tuple[Any, Tokenizer]:
        session, tokenizer = self._session, self._tokenizer
        if session is not None and tokenizer is not None:
            return session, tokenizer
        with self._lock:
            if self._session is None or self._tokenizer is None:
                quantized = self.variant == "int8"
                model = installed_model(quantized, model_dir=self.model_dir)
                if model is None:
                    logger.warning(
                        "the local embedding model %s (%s) is not installed yet; installing it now "
                        "(one time, about a minute). `supa-vectors model install` does this ahead of time.",
                        self.model_id,
                        self.variant,
                    )
                    install_model(quantized=quantized, model_dir=self.model_dir)
                    model = installed_model(quantized, model_dir=self.model_dir)
                    if model is None:
                        raise EmbeddingError("the model install finished but left no usable model")
                self._tokenizer = _load_tokenizer(model)
                self._session = _load_session(model, self.threads or physical_cores(), self.variant_reason)
            return self._session, self._tokenizer


# Characters of a long text handed to the tokenizer: its first 256 tokens come from far fewer (about
# 1,500 characters of English prose; a token never spans more than a 100-character word), and the
# tokenizer costs about 1 µs per character whatever the truncation, so an 18 MB query took 18 s.
CLIP_CHARS: Final = 32_768
_WORD_BREAKS = frozenset(" \t\n\r")


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of ``texts``, truncated to 256 tokens, the same as tokenizing each whole text.

    A text longer than :data:`CLIP_CHARS` is first cut at the last space before that many characters.
    The tokenizer splits words at spaces, so the cut text's tokens are the whole text's up to the cut;
    if they already fill the 256 (the encoding overflowed), both truncate to the same ids. A cut text
    that does not fill them (a long run of spaces, one giant word) is tokenized whole.
    """
    clipped = [_clip(text) for text in texts]
    try:
        encodings = tokenizer.encode_batch(clipped)
        return [
            encoding.ids if cut is text or encoding.overflowing else tokenizer.encode(text).ids
            for text, cut, encoding in zip(texts, clipped, encodings, strict=True)
        ]
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise EmbeddingError(f"tokenisation failed: {exc}") from exc


def _clip(text: str) -> str:
    if len(text) <= CLIP_CHARS:
        return text
    end = max(text.rfind(space, CLIP_CHARS // 2 + 1, CLIP_CHARS + 1) for space in _WORD_BREAKS)
    return text[:end] if end > 0 else text  # no break in the window's second half: tokenize it whole


def _load_tokenizer(model: InstalledModel) -> Tokenizer:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise EmbeddingError("the `tokenizers` package is required for local embeddings") from exc
    try:
        tokenizer = Tokenizer.from_file(str(model.tokenizer))
    except Exception as exc:
        raise EmbeddingError(f"cannot load the tokenizer {model.tokenizer}: {exc}") from exc
    # The shipped tokenizer.json truncates and pads to 128; sentence-transformers truncates at 256
    # and pads per batch. Keeping 128 moves long texts to cosine ~0.90 of the reference vectors.
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.no_padding()
    return tokenizer


def _load_session(model: InstalledModel, threads: int, reason: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise EmbeddingError("the `onnxruntime` package is required for local embeddings") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(
            str(model.onnx), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise EmbeddingError(
            f"onnxruntime cannot load {model.onnx}: {exc}; "
            "reinstall it with `supa-vectors model install --force`"
        ) from exc
    logger.info(
        "loaded %s (%s, %s) from %s with %d threads", MODEL_ID, model.variant, reason, model.onnx, threads
    )
    return session


def physical_cores() -> int:
    """Physical cores this process may run on; SMT siblings share the vector units ORT saturates."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        processor, physical, core = -1, "0", ""
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in [*handle, ""]:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    processor = int(value)
                elif key == "physical id":
                    physical = value
                elif key == "core id":
                    core = value
                elif not key and processor in allowed and core:
                    cores.add((physical, core))
                    processor, physical, core = -1, "0", ""
    except (OSError, ValueError):
        cores = set()
    return max(1, min(len(cores) or len(allowed), len(allowed)))
