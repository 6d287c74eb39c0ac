"""What several verb groups of the command line share: the default images and the guest name option."""

from __future__ import annotations

import argparse
from pathlib import Path

# The image `make image` builds (the bullseye base) and the one `emulate start` boots unless told.
DEFAULT_IMAGE = Path("build/pibake-bullseye.img")


def image_for(base: str) -> Path:
    """Where `pibake image build` copies BASE's image unless told: build/pibake-SUITE[-ARCH].img, so that one base
    never overwrites another's (DEFAULT_IMAGE for debian-bullseye; build/pibake-trixie-arm64.img, `make image-arm64`'s,
    for debian-trixie-arm64)."""
    return Path("build") / f"pibake-{base.removeprefix('debian-')}.img"


def add_guest_options(p: argparse.ArgumentParser) -> None:
    """The --name of a guest, for every `emulate` action."""
    p.add_argument("--name", default="pibake", help="guest name; its state lives in the cache (default: %(default)s)")
