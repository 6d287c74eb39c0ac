"""`pibake preflight`: native wheels against the board's core and the emulated one; exit 4 when one would SIGILL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pibake import boards
from pibake.errors import VerificationFailed


def _preflight(a: argparse.Namespace) -> int:
    from pibake import preflight

    report = preflight.preflight(a.paths, board=a.board, profile=a.profile, cpu=a.cpu)
    print(report.describe())
    for error in report.errors():
        print(f"pibake: error: {error}", file=sys.stderr)
    return 0 if report.ok else VerificationFailed.exit_code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `preflight` to the top-level subparsers SUB."""

    p = sub.add_parser(
        "preflight",
        help="check that native wheels can run on the board's CPU and on the emulated one (no SIGILL later)",
        description="Read the ELF ARM build attributes (Tag_CPU_arch, Tag_FP_arch, Tag_Advanced_SIMD_arch, "
        "Tag_DIV_use) of every shared object in the wheels and compare them with the board's CPU and with the "
        "CPU of the machine profile that emulates it. Exit status 4 (verification failed) when any wheel would "
        "die with "
        '"Illegal instruction" on either.',
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
    p.add_argument("--profile", default=None, help="machine profile that emulates it (default: the board's)")
    p.add_argument("--cpu", default=None, help="CPU of that profile (default: the board's, else the profile's)")
    p.set_defaults(func=_preflight)
