"""Build the all-MiniLM-L6-v2 ONNX graph straight from its safetensors weights.

Exporting through ``torch.onnx`` would need torch (several GB) on every machine that installs the
model, so the BERT encoder is written out here node by node instead. The graph uses the fused
onnxruntime CPU kernels directly (``Attention``/``MultiHeadAttention``, ``SkipLayerNormalization``,
``BiasGelu``, ``DynamicQuantizeMatMul``): that is what ``onnxruntime.transformers``' optimizer
would turn an exported graph into, without shipping an exporter, an optimizer or the ``onnx``
package. Mean pooling and L2 normalisation are part of the graph, so a session returns finished
sentence embeddings and no ``[batch, seq, 384]`` tensor crosses into Python.

The int8 variant quantises every weight matrix of the encoder per output channel (symmetric int8,
one scale per column) and quantises activations dynamically per call. Per-tensor scales were
measured at a minimum cosine of 0.82 against fp32, so they are not offered. Embedding tables stay
fp32: they are gathered, not multiplied, and quantising them saves disk, not time.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from supa_vectors.embedding import _proto as pb
from supa_vectors.errors import EmbeddingError

__all__ = [
    "GRAPH_VERSION",
    "HIDDEN_SIZE",
    "MAX_TOKENS",
    "build_model",
    "load_safetensors",
    "write_model",
]

# Bump when the emitted graph changes: installed models carry it and are rebuilt on mismatch.
GRAPH_VERSION = 1

HIDDEN_SIZE = 384
NUM_HEADS = 12
NUM_LAYERS = 6
INTERMEDIATE_SIZE = 1536
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
LAYER_NORM_EPS = 1e-12
# sentence-transformers' max_seq_length for this model (the shipped tokenizer.json says 128).
MAX_TOKENS = 256

_OPSET = 17  # LayerNormalization and Shape(start, end) are both in opset 17
_IR_VERSION = 8  # the IR version that goes with opset 17
_MS = "com.microsoft"
_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

Float32Array = npt.NDArray[np.float32]

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def load_safetensors(path: Path) -> dict[str, Float32Array]:
    """Read the float tensors of a safetensors file with numpy alone.

    The format is an 8-byte header length, a JSON header and raw little-endian data, simple
    enough that the ``safetensors`` package is not worth a dependency here.
    """
    try:
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > 100_000_000:
                raise ValueError(f"implausible header length {header_len}")
            header = json.loads(handle.read(header_len))
            data = handle.read()
    except (OSError, ValueError, struct.error) as exc:
        raise EmbeddingError(f"cannot read safetensors weights from {path}: {exc}") from exc
    tensors: dict[str, Float32Array] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(spec["dtype"])
        if dtype is None or dtype is np.int64:
            continue  # position_ids is a buffer, not a weight
        start, end = spec["data_offsets"]
        little = np.dtype(dtype).newbyteorder("<")
        array = np.frombuffer(data, dtype=little, count=(end - start) // little.itemsize, offset=start)
        tensors[name] = array.reshape(spec["shape"]).astype(np.float32)
    return tensors


class _Graph:
    """Collects nodes and initializers and hands out unique value names."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.initializers: list[bytes] = []
        self._count = 0

    def const(self, name: str, array: npt.NDArray[np.generic]) -> str:
        self.initializers.append(pb.tensor(name, array))
        return name

    def op(
        self, op_type: str, *inputs: str, domain: str = "", outputs: int = 1, **attrs: pb.AttrValue
    ) -> str:
        return self.op_n(op_type, *inputs, domain=domain, outputs=outputs, **attrs)[0]

    def op_n(
        self, op_type: str, *inputs: str, domain: str = "", outputs: int = 1, **attrs: pb.AttrValue
    ) -> list[str]:
        self._count += 1
        names = [f"{op_type}_{self._count}" + (f"_{i}" if i else "") for i in range(outputs)]
        self.nodes.append(
            pb.node(op_type, inputs, names, name=f"{op_type}_{self._count}", domain=domain, **attrs)
        )
        return names


def _weight(weights: Mapping[str, Float32Array], name: str, shape: tuple[int, ...]) -> Float32Array:
    try:
        array = weights[name]
    except KeyError as exc:
        raise EmbeddingError(f"the weights have no tensor {name!r}; is this all-MiniLM-L6-v2?") from exc
    if array.shape != shape:
        raise EmbeddingError(f"tensor {name!r} has shape {array.shape}, expected {shape}")
    return array


def _quantize_columns(matrix: Float32Array) -> tuple[npt.NDArray[np.int8], Float32Array]:
    """Symmetric int8 with one scale per output column, as quantize_dynamic(per_channel=True).

    The range is [-127, 127] rather than [-128, 127] so that zero points stay 0.
    """
    amax = np.abs(matrix).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(matrix / scale), -127, 127).astype(np.int8)
    return quantized, scale


class _Encoder:
    def __init__(self, graph: _Graph, weights: Mapping[str, Float32Array], *, quantized: bool, fused: bool):
        self.g = graph
        self.w = weights
        self.quantized = quantized
        self.fused = fused

    def linear(self, x: str, prefix: str, weight: Float32Array, *, with_bias: Float32Array | None) -> str:
        """x @ weight.T (torch's Linear layout), adding ``with_bias`` when given."""
        matrix = np.ascontiguousarray(weight.T)
        if self.quantized:
            q, scale = _quantize_columns(matrix)
            y = self.g.op(
                "DynamicQuantizeMatMul",
                x,
                self.g.const(f"{prefix}.weight_int8", q),
                self.g.const(f"{prefix}.weight_scale", scale),
                self.g.const(f"{prefix}.weight_zero_point", np.zeros(scale.shape, dtype=np.int8)),
                domain=_MS,
            )
        else:
            y = self.g.op("MatMul", x, self.g.const(f"{prefix}.weight_t", matrix))
        if with_bias is not None:
            y = self.g.op("Add", y, self.g.const(f"{prefix}.bias", with_bias))
        return y

    def layer_norm_residual(self, x: str, residual: str, bias: Float32Array, prefix: str) -> str:
        """LayerNorm(x + bias + residual): the BERT output block."""
        gamma = self.g.const(f"{prefix}.LayerNorm.weight", self.w[f"{prefix}.LayerNorm.weight"])
        beta = self.g.const(f"{prefix}.LayerNorm.bias", self.w[f"{prefix}.LayerNorm.bias"])
        bias_name = self.g.const(f"{prefix}.dense.bias", bias)
        if self.fused:
            return self.g.op(
                "SkipLayerNormalization",
                x,
                residual,
                gamma,
                beta,
                bias_name,
                domain=_MS,
                epsilon=LAYER_NORM_EPS,
            )
        summed = self.g.op("Add", self.g.op("Add", x, bias_name), residual)
        return self.g.op("LayerNormalization", summed, gamma, beta, axis=-1, epsilon=LAYER_NORM_EPS)

    def attention(self, x: str, prefix: str, mask_int32: str, mask_bias: str) -> str:
        """Self-attention up to (not including) the output projection."""
        parts = ("query", "key", "value")
        w = [_weight(self.w, f"{prefix}.self.{p}.weight", (HIDDEN_SIZE, HIDDEN_SIZE)) for p in parts]
        b = [_weight(self.w, f"{prefix}.self.{p}.bias", (HIDDEN_SIZE,)) for p in parts]
        qkv_weight = np.concatenate(w, axis=0)  # [3*384, 384] in torch layout
        qkv_bias = np.concatenate(b)
        if self.fused and not self.quantized:
            return self.g.op(
                "Attention",
                x,
                self.g.const(f"{prefix}.qkv.weight_t", np.ascontiguousarray(qkv_weight.T)),
                self.g.const(f"{prefix}.qkv.bias", qkv_bias),
                mask_int32,
                domain=_MS,
                num_heads=NUM_HEADS,
            )
        if self.fused:
            packed = self.linear(x, f"{prefix}.qkv", qkv_weight, with_bias=None)
            q, k, v = self.g.op_n(
                "Split",
                packed,
                self.g.const(f"{prefix}.qkv.split", _i64([HIDDEN_SIZE] * 3)),
                outputs=3,
                axis=2,
            )
            return self.g.op(
                "MultiHeadAttention",
                q,
                k,
                v,
                self.g.const(f"{prefix}.qkv.bias", qkv_bias),
                mask_int32,
                domain=_MS,
                num_heads=NUM_HEADS,
            )
        head = HIDDEN_SIZE // NUM_HEADS
        heads_shape = self.g.const(f"{prefix}.heads_shape", _i64([0, 0, NUM_HEADS, head]))
        projected = [
            self.g.op("Reshape", self.linear(x, f"{prefix}.self.{p}", wp, with_bias=bp), heads_shape)
            for p, wp, bp in zip(parts, w, b, strict=True)
        ]
        q = self.g.op("Transpose", projected[0], perm=[0, 2, 1, 3])
        k = self.g.op("Transpose", projected[1], perm=[0, 2, 3, 1])
        v = self.g.op("Transpose", projected[2], perm=[0, 2, 1, 3])
        scale = self.g.const(f"{prefix}.scale", np.array(1.0 / math.sqrt(head), dtype=np.float32))
        scores = self.g.op("Add", self.g.op("Mul", self.g.op("MatMul", q, k), scale), mask_bias)
        context = self.g.op("MatMul", self.g.op("Softmax", scores, axis=-1), v)
        merged = self.g.op("Transpose", context, perm=[0, 2, 1, 3])
        return self.g.op("Reshape", merged, self.g.const(f"{prefix}.merge_shape", _i64([0, 0, HIDDEN_SIZE])))

    def gelu(self, x: str, bias: Float32Array, prefix: str) -> str:
        """Exact (erf) GELU of x + bias, as BERT's ``hidden_act="gelu"``."""
        bias_name = self.g.const(f"{prefix}.bias", bias)
        if self.fused:
            return self.g.op("BiasGelu", x, bias_name, domain=_MS)
        y = self.g.op("Add", x, bias_name)
        inv_sqrt2 = self.g.const(f"{prefix}.inv_sqrt2", np.array(1.0 / math.sqrt(2.0), dtype=np.float32))
        one = self.g.const(f"{prefix}.one", np.array(1.0, dtype=np.float32))
        half = self.g.const(f"{prefix}.half", np.array(0.5, dtype=np.float32))
        erf = self.g.op("Erf", self.g.op("Mul", y, inv_sqrt2))
        return self.g.op("Mul", self.g.op("Mul", y, half), self.g.op("Add", erf, one))

    def layer(self, x: str, index: int, mask_int32: str, mask_bias: str) -> str:
        prefix = f"encoder.layer.{index}"
        h = HIDDEN_SIZE
        context = self.attention(x, f"{prefix}.attention", mask_int32, mask_bias)
        attn_out = self.linear(
            context,
            f"{prefix}.attention.output.dense",
            _weight(self.w, f"{prefix}.attention.output.dense.weight", (h, h)),
            with_bias=None,
        )
        x = self.layer_norm_residual(
            attn_out,
            x,
            _weight(self.w, f"{prefix}.attention.output.dense.bias", (h,)),
            f"{prefix}.attention.output",
        )
        inter = self.linear(
            x,
            f"{prefix}.intermediate.dense",
            _weight(self.w, f"{prefix}.intermediate.dense.weight", (INTERMEDIATE_SIZE, h)),
            with_bias=None,
        )
        inter = self.gelu(
            inter,
            _weight(self.w, f"{prefix}.intermediate.dense.bias", (INTERMEDIATE_SIZE,)),
            f"{prefix}.intermediate.dense",
        )
        out = self.linear(
            inter,
            f"{prefix}.output.dense",
            _weight(self.w, f"{prefix}.output.dense.weight", (h, INTERMEDIATE_SIZE)),
            with_bias=None,
        )
        return self.layer_norm_residual(
            out, x, _weight(self.w, f"{prefix}.output.dense.bias", (h,)), f"{prefix}.output"
        )


def _i64(values: list[int]) -> npt.NDArray[np.int64]:
    return np.array(values, dtype=np.int64)


def build_model(
    weights: Mapping[str, Float32Array],
    *,
    quantized: bool,
    fused: bool = True,
    pooled: bool = True,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialise the sentence encoder as an ONNX model.

    Inputs are ``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``, ``seq <= 512``);
    token types are all zero, so their embedding row is folded into the position table. The
    output ``sentence_embedding`` (``[batch, 384]``) is mean-pooled over the mask and
    L2-normalised. ``fused=False`` writes plain opset-17 operators and ``pooled=False`` returns
    ``token_embeddings`` instead; both exist only for the parity and speed measurements.
    """
    g = _Graph()
    h = HIDDEN_SIZE
    word = _weight(weights, "embeddings.word_embeddings.weight", (VOCAB_SIZE, h))
    positions = _weight(weights, "embeddings.position_embeddings.weight", (MAX_POSITIONS, h))
    token_type = _weight(weights, "embeddings.token_type_embeddings.weight", (2, h))

    # Embeddings: word + position + token_type[0], then LayerNorm.
    seq_len = g.op("Shape", "input_ids", start=1, end=2)
    pos = g.op(
        "Slice",
        g.const("embeddings.position_plus_type", (positions + token_type[0]).astype(np.float32)),
        g.const("zero_1d", _i64([0])),
        seq_len,
        g.const("axis0", _i64([0])),
    )
    summed = g.op("Add", g.op("Gather", g.const("embeddings.word_embeddings.weight", word), "input_ids"), pos)
    x = g.op(
        "LayerNormalization",
        summed,
        g.const("embeddings.LayerNorm.weight", _weight(weights, "embeddings.LayerNorm.weight", (h,))),
        g.const("embeddings.LayerNorm.bias", _weight(weights, "embeddings.LayerNorm.bias", (h,))),
        axis=-1,
        epsilon=LAYER_NORM_EPS,
    )

    mask_int32 = g.op("Cast", "attention_mask", to=pb.INT32)
    mask_float = g.op("Cast", "attention_mask", to=pb.FLOAT)
    mask_bias = ""
    if not fused:
        # (1 - mask) * -10000 broadcast over [batch, heads, query, key]; fused kernels do the same.
        inverted = g.op("Sub", g.const("one", np.array(1.0, dtype=np.float32)), mask_float)
        scaled = g.op("Mul", inverted, g.const("mask_filter", np.array(-10000.0, dtype=np.float32)))
        mask_bias = g.op("Unsqueeze", scaled, g.const("axes_1_2", _i64([1, 2])))

    encoder = _Encoder(g, weights, quantized=quantized, fused=fused)
    for index in range(NUM_LAYERS):
        x = encoder.layer(x, index, mask_int32, mask_bias)

    output_shape: list[int | str]
    if pooled:
        # Mean over the real tokens, as sentence-transformers' Pooling(mean) with clamp(min=1e-9),
        # then x / max(||x||, 1e-12), as torch.nn.functional.normalize.
        mask_3d = g.op("Unsqueeze", mask_float, g.const("axes_2", _i64([2])))
        axis1 = g.const("axes_1", _i64([1]))
        total = g.op("ReduceSum", g.op("Mul", x, mask_3d), axis1, keepdims=0)
        count = g.op("ReduceSum", mask_3d, axis1, keepdims=0)
        count = g.op("Max", count, g.const("min_count", np.array(1e-9, dtype=np.float32)))
        mean = g.op("Div", total, count)
        norm = g.op("ReduceL2", mean, axes=[1], keepdims=1)
        norm = g.op("Max", norm, g.const("min_norm", np.array(1e-12, dtype=np.float32)))
        output_name, output_shape = "sentence_embedding", ["batch", h]
        g.nodes.append(pb.node("Div", [mean, norm], [output_name], name="sentence_embedding"))
    else:
        output_name, output_shape = "token_embeddings", ["batch", "sequence", h]
        g.nodes.append(pb.node("Identity", [x], [output_name], name="token_embeddings"))

    return pb.model(
        nodes=g.nodes,
        initializers=g.initializers,
        inputs=[
            pb.value_info("input_ids", pb.INT64, ["batch", "sequence"]),
            pb.value_info("attention_mask", pb.INT64, ["batch", "sequence"]),
        ],
        outputs=[pb.value_info(output_name, pb.FLOAT, output_shape)],
        graph_name="all-MiniLM-L6-v2",
        opsets={"": _OPSET, _MS: 1},
        ir_version=_IR_VERSION,
        producer=("supa-vectors", str(GRAPH_VERSION)),
        doc_string=f"{_MODEL_NAME} (Apache-2.0), built from safetensors by supa-vectors",
        metadata=metadata,
    )


def write_model(
    safetensors: Path, output: Path, *, quantized: bool, metadata: Mapping[str, str] | None = None
) -> None:
    """Build the model from ``safetensors`` and write it to ``output`` atomically."""
    data = build_model(load_safetensors(safetensors), quantized=quantized, metadata=metadata)
    # A per-process name: two processes installing at once must not interleave their writes.
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EmbeddingError(f"cannot write the ONNX model to {output}: {exc}") from exc
