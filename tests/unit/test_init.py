"""`pibake init`: the template has every key, its commented defaults are the loader's, and it loads as written."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest

from pibake import boards, init, project
from pibake.errors import Refused, UsageError
from tests.conftest import REPO, run_cli

MODELS = REPO / "models"
# A commented-out setting or table header, as init writes them (doc comments are prose).
SETTING = re.compile(r"^# (\[[a-z.]+\]|[a-z_]+ = .*)$")


@pytest.fixture
def car(tmp_path: Path) -> Path:
    """The car model with labels.txt and samples/ beside it, in tmp_path/m."""
    m = tmp_path / "m"
    m.mkdir()
    shutil.copy(MODELS / "car.tflite", m / "car.tflite")
    shutil.copy(MODELS / "labels.txt", m / "labels.txt")
    shutil.copytree(MODELS / "samples", m / "samples")
    return m / "car.tflite"


def _uncomment(text: str, *, keep: frozenset[str] | set[str] = frozenset()) -> str:
    """TEXT with every commented-out setting uncommented, except the tables and keys in KEEP."""
    out, table = [], ""
    for line in text.splitlines():
        m = SETTING.match(line)
        header = re.match(r"^(?:# )?\[([a-z.]+)\]$", line)
        if header:
            table = header.group(1)
        name = f"{table}.{m.group(1).split(' ')[0]}" if m and not header else table
        if m and table not in keep and name not in keep:
            line = m.group(1)
        out.append(line)
    return "\n".join(out) + "\n"


def _dotted(data: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for k, v in data.items():
        keys |= _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return keys


def test_init_beside_the_model_loads_as_written(car: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(car.parent.parent)
    res = run_cli(["init", "--model", str(car)])
    assert res.code == 0, res.err
    path = car.parent / "pibake.toml"
    assert res.out.splitlines()[0] == f"wrote {path}"
    assert res.out.splitlines()[-1] == f"it loads: `pibake bake {car.parent}` takes it"
    text = path.read_text()
    assert 'file = "car.tflite"' in text.splitlines()
    assert 'labels = "labels.txt"' in text.splitlines() and 'samples = "samples/"' in text.splitlines()
    p = project.load(path)
    assert p.model.file == car and p.model.labels == ("car", "other") and len(p.model.samples) == 6
    assert p.service.model_name == "car" and p.target.board == boards.DEFAULT_BOARD
    assert not list(car.parent.glob("*.part"))


def test_init_into_another_directory_names_the_model_relative_to_it(car: Path, tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    written = init.init(tmp_path / "proj", model=car)
    assert written.path == tmp_path / "proj" / "pibake.toml"
    lines = written.path.read_text().splitlines()
    assert 'file = "../m/car.tflite"' in lines and 'labels = "../m/labels.txt"' in lines
    assert 'samples = "../m/samples/"' in lines
    assert project.load(written.path).model.file == car


def test_the_template_holds_every_key_of_the_schema(car: Path) -> None:
    text = init.init(model=car).path.read_text()
    tomllib.loads(text)  # valid as written
    keys = _dotted(tomllib.loads(_uncomment(text)))
    assert keys == set(project.KEYS)
    # Each key with its explanation, wrapped, right above it.
    docs: dict[str, str] = {}
    table, prose = "", list[str]()
    for line in text.splitlines():
        header = re.match(r"^(?:# )?\[([a-z.]+)\]$", line)
        setting = SETTING.match(line) or re.match(r"^([a-z_]+) = ", line)
        if header:
            table, prose = header.group(1), []
        elif setting:
            docs[f"{table}.{setting.group(1).split(' ')[0]}"] = " ".join(prose)
            prose = []
        elif line.startswith("# "):
            prose.append(line[2:])
    assert docs == {k.name: k.doc.replace("\n", " ") for k in project.SCHEMA}


def test_the_template_says_by_the_board_key_that_the_armv6_boards_cannot_be_baked_or_emulated(car: Path) -> None:
    from pibake.boards import firmware

    lines = init.init(model=car).path.read_text().splitlines()
    board = lines.index(f'# board = "{boards.DEFAULT_BOARD}"')
    armv6 = [b.name for b in boards.BOARDS.values() if b.core == "ARM1176JZF-S"]
    assert armv6 == ["pi1", "pi-zero"]
    note = "# pi1 and pi-zero (ARMv6) cannot be baked or emulated: Debian armhf and every profile need ARMv7."
    assert lines[board - 1] == note  # one line, in the board key's own comment
    # What the refusals say, for each of them: the build's (and bake's, by target.board) and the emulator's.
    for name in armv6:
        with pytest.raises(UsageError, match=r"\(ARMv6\): Debian's armhf port is built for ARMv7"):
            firmware.require_debian_board(name, linux="6.1")
        with pytest.raises(UsageError, match="no profile emulates an ARMv6"):
            boards.emulation(boards.get(name))


def test_the_commented_defaults_are_the_loaders_defaults(car: Path) -> None:
    path = init.init(model=car).path
    text = path.read_text()
    as_written = project.load(path)
    # Keys with no literal default (an example shown instead) and the Wi-Fi table stay commented.
    examples = {k.name for k in project.SCHEMA if not k.default}
    path.write_text(_uncomment(text, keep={"system.wifi", *examples}))
    assert project.load(path) == as_written


def test_an_existing_project_file_is_refused_without_force(car: Path) -> None:
    path = car.parent / "pibake.toml"
    path.write_text("# mine\n")
    res = run_cli(["init", "--model", str(car)])
    assert res.code == Refused.exit_code == 3
    assert res.err == f"pibake: error: {path} exists; pass --force to replace it\n"
    assert path.read_text() == "# mine\n"
    assert run_cli(["init", "--model", str(car), "--force"]).code == 0
    assert project.load(path).model.file == car


def test_the_one_model_in_the_directory_is_taken(car: Path) -> None:
    res = run_cli(["init", str(car.parent)])
    assert res.code == 0, res.err
    assert project.load(car.parent).model.file == car


def test_no_model_or_several_leave_model_file_to_fill_in(tmp_path: Path, car: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli(["init", str(empty)])
    assert res.code == 0
    assert "model.file: not set: edit it" in res.out
    assert 'file = "model.tflite"' in (empty / "pibake.toml").read_text().splitlines()
    with pytest.raises(UsageError, match=r"pibake.toml:\d+: model.file: no such file"):
        project.load(empty)

    shutil.copy(car, car.with_name("other.tflite"))
    res = run_cli(["init", str(car.parent)])
    assert res.code == 0
    assert "there are several: car.tflite, other.tflite" in res.out
    text = (car.parent / "pibake.toml").read_text()
    assert "# Set this to your model file (found: car.tflite, other.tflite)." in text


def test_labels_and_samples_not_beside_the_model_stay_commented(tmp_path: Path) -> None:
    shutil.copy(MODELS / "car.tflite", tmp_path / "car.tflite")
    res = run_cli(["init", "--model", str(tmp_path / "car.tflite")])
    assert res.code == 0
    assert "model.labels   no labels.txt beside the model: set it" in res.out
    # Written, and loaded as bake will: it says why it does not load yet.
    assert "it does not load yet: " in res.out and "model.labels" in res.out.split("it does not load yet: ")[1]
    lines = (tmp_path / "pibake.toml").read_text().splitlines()
    assert '# labels = "labels.txt"' in lines and '# samples = "samples/"' in lines


@pytest.mark.parametrize(
    ("name", "message"),
    [("gone.tflite", "no model file"), ("notes.txt", "notes.txt: not a model file pibake takes")],
)
def test_a_bad_model_argument(tmp_path: Path, name: str, message: str) -> None:
    if name == "notes.txt":
        (tmp_path / name).write_text("x")
    res = run_cli(["init", "--model", str(tmp_path / name)])
    assert res.code == UsageError.exit_code
    assert message in res.err
    assert not (tmp_path / "pibake.toml").exists()


def test_a_missing_directory(tmp_path: Path) -> None:
    res = run_cli(["init", str(tmp_path / "nope")])
    assert res.code == UsageError.exit_code and f"no directory {tmp_path / 'nope'}" in res.err


def test_the_bundled_example_shows_every_key() -> None:
    text = (REPO / "examples" / "car" / "pibake.toml").read_text()
    data = tomllib.loads(text)
    model = {"file": "model/car.tflite", "labels": "model/labels.txt", "samples": "model/samples/", "preprocessing": {}}
    assert data["model"] == model
    assert _dotted(tomllib.loads(_uncomment(text))) == set(project.KEYS)


def test_the_readme_documents_every_key_with_its_default() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Project file (pibake.toml)", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_.]+)` \| ([^|]+) \|", section, re.M)}
    assert set(rows) == set(project.KEYS)
    for key in project.SCHEMA:
        if key.default and key.name not in {"model.labels", "model.samples"}:  # those: "beside the model"
            assert f"`{key.default}`" in rows[key.name], key.name


def test_init_for_an_onnx_model_writes_a_project_bake_takes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The board's default base is the 64-bit one, whose auto runtime for .onnx is onnxruntime: nothing to edit."""
    from PIL import Image

    from pibake import bake
    from tests import onnx_models

    m = tmp_path / "m"
    (m / "samples").mkdir(parents=True)
    model = m / "my.onnx"
    model.write_bytes(onnx_models.classifier(24, 24, 4))
    (m / "labels.txt").write_text("a\nb\nc\nd\n")
    Image.new("RGB", (24, 24), (10, 200, 30)).save(m / "samples" / "green.png")
    monkeypatch.chdir(tmp_path)
    res = run_cli(["init", "--model", str(model)])
    assert res.code == 0, res.err
    assert res.out.splitlines()[-1] == f"it loads: `pibake bake {m}` takes it", res.out
    lines = (m / "pibake.toml").read_text().splitlines()
    assert 'file = "my.onnx"' in lines and '# base = "debian-trixie-arm64"' in lines
    proj = project.load(m)
    assert (proj.target.base, proj.runtime.name) == ("debian-trixie-arm64", project.AUTO_RUNTIME)
    assert bake.unsupported(proj) == []
    assert bake.project_runtime(proj).lock == "onnxruntime-3.13-debian-trixie-arm64.txt"


@pytest.mark.parametrize("tensorflow", [True, False])
def test_init_for_a_keras_model_writes_a_project_bake_takes_and_says_it_converts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tensorflow: bool
) -> None:
    """Bake converts a Keras model to TFLite first (into build/): init says where, and what to install without
    TensorFlow. A .keras zip with a config.json stands in for the model: init and load read its bytes only."""
    import importlib.util
    import zipfile

    from PIL import Image

    from pibake import bake

    m = tmp_path / "m"
    (m / "samples").mkdir(parents=True)
    with zipfile.ZipFile(m / "my.keras", "w") as z:
        z.writestr("config.json", "{}")
    (m / "labels.txt").write_text("a\nb\n")
    Image.new("RGB", (24, 24), (10, 200, 30)).save(m / "samples" / "green.png")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: real(name, *a) if tensorflow or name != "tensorflow" else None
    )
    res = run_cli(["init", "--model", str(m / "my.keras")])
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert f"  a Keras model: `pibake bake` converts it to TFLite first, into {m / 'build' / 'my.tflite'}" in lines
    missing = [line for line in lines if line.startswith("  before baking: ")]
    if tensorflow:
        assert missing == []
    else:
        assert missing and "pip install 'pibake[convert]'" in missing[0]
    assert lines[-1] == f"it loads: `pibake bake {m}` takes it", res.out
    assert 'file = "my.keras"' in (m / "pibake.toml").read_text().splitlines()
    proj = project.load(m)
    assert proj.model.format == "keras" and bake.unsupported(proj) == []
    assert bake.project_runtime(proj).name == "ai-edge-litert"
    assert not (m / "build").exists()  # init converts nothing
