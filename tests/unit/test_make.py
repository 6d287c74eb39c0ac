"""Every target `make help` lists dry-runs (`make -n`), so a target that names a missing prerequisite cannot land.

`make -n` prints recipes instead of running them, with three exceptions: `$(shell ...)` while the Makefile is read,
and recipe lines that use `$(MAKE)` or start with `+`. So make runs here with a SHELL that records every command
it really starts and refuses all but the harmless ones (`id -u`, and sub-makes, which inherit -n): nothing gets
installed, booted or built, and a new line that would run under -n fails the test instead.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="GNU make is not installed")

# Command-line variables some targets need, harmless ones.
TARGET_VARIABLES = {"flash": ["DEVICE=/dev/null"]}

# A stand-in for make's SHELL: logs each command make starts, runs it only if it matches ALLOWED.
GUARD = """#!/bin/bash
printf '%s\\n' "${@: -1}" >> "$PIBAKE_MAKE_LOG"
if [[ "${@: -1}" =~ $PIBAKE_MAKE_ALLOWED ]]; then exec /bin/bash "$@"; fi
printf 'refused under make -n: %s\\n' "${@: -1}" >&2
exit 97
"""


@dataclass
class MakeRun:
    code: int
    out: str
    err: str
    started: list[str]


def _make(args: list[str], tmp_path: Path) -> MakeRun:
    """Run make in the checkout with the guard as its SHELL, outside any make that runs the tests."""
    assert MAKE is not None
    guard = tmp_path / "guard.sh"
    if not guard.exists():
        guard.write_text(GUARD)
        guard.chmod(guard.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "started.log"
    log.write_text("")
    # A POSIX extended regular expression (bash's =~): a sub-make, maybe behind an `[ -f FILE ] ||` guard.
    sub_make = rf"(\[ -f [^ ]+ \] \|\| )?{re.escape(MAKE)}( [^ ;&|<>$`]+)*"
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(PIBAKE_MAKE_LOG=str(log), PIBAKE_MAKE_ALLOWED=rf"^(id -u|{sub_make})$")
    result = subprocess.run(
        [MAKE, "--no-print-directory", f"SHELL={guard}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return MakeRun(result.returncode, result.stdout, result.stderr, log.read_text().splitlines())


def _listed_targets() -> list[str]:
    assert MAKE is not None
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run([MAKE, "help"], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    return [match[1] for match in re.finditer(r"^  make (\S+)", out, re.MULTILINE)]


TARGETS = _listed_targets() if MAKE else []


def test_help_lists_the_targets() -> None:
    assert {"help", "venv", "prepare", "finalize", "flash", "lint", "docs", "sanity", "test"} <= set(TARGETS)
    assert len(TARGETS) == len(set(TARGETS))


@pytest.mark.parametrize("target", TARGETS)
def test_target_dry_runs(target: str, tmp_path: Path) -> None:
    run = _make(["-n", target, *TARGET_VARIABLES.get(target, [])], tmp_path)
    assert run.code == 0, f"make -n {target} failed:\n{run.err}"
    assert "refused under make -n" not in run.err
    assert "No rule to make target" not in run.err


def test_prepare_and_finalize_install_what_they_need(tmp_path: Path) -> None:
    for target, command in (("prepare", "image prepare"), ("finalize", "image finalize")):
        run = _make(["-n", target], tmp_path)
        assert run.code == 0, run.err
        assert "apt-get" in run.out and "update-binfmts" in run.out  # deps
        assert f"pibake {command}" in run.out


@pytest.mark.parametrize("dry_run", [["-n"], []], ids=["make -n flash", "make flash"])
def test_flash_without_device_prints_its_usage_before_anything_runs(dry_run: list[str], tmp_path: Path) -> None:
    run = _make([*dry_run, "flash"], tmp_path)
    assert run.code == 2
    assert "usage: make flash DEVICE=/dev/sdX" in run.err
    assert run.out == ""
    assert [command for command in run.started if command != "id -u"] == []


def test_flash_passes_device_and_image_through(tmp_path: Path) -> None:
    run = _make(["-n", "flash", "DEVICE=/dev/null", "IMAGE=build/x.img"], tmp_path)
    assert run.code == 0, run.err
    assert re.search(r"pibake flash build/x\.img /dev/null\s*$", run.out, re.MULTILINE)


def test_every_image_build_names_its_base_and_demo_takes_the_boards(tmp_path: Path) -> None:
    # pibake's default base follows the board (image.build.default_base); what make builds must not, so that IMAGE
    # is the base it says. `make demo` is `pibake demo --board B`: the board's base unless DEMO_BASE names one.
    for target, base in (
        ("image", "debian-bullseye"),
        ("image-arm64", "debian-trixie-arm64"),
        ("image-armhf", "debian-bookworm-armhf"),
    ):
        run = _make(["-n", target], tmp_path)
        assert run.code == 0, run.err
        commands = [ln for ln in run.out.splitlines() if re.search(r"pibake (image build|demo)\b", ln)]
        assert commands, target
        assert all(f"--base {base}" in ln for ln in commands), commands
    run = _make(["-n", "demo", "BOARD=pi4"], tmp_path)
    assert re.search(r"pibake demo --board pi4\s*$", run.out, re.MULTILINE), run.out
    run = _make(["-n", "demo", "DEMO_BASE=debian-bookworm-armhf", "BOARD=pi2"], tmp_path)
    assert re.search(r"pibake demo --board pi2 +--base debian-bookworm-armhf", run.out), run.out


def test_images_builds_both_bases_side_by_side(tmp_path: Path) -> None:
    # make test's first step on a fresh machine: the two root filesystems at once (make -j2), each with its base.
    run = _make(["-n", "images"], tmp_path)
    assert run.code == 0, run.err
    assert re.search(r"make\b.* -j2 image image-arm64", run.out), run.out
    builds = [ln for ln in run.out.splitlines() if "pibake image build" in ln]
    assert len(builds) == 2, builds
    assert "--base debian-bullseye " in builds[0] and "--base debian-trixie-arm64 " in builds[1], builds
    run = _make(["-n", "test-integration"], tmp_path)
    # The arm64 root filesystem (the longest build) starts first, in the background; the 32-bit builds take the
    # other core, the tests that need no arm64 base follow them, the rest wait for it.
    lines = run.out.splitlines()
    start = next(i for i, ln in enumerate(lines) if "test_times.py start image-arm64" in ln)
    assert "pibake image build --base debian-trixie-arm64 --board pi4" in lines[start], lines[start]
    builds_32 = next(i for i, ln in enumerate(lines) if "-j2 image kernel PROFILE=vexpress-a9" in ln)
    first = next(i for i, ln in enumerate(lines) if 'not arm64_base" tests' in ln)
    wait = next(i for i, ln in enumerate(lines) if "test_times.py wait image-arm64" in ln)
    then = next(i for i, ln in enumerate(lines) if '-m "arm64_base and' in ln)
    assert start < builds_32 < first < wait < then, run.out
    assert re.search(r"pibake kernel build --profile vexpress-a9 --provider debian-source", run.out), run.out
    assert "molecule test" not in run.out  # test-integration alone is pytest's


def test_make_test_runs_the_64_bit_half_beside_the_32_bit_half(tmp_path: Path) -> None:
    # Each half drives one guest at a time: the arm64 build, Molecule's default scenario and pytest's arm64 part run as
    # one background job beside the 32-bit builds and pytest's first part, and make test waits for it at the end.
    run = _make(["-n", "test"], tmp_path)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    start = next(i for i, ln in enumerate(lines) if "test_times.py start arm64 " in ln)
    job = lines[start]
    build, molecule = job.index("--base debian-trixie-arm64"), job.index("molecule test")
    arm64_tests = job.index('-m "arm64_base and')
    assert build < job.index("&&") < molecule < arm64_tests, job
    assert "run molecule-default --" in job and "run image-arm64 --" in job and "run pytest-arm64 --" in job, job
    builds_32 = next(i for i, ln in enumerate(lines) if "-j2 image kernel PROFILE=vexpress-a9" in ln)
    first = next(i for i, ln in enumerate(lines) if 'not arm64_base" tests' in ln)
    wait = next(i for i, ln in enumerate(lines) if "test_times.py wait arm64" in ln)
    assert start < builds_32 < first < wait == len(lines) - 2, run.out  # then only the table
    assert sum("molecule test" in ln for ln in lines) == 1, run.out
    assert sum('-m "arm64_base and' in ln for ln in lines) == 1, run.out
