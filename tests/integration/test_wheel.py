"""pibake as a user installs it: the wheel, in a fresh venv, run from a directory with no checkout in sight.

The wheel is built from this checkout offline (hatchling, the dev extra, without build isolation) and installed
with --no-deps (tests/integration/wheel.py): `import pibake` must be the wheel's. No emulator: `pibake bake` from the
wheel is test_arm64's.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.conftest import REPO
from tests.integration import wheel
from tests.integration.wheel import run

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


def test_the_installed_wheel_carries_its_files(wheel_venv: Path, tmp_path: Path) -> None:
    venv = wheel_venv
    work = tmp_path / "work"
    env = wheel.outside(work, venv)
    out = json.loads(run([str(venv / "bin" / "python"), "-c", _RESOURCES], cwd=work, env=env))
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
        run(
            [python, "-m", "ansible.cli.playbook", "--syntax-check", "-i", "localhost,", book],
            cwd=work,
            env=ansible_env,
        )
    doc = run([python, "-m", "ansible.cli.doc", "pibake.raspberry.wheel_isa_check"], cwd=work, env=ansible_env)
    assert "wheel_isa_check" in doc and str(venv) in doc


def test_init_from_the_installed_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = wheel.outside(work, wheel_venv)
    pibake = str(wheel_venv / "bin" / "pibake")
    assert "bake" in run([pibake, "--help"], cwd=work, env=env)

    wheel.tiny_model(work, env)
    out = run([pibake, "init", "--model", "tiny.tflite"], cwd=work, env=env)
    assert f"wrote {work.resolve() / 'pibake.toml'}" in out
    assert "it loads: `pibake bake" in out, out
    assert (work / "pibake.toml").is_file()
