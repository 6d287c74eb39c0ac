"""Holes in image files: copies keep the source's extents exactly, and holes are made only in free space."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from pibake.disk import ext4, sparse
from pibake.util.publish import publish

KIB = 1 << 10
MIB = 1 << 20

needs_mkfs = pytest.mark.skipif(
    shutil.which("mkfs.ext4") is None or shutil.which("mkfs.vfat") is None or shutil.which("dumpe2fs") is None,
    reason="needs e2fsprogs and dosfstools",
)


def layout(path: Path, size: int, pieces: dict[int, bytes]) -> Path:
    """A file of SIZE bytes holding PIECES (written, zeros included) at their offsets, holes elsewhere."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in pieces.items():
            f.seek(offset)
            f.write(data)
    return path


def extents(path: Path, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(sparse.data_ranges(fd, start, os.fstat(fd).st_size if end is None else end))
    finally:
        os.close(fd)


def test_written_zeros_are_copied_as_data_and_holes_stay_holes(tmp_path: Path) -> None:
    src = layout(
        tmp_path / "src", 16 * MIB, {MIB: b"\xaa" * MIB + bytes(2 * MIB) + b"\xbb" * MIB, 12 * MIB: bytes(MIB)}
    )
    dst = layout(tmp_path / "dst", 16 * MIB, {})
    sparse.copy_extents(src, 0, dst, 0, 16 * MIB)
    assert dst.read_bytes() == src.read_bytes()
    assert extents(dst) == extents(src) == [(MIB, 5 * MIB), (12 * MIB, 13 * MIB)]


def test_data_in_the_source_becomes_data_even_where_the_destination_already_reads_zeros(tmp_path: Path) -> None:
    src = layout(tmp_path / "src", 8 * MIB, {2 * MIB: bytes(MIB)})  # written zeros
    dst = layout(tmp_path / "dst", 8 * MIB, {})  # a hole: it reads the same
    sparse.copy_extents(src, 0, dst, 0, 8 * MIB)
    assert extents(dst) == [(2 * MIB, 3 * MIB)]


def test_a_hole_in_the_source_becomes_a_hole_where_the_destination_had_data(tmp_path: Path) -> None:
    src = layout(tmp_path / "src", 4 * MIB, {0: b"x" * 4096})
    dst = layout(tmp_path / "dst", 4 * MIB, {0: b"y" * (4 * MIB)})
    written = sparse.copy_extents(src, 0, dst, 0, 4 * MIB)
    assert written == 4096
    assert dst.read_bytes() == src.read_bytes()
    assert extents(dst) == [(0, 4096)]


def test_equal_data_is_not_rewritten_and_offsets_shift(tmp_path: Path) -> None:
    payload = random.Random(1).randbytes(MIB)
    src = layout(tmp_path / "src", 2 * MIB, {MIB: payload})
    dst = layout(tmp_path / "dst", 8 * MIB, {5 * MIB: payload})
    assert sparse.copy_extents(src, 0, dst, 4 * MIB, 2 * MIB) == 0
    assert extents(dst) == [(5 * MIB, 6 * MIB)]


def test_write_at_copies_the_whole_file_at_an_offset(tmp_path: Path) -> None:
    src = layout(tmp_path / "part", 20 * KIB, {8 * KIB: b"data" + bytes(4092)})
    dst = layout(tmp_path / "disk", 64 * KIB, {})
    sparse.write_at(src, dst, 16 * KIB)
    blob = dst.read_bytes()
    assert len(blob) == 64 * KIB and blob[24 * KIB : 24 * KIB + 4] == b"data" and blob.count(b"data") == 1
    assert extents(dst) == [(24 * KIB, 28 * KIB)]


def test_publish_keeps_written_zeros_and_is_atomic(tmp_path: Path) -> None:
    # `cp --sparse=always` turned these zeros (a FAT's free entries, say) into holes.
    image = layout(tmp_path / "image.img", 8 * MIB, {0: b"\x55\xaa" + bytes(2 * MIB), 6 * MIB: b"z" * 100})
    out = publish(image, tmp_path / "out" / "final.img", "ab" * 32)
    assert out.read_bytes() == image.read_bytes()
    assert extents(out) == extents(image)
    assert (tmp_path / "out" / "final.img.sha256").read_text() == f"{'ab' * 32}  final.img\n"
    assert not (tmp_path / "out" / "final.img.part").exists()


def test_fat_free_clusters_from_the_boot_sector_and_the_fat() -> None:
    boot = bytearray(512)
    boot[11:13] = (512).to_bytes(2, "little")
    boot[13] = 1  # sectors per cluster
    boot[14:16] = (4).to_bytes(2, "little")  # reserved sectors
    boot[16] = 2  # FATs
    boot[17:19] = (0).to_bytes(2, "little")  # FAT32: no fixed root directory
    boot[32:36] = (200_000).to_bytes(4, "little")  # sectors
    boot[36:40] = (1600).to_bytes(4, "little")  # sectors per FAT
    boot[510:512] = b"\x55\xaa"
    clusters = 200_000 - 4 - 2 * 1600
    fat = bytearray(4 * (clusters + 2))
    used = {2, 3, 4, 10, clusters + 1}
    for c in range(2, clusters + 2):
        if c in used:
            fat[4 * c : 4 * c + 4] = (0x0FFFFFFF).to_bytes(4, "little")
    data = (4 + 2 * 1600) * 512
    ranges = sparse.fat_free_ranges(bytes(boot), bytes(fat))
    assert ranges == [
        (data + (5 - 2) * 512, data + (10 - 2) * 512),
        (data + (11 - 2) * 512, data + (clusters + 1 - 2) * 512),
    ]
    assert sparse.fat_free_ranges(bytes(512), bytes(fat)) == []  # not a boot sector


def test_parse_dumpe2fs_free_blocks() -> None:
    text = "Block size:               4096\nGroup 0: (Blocks 0-32767)\n  Free blocks: 10-19, 25, 26-27\n"
    text += "Group 1: (Blocks 32768-65535)\n  Free blocks: \n  Free inodes: 1-5\n"
    assert ext4.parse_free_blocks(text) == [(10 * 4096, 20 * 4096), (25 * 4096, 28 * 4096)]


def _image(tmp_path: Path) -> tuple[Path, int, int]:
    """An MBR image with a FAT32 at 1 MiB and an ext4 after it, made as `pibake image build` makes them."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("pi\n")
    (root / "blob").write_bytes(random.Random(2).randbytes(MIB))
    fat, ext = tmp_path / "boot.fat", tmp_path / "root.ext4"
    layout(fat, 64 * MIB, {})
    subprocess.run(["mkfs.vfat", "-F", "32", "-n", "bootfs", str(fat)], check=True, capture_output=True)
    layout(ext, 64 * MIB, {})
    subprocess.run(["mkfs.ext4", "-q", "-d", str(root), str(ext)], check=True)
    image = layout(tmp_path / "image.img", 129 * MIB, {})
    table = "label: dos\nstart=2048, size=131072, type=c\nstart=133120, type=83\n"
    subprocess.run(["sfdisk", "-q", str(image)], input=table, text=True, check=True)
    sparse.write_at(fat, image, MIB)
    sparse.write_at(ext, image, 65 * MIB)
    return image, MIB, 65 * MIB


@needs_mkfs
def test_mke2fs_holes_are_used_space_and_get_filled(tmp_path: Path) -> None:
    """mke2fs takes a file's holes for zeroed space (inode tables, journal): they must not stay holes."""
    image, _, root = _image(tmp_path)
    free = [(root + a, root + b) for a, b in ext4.free_blocks(image, root)]
    holes_in_use = [h for h in _holes(image, root, image.stat().st_size) if not _inside(h, free)]
    assert holes_in_use, "mke2fs left no holes in used space: the premise of match_free_space changed"
    before = image.read_bytes()
    filled, _ = sparse.match_free_space(image)
    assert filled > 0 and image.read_bytes() == before
    assert [h for h in _holes(image, root, image.stat().st_size) if not _inside(h, free)] == []


@needs_mkfs
def test_zeros_in_free_space_become_holes_and_nothing_else_changes(tmp_path: Path) -> None:
    image, boot, root = _image(tmp_path)
    # A decompressed image: every byte written. Put junk in one free ext4 block: it must stay.
    full = layout(tmp_path / "full.img", image.stat().st_size, {0: image.read_bytes()})
    free_ext4 = ext4.free_blocks(full, root)
    junk_at = root + free_ext4[-1][0]
    with full.open("r+b") as f:
        f.seek(junk_at)
        f.write(b"junk")
    before = full.read_bytes()
    filled, punched = sparse.match_free_space(full)
    assert filled == 0 and punched > 60 * MIB  # most of both filesystems is free
    assert full.read_bytes() == before
    assert any(a <= junk_at < b for a, b in extents(full))
    free = sparse.free_ranges(full)
    assert any(a >= root for a, _ in free) and any(boot <= a < root for a, _ in free)
    assert all(_inside(h, free) for h in _holes(full, 0, full.stat().st_size))


def _holes(path: Path, start: int, end: int) -> list[tuple[int, int]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return list(sparse.hole_ranges(fd, start, end))
    finally:
        os.close(fd)


def _inside(span: tuple[int, int], ranges: list[tuple[int, int]]) -> bool:
    """Is SPAN covered by the union of RANGES (sorted, touching ranges allowed)?"""
    start, end = span
    for a, b in sorted(ranges):
        if a <= start < b:
            start = b
        if start >= end:
            return True
    return start >= end
