#!/usr/bin/env python3
"""Classify images with a float32 TFLite model and print one JSON object.

Runs unchanged on the host (Python 3.11, tflite-runtime 2.14 or ai-edge-litert)
and on the Raspberry Pi guest (Debian bullseye: Python 3.9, numpy 1.19, Pillow
8.1, tflite-runtime 2.11). Third-party imports are limited to numpy, Pillow
and the TFLite interpreter.

Usage:
    python3 predict.py --model car.tflite --labels labels.txt IMAGE [IMAGE...]

Output (stdout, one line):
    {"runtime": "tflite_runtime 2.11.0",
     "results": [{"image": "car_1.png", "label": "car",
                  "probability": 0.99, "probabilities": [0.99, 0.01]}]}

Preprocessing (must match training): open, convert to RGB, resize to the
model's input height x width with PIL's BILINEAR filter (skipped by Pillow
when the size already matches), float32, divide by 255 -> [0, 1], NHWC batch 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # numpy.typing is not in numpy 1.19 (the guest); only for type checkers.
    import numpy.typing as npt

# Candidate interpreter modules, in order of preference.
_RUNTIMES: tuple[tuple[str, str], ...] = (
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
)

# PIL's BILINEAR filter: Image.BILINEAR on Pillow 8.1 (the guest),
# Image.Resampling.BILINEAR on Pillow >= 9.1. Both are the integer 2.
_RESAMPLE = getattr(Image, "Resampling", Image).BILINEAR


def _module_version(package: str) -> str:
    """Version of an already importable package, e.g. "2.11.0"."""
    version = getattr(importlib.import_module(package), "__version__", None)
    if version:
        return str(version)
    try:
        return metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def load_interpreter_class() -> tuple[Any, str]:
    """Return (Interpreter class, "<module> <version>")."""
    errors: list[str] = []
    for package, module_name in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{module_name}: {exc}")
            continue
        return module.Interpreter, f"{package} {_module_version(package)}"
    raise ImportError("no TFLite interpreter found (install tflite-runtime or ai-edge-litert): " + "; ".join(errors))


def read_labels(labels_path: str) -> list[str]:
    text = Path(labels_path).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_image(image_path: str, height: int, width: int) -> npt.NDArray[np.float32]:
    """Decode one image into a float32 (1, height, width, 3) array in [0, 1]."""
    with Image.open(image_path) as img:
        rgb = img.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), _RESAMPLE)
    array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return array.reshape((1, height, width, 3))


def predict(model_path: str, labels_path: str, image_paths: Sequence[str]) -> dict[str, Any]:
    """Classify images; return {"runtime": str, "results": [per-image dicts]}."""
    interpreter_class, runtime = load_interpreter_class()
    labels = read_labels(labels_path)

    interpreter = interpreter_class(model_path=model_path)
    interpreter.allocate_tensors()
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]

    shape = [int(dim) for dim in input_detail["shape"]]
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
        raise ValueError(f"expected a (1, H, W, 3) model input, got {shape}")
    if np.dtype(input_detail["dtype"]) != np.float32:
        raise ValueError(f"expected a float32 model input, got {input_detail['dtype']}")
    height, width = shape[1], shape[2]

    results: list[dict[str, Any]] = []
    for image_path in image_paths:
        interpreter.set_tensor(input_detail["index"], load_image(image_path, height, width))
        interpreter.invoke()
        scores = np.asarray(interpreter.get_tensor(output_detail["index"]), dtype=np.float64)
        probabilities = [float(value) for value in scores.reshape(-1)]
        if len(probabilities) != len(labels):
            raise ValueError(f"model has {len(probabilities)} outputs but {labels_path} has {len(labels)} labels")
        best = int(np.argmax(scores.reshape(-1)))
        results.append(
            {
                "image": Path(image_path).name,
                "label": labels[best],
                "probability": probabilities[best],
                "probabilities": probabilities,
            }
        )
    return {"runtime": runtime, "results": results}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="Classify images with a TFLite model.")
    parser.add_argument("--model", required=True, help="path to a float32 .tflite model")
    parser.add_argument("--labels", required=True, help="labels file, one label per line")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    args = parser.parse_args(argv)
    try:
        output = predict(args.model, args.labels, args.images)
    except (ImportError, OSError, ValueError) as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
