"""pibake.toml: the keys' defaults, every check, and errors that name the file, the key and its line."""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import struct
import subprocess
import textwrap
import zoneinfo
from pathlib import Path

import pytest

from pibake import boards, project
from pibake.errors import UsageError
from tests.conftest import REPO, run_tensorflow

MODELS = REPO / "models"
EXAMPLE = REPO / "examples" / "car"


def _key_line(kind: str, body: bytes = b"\x01" * 32, comment: str = "me@laptop") -> str:
    """An OpenSSH public key line whose blob starts with its type, as ssh-keygen writes them."""
    blob = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", len(body)) + body
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


ED25519 = _key_line("ssh-ed25519")


def _write(directory: Path, toml: str) -> Path:
    path = directory / "pibake.toml"
    path.write_text(textwrap.dedent(toml).lstrip("\n"))
    return path


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    """A project directory holding the bundled car model, its labels and samples, and no pibake.toml yet."""
    shutil.copy(MODELS / "car.tflite", tmp_path / "car.tflite")
    shutil.copy(MODELS / "labels.txt", tmp_path / "labels.txt")
    shutil.copytree(MODELS / "samples", tmp_path / "samples")
    return tmp_path


def _error(path: Path, **kwargs: object) -> str:
    with pytest.raises(UsageError) as e:
        project.load(path, **kwargs)  # type: ignore[arg-type]
    return str(e.value)


MINIMAL = """
[model]
file = "car.tflite"
"""


# ---------------------------------------------------------------- key positions


def test_key_lines_finds_tables_plain_dotted_and_quoted_keys() -> None:
    text = textwrap.dedent(
        """\
        # a comment with board = "x"
        top = 1
        [target]
        board = "pi4"   # trailing = comment
        "base" = 'x = y'
        a.b = 2

        [model.preprocessing]
        size = [
          224,
          224,
        ]
        mean = \"\"\"
        fake = 1
        \"\"\"
        scale = 0.5
        [system]
        wifi = { country = "GB", ssid = "x" }
        [[provision.items]]
        name = "n"
        """
    )
    lines = project.key_lines(text)
    assert lines["top"] == 2
    assert lines["target"] == 3
    assert lines["target.board"] == 4
    assert lines["target.base"] == 5
    assert lines["target.a"] == lines["target.a.b"] == 6
    assert lines["model"] == lines["model.preprocessing"] == 8
    assert lines["model.preprocessing.size"] == 9
    assert lines["model.preprocessing.mean"] == 13
    # Inside a multi-line array or string nothing is a key.
    assert "model.preprocessing.fake" not in lines
    assert "model.preprocessing.224" not in lines
    assert lines["model.preprocessing.scale"] == 16
    assert lines["system.wifi"] == 18
    assert lines["provision.items.name"] == 20
    assert "board" not in lines  # the comment's


def test_line_of_falls_back_to_the_enclosing_key_and_ignores_indices() -> None:
    lines = {"system": 3, "system.wifi": 5, "system.ssh_keys": 7}
    assert project.line_of(lines, "system.wifi.country") == 5  # inside an inline table
    assert project.line_of(lines, "system.ssh_keys[2]") == 7
    assert project.line_of(lines, "system.hostname") == 3  # not in the file: its table
    assert project.line_of(lines, "model.file") is None


# ---------------------------------------------------------------- defaults


def test_a_minimal_project_gets_every_default(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(proj, MINIMAL)
    monkeypatch.chdir("/")  # paths are the project file's, not the working directory's
    p = project.load(proj)
    assert p.path == proj / "pibake.toml" and p.root == proj
    assert p.target.board == boards.DEFAULT_BOARD
    # No target.base: the board's (pi3b-plus has a 64-bit core).
    assert (p.target.base, p.target.base_kind, p.target.arch) == ("debian-trixie-arm64", "debian", "arm64")
    assert p.target.image_size_mb == 2048
    assert p.model.file == proj / "car.tflite" and p.model.format == "tflite"
    assert p.model.labels == ("car", "other")
    assert [s.name for s in p.model.samples] == sorted(s.name for s in (MODELS / "samples").glob("*.png"))
    assert p.model.tolerance == 1e-5
    # No size given: the model's own input, read from the model.
    assert p.model.preprocessing.size == (128, 128)
    assert p.model.input_shape == (1, 128, 128, 3) and p.model.output_count == 2
    assert p.model.preprocessing.scale == pytest.approx(1 / 255)
    assert p.model.preprocessing.mean == (0.0, 0.0, 0.0) and p.model.preprocessing.std == (1.0, 1.0, 1.0)
    assert p.model.preprocessing.channel_order == "rgb"
    assert p.runtime == project.Runtime("auto", None)
    assert p.service == project.Service(True, 8000, "car")
    assert p.system == project.System("raspberrypi", "pi", (), "Etc/UTC", "C.UTF-8", None, ())
    assert p.provision == project.Provision((), ())
    assert p.skipped == ()


def test_every_setting_is_read(proj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (proj / "play.yml").write_text("- hosts: all\n")
    (proj / "roles" / "mine" / "tasks").mkdir(parents=True)
    (proj / "keys.pub").write_text(f"# mine\n{_key_line('ssh-rsa', b'x' * 64)}\n\n{ED25519}\n")
    (proj / "other").mkdir()
    shutil.move(proj / "labels.txt", proj / "other" / "classes.txt")
    _write(
        proj,
        f"""
        [target]
        board = "pi2"
        base = "bookworm-armhf-lite"
        image_size_mb = 4096

        [model]
        file = "car.tflite"
        labels = "other/classes.txt"
        samples = ["samples/car_*.png", "samples/other_1.png", "samples/car_1.png"]
        tolerance = 0.001

        [model.preprocessing]
        size = [128, 128]
        scale = 0.5
        mean = [0.1, 0.2, 0.3]
        std = 2
        channel_order = "bgr"

        [runtime]
        name = "tflite-runtime"
        version = "2.14.0"

        [service]
        enabled = false
        port = 9000
        model_name = "cars"

        [system]
        hostname = "Cam-01"
        user = "ops"
        ssh_keys = ["{ED25519}", "keys.pub"]
        timezone = "Europe/London"
        locale = "en_GB.UTF-8"
        packages = ["htop", "libgomp1"]

        [system.wifi]
        country = "GB"
        ssid = "Lab net"
        psk_env = "LAB_PSK"

        [provision]
        playbooks = ["play.yml"]
        roles = ["roles/mine"]
        """,
    )
    p = project.load(proj, environ={"LAB_PSK": "correct horse"})
    assert p.target == project.Target("pi2", "bookworm-armhf-lite", "raspios", None, "armhf", 4096)
    assert p.model.labels_file == proj / "other" / "classes.txt"
    # Globs and files, in the order given, each once.
    assert [s.name for s in p.model.samples] == ["car_1.png", "car_2.png", "car_3.png", "other_1.png"]
    assert p.model.tolerance == 0.001
    assert p.model.preprocessing == project.Preprocessing((128, 128), 0.5, (0.1, 0.2, 0.3), (2.0, 2.0, 2.0), "bgr")
    assert p.runtime == project.Runtime("tflite-runtime", "2.14.0")
    assert p.service == project.Service(False, 9000, "cars")
    assert p.system.hostname == "Cam-01" and p.system.user == "ops"
    assert p.system.ssh_keys == (ED25519, _key_line("ssh-rsa", b"x" * 64), ED25519)
    assert (p.system.timezone, p.system.locale, p.system.packages) == (
        "Europe/London",
        "en_GB.UTF-8",
        ("htop", "libgomp1"),
    )
    assert p.system.wifi == project.WiFi("GB", "Lab net", "correct horse")
    assert "correct horse" not in repr(p)
    assert p.provision == project.Provision((proj / "play.yml",), (proj / "roles" / "mine",))


def test_a_directory_or_the_file_itself_can_be_named(proj: Path) -> None:
    path = _write(proj, MINIMAL)
    assert project.load(path).path == project.load(proj).path == path


def test_no_project_file_says_how_to_make_one(tmp_path: Path) -> None:
    message = _error(tmp_path)
    assert "no pibake.toml" in message and "pibake init" in message


def test_invalid_toml_is_a_usage_error_with_its_position(proj: Path) -> None:
    path = _write(proj, '[model]\nfile = "car.tflite\n')
    message = _error(proj)
    assert message.startswith(f"{path}: not valid TOML") and "line 2" in message


# ---------------------------------------------------------------- errors name the key and its line


def test_a_wrong_type_names_the_file_the_key_and_its_line(proj: Path) -> None:
    path = _write(proj, MINIMAL + 'tolerance = "tiny"\n')
    assert _error(proj) == f"{path}:3: model.tolerance: must be a number, got a string ('tiny')"


@pytest.mark.parametrize(
    ("toml", "line", "key", "suggestion"),
    [
        (MINIMAL + "tolerence = 1e-4\n", 3, "model.tolerence", "did you mean model.tolerance?"),
        ('[target]\nbord = "pi4"\n' + MINIMAL, 2, "target.bord", "did you mean target.board?"),
        ('board = "pi4"\n' + MINIMAL, 1, "board", "did you mean target.board?"),
        (MINIMAL + "[modle.preprocessing]\nsize = [1, 1]\n", 3, "modle", "did you mean model?"),
        (MINIMAL + "[system.wfi]\nssid = 'x'\n", 3, "system.wfi", "did you mean system.wifi?"),
        (MINIMAL + "[service]\nport = 80\nhostname = 'pi'\n", 5, "service.hostname", "did you mean system.hostname?"),
    ],
)
def test_an_unknown_key_suggests_the_known_one(proj: Path, toml: str, line: int, key: str, suggestion: str) -> None:
    path = _write(proj, toml)
    assert _error(proj) == f"{path}:{line}: {key}: unknown key; {suggestion}"


def test_an_unknown_key_with_no_near_match_lists_the_table(proj: Path) -> None:
    _write(proj, MINIMAL + "[service]\nzzzzz = 1\n")
    assert "service.zzzzz: unknown key; known here: service.enabled, service.model_name, service.port" in _error(proj)


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ("[target]\nboard = 3\n", "target.board", "must be a string, got an integer (3)"),
        ("[target]\nimage_size_mb = 2.5\n", "target.image_size_mb", "must be an integer, got a number (2.5)"),
        ('[service]\nenabled = "yes"\n', "service.enabled", "must be true or false, got a string ('yes')"),
        ("[service]\nport = 70000\n", "service.port", "must be between 1 and 65535, got 70000"),
        ("[system]\npackages = ['htop', 3]\n", "system.packages[1]", "must be a string, got an integer (3)"),
        ("[system]\nssh_keys = 3\n", "system.ssh_keys", "must be a list of strings, got an integer (3)"),
    ],
)
def test_wrong_types(proj: Path, extra: str, key: str, message: str) -> None:
    path = _write(proj, MINIMAL + extra)
    lines = project.key_lines(path.read_text())
    assert _error(proj) == f"{path}:{project.line_of(lines, key)}: {key}: {message}"


# ---------------------------------------------------------------- files


def test_a_missing_model_file_names_the_key_and_line(proj: Path) -> None:
    path = _write(proj, '[target]\nboard = "pi4"\n\n[model]\nfile = "models/nope.tflite"\n')
    assert _error(proj) == f"{path}:5: model.file: no such file: {proj / 'models' / 'nope.tflite'}"


def test_model_file_is_required(proj: Path) -> None:
    path = _write(proj, "[model]\ntolerance = 0.1\n")
    assert _error(proj) == f"{path}:1: model.file: is required"
    path = _write(proj, "[target]\n")
    assert _error(proj) == f"{path}: model.file: is required"


def test_missing_labels_samples_playbooks_and_roles(proj: Path) -> None:
    path = _write(proj, MINIMAL + 'labels = "classes.txt"\n')
    assert _error(proj) == f"{path}:3: model.labels: no such file: {proj / 'classes.txt'}"
    path = _write(proj, MINIMAL + 'samples = "pics/*.png"\n')
    assert _error(proj) == f"{path}:3: model.samples: 'pics/*.png' matches no file in {proj}"
    path = _write(proj, MINIMAL + 'samples = ["samples/car_1.png", "samples/gone.png"]\n')
    assert _error(proj) == f"{path}:3: model.samples[1]: no such file: {proj / 'samples' / 'gone.png'}"
    path = _write(proj, MINIMAL + '[provision]\nplaybooks = [\n  "extra.yml",\n]\n')
    assert _error(proj) == f"{path}:4: provision.playbooks[0]: no such file: {proj / 'extra.yml'}"
    path = _write(proj, MINIMAL + '[provision]\nroles = ["roles/mine"]\n')
    assert _error(proj) == f"{path}:4: provision.roles[0]: no directory {proj / 'roles' / 'mine'}"


def test_labels_default_to_labels_txt_beside_the_model(proj: Path) -> None:
    (proj / "m").mkdir()
    shutil.move(proj / "car.tflite", proj / "m" / "car.tflite")
    _write(proj, '[model]\nfile = "m/car.tflite"\nsamples = "samples"\n')
    message = _error(proj)
    assert f"model.labels: no such file: {proj / 'm' / 'labels.txt'}" in message
    shutil.move(proj / "labels.txt", proj / "m" / "labels.txt")
    assert project.load(proj).model.labels_file == proj / "m" / "labels.txt"


def test_empty_and_duplicated_labels(proj: Path) -> None:
    path = _write(proj, MINIMAL)
    (proj / "labels.txt").write_text("\n\n")
    assert _error(proj) == f"{path}:1: model.labels: {proj / 'labels.txt'} holds no labels (one a line)"
    (proj / "labels.txt").write_text("car\ncar\n")
    assert "names car more than once" in _error(proj)


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("model.txt", b"hello", "model.txt: not a model file pibake takes (.tflite, .onnx, .keras, .h5)"),
        ("model.tflite", b"", "the file is empty"),
        ("model.tflite", b"this is not a flatbuffer at all", "not a TFLite model (no TFL3 FlatBuffer identifier"),
        ("model.onnx", b"ir_version: 8\ngraph {}\n", "not an ONNX model (the file is text)"),
        ("model.onnx", b"\x08\x08\x3a\xff\x01\x00", "not an ONNX model (truncated)"),
        ("model.onnx", b"\x08\x08\x12\x02\xff\xfe", "not an ONNX model (no ir_version and graph fields)"),
        ("model.keras", b"\x89HDF\r\n\x1a\n", "not a Keras .keras model (not a zip archive)"),
        ("model.h5", b"PK\x03\x04" + b"\0" * 600, "not a Keras .h5 model (no HDF5 signature)"),
    ],
)
def test_a_file_that_is_not_a_model(proj: Path, name: str, content: bytes, problem: str) -> None:
    (proj / name).write_bytes(content)
    path = _write(proj, f'[model]\nfile = "{name}"\n')
    message = _error(proj)
    assert message.startswith(f"{path}:2: model.file: ")
    assert problem in message


def test_a_table_given_as_a_value(proj: Path) -> None:
    path = _write(proj, "service = 3\n" + MINIMAL)
    assert _error(proj) == f"{path}:1: service: must be a table ([service]), got an integer (3)"


def test_a_damaged_tflite_model_is_an_error_not_a_crash(proj: Path) -> None:
    # Cut short, the FlatBuffer still has its identifier; tflite-runtime 2.14 dies with SIGSEGV opening
    # it, in the child process that reads the shapes.
    (proj / "broken.tflite").write_bytes((MODELS / "car.tflite").read_bytes()[:4096])
    path = _write(proj, '[model]\nfile = "broken.tflite"\n')
    message = _error(proj)
    assert message.startswith(f"{path}:2: model.file: {proj / 'broken.tflite'}: ")
    assert "cannot load this model" in message or "the TFLite interpreter crashed loading it" in message


def _onnx_like() -> bytes:
    """ModelProto's wire format: ir_version 8 (field 1), producer_name (2), a graph (7) with a name."""
    graph = b"\x12\x03cnn"  # GraphProto.name
    return b"\x08\x08" + b"\x12\x07pytorch" + b"\x3a" + bytes([len(graph)]) + graph


def test_onnx_and_keras_models_are_checked_by_their_bytes_and_the_skip_recorded(proj: Path) -> None:
    (proj / "m.onnx").write_bytes(_onnx_like())
    _write(proj, '[model]\nfile = "m.onnx"\n')
    p = project.load(proj, check_model=False)  # by its bytes only: not opened with onnxruntime
    assert p.model.format == "onnx" and p.model.output_count is None and p.model.preprocessing.size is None
    if importlib.util.find_spec("onnx") is None:
        assert any("the onnx package is not installed" in s for s in p.skipped)

    import zipfile

    with zipfile.ZipFile(proj / "m.keras", "w") as z:
        z.writestr("config.json", "{}")
    _write(proj, '[model]\nfile = "m.keras"\n')
    keras = project.load(proj)
    assert keras.model.format == "keras"
    assert any("only TFLite and ONNX models are opened" in s for s in keras.skipped)
    (proj / "m.h5").write_bytes(b"\0" * 512 + b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # after a 512-byte user block
    _write(proj, '[model]\nfile = "m.h5"\n')
    assert project.load(proj).model.format == "keras"


def _onnx_classifier(proj: Path, **kwargs: object) -> None:
    """PROJ/m.onnx: a 24x24 RGB, 4-class classifier (tests/onnx_models.py), and its four labels."""
    from tests import onnx_models

    (proj / "m.onnx").write_bytes(onnx_models.classifier(24, 24, 4, **kwargs))  # type: ignore[arg-type]
    (proj / "labels.txt").write_text("north\neast\nsouth\nwest\n")


def test_an_onnx_model_is_opened_with_onnxruntime_as_the_pi_opens_it(proj: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
    _onnx_classifier(proj)
    _write(proj, '[model]\nfile = "m.onnx"\n')
    p = project.load(proj)
    # The dynamic batch dimension ("N") is read as 1, as the Pi-side package runs it.
    assert (p.model.input_shape, p.model.output_count, p.model.preprocessing.size) == ((1, 24, 24, 3), 4, (24, 24))
    assert not any("m.onnx" in s for s in p.skipped)  # neither the shapes' skip nor the onnx package's

    (proj / "labels.txt").write_text("north\nsouth\n")
    message = _error(proj)
    assert f"model.labels: 2 labels, but m.onnx (read with onnxruntime {ort.__version__}) has 4 outputs" in message
    (proj / "labels.txt").write_text("north\neast\nsouth\nwest\n")
    _write(proj, '[model]\nfile = "m.onnx"\npreprocessing.size = [32, 32]\n')
    assert "model.preprocessing.size: is [32, 32] but m.onnx" in _error(proj)


@pytest.mark.parametrize(
    ("dims", "says"),
    [
        (["N", 3, 24, 24], "takes input of shape [1, 3, 24, 24]; pibake feeds images as [1, height, width, 3]"),
        (["N", "height", "width", 3], "dynamic axis 1 ('height'), axis 2 ('width'); only the first (batch)"),
    ],
)
def test_an_onnx_model_the_pi_side_package_cannot_feed_is_refused(proj: Path, dims: list[object], says: str) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
    _onnx_classifier(proj, input_dims=dims)  # NCHW (PyTorch's layout), or a dynamic image size
    path = _write(proj, '[model]\nfile = "m.onnx"\n')
    message = _error(proj)
    assert message.startswith(f"{path}:2: model.file: ") and says in message, message


def test_without_onnxruntime_the_onnx_check_is_skipped_and_recorded(
    proj: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _onnx_classifier(proj)
    _write(proj, '[model]\nfile = "m.onnx"\n')
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    project._SHAPES.clear()
    p = project.load(proj)
    assert p.model.input_shape is None and p.model.preprocessing.size is None
    assert "labels and input size against m.onnx: onnxruntime is not installed on this machine" in " ".join(p.skipped)
    project._SHAPES.clear()


def test_labels_against_the_car_models_outputs(proj: Path) -> None:
    (proj / "labels.txt").write_text("car\nother\ntruck\n")
    path = _write(proj, MINIMAL)
    message = _error(proj)
    assert message.startswith(f"{path}:1: model.labels: 3 labels, but car.tflite (read with ")
    assert "has 2 outputs (output shape [1, 2])" in message


def test_check_model_false_does_not_open_the_model(proj: Path) -> None:
    (proj / "labels.txt").write_text("car\nother\ntruck\n")
    _write(proj, MINIMAL)
    p = project.load(proj, check_model=False)
    assert p.model.output_count is None and p.model.preprocessing.size is None


# A TFLite model with a 12x16 (width x height) RGB input and 3 class scores, made with TensorFlow
# in a subprocess (this process keeps the host's tflite-runtime alone, as tests/unit/test_convert.py).
_BUILD_TINY = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    w = tf.constant(tf.random.stateless_uniform((16 * 12 * 3, 3), seed=(1, 2)))

    @tf.function(input_signature=[tf.TensorSpec((1, 16, 12, 3), tf.float32)])
    def model(x):
        return tf.nn.softmax(tf.matmul(tf.reshape(x, (1, -1)), w))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    open(sys.argv[1], "wb").write(converter.convert())
    """
)


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is the extra pibake[convert]: pip install -e '.[convert]'")
    out = tmp_path_factory.mktemp("tiny") / "tiny.tflite"
    run_tensorflow(_BUILD_TINY, str(out))
    return out


def test_a_tiny_model_made_here_is_checked_against_labels_and_input_size(proj: Path, tiny_tflite: Path) -> None:
    shutil.copy(tiny_tflite, proj / "tiny.tflite")
    (proj / "labels.txt").write_text("a\nb\n")
    path = _write(proj, '[model]\nfile = "tiny.tflite"\n')
    message = _error(proj)
    assert message.startswith(f"{path}:1: model.labels: 2 labels, but tiny.tflite (read with ")
    assert "has 3 outputs (output shape [1, 3])" in message

    (proj / "labels.txt").write_text("a\nb\nc\n")
    p = project.load(proj)
    assert p.model.output_count == 3 and p.model.preprocessing.size == (12, 16)

    path = _write(proj, '[model]\nfile = "tiny.tflite"\n[model.preprocessing]\nsize = [16, 12]\n')
    message = _error(proj)
    assert message.startswith(f"{path}:4: model.preprocessing.size: is [16, 12] but tiny.tflite (read with ")
    assert message.endswith("takes 12x16 images (input shape [1, 16, 12, 3])")


# ---------------------------------------------------------------- samples


def test_a_sample_that_cannot_be_decoded_is_named(proj: Path) -> None:
    bad = proj / "samples" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    path = _write(proj, MINIMAL)
    message = _error(proj)
    assert message.startswith(f"{path}:1: model.samples: cannot decode {bad}: ")


def test_a_sample_that_is_not_png_or_jpeg_is_refused(proj: Path) -> None:
    (proj / "notes.png").write_text("not an image")
    path = _write(proj, MINIMAL + 'samples = "notes.png"\n')
    assert _error(proj) == (
        f"{path}:3: model.samples: {proj / 'notes.png'} is not a PNG or JPEG image "
        "(the service on the Pi takes only those)"
    )


def test_a_samples_directory_without_images(proj: Path) -> None:
    (proj / "empty").mkdir()
    (proj / "empty" / "README").write_text("x")
    path = _write(proj, MINIMAL + 'samples = "empty/"\n')
    assert _error(proj) == f"{path}:3: model.samples: no .png, .jpg, .jpeg files in {proj / 'empty'}"


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("size = [128]", "size", "must be [width, height], two positive integers, got a list [128]"),
        ("size = [128, 0]", "size", "must be [width, height], two positive integers"),
        ('size = "128x128"', "size", "must be [width, height], two positive integers, got a string"),
        ("size = [64, 64]", "size", "is [64, 64] but car.tflite (read with"),
        ("scale = -1", "scale", "must be > 0, got -1.0"),
        ("mean = [0.5, 0.5]", "mean", "must be one number or three (one per channel), got a list of 2"),
        ("mean = [0.5, 'x', 0.5]", "mean[1]", "must be a number, got a string ('x')"),
        ("std = [1, 0, 1]", "std", "must be > 0 (it divides), got [1.0, 0.0, 1.0]"),
        ('channel_order = "rgba"', "channel_order", 'must be "rgb" or "bgr", got \'rgba\''),
    ],
)
def test_bad_preprocessing(proj: Path, body: str, key: str, message: str) -> None:
    path = _write(proj, MINIMAL + "\n[model.preprocessing]\n" + body + "\n")
    assert _error(proj).startswith(f"{path}:5: model.preprocessing.{key}: {message}")


def test_tolerance_must_not_be_negative(proj: Path) -> None:
    path = _write(proj, MINIMAL + "tolerance = -1e-5\n")
    assert _error(proj) == f"{path}:3: model.tolerance: must be >= 0, got -1e-05"


# ---------------------------------------------------------------- target


def test_an_unknown_board_lists_the_known_ones(proj: Path) -> None:
    path = _write(proj, '[target]\nboard = "pi9"\n' + MINIMAL)
    assert _error(proj) == f"{path}:2: target.board: unknown board 'pi9'; known boards: {', '.join(boards.BOARDS)}"


def test_a_board_the_debian_base_cannot_boot_is_refused_with_the_reason(proj: Path) -> None:
    path = _write(proj, '[target]\nboard = "pi1"\n' + MINIMAL)
    message = _error(proj)
    assert message.startswith(
        f"{path}:2: target.board: base debian-bookworm-armhf (chosen for pi1: target.base is not set) cannot boot it: "
        "board pi1"
    )
    assert "ARMv6" in message and "Use Raspberry Pi OS for this board" in message
    path = _write(proj, '[target]\nboard = "pi-zero-2"\nbase = "debian-bullseye"\n' + MINIMAL)
    message = _error(proj)
    assert message.startswith(
        f"{path}:2: target.board: base debian-bullseye (target.base, line 3) cannot boot it: board pi-zero-2"
    )
    assert "Linux 5.10 kernel does not ship" in message


@pytest.mark.parametrize(
    ("target", "prefix", "remedy"),
    [
        (
            "image_size_mb = 300",
            "2: target.image_size_mb: image of 300 MiB leaves 40 MiB",
            "make the image 1284 MiB or more",
        ),
        (
            'board = "pi-zero-2"\nbase = "debian-bullseye"',
            "2: target.board: base debian-bullseye (target.base, line 3)",
            "Use a base with a newer kernel (debian-bookworm-armhf: Linux 6.1; debian-trixie-arm64: Linux 6.12)",
        ),
    ],
)
def test_a_mistake_in_the_file_is_told_by_its_key_not_by_a_command_line_option(
    proj: Path, target: str, prefix: str, remedy: str
) -> None:
    # The checks behind these are `image build`'s too (--size, --base): in pibake.toml the key is what to change.
    path = _write(proj, f"[target]\n{target}\n" + MINIMAL)
    message = _error(proj)
    assert message.startswith(f"{path}:{prefix}") and remedy in message
    assert not re.search(r"(?<![\w-])--[a-z]", message), message


@pytest.mark.parametrize(
    ("board", "base", "arch"),
    [
        ("pi2", "debian-bookworm-armhf", "armhf"),
        ("pi3", "debian-trixie-arm64", "arm64"),
        ("pi3b-plus", "debian-trixie-arm64", "arm64"),
        ("pi-zero-2", "debian-trixie-arm64", "arm64"),
        ("pi4", "debian-trixie-arm64", "arm64"),
    ],
)
def test_without_target_base_the_board_chooses_it(proj: Path, board: str, base: str, arch: str) -> None:
    _write(proj, f'[target]\nboard = "{board}"\n' + MINIMAL)
    t = project.load(proj).target
    assert (t.base, t.base_kind, t.arch) == (base, "debian", arch)


def test_the_schema_states_the_default_base_as_image_build_chooses_it() -> None:
    from pibake.image import build

    key = project.KEYS["target.base"]
    assert key.default == ""  # computed from the board: `pibake init` shows the default board's as the example
    assert key.example == f'"{build.default_base(boards.DEFAULT_BOARD)}"'
    assert f"{build.DEFAULT_BASE_64} where it has a 64-bit core, {build.DEFAULT_BASE_32} on the pi2" in key.doc


def test_bookworm_armhf_boots_every_armv7_board_and_bullseye_only_when_named(proj: Path) -> None:
    for board in ("pi2", "pi3", "pi3b-plus", "pi-zero-2", "pi4"):
        _write(proj, f'[target]\nboard = "{board}"\nbase = "debian-bookworm-armhf"\n' + MINIMAL)
        t = project.load(proj).target
        assert (t.base, t.arch) == ("debian-bookworm-armhf", "armhf"), board
    _write(proj, '[target]\nboard = "pi2"\nbase = "debian-bullseye"\n' + MINIMAL)
    assert project.load(proj).target.base == "debian-bullseye"


def test_raspberry_pi_os_bases(proj: Path) -> None:
    # Raspberry Pi OS's armhf release boots the Pi 1 that the Debian base cannot.
    _write(proj, '[target]\nboard = "pi1"\nbase = "latest-armhf-lite"\n' + MINIMAL)
    t = project.load(proj).target
    assert (t.base_kind, t.arch) == ("raspios", "armhf")
    _write(proj, '[target]\nboard = "pi4"\nbase = "2026-06-18-raspios-trixie-arm64-lite"\n' + MINIMAL)
    assert project.load(proj).target.arch == "arm64"
    # A 64-bit release on a 32-bit-only core.
    path = _write(proj, '[target]\nboard = "pi2"\nbase = "trixie-arm64-lite"\n' + MINIMAL)
    message = _error(proj)
    assert message.startswith(f"{path}:2: target.board: base trixie-arm64-lite is a 64-bit (arm64) release")
    assert "Cortex-A7" in message and "not ARMv8" in message


def test_a_release_lookup_checks_the_name_against_the_os_list(proj: Path) -> None:
    def lookup(name: str) -> object:
        raise UsageError(f"unknown release {name!r}; the OS list has: bookworm-armhf-lite")

    path = _write(proj, '[target]\nbase = "trixie-armhf-lite"\n' + MINIMAL)
    assert _error(proj, release_lookup=lookup) == (
        f"{path}:2: target.base: unknown release 'trixie-armhf-lite'; the OS list has: bookworm-armhf-lite"
    )


def test_a_local_image_base(proj: Path) -> None:
    (proj / "my.img").write_bytes(b"\0" * 1024)
    _write(proj, '[target]\nbase = "my.img"\n' + MINIMAL)
    t = project.load(proj).target
    assert (t.base_kind, t.base_image, t.arch) == ("image", proj / "my.img", None)
    path = _write(proj, '[target]\nbase = "images/gone.img"\n' + MINIMAL)
    assert _error(proj) == f"{path}:2: target.base: no such file: {proj / 'images' / 'gone.img'}"


def test_an_unknown_base(proj: Path) -> None:
    path = _write(proj, '[target]\nbase = "ubuntu-noble"\n' + MINIMAL)
    message = _error(proj)
    bases = "debian-bookworm-armhf, debian-bullseye, debian-trixie-arm64"
    assert message.startswith(f"{path}:2: target.base: 'ubuntu-noble' is neither a Debian base ({bases})")


def test_an_image_too_small_for_the_layout(proj: Path) -> None:
    path = _write(proj, "[target]\nimage_size_mb = 300\n" + MINIMAL)
    message = _error(proj)
    assert message.startswith(f"{path}:2: target.image_size_mb: image of 300 MiB leaves")


# ---------------------------------------------------------------- runtime and service


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("onnxruntime", "onnxruntime does not run tflite models (car.tflite)"),
        ("ai-edge-litert", "ai-edge-litert has no wheels for armhf (base debian-bookworm-armhf), only arm64"),
        ("tflite_runtime", "unknown runtime 'tflite_runtime'; did you mean tflite-runtime?"),
    ],
)
def test_a_runtime_that_cannot_run_the_model_here(proj: Path, name: str, message: str) -> None:
    path = _write(proj, '[target]\nbase = "debian-bookworm-armhf"\n' + MINIMAL + f'[runtime]\nname = "{name}"\n')
    assert _error(proj) == f"{path}:7: runtime.name: {message}"


def test_a_model_name_that_is_not_a_url_segment(proj: Path) -> None:
    path = _write(proj, MINIMAL + '[service]\nmodel_name = "my model"\n')
    assert "service.model_name: model name 'my model' is not a URL path segment" in _error(proj)
    assert f"{path}:4:" in _error(proj)


# ---------------------------------------------------------------- system


@pytest.mark.parametrize("hostname", ["-pi", "pi-", "pi_1", "pi.local", "", "x" * 64])
def test_a_bad_hostname(proj: Path, hostname: str) -> None:
    path = _write(proj, MINIMAL + f'[system]\nhostname = "{hostname}"\n')
    assert _error(proj).startswith(f"{path}:4: system.hostname: {hostname!r} is not a host name")


def test_good_hostnames(proj: Path) -> None:
    for hostname in ("pi", "cam-01", "1pi", "x" * 63):
        _write(proj, MINIMAL + f'[system]\nhostname = "{hostname}"\n')
        assert project.load(proj).system.hostname == hostname


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("root", "'root' is not a user name pibake creates"),
        ("Pi", "'Pi' is not a user name pibake creates"),
    ],
)
def test_a_bad_user(proj: Path, value: str, message: str) -> None:
    _write(proj, MINIMAL + f'[system]\nuser = "{value}"\n')
    assert message in _error(proj)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("timezone", "Mars/Olympus", "'Mars/Olympus' is not an IANA time zone"),
        ("timezone", "../../etc/passwd", "is not an IANA time zone"),
        ("locale", "english", "'english' is not a locale name"),
        ("packages", ["Bad_Name"], "'Bad_Name' is not a Debian package name"),
    ],
)
def test_bad_system_settings(proj: Path, key: str, value: object, message: str) -> None:
    if value == "Mars/Olympus" and not zoneinfo.available_timezones():
        pytest.skip("no time zone data on this host: zones are checked by their form only")
    rendered = f'"{value}"' if isinstance(value, str) else f'["{value[0]}"]'  # type: ignore[index]
    _write(proj, MINIMAL + f"[system]\n{key} = {rendered}\n")
    assert message in _error(proj)


def _wifi(proj: Path, body: str) -> Path:
    return _write(proj, MINIMAL + '[system.wifi]\ncountry = "GB"\nssid = "lab"\n' + body)


@pytest.mark.parametrize(
    ("psk", "message"),
    [
        ("short", "must be 8 to 63 characters (or 64 hex digits); it has 5"),
        ("x" * 64, "must be 8 to 63 characters (or 64 hex digits); it has 64"),
        ("caf\u00e9-caf\u00e9-caf\u00e9", "must be printable ASCII (or 64 hex digits)"),
    ],
)
def test_a_bad_psk(proj: Path, psk: str, message: str) -> None:
    path = _wifi(proj, f'psk = "{psk}"\n')
    assert _error(proj) == f"{path}:6: system.wifi.psk: {message}"


def test_good_psks_and_an_open_network(proj: Path) -> None:
    for psk in ("8 chars!", "y" * 63, "0123456789abcdefABCDEF" * 2 + "01234567890123456789"):
        _wifi(proj, f'psk = "{psk}"\n')
        assert project.load(proj).system.wifi == project.WiFi("GB", "lab", psk)
    _wifi(proj, "")
    assert project.load(proj).system.wifi == project.WiFi("GB", "lab", None)


def test_psk_from_the_environment(proj: Path) -> None:
    path = _wifi(proj, 'psk_env = "LAB_PSK"\n')
    assert project.load(proj, environ={"LAB_PSK": "s3cret-pass"}).system.wifi == project.WiFi(
        "GB", "lab", "s3cret-pass"
    )
    assert _error(proj, environ={}) == f"{path}:6: system.wifi.psk_env: the environment variable LAB_PSK is not set"
    message = _error(proj, environ={"LAB_PSK": "tiny"})
    assert message == f"{path}:6: system.wifi.psk_env: the passphrase in $LAB_PSK must be 8 to 63 characters " + (
        "(or 64 hex digits); it has 4"
    )
    assert "tiny" not in message.replace("$LAB_PSK", "")  # the secret is never echoed
    path = _wifi(proj, 'psk = "s3cret-pass"\npsk_env = "LAB_PSK"\n')
    assert _error(proj) == f"{path}:7: system.wifi.psk_env: set system.wifi.psk or system.wifi.psk_env, not both"


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ('country = "gb"\nssid = "x"\n', "country", "'gb' is not an ISO 3166 alpha-2 code"),
        ('country = "GBR"\nssid = "x"\n', "country", "'GBR' is not an ISO 3166 alpha-2 code"),
        ('ssid = "x"\n', "country", "is required"),
        ('country = "GB"\nssid = ""\n', "ssid", "must be 1 to 32 bytes, it has 0"),
        ('country = "GB"\nssid = "' + "s" * 33 + '"\n', "ssid", "must be 1 to 32 bytes, it has 33"),
    ],
)
def test_bad_wifi(proj: Path, body: str, key: str, message: str) -> None:
    _write(proj, MINIMAL + "[system.wifi]\n" + body)
    assert f"system.wifi.{key}: {message}" in _error(proj)


def test_wifi_as_an_inline_table_reports_the_tables_line(proj: Path) -> None:
    path = _write(proj, MINIMAL + '[system]\nwifi = { country = "gb", ssid = "x" }\n')
    assert _error(proj).startswith(f"{path}:4: system.wifi.country: 'gb' is not")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("ssh-ed25519", "not an OpenSSH public key line (TYPE BASE64 [COMMENT])"),
        ("ssh-ed25519 AAAA!!!! me", "its key data is not base64"),
        ("ssh-foo AAAAC3NzaC1lZDI1NTE5 me", "unknown key type 'ssh-foo' (known: ssh-ed25519, ssh-rsa, ecdsa-sha2-"),
        # An ed25519 key's data labelled as RSA, and one cut short: the blob does not start with its type.
        ("ssh-rsa " + ED25519.split()[1] + " me", "its key data is not a ssh-rsa key (damaged or cut short?)"),
        ("ssh-ed25519 AAAAC3Nz me", "its key data is not a ssh-ed25519 key (damaged or cut short?)"),
    ],
)
def test_a_bad_ssh_key(proj: Path, key: str, message: str) -> None:
    path = _write(proj, MINIMAL + f'[system]\nssh_keys = [\n  "{ED25519}",\n  "{key}",\n]\n')
    assert _error(proj).startswith(f"{path}:4: system.ssh_keys[1]: {message}")


def test_ssh_keys_from_files(proj: Path) -> None:
    (proj / "empty.pub").write_text("# nothing\n")
    path = _write(proj, MINIMAL + '[system]\nssh_keys = ["empty.pub"]\n')
    assert _error(proj) == f"{path}:4: system.ssh_keys[0]: {proj / 'empty.pub'} holds no public key"
    (proj / "two.pub").write_text(f"{ED25519}\nssh-ed25519 AAAA\n")
    _write(proj, MINIMAL + '[system]\nssh_keys = ["two.pub"]\n')
    assert f"{proj / 'two.pub'}, key 2: its key data" in _error(proj)
    _write(proj, MINIMAL + '[system]\nssh_keys = ["~nobody-here/none.pub"]\n')
    assert "system.ssh_keys[0]: no such file" in _error(proj)


def test_a_key_made_by_ssh_keygen_is_accepted(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (openssh-client)")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", str(tmp_path / "r")], check=True)
    for name in ("k.pub", "r.pub"):
        assert project.ssh_key_problem((tmp_path / name).read_text().strip()) is None


# ---------------------------------------------------------------- the bundled example


def test_the_bundled_example_project_loads() -> None:
    # examples/car/model is a link to models/, the collection's bundled model.
    p = project.load(EXAMPLE)
    assert p.model.file == (EXAMPLE / "model" / "car.tflite").resolve()
    assert p.model.labels == ("car", "other") and len(p.model.samples) == 6
    assert p.service.model_name == "car" and p.skipped == ()


def test_the_arm64_base_takes_armv8_boards_only(proj: Path) -> None:
    _write(proj, '[target]\nboard = "pi4"\nbase = "debian-trixie-arm64"\n' + MINIMAL)
    t = project.load(proj).target
    assert (t.base_kind, t.arch) == ("debian", "arm64")
    path = _write(proj, '[target]\nboard = "pi2"\nbase = "debian-trixie-arm64"\n' + MINIMAL)
    message = _error(proj)
    assert message.startswith(f"{path}:2: target.board: base debian-trixie-arm64 (target.base, line 3) cannot boot it")
    assert "cannot run 64-bit (arm64) code" in message
