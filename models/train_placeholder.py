#!/usr/bin/env python3
"""Train the placeholder shape classifier and export it as a float32 TFLite model.

This is a host-only tool. It needs TensorFlow (an optional dependency that is
*not* installed on the Raspberry Pi image) and Pillow, e.g. in a separate venv:

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu pillow
    /tmp/tfvenv/bin/python models/train_placeholder.py

The data set is generated here with fixed seeds (no downloads): 64x64 RGB
drawings of a circle, a square or a triangle at a random position, size,
rotation and colour on a random background, plus Gaussian pixel noise.

Outputs, next to this script (or in --out-dir):
    demo.tflite      float32 model, TFLITE_BUILTINS ops only
    labels.txt       one label per line, in the model's output order
    samples/*.png    a few generated images (2 per class) for smoke tests
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

# Keep TensorFlow quiet and cheap on small machines; must be set before import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

LABELS: list[str] = ["circle", "square", "triangle"]
IMAGE_SIZE = 64

TRAIN_SEED = 1234
TEST_SEED = 5678
SAMPLE_SEED = 9012


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))


def _contrasting_colours(
    rng: random.Random,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background and a foreground colour that differ visibly."""
    while True:
        bg = _random_colour(rng)
        fg = _random_colour(rng)
        if sum(abs(a - b) for a, b in zip(bg, fg, strict=True)) >= 150:
            return bg, fg


def _regular_polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [
        (
            cx + radius * math.cos(angle + 2.0 * math.pi * k / sides),
            cy + radius * math.sin(angle + 2.0 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def draw_shape(label: str, rng: random.Random, nrng: np.random.Generator) -> Image.Image:
    """Draw one 64x64 RGB image of the given class."""
    size = IMAGE_SIZE
    bg, fg = _contrasting_colours(rng)
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)

    radius = rng.uniform(9.0, 24.0)  # circumradius in pixels
    margin = radius + 2.0
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    filled = rng.random() < 0.7
    width = rng.randint(2, 4)

    if label == "circle":
        r = radius * 0.85
        box = (cx - r, cy - r, cx + r, cy + r)
        if filled:
            draw.ellipse(box, fill=fg)
        else:
            draw.ellipse(box, outline=fg, width=width)
    else:
        sides = 4 if label == "square" else 3
        pts = _regular_polygon(cx, cy, radius, sides, angle)
        if filled:
            draw.polygon(pts, fill=fg)
        else:
            draw.line([*pts, pts[0]], fill=fg, width=width, joint="curve")

    arr = np.asarray(img, dtype=np.float32)
    sigma = rng.uniform(0.0, 20.0)
    arr = arr + nrng.normal(0.0, sigma, size=arr.shape).astype(np.float32)
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def make_dataset(count_per_class: int, seed: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Return (images float32 NHWC in [0,1], integer labels), shuffled."""
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not crypto
    nrng = np.random.default_rng(seed)
    xs: list[npt.NDArray[Any]] = []
    ys: list[int] = []
    for _ in range(count_per_class):
        for idx, label in enumerate(LABELS):
            xs.append(np.asarray(draw_shape(label, rng, nrng), dtype=np.uint8))
            ys.append(idx)
    x = np.stack(xs).astype(np.float32) / 255.0
    y = np.asarray(ys, dtype=np.int64)
    order = nrng.permutation(len(y))
    return x[order], y[order]


def build_model(tf: Any, batch_size: int | None = None) -> Any:
    """Small CNN: 4 x (Conv2D 3x3 + ReLU + MaxPool 2x2), Flatten, Dense, softmax.

    batch_size=1 is used for the exported copy so that Flatten becomes one
    static RESHAPE instead of SHAPE/STRIDED_SLICE/PACK/RESHAPE.
    """
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            layers.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), batch_size=batch_size, name="image"),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(0.3),
            layers.Dense(64, activation="relu"),
            layers.Dense(len(LABELS), activation="softmax"),
        ],
        name="shape_placeholder",
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def tflite_ops(model_bytes: bytes) -> list[tuple[str, int]]:
    """(builtin op name, op version) pairs used by a .tflite flatbuffer."""
    schema = importlib.import_module("tensorflow.lite.python.schema_py_generated")
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    ops = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        ops.append((names.get(builtin, str(builtin)), code.Version()))
    return ops


def tflite_min_runtime(model_bytes: bytes) -> str:
    schema = importlib.import_module("tensorflow.lite.python.schema_py_generated")
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        if meta.Name() == b"min_runtime_version":
            data = model.Buffers(meta.Buffer()).DataAsNumpy()
            return bytes(data).split(b"\0", 1)[0].decode("ascii", "replace")
    return "unknown"


def tflite_accuracy(tf: Any, model_bytes: bytes, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    interp = tf.lite.Interpreter(model_content=model_bytes, num_threads=2)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    correct = 0
    for i in range(len(y)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        correct += int(np.argmax(interp.get_tensor(out["index"])[0]) == y[i])
    return correct / len(y)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--train-per-class", type=int, default=2000)
    parser.add_argument("--test-per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args(argv)

    try:
        import tensorflow as tf
    except ImportError:
        print(
            "TensorFlow is required to train the placeholder model (pip install tensorflow-cpu pillow in a host venv).",
            file=sys.stderr,
        )
        return 2

    tf.keras.utils.set_random_seed(TRAIN_SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    t0 = time.time()
    x_train, y_train = make_dataset(args.train_per_class, TRAIN_SEED)
    x_test, y_test = make_dataset(args.test_per_class, TEST_SEED)
    print(f"generated {len(y_train)} train / {len(y_test)} held-out images in {time.time() - t0:.1f}s")

    model = build_model(tf)
    model.summary()
    t0 = time.time()
    model.fit(
        x_train,
        y_train,
        epochs=args.epochs,
        batch_size=32,
        validation_split=0.1,
        shuffle=True,
        verbose=2,
    )
    print(f"training took {time.time() - t0:.1f}s")
    _, keras_acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"Keras held-out accuracy: {keras_acc:.4f} ({len(y_test)} images)")

    # Export a batch-1 copy (same weights) so the graph has only static shapes.
    export_model = build_model(tf, batch_size=1)
    export_model.set_weights(model.get_weights())
    converter = tf.lite.TFLiteConverter.from_keras_model(export_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.optimizations = []  # plain float32, no quantization
    model_bytes: bytes = converter.convert()

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo.tflite").write_bytes(model_bytes)
    (out_dir / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")

    lite_acc = tflite_accuracy(tf, model_bytes, x_test, y_test)
    print(f"TFLite held-out accuracy: {lite_acc:.4f} ({len(y_test)} images)")

    # Sample images for smoke tests (separate seed from train and test sets).
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(exist_ok=True)
    for old in samples_dir.glob("*.png"):
        old.unlink()
    rng = random.Random(SAMPLE_SEED)  # noqa: S311 - reproducible data, not crypto
    nrng = np.random.default_rng(SAMPLE_SEED)
    sample_paths: dict[str, str] = {}
    for n in (1, 2):
        for label in LABELS:
            path = samples_dir / f"{label}_{n}.png"
            draw_shape(label, rng, nrng).save(path)
            sample_paths[path.name] = label
    x_s = np.stack([np.asarray(Image.open(samples_dir / name), dtype=np.float32) / 255.0 for name in sample_paths])
    y_s = np.asarray([LABELS.index(lbl) for lbl in sample_paths.values()])
    sample_acc = tflite_accuracy(tf, model_bytes, x_s, y_s)
    print(f"TFLite accuracy on {len(y_s)} samples/: {sample_acc:.4f}")

    print(f"TensorFlow {tf.__version__}; wrote {out_dir / 'demo.tflite'} ({len(model_bytes)} bytes)")
    try:
        print("min_runtime_version:", tflite_min_runtime(model_bytes))
        for name, version in tflite_ops(model_bytes):
            print(f"op {name} v{version}")
    except Exception as exc:  # pragma: no cover - schema module layout varies
        print(f"could not list ops: {exc}")
    return 0 if sample_acc == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
