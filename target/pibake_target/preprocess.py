"""Images to the model's input, as the model was trained: RGB, resized with BILINEAR, then (pixel * scale - mean) / std
per channel, in the channel order the model expects, float32 NHWC.

How a model's pixels are scaled is its preprocessing.json, beside the model file (pibake bake writes it from the
project's [model.preprocessing]; the model role deploys it with the model):

    {"scale": 0.00392156862745098, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "rgb"}

Every key may be left out (its default is the value above); mean and std are [r, g, b] whatever the channel order,
as in pibake.toml. A model without the file gets the defaults: RGB scaled by 1/255.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pibake_target.errors import ModelError, RequestError

if TYPE_CHECKING:  # numpy.typing is not in numpy 1.19 (bullseye); only for type checkers.
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float32]

# PIL's BILINEAR filter: Image.BILINEAR on Pillow 8.1 (bullseye), Image.Resampling.BILINEAR on Pillow >= 9.1.
RESAMPLE = getattr(Image, "Resampling", Image).BILINEAR
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

# The file the predict, time and serve commands read beside the model file when --preprocessing names none.
PREPROCESSING_FILE = "preprocessing.json"
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preprocessing:
    """After the resize, per channel: x = (pixel * scale - mean) / std, pixel in 0-255.

    scale multiplies every pixel; mean (subtracted) and std (divided by, each > 0) are in r, g, b order;
    channel_order is the order of the channels in the model's input, "rgb" or "bgr". The defaults are
    the package's preprocessing before it could be configured: RGB scaled by 1/255.
    """

    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "rgb"

    def describe(self) -> str:
        """One line for logs and messages: "(pixel * 0.00392157 - [0, 0, 0]) / [1, 1, 1], rgb"."""
        mean = ", ".join(f"{v:g}" for v in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return f"(pixel * {self.scale:g} - [{mean}]) / [{std}], {self.channel_order}"


DEFAULT = Preprocessing()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_preprocessing(path: str) -> Preprocessing:
    """The preprocessing in the JSON file PATH (the module's docstring gives its keys; a key left out keeps its
    default). Raises ModelError, naming the file and the key, for a file that cannot be read or a wrong value."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read the preprocessing file {path}: {exc}") from exc
    except ValueError as exc:
        raise ModelError(f"{path}: not a JSON file: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object (scale, mean, std, channel_order), got {type(data).__name__}")
    unknown = sorted(set(data) - {"scale", "mean", "std", "channel_order"})
    if unknown:
        raise ModelError(f"{path}: {unknown[0]}: unknown key; the keys are scale, mean, std and channel_order")

    def channels(key: str, default: tuple[float, float, float], *, positive: bool) -> tuple[float, float, float]:
        value = data.get(key, list(default))
        if not (isinstance(value, list) and len(value) == 3 and all(_number(v) for v in value)):
            raise ModelError(f"{path}: {key}: must be a list of 3 numbers [r, g, b], got {json.dumps(value)}")
        if positive and not all(v > 0 for v in value):
            raise ModelError(f"{path}: {key}: must be more than 0 (it divides), got {json.dumps(value)}")
        return (float(value[0]), float(value[1]), float(value[2]))

    scale = data.get("scale", DEFAULT.scale)
    if not (_number(scale) and scale > 0):
        raise ModelError(f"{path}: scale: must be a number more than 0, got {json.dumps(scale)}")
    order = data.get("channel_order", DEFAULT.channel_order)
    if order not in CHANNEL_ORDERS:
        raise ModelError(f'{path}: channel_order: must be "rgb" or "bgr", got {json.dumps(order)}')
    return Preprocessing(
        float(scale),
        channels("mean", DEFAULT.mean, positive=False),
        channels("std", DEFAULT.std, positive=True),
        order,
    )


def find_preprocessing(model_path: str, path: str | None = None) -> Preprocessing:
    """The preprocessing in the file PATH; without one, in preprocessing.json beside MODEL_PATH (as the path names
    it: through the model role's `current` symlink, the current version's), or DEFAULT when there is no such file.
    Raises ModelError as read_preprocessing does."""
    if path is None:
        beside = Path(model_path).parent / PREPROCESSING_FILE
        if not (beside.exists() or beside.is_symlink()):  # a dangling link is an error, not the default
            return DEFAULT
        path = str(beside)
    return read_preprocessing(path)


def to_input(image: Image.Image, height: int, width: int, preprocessing: Preprocessing = DEFAULT) -> FloatArray:
    """An opened image as the model's input, float32 (1, height, width, 3).

    In order: converted to RGB; resized to (width, height) with BILINEAR, unless it is that size; then per channel
    x = (pixel * scale - mean) / std (project.Preprocessing's "resize to size, then (pixel * scale - mean) / std per
    channel"), computed in float64 and rounded to float32 once; last, for channel_order "bgr", the channels reversed
    (mean and std are r, g, b, so they apply before). Rounded once, the defaults (scale 1/255, mean 0, std 1, rgb)
    give float32(pixel) / float32(255), bit for bit what this function gave before preprocessing was configurable,
    and a file with the default values gives what no file gives; float32 arithmetic would round pixel * scale
    apart from pixel / 255 for 126 of the 256 pixel values.
    """
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), RESAMPLE)
    pixels = np.asarray(rgb, dtype=np.float64)
    x = (pixels * preprocessing.scale - np.array(preprocessing.mean)) / np.array(preprocessing.std)
    if preprocessing.channel_order == "bgr":
        x = x[..., ::-1]
    return np.ascontiguousarray(x, dtype=np.float32).reshape((1, height, width, 3))


def load_image(path: str, height: int, width: int, preprocessing: Preprocessing = DEFAULT) -> FloatArray:
    """An image file as the model's input (the predict command, the timing)."""
    with Image.open(path) as img:
        return to_input(img, height, width, preprocessing)


def sniff_image(data: bytes) -> str | None:
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    return None


def decode_image(
    data: bytes, height: int, width: int, *, max_pixels: int, preprocessing: Preprocessing = DEFAULT
) -> FloatArray:
    """A PNG or JPEG a client sent as the model's input; anything else is a RequestError (400)."""
    image_format = sniff_image(data)
    if image_format is None:
        raise RequestError(400, "the body is not a PNG or JPEG image")
    try:
        # Only the sniffed format's decoder sees the bytes.
        with Image.open(io.BytesIO(data), formats=[image_format]) as img:
            w, h = img.size  # read from the header; nothing is decoded yet
            if w * h > max_pixels:
                raise RequestError(400, f"the image is {w}x{h} pixels; the limit is {max_pixels} pixels")
            return to_input(img, height, width, preprocessing)
    except RequestError:
        raise
    except Exception as exc:  # Pillow raises many types on broken input; all of them are the client's
        raise RequestError(400, f"cannot decode the {image_format} image: {exc}") from None
