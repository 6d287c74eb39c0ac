"""`pibake preflight`: native wheels against the board's core and the emulated one; exit 4 when one would SIGILL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pibake import boards
from pibake.errors import VerificationFailed
from pibake.isa import USERLANDS


def _preflight(a: argparse.Namespace) -> int:
    from pibake import preflight

    report = preflight.preflight(
        a.paths,
        board=a.board,
        profile=a.profile,
        cpu=a.cpu,
        arch=a.arch,
        sysroot=a.sysroot,
        model=a.model,
        timeout=a.timeout,
    )
    print(report.describe())
    for error in report.errors():
        print(f"pibake: error: {error}", file=sys.stderr)
    return 0 if report.ok else VerificationFailed.exit_code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `preflight` to the top-level subparsers SUB."""

    p = sub.add_parser(
        "preflight",
        help="check that native wheels can run on the board's CPU and on the emulated one (no SIGILL later)",
        description="For a 32-bit OS (--arch armhf): read the ELF ARM build attributes (Tag_CPU_arch, "
        "Tag_FP_arch, Tag_Advanced_SIMD_arch, Tag_DIV_use) of every shared object in the wheels and compare them "
        "with the board's CPU and with the CPU of the machine profile that emulates it. For a 64-bit OS (--arch "
        "arm64), whose AArch64 files record no such needs: import every native wheel, and run the model once "
        "with --model, by an arm64 root's python3 under qemu-aarch64 on the board's own core. Files of the other "
        "ELF class (AArch64 for armhf, 32-bit ARM for arm64) are refused either way. Exit status 4 (verification "
        'failed) when any wheel would die with "Illegal instruction", or cannot be loaded.',
        epilog="boards (core: profile and CPU that emulate it): "
        + "; ".join(
            f"{b.name} ({b.core}: {b.profile} {b.cpu})" if b.profile else f"{b.name} ({b.core}: none)"
            for b in boards.BOARDS.values()
        ),
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="WHEEL_OR_DIR", help="wheel files, or directories of them")
    p.add_argument(
        "--board", default=boards.DEFAULT_BOARD, choices=boards.names(), help="target board (default: %(default)s)"
    )
    p.add_argument(
        "--arch",
        default=None,
        choices=tuple(USERLANDS),
        help="the OS's userland, as Debian names it: armhf (32-bit) or arm64 (64-bit) (default: the one the wheels' "
        "native code is built for, read from its ELF headers; arm64 with --model or --sysroot; armhf when there is "
        "none)",
    )
    p.add_argument("--profile", default=None, help="armhf: machine profile that emulates it (default: the board's)")
    p.add_argument(
        "--cpu",
        default=None,
        help="armhf: CPU of that profile (default: the board's, else the profile's); arm64: the core qemu-aarch64 "
        "runs the wheels on (default: the board's own, e.g. cortex-a72 for pi4)",
    )
    p.add_argument(
        "--sysroot",
        type=Path,
        default=None,
        metavar="DIR",
        help="arm64: the root filesystem whose python3 imports the wheels under qemu-aarch64 (default: the one "
        "`pibake image build --base debian-trixie-arm64` cached under $PIBAKE_CACHE/rootfs/<hash>/root)",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="FILE",
        help="arm64: a .tflite or .onnx model to run once on zeros with the wheels (LiteRT, onnxruntime), after the "
        "imports",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600,
        metavar="SECONDS",
        help="arm64: longest run under qemu-aarch64 (default: %(default)s)",
    )
    p.set_defaults(func=_preflight)
