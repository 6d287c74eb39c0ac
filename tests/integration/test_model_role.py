"""The model role's versions, checksums, atomic switch, rollback and pruning: real Ansible runs.

The target is this machine (connection local) with model_root in a temporary directory: what
the role does to files is the same on the emulated Pi, where Molecule checks it again along with
the service that serves the model.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"

PLAY = """\
- name: Deploy a model version
  hosts: all
  gather_facts: false
  roles:
    - role: pibake.raspberry.model
"""


@dataclass
class Run:
    rc: int
    out: str

    @property
    def changed(self) -> int:
        m = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", self.out)
        assert m, self.out[-3000:]
        return int(m.group(1))


@pytest.fixture
def deploy(tmp_path: Path):  # type: ignore[no-untyped-def]
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    root = tmp_path / "target" / "model"
    python = sys.executable
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}

    def run(source: Path, **extra: str) -> Run:
        args = {
            "model_root": str(root),
            "model_source_dir": str(source),
            "model_python": python,
            # The Pi-side package from this checkout (on a Pi, the python_runtime role installs it there): the
            # role's default, /usr/local/lib/pibake, is nothing on a fresh CI machine.
            "model_package_dir": str(REPO / "target"),
            "ansible_python_interpreter": python,
            # The smoke check needs the host's TFLite runtime; it runs once below, the rest are about files.
            "model_smoke_check_enabled": "false",
            **extra,
        }
        argv = [str(Path(python).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play)]
        for k, v in args.items():
            argv += ["-e", f"{k}={v}"]
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        return Run(p.returncode, p.stdout + p.stderr)

    run.root = root  # type: ignore[attr-defined]
    return run


def _source(tmp_path: Path, version: str, *, extra_sample: bool = False) -> Path:
    """A copy of models/ that says it holds VERSION (extra_sample: other files than the original)."""
    src = tmp_path / f"src-{version}"
    shutil.copytree(MODELS, src, ignore=shutil.ignore_patterns("__pycache__", "*.keras", "*.h5"))
    (src / "VERSION").write_text(f"{version}\n")
    if extra_sample:
        first = sorted((src / "samples").glob("*.png"))[0]
        shutil.copy(first, src / "samples" / f"{first.stem.rsplit('_', 1)[0]}_{version.replace('.', '')}9.png")
    return src


def _current(root: Path) -> str:
    return str((root / "current").readlink())


def test_install_verify_switch_rollback_and_prune(deploy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root: Path = deploy.root
    v1, v2, v3 = _source(tmp_path, "1.0"), _source(tmp_path, "2.0", extra_sample=True), _source(tmp_path, "3.0")

    # First version, with the smoke check: copied, checksummed, current.
    first = deploy(v1, model_smoke_check_enabled="true")
    assert first.rc == 0, first.out[-3000:]
    assert _current(root) == "versions/1.0"
    sums = (root / "versions/1.0/SHA256SUMS").read_text()
    assert re.search(r"^[0-9a-f]{64}  labels\.txt$", sums, re.M)
    # The model and labels.txt, and each sample (predict.py is not in a version any more: pibake_target is shared).
    assert len(sums.splitlines()) == 2 + len(list((v1 / "samples").glob("*.png")))
    subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"], cwd=root / "versions/1.0", check=True)
    assert re.search(r"\.png: \w+ \(\d\.\d{4}\)", first.out), first.out[-3000:]  # the smoke check ran
    assert deploy(v1).changed == 0  # idempotent
    # The smoke check passed on this version, package and Python environment: not again, unless asked.
    again = deploy(v1, model_smoke_check_enabled="true")
    assert (again.rc, again.changed) == (0, 0), again.out[-3000:]
    assert "passed before on the same version" in again.out
    assert not re.search(r"\.png: \w+ \(\d\.\d{4}\)", again.out)
    forced = deploy(v1, model_smoke_check_enabled="true", model_smoke_check_always="true")
    assert forced.rc == 0, forced.out[-3000:]
    assert re.search(r"\.png: \w+ \(\d\.\d{4}\)", forced.out), forced.out[-3000:]

    # A new version: copied beside the first, then the symlink moves.
    res = deploy(v2)
    assert res.rc == 0, res.out[-3000:]
    assert _current(root) == "versions/2.0"
    assert (root / "versions/1.0/SHA256SUMS").is_file()
    assert deploy(v2).changed == 0

    # Roll back: the source dir holds 2.0, the target still has 1.0.
    res = deploy(v2, model_version="1.0")
    assert res.rc == 0, res.out[-3000:]
    assert res.changed == 1  # only the symlink
    assert _current(root) == "versions/1.0"

    # A version the target never had, and the source does not hold: refused, nothing changes.
    res = deploy(v2, model_version="0.9")
    assert res.rc != 0
    assert "Model version 0.9 is not on localhost" in res.out
    assert _current(root) == "versions/1.0"

    # A deployed version never changes: other files under the same version name are refused.
    changed = _source(tmp_path / "other", "2.0")
    res = deploy(changed)
    assert res.rc != 0
    assert "a deployed version never changes" in res.out
    assert _current(root) == "versions/1.0"

    # Files damaged on the target: the checksum check stops the switch.
    (root / "versions/2.0/labels.txt").write_text("tampered\n")
    res = deploy(v2)
    assert res.rc != 0
    assert "labels.txt: FAILED" in res.out
    assert _current(root) == "versions/1.0"
    shutil.rmtree(root / "versions/2.0")

    # Keep two: deploying 3.0 removes the oldest of the others, never the current one.
    res = deploy(v2)
    assert res.rc == 0, res.out[-3000:]
    os.utime(root / "versions/1.0", (1_000_000, 1_000_000))  # the oldest
    res = deploy(v3, model_keep_versions="2")
    assert res.rc == 0, res.out[-3000:]
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["2.0", "3.0"]
    assert _current(root) == "versions/3.0"


def test_bad_version_names_are_refused_before_anything_is_written(deploy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = deploy(_source(tmp_path, "1.0"), model_version="../etc")
    assert res.rc != 0
    assert "is not a version name" in res.out
    assert not deploy.root.exists()
