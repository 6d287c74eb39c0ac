#!/usr/bin/env python3
"""Time the demo model, one image at a time: what `pibake bench` runs on the host, under qemu-user and on the guest.

Standalone on purpose: it is copied as one file into an armhf chroot or onto the emulated Pi,
so it needs nothing but Python 3.9+, numpy, Pillow, a TFLite interpreter and the directory
holding models/predict.py (whose preprocessing it reuses, so the timing is of the same work).

Prints one JSON object: {"runtime": "tflite_runtime 2.11.0", "load_seconds": 0.01,
"seconds": [per-invoke latencies]}. The first invoke (allocation, caches) is not counted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any


def time_model(predict_dir: str, model: str, labels: str, images: Sequence[str], *, runs: int) -> dict[str, Any]:
    """Load MODEL with predict.py's interpreter, then time RUNS passes over IMAGES, one invoke per image."""
    sys.path.insert(0, predict_dir)
    predict: Any = importlib.import_module("predict")
    start = time.perf_counter()
    interpreter_class, runtime = predict.load_interpreter_class()
    interpreter = interpreter_class(model_path=model)
    interpreter.allocate_tensors()
    load_seconds = time.perf_counter() - start
    predict.read_labels(labels)
    input_detail = interpreter.get_input_details()[0]
    output_index = interpreter.get_output_details()[0]["index"]
    height, width = int(input_detail["shape"][1]), int(input_detail["shape"][2])
    arrays = [predict.load_image(path, height, width) for path in images]
    interpreter.set_tensor(input_detail["index"], arrays[0])
    interpreter.invoke()
    seconds: list[float] = []
    for _ in range(runs):
        for array in arrays:
            t0 = time.perf_counter()
            interpreter.set_tensor(input_detail["index"], array)
            interpreter.invoke()
            interpreter.get_tensor(output_index)
            seconds.append(time.perf_counter() - t0)
    return {"runtime": runtime, "load_seconds": load_seconds, "seconds": seconds}


def main(argv: Sequence[str]) -> int:
    """Parse ARGV, time the model, print the result as one JSON line."""
    ap = argparse.ArgumentParser(description="Time the demo model per image.")
    ap.add_argument("--predict-dir", required=True, help="directory holding predict.py")
    ap.add_argument("--model", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--runs", type=int, default=5, help="passes over the images (default: %(default)s)")
    ap.add_argument("images", nargs="+")
    a = ap.parse_args(argv)
    result = time_model(a.predict_dir, a.model, a.labels, a.images, runs=a.runs)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
