"""`pibake demo`: the whole job on the bundled car model; prints the Pi's predictions and the finished image."""

from __future__ import annotations

import argparse
from pathlib import Path

from pibake import boards


def _demo(a: argparse.Namespace) -> int:
    from pibake import demo

    res = demo.demo(project=a.project, board=a.board, profile=a.profile, cpu=a.cpu, output=a.output)
    print("\nPredictions of the demo model, run on the emulated Pi (predict command, then POST /predict):")
    served = {str(p["image"]): p for p in res.served}
    for p in res.predictions:
        s = served.get(str(p["image"]), {})
        print(
            f"  {p['image']:<24} {p['label']:<12} {p['probability']:.4f}"
            + (f"   service: {s['label']} {s['probability']:.4f} (model version {s.get('version')})" if s else "")
        )
    print(f"\nFinished image: {res.image}\n  sha256 {res.sha256}  ({res.image.name}.sha256)")
    print(f"  manifest {res.manifest}" + (f", bmap {res.bmap}" if res.bmap else ""))
    print("  " + ", ".join(f"{k} {v:.0f} s" for k, v in res.timings.items()))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo` to the top-level subparsers SUB."""
    p = sub.add_parser(
        "demo",
        help="the whole job: build, boot, provision with site.yml, run the model on the Pi, keep the finished image",
        description="Build (or reuse) the base image, boot a copy of it, provision it with site.yml, run the demo "
        "model on the emulated Pi and print its predictions for the bundled samples, shut the guest down "
        "cleanly and leave the finished image and its .sha256 in build/.",
    )
    p.add_argument(
        "--board",
        default=boards.DEFAULT_BOARD,
        choices=boards.names(),
        help="target board: the image's config.txt and cmdline.txt are written for it and the guest emulates it; "
        "boards the Debian base cannot boot are refused (default: %(default)s)",
    )
    p.add_argument("--profile", default=None, help="machine profile (default: the board's)")
    p.add_argument("--cpu", default=None, help="emulated CPU (default: the board's)")
    p.add_argument(
        "--project", type=Path, default=Path.cwd(), help="the pibake checkout (default: the current directory)"
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path("build/pibake-demo.img"), help="finished image (default: %(default)s)"
    )
    p.set_defaults(func=_demo)
