"""Reading a TensorFlow Lite model's operator codes and metadata from its FlatBuffer bytes, without TensorFlow.

The layout is the TFLite schema's (tensorflow/lite/schema/schema.fbs: Model, OperatorCode, Metadata, Buffer); only the
fields read here are decoded, by the FlatBuffers wire format (little-endian offsets, vtables of uint16 field
offsets). `pibake.convert.keras` checks every converted model's op versions with `tflite_ops`.
"""

from __future__ import annotations

import struct

# Builtin operator codes of the TFLite schema (schema.fbs, enum BuiltinOperator) that a
# small image classifier can use; others print as BUILTIN_<code>.
BUILTIN_OPS: dict[int, str] = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    25: "SOFTMAX",
    28: "TANH",
    32: "CUSTOM",
    34: "PAD",
    39: "TRANSPOSE",
    40: "MEAN",
    41: "SUB",
    45: "STRIDED_SLICE",
    47: "EXP",
    49: "SPLIT",
    53: "CAST",
    77: "SHAPE",
    83: "PACK",
    114: "QUANTIZE",
    117: "HARD_SWISH",
}


class _FlatBuffer:
    """Just enough of the FlatBuffers wire format to read a TFLite model's operator codes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def i8(self, pos: int) -> int:
        return int(struct.unpack_from("<b", self.data, pos)[0])

    def u16(self, pos: int) -> int:
        return int(struct.unpack_from("<H", self.data, pos)[0])

    def i32(self, pos: int) -> int:
        return int(struct.unpack_from("<i", self.data, pos)[0])

    def u32(self, pos: int) -> int:
        return int(struct.unpack_from("<I", self.data, pos)[0])

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of a table's field, or None when it is absent (default value)."""
        vtable = table - self.i32(table)
        entry = 4 + 2 * index
        if entry >= self.u16(vtable):
            return None
        offset = self.u16(vtable + entry)
        return table + offset if offset else None

    def indirect(self, pos: int) -> int:
        return pos + self.u32(pos)

    def vector(self, pos: int) -> list[int]:
        """Positions of the tables in a vector of tables whose offset field is at POS."""
        vec = self.indirect(pos)
        return [self.indirect(vec + 4 + 4 * i) for i in range(self.u32(vec))]

    def string(self, pos: int) -> bytes:
        start = self.indirect(pos)
        return self.data[start + 4 : start + 4 + self.u32(start)]


def tflite_ops(model: bytes) -> list[tuple[str, int]]:
    """(builtin op name, op version) for every operator code of the .tflite flatbuffer MODEL, in file order (CUSTOM ops
    as "CUSTOM:<name>"). Raises ValueError when MODEL has no TFL3 file identifier at byte 4."""
    if len(model) < 8 or model[4:8] != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (no TFL3 identifier)")
    fb = _FlatBuffer(model)
    root = fb.indirect(0)
    codes = fb.field(root, 1)  # Model.operator_codes
    ops: list[tuple[str, int]] = []
    for code in fb.vector(codes) if codes is not None else []:
        deprecated = fb.field(code, 0)  # int8 deprecated_builtin_code
        version = fb.field(code, 2)  # int32 version, default 1
        builtin = fb.field(code, 3)  # int32 builtin_code, default 0
        number = max(fb.i8(deprecated) if deprecated is not None else 0, fb.i32(builtin) if builtin is not None else 0)
        name = BUILTIN_OPS.get(number, f"BUILTIN_{number}")
        if number == 32:  # CUSTOM
            custom = fb.field(code, 1)
            name = "CUSTOM:" + (fb.string(custom).decode(errors="replace") if custom is not None else "?")
        ops.append((name, fb.i32(version) if version is not None else 1))
    return ops


def tflite_min_runtime_version(model: bytes) -> str:
    """The converter's own estimate of the oldest runtime that reads the model ("unknown" if absent)."""
    fb = _FlatBuffer(model)
    root = fb.indirect(0)
    metadata, buffers = fb.field(root, 6), fb.field(root, 4)
    if metadata is None or buffers is None:
        return "unknown"
    all_buffers = fb.vector(buffers)
    for meta in fb.vector(metadata):
        name, buffer = fb.field(meta, 0), fb.field(meta, 1)
        if name is None or buffer is None or fb.string(name) != b"min_runtime_version":
            continue
        data = fb.field(all_buffers[fb.u32(buffer)], 0)
        if data is None:
            return "unknown"
        return fb.string(data).split(b"\0", 1)[0].decode("ascii", "replace")
    return "unknown"
