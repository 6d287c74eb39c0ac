"""`pibake demo`: `pibake bake` on the bundled example project (examples/car), the board overridable."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pibake import boards
from pibake.image.build import BASES, DEFAULT_BASE_32, DEFAULT_BASE_64, default_base


def _demo(a: argparse.Namespace) -> int:
    from pibake import bake, project, resources
    from pibake.cli.bake import print_result

    # The checkout named, else the example this pibake carries (a checkout's or the installed one), from any directory.
    example = project.load(a.project / "examples" / "car" if a.project is not None else resources.EXAMPLE)
    # The demo's target is its own (--board, --base): the example file pins the legacy base only so that what
    # `pibake bake examples/car` builds does not change with the default.
    base = a.base or default_base(a.board)
    target = dataclasses.replace(
        example.target, board=a.board, base=base, base_kind="debian", base_image=None, arch=BASES[base].arch
    )
    example = dataclasses.replace(example, target=target)
    say = lambda line: print(f"pibake demo: {line}")  # noqa: E731
    res = bake.bake(example, profile=a.profile, cpu=a.cpu, name="pibake-demo", output=a.output, say=say)
    return print_result(res)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo` to the top-level subparsers SUB."""
    p = sub.add_parser(
        "demo",
        help="`pibake bake` on the bundled car model (examples/car): image, boot, provision, compare, card image",
        description="Bake the bundled example project, examples/car (the car model, its labels and samples), for "
        "--board: build (or reuse) the base image, boot a copy on the board's own core, provision it, run the model on "
        "every sample here and on the emulated Pi, ask the inference service the same, shut down cleanly and finalize. "
        "Leaves the image with .sha256, .bmap and manifest, and report.md/report.html, beside --output.",
    )
    p.add_argument(
        "--board",
        default=boards.DEFAULT_BOARD,
        choices=boards.names(),
        help="target board: the image's config.txt and cmdline.txt are written for it and the guest emulates it; "
        "boards the Debian base cannot boot are refused (default: %(default)s)",
    )
    p.add_argument(
        "--base",
        default=None,
        choices=sorted(BASES),
        help="the Debian base to build on: debian-trixie-arm64 (64-bit, LiteRT in a venv; --board pi3, pi3b-plus, "
        "pi-zero-2 or pi4), debian-bookworm-armhf (32-bit, tflite-runtime 2.14.0 in a venv; pi2 and up) or "
        "debian-bullseye (32-bit, tflite-runtime 2.11.0; legacy) (default: the board's, "
        f"{DEFAULT_BASE_64} where it has a 64-bit core, {DEFAULT_BASE_32} on the pi2; the example file's "
        "target.base is for `pibake bake examples/car`)",
    )
    p.add_argument("--profile", default=None, help="machine profile (default: the board's)")
    p.add_argument("--cpu", default=None, help="emulated CPU (default: the board's)")
    p.add_argument(
        "--project",
        type=Path,
        default=None,
        help="the pibake checkout whose examples/car to bake (default: the one this pibake runs from)",
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path("build/pibake-demo.img"), help="finished image (default: %(default)s)"
    )
    p.set_defaults(func=_demo)
