"""The Keras to TFLite converter itself: TensorFlow's, run as a program of its own (`python -m pibake.convert.keras`).

    python -m pibake.convert.keras MODEL.keras -o OUT.tflite [--json]

It needs TensorFlow, pibake's host-only extra ``convert`` (``pip install 'pibake[convert]'``), and is meant to run in a
Python of its own: `pibake.convert.to_tflite` starts it in a child process, so that TensorFlow (a second or more to
import, hundreds of MB) never enters pibake's own process. `models/train.py`, which has TensorFlow loaded already,
calls `convert` in-process. The Pi runs the result with tflite-runtime 2.11 at the oldest (the bullseye base), so the
conversion is kept to what that runtime reads (RECIPE):

- TFLITE_BUILTINS ops only (no Select TF ops, no custom ops), float32, no quantization;
- a static batch of 1: the model is traced with input shape [1, H, W, C], so Flatten
  becomes one RESHAPE with a constant shape instead of SHAPE/STRIDED_SLICE/PACK;
- every op at version 1 (plain float32 kernels, there since TFLite 1.x). A model whose
  conversion needs a newer op version is refused unless --allow-new-op-versions is given.

After converting, the .tflite is run once in TensorFlow's own interpreter on a random input in [0, 1] and compared with
the Keras model (largest absolute difference at most ``tolerance``). The output is written to a temporary file next to
OUT and renamed into place, so a failed or interrupted run leaves nothing that a later run could take as finished.

Errors are pibake's kinds (pibake.errors) and the exit code is the kind's: 0 written; 2 (UsageError) bad input: a
missing file, not .keras/.h5, not a Keras model Keras loads, not one image input, ops outside TFLITE_BUILTINS; 4
(VerificationFailed) converted but unfit: op versions above 1, or outputs that differ from Keras's; 5 (ToolMissing) no
TensorFlow. With --json, stdout is one JSON line, the report or ``{"error": KIND, "exit_code": N, "message": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pibake.convert.tflite import tflite_min_runtime_version, tflite_ops
from pibake.errors import PibakeError, ToolMissing, UsageError, VerificationFailed

KERAS_SUFFIXES = (".keras", ".h5")
DEFAULT_TOLERANCE = 1e-4
# The static batch the model is traced with, and the newest op version accepted without --allow-new-op-versions.
BATCH_SIZE = 1
MAX_OP_VERSION = 1
# What `convert` makes of a model with its defaults; `pibake.convert.to_tflite` keys its cache by it and the Keras
# file's sha256, so a change here converts every model again.
RECIPE: dict[str, object] = {
    "ops": "TFLITE_BUILTINS",
    "dtype": "float32",
    "quantization": None,
    "batch_size": BATCH_SIZE,
    "max_op_version": MAX_OP_VERSION,
    "tolerance": DEFAULT_TOLERANCE,
}
# The command users and the op-version refusal name.
COMMAND = "python -m pibake.convert.keras"


@dataclass(frozen=True)
class Report:
    """What `convert` wrote: OUTPUT (SIZE bytes), its float32 input and output shapes ([1, H, W, C], [1, N]), every
    operator code as (name, version), the largest |Keras - TFLite| on a random input, the converter's own estimate of
    the oldest runtime that reads it (tflite metadata "min_runtime_version") and the TensorFlow version used."""

    output: Path
    size: int
    input_shape: list[int]
    output_shape: list[int]
    ops: list[tuple[str, int]]
    max_abs_diff: float
    tensorflow: str
    min_runtime_version: str = "unknown"

    def text(self) -> str:
        ops = ", ".join(f"{name} v{version}" for name, version in self.ops)
        return (
            f"wrote {self.output} ({self.size} bytes) with TensorFlow {self.tensorflow}: input "
            f"float32{self.input_shape}, output float32{self.output_shape}\n"
            f"ops: {ops}; min_runtime_version {self.min_runtime_version}\n"
            f"max |keras - tflite| on a random input: {self.max_abs_diff:.3g}"
        )

    def json(self) -> str:
        return json.dumps({**asdict(self), "output": str(self.output)})


def import_tensorflow() -> Any:
    """The tensorflow module (its C++ logging kept to warnings and errors). Raises ToolMissing, naming the extra, when
    it cannot be imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module("tensorflow")
    except ImportError as e:
        raise ToolMissing(
            f"TensorFlow is not installed here ({e}): converting a Keras model to TFLite needs pibake's host-only "
            "extra convert: pip install 'pibake[convert]' (in a checkout: pip install -e '.[convert]', which "
            "`make venv` does)"
        ) from e


def check_input(model_path: Path) -> None:
    """Refuse what cannot be a Keras model before TensorFlow is loaded: UsageError naming MODEL_PATH."""
    if not model_path.exists():
        raise UsageError(f"no such file: {model_path}")
    if not model_path.is_file():
        raise UsageError(f"not a file: {model_path}")
    if model_path.suffix.lower() not in KERAS_SUFFIXES:
        raise UsageError(f"{model_path}: expected a Keras model file ending in .keras or .h5, got {model_path.name!r}")


def load_keras_model(tf: Any, model_path: Path) -> Any:
    """MODEL_PATH loaded by Keras, uncompiled. Raises UsageError naming the file and Keras's reason."""
    try:
        return tf.keras.models.load_model(str(model_path), compile=False)
    except Exception as e:  # Keras raises ValueError, OSError, zipfile and h5py errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{model_path} is not a Keras model Keras can load: {first}") from e


def convert_keras(
    tf: Any, model: Any, *, batch_size: int = BATCH_SIZE, name: str = "the model"
) -> tuple[bytes, list[int]]:
    """The float32 TFLite flatbuffer of the loaded Keras MODEL, traced with a static batch of BATCH_SIZE, and its input
    shape [BATCH_SIZE, H, W, C]. Raises UsageError (NAME in the message) for other than one input, unknown dimensions
    besides the batch, or a graph TFLITE_BUILTINS cannot express."""
    if len(model.inputs) != 1:
        raise UsageError(f"{name}: expected a model with one input, it has {len(model.inputs)}")
    dims = list(model.inputs[0].shape)[1:]
    if any(d is None for d in dims):
        raise UsageError(
            f"{name}: the model's input shape {model.inputs[0].shape} has unknown dimensions besides the batch"
        )
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
        raise UsageError(f"{name}: TFLite conversion failed (TFLITE_BUILTINS only): {e}") from e
    return flatbuffer, shape


def compare_with_keras(
    tf: Any, model: Any, flatbuffer: bytes, shape: list[int], seed: int = 0
) -> tuple[float, list[int]]:
    """Max absolute difference between Keras and TFLite on one random input in [0, 1] of SHAPE; and the output shape.
    Raises VerificationFailed when the two output shapes differ."""
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
        raise VerificationFailed(f"TFLite output shape {list(got.shape)} differs from Keras {list(expected.shape)}")
    return float(np.max(np.abs(got - expected))), [int(d) for d in out["shape"]]


def write_atomically(data: bytes, output: Path) -> None:
    """Write DATA to OUTPUT through a temporary file in the same directory, fsync'd, then renamed over OUTPUT (mode
    0644): OUTPUT is either as it was or whole. Raises UsageError when OUTPUT's directory does not exist."""
    parent = output.parent if str(output.parent) else Path()
    if not parent.is_dir():
        raise UsageError(f"output directory {parent} does not exist")
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
    tolerance: float = DEFAULT_TOLERANCE,
) -> Report:
    """Convert the Keras model MODEL_PATH (.keras or .h5) to the .tflite OUTPUT (RECIPE), in this process.

    Raises UsageError (bad input, nothing written), ToolMissing (no TensorFlow) or VerificationFailed (the result
    has an op above version 1 without ALLOW_NEW_OP_VERSIONS, or differs from Keras by more than TOLERANCE: nothing
    written); an existing OUTPUT is left as it was whenever this raises.
    """
    check_input(model_path)
    if output.suffix.lower() != ".tflite":
        raise UsageError(f"the output should end in .tflite, got {output.name!r}")
    tf = import_tensorflow()
    model = load_keras_model(tf, model_path)
    flatbuffer, shape = convert_keras(tf, model, batch_size=BATCH_SIZE, name=str(model_path))

    ops = tflite_ops(flatbuffer)
    newer = [f"{name} v{version}" for name, version in ops if version > MAX_OP_VERSION]
    if newer and not allow_new_op_versions:
        raise VerificationFailed(
            f"{model_path}: the converted model needs op versions newer than {MAX_OP_VERSION} "
            f"({', '.join(newer)}), which tflite-runtime 2.11 on the Pi may not have; to write it anyway, convert it "
            f"with `{COMMAND} {model_path.name} -o {model_path.stem}.tflite --allow-new-op-versions` "
            "(and name the .tflite as model.file in pibake.toml)"
        )
    diff, out_shape = compare_with_keras(tf, model, flatbuffer, shape)
    if not diff <= tolerance:
        raise VerificationFailed(
            f"{model_path}: TFLite and Keras outputs differ by {diff:.3g} (> {tolerance:g}) on a random input"
        )
    write_atomically(flatbuffer, output)
    return Report(
        output=output,
        size=len(flatbuffer),
        input_shape=shape,
        output_shape=out_shape,
        ops=ops,
        max_abs_diff=diff,
        tensorflow=str(tf.__version__),
        min_runtime_version=tflite_min_runtime_version(flatbuffer),
    )


def main(argv: Sequence[str] | None = None, *, prog: str = COMMAND) -> int:
    """The command line: convert, print the report (text, or one JSON line with --json); the exit code is 0 or the
    error kind's (see the module docstring), its message on stderr as "PROG: error: ..."."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a Keras model (.keras or .h5) to a float32 TFLite model (TFLITE_BUILTINS ops, batch 1).",
        epilog="Exit codes: 0 written; 2 bad input; 4 converted but refused (op versions, outputs that differ); "
        "5 no TensorFlow (the extra pibake[convert]).",
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
        default=DEFAULT_TOLERANCE,
        help="largest accepted |keras - tflite| on a random input (default: %(default)g)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line (the report, or the error)")
    args = parser.parse_args(argv)
    try:
        report = convert(
            args.model, args.output, allow_new_op_versions=args.allow_new_op_versions, tolerance=args.tolerance
        )
    except PibakeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": type(e).__name__, "exit_code": e.exit_code, "message": str(e)}))
        return e.exit_code
    print(report.json() if args.json else report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
