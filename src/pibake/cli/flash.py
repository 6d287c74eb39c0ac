"""`pibake flash`: the image and the card from the command line, the confirmation asked on the terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def ask(prompt: str) -> str:
    """The flash confirmation: the prompt on stderr, the answer from stdin (so `echo sdb | pibake flash` works)."""
    print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline()


def _flash(a: argparse.Namespace) -> int:
    from pibake.flash import writer

    res = writer.flash(
        a.image,
        a.device,
        bmap=a.bmap,
        full=a.no_bmap,
        to_file=a.to_file,
        unmount=a.unmount,
        allow_non_removable=a.allow_non_removable,
        large_device_threshold=a.large_device_gb * 1e9,
        assume_yes=a.yes,
        verify=not a.no_verify,
        eject=not a.no_eject,
        confirm=ask,
    )
    print(res.describe())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `flash` to the top-level subparsers SUB."""
    from pibake.flash.safety import SAFETY_RULES

    p = sub.add_parser(
        "flash",
        help="write the finished image to an SD card: checked, sparse with a .bmap, read back and verified",
        description="Write IMAGE (default build/pibake-demo.img) to the whole card DEVICE, e.g. /dev/sdb or\n"
        "/dev/mmcblk0 (`lsblk` lists them): `pibake flash /dev/sdb`, or `pibake flash IMAGE /dev/sdb`.",
        epilog=SAFETY_RULES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "image", nargs="?", type=Path, default=Path("build/pibake-demo.img"), help="the image (default: %(default)s)"
    )
    p.add_argument("device", type=Path, help="the whole card, e.g. /dev/sdb (or a file, with --to-file)")
    p.add_argument("--bmap", type=Path, default=None, help="block map to use (default: IMAGE.bmap if it exists)")
    p.add_argument("--no-bmap", action="store_true", help="write every byte of the image, even with a .bmap")
    p.add_argument("--to-file", action="store_true", help="DEVICE may be a regular file: write the image into it")
    p.add_argument("--unmount", action="store_true", help="unmount the card's mounted filesystems, then write")
    p.add_argument(
        "--allow-non-removable", action="store_true", help="write to a device that does not say it is removable"
    )
    p.add_argument(
        "--large-device-gb",
        type=float,
        default=64,
        metavar="GB",
        help="warn about a device larger than this (default: %(default)s)",
    )
    p.add_argument("-y", "--yes", action="store_true", help="do not ask to type the device name back")
    p.add_argument("--no-verify", action="store_true", help="do not read the card back and compare")
    p.add_argument("--no-eject", action="store_true", help="leave the card in the system when done")
    p.set_defaults(func=_flash)
