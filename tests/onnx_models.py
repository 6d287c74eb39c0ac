"""Small ONNX classifiers for tests, written as protobuf bytes by hand: no `onnx` package needed.

The messages and field numbers are onnx.proto's (ONNX 1.x, onnx/onnx.proto3): ModelProto, GraphProto, NodeProto,
AttributeProto, TensorProto, ValueInfoProto, TypeProto and TensorShapeProto, in protobuf's wire format (varints,
length-delimited fields; https://protobuf.dev/programming-guides/encoding/). The classifier is the kind the Pi-side
package serves: a float32 NHWC image in, class probabilities out (Flatten, Gemm, Softmax), with fixed weights from
a seed, so the same arguments always make the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

# TensorProto.DataType
FLOAT = 1
INT64 = 7
# AttributeProto.AttributeType
ATTRIBUTE_FLOAT = 1
ATTRIBUTE_INT = 2
# IR version 8 (ONNX 1.10) and opset 13: what onnxruntime 1.x loads, and Softmax's axis defaults to -1 there.
IR_VERSION = 8
OPSET = 13


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten-byte two's complement varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    """A length-delimited field (wire type 2): a string, bytes or an embedded message."""
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _float(field: int, value: float) -> bytes:
    """A 32-bit field (wire type 5)."""
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def tensor(name: str, array: np.ndarray) -> bytes:  # type: ignore[type-arg]
    """TensorProto NAME holding a float32 ARRAY: dims (1), data_type (2), name (8), raw_data (9, little-endian)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return b"".join(_int(1, d) for d in data.shape) + _int(2, FLOAT) + _bytes(8, name) + _bytes(9, data.tobytes())


def value_info(name: str, dims: Sequence[int | str | None], elem_type: int = FLOAT) -> bytes:
    """ValueInfoProto NAME: a tensor of ELEM_TYPE whose dimensions are DIMS (int: dim_value, str: dim_param, None:
    neither, an unknown dimension)."""

    def dim(d: int | str | None) -> bytes:
        return _bytes(1, b"" if d is None else _int(1, d) if isinstance(d, int) else _bytes(2, d))

    shape = b"".join(dim(d) for d in dims)
    tensor_type = _int(1, elem_type) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attributes: int | float) -> bytes:
    """NodeProto: input (1), output (2), name (3), op_type (4), attribute (5, int or float ones)."""
    attrs = b""
    for key, value in attributes.items():
        if isinstance(value, int):
            attr = _bytes(1, key) + _int(3, value) + _int(20, ATTRIBUTE_INT)
        else:
            attr = _bytes(1, key) + _float(2, value) + _int(20, ATTRIBUTE_FLOAT)
        attrs += _bytes(5, attr)
    body = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    return body + _bytes(3, f"{op_type.lower()}_{outputs[0]}") + _bytes(4, op_type) + attrs


def model(graph: bytes, *, producer: str = "pibake-tests") -> bytes:
    """ModelProto: ir_version (1), producer_name (2), graph (7), opset_import (8: the default domain at OPSET)."""
    opset = _bytes(1, "") + _int(2, OPSET)
    return _int(1, IR_VERSION) + _bytes(2, producer) + _bytes(7, graph) + _bytes(8, opset)


def classifier_weights(height: int, width: int, classes: int, *, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """The dense layer's float32 weights, shape (height * width * 3, classes), and bias, shape (classes,)."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 0.05, size=(height * width * 3, classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=classes).astype(np.float32)
    return weights, bias


def classifier(
    height: int,
    width: int,
    classes: int,
    *,
    seed: int = 7,
    input_dims: Sequence[int | str | None] | None = None,
    input_name: str = "pixels",
    output_name: str = "probabilities",
) -> bytes:
    """ONNX model bytes: INPUT_NAME, float32 (batch, HEIGHT, WIDTH, 3), to OUTPUT_NAME, float32 (batch, CLASSES):
    softmax(flatten(x) @ W + b) with classifier_weights(SEED). The batch dimension is dynamic ("N"), as exporters
    write it; INPUT_DIMS replaces the input's declared dimensions (to declare others dynamic)."""
    weights, bias = classifier_weights(height, width, classes, seed=seed)
    nodes = (
        node("Flatten", [input_name], ["flat"], axis=1),
        node("Gemm", ["flat", "weights", "bias"], ["logits"]),
        node("Softmax", ["logits"], [output_name], axis=-1),
    )
    dims: list[int | str | None] = list(input_dims) if input_dims is not None else ["N", height, width, 3]
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "classifier")
    graph += _bytes(5, tensor("weights", weights)) + _bytes(5, tensor("bias", bias))
    graph += _bytes(11, value_info(input_name, dims)) + _bytes(12, value_info(output_name, ["N", classes]))
    return model(graph)


def classifier_outputs(batch: np.ndarray, classes: int, *, seed: int = 7) -> np.ndarray:  # type: ignore[type-arg]
    """What classifier(height, width, CLASSES, seed=SEED) computes for BATCH, float32 (N, height, width, 3), in
    numpy (float64, then float32): the expected probabilities, shape (N, CLASSES)."""
    n, height, width, _ = batch.shape
    weights, bias = classifier_weights(height, width, classes, seed=seed)
    logits = batch.reshape(n, -1).astype(np.float64) @ weights.astype(np.float64) + bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)  # type: ignore[type-arg]
    return probabilities
