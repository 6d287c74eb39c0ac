#!/usr/bin/env python3
"""Convert a Keras model (.keras or .h5) to a float32 TensorFlow Lite model for the Pi.

    scripts/convert_model.py MODEL.keras -o OUT.tflite

Host only: it needs TensorFlow, the optional extra `pibake[convert]`
(`pip install -e '.[convert]'`; `make venv` installs it). The Pi runs the result
with tflite-runtime 2.11, so the conversion is kept to what that runtime reads:

- TFLITE_BUILTINS ops only (no Select TF ops, no custom ops), float32, no quantization;
- a static batch of 1: the model is traced with input shape [1, H, W, C], so Flatten
  becomes one RESHAPE with a constant shape instead of SHAPE/STRIDED_SLICE/PACK;
- every op at version 1 (plain float32 kernels, there since TFLite 1.x). A model whose
  conversion needs a newer op version is refused unless --allow-new-op-versions is given.

After converting, the .tflite is run once in TensorFlow's own interpreter on a random
input and compared with the Keras model. The output is written to a temporary file
next to OUT and renamed into place, so a failed run leaves nothing behind.

Exit codes: 0 written; 1 converted but refused (op versions, or outputs that differ);
2 bad input (missing file, not .keras/.h5, not a Keras model, no TensorFlow).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import struct
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KERAS_SUFFIXES = (".keras", ".h5")

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


class ConvertError(Exception):
    """A problem with the input or the environment: exit code 2, nothing written."""


class RefusedError(Exception):
    """The model converted but the result is not fit for the Pi: exit code 1, nothing written."""


@dataclass
class Report:
    output: Path
    size: int
    input_shape: list[int]
    output_shape: list[int]
    ops: list[tuple[str, int]]
    max_abs_diff: float
    min_runtime_version: str = "unknown"
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        ops = ", ".join(f"{name} v{version}" for name, version in self.ops)
        return (
            f"wrote {self.output} ({self.size} bytes): input float32{self.input_shape}, "
            f"output float32{self.output_shape}\n"
            f"ops: {ops}; min_runtime_version {self.min_runtime_version}\n"
            f"max |keras - tflite| on a random input: {self.max_abs_diff:.3g}"
        )


# ---------------------------------------------------------------- reading a .tflite (no TensorFlow needed)


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
    """(builtin op name, op version) for every operator code of a .tflite flatbuffer, in file order."""
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


# ---------------------------------------------------------------- conversion (TensorFlow needed)


def _import_tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module("tensorflow")
    except ImportError as e:
        raise ConvertError(
            f"TensorFlow is not installed ({e}): it is the host-only extra pibake[convert], "
            "`pip install -e '.[convert]'` in the checkout (`make venv` does it)"
        ) from e


def check_input(model_path: Path) -> None:
    """Refuse what cannot be a Keras model before loading TensorFlow."""
    if not model_path.exists():
        raise ConvertError(f"no such file: {model_path}")
    if not model_path.is_file():
        raise ConvertError(f"not a file: {model_path}")
    if model_path.suffix.lower() not in KERAS_SUFFIXES:
        raise ConvertError(
            f"{model_path}: expected a Keras model file ending in .keras or .h5, got {model_path.name!r}"
        )


def load_keras_model(tf: Any, model_path: Path) -> Any:
    try:
        return tf.keras.models.load_model(str(model_path), compile=False)
    except Exception as e:  # Keras raises ValueError, OSError, zipfile and h5py errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{model_path} is not a Keras model Keras can load: {first}") from e


def convert_keras(tf: Any, model: Any, *, batch_size: int = 1) -> tuple[bytes, list[int]]:
    """Float32 TFLite flatbuffer of a loaded Keras model, traced with a static batch; and its input shape."""
    if len(model.inputs) != 1:
        raise ConvertError(f"expected a model with one input, it has {len(model.inputs)}")
    dims = list(model.inputs[0].shape)[1:]
    if any(d is None for d in dims):
        raise ConvertError(f"the model's input shape {model.inputs[0].shape} has unknown dimensions besides the batch")
    shape = [batch_size, *(int(d) for d in dims)]

    @tf.function  # type: ignore[untyped-decorator]
    def serve(x: Any) -> Any:
        return model(x, training=False)

    concrete = serve.get_concrete_function(tf.TensorSpec(shape, tf.float32, name="input"))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.optimizations = []  # float32 weights and activations: no quantization
    try:
        flatbuffer: bytes = converter.convert()
    except Exception as e:  # the converter's errors are ConverterError, ValueError, RuntimeError...
        raise RefusedError(f"TFLite conversion failed (TFLITE_BUILTINS only): {e}") from e
    return flatbuffer, shape


def compare_with_keras(
    tf: Any, model: Any, flatbuffer: bytes, shape: list[int], seed: int = 0
) -> tuple[float, list[int]]:
    """Max absolute difference between Keras and TFLite on one random input in [0, 1]; and the output shape."""
    import numpy as np

    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    expected = np.asarray(model(x, training=False), dtype=np.float32)
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    got = np.asarray(interpreter.get_tensor(out["index"]), dtype=np.float32)
    if got.shape != expected.shape:
        raise RefusedError(f"TFLite output shape {list(got.shape)} differs from Keras {list(expected.shape)}")
    return float(np.max(np.abs(got - expected))), [int(d) for d in out["shape"]]


def write_atomically(data: bytes, output: Path) -> None:
    """Write DATA to OUTPUT through a temporary file in the same directory and a rename."""
    parent = output.parent if str(output.parent) else Path()
    if not parent.is_dir():
        raise ConvertError(f"output directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o644)
        Path(tmp).replace(output)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise


def convert(
    model_path: Path,
    output: Path,
    *,
    allow_new_op_versions: bool = False,
    tolerance: float = 1e-4,
) -> Report:
    """Convert MODEL_PATH to OUTPUT; raise ConvertError (bad input) or RefusedError (bad result)."""
    check_input(model_path)
    if output.suffix.lower() != ".tflite":
        raise ConvertError(f"the output should end in .tflite, got {output.name!r}")
    tf = _import_tensorflow()
    model = load_keras_model(tf, model_path)
    flatbuffer, shape = convert_keras(tf, model)

    ops = tflite_ops(flatbuffer)
    newer = [f"{name} v{version}" for name, version in ops if version != 1]
    if newer and not allow_new_op_versions:
        raise RefusedError(
            "the converted model needs op versions newer than 1 ("
            + ", ".join(newer)
            + "), which tflite-runtime 2.11 on the Pi may not have; pass --allow-new-op-versions to write it anyway"
        )
    diff, out_shape = compare_with_keras(tf, model, flatbuffer, shape)
    if not diff <= tolerance:
        raise RefusedError(f"TFLite and Keras outputs differ by {diff:.3g} (> {tolerance:g}) on a random input")
    write_atomically(flatbuffer, output)
    return Report(
        output=output,
        size=len(flatbuffer),
        input_shape=shape,
        output_shape=out_shape,
        ops=ops,
        max_abs_diff=diff,
        min_runtime_version=tflite_min_runtime_version(flatbuffer),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_model.py",
        description="Convert a Keras model (.keras or .h5) to a float32 TFLite model (TFLITE_BUILTINS ops, batch 1).",
        epilog="Exit codes: 0 written, 1 converted but refused, 2 bad input. Needs TensorFlow: pibake[convert].",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="Keras model file: .keras or .h5")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.tflite", help="where to write")
    parser.add_argument(
        "--allow-new-op-versions",
        action="store_true",
        help="write the model even if some op needs a version newer than 1 (may not load on tflite-runtime 2.11)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest accepted |keras - tflite| on a random input (default: %(default)g)",
    )
    args = parser.parse_args(argv)
    try:
        report = convert(
            args.model, args.output, allow_new_op_versions=args.allow_new_op_versions, tolerance=args.tolerance
        )
    except ConvertError as e:
        print(f"convert_model.py: error: {e}", file=sys.stderr)
        return 2
    except RefusedError as e:
        print(f"convert_model.py: refused: {e}", file=sys.stderr)
        return 1
    print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
