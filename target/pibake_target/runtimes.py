"""Model files to interpreters, chosen by the file's suffix.

Every loader returns an object with the TFLite ``Interpreter`` interface (allocate_tensors,
get_input_details, get_output_details, set_tensor, invoke, get_tensor), which is all
``model.Model`` uses. Another runtime (onnxruntime for ``.onnx`` on arm64) is one more loader here
that adapts its session to that interface.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
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


# Suffix -> loader. A loader raises ModelError with a message a user can act on.
LOADERS: dict[str, Callable[[str, int | None], tuple[Any, str]]] = {
    ".tflite": load_tflite,
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
