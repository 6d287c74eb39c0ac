"""The image classifier: a float32 NHWC model with one input and one output, its labels and its preprocessing."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pibake_target.errors import ModelError
from pibake_target.preprocess import DEFAULT, Preprocessing, find_preprocessing
from pibake_target.runtimes import load_interpreter

if TYPE_CHECKING:
    from pibake_target.preprocess import FloatArray

# OIP platform names are <framework>_<format> (tensorflow_graphdef, onnxruntime_onnx, ...).
PLATFORMS = {".tflite": "tensorflow_tflite", ".onnx": "onnxruntime_onnx"}


def read_labels(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def default_version(model_path: str) -> str:
    """The model's version: the name of the directory the model file really lives in.

    The model role deploys /opt/pibake/model/versions/<version>/car.tflite and points
    /opt/pibake/model/current at it, so a path through `current` gives the version.
    """
    return Path(model_path).resolve().parent.name or "1"


class Model:
    """A classifier behind an interpreter with TFLite's interface, safe to call from many threads.

    The interpreter has batch size 1 and is not thread-safe: a batch runs one image at a time, under a lock.
    PREPROCESSING is how an image becomes its input (preprocess.to_input); run() takes inputs already made.
    """

    def __init__(
        self,
        interpreter: Any,
        labels: Sequence[str],
        *,
        name: str,
        version: str,
        max_batch_size: int = 8,
        runtime: str = "unknown",
        platform: str = "tensorflow_tflite",
        preprocessing: Preprocessing = DEFAULT,
    ) -> None:
        self.name = name
        self.version = version
        self.labels = list(labels)
        self.max_batch_size = max_batch_size
        self.runtime = runtime
        self.platform = platform
        self.preprocessing = preprocessing
        self._interpreter = interpreter
        self._lock = threading.Lock()
        try:
            interpreter.allocate_tensors()
            inputs = interpreter.get_input_details()
            outputs = interpreter.get_output_details()
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"cannot allocate the model's tensors: {exc}") from exc
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"expected a model with one input and one output, got {len(inputs)} and {len(outputs)}")
        in_shape = [int(d) for d in inputs[0]["shape"]]
        out_shape = [int(d) for d in outputs[0]["shape"]]
        if len(in_shape) != 4 or in_shape[0] != 1 or in_shape[3] != 3 or min(in_shape) < 1:
            raise ModelError(f"expected a (1, height, width, 3) model input, got {in_shape}")
        if len(out_shape) != 2 or out_shape[0] != 1:
            raise ModelError(f"expected a (1, classes) model output, got {out_shape}")
        for kind, detail in (("input", inputs[0]), ("output", outputs[0])):
            if np.dtype(detail["dtype"]) != np.float32:
                raise ModelError(f"expected a float32 model {kind}, got {np.dtype(detail['dtype'])}")
        if out_shape[1] != len(self.labels):
            raise ModelError(f"the model has {out_shape[1]} classes but the labels file has {len(self.labels)} labels")
        self.input_name = str(inputs[0]["name"])
        self.output_name = str(outputs[0]["name"])
        self._input_index = int(inputs[0]["index"])
        self._output_index = int(outputs[0]["index"])
        self.height, self.width = in_shape[1], in_shape[2]
        self.num_classes = out_shape[1]

    def run(self, batch: FloatArray) -> FloatArray:
        """Class probabilities, shape (N, classes), for a float32 batch of shape (N, height, width, 3)."""
        rows = []
        with self._lock:
            for i in range(batch.shape[0]):
                self._interpreter.set_tensor(self._input_index, batch[i : i + 1])
                self._interpreter.invoke()
                rows.append(np.array(self._interpreter.get_tensor(self._output_index), dtype=np.float32).reshape(-1))
        return np.stack(rows)

    def top_k(self, probabilities: FloatArray, k: int) -> list[tuple[int, float]]:
        """The k highest (class index, probability) pairs of one row, best first (ties: lower index first)."""
        order = np.argsort(-probabilities, kind="stable")[: max(1, min(k, self.num_classes))]
        return [(int(i), float(probabilities[i])) for i in order]

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata; the batch dimension is variable (-1), up to max_batch_size."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": [-1, self.height, self.width, 3]}],
            "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": [-1, self.num_classes]}],
        }


def load_model(
    model_path: str,
    labels_path: str,
    *,
    name: str | None = None,
    version: str | None = None,
    max_batch_size: int = 8,
    num_threads: int | None = None,
    preprocessing_file: str | None = None,
) -> Model:
    """The model file with its labels and its preprocessing (PREPROCESSING_FILE, else preprocessing.json beside the
    model file, else the default: preprocess.find_preprocessing), checked; every failure is a ModelError."""
    try:
        labels = read_labels(labels_path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read the labels file {labels_path}: {exc}") from exc
    if not Path(model_path).is_file():
        raise ModelError(f"no model file at {model_path}")
    preprocessing = find_preprocessing(model_path, preprocessing_file)
    interpreter, runtime = load_interpreter(model_path, num_threads)
    return Model(
        interpreter,
        labels,
        name=name or Path(model_path).stem,
        version=version or default_version(model_path),
        max_batch_size=max_batch_size,
        runtime=runtime,
        platform=PLATFORMS.get(Path(model_path).suffix.lower(), "unknown"),
        preprocessing=preprocessing,
    )
