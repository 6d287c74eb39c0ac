"""The 64-bit preflight: ELF class refusals, and the Pi 5 / Pi 4 "Illegal instruction" reproduced under qemu-aarch64.

The dotprod library is compiled here, in tmp_path, with Debian's gcc-aarch64-linux-gnu (the Makefile's
CROSS_PACKAGES): `sdot` is ARMv8.2's dot product, which the Cortex-A76 (Pi 5) has and the Cortex-A72 (Pi 4)
and A53 (Pi 3) lack. The program that loads it runs against the cross libc (/usr/aarch64-linux-gnu, from
libc6-arm64-cross); the wheel tests need an arm64 root with python3: $PIBAKE_ARM64_SYSROOT, else the one
`pibake image build --base debian-trixie-arm64` caches.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pibake_target import runtimes
from pibake_target.errors import ModelError

from pibake import boards, isa, preflight, preflight_dynamic
from pibake.boards import Board
from pibake.emulate import user
from pibake.emulate.user import Outcome, UserRun
from pibake.errors import ToolMissing, UsageError, VerificationFailed
from tests.conftest import run_cli
from tests.wheels import EM_AARCH64, EM_X86_64, elf32, elf64, make_wheel, tflite_armv7l_wheel

CROSS_GCC = "aarch64-linux-gnu-gcc"
CROSS_SYSROOT = Path("/usr/aarch64-linux-gnu")
# -march=armv7-a -mfpu=neon-vfpv4's tags, as in test_isa.py.
ARMV7 = {6: 10, 10: 5, 12: 2}

DOT_C = """
#include <arm_neon.h>
/* 2 * 3 summed over 4 bytes: 24, by one SDOT (ARMv8.2-A dot product). */
int dot(void) {
    int8x16_t a = vdupq_n_s8(2), b = vdupq_n_s8(3);
    return vgetq_lane_s32(vdotq_s32(vdupq_n_s32(0), a, b), 0);
}
"""
MAIN_C = """
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "dlopen: %s\\n", dlerror()); return 2; }
    int (*dot)(void) = (int (*)(void))dlsym(lib, "dot");
    if (!dot) { fprintf(stderr, "dlsym: %s\\n", dlerror()); return 2; }
    printf("dot=%d\\n", dot());
    return 0;
}
"""
# A wheel whose package runs the library's dot() when imported, through ctypes: native code, no CPython headers.
DOTWHEEL_INIT = b"""import ctypes
import pathlib

DOT = ctypes.CDLL(str(pathlib.Path(__file__).with_name("libdot.so"))).dot()
"""


def pi5() -> Board:
    """The Pi 5's row as the board table will have it (Raspberry Pi 5 Model B, BCM2712, Cortex-A76)."""
    return boards.BOARDS.get("pi5") or dataclasses.replace(
        boards.get("pi4"), name="pi5", model="Raspberry Pi 5 Model B", soc="BCM2712", core="Cortex-A76",
        cpu64="cortex-a76",
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Dotprod:
    library: Path
    program: Path


@pytest.fixture(scope="module")
def dotprod(tmp_path_factory: pytest.TempPathFactory) -> Dotprod:
    """libdot.so (-march=armv8.2-a+dotprod, one sdot) and the program that dlopens it and prints dot()."""
    if shutil.which(CROSS_GCC) is None or not CROSS_SYSROOT.is_dir():
        pytest.skip(f"{CROSS_GCC} or {CROSS_SYSROOT} is missing: make cross-deps (gcc-aarch64-linux-gnu)")
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static is missing: make deps (qemu-user-static)")
    out = tmp_path_factory.mktemp("dotprod")
    (out / "dot.c").write_text(DOT_C)
    (out / "main.c").write_text(MAIN_C)
    compile_ = [CROSS_GCC, "-O2", "-Wall", "-Werror"]
    subprocess.run([*compile_, "-march=armv8.2-a+dotprod", "-shared", "-fPIC", "-o", "libdot.so", "dot.c"],
                   cwd=out, check=True)  # fmt: skip
    subprocess.run([*compile_, "-o", "main", "main.c"], cwd=out, check=True)
    return Dotprod(out / "libdot.so", out / "main")


@pytest.fixture(scope="module")
def dotwheel(dotprod: Dotprod, tmp_path_factory: pytest.TempPathFactory) -> Path:
    members = {
        "dotwheel/__init__.py": DOTWHEEL_INIT,
        "dotwheel/libdot.so": dotprod.library.read_bytes(),
        "dotwheel-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: dotwheel\nVersion: 1.0\n",
        "dotwheel-1.0.dist-info/top_level.txt": b"dotwheel\n",
    }
    return make_wheel(tmp_path_factory.mktemp("wheels") / "dotwheel-1.0-py3-none-linux_aarch64.whl", members)


@pytest.fixture(scope="module")
def tflite_wheel() -> Path:
    """Module-scoped, so that it is fetched before isolated_cache moves $PIBAKE_CACHE (and the wheel cache)."""
    return tflite_armv7l_wheel()


def arm64_sysroot() -> Path:
    """$PIBAKE_ARM64_SYSROOT, else the cached arm64 root; skipped (a failure under PIBAKE_NO_SKIP) when none."""
    env = os.environ.get("PIBAKE_ARM64_SYSROOT")
    root = Path(env) if env else preflight_dynamic.find_sysroot("arm64")
    if root is None or not (root / "usr/bin/python3").exists():
        pytest.skip(
            "no arm64 root with python3: pibake image build --base debian-trixie-arm64, or PIBAKE_ARM64_SYSROOT=DIR"
        )
    return root


# ---------------------------------------------------------------- the class, reproduced with a program


def test_the_library_holds_an_sdot(dotprod: Dotprod) -> None:
    code = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(dotprod.library)], capture_output=True, text=True, check=True
    ).stdout
    assert "sdot\tv" in code


@pytest.mark.parametrize(
    ("board", "outcome"),
    [("pi5", Outcome.OK), ("pi4", Outcome.SIGILL), ("pi3b-plus", Outcome.SIGILL), ("pi-zero-2", Outcome.SIGILL)],
)
def test_dotprod_runs_on_the_pi5s_core_and_dies_of_sigill_on_the_pi4s_and_pi3s(
    dotprod: Dotprod, board: str, outcome: Outcome
) -> None:
    the_board = pi5() if board == "pi5" else boards.get(board)
    assert the_board.cpu64 is not None
    trial = preflight_dynamic.try_program(
        [dotprod.program, dotprod.library],
        subject=dotprod.library.name,
        board=the_board,
        cpu=the_board.cpu64,
        sysroot=CROSS_SYSROOT,
    )
    assert trial.run.outcome is outcome, trial.run
    if outcome is Outcome.OK:
        assert trial.ok and trial.run.stdout == "dot=24\n" and trial.error() == ""
        return
    # qemu-aarch64 7.2 kills itself with the guest's signal and says so on stderr.
    assert trial.run.returncode == -4 and trial.run.signal == 4
    assert "qemu: uncaught target signal 4 (Illegal instruction)" in trial.run.stderr
    error = trial.error()
    assert error.startswith("libdot.so died with SIGILL (Illegal instruction) under qemu-aarch64 -cpu cortex-a")
    assert f"the {board}'s {the_board.core} ({the_board.cpu64})" in error
    assert "ARMv8.0-A with CRC32" in error and "would die the same way on the board" in error
    assert trial.run.seconds < 30
    assert not list(dotprod.program.parent.glob("*.core")) and not list(Path.cwd().glob("qemu_*.core"))


def test_a_run_that_fails_otherwise_is_no_sigill_and_shows_its_stderr(dotprod: Dotprod, tmp_path: Path) -> None:
    trial = preflight_dynamic.try_program(
        [dotprod.program, tmp_path / "missing.so"],
        subject="missing.so",
        board=boards.get("pi4"),
        cpu="cortex-a72",
        sysroot=CROSS_SYSROOT,
    )
    assert trial.run.outcome is Outcome.FAILED and trial.run.returncode == 2
    error = trial.error()
    assert "ended with exit 2, which is no Illegal instruction" in error
    assert "dlopen:" in error and "missing.so" in error


# ---------------------------------------------------------------- the wheel, on an arm64 root's Python


@pytest.mark.arm64_base
def test_preflight_refuses_the_dotprod_wheel_for_the_pi4_and_passes_it_for_the_pi5(
    dotwheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysroot = arm64_sysroot()
    res = run_cli(["preflight", "--arch", "arm64", "--board", "pi4", "--sysroot", str(sysroot), str(dotwheel)])
    assert res.code == VerificationFailed.exit_code, res.out + res.err
    assert "import dotwheel on cortex-a72: died with SIGILL" in res.out
    assert res.err.startswith(f"pibake: error: {dotwheel.name} died with SIGILL (Illegal instruction) under ")
    assert "qemu-aarch64 -cpu cortex-a72 (import dotwheel, in " in res.err
    assert f"{dotwheel.name}: dotwheel/__init__.py" in res.err  # where Python was (faulthandler)
    assert "the pi4's Cortex-A72 (cortex-a72)" in res.err
    monkeypatch.setitem(boards.BOARDS, "pi5", pi5())
    res = run_cli(["preflight", "--arch", "arm64", "--board", "pi5", "--sysroot", str(sysroot), str(dotwheel)])
    assert res.code == 0, res.out + res.err
    assert "import dotwheel on cortex-a76: ran" in res.out and "OK on board pi5" in res.out


@pytest.mark.arm64_base
def test_a_missing_dependency_is_a_failure_that_says_so(tmp_path: Path) -> None:
    sysroot = arm64_sysroot()
    wheel = make_wheel(
        tmp_path / "needy-1-py3-none-linux_aarch64.whl",
        {"needy/__init__.py": b"import not_installed_anywhere\n", "needy/_x.so": elf64(EM_AARCH64)},
    )
    report = preflight.preflight([wheel], board="pi4", arch="arm64", sysroot=sysroot)
    [error] = report.errors()
    assert "could not be checked on the pi4's Cortex-A72 (cortex-a72): import needy" in error
    assert "No module named 'not_installed_anywhere'" in error and "pass its wheel too" in error


# ---------------------------------------------------------------- ELF class


def test_the_userland_loads_only_its_own_elf_class() -> None:
    aarch64 = isa.read_elf(elf64(EM_AARCH64), "a.so")
    arm = isa.read_elf(elf32(ARMV7), "b.so")
    x86 = isa.read_elf(elf64(EM_X86_64), "c.so")
    assert (aarch64.elf_class, aarch64.machine, arm.elf_class, arm.machine) == (64, "EM_AARCH64", 32, "EM_ARM")
    assert isa.userland_problem(aarch64, "arm64") is None and isa.userland_problem(arm, "armhf") is None
    assert isa.userland_problem(aarch64, "armhf") == (
        "is ELFCLASS64 AArch64 (arm64) code, which a 32-bit (armhf) system cannot load: "
        "a process loads only ELFCLASS32 ARM libraries"
    )
    assert isa.userland_problem(arm, "arm64") == (
        "is ELFCLASS32 ARM (armhf) code, which a 64-bit (arm64) system cannot load: "
        "a process loads only ELFCLASS64 AArch64 libraries"
    )
    for userland in ("armhf", "arm64"):
        assert isa.userland_problem(x86, userland) == "is ELFCLASS64 X86_64 code, which no ARM system can run"
    broken = isa.read_elf(elf32(ARMV7)[:60], "d.so")
    assert "unreadable" in (isa.userland_problem(broken, "arm64") or "")


def test_an_aarch64_wheel_for_a_32_bit_os_is_refused_by_its_elf_class(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "litert-1-cp311-cp311-linux_aarch64.whl", {"litert/_x.so": elf64(EM_AARCH64)})
    errors = preflight.preflight([wheel], board="pi4", arch="armhf").errors()
    assert len(errors) == 2  # the board and the emulated CPU
    assert errors[0].startswith(f"{wheel.name} cannot be loaded on board pi4 (")
    assert "litert/_x.so is ELFCLASS64 AArch64 (arm64) code, which a 32-bit (armhf) system cannot load" in errors[0]
    assert "a *_armv7l.whl" in errors[0] and "--arch arm64" in errors[0]
    assert "Illegal instruction" not in errors[0]
    # The Pi 2 cannot run a 64-bit OS: no --arch arm64 advice there.
    assert "--arch arm64" not in preflight.preflight([wheel], board="pi2", arch="armhf").errors()[0]


def test_without_arch_the_wheels_elf_headers_choose_the_userland(tmp_path: Path, tflite_wheel: Path) -> None:
    aarch64 = make_wheel(tmp_path / "litert-1-cp311-cp311-linux_aarch64.whl", {"litert/_x.so": elf64(EM_AARCH64)})
    pure = make_wheel(tmp_path / "tqdm-1-py3-none-any.whl", {"tqdm/__init__.py": b""})
    assert preflight.userland_of(tuple(isa.scan([aarch64, pure]))) == "arm64"
    assert preflight.userland_of(tuple(isa.scan([tflite_wheel, pure]))) == "armhf"
    assert preflight.userland_of(tuple(isa.scan([pure]))) == preflight.DEFAULT_ARCH
    with pytest.raises(UsageError, match=r"code for both userlands \(arm64: litert-1-.*; armhf: tflite_runtime-.*name"):
        preflight.userland_of(tuple(isa.scan([aarch64, tflite_wheel])))
    # An armv7l wheel checked without --arch is checked for armhf: read, not run.
    report = preflight.preflight([tflite_wheel], board="pi4")
    assert report.targets[0].arch == "armhf" and report.ok, report.describe()


def test_an_armv7_wheel_for_a_64_bit_os_is_refused_without_running_anything(
    tflite_wheel: Path, isolated_cache: Path
) -> None:
    wheel = tflite_wheel
    res = run_cli(["preflight", "--arch", "arm64", "--board", "pi4", str(wheel)])
    assert res.code == VerificationFailed.exit_code, res.err
    assert res.err.startswith(f"pibake: error: {wheel.name} cannot be loaded on board pi4 (BCM2711, 64-bit OS)")
    assert "is ELFCLASS32 ARM (armhf) code, which a 64-bit (arm64) system cannot load" in res.err
    assert "a *_aarch64.whl" in res.err and "--arch armhf" in res.err
    assert "import" not in res.out  # no sysroot in the isolated cache, and none needed


def test_arm64_usage_errors(tmp_path: Path, isolated_cache: Path) -> None:
    wheel = make_wheel(tmp_path / "x-1-py3-none-linux_aarch64.whl", {"x/_x.so": elf64(EM_AARCH64)})
    with pytest.raises(UsageError, match=r"board pi2 .* cannot run a 64-bit OS: check its wheels with --arch armhf"):
        preflight.preflight([wheel], board="pi2", arch="arm64")
    with pytest.raises(UsageError, match="--profile is for the 32-bit check"):
        preflight.preflight([wheel], board="pi4", arch="arm64", profile="virt")
    with pytest.raises(UsageError, match="--model and --sysroot are for the 64-bit check"):
        preflight.preflight([wheel], board="pi4", arch="armhf", model=tmp_path / "m.tflite")
    with pytest.raises(ToolMissing, match=r"pibake image build --base debian-trixie-arm64`, or pass --sysroot DIR"):
        preflight.preflight([wheel], board="pi4")  # the wheel's AArch64 code: the 64-bit check
    with pytest.raises(UsageError, match="qemu-aarch64 has no CPU 'cortex-a9'"):
        preflight.preflight([wheel], board="pi4", arch="arm64", cpu="cortex-a9")
    with pytest.raises(ToolMissing, match=r"pibake image build --base debian-trixie-arm64`, or pass --sysroot DIR"):
        preflight.preflight([wheel], board="pi4", arch="arm64")
    with pytest.raises(UsageError, match="has no usr/bin/python3"):
        preflight.preflight([wheel], board="pi4", arch="arm64", sysroot=tmp_path)
    res = run_cli(["preflight", "--arch", "arm64", "--board", "pi4", str(wheel)])
    assert res.code == ToolMissing.exit_code and "--sysroot DIR" in res.err and "Traceback" not in res.err


# ---------------------------------------------------------------- the pieces


def test_find_sysroot_picks_the_newest_complete_arm64_root(tmp_path: Path) -> None:
    def root(name: str, arch: str, *, complete: bool = True) -> Path:
        top = tmp_path / "rootfs" / name
        (top / "root").mkdir(parents=True)
        (top / "recipe.json").write_text(f'{{"arch": "{arch}", "suite": "trixie"}}')
        if complete:
            (top / "complete").write_text("1 s\n")
        return top / "root"

    assert preflight_dynamic.find_sysroot("arm64", cache=tmp_path) is None
    root("a", "armhf")
    root("b", "arm64", complete=False)
    assert preflight_dynamic.find_sysroot("arm64", cache=tmp_path) is None
    first = root("c", "arm64")
    assert preflight_dynamic.find_sysroot("arm64", cache=tmp_path) == first
    second = root("d", "arm64")
    os.utime(second.parent / "complete", (2e9, 2e9))
    assert preflight_dynamic.find_sysroot("arm64", cache=tmp_path) == second


def test_top_level_modules_from_top_level_txt_or_the_tree(tmp_path: Path) -> None:
    listed = make_wheel(
        tmp_path / "a-1-py3-none-any.whl", {"a/__init__.py": b"", "a-1.dist-info/top_level.txt": b"a\n_a_c\n\n"}
    )
    assert preflight_dynamic.top_level_modules(listed) == ["a", "_a_c"]
    tree = make_wheel(
        tmp_path / "b-1-cp313-cp313-linux_aarch64.whl",
        {
            "ai_edge_litert/__init__.py": b"",
            "ai_edge_litert/interpreter.py": b"",
            "_pywrap.cpython-313-aarch64-linux-gnu.so": b"",
            "helper.py": b"",
            "b-1.dist-info/METADATA": b"",
            "b-1.data/scripts/tool": b"",
        },
    )
    assert preflight_dynamic.top_level_modules(tree) == ["ai_edge_litert", "_pywrap", "helper"]
    (tmp_path / "broken.whl").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(VerificationFailed, match="not a readable wheel"):
        preflight_dynamic.top_level_modules(tmp_path / "broken.whl")


def test_unpack_lays_the_wheel_out_as_site_packages(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path / "p-1-py3-none-any.whl",
        {"p/__init__.py": b"", "p-1.data/platlib/q/__init__.py": b"", "../escape.py": b""},
    )
    site = preflight_dynamic.unpack(wheel, tmp_path / "site")
    assert (site / "p/__init__.py").is_file() and (site / "q/__init__.py").is_file()
    assert not (tmp_path / "escape.py").exists()


def test_library_dirs_follow_absolute_symlinks_inside_the_sysroot(tmp_path: Path) -> None:
    lib = tmp_path / "usr/lib/aarch64-linux-gnu"
    (lib / "blas").mkdir(parents=True)
    (lib / "blas/libblas.so.3").write_bytes(b"")
    (tmp_path / "etc/alternatives").mkdir(parents=True)
    (tmp_path / "etc/alternatives/libblas.so.3-aarch64-linux-gnu").symlink_to(
        "/usr/lib/aarch64-linux-gnu/blas/libblas.so.3"
    )
    (lib / "libblas.so.3").symlink_to("/etc/alternatives/libblas.so.3-aarch64-linux-gnu")
    (lib / "libz.so.1").symlink_to("libz.so.1.3")
    assert preflight_dynamic.library_dirs(tmp_path) == ["/usr/lib/aarch64-linux-gnu/blas"]
    # As trixie's libblas3 lays it out: the alternative names a link in blas/ that is relative to its file.
    (lib / "blas/libblas.so.3").unlink()
    (lib / "blas/libblas.so.3.12.1").write_bytes(b"")
    (lib / "blas/libblas.so.3").symlink_to("libblas.so.3.12.1")
    assert preflight_dynamic.library_dirs(tmp_path) == ["/usr/lib/aarch64-linux-gnu/blas"]
    env = preflight_dynamic.python_env(tmp_path, [Path("/w/site-0")], home=Path("/w/home"))
    assert env["LD_LIBRARY_PATH"] == "/usr/lib/aarch64-linux-gnu/blas" and env["PYTHONPATH"] == "/w/site-0"
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3.13").write_bytes(b"")
    (tmp_path / "usr/bin/python3").symlink_to("python3.13")
    assert preflight_dynamic.python_version(tmp_path) == "3.13"


def test_qemu_users_ways_of_reporting_a_signal() -> None:
    def run(returncode: int, stderr: str = "") -> UserRun:
        return UserRun(("qemu-aarch64-static",), "cortex-a72", returncode, "", stderr, 0.1)

    assert run(-4).outcome is Outcome.SIGILL and run(-4).describe_exit() == "signal 4 (Illegal instruction)"
    shell = run(132, "qemu: uncaught target signal 4 (Illegal instruction) - core dumped\n")
    assert shell.outcome is Outcome.SIGILL and shell.signal == 4
    assert run(-11).outcome is Outcome.FAILED and run(-11).describe_exit() == "signal 11 (Segmentation fault)"
    assert run(1, "Traceback").outcome is Outcome.FAILED and run(1).describe_exit() == "exit 1"
    assert run(0).outcome is Outcome.OK


def test_qemu_aarch64_has_every_64_bit_core_the_table_names() -> None:
    if shutil.which("qemu-aarch64-static") is None:
        pytest.skip("qemu-aarch64-static is missing: make deps (qemu-user-static)")
    cpus = user.cpus("arm64")
    assert {"cortex-a53", "cortex-a72", "cortex-a76"} <= set(cpus)
    assert set(preflight_dynamic.CORE_LEVELS) <= set(cpus)
    with pytest.raises(UsageError, match="no qemu-user program for 'mips'"):
        user.cpus("mips")


def test_the_qemu_user_first_in_this_processs_path_is_the_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer QEMU put first in PATH is used although the emulated program's own PATH (guest paths) lacks it."""
    newer = tmp_path / "qemu-aarch64-static"
    newer.write_text('#!/bin/sh\necho "qemu-aarch64 version 10.0.2 (stand-in)"; echo "args: $*" >&2\n')
    newer.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert user.version("arm64") == "qemu-aarch64 version 10.0.2 (stand-in)"
    done = user.run_on_core(["/usr/bin/python3", "-V"], cpu="cortex-a72", sysroot=tmp_path, env={"PATH": "/usr/bin"})
    assert done.argv[0] == str(newer) and done.stderr.startswith("args: -cpu cortex-a72 -L ")


def test_invoke_once_runs_one_inference_on_zeros_of_each_inputs_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Pi-side function the 64-bit preflight calls under qemu-aarch64, here with a stand-in interpreter."""
    calls: list[object] = []

    class Interpreter:
        def allocate_tensors(self) -> None:
            calls.append("allocate")

        def get_input_details(self) -> list[dict[str, object]]:
            return [{"index": 3, "shape": np.array([1, 2, 2, 3]), "dtype": np.float32}]

        def set_tensor(self, index: int, value: np.ndarray) -> None:  # type: ignore[type-arg]
            calls.append((index, value.shape, value.dtype, float(value.sum())))

        def invoke(self) -> None:
            calls.append("invoke")

    monkeypatch.setitem(runtimes.LOADERS, ".tflite", lambda path, threads: (Interpreter(), "fake 1.0"))
    assert runtimes.invoke_once("m.tflite") == "fake 1.0"
    assert calls == ["allocate", (3, (1, 2, 2, 3), np.float32, 0.0), "invoke"]

    class Broken(Interpreter):
        def invoke(self) -> None:
            raise RuntimeError("op SOME_OP is not supported")

    monkeypatch.setitem(runtimes.LOADERS, ".tflite", lambda path, threads: (Broken(), "fake 1.0"))
    with pytest.raises(ModelError, match=r"cannot run the model m\.tflite: op SOME_OP"):
        runtimes.invoke_once("m.tflite")
