"""pibake.convert.keras (Keras -> TFLite; scripts/convert_model.py is its command line) and the car model's contract.

The conversion tests need TensorFlow, the host-only extra pibake[convert] that `make venv`
installs. TensorFlow only ever runs in subprocesses here (the converter's CLI and a helper
that builds tiny Keras models), so this process loads the host's tflite-runtime alone, as
the Pi-side package's predict command does, and checks the converted models with it. The car model tests need only
tflite-runtime. `pibake bake`'s cached conversion of a project's Keras model is tested in test_bake_keras.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pibake import resources
from pibake.convert import keras as converter
from pibake.convert.tflite import tflite_min_runtime_version, tflite_ops
from pibake.errors import ToolMissing, UsageError, VerificationFailed
from tests.conftest import REPO, run_tensorflow

MODELS = REPO / "models"
CONVERTER = REPO / "scripts" / "convert_model.py"
SAMPLES = sorted((MODELS / "samples").glob("*.png"))
# What tflite-runtime 2.11 on the Pi must be able to run: plain float32 builtins, all at version 1.
PI_OPS = {"CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D", "MEAN", "FULLY_CONNECTED", "RELU", "RESHAPE", "SOFTMAX"}


def _interpreter(model: Path) -> Any:
    from pibake_target.runtimes import load_interpreter

    interpreter, _ = load_interpreter(str(model))
    interpreter.allocate_tensors()
    return interpreter


def _run_tflite(model: Path, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    interpreter = _interpreter(model)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for row in x:
        interpreter.set_tensor(inp["index"], row[None].astype(np.float32))
        interpreter.invoke()
        results.append(np.array(interpreter.get_tensor(out["index"])[0]))
    return np.stack(results)


def _convert(*args: str, command: tuple[str, ...] = ("-m", "pibake.convert.keras")) -> subprocess.CompletedProcess[str]:
    """The converter's command line, in a subprocess (as a user, or `pibake.convert.to_tflite`, runs it)."""
    return subprocess.run(
        [sys.executable, *command, *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": resources.package_pythonpath()},
    )


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------- conversion (TensorFlow in subprocesses)

# Builds a tiny CNN (the car model's layer types, 16x16 input), saves it as .keras and .h5,
# and saves a batch of inputs with Keras's outputs for them.
_BUILD_TINY = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    import tensorflow as tf

    keras = tf.keras
    out = Path(sys.argv[1])
    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.layers.Input(shape=(16, 16, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
        keras.layers.AveragePooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.save(out / "tiny.keras")
    model.save(out / "tiny.h5")
    x = np.random.default_rng(3).random((5, 16, 16, 3), dtype=np.float32)
    np.save(out / "x.npy", x)
    np.save(out / "keras_out.npy", np.asarray(model(x, training=False)))
    # Dense on a 3-D input: FULLY_CONNECTED with keep_num_dims, an op version above 1.
    keras.Sequential([keras.layers.Input(shape=(4, 3)), keras.layers.Dense(2)]).save(out / "dense3d.keras")
    """
)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("tensorflow") is None:  # not imported here: see the module docstring
        pytest.skip("TensorFlow is the extra pibake[convert]: pip install -e '.[convert]'")
    out = tmp_path_factory.mktemp("tiny")
    run_tensorflow(_BUILD_TINY, str(out))
    return out


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_converts_keras_to_a_tflite_model_that_gives_keras_outputs(
    tiny_models: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / "tiny.tflite"
    res = _convert(str(tiny_models / f"tiny{suffix}"), "-o", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"wrote {out}" in res.stdout
    assert _files(tmp_path) == ["tiny.tflite"]  # no temporary file left next to it

    interpreter = _interpreter(out)
    [inp], [outp] = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape"]) == [1, 16, 16, 3]
    assert np.dtype(inp["dtype"]) == np.float32
    assert list(outp["shape"]) == [1, 3]
    assert np.dtype(outp["dtype"]) == np.float32

    x, expected = np.load(tiny_models / "x.npy"), np.load(tiny_models / "keras_out.npy")
    np.testing.assert_allclose(_run_tflite(out, x), expected, rtol=0, atol=1e-5)

    ops = tflite_ops(out.read_bytes())
    assert {name for name, _ in ops} <= PI_OPS, ops
    assert all(version == 1 for _, version in ops), ops


def test_json_report_names_the_tensorflow_version_and_the_ops(tiny_models: Path, tmp_path: Path) -> None:
    """What `pibake.convert.to_tflite` reads from the child: one JSON line on stdout."""
    out = tmp_path / "tiny.tflite"
    res = _convert(str(tiny_models / "tiny.keras"), "-o", str(out), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["output"] == str(out) and report["size"] == out.stat().st_size
    assert re.fullmatch(r"2\.\d+\.\d+", report["tensorflow"]), report
    assert [tuple(op) for op in report["ops"]] == tflite_ops(out.read_bytes())
    assert report["input_shape"] == [1, 16, 16, 3] and report["output_shape"] == [1, 3]


def test_help_describes_the_command_also_under_the_scripts_name() -> None:
    for command in (("-m", "pibake.convert.keras"), (str(CONVERTER),)):
        res = _convert("--help", command=command)
        assert res.returncode == 0, res.stderr
        assert "MODEL" in res.stdout and "-o" in res.stdout and ".keras" in res.stdout and ".h5" in res.stdout
    assert res.stdout.startswith("usage: convert_model.py ")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.keras", None, "no such file"),
        ("model.onnx", b"not keras", "expected a Keras model file ending in .keras or .h5"),
        ("model.txt", b"not keras", "expected a Keras model file ending in .keras or .h5"),
    ],
)
def test_bad_input_is_a_usage_error_with_a_message_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes | None, message: str
) -> None:
    """Refused before TensorFlow is imported: run in-process, through main()."""
    model = tmp_path / name
    if content is not None:
        model.write_bytes(content)
    before = _files(tmp_path)
    code = converter.main([str(model), "-o", str(tmp_path / "out.tflite")])
    err = capsys.readouterr().err
    assert code == UsageError.exit_code == 2
    assert message in err and f"{converter.COMMAND}: error: " in err
    assert "Traceback" not in err
    assert _files(tmp_path) == before


def test_missing_tensorflow_is_tool_missing_naming_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.keras"
    model.write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    code = converter.main([str(model), "-o", str(tmp_path / "out.tflite")])
    err = capsys.readouterr().err
    assert code == ToolMissing.exit_code == 5
    assert "TensorFlow is not installed" in err and "pip install 'pibake[convert]'" in err
    assert _files(tmp_path) == ["model.keras"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_file_that_is_not_a_keras_model_is_a_usage_error_and_writes_nothing(
    tiny_models: Path, tmp_path: Path, suffix: str
) -> None:
    model = tmp_path / f"fake{suffix}"
    model.write_bytes(b"this is not a Keras model\n" * 10)
    out = tmp_path / "out.tflite"
    out.write_bytes(b"previous model")  # an existing output stays as it was
    res = _convert(str(model), "-o", str(out))
    assert res.returncode == UsageError.exit_code, res.stdout + res.stderr
    assert f"{model} is not a Keras model Keras can load" in res.stderr
    assert "Traceback" not in res.stderr
    assert _files(tmp_path) == [model.name, "out.tflite"]
    assert out.read_bytes() == b"previous model"


def test_op_versions_newer_than_1_are_refused_unless_allowed(tiny_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "dense3d.tflite"
    res = _convert(str(tiny_models / "dense3d.keras"), "-o", str(out))
    assert res.returncode == VerificationFailed.exit_code, res.stdout + res.stderr
    assert (
        "FULLY_CONNECTED v" in res.stderr
        and "tflite-runtime 2.11" in res.stderr
        and "--allow-new-op-versions" in res.stderr
    )
    assert _files(tmp_path) == []

    res = _convert(str(tiny_models / "dense3d.keras"), "-o", str(out), "--allow-new-op-versions")
    assert res.returncode == 0, res.stdout + res.stderr
    assert _files(tmp_path) == ["dense3d.tflite"]


# ---------------------------------------------------------------- reading a .tflite without TensorFlow


def test_tflite_ops_reads_operator_codes_and_refuses_other_files(tmp_path: Path) -> None:
    car = (MODELS / "car.tflite").read_bytes()
    assert tflite_ops(car)
    assert re.fullmatch(r"\d+\.\d+\.\d+", tflite_min_runtime_version(car))
    with pytest.raises(ValueError, match="TFL3"):
        tflite_ops(b"PK\x03\x04 a zip file, not a flatbuffer")


# ---------------------------------------------------------------- the committed car model (tflite-runtime only)


def test_car_model_has_the_contract_the_pi_relies_on() -> None:
    model = MODELS / "car.tflite"
    assert (MODELS / "labels.txt").read_text(encoding="utf-8") == "car\nother\n"
    interpreter = _interpreter(model)
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape"]) == [1, 128, 128, 3]
    assert np.dtype(inp["dtype"]) == np.float32
    assert list(out["shape"]) == [1, 2]
    assert np.dtype(out["dtype"]) == np.float32

    ops = tflite_ops(model.read_bytes())
    assert {name for name, _ in ops} <= PI_OPS, ops
    assert all(version == 1 for _, version in ops), ops

    probabilities = _run_tflite(model, np.random.default_rng(0).random((3, 128, 128, 3), dtype=np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)  # softmax
    assert (probabilities >= 0).all()


def test_samples_are_128px_rgb_pngs_named_by_their_label() -> None:
    assert {p.name.rsplit("_", 1)[0] for p in SAMPLES} == {"car", "other"}
    for path in SAMPLES:
        assert re.fullmatch(r"(car|other)_\d+\.png", path.name), path.name
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (128, 128)), path.name


def test_car_model_classifies_every_sample_as_its_name_says() -> None:
    from pibake_target.predict import predict

    result = predict(str(MODELS / "car.tflite"), str(MODELS / "labels.txt"), [str(p) for p in SAMPLES])
    assert [r["image"] for r in result["results"]] == [p.name for p in SAMPLES]
    for r in result["results"]:
        assert r["label"] == r["image"].rsplit("_", 1)[0], r
        assert r["probability"] > 0.9, r


def test_model_card_quotes_the_measured_metrics() -> None:
    metrics = json.loads((MODELS / "car_metrics.json").read_text(encoding="utf-8"))
    card = (MODELS / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert metrics["tflite"]["bytes"] == (MODELS / "car.tflite").stat().st_size
    accuracy = metrics["held_out_tflite"]["accuracy"]
    assert f"{accuracy * 100:.1f} %" in card
    assert f"{metrics['tflite']['bytes']:,}" in card
