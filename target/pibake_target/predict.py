"""The predict command: classify image files and report one JSON object.

{"runtime": "tflite_runtime 2.11.0",
 "results": [{"image": "car_1.png", "label": "car", "probability": 0.99, "probabilities": [0.99, 0.01]}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pibake_target.model import load_model
from pibake_target.preprocess import load_image


def predict(
    model_path: str, labels_path: str, image_paths: Sequence[str], *, preprocessing_file: str | None = None
) -> dict[str, Any]:
    """Classify images; {"runtime": str, "results": [one dict per image, in order]}. The images are preprocessed as
    PREPROCESSING_FILE says, else preprocessing.json beside the model, else the default (model.load_model)."""
    model = load_model(model_path, labels_path, max_batch_size=1, preprocessing_file=preprocessing_file)
    results: list[dict[str, Any]] = []
    for image_path in image_paths:
        scores = model.run(load_image(image_path, model.height, model.width, model.preprocessing))[0]
        probabilities = [float(value) for value in scores]
        best = int(np.argmax(scores))
        results.append(
            {
                "image": Path(image_path).name,
                "label": model.labels[best],
                "probability": probabilities[best],
                "probabilities": probabilities,
            }
        )
    return {"runtime": model.runtime, "results": results}
