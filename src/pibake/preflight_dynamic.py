"""The 64-bit preflight: run the wheels on the board's own core under qemu-aarch64 and see whether they SIGILL.

AArch64 ELF files carry no build attributes that say which FP/SIMD extensions they use (Arm's "ELF for
the Arm 64-bit Architecture" defines none like AArch32's Tag_FP_arch), and libraries such as XNNPACK
pick their kernels at run time from the CPU's features: reading the files cannot tell whether a wheel
runs on a Pi 4. Running it can. Each native aarch64 wheel is unpacked into a temporary directory and
imported by the board's Python (the arm64 root filesystem's ``/usr/bin/python3``) under
``qemu-aarch64 -cpu CORE``, CORE being the board's own (board table: cpu64); with a model, one
inference follows, through the Pi-side package (target/pibake_target, ``runtimes.invoke_once``). A
SIGILL there is what the board would do: a refusal that names the board, the core and the wheel.

The root filesystem is the one ``pibake image build --base debian-trixie-arm64`` caches under
``$PIBAKE_CACHE/rootfs/<hash>/root`` (found by its recipe.json's ``"arch": "arm64"``), or any directory
given as the sysroot: it is only read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pibake import resources
from pibake.boards import Board
from pibake.emulate import user
from pibake.emulate.user import Outcome, UserRun
from pibake.errors import ToolMissing, UsageError, VerificationFailed
from pibake.util.cache import cache_root

log = logging.getLogger(__name__)

PYTHON = Path("usr/bin/python3")
ARCH = "arm64"

# What each 64-bit core executes, for messages (Arm's Technical Reference Manuals of the Cortex-A53, A72 and
# A76; the Pi's SoCs leave the optional Cryptography Extensions out).
CORE_LEVELS = {
    "cortex-a53": "ARMv8.0-A with CRC32",
    "cortex-a72": "ARMv8.0-A with CRC32",
    "cortex-a76": "ARMv8.2-A with dot product, FP16, LSE atomics and RCpc",
}

# Imports each module named on the command line; faulthandler (-X faulthandler) prints the Python stack on SIGILL.
_IMPORT = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
_INFER = "import sys\nfrom pibake_target.runtimes import invoke_once\nprint(invoke_once(sys.argv[1]))\n"
# faulthandler's lines: `  File "/tmp/.../ai_edge_litert/interpreter.py", line 975 in invoke`.
_FRAME = re.compile(r'^\s+File "([^"]+)", line \d+', re.MULTILINE)


@dataclass(frozen=True)
class Trial:
    """One program run on the board's core: what was tried, on what, and how it ended."""

    # The wheel(s) or file under test, and what was done with them ("import ai_edge_litert").
    subject: str
    action: str
    board: Board
    cpu: str
    run: UserRun
    # The file of an unpacked wheel where Python was when the program died ("wheel.whl: pkg/mod.py"), if known.
    culprit: str | None = None

    @property
    def ok(self) -> bool:
        return self.run.outcome is Outcome.OK

    def describe(self) -> str:
        """One line for the report, e.g. "import dotwheel on cortex-a72: died with SIGILL (Illegal instruction)"."""
        where = f" (in {self.culprit})" if self.culprit else ""
        return f"{self.action} on {self.cpu}: {self.run.outcome.value}{where} in {self.run.seconds:.1f} s"

    def error(self) -> str:
        """The refusal (SIGILL) or failure message, with what to do; "" when the run went well."""
        board = self.board
        if self.cpu == board.cpu64:
            core = f"the {board.name}'s {board.core} ({self.cpu})"
        else:
            core = f"{self.cpu} (not the {board.name}'s own core, {board.core})"
        if self.run.outcome is Outcome.SIGILL:
            where = f", in {self.culprit}" if self.culprit else ""
            level = CORE_LEVELS.get(self.cpu, f"what {self.cpu} implements")
            return (
                f"{self.subject} died with SIGILL (Illegal instruction) under qemu-aarch64 -cpu {self.cpu} "
                f"({self.action}{where}): {core}, {level}, lacks an instruction it uses, so it would die the same "
                f"way on the board. Use a build for {level} (or one that chooses its kernels by the CPU's features "
                "at run time), or a board whose core has the instruction."
            )
        if self.run.outcome is Outcome.FAILED:
            return (
                f"{self.subject} could not be checked on {core}: {self.action} under "
                f"qemu-aarch64 ended with {self.run.describe_exit()}, which is no Illegal instruction. Fix what it "
                "says (a dependency missing: pass its wheel too; a wheel for another Python: use the one for the "
                f"sysroot's) and run preflight again:\n{self.run.stderr_tail()}"
            )
        return ""


def find_sysroot(arch: str = ARCH, *, cache: Path | None = None) -> Path | None:
    """The newest complete root filesystem for ARCH ("arm64", "armhf") in pibake's cache, or None.

    `pibake image build` keeps each root under CACHE/rootfs/<hash>/ (CACHE: $PIBAKE_CACHE, else
    ~/.cache/pibake) as ``root/``, with ``recipe.json`` (its "arch") and a ``complete`` mark.
    """
    found = []
    for recipe in ((cache or cache_root()) / "rootfs").glob("*/recipe.json"):
        top = recipe.parent
        try:
            matches = json.loads(recipe.read_text()).get("arch") == arch
        except (OSError, ValueError, AttributeError):
            continue
        if matches and (top / "complete").exists() and (top / "root").is_dir():
            found.append(top)
    return max(found, key=lambda top: (top / "complete").stat().st_mtime) / "root" if found else None


def require_sysroot(sysroot: Path | None, *, python: bool = True) -> Path:
    """SYSROOT, else the cached arm64 root filesystem; checked to hold a Python when PYTHON is true.

    Raises ToolMissing when there is none (with how to build it), UsageError when SYSROOT is not a
    directory or has no usr/bin/python3.
    """
    root = sysroot or find_sysroot(ARCH)
    if root is None:
        raise ToolMissing(
            "the 64-bit preflight runs the wheels under qemu-aarch64 with an arm64 root filesystem, and there is "
            f"none in {cache_root() / 'rootfs'}: build one with `pibake image build --base debian-trixie-arm64`, "
            "or pass --sysroot DIR (an arm64 root with python3)"
        )
    if not root.is_dir():
        raise UsageError(f"--sysroot {root}: no such directory")
    if python and not (root / PYTHON).exists():
        raise UsageError(
            f"--sysroot {root} has no {PYTHON}: give the root of an arm64 system with python3 installed "
            "(pibake image build --base debian-trixie-arm64 caches one)"
        )
    return root


def python_version(sysroot: Path) -> str | None:
    """The sysroot's Python as "3.13", from where its usr/bin/python3 link points (Debian: python3.13), or None."""
    link = sysroot / PYTHON
    name = link.readlink().name if link.is_symlink() else link.name
    found = re.fullmatch(r"python(\d+\.\d+)", name)
    return found.group(1) if found else None


def library_dirs(sysroot: Path) -> list[str]:
    """Guest directories of libraries that /usr/lib/<triplet>/*.so.* reach through absolute symlinks.

    qemu-user looks paths up in the sysroot first, but the dynamic loader follows an absolute symlink
    (Debian's alternatives: libblas.so.3 -> /etc/alternatives/libblas.so.3-aarch64-linux-gnu -> the BLAS
    numpy loads) to a path that is looked up anew and may be missing: naming the final directories in
    LD_LIBRARY_PATH lets the loader find them (measured on the bullseye armhf root, tests/unit/test_serve.py).
    """
    dirs: list[str] = []
    for link in sorted(sysroot.glob("usr/lib/*/*.so.*")):
        if not link.is_symlink():
            continue
        target = link.readlink()
        # The last absolute path of the chain: its directory is where the loader must look. A relative link after
        # it stays in that directory (trixie arm64: blas/libblas.so.3 -> libblas.so.3.12.1, measured 2026-11-30).
        final: Path | None = None
        for _ in range(8):  # alternatives chains are two links long
            if not target.is_absolute():
                break
            final = target
            inside = sysroot / target.relative_to("/")
            if not inside.is_symlink():
                break
            target = inside.readlink()
        if final is not None and (directory := str(final.parent)) not in dirs:
            dirs.append(directory)
    return dirs


def top_level_modules(wheel: Path) -> list[str]:
    """The importable top-level names of WHEEL: its dist-info top_level.txt, else what its tree holds.

    A tree's top level: packages (directories, except *.dist-info and *.data), modules (*.py) and extension
    modules (name.cpython-313-aarch64-linux-gnu.so -> name). Raises VerificationFailed for a damaged zip.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            listed = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/top_level.txt")]
            if listed:
                text = zf.read(listed[0]).decode("utf-8", "replace")
                return [line.strip() for line in text.splitlines() if line.strip().isidentifier()]
    except (zipfile.BadZipFile, OSError) as e:
        raise VerificationFailed(f"{wheel}: not a readable wheel ({e}); download it again") from e
    modules: list[str] = []
    for name in names:
        first, _, rest = name.partition("/")
        if rest:
            module = "" if first.endswith((".dist-info", ".data")) else first
        elif first.endswith(".py"):
            module = first[: -len(".py")]
        elif first.endswith(".so"):
            module = first.split(".", 1)[0]
        else:
            module = ""
        if module.isidentifier() and module not in modules:
            modules.append(module)
    return modules


def unpack(wheel: Path, dest: Path) -> Path:
    """WHEEL's files in DEST, as an installer would lay them out in site-packages (its *.data/purelib and
    platlib moved to the top). ZipFile.extractall keeps every member inside DEST (it drops ".." and leading
    "/"). Raises VerificationFailed for a damaged zip."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise VerificationFailed(f"{wheel}: not a readable wheel ({e}); download it again") from e
    for lib in [*dest.glob("*.data/purelib"), *dest.glob("*.data/platlib")]:
        for item in lib.iterdir():
            shutil.move(str(item), dest / item.name)
    return dest


def python_env(sysroot: Path, path: Sequence[Path], *, home: Path) -> dict[str, str]:
    """The environment of the emulated Python: PATH (guest paths), PYTHONPATH (host paths, which qemu-user
    reaches when the sysroot has no such path), no user site, no bytecode written, temporary files in HOME."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(str(p) for p in path),
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home),
    }
    if dirs := library_dirs(sysroot):
        env["LD_LIBRARY_PATH"] = ":".join(dirs)
    return env


def try_program(
    program: Sequence[str | os.PathLike[str]],
    *,
    subject: str,
    board: Board,
    cpu: str,
    sysroot: Path,
    action: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> Trial:
    """Run PROGRAM (an aarch64 executable and its arguments) on CPU, the core of BOARD, libraries from SYSROOT.

    SUBJECT names the file under test in messages; ACTION what was done (default: "run" and the program's
    name). Raises what user.run_on_core raises (ToolMissing, PibakeError on TIMEOUT seconds).
    """
    run = user.run_on_core(program, cpu=cpu, sysroot=sysroot, arch=ARCH, env=env, timeout=timeout)
    doing = action or f"run {' '.join(Path(os.fspath(p)).name for p in program)}"
    return Trial(subject, doing, board, cpu, run)


def try_wheels(
    wheels: Sequence[Path],
    *,
    board: Board,
    cpu: str,
    sysroot: Path,
    native: Sequence[Path] | None = None,
    model: Path | None = None,
    timeout: float = 600,
) -> list[Trial]:
    """Import each native wheel, then run one inference of MODEL, under qemu-aarch64 on CPU (BOARD's core).

    WHEELS are all unpacked side by side onto the emulated Python's path (a runtime's dependencies are
    among them; the sysroot's own packages, numpy say, are seen too); NATIVE are the ones to import
    (default: all WHEELS), each its own run of ``python3 -c 'import <top-level modules>'``. MODEL (a
    .tflite or .onnx file), when given, is loaded and run once on zeros by the Pi-side package. SYSROOT is an arm64
    root with usr/bin/python3 (require_sysroot). Each run gets TIMEOUT seconds.

    Returns one Trial per native wheel and one for the model. Raises ToolMissing when qemu-aarch64 is not
    installed, VerificationFailed for a damaged wheel, PibakeError for a run past TIMEOUT.
    """
    python = str(sysroot / PYTHON)
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="pibake-preflight-") as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        sites = {wheel: unpack(wheel, work / f"site-{i}") for i, wheel in enumerate(wheels)}
        env = python_env(sysroot, [*sites.values(), resources.TARGET], home=home)
        for wheel in native if native is not None else wheels:
            modules = top_level_modules(wheel)
            if not modules:
                log.warning("%s: no top-level module to import", wheel.name)
                continue
            run = user.run_on_core(
                [python, "-B", "-X", "faulthandler", "-c", _IMPORT, *modules],
                cpu=cpu, sysroot=sysroot, arch=ARCH, env=env, cwd=home, timeout=timeout,
            )  # fmt: skip
            trials.append(Trial(wheel.name, f"import {', '.join(modules)}", board, cpu, run, _culprit(run, sites)))
        if model is not None:
            names = [w.name for w in (native if native is not None else wheels)]
            run = user.run_on_core(
                [python, "-B", "-X", "faulthandler", "-c", _INFER, str(model.resolve())],
                cpu=cpu, sysroot=sysroot, arch=ARCH, env=env, cwd=home, timeout=timeout,
            )  # fmt: skip
            subject = f"the model {model.name} with {', '.join(names) or 'the runtime of the sysroot'}"
            trials.append(Trial(subject, f"one inference of {model.name}", board, cpu, run, _culprit(run, sites)))
    return trials


def _culprit(run: UserRun, sites: dict[Path, Path]) -> str | None:
    """The innermost Python frame of faulthandler's trace that lies in an unpacked wheel, as "wheel: file"."""
    if run.outcome is Outcome.OK:
        return None
    for frame in _FRAME.findall(run.stderr):
        for wheel, site in sites.items():
            if frame.startswith(f"{site}{os.sep}"):
                return f"{wheel.name}: {frame[len(str(site)) + 1 :]}"
    return None
