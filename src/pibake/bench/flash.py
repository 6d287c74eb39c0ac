"""The flash benchmark: `pibake flash` against `dd bs=4M conv=fsync`, and a bmap write against a full one.

Not a test: it measures this machine. Needs root (a loop device over a file on disk stands
in for the card). `pibake bench` runs it as its ``flash`` step (``flash_step``);
`make bench-flash` (``python -m pibake.bench.flash``) runs it alone and prints MB/s and ratios:

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
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pibake.bench.context import Context
from pibake.bench.results import Recorder
from pibake.errors import PibakeError
from pibake.flash import bmap, device, safety, writer
from pibake.util.proc import run

MIB = 1 << 20
CHUNK = 4 * MIB
FLASH_STEPS = ("flash-dd", "flash-pibake", "flash-bmap-30pct")


# ---------------------------------------------------------------- the images, the card, the clock


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
    """A loop device over a fully allocated file (no block allocation during the runs): the device and the file."""
    backing = work / "card.img"
    zeros = bytes(CHUNK)
    with backing.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(zeros)
        os.fsync(f.fileno())
    args = ["losetup", "-f", "--show", f"--direct-io={'on' if direct_io else 'off'}", str(backing)]
    return Path(run(args).strip()), backing


def settle(dev: Path) -> None:
    """Everything written reaches the disks, and DEV's buffers are dropped: each run starts alike."""
    os.sync()
    run(["blockdev", "--flushbufs", str(dev)])


def timed(fn: Callable[[], object], dev: Path) -> float:
    """Seconds FN takes, started once DEV is settled."""
    settle(dev)
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def warm(*images: Path) -> None:
    """Read IMAGES once, so that every tool reads them from the page cache."""
    for img in images:
        with img.open("rb") as f:
            while f.read(CHUNK):
                pass


def dd(image: Path, dev: Path) -> Callable[[], object]:
    """The baseline: dd writing IMAGE to DEV in 4 MiB blocks, then fsync."""
    return lambda: run(["dd", f"if={image}", f"of={dev}", "bs=4M", "conv=fsync", "status=none"])


def pibake(image: Path, dev: Path, *, full_write: bool, verify: bool) -> Callable[[], object]:
    """`pibake flash` of IMAGE to DEV: every byte (FULL_WRITE) or its bmap, read back or not (VERIFY)."""
    return lambda: writer.flash(
        image, dev, full=full_write, verify=verify, eject=False, allow_non_removable=True, assume_yes=True
    )


@contextmanager
def card_and_images(
    work: Path, size_mib: int, *, direct_io: bool, keep: bool = False
) -> Iterator[tuple[Path, Path, Path]]:
    """The loop device, full.img and sparse30.img (SIZE_MIB, in WORK, read once); detached and removed after."""
    work.mkdir(parents=True, exist_ok=True)
    size = size_mib * MIB
    full, sparse = make_images(work, size)
    dev, _ = make_card(work, size + 64 * MIB, direct_io=direct_io)
    try:
        warm(full, sparse)
        yield dev, full, sparse
    finally:
        run(["losetup", "-d", str(dev)])
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


@contextmanager
def quiet_flash() -> Iterator[None]:
    """`pibake flash` narrates every write at INFO; while timing it, only its warnings are wanted."""
    loggers = [logging.getLogger(m.__name__) for m in (safety, device, writer)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ---------------------------------------------------------------- `pibake bench`'s flash step


def flash_step(ctx: Context) -> None:
    """flash: dd, pibake and bmap writes to a loop device, as rows of the bench (root only)."""
    if os.geteuid() != 0:
        for name in FLASH_STEPS:
            ctx.rec.cannot(name, "flash", "needs root for a loop device standing in for the card")
        return
    try:
        with quiet_flash():
            bench_flash(ctx.work / "flash", ctx.rec, size_mib=ctx.flash_size_mib, repeat=ctx.repeat)
    except PibakeError as e:
        ctx.rec.fail("flash", "flash", e)


def bench_flash(work: Path, rec: Recorder, *, size_mib: int, repeat: int) -> None:
    """Time each write REPEAT times, interleaved, into REC: images of SIZE_MIB, made in WORK and removed after."""
    with card_and_images(work, size_mib, direct_io=True) as (dev, full, sparse):
        mapped = f"{size_mib} MiB image, 30% data"
        runs: list[tuple[str, Callable[[], object], str | None, str]] = [
            ("flash-dd", dd(full, dev), None, f"dd bs=4M conv=fsync, {size_mib} MiB"),
            ("flash-pibake", pibake(full, dev, full_write=True, verify=False), "flash-dd", "--no-verify"),
            ("flash-pibake-verified", pibake(full, dev, full_write=True, verify=True), "flash-dd", "write + read-back"),
            ("flash-full-30pct", pibake(sparse, dev, full_write=True, verify=False), None, f"{mapped}, every byte"),
            (
                "flash-bmap-30pct",
                pibake(sparse, dev, full_write=False, verify=False),
                "flash-full-30pct",
                f"{mapped}, bmap",
            ),
        ]
        for _ in range(repeat):
            for name, fn, ref, note in runs:
                with rec.guard(name, "flash"):
                    rec.add(name, "flash", timed(fn, dev), ratio_to=ref, note=note)


# ---------------------------------------------------------------- `make bench-flash`


def main(argv: Sequence[str] | None = None) -> int:
    """`make bench-flash`: the runs below, ROUNDS times each, then their medians in MB/s and the ratios."""
    ap = argparse.ArgumentParser(
        prog="bench_flash", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=1024, help="image size (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each kind; the median counts (default: %(default)s)")
    ap.add_argument("--workdir", type=Path, default=Path("build/bench-flash"), help="on the disk to measure")
    ap.add_argument(
        "--buffered-loop",
        action="store_true",
        help="loop device without direct I/O (a second page cache under the device; less like a card)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (losetup); run it as root or with sudo")
    logging.basicConfig(level=logging.WARNING)
    size: int = a.size_mib * MIB
    print(f"images of {a.size_mib} MiB in {a.workdir}; {a.rounds} rounds; loop direct I/O {not a.buffered_loop}")
    with card_and_images(a.workdir, a.size_mib, direct_io=not a.buffered_loop, keep=a.keep) as (dev, full, sparse):
        mapped = bmap.load(bmap.default_path(sparse)).mapped_bytes
        runs: dict[str, Callable[[], object]] = {
            "dd bs=4M conv=fsync": dd(full, dev),
            "pibake --no-verify": pibake(full, dev, full_write=True, verify=False),
            "pibake (verified)": pibake(full, dev, full_write=True, verify=True),
            "30% data, full write": pibake(sparse, dev, full_write=True, verify=False),
            "30% data, bmap write": pibake(sparse, dev, full_write=False, verify=False),
            "30% data, full, verified": pibake(sparse, dev, full_write=True, verify=True),
            "30% data, bmap, verified": pibake(sparse, dev, full_write=False, verify=True),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(a.rounds):
            for name, fn in runs.items():
                seconds[name].append(timed(fn, dev))
            print(f"  round {r + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)

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
