"""`pibake bake`: a pibake.toml project to a tested card image and its report, in the project's build/."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pibake.errors import PibakeError

if TYPE_CHECKING:
    from pibake.bake import BakeResult


def _bake(a: argparse.Namespace) -> int:
    from pibake import bake, project

    proj = project.load(a.directory)
    say = lambda line: print(f"pibake bake: {line}")  # noqa: E731
    return print_result(bake.bake(proj, profile=a.profile, cpu=a.cpu, name=a.name, output=a.output, say=say))


def print_result(res: BakeResult) -> int:
    """Print RES's verdict, samples, report and image; 0, or PibakeError (exit 1) when the image was not published."""
    r = res.report
    print(f"\n{r.verdict()}")
    width = max(len(s.name) for s in r.samples)
    for s in r.samples:
        service = f"   service: {s.service.label} {s.service.probability:.4f}" if s.service else ""
        print(f"  {s.name:<{width}}  max |host - Pi| {s.max_abs_diff:.2e}  {'ok' if s.passed else 'OFF'}{service}")
    print(f"\nReport: {res.report_md} ({res.report_html.name} beside it)")
    if res.image is not None:
        print(f"Image:  {res.image}\n  sha256 {r.image_sha256}  (flash it with `pibake flash {res.image} /dev/sdX`)")
        return 0
    raise PibakeError(f"{r.verdict()}: the image was not published (see {res.report_md})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bake` to the top-level subparsers SUB."""
    p = sub.add_parser(
        "bake",
        help="the whole job for a pibake.toml project: image, boot on the board's core, provision, compare, card image",
        description="Read DIR/pibake.toml (write one with `pibake init`), build or take the base image, prepare a copy "
        "for the board, boot it on the board's own CPU core under QEMU, provision it with pibake's roles and the "
        "project's model (then its system settings, playbooks and roles), run the model on every sample here and on "
        "the emulated Pi, ask the inference service the same, shut down, and finalize. Writes to DIR/build/: the "
        "image with .sha256, .bmap and manifest (only when every sample is within the tolerance), report.md and "
        "report.html (always). A Keras model (.keras, .h5) is converted first, on this machine, to "
        "DIR/build/MODEL.tflite (TensorFlow: pip install 'pibake[convert]'), and again only when its sha256 changes. "
        "Exit status 1 when a sample is off tolerance.",
    )
    p.add_argument("directory", nargs="?", type=Path, default=Path(), help="the project (default: .)")
    p.add_argument("--profile", default=None, help="machine profile (default: the board's)")
    p.add_argument("--cpu", default=None, help="emulated CPU (default: the board's own core)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="finished image (default: DIR/build/MODEL.img; reports beside it)",
    )
    p.add_argument("--name", default="pibake-bake", help="the guest's name while it runs (default: %(default)s)")
    p.set_defaults(func=_bake)
