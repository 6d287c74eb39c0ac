"""pibake bake's steps that need no guest: what it refuses, the model's version and layout, the vars, the reference."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pibake import bake, project, resources
from pibake._module_utils import wheel_lock
from pibake.errors import PibakeError, UsageError
from pibake.image import catalogue
from tests.conftest import REPO, local_image, run_local_play
from tests.integration import oslist

EXAMPLE = REPO / "examples" / "car"


@pytest.fixture(scope="module")
def car() -> project.Project:
    return project.load(EXAMPLE)


def _copy_project(tmp_path: Path, edit: tuple[str, str] = ("", "")) -> Path:
    """The car example as a project of its own in TMP_PATH, its pibake.toml with EDIT's first string replaced."""
    shutil.copytree(EXAMPLE / "model", tmp_path / "model", ignore=shutil.ignore_patterns("__pycache__"))
    text = (EXAMPLE / "pibake.toml").read_text()
    assert edit[0] in text
    (tmp_path / "pibake.toml").write_text(text.replace(*edit) if edit[0] else text)
    return tmp_path


def test_the_bundled_example_can_be_baked(car: project.Project) -> None:
    assert bake.unsupported(car) == []
    # Any login user: prepare makes it (test_arm64 bakes as one), and the boot and Ansible log in as it.
    assert bake.unsupported(dataclasses.replace(car, system=dataclasses.replace(car.system, user="ops"))) == []


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda p: dataclasses.replace(
                p,
                model=dataclasses.replace(
                    p.model,
                    input_shape=(1, 128, 128, 3),
                    preprocessing=dataclasses.replace(p.model.preprocessing, size=(96, 96)),
                ),
            ),
            "model.preprocessing.size: [96, 96] is not the model's input size",
        ),
        (lambda p: dataclasses.replace(p, model=dataclasses.replace(p.model, format="onnx")), "model.file"),
        (lambda p: dataclasses.replace(p, runtime=dataclasses.replace(p.runtime, version="2.14.0")), "runtime"),
        (
            lambda p: dataclasses.replace(
                p, target=dataclasses.replace(p.target, base="trixie-armhf-lite", base_kind="raspios", arch="armhf")
            ),
            "target.base = 'trixie-armhf-lite': it is Raspberry Pi OS on Debian trixie armhf; bake has runtimes pinned "
            "for bullseye armhf, bookworm armhf, trixie arm64 only",
        ),
    ],
)
def test_what_bake_cannot_carry_yet_is_refused_by_key(car: project.Project, change, says: str) -> None:  # type: ignore[no-untyped-def]
    problems = bake.unsupported(change(car))
    assert len(problems) == 1 and says in problems[0], problems


@pytest.mark.parametrize("board", ["pi1", "pi-zero"])
def test_a_board_no_profile_emulates_is_refused_by_its_key_in_the_project_file(tmp_path: Path, board: str) -> None:
    # A Raspberry Pi OS image named as the base loads for the ARMv6 boards; bake cannot emulate them.
    local_image(tmp_path / "raspios.img", "bullseye", "armhf")
    proj = project.load(
        _copy_project(tmp_path, ('base = "debian-bullseye"', f'board = "{board}"\nbase = "raspios.img"')),
        check_model=False,
    )
    (problem,) = bake.unsupported(proj)
    assert problem.startswith(f"target.board = '{board}': bake proves the image on the board's emulated core, and ")
    assert "no profile emulates an ARMv6" in problem and "--profile" not in problem
    with pytest.raises(UsageError) as refused:
        bake.bake(proj)
    assert str(refused.value).startswith(f"{proj.path}: cannot bake this project yet:\n  target.board = '{board}'")
    assert bake.unsupported(proj, profile="virt") == []  # bake --profile: the user's choice stands


def test_the_cli_refuses_before_any_work(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    proj = _copy_project(tmp_path, ('base = "debian-bullseye"', 'base = "trixie-armhf-lite"'))
    res = run_cli(["bake", str(proj)])
    assert res.code == 2, res.err
    assert "target.base = 'trixie-armhf-lite': it is Raspberry Pi OS on Debian trixie armhf" in res.err
    assert not (proj / "build").exists()  # nothing written


def test_the_version_changes_with_any_file_and_the_layout_is_the_model_roles(
    car: project.Project, tmp_path: Path
) -> None:
    version = bake.stage_model(car, tmp_path / "staged")
    assert version == bake.model_version(car) and version.startswith("car-")
    staged = tmp_path / "staged"
    assert (staged / "VERSION").read_text().split() == [version]
    assert (staged / "car.tflite").read_bytes() == car.model.file.read_bytes()
    assert (staged / "labels.txt").read_text() == car.model.labels_file.read_text()
    assert sorted(p.name for p in (staged / "samples").iterdir()) == sorted(p.name for p in car.model.samples)

    other = project.load(_copy_project(tmp_path / "other"))
    assert bake.model_version(other) == version  # the same files elsewhere: the same version
    (tmp_path / "other" / "model" / "labels.txt").write_text("car\nsomething else\n")
    assert bake.model_version(project.load(tmp_path / "other")) != version


def test_the_vars_point_the_roles_at_the_projects_model(car: project.Project, tmp_path: Path) -> None:
    extra = bake.provision_vars(car, tmp_path / "staged", "car-0123")
    json.dumps(extra)  # passed to ansible-playbook as a JSON file
    assert extra["model_source_dir"] == str(tmp_path / "staged") and extra["model_version"] == "car-0123"
    assert extra["model_file"] == "car.tflite" and extra["model_samples_glob"] == "samples/*.png"
    assert extra["inference_service_model_path"] == "/opt/pibake/model/current/car.tflite"
    assert extra["inference_service_model_name"] == "car" and extra["inference_service_port"] == 8000


def test_the_reference_run_gives_one_probability_vector_per_sample(car: project.Project) -> None:
    outputs = bake.host_outputs(car)
    names = [p.name for p in car.model.samples]
    vectors = bake._vectors(outputs, names, "host")
    assert len(vectors) == len(names) and all(len(v) == len(car.model.labels) for v in vectors)
    assert all(abs(sum(v) - 1) < 1e-4 for v in vectors)  # softmax outputs
    with pytest.raises(Exception, match=r"no output for nope\.png"):
        bake._vectors(outputs, [*names, "nope.png"], "host")


def test_the_predict_json_is_found_among_a_runtimes_chatter() -> None:
    line = json.dumps({"runtime": "ai_edge_litert 2.3.0", "results": []})
    # LiteRT's stderr line comes after stdout's JSON when SSH merges the two.
    out = f"{line}\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    assert bake._predict_report(out, "on the guest")["runtime"] == "ai_edge_litert 2.3.0"
    with pytest.raises(PibakeError, match="printed no JSON on the guest"):
        bake._predict_report("Illegal instruction\n{not json\n", "on the guest")


def test_each_debian_base_gets_its_runtime(car: project.Project, tmp_path: Path) -> None:
    litert = bake.platform_runtime("debian-trixie-arm64")
    assert (litert.name, litert.version, litert.python) == ("ai-edge-litert", "2.3.0", "/opt/pibake/venv/bin/python")
    assert "ai_edge_litert-2.3.0-cp313-cp313-manylinux_2_27_aarch64.whl" in litert.wheel_filenames
    assert not any("numpy" in f for f in litert.wheel_filenames)  # the distribution's numpy, through the venv
    legacy = bake.platform_runtime("debian-bullseye")
    assert (legacy.name, legacy.version, legacy.lock) == ("tflite-runtime", "2.11.0", None)
    armhf = bake.platform_runtime("debian-bookworm-armhf")
    assert (armhf.name, armhf.version, armhf.python) == ("tflite-runtime", "2.14.0", "/opt/pibake/venv/bin/python")
    assert armhf.lock == "tflite-runtime-3.11-debian-bookworm-armhf.txt"
    assert armhf.wheel_filenames == ("tflite_runtime-2.14.0-cp311-cp311-manylinux_2_34_armv7l.whl",)
    assert bake.provision_vars(car, tmp_path, "v1", armhf)["python_runtime_lock"] == armhf.lock
    bookworm = dataclasses.replace(car, target=dataclasses.replace(car.target, base="debian-bookworm-armhf"))
    assert bake.unsupported(bookworm) == []
    assert bake.unsupported(dataclasses.replace(bookworm, runtime=project.Runtime("tflite-runtime", "2.14.0"))) == []
    assert bake.unsupported(dataclasses.replace(bookworm, runtime=project.Runtime("tflite-runtime", "2.11.0"))) == [
        "runtime: the debian-bookworm-armhf base runs .tflite models with tflite-runtime 2.14.0 only"
    ]
    values = bake.provision_vars(car, tmp_path, "v1", litert)
    assert values["python_runtime_lock"] == litert.lock
    assert "python_runtime_lock" not in bake.provision_vars(car, tmp_path, "v1", legacy)
    arm64 = dataclasses.replace(car, target=dataclasses.replace(car.target, base="debian-trixie-arm64", arch="arm64"))
    assert bake.unsupported(arm64) == []
    pinned = dataclasses.replace(arm64, runtime=project.Runtime("ai-edge-litert", "2.2.0"))
    assert bake.unsupported(pinned) == [
        "runtime: the debian-trixie-arm64 base runs .tflite models with ai-edge-litert 2.3.0 only"
    ]


def test_provisioning_is_one_playbook_that_ansible_accepts(tmp_path: Path) -> None:
    # One ansible-playbook run (one connection to the Pi): pibake's playbooks, then the project's, then its roles.
    user = tmp_path / "project" / "books" / "mine.yml"
    user.parent.mkdir(parents=True)
    user.write_text(
        "---\n- name: Mine\n  hosts: raspberry_pi\n  tasks:\n"
        "    - name: Say\n      ansible.builtin.debug:\n        msg: hi\n"
    )
    role = tmp_path / "project" / "roles" / "extra"
    (role / "tasks").mkdir(parents=True)
    (role / "tasks" / "main.yml").write_text("---\n- name: Extra\n  ansible.builtin.debug:\n    msg: extra\n")
    books = (REPO / "site.yml", REPO / "playbooks" / "bake_system.yml", user)
    play = bake.provision_playbook(tmp_path / "provision.yml", books, (role,))

    loaded = yaml.safe_load(play.read_text())
    assert [p.get("ansible.builtin.import_playbook") for p in loaded[:3]] == [str(b) for b in books]
    assert loaded[3]["roles"] == [{"role": str(role)}] and loaded[3]["become"] is True
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("raspberry_pi:\n  hosts:\n    pi:\n")
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", "-i", str(inventory), str(play)],
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_provisioning_without_project_roles_has_no_roles_play(tmp_path: Path) -> None:
    play = bake.provision_playbook(tmp_path / "provision.yml", (REPO / "site.yml",))
    assert yaml.safe_load(play.read_text()) == [{"ansible.builtin.import_playbook": str(REPO / "site.yml")}]


def test_every_debian_base_has_a_runtime_and_its_locks_match_the_base() -> None:
    from pibake.image.build import BASES

    for name, base in BASES.items():
        assert bake.platform_runtime(name).name == bake.base_runtimes(name)[0]
        for runtime in bake.base_runtimes(name):
            rt = bake.platform_runtime(name, runtime)
            # A runtime runs on the base's architecture (project.RUNTIMES), and the base's first runs TFLite models.
            assert base.arch in project.RUNTIMES[runtime][1], (name, runtime)
            if rt.lock is None:
                continue
            assert rt.lock.startswith(f"{runtime}-{base.python}-{name}"), (name, rt.lock)
            lock = wheel_lock.read(resources.LOCK_DIR / rt.lock)
            # The lock was resolved for the base's own Python and machine (scripts/lock_runtimes.py).
            assert lock.python_version == base.python, (name, runtime)
            machine = {"armhf": "armv7l", "arm64": "aarch64"}[base.arch]
            assert lock.platforms and all(p.endswith(f"_{machine}") for p in lock.platforms), (name, runtime)
        assert bake.format_runtimes(name, "tflite")[:1] == bake.base_runtimes(name)[:1], name
    assert bake.format_runtimes("debian-trixie-arm64", "onnx") == ("onnxruntime",)
    assert (
        bake.format_runtimes("debian-bookworm-armhf", "onnx") == bake.format_runtimes("debian-bullseye", "onnx") == ()
    )
    with pytest.raises(UsageError, match="base 'debian-bookworm-armhf' has no onnxruntime pinned, only tflite-runtime"):
        bake.platform_runtime("debian-bookworm-armhf", runtime="onnxruntime")


def test_the_demo_takes_its_base_from_the_board(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pibake.errors import UsageError
    from tests.conftest import run_cli

    baked: list[project.Target] = []

    def fake_bake(proj: project.Project, **_: object) -> None:
        baked.append(proj.target)
        raise UsageError("stopped before any work")

    monkeypatch.setattr(bake, "bake", fake_bake)
    for args, want in (
        (["--board", "pi2"], ("pi2", "debian-bookworm-armhf", "armhf")),
        (["--board", "pi4"], ("pi4", "debian-trixie-arm64", "arm64")),
        ([], ("pi3b-plus", "debian-trixie-arm64", "arm64")),
        (["--board", "pi4", "--base", "debian-bookworm-armhf"], ("pi4", "debian-bookworm-armhf", "armhf")),
        (["--base", "debian-bullseye"], ("pi3b-plus", "debian-bullseye", "armhf")),
    ):
        res = run_cli(["demo", "--project", str(REPO), *args])
        assert res.code == UsageError.exit_code and "stopped before any work" in res.err, res.err
        t = baked.pop()
        assert (t.board, t.base, t.arch, t.base_kind) == (*want, "debian"), args
    # From any directory, without --project: the example of the checkout this pibake runs from.
    monkeypatch.chdir(tmp_path)
    res = run_cli(["demo", "--board", "pi4"])
    assert res.code == UsageError.exit_code and "stopped before any work" in res.err, res.err
    assert baked.pop().board == "pi4"


@pytest.mark.parametrize(
    ("codename", "arch", "base", "runtime"),
    [
        ("trixie", "arm64", "debian-trixie-arm64", "ai-edge-litert"),  # Raspberry Pi OS trixie 64-bit
        ("bookworm", "armhf", "debian-bookworm-armhf", "tflite-runtime"),  # ...bookworm 32-bit
        ("bullseye", "armhf", "debian-bullseye", "tflite-runtime"),  # ...bullseye, the legacy way
    ],
)
def test_a_local_image_gets_the_runtime_of_the_debian_base_with_its_userland(
    car: project.Project, tmp_path: Path, codename: str, arch: str, base: str, runtime: str
) -> None:
    image = local_image(tmp_path / "mine.img", codename, arch, "arm_64bit=1\n" if arch == "arm64" else "")
    assert bake.image_userland(image) == (codename, arch)
    local = dataclasses.replace(
        car, target=dataclasses.replace(car.target, base=str(image), base_kind="image", base_image=image, arch=None)
    )
    assert bake.unsupported(local) == []
    assert bake.runtime_base(local) == base
    got = bake.project_runtime(local)
    assert got == bake.platform_runtime(base, runtime)


@pytest.mark.parametrize(
    ("codename", "arch", "says"),
    [
        ("bookworm", "arm64", "its userland is Debian bookworm arm64; bake has runtimes pinned for bullseye armhf, "
         "bookworm armhf, trixie arm64 only"),
        ("trixie", "armhf", "its userland is Debian trixie armhf;"),  # no tflite-runtime for Python 3.13
        (None, None, "it holds no Debian userland pibake can read (no os-release and dpkg status on its second"),
    ],
)  # fmt: skip
def test_a_local_image_whose_userland_has_no_pinned_runtime_is_refused_saying_what_it_found(
    car: project.Project, tmp_path: Path, codename: str | None, arch: str | None, says: str
) -> None:
    image = local_image(tmp_path / "mine.img", codename, arch)
    local = dataclasses.replace(
        car, target=dataclasses.replace(car.target, base=str(image), base_kind="image", base_image=image, arch=None)
    )
    (problem,) = bake.unsupported(local)
    assert problem.startswith(f"target.base = {str(image)!r}: {says}"), problem
    assert "debian-trixie-arm64" in problem  # the way out
    with pytest.raises(UsageError, match="cannot bake this project yet"):
        bake.bake(local)
    assert not (car.build_dir / "mine.img").exists()


# ---------------------------------------------------------------- ONNX models: onnxruntime on the arm64 base

ONNX_LOCK = "onnxruntime-3.13-debian-trixie-arm64.txt"


def _onnx_project(
    tmp_path: Path, target: str = 'board = "pi4"\nbase = "debian-trixie-arm64"\n', extra: str = ""
) -> Path:
    """A project of its own in TMP_PATH: a 24x24, 4-class ONNX classifier with labels and two samples."""
    from PIL import Image

    from tests import onnx_models

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "m.onnx").write_bytes(onnx_models.classifier(24, 24, 4))
    (tmp_path / "labels.txt").write_text("north\neast\nsouth\nwest\n")
    (tmp_path / "samples").mkdir()
    Image.new("RGB", (24, 24), (200, 40, 40)).save(tmp_path / "samples" / "red.png")
    Image.new("RGB", (30, 20), (20, 90, 220)).save(tmp_path / "samples" / "blue.png")
    (tmp_path / "pibake.toml").write_text(f'[target]\n{target}\n[model]\nfile = "m.onnx"\n{extra}')
    return tmp_path


def test_an_onnx_model_is_baked_on_the_arm64_base_with_onnxruntime_from_its_lock(tmp_path: Path) -> None:
    proj = project.load(_onnx_project(tmp_path / "p"), check_model=False)
    assert proj.runtime.name == project.AUTO_RUNTIME and bake.unsupported(proj) == []
    rt = bake.project_runtime(proj)
    assert (rt.name, rt.version, rt.lock, rt.python) == ("onnxruntime", "1.28.0", ONNX_LOCK, bake.VENV_PYTHON)
    assert "onnxruntime-1.28.0-cp313-cp313-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl" in rt.wheel_filenames
    assert not any("numpy" in f or "litert" in f for f in rt.wheel_filenames)
    assert bake.platform_runtime("debian-trixie-arm64", runtime="onnxruntime") == rt
    # platform_runtime(base) stays the base's TFLite runtime for its callers.
    assert bake.platform_runtime("debian-trixie-arm64").name == "ai-edge-litert"
    values = bake.provision_vars(proj, tmp_path / "staged", "m-0123", rt)
    assert values["python_runtime_lock"] == ONNX_LOCK  # the python_runtime role installs onnxruntime's closure
    assert values["model_file"] == "m.onnx" and values["model_samples_glob"] == "samples/*.png"
    assert values["inference_service_model_path"] == "/opt/pibake/model/current/m.onnx"
    version = bake.stage_model(proj, tmp_path / "staged")
    assert (tmp_path / "staged" / "m.onnx").read_bytes() == proj.model.file.read_bytes() and version.startswith("m-")
    # Named, not auto: the same.
    named = dataclasses.replace(proj, runtime=project.Runtime("onnxruntime", "1.28.0"))
    assert bake.unsupported(named) == [] and bake.project_runtime(named) == rt


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"target": {"base": "debian-bookworm-armhf", "arch": "armhf"}},
            "model.file: m.onnx: bake runs .onnx models with onnxruntime on target.base = 'debian-trixie-arm64' only; "
            "onnxruntime has wheels for arm64 only (none for armv7l on PyPI), so no 32-bit base can carry it",
        ),
        ({"target": {"base": "debian-bullseye", "arch": "armhf"}}, "model.file: m.onnx: bake runs .onnx models with"),
        (
            {"runtime": project.Runtime("ai-edge-litert", None)},
            "runtime: the debian-trixie-arm64 base runs .onnx models with onnxruntime 1.28.0 only",
        ),
        (
            {"runtime": project.Runtime("onnxruntime", "1.27.0")},
            "runtime: the debian-trixie-arm64 base runs .onnx models with onnxruntime 1.28.0 only",
        ),
    ],
)
def test_an_onnx_model_elsewhere_or_with_another_runtime_is_refused(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    proj = project.load(_onnx_project(tmp_path), check_model=False)
    for table, value in change.items():
        new = dataclasses.replace(getattr(proj, table), **value) if isinstance(value, dict) else value
        proj = dataclasses.replace(proj, **{table: new})
    problems = bake.unsupported(proj)
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    if problem.startswith("model.file: m.onnx: ") or "ai-edge-litert" in str(change):
        with pytest.raises(UsageError, match=r"no runtime for m\.onnx"):
            bake.project_runtime(proj)  # nothing to install: bake refuses before it asks


def test_a_tflite_model_with_onnxruntime_named_is_refused(car: project.Project) -> None:
    arm64 = dataclasses.replace(car, target=dataclasses.replace(car.target, base="debian-trixie-arm64", arch="arm64"))
    named = dataclasses.replace(arm64, runtime=project.Runtime("onnxruntime", None))
    assert bake.unsupported(named) == [
        "runtime: the debian-trixie-arm64 base runs .tflite models with ai-edge-litert 2.3.0 only"
    ]
    assert bake.project_runtime(arm64).name == "ai-edge-litert"


def test_an_onnx_model_on_a_local_image_runs_where_its_userland_has_onnxruntime(
    car: project.Project, tmp_path: Path
) -> None:
    proj = project.load(_onnx_project(tmp_path), check_model=False)
    for codename, arch, config_txt in (("bookworm", "armhf", ""), ("trixie", "arm64", "arm_64bit=1\n")):
        image = local_image(tmp_path / f"{codename}.img", codename, arch, config_txt)
        local = dataclasses.replace(
            proj,
            target=dataclasses.replace(proj.target, base=str(image), base_kind="image", base_image=image, arch=None),
        )
        problems = bake.unsupported(local)
        if arch == "armhf":
            (problem,) = problems
            assert problem.startswith("model.file: m.onnx: bake runs .onnx models with onnxruntime on target.base")
        else:
            assert problems == [] and bake.project_runtime(local).name == "onnxruntime"


def test_the_reference_run_of_an_onnx_model_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from pibake.errors import ToolMissing

    proj = project.load(_onnx_project(tmp_path), check_model=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(
        ToolMissing, match=r"needs onnxruntime, which is not installed: install onnxruntime \(pibake's test extra"
    ):
        bake.host_outputs(proj)


def test_the_reference_run_of_an_onnx_model_is_the_pi_side_package_on_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
    import numpy as np
    from pibake_target.preprocess import load_image

    from tests import onnx_models

    proj = project.load(_onnx_project(tmp_path))
    outputs = bake.host_outputs(proj)
    assert outputs["runtime"] == f"onnxruntime {ort.__version__}"
    names = [p.name for p in proj.model.samples]
    got = np.array(bake._vectors(outputs, names, "host"), dtype=np.float32)
    batch = np.concatenate([load_image(str(p), 24, 24) for p in proj.model.samples])
    np.testing.assert_allclose(got, onnx_models.classifier_outputs(batch, 4), atol=1e-6)


# ---------------------------------------------------------------- [model.preprocessing]: preprocessing.json

CUSTOM = project.Preprocessing(None, 1 / 127.5, (1.0, 0.9, 0.8), (0.5, 0.25, 0.75), "bgr")


def _with_preprocessing(proj: project.Project, pre: project.Preprocessing) -> project.Project:
    return dataclasses.replace(proj, model=dataclasses.replace(proj.model, preprocessing=pre))


@pytest.mark.parametrize(
    "change",
    [{"scale": 1 / 127.5}, {"mean": (0.485, 0.456, 0.406)}, {"std": (0.229, 0.224, 0.225)}, {"channel_order": "bgr"}],
)
def test_any_scale_mean_std_and_channel_order_can_be_baked(car: project.Project, change: dict[str, Any]) -> None:
    assert bake.unsupported(_with_preprocessing(car, dataclasses.replace(car.model.preprocessing, **change))) == []


def test_the_staged_preprocessing_json_is_what_the_pi_side_package_reads(car: project.Project, tmp_path: Path) -> None:
    from pibake_target.preprocess import DEFAULT, Preprocessing, find_preprocessing

    # The default: no file, and the version named as before there was one (model, labels and samples only).
    version = bake.stage_model(car, tmp_path / "default")
    assert not (tmp_path / "default" / "preprocessing.json").exists()
    assert find_preprocessing(str(tmp_path / "default" / "car.tflite")) == DEFAULT
    h = hashlib.sha256()
    for path in (car.model.file, car.model.labels_file, *car.model.samples):
        h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    assert version == f"car-{h.hexdigest()[:12]}"

    custom = _with_preprocessing(car, CUSTOM)
    custom_version = bake.stage_model(custom, tmp_path / "custom")
    assert custom_version != version  # a deployed version never changes: other preprocessing, another version
    assert (tmp_path / "custom" / "VERSION").read_text().split() == [custom_version]
    assert json.loads((tmp_path / "custom" / "preprocessing.json").read_text()) == {
        "scale": 1 / 127.5,
        "mean": [1.0, 0.9, 0.8],
        "std": [0.5, 0.25, 0.75],
        "channel_order": "bgr",
    }
    read = find_preprocessing(str(tmp_path / "custom" / "car.tflite"))
    assert read == Preprocessing(CUSTOM.scale, CUSTOM.mean, CUSTOM.std, CUSTOM.channel_order)  # the same doubles
    assert bake.stage_model(custom, tmp_path / "again") == custom_version  # the same file, the same version
    # The vars need nothing more: the model role copies preprocessing.json when model_source_dir has one.
    assert bake.provision_vars(custom, tmp_path / "custom", custom_version) == bake.provision_vars(
        car, tmp_path / "custom", custom_version
    )


def _hand_outputs(proj: project.Project, pre: project.Preprocessing) -> Any:
    """The tiny ONNX classifier's outputs for PROJ's samples preprocessed as PRE says, in numpy."""
    import numpy as np
    from pibake_target.preprocess import RESAMPLE
    from PIL import Image

    from tests import onnx_models

    rows = []
    for sample in proj.model.samples:
        with Image.open(sample) as img:
            pixels = np.asarray(img.convert("RGB").resize((24, 24), RESAMPLE), dtype=np.float64)
        x = (pixels * pre.scale - np.array(pre.mean)) / np.array(pre.std)
        rows.append((x[..., ::-1] if pre.channel_order == "bgr" else x).astype(np.float32))
    return onnx_models.classifier_outputs(np.stack(rows), 4)


def test_the_reference_run_preprocesses_as_the_staged_file_says(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
    import numpy as np

    extra = "[model.preprocessing]\nscale = 0.00784313725490196\nmean = [1.0, 0.9, 0.8]\nstd = [0.5, 0.25, 0.75]\n"
    proj = project.load(_onnx_project(tmp_path / "p", extra=extra + 'channel_order = "bgr"\n'))
    assert bake.unsupported(proj) == []
    # A stray file beside the project's model is not what the Pi gets: the reference must not read it either.
    (tmp_path / "p" / "preprocessing.json").write_text('{"scale": 1}')
    names = [p.name for p in proj.model.samples]
    got = np.array(bake._vectors(bake.host_outputs(proj), names, "host"), dtype=np.float32)
    np.testing.assert_allclose(got, _hand_outputs(proj, proj.model.preprocessing), atol=1e-6)
    default = _hand_outputs(proj, project.Preprocessing(None, project.DEFAULT_SCALE, (0.0,) * 3, (1.0,) * 3, "rgb"))
    assert np.abs(got - default).max() > 0.01  # the preprocessing changed what the model saw
    # Given the staged files, as bake gives them: the same.
    bake.stage_model(proj, tmp_path / "staged")
    staged = bake._vectors(bake.host_outputs(proj, tmp_path / "staged"), names, "host")
    np.testing.assert_array_equal(np.array(staged, dtype=np.float32), got)


def test_the_model_role_deploys_the_preprocessing_json_with_the_model(tmp_path: Path) -> None:
    """The model role run on this machine (no guest), from bake's staged files into model roots of the test's: the
    version on the "Pi" has the file, its SHA256SUMS covers it, and the predict command there (the role's smoke check,
    then bake's verify) gives the reference's outputs; a project with the default preprocessing deploys no file.
    The emulated Pi and the inference service's unit are the integration test's."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
    plain = project.load(_onnx_project(tmp_path / "p"), check_model=False)
    plays, deployed = [], {}
    for name, proj in (("custom", _with_preprocessing(plain, CUSTOM)), ("default", plain)):
        version = bake.stage_model(proj, tmp_path / name / "staged")
        root = tmp_path / name / "model"
        deployed[name] = (proj, root, version)
        plays.append(
            {
                "name": f"The model role on this machine, {name} preprocessing",
                "hosts": "localhost",
                "connection": "local",
                "gather_facts": False,
                "vars": {
                    **bake.provision_vars(proj, tmp_path / name / "staged", version),
                    "model_root": str(root),
                    "model_python": sys.executable,
                    "model_package_dir": str(resources.TARGET),
                    "model_restart_services": [],
                    # The smoke check (the predict command on current/) once is enough: with the file.
                    "model_smoke_check_enabled": name == "custom",
                },
                "roles": [{"role": str(REPO / "roles" / "model")}],
            }
        )
    (tmp_path / "play.yml").write_text(yaml.safe_dump(plays, sort_keys=False))
    res = run_local_play(tmp_path / "play.yml", tmp_path)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]

    proj, root, version = deployed["custom"]
    staged = tmp_path / "custom" / "staged"
    assert (root / "versions" / version / "preprocessing.json").read_bytes() == (
        staged / "preprocessing.json"
    ).read_bytes()
    assert "  preprocessing.json\n" in (root / "versions" / version / "SHA256SUMS").read_text()
    current = root / "current"
    argv = [sys.executable, "-B", "-m", "pibake_target", "predict", "--model", str(current / "m.onnx")]
    argv += ["--labels", str(current / "labels.txt"), *(str(current / "samples" / p.name) for p in proj.model.samples)]
    on_pi = subprocess.run(
        argv,
        env={**os.environ, "PYTHONPATH": resources.target_pythonpath()},
        capture_output=True,
        text=True,
        check=True,
    )
    names = [p.name for p in proj.model.samples]
    assert bake._vectors(bake._predict_report(on_pi.stdout, "there"), names, "Pi") == bake._vectors(
        bake.host_outputs(proj, staged), names, "host"
    )

    _, root, version = deployed["default"]
    assert sorted(p.name for p in (root / "versions" / version).iterdir()) == [
        "SHA256SUMS",
        "labels.txt",
        "m.onnx",
        "samples",
    ]


def test_a_raspberry_pi_os_release_gets_the_runtimes_of_its_userland(
    car: project.Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    # A name that says its suite needs no OS list; latest-ARCH is the list's.
    monkeypatch.setenv(catalogue.URL_ENV, (tmp_path / "none.json").as_uri())
    assert bake.release_userland("trixie-arm64-lite") == ("trixie", "arm64")
    assert bake.release_userland("2026-06-18-raspios-bookworm-armhf-lite") == ("bookworm", "armhf")
    with pytest.raises(PibakeError, match="no cached copy"):
        bake.release_userland("latest-arm64-lite")
    listing = tmp_path / "os_list.json"
    listing.write_bytes(oslist.render([]))
    monkeypatch.setenv(catalogue.URL_ENV, listing.as_uri())
    assert bake.release_userland("latest-arm64-lite") == ("trixie", "arm64")
    for base, arch, runtimes in (
        ("trixie-arm64-lite", "arm64", "debian-trixie-arm64"),
        ("latest-arm64-lite", "arm64", "debian-trixie-arm64"),
        ("bookworm-armhf-lite", "armhf", "debian-bookworm-armhf"),
    ):
        proj = dataclasses.replace(
            car, target=dataclasses.replace(car.target, base=base, base_kind="raspios", arch=arch, board="pi4")
        )
        assert bake.runtime_base(proj) == runtimes
        assert bake.unsupported(proj) == [], base
    wifi = project.WiFi(country="GB", ssid="lab", psk="correct horse battery staple")
    proj = dataclasses.replace(proj, system=dataclasses.replace(proj.system, wifi=wifi))
    assert bake.unsupported(proj) == [] and bake.wifi_method(proj) == "networkmanager"  # trixie's is NetworkManager
