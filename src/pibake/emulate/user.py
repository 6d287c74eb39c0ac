"""One program under QEMU's user mode on a chosen ARM core: did it run, die of SIGILL, or fail otherwise?

qemu-user (Debian's qemu-user-static) translates a single ARM program's instructions and passes its
system calls to this machine's kernel: no guest boots, so a run takes milliseconds to seconds. With
``-cpu CORE`` it decodes only the instructions that core has; an instruction the core lacks raises
SIGILL in the program, as on the board (QEMU's documentation, "QEMU User space emulator"; measured
here on QEMU 7.2: an ``sdot`` dies on cortex-a53 and cortex-a72 and runs on cortex-a76). ``-L DIR``
(QEMU_LD_PREFIX) makes the program's absolute paths (its dynamic loader, its libraries, /usr/lib/...)
resolve under DIR first: a root filesystem or a cross toolchain's sysroot stands in for the board's.

How qemu-user reports a signal the program did not handle (measured on QEMU 7.2 here): it prints
``qemu: uncaught target signal 4 (Illegal instruction) - core dumped`` on stderr and kills itself
with the same signal, so its parent sees the return code -4. Both are read: the return code, and the
line, for the case where something between us and QEMU (a shell) turned the signal into an exit status.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pibake.errors import PibakeError, ToolMissing, UsageError
from pibake.util.proc import run

log = logging.getLogger(__name__)

# Debian's architecture names (dpkg --print-architecture) -> the qemu-user-static program that runs them.
QEMU_USER = {"arm64": "qemu-aarch64-static", "armhf": "qemu-arm-static"}

# qemu-user's words for a signal the guest program did not handle (linux-user/signal.c, dump_core_and_abort).
_UNCAUGHT = re.compile(r"^qemu: uncaught target signal (\d+)", re.MULTILINE)
TAIL_CHARS = 3000


class Outcome(Enum):
    """How a run ended."""

    OK = "ran"
    SIGILL = "died with SIGILL (Illegal instruction)"
    FAILED = "failed"


@dataclass(frozen=True)
class UserRun:
    """One finished program under qemu-user: its command line, core, exit, output and wall-clock seconds."""

    argv: tuple[str, ...]
    cpu: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def signal(self) -> int | None:
        """The signal number the guest program died of, or None if it exited."""
        if self.returncode < 0:
            return -self.returncode
        found = _UNCAUGHT.search(self.stderr)
        return int(found.group(1)) if found else None

    @property
    def outcome(self) -> Outcome:
        if self.signal == signal.SIGILL:
            return Outcome.SIGILL
        return Outcome.OK if self.returncode == 0 else Outcome.FAILED

    def describe_exit(self) -> str:
        """For example "exit 1" or "signal 11 (Segmentation fault)"."""
        number = self.signal
        if number is None:
            return f"exit {self.returncode}"
        try:
            return f"signal {number} ({signal.strsignal(number)})"
        except ValueError:
            return f"signal {number}"

    def stderr_tail(self, chars: int = TAIL_CHARS) -> str:
        text = self.stderr.strip()
        return text if len(text) <= chars else "..." + text[-chars:]


def cpus(arch: str = "arm64") -> list[str]:
    """The CPU names the qemu-user program for ARCH accepts with -cpu (its ``-cpu help``).

    ARCH is a key of QEMU_USER. qemu-aarch64 7.2 prints the list on stdout and exits 1 (measured here), so
    the exit status is not checked. Raises ToolMissing when the program is not installed.
    """
    program = _program(arch)
    try:
        res = subprocess.run([program, "-cpu", "help"], capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as e:
        raise ToolMissing(f"{program} is not installed: install qemu-user-static (`make deps`)") from e
    return [line.split()[0] for line in res.stdout.splitlines()[1:] if line.startswith("  ") and line.split()]


def run_on_core(
    program: Sequence[str | os.PathLike[str]],
    *,
    cpu: str,
    sysroot: Path,
    arch: str = "arm64",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> UserRun:
    """Run PROGRAM (an ARM executable and its arguments) under qemu-user on core CPU, libraries from SYSROOT.

    CPU is a name from ``cpus(ARCH)`` (cortex-a53, cortex-a72, cortex-a76...); SYSROOT the directory that
    stands for the board's root (``-L``): a root filesystem, or /usr/aarch64-linux-gnu for programs built
    with Debian's cross compiler. ENV is the program's whole environment (this process's is not passed on:
    the host's PYTHONPATH or LD_LIBRARY_PATH mean nothing to an ARM program); TIMEOUT is in seconds.

    A non-zero exit or a signal is the answer, not an error: it is in the returned UserRun. Raises ToolMissing
    when qemu-user is not installed, PibakeError when the program outlives TIMEOUT.
    """
    qemu = _program(arch)
    argv = [qemu, "-cpu", cpu, "-L", str(sysroot), *(os.fspath(a) for a in program)]
    log.debug("run: %s", shlex.join(argv))
    start = time.monotonic()
    try:
        res = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            env=dict(env or {"PATH": "/usr/bin:/bin"}),
            cwd=cwd,
            timeout=timeout,
            check=False,
            # qemu-user writes a core file (qemu_<program>_<time>.core) into the current directory when the
            # guest dies of a signal and the core limit allows one: the signal is all we want.
            preexec_fn=_no_core_files,
        )
    except FileNotFoundError as e:
        raise ToolMissing(f"{qemu} is not installed: install qemu-user-static (`make deps`)") from e
    except subprocess.TimeoutExpired as e:
        raise PibakeError(f"{shlex.join(argv)} did not finish in {timeout:.0f} s under {qemu} -cpu {cpu}") from e
    run = UserRun(tuple(argv), cpu, res.returncode, res.stdout, res.stderr, time.monotonic() - start)
    log.debug("%s -cpu %s: %s in %.2f s", qemu, cpu, run.outcome.value, run.seconds)
    return run


def _program(arch: str) -> str:
    """The qemu-user program for ARCH as this process's PATH finds it (a newer QEMU put first in PATH is the one
    used, as for the system emulators), else its bare name, which then fails as not installed. Found here rather
    than by the child, whose PATH is the emulated program's (guest paths)."""
    try:
        name = QEMU_USER[arch]
    except KeyError:
        raise UsageError(f"no qemu-user program for {arch!r}: known are {', '.join(QEMU_USER)}") from None
    return shutil.which(name) or name


def version(arch: str = "arm64") -> str:
    """The first line of the qemu-user program's ``--version`` for ARCH ("qemu-aarch64 version 7.2.19 (Debian
    ...)"). Raises ToolMissing when it is not installed (util.proc.run)."""
    return run([_program(arch), "--version"], timeout=30).splitlines()[0].strip()


def _no_core_files() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
