"""Images to the model's input: RGB, resized with BILINEAR, float32 / 255, NHWC (as the model was trained)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pibake_target.errors import RequestError

if TYPE_CHECKING:  # numpy.typing is not in numpy 1.19 (bullseye); only for type checkers.
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float32]

# PIL's BILINEAR filter: Image.BILINEAR on Pillow 8.1 (bullseye), Image.Resampling.BILINEAR on Pillow >= 9.1.
RESAMPLE = getattr(Image, "Resampling", Image).BILINEAR
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def to_input(image: Image.Image, height: int, width: int) -> FloatArray:
    """An opened image as a float32 (1, height, width, 3) array in [0, 1]."""
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), RESAMPLE)
    array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return array.reshape((1, height, width, 3))


def load_image(path: str, height: int, width: int) -> FloatArray:
    """An image file as the model's input (the predict command, the timing)."""
    with Image.open(path) as img:
        return to_input(img, height, width)


def sniff_image(data: bytes) -> str | None:
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    return None


def decode_image(data: bytes, height: int, width: int, *, max_pixels: int) -> FloatArray:
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
            return to_input(img, height, width)
    except RequestError:
        raise
    except Exception as exc:  # Pillow raises many types on broken input; all of them are the client's
        raise RequestError(400, f"cannot decode the {image_format} image: {exc}") from None
