"""Byte ranges between image files that keep holes where both sides are zero."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pibake.disk.layout import MIB


def _is_hole(fd: int, offset: int, length: int) -> bool:
    """True if the file has no data in [offset, offset+length): a hole, or past its end (reads as zeros)."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data at or after OFFSET
            return True
        raise


def sync_range(src: Path, src_offset: int, dst: Path, dst_offset: int, length: int, *, block: int = 4 * MIB) -> int:
    """Make DST[dst_offset:+length] equal SRC[src_offset:+length], writing only the blocks that differ.

    DST must exist. Blocks that are already equal are not written, so holes of a sparse
    DST stay holes where SRC is zero; where both files have a hole nothing is even read.
    Returns the number of bytes written.
    """
    written = 0
    fi = os.open(src, os.O_RDONLY)
    try:
        fo = os.open(dst, os.O_RDWR)
        try:
            done = 0
            while done < length:
                n = min(block, length - done)
                if _is_hole(fi, src_offset + done, n) and _is_hole(fo, dst_offset + done, n):
                    done += n
                    continue
                new = os.pread(fi, n, src_offset + done)
                if len(new) < n:
                    new += bytes(n - len(new))  # past SRC's end reads as zeros, like a hole
                if new != os.pread(fo, n, dst_offset + done):
                    os.pwrite(fo, new, dst_offset + done)
                    written += n
                done += n
        finally:
            os.close(fo)
    finally:
        os.close(fi)
    return written


def write_at(src: Path, dst: Path, offset: int, *, block: int = 4 * MIB) -> None:
    """Copy SRC into DST at OFFSET without truncating, leaving all-zero blocks as holes."""
    zero = bytes(block)
    with src.open("rb") as fi, dst.open("r+b") as fo:
        pos = offset
        while chunk := fi.read(block):
            if chunk != zero[: len(chunk)]:
                fo.seek(pos)
                fo.write(chunk)
            pos += len(chunk)
