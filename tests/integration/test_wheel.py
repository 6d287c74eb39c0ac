"""pibake as a user installs it: the wheel, in a fresh venv, run from a directory with no checkout in sight.

The wheel is built from this checkout offline (hatchling, the dev extra, without build isolation) and installed
with --no-deps; the venv sees the dependencies through a .pth file naming this venv's site-packages directory. A
plain path line adds the directory without reading the .pth files in it, so this checkout's editable install stays
out: `import pibake` must be the wheel's. No emulator: `pibake bake` from the wheel is its own test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO

# A Keras model with a 16x16 RGB input and 2 class scores, converted to TFLite, in a subprocess (this process keeps
# the host's tflite-runtime alone, as tests/unit/test_convert.py).
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
        keras.layers.Dense(2, activation="softmax"),
    ])
    open(sys.argv[1], "wb").write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    """
)

# What the installed package says about its own files: each path, and whether it is the wheel's.
_RESOURCES = textwrap.dedent(
    """
    import json
    import pibake
    from pibake import kernel, project, resources
    from pibake.emulate import profiles

    paths = {
        "package": pibake.__file__,
        "site": resources.SITE,
        "ansible_cfg": resources.ANSIBLE_CFG,
        "roles": resources.ROLES,
        "playbooks": resources.PLAYBOOKS,
        "bake_system": resources.PLAYBOOKS / "bake_system.yml",
        "lock_dir": resources.LOCK_DIR,
        "target": resources.TARGET / "pibake_target" / "__main__.py",
        "module": resources.COLLECTION / "plugins" / "modules" / "wheel_isa_check.py",
        "strategy": resources.COLLECTION / "ansible_plugins" / "strategy" / "mitogen_linear.py",
        "profiles": profiles.profile_dir(),
        "buildroot": kernel.tree(),
        "example": resources.EXAMPLE / "pibake.toml",
        "example_model": project.load(resources.EXAMPLE).model.file,
    }
    print(json.dumps({
        "installed": resources.INSTALLED,
        "paths": {k: str(v) for k, v in paths.items()},
        "profiles": profiles.available(),
        "locks": sorted(p.name for p in resources.LOCK_DIR.glob("*.txt")),
        "ansible_env": resources.ansible_env(),
    }))
    """
)


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{argv} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with pibake's wheel installed and this venv's packages as its dependencies."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling builds the wheel offline: it is in the dev extra (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(REPO)], cwd=tmp, env=env)
    [wheel] = (tmp / "dist").glob("pibake-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    _run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)], cwd=tmp, env=env)
    purelib = _run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp, env=env
    )
    (Path(purelib.strip()) / "pibake-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


@pytest.fixture
def outside(tmp_path: Path, venv: Path) -> tuple[Path, dict[str, str]]:
    """A working directory with no checkout in it or above it, and an environment whose PATH starts at VENV."""
    work = tmp_path / "work"
    work.mkdir()
    assert not any((d / "galaxy.yml").exists() for d in (work, *work.parents))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return work, env


def test_the_installed_wheel_carries_its_files(venv: Path, outside: tuple[Path, dict[str, str]]) -> None:
    work, env = outside
    out = json.loads(_run([str(venv / "bin" / "python"), "-c", _RESOURCES], cwd=work, env=env))
    assert out["installed"] is True
    for name, path in out["paths"].items():
        assert Path(path).is_relative_to(venv), f"{name}: {path} is not the wheel's"
        assert Path(path).exists(), f"{name}: {path} is missing"
    assert {"virt", "virt64", "vexpress-a15"} <= set(out["profiles"])
    assert out["locks"] == sorted(p.name for p in (REPO / "roles/python_runtime/files/locks").glob("*.txt"))
    # Ansible finds the collection in the package data: its roles for site.yml, its modules by their names.
    ansible_env = {**env, **out["ansible_env"]}
    python = str(venv / "bin" / "python")
    site, bake_system = out["paths"]["site"], out["paths"]["bake_system"]
    for book in (site, bake_system):
        _run(
            [python, "-m", "ansible.cli.playbook", "--syntax-check", "-i", "localhost,", book],
            cwd=work,
            env=ansible_env,
        )
    doc = _run([python, "-m", "ansible.cli.doc", "pibake.raspberry.wheel_isa_check"], cwd=work, env=ansible_env)
    assert "wheel_isa_check" in doc and str(venv) in doc


def test_init_from_the_installed_wheel(venv: Path, outside: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    work, env = outside
    pibake = str(venv / "bin" / "pibake")
    assert "bake" in _run([pibake, "--help"], cwd=work, env=env)

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is the extra pibake[convert]: pip install -e '.[convert]'")
    _run([sys.executable, "-c", _BUILD_TINY, str(work / "tiny.tflite")], cwd=work, env=env, timeout=300)
    (work / "labels.txt").write_text("yes\nno\n")
    (work / "samples").mkdir()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(work / "samples" / "red.png")

    out = _run([pibake, "init", "--model", "tiny.tflite"], cwd=work, env=env)
    assert f"wrote {work.resolve() / 'pibake.toml'}" in out
    assert "it loads: `pibake bake" in out, out
    assert (work / "pibake.toml").is_file()
