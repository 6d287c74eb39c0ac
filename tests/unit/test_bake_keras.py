"""`pibake bake` on a Keras project: the model converted into build/ (cached), then baked as the .tflite it became.

The conversions are real (pibake.convert runs pibake.convert.keras in a child Python on tiny Keras models built here,
also in a child): TensorFlow, the extra pibake[convert], never enters this process, and the tests say so. Only the
emulated Pi is left out: the one test that runs bake() whole puts stand-ins where it boots, provisions and asks the
guest, as the model's path through bake is what is tested here; tests/integration bakes .tflite models for real.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pibake import bake, convert, project, report
from pibake.emulate import guest, sshkey
from pibake.errors import ToolMissing, UsageError
from pibake.image import build as image_build
from pibake.image import finalize
from pibake.image import prepare as image_prepare
from tests.conftest import REPO, run_cli, run_tensorflow

LABELS = "north\nsouth\n"
SIZE = 16

# Two tiny classifiers of the same shape (16x16 RGB in, 2 softmax out) but other weights, as .keras and .h5, and
# Keras's outputs on the project's samples (read as the Pi-side package reads them: RGB / 255).
_BUILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    keras = tf.keras
    out = Path(sys.argv[1])
    samples = sorted((out / "samples").glob("*.png"))
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / np.float32(255) for p in samples])
    outputs = {}
    for name, seed in (("tiny", 7), ("other", 8)):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([
            keras.layers.Input(shape=(16, 16, 3)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ])
        model.save(out / f"{name}.keras")
        outputs[name] = np.asarray(model(x, training=False)).tolist()
        if name == "tiny":
            model.save(out / "tiny.h5")
    (out / "keras_outputs.json").write_text(json.dumps({"samples": [p.name for p in samples], **outputs}))
    """
)


def _samples(directory: Path) -> None:
    (directory / "samples").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), (200, 40, 40)).save(directory / "samples" / "red.png")
    gradient = np.linspace(0, 255, SIZE * SIZE * 3).reshape(SIZE, SIZE, 3).astype(np.uint8)
    Image.fromarray(gradient, "RGB").save(directory / "samples" / "ramp.png")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.keras, tiny.h5, other.keras, samples/ and keras_outputs.json, built by TensorFlow in a child Python."""
    if importlib.util.find_spec("tensorflow") is None:  # not imported here: see the module docstring
        pytest.skip("TensorFlow is the extra pibake[convert]: pip install -e '.[convert]'")
    out = tmp_path_factory.mktemp("keras")
    _samples(out)
    run_tensorflow(_BUILD, str(out))
    return out


def _project(directory: Path, model: Path | None = None, *, name: str = "tiny.keras", toml: str = "") -> Path:
    """A project in DIRECTORY: MODEL copied in as NAME (default: a stand-in .keras that passes load's byte check),
    labels.txt and samples/ beside it, and a pibake.toml naming it (plus TOML)."""
    directory.mkdir(parents=True, exist_ok=True)
    if model is not None:
        shutil.copyfile(model, directory / name)
    else:
        with zipfile.ZipFile(directory / name, "w") as z:
            z.writestr("config.json", "{}")
    (directory / "labels.txt").write_text(LABELS)
    _samples(directory)
    (directory / "pibake.toml").write_text(f'[model]\nfile = "{name}"\n{toml}')
    return directory


def _tflite_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


class _Counting:
    """The real converter run, counted (the conversion itself is never replaced in these tests)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.real = convert._run_converter
        monkeypatch.setattr(convert, "_run_converter", self)

    def __call__(self, model: Path, tflite: Path) -> dict[str, Any]:
        self.calls += 1
        return self.real(model, tflite)


# ---------------------------------------------------------------- what bake takes (no TensorFlow needed)


@pytest.mark.parametrize(
    ("base", "runtime"),
    [
        ("debian-trixie-arm64", "ai-edge-litert"),
        ("debian-bookworm-armhf", "tflite-runtime"),
        ("debian-bullseye", "tflite-runtime"),
    ],
)
def test_a_keras_model_is_no_longer_refused_and_gets_the_bases_tflite_runtime(
    tmp_path: Path, base: str, runtime: str
) -> None:
    board = "pi2" if base != "debian-trixie-arm64" else "pi3b-plus"
    proj = project.load(_project(tmp_path, toml=f'[target]\nboard = "{board}"\nbase = "{base}"\n'))
    assert proj.model.format == "keras" and "tensorflow" not in sys.modules  # load reads its bytes only
    assert bake.unsupported(proj) == []
    assert bake.project_runtime(proj).name == runtime


def test_a_keras_model_with_another_runtime_named_is_still_refused_by_key(tmp_path: Path) -> None:
    proj = project.load(_project(tmp_path))
    named = dataclasses.replace(proj, runtime=project.Runtime("ai-edge-litert", "2.2.0"))
    assert bake.unsupported(named) == [
        "runtime: the debian-trixie-arm64 base runs .keras models with ai-edge-litert 2.3.0 only"
    ]


def test_the_model_bake_swaps_in_must_be_one_it_runs(tmp_path: Path) -> None:
    proj = project.load(_project(tmp_path))
    with pytest.raises(UsageError, match=r"pibake\.toml:2: model\.file: .*tiny\.keras: bake runs \.tflite and \.onnx"):
        project.with_model(proj, tmp_path / "tiny.keras")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "tiny.tflite").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(UsageError, match=r"tiny\.tflite \(converted from tiny\.keras\): not a TFLite model"):
        project.with_model(proj, tmp_path / "build" / "tiny.tflite")


def test_a_tflite_project_is_prepared_as_it_is() -> None:
    car = project.load(REPO / "examples" / "car", check_model=False)
    assert bake.prepare_model(car) == (car, None)


def test_without_tensorflow_bake_stops_first_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    monkeypatch.setattr(image_build, "build_image", lambda *a, **k: pytest.fail("bake went on without TensorFlow"))
    directory = _project(tmp_path)
    said: list[str] = []
    with pytest.raises(ToolMissing) as missing:
        bake.bake(project.load(directory), say=said.append)
    assert str(missing.value).startswith(f"{directory / 'tiny.keras'}: converting a Keras model to TFLite needs ")
    assert "TensorFlow, which is not installed here" in str(missing.value)
    assert "pip install 'pibake[convert]'" in str(missing.value)
    assert not (directory / "build").exists()  # nothing written
    assert said[0] == "convert..." and "image..." not in said

    res = run_cli(["bake", str(directory)])
    assert res.code == ToolMissing.exit_code == 5, res.err
    assert "pip install 'pibake[convert]'" in res.err and "Traceback" not in res.err


def test_a_bake_that_cannot_be_emulated_converts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile is checked before the conversion, the first work: a wrong --profile costs no TensorFlow run."""
    monkeypatch.setattr(convert, "to_tflite", lambda *a: pytest.fail("converted before the profile was checked"))
    directory = _project(tmp_path)
    with pytest.raises(UsageError, match="unknown machine profile 'nope'"):
        bake.bake(project.load(directory), profile="nope")
    assert not (directory / "build").exists()


def test_a_converter_that_cannot_import_tensorflow_is_tool_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's ImportError, carried to this process by its exit code (pibake.errors' kinds)."""
    shadow = tmp_path / "shadow" / "tensorflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named tensorflow (simulated)")\n')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(convert, "tensorflow_missing", lambda: None)  # this process finds it; the child does not
    directory = _project(tmp_path / "p")
    with pytest.raises(ToolMissing, match=r"TensorFlow is not installed here \(No module named tensorflow \(simulated"):
        convert.to_tflite(directory / "tiny.keras", directory / "build")
    assert _tflite_files(directory / "build") == []


# ---------------------------------------------------------------- converting (TensorFlow in a child)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_prepare_model_converts_into_the_build_dir_and_swaps_the_model(
    models: Path, tmp_path: Path, suffix: str
) -> None:
    directory = _project(tmp_path, models / f"tiny{suffix}", name=f"tiny{suffix}")
    proj = project.load(directory)
    assert any(s.startswith(f"labels and input size against tiny{suffix}:") for s in proj.skipped)

    prepared, conversion = bake.prepare_model(proj)

    assert "tensorflow" not in sys.modules  # converted in a child
    tflite = directory / "build" / "tiny.tflite"
    assert conversion is not None and conversion.tflite == tflite and not conversion.cached
    assert _tflite_files(directory / "build") == ["tiny.tflite", "tiny.tflite.json"]  # no temporary file left
    assert tflite.read_bytes()[4:8] == b"TFL3"
    keras_sha256 = hashlib.sha256((directory / f"tiny{suffix}").read_bytes()).hexdigest()
    assert conversion.keras_sha256 == keras_sha256
    assert conversion.tflite_sha256 == hashlib.sha256(tflite.read_bytes()).hexdigest()
    assert re.fullmatch(r"\d+\.\d+\.\d+", conversion.tensorflow)
    assert conversion.describe() == (
        f"converted from {directory / f'tiny{suffix}'} (sha256 {keras_sha256}) with TensorFlow {conversion.tensorflow}"
    )

    m = prepared.model
    assert (m.file, m.format) == (tflite, "tflite")
    assert (m.labels_file, m.labels, m.samples, m.tolerance) == (
        proj.model.labels_file,
        ("north", "south"),
        proj.model.samples,
        proj.model.tolerance,
    )
    # Checked as load checks a .tflite: the shapes read, the size filled in, the Keras skip gone.
    assert (m.input_shape, m.output_count, m.preprocessing.size) == ((1, SIZE, SIZE, 3), 2, (SIZE, SIZE))
    assert not any(s.startswith(f"labels and input size against tiny{suffix}:") for s in prepared.skipped)
    for table in ("path", "target", "runtime", "service", "system", "provision"):
        assert getattr(prepared, table) == getattr(proj, table), table

    # From here on it is a .tflite project: the reference run, the runtime, the model role's files and vars.
    expected = json.loads((models / "keras_outputs.json").read_text())
    names = [p.name for p in m.samples]
    host = bake._vectors(bake.host_outputs(prepared), names, "host")
    want = dict(zip(expected["samples"], expected["tiny"], strict=True))
    np.testing.assert_allclose(host, [want[n] for n in names], rtol=0, atol=1e-5)
    assert bake.project_runtime(prepared).name == "ai-edge-litert"
    version = bake.stage_model(prepared, tmp_path / "staged")
    assert (tmp_path / "staged" / "tiny.tflite").read_bytes() == tflite.read_bytes() and version.startswith("tiny-")
    values = bake.provision_vars(prepared, tmp_path / "staged", version)
    assert values["model_file"] == "tiny.tflite"
    assert values["inference_service_model_path"] == "/opt/pibake/model/current/tiny.tflite"
    assert bake.unsupported(prepared) == []


def test_a_second_bake_converts_nothing_until_the_keras_file_changes(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _project(tmp_path, models / "tiny.keras")
    counted = _Counting(monkeypatch)
    proj = project.load(directory)
    first = bake.prepare_model(proj)[1]
    assert first is not None and counted.calls == 1
    tflite, record = directory / "build" / "tiny.tflite", directory / "build" / "tiny.tflite.json"
    stamps = (tflite.stat().st_mtime_ns, record.stat().st_mtime_ns)

    again = bake.prepare_model(project.load(directory))[1]
    assert counted.calls == 1  # nothing converted
    assert (tflite.stat().st_mtime_ns, record.stat().st_mtime_ns) == stamps
    assert again == dataclasses.replace(first, cached=True)

    # Another Keras file under the same name: converted again, into the same place.
    shutil.copyfile(models / "other.keras", directory / "tiny.keras")
    changed = bake.prepare_model(project.load(directory))[1]
    assert counted.calls == 2 and changed is not None and not changed.cached
    assert changed.keras_sha256 != first.keras_sha256 and changed.tflite_sha256 != first.tflite_sha256
    assert json.loads(record.read_text())["keras_sha256"] == changed.keras_sha256

    # A .tflite that is not the one recorded (edited, or half-written by some other program) is not trusted.
    tflite.write_bytes(tflite.read_bytes()[:100])
    redone = bake.prepare_model(project.load(directory))[1]
    assert counted.calls == 3 and redone is not None and redone.tflite_sha256 == changed.tflite_sha256


def test_a_file_that_is_not_a_keras_model_is_refused_naming_it_and_why(models: Path, tmp_path: Path) -> None:
    directory = _project(tmp_path)  # a zip with a config.json: load's byte check passes, Keras does not load it
    proj = project.load(directory)
    with pytest.raises(UsageError) as refused:
        bake.prepare_model(proj)
    assert str(refused.value).startswith(f"{directory / 'tiny.keras'} is not a Keras model Keras can load: ")
    assert _tflite_files(directory / "build") == []


@pytest.fixture(scope="module")
def converted(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.keras converted once (build/tiny.tflite), for the checks on the result."""
    directory = tmp_path_factory.mktemp("converted")
    return convert.to_tflite(models / "tiny.keras", directory).tflite


@pytest.mark.parametrize(
    ("labels", "toml", "says"),
    [
        (
            "north\nsouth\neast\n",
            "",
            r"pibake\.toml:3: model\.labels: 3 labels, but tiny\.tflite \(converted from tiny\.keras, read with "
            r"[^)]+\) has 2 outputs",
        ),
        (
            LABELS,
            "[model.preprocessing]\nsize = [24, 24]\n",
            r"pibake\.toml:5: model\.preprocessing\.size: is \[24, 24\] but tiny\.tflite \(converted from tiny\.keras, "
            r"read with [^)]+\) takes 16x16 images",
        ),
    ],
)
def test_a_conversion_that_does_not_fit_the_project_is_refused_by_key(
    converted: Path, tmp_path: Path, labels: str, toml: str, says: str
) -> None:
    directory = _project(tmp_path, toml='labels = "labels.txt"\n' + toml)
    (directory / "labels.txt").write_text(labels)
    proj = project.load(directory)
    with pytest.raises(UsageError, match=says):
        project.with_model(proj, converted)


# ---------------------------------------------------------------- the whole bake, the emulated Pi stood in for


def test_a_keras_project_bakes_as_its_tflite_and_the_report_says_where_it_came_from(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    directory = _project(tmp_path / "p", models / "tiny.keras", toml="[service]\nenabled = false\n")
    said: list[str] = []
    seen: dict[str, Any] = {}

    def build_image(spec: Any, **_: Any) -> Any:
        assert (directory / "build" / "tiny.tflite").is_file()  # converted before any image or emulation
        return SimpleNamespace(path=tmp_path / "base.img")

    def prepare(base: Path, *, output: Path, **_: Any) -> None:
        output.write_bytes(b"card")

    def provision(collection: Path, inventory: Path, *, playbook: Path, extra_vars_file: Path) -> None:
        seen["vars"] = json.loads(extra_vars_file.read_text())
        seen["staged"] = sorted(p.name for p in Path(seen["vars"]["model_source_dir"]).iterdir())

    def predict_on_guest(on: Any, model_dir: str, *, model_file: str, python: str) -> dict[str, object]:
        seen["model_file"], seen["python"] = model_file, python
        return reference[0]

    real_host_outputs = bake.host_outputs
    reference: list[dict[str, object]] = []

    def host_outputs(proj: project.Project, staged: Path | None = None) -> dict[str, object]:
        reference[:] = [real_host_outputs(proj, staged)]
        seen["reference_model"] = proj.model.file
        return reference[0]

    monkeypatch.setattr(image_build, "build_image", build_image)
    monkeypatch.setattr(image_prepare, "prepare", prepare)
    monkeypatch.setattr(sshkey, "ensure_keypair", lambda: SimpleNamespace(public_key="ssh-ed25519 AAAA test"))
    monkeypatch.setattr(guest, "start", lambda *a, **k: SimpleNamespace())
    monkeypatch.setattr(guest, "stop", lambda name: SimpleNamespace(clean=True))
    monkeypatch.setattr(bake, "provision", provision)
    monkeypatch.setattr(bake, "predict_on_guest", predict_on_guest)
    monkeypatch.setattr(bake, "host_outputs", host_outputs)
    monkeypatch.setattr(finalize, "finalize", lambda image, board: SimpleNamespace(sha256="ab" * 32))

    result = bake.bake(project.load(directory), say=said.append)

    tflite = directory / "build" / "tiny.tflite"
    assert said[0] == "convert..." and re.fullmatch(r"convert: \d+ s", said[1]), said
    assert (
        said[2]
        == f"convert: tiny.keras (converted with TensorFlow {str(result.report.model_origin).split()[-1]}) is {tflite}"
    )
    assert said.index("image...") == 3
    assert seen["reference_model"] == tflite
    assert (seen["model_file"], seen["python"]) == ("tiny.tflite", bake.VENV_PYTHON)
    assert seen["vars"]["model_file"] == "tiny.tflite" and "tiny.tflite" in seen["staged"]
    assert seen["vars"]["python_runtime_lock"] == bake.LOCKED_RUNTIMES["debian-trixie-arm64"]["ai-edge-litert"]
    r = result.report
    assert r.passed and result.image == directory / "build" / "tiny.img"
    assert r.runtime == "ai-edge-litert" and next(iter(r.timings)) == "convert"
    keras_sha256 = hashlib.sha256((directory / "tiny.keras").read_bytes()).hexdigest()
    origin = f"converted from {directory / 'tiny.keras'} (sha256 {keras_sha256}) with TensorFlow "
    assert r.model == "tiny.tflite" and r.model_origin is not None and r.model_origin.startswith(origin)
    assert f"| Model | tiny.tflite, {report._md(r.model_origin)} |" in result.report_md.read_text()
    assert "tensorflow" not in sys.modules

    said.clear()
    again = bake.bake(project.load(directory), say=said.append)
    assert any(line.startswith("convert: tiny.keras (unchanged") for line in said), said
    assert again.report.model_origin == r.model_origin
