"""Holes in image files: copied exactly, and made only where a filesystem says the space is free.

A hole reads as zeros, but a card written with a block map (pibake's or bmaptool's) keeps its
old bytes wherever the image has one. So pibake never turns written bytes, zeros included, into
holes:

- ``copy_extents`` (and ``write_at``, ``copy_file``) give the destination the source's extents:
  data where the source has data, every byte of it written; holes where the source has holes.
- ``match_free_space`` makes an image's holes exactly the free space of its filesystems. mke2fs
  and resize2fs take a regular file's holes for zeroed space: they leave ext4's inode tables
  (flagged ITABLE_ZEROED) and its journal as holes. Those holes, and any other hole outside free
  space, are filled with written zeros; data that is all zeros inside free space (ext4's free
  blocks, FAT's free clusters) is punched out. No byte of the image changes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pibake.disk.ext4 import free_blocks
from pibake.disk.layout import MIB, SECTOR, parse_mbr
from pibake.errors import PibakeError, UsageError

log = logging.getLogger(__name__)

CHUNK = 4 * MIB
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
# MBR partition types pibake reads the free space of.
_LINUX = 0x83
_FAT = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})

Range = tuple[int, int]  # [start, end) in bytes


# ---------------------------------------------------------------- extents


def data_ranges(fd: int, start: int, end: int) -> Iterator[Range]:
    """The [start, end) ranges of FD within [START, END) that hold data (SEEK_DATA/SEEK_HOLE).

    Past the end of the file there is no data. A filesystem that cannot report holes makes the
    whole range data: correct, just not sparse.
    """
    offset = start
    while offset < end:
        try:
            first = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data at or after OFFSET
                return
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield offset, end
                return
            raise
        if first >= end:
            return
        stop = min(os.lseek(fd, first, os.SEEK_HOLE), end)
        yield first, stop
        offset = stop


def hole_ranges(fd: int, start: int, end: int) -> Iterator[Range]:
    """The [start, end) ranges of FD within [START, END) that hold no data: holes, or past the end."""
    offset = start
    for first, stop in data_ranges(fd, start, end):
        if first > offset:
            yield offset, first
        offset = stop
    if offset < end:
        yield offset, end


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make [OFFSET, +LENGTH) of FD read as zeros, as a hole; written zeros where the filesystem cannot punch."""
    if length <= 0:
        return
    if _fallocate is not None:
        if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, os.strerror(err))
    write_zeros(fd, offset, length)


def write_zeros(fd: int, offset: int, length: int) -> None:
    """Write LENGTH zero bytes at OFFSET: data, not a hole."""
    zeros = bytes(min(CHUNK, length))
    end = offset + length
    while offset < end:
        n = min(len(zeros), end - offset)
        _pwrite_all(fd, memoryview(zeros)[:n], offset)
        offset += n


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _all_data(fd: int, offset: int, length: int) -> bool:
    """True if FD holds data (no hole) everywhere in [OFFSET, +LENGTH)."""
    try:
        return os.lseek(fd, offset, os.SEEK_HOLE) >= offset + length
    except OSError:  # past the end, or no hole reporting
        return False


# ---------------------------------------------------------------- copies


def copy_extents(src: Path, src_offset: int, dst: Path, dst_offset: int, length: int) -> int:
    """Make DST[dst_offset:+length] hold SRC[src_offset:+length] with SRC's extents; return the bytes written.

    Where SRC has data, DST gets data: every byte, zeros included (a block DST already holds
    as equal data is not rewritten). Where SRC has a hole (or ends), DST gets a hole. DST must
    exist; it grows if the range reaches past its end.
    """
    written = 0
    fi = os.open(src, os.O_RDONLY)
    try:
        fo = os.open(dst, os.O_RDWR)
        try:
            shift = dst_offset - src_offset
            for first, stop in hole_ranges(fi, src_offset, src_offset + length):
                for d_first, d_stop in data_ranges(fo, first + shift, stop + shift):
                    punch_hole(fo, d_first, d_stop - d_first)
            buf = bytearray(CHUNK)
            for first, stop in data_ranges(fi, src_offset, src_offset + length):
                offset = first
                while offset < stop:
                    n = min(CHUNK, stop - offset)
                    data = memoryview(buf)[:n]
                    got = os.preadv(fi, [data], offset)
                    if got < n:
                        raise PibakeError(f"{src} ended at byte {offset + got} while copying it: did it change?")
                    target = offset + shift
                    if not (_all_data(fo, target, n) and os.pread(fo, n, target) == data):
                        _pwrite_all(fo, data, target)
                        written += n
                    offset += n
        finally:
            os.close(fo)
    finally:
        os.close(fi)
    return written


def write_at(src: Path, dst: Path, offset: int) -> int:
    """Copy the whole of SRC into DST at OFFSET without truncating DST, with SRC's extents; return bytes written."""
    return copy_extents(src, 0, dst, offset, src.stat().st_size)


def copy_file(src: Path, dst: Path) -> Path:
    """Copy SRC to DST atomically (DST.part, then renamed), with SRC's extents: its holes, and only those."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    try:
        with part.open("wb") as f:
            f.truncate(src.stat().st_size)
        copy_extents(src, 0, part, 0, src.stat().st_size)
        part.rename(dst)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dst


# ---------------------------------------------------------------- free space


def fat_free_ranges(boot_sector: bytes, fat: bytes) -> list[Range]:
    """Byte ranges, from the filesystem's start, of a FAT12/16/32's free clusters, from its boot sector and one FAT.

    Nothing (an empty list) for a boot sector that does not describe a FAT.
    """
    if len(boot_sector) < SECTOR or boot_sector[510:512] != b"\x55\xaa":
        return []
    bytes_per_sector = int.from_bytes(boot_sector[11:13], "little")
    per_cluster = boot_sector[13]
    reserved = int.from_bytes(boot_sector[14:16], "little")
    fats = boot_sector[16]
    root_entries = int.from_bytes(boot_sector[17:19], "little")
    total = int.from_bytes(boot_sector[19:21], "little") or int.from_bytes(boot_sector[32:36], "little")
    fat_sectors = int.from_bytes(boot_sector[22:24], "little") or int.from_bytes(boot_sector[36:40], "little")
    if bytes_per_sector not in (512, 1024, 2048, 4096) or per_cluster == 0 or per_cluster & (per_cluster - 1):
        return []
    if not (reserved and fats and fat_sectors and total):
        return []
    root_sectors = -(-root_entries * 32 // bytes_per_sector)
    data_start = reserved + fats * fat_sectors + root_sectors
    if data_start >= total:
        return []
    clusters = (total - data_start) // per_cluster
    cluster_size = per_cluster * bytes_per_sector
    entry_bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    free: list[Range] = []
    for cluster in range(2, clusters + 2):
        if entry_bits == 32:
            entry = int.from_bytes(fat[cluster * 4 : cluster * 4 + 4], "little") & 0x0FFFFFFF
        elif entry_bits == 16:
            entry = int.from_bytes(fat[cluster * 2 : cluster * 2 + 2], "little")
        else:
            pair = int.from_bytes(fat[cluster * 3 // 2 : cluster * 3 // 2 + 2], "little")
            entry = pair >> 4 if cluster & 1 else pair & 0xFFF
        if entry:
            continue
        start = data_start * bytes_per_sector + (cluster - 2) * cluster_size
        if free and free[-1][1] == start:
            free[-1] = (free[-1][0], start + cluster_size)
        else:
            free.append((start, start + cluster_size))
    return free


def _fat_free(image: Path, offset: int) -> list[Range]:
    with image.open("rb") as f:
        f.seek(offset)
        boot = f.read(SECTOR)
        if len(boot) < SECTOR:
            return []
        reserved = int.from_bytes(boot[14:16], "little") * int.from_bytes(boot[11:13], "little")
        fat_bytes = (int.from_bytes(boot[22:24], "little") or int.from_bytes(boot[36:40], "little")) * int.from_bytes(
            boot[11:13], "little"
        )
        if not 0 < fat_bytes <= 64 * MIB:  # FAT32's largest FAT is 1 GiB; pibake's are a few MiB
            return []
        f.seek(offset + reserved)
        return fat_free_ranges(boot, f.read(fat_bytes))


def free_ranges(image: Path) -> list[Range]:
    """Byte ranges of IMAGE that its filesystems record as free: ext4's free blocks, FAT's free clusters.

    Partitions of other kinds, and space outside partitions, are not free. An image without an
    MBR has no known free space.
    """
    with image.open("rb") as f:
        sector0 = f.read(SECTOR)
    try:
        mbr = parse_mbr(sector0)
    except UsageError:
        return []
    size = image.stat().st_size
    found: list[Range] = []
    for part in mbr.partitions:
        start, end = part.start * SECTOR, min((part.start + part.size) * SECTOR, size)
        if part.type_code == _LINUX:
            ranges = free_blocks(image, start)
        elif part.type_code in _FAT:
            ranges = _fat_free(image, start)
        else:
            continue
        found += [(start + a, min(start + b, end)) for a, b in ranges if start + a < end]
    return _merge(found)


def _merge(ranges: Iterable[Range]) -> list[Range]:
    merged: list[Range] = []
    for a, b in sorted(ranges):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        elif a < b:
            merged.append((a, b))
    return merged


def _outside(span: Range, free: list[Range]) -> Iterator[Range]:
    """The parts of SPAN not covered by FREE (sorted, disjoint)."""
    start, end = span
    for a, b in free:
        if b <= start:
            continue
        if a >= end:
            break
        if a > start:
            yield start, a
        start = max(start, b)
    if start < end:
        yield start, end


def match_free_space(image: Path) -> tuple[int, int]:
    """Make IMAGE's holes exactly the zeros in its filesystems' free space; return (bytes filled, bytes punched).

    Every hole outside free space becomes written zeros; every block of free space that holds
    only zeros becomes a hole. The bytes of IMAGE do not change, so its sha256 does not either;
    a block map made afterwards leaves out only space no filesystem uses.
    """
    try:
        free = free_ranges(image)
        size = image.stat().st_size
        filled = punched = 0
        fd = os.open(image, os.O_RDWR)
        try:
            block = max(os.fstat(fd).st_blksize, 4096)
            for hole in list(hole_ranges(fd, 0, size)):
                for first, stop in _outside(hole, free):
                    write_zeros(fd, first, stop - first)
                    filled += stop - first
            for first, stop in free:
                # Only whole blocks of the host filesystem can become holes.
                first, stop = -(-first // block) * block, stop // block * block
                for d_first, d_stop in list(data_ranges(fd, first, stop)):
                    punched += _punch_zeros(fd, d_first, d_stop, block)
        finally:
            os.close(fd)
    except OSError as e:
        raise PibakeError(f"{image}: could not match its holes to its free space: {e.strerror}") from e
    log.info(
        "%s: %s MiB of holes in used space filled, %s MiB of zeros in free space made holes",
        image.name,
        f"{filled / MIB:.1f}",
        f"{punched / MIB:.1f}",
    )
    return filled, punched


def _punch_zeros(fd: int, first: int, stop: int, block: int) -> int:
    """Punch the all-zero, BLOCK-aligned blocks of [FIRST, STOP) (data, aligned to BLOCK); return the bytes punched."""
    punched = 0
    zero_chunk = bytes(CHUNK)
    zero_block = bytes(block)
    buf = bytearray(CHUNK)
    run_start = -1
    offset = first
    while offset < stop:
        got = os.preadv(fd, [memoryview(buf)[: min(CHUNK, stop - offset)]], offset)
        if got == 0:
            break
        data, zeros = (buf, zero_chunk) if got == CHUNK else (buf[:got], zero_chunk[:got])
        if data == zeros:  # the common case: one memcmp for the chunk
            if run_start < 0:
                run_start = offset
            offset += got
            continue
        for i in range(0, got, block):
            is_zero = data[i : i + block] == zero_block[: min(block, got - i)]
            if is_zero and run_start < 0:
                run_start = offset + i
            elif not is_zero and run_start >= 0:
                punch_hole(fd, run_start, offset + i - run_start)
                punched += offset + i - run_start
                run_start = -1
        offset += got
    if run_start >= 0:
        punch_hole(fd, run_start, offset - run_start)
        punched += offset - run_start
    return punched
