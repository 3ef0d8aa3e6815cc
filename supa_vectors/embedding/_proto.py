"""A minimal writer for the ONNX protobuf wire format.

Building the graph needs only a handful of ONNX messages (model, graph, node, attribute, tensor,
value info), all of them write-only. Encoding them here keeps the ``onnx`` package (and its
protobuf runtime) out of the install path: a user who runs ``supa-vectors model install`` on a
plain ``pip install supa-vectors`` gets a model without another dependency. Field numbers follow
``onnx.proto`` (proto2); repeated scalars are written unpacked, which every protobuf parser reads.
The tests load every built model with ``onnx.checker`` to keep this honest.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "FLOAT",
    "INT8",
    "INT32",
    "INT64",
    "UINT8",
    "AttrValue",
    "model",
    "node",
    "tensor",
    "value_info",
]

# TensorProto.DataType
FLOAT = 1
UINT8 = 2
INT8 = 3
INT32 = 6
INT64 = 7

_NUMPY_TO_ONNX: dict[np.dtype[np.generic], int] = {
    np.dtype(np.float32): FLOAT,
    np.dtype(np.uint8): UINT8,
    np.dtype(np.int8): INT8,
    np.dtype(np.int32): INT32,
    np.dtype(np.int64): INT64,
}

# AttributeProto.AttributeType
_ATTR_FLOAT = 1
_ATTR_INT = 2
_ATTR_STRING = 3
_ATTR_TENSOR = 4
_ATTR_FLOATS = 6
_ATTR_INTS = 7

_VARINT = 0
_FIXED32 = 5
_LEN = 2

AttrValue = int | float | str | Sequence[int] | Sequence[float] | npt.NDArray[np.generic]


def _varint(value: int) -> bytes:
    value &= 0xFFFF_FFFF_FFFF_FFFF  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _int(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value)


def _float(field: int, value: float) -> bytes:
    return _key(field, _FIXED32) + struct.pack("<f", value)


def _bytes(field: int, value: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode("utf-8"))


def _repeated(field: int, messages: Iterable[bytes]) -> bytes:
    return b"".join(_bytes(field, message) for message in messages)


def tensor(name: str, array: npt.NDArray[np.generic]) -> bytes:
    """Encode a TensorProto with ``raw_data`` (little-endian, as the spec requires)."""
    dtype = np.dtype(array.dtype)
    if dtype not in _NUMPY_TO_ONNX:
        raise TypeError(f"unsupported tensor dtype {dtype}")
    data = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    return (
        b"".join(_int(1, dim) for dim in data.shape)
        + _int(2, _NUMPY_TO_ONNX[dtype])
        + _str(8, name)
        + _bytes(9, data.tobytes())
    )


def _attribute(name: str, value: AttrValue) -> bytes:
    head = _str(1, name)
    if isinstance(value, np.ndarray):
        return head + _int(20, _ATTR_TENSOR) + _bytes(5, tensor(name, value))
    if isinstance(value, bool):
        raise TypeError("boolean attributes are not used; pass an int")
    if isinstance(value, int):
        return head + _int(20, _ATTR_INT) + _int(3, value)
    if isinstance(value, float):
        return head + _int(20, _ATTR_FLOAT) + _float(2, value)
    if isinstance(value, str):
        return head + _int(20, _ATTR_STRING) + _bytes(4, value.encode("utf-8"))
    items = list(value)
    if all(isinstance(item, int) for item in items):
        return head + _int(20, _ATTR_INTS) + b"".join(_int(8, int(item)) for item in items)
    return head + _int(20, _ATTR_FLOATS) + b"".join(_float(7, float(item)) for item in items)


def node(
    op_type: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    name: str,
    domain: str = "",
    **attributes: AttrValue,
) -> bytes:
    """Encode a NodeProto; an empty input name marks an omitted optional input, as in ONNX."""
    body = (
        b"".join(_str(1, item) for item in inputs)
        + b"".join(_str(2, item) for item in outputs)
        + _str(3, name)
        + _str(4, op_type)
        + _repeated(5, (_attribute(key, value) for key, value in sorted(attributes.items())))
    )
    if domain:
        body += _str(7, domain)
    return body


def value_info(name: str, elem_type: int, shape: Sequence[int | str]) -> bytes:
    """Encode a ValueInfoProto for a tensor; strings in ``shape`` are symbolic dimensions."""
    dims = b"".join(_bytes(1, _str(2, dim) if isinstance(dim, str) else _int(1, dim)) for dim in shape)
    tensor_type = _int(1, elem_type) + _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(
    *,
    nodes: Sequence[bytes],
    initializers: Sequence[bytes],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    graph_name: str,
    opsets: Mapping[str, int],
    ir_version: int,
    producer: tuple[str, str],
    doc_string: str = "",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Encode a complete ModelProto, ready to be written to a ``.onnx`` file."""
    graph = (
        _repeated(1, nodes)
        + _str(2, graph_name)
        + _repeated(5, initializers)
        + _repeated(11, inputs)
        + _repeated(12, outputs)
    )
    opset_imports = (_str(1, domain) + _int(2, version) for domain, version in opsets.items())
    body = (
        _int(1, ir_version)
        + _str(2, producer[0])
        + _str(3, producer[1])
        + (_str(6, doc_string) if doc_string else b"")
        + _bytes(7, graph)
        + _repeated(8, opset_imports)
        + _repeated(14, (_str(1, k) + _str(2, v) for k, v in (metadata or {}).items()))
    )
    return body
