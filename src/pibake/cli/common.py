"""What several verb groups of the command line share: the default image and the guest name option."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_IMAGE = Path("build/pibake-bullseye.img")


def add_guest_options(p: argparse.ArgumentParser) -> None:
    """The --name of a guest, for every `emulate` action."""
    p.add_argument("--name", default="pibake", help="guest name; its state lives in the cache (default: %(default)s)")
