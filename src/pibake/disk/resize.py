"""Growing and shrinking the root partition of an image file (sfdisk, resize2fs on a copy of the partition)."""

from __future__ import annotations

import logging
from pathlib import Path

from pibake.disk.layout import MIB, SECTOR, MbrEntry, read_mbr
from pibake.disk.sparse import copy_extents
from pibake.errors import CommandFailed, PibakeError
from pibake.util.proc import run

log = logging.getLogger(__name__)


def root_partition(image: Path) -> MbrEntry:
    """The ext4 root partition: number 2, the last one, ending within the image."""
    mbr = read_mbr(image)
    root = mbr.partition(2)
    if root.type_code != 0x83:
        raise PibakeError(f"{image}: partition 2 has type 0x{root.type_code:02x}, not a Linux (0x83) root")
    later = [p for p in mbr.partitions if p.start > root.start]
    if later:
        raise PibakeError(f"{image}: partition {later[0].number} lies after the root partition; cannot grow it")
    if (root.start + root.size) * SECTOR > image.stat().st_size:
        raise PibakeError(f"{image}: the root partition runs past the end of the file: is the image truncated?")
    return root


def _set_root_partition(image: Path, root: MbrEntry, sectors: int) -> None:
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "-N", "2", str(image)],
        input_text=f"{root.start},{sectors}\n",
    )


def _resize_fs_copy(image: Path, root: MbrEntry, sectors: int, work: Path) -> Path:
    """Copy the root filesystem out of IMAGE and resize the copy to SECTORS; return the copy.

    resize2fs can open 'IMAGE?offset=N', but when the device is a regular file it then
    truncates that file to the new filesystem size, ignoring the offset: the tail of
    the image, most of the filesystem, would be cut off. A copy of the partition is a
    file whose size is the filesystem's, which is what resize2fs expects.
    """
    part = work / "rootfs.ext4"
    length = max(root.size, sectors) * SECTOR
    with part.open("wb") as f:
        f.truncate(length)
    copy_extents(image, root.start * SECTOR, part, 0, root.size * SECTOR)
    run(["e2fsck", "-f", "-p", str(part)])
    run(["resize2fs", str(part), f"{sectors}s"])
    return part


def grow_root(image: Path, size: int, work: Path) -> None:
    """Grow IMAGE to SIZE bytes, its root partition to the end, and the ext4 in it to fill the partition."""
    root = root_partition(image)
    old_size = image.stat().st_size
    if size <= old_size:
        return
    sectors = size // SECTOR - root.start
    log.info("growing %s from %d to %d MiB", image.name, old_size // MIB, size // MIB)
    part = _resize_fs_copy(image, root, sectors, work)
    sector0 = _read(image, 0, SECTOR)
    try:
        with image.open("r+b") as f:
            f.truncate(size)
        _set_root_partition(image, root, sectors)
    except BaseException:
        # Nothing of the filesystem was touched yet: put the table and the size back.
        _write(image, 0, sector0)
        with image.open("r+b") as f:
            f.truncate(old_size)
        part.unlink(missing_ok=True)
        raise
    try:
        written = copy_extents(part, 0, image, root.start * SECTOR, sectors * SECTOR)
        log.debug("root filesystem: %d MiB written back", written // MIB)
    finally:
        part.unlink(missing_ok=True)


def shrink_root(image: Path, size: int, work: Path) -> bool:
    """Shrink IMAGE to SIZE bytes with its root filesystem; False (and no change) if the data no longer fits."""
    root = root_partition(image)
    if size >= image.stat().st_size:
        return True
    sectors = size // SECTOR - root.start
    if sectors <= 0:
        raise PibakeError(f"{image}: {size} bytes would not leave a root partition")
    try:
        part = _resize_fs_copy(image, root, sectors, work)
    except CommandFailed as e:
        # resize2fs says so when the data no longer fits: a verdict, not a failure of the tool.
        if "smaller than minimum" in e.output or "No space left" in e.output:
            (work / "rootfs.ext4").unlink(missing_ok=True)
            return False
        raise
    try:
        copy_extents(part, 0, image, root.start * SECTOR, sectors * SECTOR)
        _set_root_partition(image, root, sectors)
        with image.open("r+b") as f:
            f.truncate(size)
    finally:
        part.unlink(missing_ok=True)
    return True


def _read(path: Path, offset: int, n: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(n)


def _write(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
