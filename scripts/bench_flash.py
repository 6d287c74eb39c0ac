#!/usr/bin/env python3
"""Benchmark `pibake flash` against `dd bs=4M conv=fsync`, and a bmap write against a full one.

Not a test: it measures this machine, and prints MB/s and ratios. Needs root (a loop
device over a file on disk stands in for the card). `make bench-flash` runs it.

  plain write   the same fully-written image to the same loop device: dd against
                pibake --no-verify (the like-for-like pair: neither reads back), and
                pibake with its default read-back verification, for what that costs
  bmap write    an image that is 30% data: pibake with its bmap against pibake
                writing every byte (both without and with verification)

Both tools read the image from the page cache (it is read once before the runs), so
what is measured is the writing. Every run starts after `sync` with the device's
cache flushed; the runs are interleaved round by round and the median is reported.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pibake.flash import bmap
from pibake.flash import writer as flash
from pibake.util.proc import run

MIB = 1 << 20
CHUNK = 4 * MIB


def make_images(work: Path, size: int) -> tuple[Path, Path]:
    """full.img: SIZE bytes of data. sparse30.img: 3 MiB of data in every 10 MiB, holes between, and its bmap."""
    block = os.urandom(CHUNK)
    full = work / "full.img"
    with full.open("wb") as f:
        for i in range(size // CHUNK):
            f.write(i.to_bytes(8, "little") + block[8:])
    sparse = work / "sparse30.img"
    with sparse.open("wb") as f:
        f.truncate(size)
        for i in range(size // (10 * MIB)):
            f.seek(i * 10 * MIB)
            f.write(os.urandom(3 * MIB))
    bmap.create(sparse, bmap.default_path(sparse))
    return full, sparse


def make_card(work: Path, size: int, *, direct_io: bool) -> tuple[Path, Path]:
    """A loop device over a fully allocated file (no block allocation during the runs)."""
    backing = work / "card.img"
    zeros = bytes(CHUNK)
    with backing.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(zeros)
        os.fsync(f.fileno())
    args = ["losetup", "-f", "--show", f"--direct-io={'on' if direct_io else 'off'}", str(backing)]
    return Path(run(args).strip()), backing


def settle(dev: Path) -> None:
    os.sync()
    run(["blockdev", "--flushbufs", str(dev)])


def timed(fn: Callable[[], object], dev: Path) -> float:
    settle(dev)
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="image size (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each kind; the median counts (default: %(default)s)")
    ap.add_argument("--workdir", type=Path, default=Path("build/bench-flash"), help="on the disk to measure")
    ap.add_argument(
        "--buffered-loop",
        action="store_true",
        help="loop device without direct I/O (a second page cache under the device; less like a card)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_flash: needs root (losetup); run it as root or with sudo", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    size: int = a.size_mib * MIB
    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    print(f"images of {a.size_mib} MiB in {work}; {a.rounds} rounds; loop direct I/O {not a.buffered_loop}")
    full, sparse = make_images(work, size)
    mapped = bmap.load(bmap.default_path(sparse)).mapped_bytes
    dev, _ = make_card(work, size + 64 * MIB, direct_io=not a.buffered_loop)
    for img in (full, sparse):  # warm the page cache: both tools read the image from memory
        with img.open("rb") as f:
            while f.read(CHUNK):
                pass

    def pibake(image: Path, *, full_write: bool, verify: bool) -> Callable[[], object]:
        return lambda: flash.flash(
            image, dev, full=full_write, verify=verify, eject=False, allow_non_removable=True, assume_yes=True
        )

    def dd() -> None:
        subprocess.run(["dd", f"if={full}", f"of={dev}", "bs=4M", "conv=fsync", "status=none"], check=True)

    runs: dict[str, Callable[[], object]] = {
        "dd bs=4M conv=fsync": dd,
        "pibake --no-verify": pibake(full, full_write=True, verify=False),
        "pibake (verified)": pibake(full, full_write=True, verify=True),
        "30% data, full write": pibake(sparse, full_write=True, verify=False),
        "30% data, bmap write": pibake(sparse, full_write=False, verify=False),
        "30% data, full, verified": pibake(sparse, full_write=True, verify=True),
        "30% data, bmap, verified": pibake(sparse, full_write=False, verify=True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for r in range(a.rounds):
            for name, fn in runs.items():
                seconds[name].append(timed(fn, dev))
            print(f"  round {r + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    finally:
        run(["losetup", "-d", str(dev)])
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    median: dict[str, float] = {name: statistics.median(s) for name, s in seconds.items()}

    def rate(name: str) -> float:
        return size / median[name] / 1e6

    print(f"\n{'run':<28} {'median s':>9} {'MB/s':>9}   (MB/s of the {a.size_mib} MiB image; fsync included)")
    for name in runs:
        print(f"{name:<28} {median[name]:>9.2f} {rate(name):>9.1f}")
    print(f"\nbmap maps {mapped / MIB:.0f} MiB of {a.size_mib} MiB ({100 * mapped / size:.0f}%)")
    print(f"pibake --no-verify / dd:           {rate('pibake --no-verify') / rate('dd bs=4M conv=fsync'):.2f}x")
    print(f"pibake verified (write+read) / dd: {rate('pibake (verified)') / rate('dd bs=4M conv=fsync'):.2f}x")
    print(f"bmap / full write (30% data):      {median['30% data, full write'] / median['30% data, bmap write']:.2f}x")
    ratio = median["30% data, full, verified"] / median["30% data, bmap, verified"]
    print(f"bmap / full, both verified:        {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
