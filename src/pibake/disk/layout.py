"""Partition layout and MBR reading: pure functions, no tools needed."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pibake.errors import PibakeError, UsageError

SECTOR = 512
MIB = 1 << 20
MIN_ROOT_MB = 1024
# FAT32 needs at least 65525 clusters; at 512-byte sectors and mkfs.vfat's defaults
# that is reached from 64 MiB up.
MIN_BOOT_MB = 64


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # in sectors
    size: int  # in sectors
    type_code: int  # MBR type byte
    label: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def nbytes(self) -> int:
        return self.size * SECTOR


@dataclass(frozen=True)
class Layout:
    """Raspberry Pi OS layout: MBR, FAT32 bootfs at 4 MiB, ext4 rootfs up to the end."""

    total_mb: int
    boot_mb: int = 256
    start_mb: int = 4

    def __post_init__(self) -> None:
        if self.boot_mb < MIN_BOOT_MB:
            raise UsageError(f"boot partition of {self.boot_mb} MiB is too small for FAT32 (minimum {MIN_BOOT_MB} MiB)")
        if self.root_mb < MIN_ROOT_MB:
            # No option named: `image build --size` and pibake.toml's target.image_size_mb both land here.
            raise UsageError(
                f"image of {self.total_mb} MiB leaves {self.root_mb} MiB for the root filesystem, which needs at "
                f"least {MIN_ROOT_MB} MiB: make the image {self.total_mb - self.root_mb + MIN_ROOT_MB} MiB or more"
            )

    @property
    def root_mb(self) -> int:
        return self.total_mb - self.start_mb - self.boot_mb

    @property
    def boot(self) -> Partition:
        return Partition(1, self.start_mb * MIB // SECTOR, self.boot_mb * MIB // SECTOR, 0x0C, "bootfs")

    @property
    def root(self) -> Partition:
        start = (self.start_mb + self.boot_mb) * MIB // SECTOR
        return Partition(2, start, self.root_mb * MIB // SECTOR, 0x83, "rootfs")

    def sfdisk_script(self, disk_id: int) -> str:
        lines = ["label: dos", f"label-id: 0x{disk_id:08x}", "unit: sectors", ""]
        for p in (self.boot, self.root):
            lines.append(f"start={p.start}, size={p.size}, type={p.type_code:x}")
        return "\n".join(lines) + "\n"


def partuuid(disk_id: int, number: int) -> str:
    """The PARTUUID Linux gives an MBR partition: disk signature, dash, two-digit number."""
    return f"{disk_id:08x}-{number:02d}"


@dataclass(frozen=True)
class MbrEntry:
    number: int
    type_code: int
    start: int
    size: int


@dataclass(frozen=True)
class Mbr:
    disk_id: int
    partitions: tuple[MbrEntry, ...]

    def partition(self, number: int) -> MbrEntry:
        for p in self.partitions:
            if p.number == number:
                return p
        raise PibakeError(f"the image has no partition {number}")


def parse_mbr(sector0: bytes) -> Mbr:
    if len(sector0) < SECTOR or sector0[510:512] != b"\x55\xaa":
        raise UsageError("not an MBR disk image (no 0x55AA boot signature in sector 0)")
    (disk_id,) = struct.unpack_from("<I", sector0, 440)
    parts = []
    for i in range(4):
        entry = sector0[446 + 16 * i : 446 + 16 * (i + 1)]
        type_code = entry[4]
        start, size = struct.unpack_from("<II", entry, 8)
        if type_code and size:
            parts.append(MbrEntry(i + 1, type_code, start, size))
    return Mbr(disk_id, tuple(parts))


def read_mbr(image: Path) -> Mbr:
    """IMAGE's partition table. UsageError naming IMAGE when it is no MBR disk image, PibakeError when unreadable."""
    try:
        with image.open("rb") as f:
            sector0 = f.read(SECTOR)
    except OSError as e:
        raise PibakeError(f"cannot read {image}: {e}") from e
    try:
        return parse_mbr(sector0)
    except UsageError as e:
        raise UsageError(f"{image}: {e}") from None
