"""The Pi-side preprocessing (target/pibake_target/preprocess.py): images to the model's input, and preprocessing.json.

The predict and time commands are run as the Pi runs them, `python -m pibake_target` in a child Python: with the
tiny ONNX classifier of tests/onnx_models.py (its outputs computed in numpy) and with the committed car model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pibake_target.errors import ModelError
from pibake_target.preprocess import (
    DEFAULT,
    RESAMPLE,
    Preprocessing,
    find_preprocessing,
    load_image,
    read_preprocessing,
    to_input,
)
from PIL import Image

from tests import onnx_models
from tests.serve_client import find_model, sample_images
from tests.serve_host import LABELS, target_command, target_env

# Not 1/255, a mean and a std per channel, and BGR: every part of the formula shows in the output.
CUSTOM = {"scale": 1 / 127.5, "mean": [1.0, 0.9, 0.8], "std": [0.5, 0.25, 0.75], "channel_order": "bgr"}


def _before(image: Image.Image, height: int, width: int) -> np.ndarray:  # type: ignore[type-arg]
    """to_input as it was before preprocessing.json (commit 5a2ae0d): the file-absent path must still give this."""
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), RESAMPLE)
    array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return array.reshape((1, height, width, 3))


def _every_pixel_value() -> Image.Image:
    """16x16 RGB: every value 0-255 once in each channel, in a different place in each."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return Image.fromarray(np.stack([values, values[::-1], values.T], axis=-1))


def _bits(array: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    assert array.dtype == np.float32
    return array.view(np.uint32)


def _write(path: Path, spec: Any) -> Path:
    path.write_text(json.dumps(spec))
    return path


# ---- to_input ----


def test_without_a_file_the_input_is_what_it_was_bit_for_bit() -> None:
    image = _every_pixel_value()
    np.testing.assert_array_equal(_bits(to_input(image, 16, 16)), _bits(_before(image, 16, 16)))
    # Resized too, and the committed samples at the car model's size.
    np.testing.assert_array_equal(_bits(to_input(image, 9, 12)), _bits(_before(image, 9, 12)))
    for sample in sample_images():
        with Image.open(sample) as img:
            np.testing.assert_array_equal(_bits(load_image(str(sample), 128, 128)), _bits(_before(img, 128, 128)))


def test_a_file_with_the_default_values_is_no_file(tmp_path: Path) -> None:
    spec = {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "channel_order": "rgb"}
    read = read_preprocessing(str(_write(tmp_path / "p.json", spec)))
    assert read == DEFAULT and read_preprocessing(str(_write(tmp_path / "empty.json", {}))) == DEFAULT
    # float32(pixel) * float32(1/255) is not pixel / 255 for about half the pixel values; to_input rounds once.
    pixels = np.arange(256, dtype=np.float32)
    assert np.count_nonzero(pixels * np.float32(1 / 255) != pixels / np.float32(255)) > 100


def test_scale_mean_and_std_per_channel_as_computed_by_hand() -> None:
    spec = Preprocessing(scale=0.5, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    (x,) = to_input(Image.new("RGB", (2, 1), (100, 60, 200)), 1, 2, spec)[0]
    # r: (100 * 0.5 - 10) / 2, g: (60 * 0.5 - 20) / 4, b: (200 * 0.5 - 30) / 8: exact in float32.
    assert x.tolist() == [[20.0, 2.5, 8.75], [20.0, 2.5, 8.75]]

    image = _every_pixel_value()
    rgb = Preprocessing(CUSTOM["scale"], tuple(CUSTOM["mean"]), tuple(CUSTOM["std"]), "rgb")  # type: ignore[arg-type]
    got = to_input(image, 16, 16, rgb)
    assert got.dtype == np.float32 and got.shape == (1, 16, 16, 3)
    pixels = np.asarray(image, dtype=np.float64)
    want = ((pixels * (1 / 127.5) - np.array([1.0, 0.9, 0.8])) / np.array([0.5, 0.25, 0.75])).astype(np.float32)
    np.testing.assert_array_equal(_bits(got[0]), _bits(want))
    # The same formula in float32 arithmetic rounds three times: a few float32 steps (2.4e-7 at 2) away.
    p32 = pixels.astype(np.float32)
    mean, std = np.array([1.0, 0.9, 0.8], dtype=np.float32), np.array([0.5, 0.25, 0.75], dtype=np.float32)
    in32 = (p32 * np.float32(1 / 127.5) - mean) / std
    np.testing.assert_allclose(got[0], in32, rtol=0, atol=1e-6)


def test_bgr_reverses_the_channels_after_mean_and_std_given_as_r_g_b() -> None:
    image = _every_pixel_value()
    rgb = Preprocessing(CUSTOM["scale"], tuple(CUSTOM["mean"]), tuple(CUSTOM["std"]), "rgb")  # type: ignore[arg-type]
    bgr = Preprocessing(CUSTOM["scale"], tuple(CUSTOM["mean"]), tuple(CUSTOM["std"]), "bgr")  # type: ignore[arg-type]
    got = to_input(image, 16, 16, bgr)
    assert got.flags["C_CONTIGUOUS"]  # as the interpreters' set_tensor wants it
    np.testing.assert_array_equal(_bits(got), _bits(to_input(image, 16, 16, rgb)[..., ::-1].copy()))
    # Channel 0 is blue, normalised with blue's mean and std.
    blue = np.asarray(image, dtype=np.float64)[..., 2]
    np.testing.assert_array_equal(got[0, ..., 0], ((blue * (1 / 127.5) - 0.8) / 0.75).astype(np.float32))
    # The default's channels reversed: pixel / 255 in b, g, r.
    plain = to_input(image, 16, 16, Preprocessing(channel_order="bgr"))
    np.testing.assert_array_equal(_bits(plain), _bits(_before(image, 16, 16)[..., ::-1].copy()))


# ---- preprocessing.json ----


def test_the_file_is_read_with_its_keys(tmp_path: Path) -> None:
    got = read_preprocessing(str(_write(tmp_path / "p.json", CUSTOM)))
    assert got == Preprocessing(1 / 127.5, (1.0, 0.9, 0.8), (0.5, 0.25, 0.75), "bgr")
    assert read_preprocessing(str(_write(tmp_path / "q.json", {"channel_order": "bgr"}))) == Preprocessing(
        channel_order="bgr"
    )
    assert got.describe() == "(pixel * 0.00784314 - [1, 0.9, 0.8]) / [0.5, 0.25, 0.75], bgr"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{", "not a JSON file"),
        ("[1, 2]", "expected a JSON object (scale, mean, std, channel_order), got list"),
        ('{"scale": 1, "stdev": [1, 1, 1]}', "stdev: unknown key; the keys are scale, mean, std and channel_order"),
        ('{"scale": 0}', "scale: must be a number more than 0, got 0"),
        ('{"scale": "1/255"}', 'scale: must be a number more than 0, got "1/255"'),
        ('{"scale": true}', "scale: must be a number more than 0, got true"),
        ('{"scale": NaN}', "scale: must be a number more than 0, got NaN"),
        ('{"mean": [0.5, 0.5]}', "mean: must be a list of 3 numbers [r, g, b], got [0.5, 0.5]"),
        ('{"mean": 0.5}', "mean: must be a list of 3 numbers [r, g, b], got 0.5"),
        ('{"std": [1, 0, 1]}', "std: must be more than 0 (it divides), got [1, 0, 1]"),
        ('{"std": [1, "2", 1]}', 'std: must be a list of 3 numbers [r, g, b], got [1, "2", 1]'),
        ('{"channel_order": "rgba"}', 'channel_order: must be "rgb" or "bgr", got "rgba"'),
    ],
)
def test_a_wrong_file_is_a_model_error_naming_the_file_and_the_key(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "preprocessing.json"
    path.write_text(text)
    with pytest.raises(ModelError) as error:
        read_preprocessing(str(path))
    assert str(error.value).startswith(f"{path}: {says}"), error.value


def test_the_file_beside_the_model_unless_one_is_named(tmp_path: Path) -> None:
    model = tmp_path / "version" / "m.onnx"
    model.parent.mkdir()
    assert find_preprocessing(str(model)) is DEFAULT  # no file: the default
    _write(model.parent / "preprocessing.json", {"channel_order": "bgr"})
    assert find_preprocessing(str(model)).channel_order == "bgr"
    # Through a `current` symlink, as the model role deploys it.
    (tmp_path / "current").symlink_to("version")
    assert find_preprocessing(str(tmp_path / "current" / "m.onnx")).channel_order == "bgr"
    named = _write(tmp_path / "other.json", {"scale": 2})
    assert find_preprocessing(str(model), str(named)) == Preprocessing(scale=2.0)
    with pytest.raises(ModelError, match=r"cannot read the preprocessing file .*nope\.json"):
        find_preprocessing(str(model), str(tmp_path / "nope.json"))
    (model.parent / "preprocessing.json").unlink()
    (model.parent / "preprocessing.json").symlink_to("gone.json")
    with pytest.raises(ModelError, match="cannot read the preprocessing file"):
        find_preprocessing(str(model))  # a dangling link is not "no file"


# ---- the predict and time commands ----


def _onnx_model(directory: Path) -> tuple[Path, Path, list[Path]]:
    """The 24x24, 4-class ONNX classifier in DIRECTORY, its labels and two samples (one to be resized)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / "m.onnx"
    model.write_bytes(onnx_models.classifier(24, 24, 4))
    labels = directory / "labels.txt"
    labels.write_text("north\neast\nsouth\nwest\n")
    rng = np.random.default_rng(3)
    samples = [directory / "noise.png", directory / "wide.png"]
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(samples[0])
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(samples[1])
    return model, labels, samples


def _run(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        target_command(command, *args), capture_output=True, text=True, env=target_env(), timeout=120, check=False
    )


def _probabilities(result: subprocess.CompletedProcess[str]) -> np.ndarray:  # type: ignore[type-arg]
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return np.array([r["probabilities"] for r in report["results"]], dtype=np.float32)


def test_the_predict_command_reads_preprocessing_json_beside_the_model(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
    model, labels, samples = _onnx_model(tmp_path / "model")
    argv = ["--model", str(model), "--labels", str(labels), *map(str, samples)]
    spec = Preprocessing(CUSTOM["scale"], tuple(CUSTOM["mean"]), tuple(CUSTOM["std"]), "bgr")  # type: ignore[arg-type]

    # The hand computation: resize, (pixel * scale - mean) / std with r, g, b mean and std, then b, g, r.
    def by_hand(preprocessing: Preprocessing) -> np.ndarray:  # type: ignore[type-arg]
        rows = []
        for sample in samples:
            with Image.open(sample) as img:
                pixels = np.asarray(img.convert("RGB").resize((24, 24), RESAMPLE), dtype=np.float64)
            x = (pixels * preprocessing.scale - np.array(preprocessing.mean)) / np.array(preprocessing.std)
            if preprocessing.channel_order == "bgr":
                x = x[..., ::-1]
            rows.append(x.astype(np.float32))
        return onnx_models.classifier_outputs(np.stack(rows), 4)

    default = _probabilities(_run("predict", *argv))
    np.testing.assert_allclose(default, by_hand(DEFAULT), atol=1e-6)
    _write(model.parent / "preprocessing.json", CUSTOM)
    custom = _probabilities(_run("predict", *argv))
    np.testing.assert_allclose(custom, by_hand(spec), atol=1e-6)
    assert np.abs(custom - default).max() > 0.01  # the file changed what the model saw

    # --preprocessing names another file, which wins over the one beside the model.
    other = _write(tmp_path / "other.json", {})
    np.testing.assert_array_equal(_probabilities(_run("predict", "--preprocessing", str(other), *argv)), default)
    timed = _run("time", "--runs", "1", "--preprocessing", str(other), *argv)
    assert timed.returncode == 0 and len(json.loads(timed.stdout.strip().splitlines()[-1])["seconds"]) == 2

    _write(model.parent / "preprocessing.json", {**CUSTOM, "std": [1, 1, 0]})
    for command, extra in (("predict", ()), ("time", ("--runs", "1"))):
        broken = _run(command, *extra, *argv)
        assert broken.returncode == 1 and broken.stdout == "", broken
        path = model.parent / "preprocessing.json"
        assert f"pibake_target {command}: error: {path}: std: must be more than 0" in broken.stderr, broken.stderr


def test_the_car_model_predicts_as_before_with_no_file_or_a_default_one(tmp_path: Path) -> None:
    pytest.importorskip("tflite_runtime", reason="tflite-runtime is in the test extra: pip install -e '.[test]'")
    samples = [str(p) for p in sample_images()]
    committed = _run("predict", "--model", str(find_model()), "--labels", str(LABELS), *samples)
    assert committed.returncode == 0, committed.stderr
    copy = tmp_path / "car.tflite"
    copy.write_bytes(find_model().read_bytes())
    _write(tmp_path / "preprocessing.json", {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]})
    beside = _run("predict", "--model", str(copy), "--labels", str(LABELS), *samples)
    assert beside.returncode == 0, beside.stderr
    # The same JSON, every probability to the last digit.
    assert json.loads(beside.stdout.splitlines()[-1]) == json.loads(committed.stdout.splitlines()[-1])
