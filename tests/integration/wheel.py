"""pibake's wheel in a fresh venv, and a tiny model of the test's own, for tests that run pibake as a user does.

The wheel is built from this checkout offline (hatchling, the dev extra, without build isolation) and installed
with --no-deps; the venv sees the dependencies through a .pth file naming this venv's site-packages directory. A
plain path line adds the directory without reading the .pth files in it, so this checkout's editable install stays
out: `import pibake` is the wheel's.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO

# A Keras model with a 16x16 RGB input and 3 class scores (the car model: 2 classes at 128x128), converted to TFLite,
# in a subprocess (this process keeps the host's tflite-runtime alone, as tests/unit/test_convert.py).
_BUILD_TINY = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(7)
    model = keras.Sequential([
        keras.layers.Input(shape=(16, 16, 3)),
        keras.layers.Conv2D(2, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    open(sys.argv[1], "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    """
)


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    """ARGV's stdout; the test fails with both streams when it exits non-zero."""
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{argv} exited {res.returncode}:\n{res.stdout}\n{res.stderr[-8000:]}"
    return res.stdout


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def install(tmp: Path) -> Path:
    """A fresh venv under TMP with pibake's wheel installed and this venv's packages as its dependencies."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling builds the wheel offline: it is in the dev extra (pip install -e '.[dev]')")
    env = _clean_env()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(REPO)], cwd=tmp, env=env)
    [wheel] = (tmp / "dist").glob("pibake-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)], cwd=tmp, env=env)
    purelib = run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp, env=env
    )
    (Path(purelib.strip()) / "pibake-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def outside(work: Path, venv: Path) -> dict[str, str]:
    """Make WORK, a directory with no checkout in it or above it; return an environment whose PATH starts at VENV.

    This venv's bin/ comes next: a pipx install has Ansible's programs beside pibake's, and the dependencies here
    come from this venv (the .pth file), their programs with them.
    """
    work.mkdir(parents=True, exist_ok=True)
    assert not any((d / "galaxy.yml").exists() for d in (work, *work.parents))
    env = _clean_env()
    env["PATH"] = os.pathsep.join([str(venv / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def tiny_model(work: Path, env: dict[str, str]) -> Path:
    """WORK/tiny.tflite (16x16 RGB in, 3 classes out) with labels.txt and two samples in samples/: a model that is
    not the car model in input size or class count. Skips without TensorFlow (pibake[convert])."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is the extra pibake[convert]: pip install -e '.[convert]'")
    model = work / "tiny.tflite"
    run([sys.executable, "-c", _BUILD_TINY, str(model)], cwd=work, env=env, timeout=300)
    (work / "labels.txt").write_text("yes\nno\nmaybe\n")
    (work / "samples").mkdir(exist_ok=True)
    Image.new("RGB", (32, 32), (200, 40, 40)).save(work / "samples" / "red.png")
    Image.new("RGB", (24, 40), (20, 90, 220)).save(work / "samples" / "blue.png")
    return model


def tiny_onnx_model(path: Path, size: int = 24, classes: int = 4) -> Path:
    """PATH, an ONNX classifier: input "pixels", float32 NHWC (batch, SIZE, SIZE, 3) as the Pi-side package feeds it
    (batch dimension dynamic, "N", as exporters write it), output "probabilities", float32 (batch, CLASSES), a
    softmax; with labels.txt (CLASSES labels) and two samples in samples/ beside it, as tiny_model leaves them, so
    use a directory of its own. Its defaults differ from tiny_model's (16x16, 3 classes) and the car model's (128x128,
    2) in input size and class count. Written as protobuf bytes (tests/onnx_models.py): needs neither the onnx
    package nor TensorFlow; onnxruntime (the test extra) runs it here, the onnxruntime lock's wheels on the Pi."""
    from tests import onnx_models

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_models.classifier(size, size, classes))
    (path.parent / "labels.txt").write_text("".join(f"class-{i}\n" for i in range(classes)))
    (path.parent / "samples").mkdir(exist_ok=True)
    Image.new("RGB", (size + 6, size + 6), (230, 160, 20)).save(path.parent / "samples" / "amber.png")
    Image.new("RGB", (size - 4, size + 12), (30, 30, 30)).save(path.parent / "samples" / "dark.png")
    return path
