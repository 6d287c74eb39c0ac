"""Per-image latency of the model: what `pibake bench` runs on the host, under qemu-user and on the Pi.

    {"runtime": "tflite_runtime 2.11.0", "load_seconds": 0.01, "seconds": [per-invoke latencies]}

The first invoke (allocation, caches) is not counted; preprocessing is done before the clock starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pibake_target.model import load_model
from pibake_target.preprocess import load_image


def time_model(
    model_path: str,
    labels_path: str,
    image_paths: Sequence[str],
    *,
    runs: int,
    preprocessing_file: str | None = None,
) -> dict[str, Any]:
    """Load the model, then time RUNS passes over the images, one invoke per image; the images are preprocessed as
    predict preprocesses them (PREPROCESSING_FILE, else preprocessing.json beside the model, else the default)."""
    start = time.perf_counter()
    model = load_model(model_path, labels_path, max_batch_size=1, preprocessing_file=preprocessing_file)
    load_seconds = time.perf_counter() - start
    arrays = [load_image(path, model.height, model.width, model.preprocessing) for path in image_paths]
    model.run(arrays[0])
    seconds: list[float] = []
    for _ in range(runs):
        for array in arrays:
            t0 = time.perf_counter()
            model.run(array)
            seconds.append(time.perf_counter() - t0)
    return {"runtime": model.runtime, "load_seconds": load_seconds, "seconds": seconds}
