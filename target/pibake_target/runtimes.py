"""Model files to interpreters, chosen by the file's suffix.

Every loader returns an object with the TFLite ``Interpreter`` interface (allocate_tensors,
get_input_details, get_output_details, set_tensor, invoke, get_tensor), which is all
``model.Model`` and ``invoke_once`` use: ``.tflite`` files get a TFLite interpreter (tflite-runtime or
LiteRT), ``.onnx`` files an onnxruntime session behind ``OnnxSession``, which adapts it to that interface.
No runtime is imported until a model is loaded, so the package imports on a Pi that has only one of them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from pibake_target.errors import ModelError

# TFLite interpreter modules, in order of preference: tflite-runtime (bullseye, bookworm armhf),
# LiteRT (the arm64 successor).
TFLITE_MODULES = (
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
)


def package_version(package: str) -> str:
    """The version of an importable package, e.g. "2.11.0"."""
    version = getattr(importlib.import_module(package), "__version__", None)
    if version:
        return str(version)
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def load_tflite(model_path: str, num_threads: int | None = None) -> tuple[Any, str]:
    """A TFLite interpreter for the model, and "<runtime> <version>"."""
    errors: list[str] = []
    for package, module_name in TFLITE_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{module_name}: {exc}")
            continue
        try:
            interpreter = module.Interpreter(model_path=model_path, num_threads=num_threads)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load the model {model_path}: {exc}") from exc
        return interpreter, f"{package} {package_version(package)}"
    raise ModelError("no TFLite interpreter found (install tflite-runtime or ai-edge-litert): " + "; ".join(errors))


# onnxruntime's tensor types (NodeArg.type: "tensor(<ONNX TensorProto element type>)", onnx.proto's DataType in
# lower case) that numpy holds as they are, as numpy type names. The others (string, bfloat16, the float8 and int4
# types) have no numpy dtype of their own: a model with such an input or output is refused.
ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def onnx_details(arg: Any, index: int, kind: str) -> dict[str, Any]:
    """TFLite-style details of one ONNX graph input or output ARG (an onnxruntime NodeArg: name, shape, type).

    {"name": str, "index": INDEX, "shape": int32 array, "shape_signature": int32 array with -1 where the
    dimension is dynamic (as TFLite's), "dtype": numpy scalar type (ONNX_DTYPES)}. A dynamic dimension is a
    dim_param (a string such as "N") or an unknown one (None) in the model; the first one of a tensor is its batch
    dimension and becomes 1, the batch size TFLite's interpreters run. Raises ModelError, naming the tensor and
    the dimensions, for any other dynamic dimension (the Pi-side package feeds fixed shapes) and for a type numpy
    cannot hold. KIND ("input", "output") is for the messages.
    """
    import numpy as np

    dtype = ONNX_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelError(
            f"the model's {kind} {arg.name!r} is a {arg.type}; pibake runs models whose inputs and outputs are "
            f"numeric tensors ({', '.join(sorted(ONNX_DTYPES))})"
        )
    shape: list[int] = []
    signature: list[int] = []
    dynamic: list[str] = []
    for axis, dim in enumerate(arg.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
            signature.append(dim)
        elif axis == 0:
            shape.append(1)
            signature.append(-1)
        else:
            dynamic.append(f"axis {axis} ({dim!r})" if dim is not None else f"axis {axis} (unnamed)")
    if dynamic:
        raise ModelError(
            f"the model's {kind} {arg.name!r} has shape {list(arg.shape)}: dynamic {', '.join(dynamic)}; only the "
            "first (batch) dimension may be dynamic. Export the model with fixed sizes for the others"
        )
    return {
        "name": arg.name,
        "index": index,
        "shape": np.array(shape, dtype=np.int32),
        "shape_signature": np.array(signature, dtype=np.int32),
        "dtype": np.dtype(dtype).type,
    }


class OnnxSession:
    """An onnxruntime ``InferenceSession`` behind the TFLite ``Interpreter`` interface ``model.Model`` uses.

    The tensors share one index space, as TFLite's do: the session's inputs are 0 to n-1 in their order, its
    outputs n to n+m-1. Their details (``onnx_details``) give the batch dimension as 1. ``set_tensor`` copies the
    value, as TFLite's does, and raises ValueError for another index, dtype or shape than the input's details;
    ``invoke`` runs the session on the values set (ValueError when an input has none) and raises RuntimeError when
    onnxruntime fails; ``get_tensor`` gives the value of an input set or an output of the last ``invoke``
    (ValueError before there is one). Not thread-safe, like TFLite's interpreter: ``model.Model`` holds a lock.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        inputs = [onnx_details(arg, i, "input") for i, arg in enumerate(session.get_inputs())]
        first = len(inputs)
        outputs = [onnx_details(arg, first + i, "output") for i, arg in enumerate(session.get_outputs())]
        self._inputs: Sequence[dict[str, Any]] = inputs
        self._outputs: Sequence[dict[str, Any]] = outputs
        self._values: dict[int, Any] = {}

    def allocate_tensors(self) -> None:
        """Nothing to do: onnxruntime allocates a run's tensors when it runs."""

    def get_input_details(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self._inputs]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self._outputs]

    def set_tensor(self, index: int, value: Any) -> None:
        import numpy as np

        if not 0 <= index < len(self._inputs):
            last = len(self._inputs) - 1
            raise ValueError(f"tensor {index} is not an input of the model (its inputs are 0 to {last})")
        detail = self._inputs[index]
        array = np.asarray(value)
        if array.dtype != detail["dtype"]:
            raise ValueError(
                f"cannot set tensor {index} ({detail['name']}): got a value of type {array.dtype}, "
                f"expected {np.dtype(detail['dtype'])}"
            )
        if array.shape != tuple(int(d) for d in detail["shape"]):
            raise ValueError(
                f"cannot set tensor {index} ({detail['name']}): got a value of shape {list(array.shape)}, "
                f"expected {[int(d) for d in detail['shape']]}"
            )
        self._values[index] = array.copy()

    def invoke(self) -> None:
        missing = [d["name"] for d in self._inputs if d["index"] not in self._values]
        if missing:
            raise ValueError(f"no value set for the model's input {', '.join(missing)}")
        feed = {d["name"]: self._values[d["index"]] for d in self._inputs}
        try:
            results = self._session.run([d["name"] for d in self._outputs], feed)
        # onnxruntime's errors (Fail, InvalidArgument, RuntimeException, ...) are pybind11 exceptions registered with
        # Exception as their base, not RuntimeError: callers catch RuntimeError, as for TFLite.
        except Exception as exc:
            raise RuntimeError(str(exc)) from exc
        for detail, result in zip(self._outputs, results):
            self._values[detail["index"]] = result

    def get_tensor(self, index: int) -> Any:
        if index not in self._values:
            raise ValueError(f"tensor {index} has no value: set the inputs, then invoke, before reading the outputs")
        return self._values[index]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a cgroup's cpuset narrows), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity off Linux
        return os.cpu_count() or 1


def load_onnx(model_path: str, num_threads: int | None = None) -> tuple[Any, str]:
    """An onnxruntime session for the ONNX model behind the TFLite interface (OnnxSession), and "onnxruntime <version>".

    The session runs on CPUExecutionProvider, named (onnxruntime requires the providers named where a build has more
    than one: the x86_64 wheel also has Azure's), with NUM_THREADS intra-op threads (the calling thread included),
    by default one per CPU this process may use. Always a number: with 0, its own default, onnxruntime pins each
    intra-op thread to a core with pthread_setaffinity_np, which the inference service's seccomp filter
    (SystemCallFilter=~@resources) refuses, and onnxruntime's answer to that failure is "Specify the number of
    threads explicitly so the affinity is not set". Raises ModelError when onnxruntime is not importable, the model
    cannot be loaded, or its tensors cannot be fed (onnx_details).
    """
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise ModelError(
            f"no ONNX runtime found (install onnxruntime: pibake's python_runtime role installs it from its lock on "
            f"the Pi, pibake's test extra on the host): {exc}"
        ) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or usable_cpus()
    try:
        session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    # InvalidProtobuf, NoSuchFile, Fail, ...: pybind11 exceptions whose base is Exception (see OnnxSession.invoke).
    except Exception as exc:
        raise ModelError(f"cannot load the model {model_path}: {exc}") from exc
    return OnnxSession(session), f"onnxruntime {package_version('onnxruntime')}"


# Suffix -> loader. A loader raises ModelError with a message a user can act on.
LOADERS: dict[str, Callable[[str, int | None], tuple[Any, str]]] = {
    ".tflite": load_tflite,
    ".onnx": load_onnx,
}


def load_interpreter(model_path: str, num_threads: int | None = None) -> tuple[Any, str]:
    """An interpreter for the model file (by its suffix), and "<runtime> <version>"."""
    suffix = Path(model_path).suffix.lower()
    loader = LOADERS.get(suffix)
    if loader is None:
        known = ", ".join(sorted(LOADERS))
        raise ModelError(
            f"no runtime for {suffix or 'a file without a suffix'} models ({model_path}): known are {known}"
        )
    return loader(model_path, num_threads)


def invoke_once(model_path: str, num_threads: int | None = None) -> str:
    """Load the model with its runtime and run one inference on zeros; "<runtime> <version>".

    Every input gets zeros of its own shape and dtype (from the interpreter's input details), so any
    model runs, whatever its input. `pibake preflight` runs this under qemu-aarch64 on the board's core:
    the runtime's kernels (XNNPACK chooses them by the CPU's features) execute once. Raises ModelError
    when the model cannot be loaded or run.
    """
    import numpy as np

    interpreter, runtime = load_interpreter(model_path, num_threads)
    try:
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
        interpreter.invoke()
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot run the model {model_path}: {exc}") from exc
    return runtime
