"""Read-only fsck of both partitions of an image: e2fsck at an offset, fsck.vfat on a copy of the FAT."""

from __future__ import annotations

from pathlib import Path

from pibake.disk.layout import MIB, read_mbr
from pibake.util.proc import run


def check_filesystems(image: Path, work: Path) -> None:
    """fsck both partitions read-only; raise PibakeError unless both are clean."""
    mbr = read_mbr(image)
    root = mbr.partition(2)
    # e2fsprogs opens a file at an offset with "FILE?offset=N": no loop device needed.
    run(["e2fsck", "-f", "-n", f"{image}?offset={root.start * 512}"])
    boot = mbr.partition(1)
    fat = work / "boot.fat"
    with image.open("rb") as src, fat.open("wb") as dst:
        src.seek(boot.start * 512)
        remaining = boot.size * 512
        while remaining:
            chunk = src.read(min(remaining, 4 * MIB))
            dst.write(chunk)
            remaining -= len(chunk)
    try:
        run(["fsck.vfat", "-n", str(fat)])
    finally:
        fat.unlink()
