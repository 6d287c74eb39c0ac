"""Writing an image onto a card or into a file, fast, and reading it back: ``flash()`` and its result.

Before the first byte, ``pibake.flash.safety`` decides whether the target may be written
and ``pibake.flash.device`` opens it. Then: 4 MiB writes at 4 MiB-aligned offsets, with a
bounded write-behind window (sync_file_range) so that progress and time left describe the
card and not the page cache. With a bmap (``pibake.flash.bmap``) only the mapped ranges are
written, each checked against its sha256 as it is read. The first 4 MiB (the partition
table) are wiped first and written last, so a card whose write was interrupted has no
partition table: nothing mounts or boots a half-written system from it. What a bmap leaves
out is then zeroed on the device (BLKZEROOUT), so that the card is the image byte for byte.
Then fsync, drop the device's pages from the cache, read back every byte of the image's size
and compare their sha256 with IMAGE.sha256 (or, without one, the image's own), re-read the
partition table, eject.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pibake.disk.sparse import write_zeros
from pibake.errors import Interrupted, PibakeError, UsageError, VerificationFailed
from pibake.flash import bmap as bmaps
from pibake.flash import device, safety
from pibake.flash.device import SECTOR, Disk
from pibake.flash.safety import LARGE_DEVICE_BYTES
from pibake.util.interrupt import sigterm_as_interrupt
from pibake.util.progress import Meter, ProgressCallback, format_size

log = logging.getLogger(__name__)

CHUNK = 4 << 20
# Bytes allowed in flight on the target: enough to keep a fast device busy, small enough that
# progress is the card's. And no more than the card writes in WRITE_BEHIND_SECONDS at the rate
# it is writing now: whatever is in flight must reach the card before Ctrl-C can end the
# process (the kernel writes a block device's pages out when it is closed, and a process exits
# only once that is done), so this is what bounds the wait after Ctrl-C. 64 MiB on a card
# writing 2 MB/s (a slow card, or any card on a loaded machine) was 36 s of waiting, measured.
WRITE_BEHIND = 64 << 20
WRITE_BEHIND_SECONDS = 1.0
RATE_SPAN = 2.0  # seconds of completed writes the card's rate is measured over
LOG_INTERVAL = 2.0

SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4


# --- writing ---------------------------------------------------------------------------------------


def _load_sync_file_range() -> Callable[[int, int, int, int], None] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def call(fd: int, offset: int, nbytes: int, flags: int) -> None:
        if fn(fd, offset, nbytes, flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return call


_sync_file_range = _load_sync_file_range()


class _WriteBehind:
    """Start writeback of each chunk as soon as it is written; wait for the one WINDOW bytes back.

    The page cache never holds more than WINDOW dirty bytes of the card (dd may
    buffer gigabytes, then sit in its final fsync with no progress), writes fail
    where they happen, and written pages are dropped instead of pushing out the
    rest of the cache. WINDOW follows the card: SECONDS of what it wrote over the
    last RATE_SPAN, at least one CHUNK and at most MAX_WINDOW, and one CHUNK until
    the first chunk is on it. Where sync_file_range is missing or refused, an
    fdatasync every WINDOW bytes does the same more coarsely.
    """

    def __init__(
        self,
        fd: int,
        max_window: int = WRITE_BEHIND,
        *,
        seconds: float = WRITE_BEHIND_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fd, self.max_window, self.seconds, self.clock = fd, max_window, seconds, clock
        self.window = min(CHUNK, max_window)
        self.pending: deque[tuple[int, int]] = deque()
        self.in_flight = 0
        self.completed = 0
        self.samples: deque[tuple[float, int]] = deque([(clock(), 0)])  # (when, bytes completed by then)
        self.sync_range = _sync_file_range

    def written(self, offset: int, nbytes: int) -> None:
        self._sync_range(offset, nbytes, SYNC_FILE_RANGE_WRITE)
        self.pending.append((offset, nbytes))
        self.in_flight += nbytes
        if self.in_flight > self.window:
            if self.sync_range is None:
                os.fdatasync(self.fd)
                self._drop(len(self.pending))
            else:
                while self.in_flight > self.window:
                    self._drop(1)

    def _measure(self) -> None:
        """The card's rate over the last RATE_SPAN seconds sets the window."""
        now = self.clock()
        self.samples.append((now, self.completed))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_SPAN:
            self.samples.popleft()
        since, done = self.samples[0]
        if now > since:
            rate = (self.completed - done) / (now - since)
            self.window = int(min(max(rate * self.seconds, CHUNK), self.max_window))

    def _sync_range(self, offset: int, nbytes: int, flags: int) -> None:
        if self.sync_range is None:
            return
        try:
            self.sync_range(self.fd, offset, nbytes, flags)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE):
                raise
            log.debug("sync_file_range: %s; falling back to fdatasync", e.strerror)
            self.sync_range = None

    def _drop(self, count: int) -> None:
        wait = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
        for _ in range(count):
            offset, nbytes = self.pending.popleft()
            self._sync_range(offset, nbytes, wait)
            os.posix_fadvise(self.fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
            self.in_flight -= nbytes
            self.completed += nbytes
        self._measure()

    def finish(self) -> None:
        """Everything written reaches the device, including its own write cache."""
        os.fsync(self.fd)
        self._drop(len(self.pending))


def _pread_into(fd: int, buf: memoryview, offset: int, what: Path) -> None:
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n <= 0:
            raise PibakeError(f"{what} ended at byte {offset + got}, before its expected size: did it change?")
        got += n


def _pwrite_all(fd: int, data: memoryview | bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pieces(extent: bmaps.Extent, head: int) -> Iterator[tuple[int, int]]:
    """(offset, length) pieces of EXTENT cut at CHUNK-aligned offsets and at the end of the head."""
    offset = extent.offset
    while offset < extent.end:
        stop = min((offset // CHUNK + 1) * CHUNK, extent.end)
        if offset < head < stop:
            stop = head
        yield offset, stop - offset
        offset = stop


@dataclass(frozen=True)
class _Plan:
    extents: tuple[bmaps.Extent, ...]
    checksum_type: str
    whole_image: bool  # no bmap: one extent, checked against the image's sha256

    @property
    def nbytes(self) -> int:
        return sum(e.length for e in self.extents)


class _HashBehind:
    """Hash in a second thread while the main thread reads and writes.

    hashlib and os.pwrite release the GIL, so a write costs max(hash, I/O)
    instead of their sum. The caller alternates two buffers: the one handed to
    update() is not touched again until the next update() or wait() returns.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pibake-hash")
        self._pending: Future[None] | None = None

    def update(self, hashes: Sequence[hashlib._Hash], data: memoryview) -> None:
        self.wait()
        if hashes:
            self._pending = self._pool.submit(_update_all, hashes, data)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _update_all(hashes: Sequence[hashlib._Hash], data: memoryview) -> None:
    for h in hashes:
        h.update(data)


class _InterruptedAtTheEnd(KeyboardInterrupt):
    """Ctrl-C once every byte but the head was written: while the partition table was written and all was synced."""


def _write_image(
    src: int, dst: int, plan: _Plan, *, image: Path, image_size: int, meter: Meter, digest: bool
) -> str | None:
    """Write PLAN; the head (partition table) is zeroed first and written last.

    Returns the image's sha256 when the plan is the whole image and DIGEST is set.
    """
    head_len = min(CHUNK, image_size)
    head = bytearray(head_len)
    _pread_into(src, memoryview(head), 0, image)
    _pwrite_all(dst, bytes(head_len), 0)
    os.fdatasync(dst)

    behind = _WriteBehind(dst)
    buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
    whole = hashlib.sha256() if plan.whole_image and digest else None
    hasher = _HashBehind()
    head_bytes = 0
    turn = 0
    try:
        for extent in plan.extents:
            check = hashlib.new(plan.checksum_type) if extent.checksum else None
            hashes = [h for h in (whole, check) if h is not None]
            for offset, length in _pieces(extent, head_len):
                if offset < head_len:
                    hasher.update(hashes, memoryview(head)[offset : offset + length])
                    head_bytes += length
                    continue
                data = buffers[turn][:length]
                turn ^= 1
                _pread_into(src, data, offset, image)
                hasher.update(hashes, data)
                _pwrite_all(dst, data, offset)
                behind.written(offset, length)
                meter.add(length)
            hasher.wait()
            if check is not None and check.hexdigest() != extent.checksum:
                raise VerificationFailed(
                    f"{image} does not match its bmap at bytes {extent.offset}-{extent.end}: the image changed after "
                    "the bmap was made, or one of them is damaged; recreate the bmap or flash with --no-bmap"
                )
    finally:
        hasher.close()
    try:
        _pwrite_all(dst, head, 0)
        behind.written(0, head_len)
        behind.finish()
    except KeyboardInterrupt as e:
        raise _InterruptedAtTheEnd from e
    meter.add(head_bytes)
    return whole.hexdigest() if whole is not None else None


def _first_difference(src: int, dst: int, extents: Iterable[bmaps.Extent], image: Path, target: Path) -> int | None:
    """The first byte where the target differs from the image (only run once a checksum said they do)."""
    a, b = memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK))
    for extent in extents:
        for offset, length in _pieces(extent, 0):
            mine, theirs = a[:length], b[:length]
            _pread_into(src, mine, offset, image)
            _pread_into(dst, theirs, offset, target)
            if mine != theirs:
                i = 0
                while mine[i : i + SECTOR] == theirs[i : i + SECTOR]:
                    i += SECTOR
                return offset + next(j for j in range(i, length) if mine[j] != theirs[j])
    return None


def _verify(
    dst: int,
    *,
    image_size: int,
    expected_sha256: str,
    meter: Meter,
    src: int,
    image: Path,
    target: Path,
) -> None:
    """Read the target's first IMAGE_SIZE bytes back, every one of them, and compare their sha256 with EXPECTED_SHA256.

    Mapped or not: a byte the bmap left out must be the image's too, or the card is not the image.
    """
    buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
    whole = hashlib.sha256()
    hasher = _HashBehind()
    turn = 0
    try:
        for offset, length in _pieces(bmaps.Extent(0, image_size, None), 0):
            data = buffers[turn][:length]
            turn ^= 1
            _pread_into(dst, data, offset, target)
            os.posix_fadvise(dst, offset, length, os.POSIX_FADV_DONTNEED)
            hasher.update([whole], data)
            meter.add(length)
        hasher.wait()
    finally:
        hasher.close()
    if whole.hexdigest() == expected_sha256:
        return
    bad = _first_difference(src, dst, [bmaps.Extent(0, image_size, None)], image, target)
    if bad is not None:
        raise _mismatch(target, bad)
    raise VerificationFailed(
        f"{target} reads back as {image} byte for byte, but {image} does not match its sha256 {expected_sha256} "
        f"({image.name}.sha256): the image changed after it was built, or is damaged. Rebuild it and flash again"
    )


def _image_sha256(src: int, image_size: int, image: Path) -> str:
    """The image's own sha256, for a card written with a bmap from an image with no IMAGE.sha256."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    for offset, length in _pieces(bmaps.Extent(0, image_size, None), 0):
        _pread_into(src, buf[:length], offset, image)
        h.update(buf[:length])
    return h.hexdigest()


def _mismatch(target: Path, offset: int | None) -> VerificationFailed:
    where = f" first at byte {offset} (sector {offset // SECTOR})" if offset is not None else ""
    return VerificationFailed(
        f"verification failed: what {target} gives back differs from the image{where}. The card is faulty, "
        "counterfeit (smaller than it claims) or was changed while writing: do not use it; flash again or use "
        "another card"
    )


# --- the one entry point ------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashResult:
    """What ``flash()`` wrote where, how fast, and whether it was read back and the card ejected."""

    image: Path
    target: Path
    image_size: int
    bytes_written: int
    seconds_write: float
    seconds_verify: float
    verified: bool
    bmap: Path | None = None
    sha256: str | None = None  # the image's: what the card was verified against, or hashed while writing it whole
    partition_table_reread: bool = False
    ejected: bool = False
    warnings: tuple[str, ...] = field(default=())
    bytes_zeroed: int = 0  # what the bmap leaves out, zeroed on the device so that the card is the image

    @property
    def write_rate(self) -> float:
        """Bytes a second written, fsync included."""
        return self.bytes_written / self.seconds_write if self.seconds_write > 0 else 0.0

    def describe(self) -> str:
        """One line for the user: how much, how (bmap or sha256), how fast, verified or not."""
        what = f"{self.bytes_written >> 20} MiB of the {self.image_size >> 20} MiB image"
        if self.bytes_zeroed:
            what += f" and zeroed the other {self.bytes_zeroed >> 20} MiB"
        how = f"bmap {self.bmap.name}" if self.bmap else f"sha256 {self.sha256}" if self.sha256 else "whole image"
        verdict = f"verified in {self.seconds_verify:.1f} s" if self.verified else "NOT verified (--no-verify)"
        end = ", ejected" if self.ejected else ""
        return (
            f"{self.target}: wrote {what} ({how}) in {self.seconds_write:.1f} s, "
            f"{self.write_rate / 1e6:.1f} MB/s; {verdict}{end}"
        )


def _check_image(image: Path) -> int:
    try:
        st = image.stat()
    except FileNotFoundError:
        raise UsageError(f"image {image} does not exist: build it first (`make demo`) or name one") from None
    except OSError as e:
        raise PibakeError(f"cannot read image {image}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"image {image} is not a regular file (the image comes first, the device second)")
    if st.st_size == 0:
        raise UsageError(f"image {image} is empty")
    return st.st_size


def _sidecar_sha256(image: Path) -> str | None:
    """The digest in IMAGE.sha256, as `pibake image build` and `pibake demo` write it."""
    sidecar = image.with_name(image.name + ".sha256")
    if not sidecar.is_file():
        return None
    words = sidecar.read_text().split()
    if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
        log.warning("%s does not start with a sha256 digest: ignored", sidecar)
        return None
    return words[0].lower()


def _plan(image: Path, image_size: int, *, bmap: Path | None, full: bool) -> tuple[_Plan, Path | None]:
    if not full:
        bmap = bmap or bmaps.find_for(image)
    if full or bmap is None:
        return _Plan((bmaps.Extent(0, image_size, None),), "sha256", whole_image=True), None
    block_map = bmaps.load(bmap)
    block_map.check_image(image)
    if bmap.stat().st_mtime < image.stat().st_mtime:
        log.warning("%s is older than %s: if the image changed since, its checksums will not match", bmap, image)
    extents = tuple(e for e in block_map.extents() if e.length)
    return _Plan(extents, block_map.checksum_type, whole_image=False), bmap


def _incomplete(target: Path) -> str:
    return (
        f"{target} is INCOMPLETE: its partition table is written last, so it has none now and nothing will mount "
        "or boot from it. Run the same command again to write it completely"
    )


def flash(
    image: Path,
    target: Path,
    *,
    bmap: Path | None = None,
    full: bool = False,
    to_file: bool = False,
    unmount: bool = False,
    allow_non_removable: bool = False,
    large_device_threshold: float = LARGE_DEVICE_BYTES,
    assume_yes: bool = False,
    verify: bool = True,
    eject: bool = True,
    confirm: Callable[[str], str] | None = None,
    progress: ProgressCallback | None = None,
) -> FlashResult:
    """Write IMAGE to the card TARGET (or, with TO_FILE, into a regular file), then read it back.

    BMAP: the block map to use; None finds IMAGE.bmap next to the image; FULL
    writes every byte even when there is one. CONFIRM receives the description of
    the device and returns what the user typed: it must be the device's name,
    unless ASSUME_YES. PROGRESS is called with a ``pibake.util.progress.Progress``
    after every chunk, and once with ``Progress("verify", 0, ...)`` between writing
    and reading back.

    Every refusal is ``Refused`` (a missing image or a bad argument ``UsageError``),
    raised before anything is written. An image that does not match its .sha256 or
    its bmap, or a card that does not read back as the image, is ``VerificationFailed``;
    Ctrl-C (or SIGTERM, in the main thread) while writing or reading back is ``Interrupted``,
    saying what the card is left as; it stops within about WRITE_BEHIND_SECONDS of the card's
    writing, plus one CHUNK, since only that much is ever in flight.
    """
    image_size = _check_image(image)
    plan, bmap_used = _plan(image, image_size, bmap=bmap, full=full)
    how = f"{format_size(plan.nbytes)} of the {format_size(image_size)} image" + (
        f" (bmap {bmap_used.name})" if bmap_used else " (the whole image)"
    )
    how += ", then reads it back" if verify else ", without reading it back (--no-verify)"

    disk: Disk | None = None
    warnings: tuple[str, ...] = ()
    if device.is_block_device(target):
        disk, warnings = safety.check_device(
            target,
            image=image,
            image_size=image_size,
            plan_text=how,
            unmount=unmount,
            allow_non_removable=allow_non_removable,
            large_device_threshold=large_device_threshold,
            assume_yes=assume_yes,
            confirm=confirm,
        )
    else:
        safety.check_file_target(target, image=image, to_file=to_file)
        log.info("writing %s into the file %s", how, target)

    with sigterm_as_interrupt():  # `kill` stops it as Ctrl-C does, saying what the card is left as
        written = _write_and_verify(
            image, target, plan, block_device=disk is not None, verify=verify, progress=progress
        )
    reread = device.reread_partition_table(target) if disk is not None else False
    ejected = device.eject(disk) if disk is not None and eject else False
    return FlashResult(
        image=image,
        target=target,
        image_size=image_size,
        bytes_written=plan.nbytes,
        seconds_write=written.seconds_write,
        seconds_verify=written.seconds_verify,
        verified=verify,
        bmap=bmap_used,
        sha256=written.sha256,
        bytes_zeroed=written.zeroed,
        partition_table_reread=reread,
        ejected=ejected,
        warnings=warnings,
    )


@dataclass(frozen=True)
class _Written:
    seconds_write: float
    seconds_verify: float
    sha256: str | None  # the image's: what the card was verified against, or hashed while writing it whole
    zeroed: int = 0  # bytes the bmap leaves out, zeroed on the device


def _write_and_verify(
    image: Path, target: Path, plan: _Plan, *, block_device: bool, verify: bool, progress: ProgressCallback | None
) -> _Written:
    expected = _sidecar_sha256(image)
    image_size = image.stat().st_size
    src = os.open(image, os.O_RDONLY)
    try:
        os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        dst = device.open_target(target, block_device=block_device, image_size=image_size)
        try:
            log.info("writing %s to %s", format_size(plan.nbytes), target)
            with Meter("write", plan.nbytes, callback=progress, logger=log, interval=LOG_INTERVAL) as meter:
                try:
                    digest = _write_image(
                        src, dst, plan, image=image, image_size=image_size, meter=meter, digest=verify or bool(expected)
                    )
                except _InterruptedAtTheEnd as e:
                    raise Interrupted(
                        f"interrupted at the very end, while the partition table was written and everything synced: "
                        f"{target} may hold the whole image, but it is NOT verified. Run the same command again before "
                        "using it"
                    ) from e
                except KeyboardInterrupt as e:
                    raise Interrupted(
                        f"interrupted after {meter.done >> 20} of {plan.nbytes >> 20} MiB: {_incomplete(target)}"
                    ) from e
                except PibakeError as e:
                    e.args = (f"{e}\n{_incomplete(target)}",)  # the same kind, and what the card is left as
                    raise
                except OSError as e:
                    raise PibakeError(
                        f"writing {target} failed after {meter.done >> 20} MiB: {e.strerror}\n{_incomplete(target)}"
                    ) from e
                seconds_write = meter.seconds
                meter.finish(" (fsync included)")
            if digest is not None and expected is not None and digest != expected:
                raise VerificationFailed(
                    f"{image} does not match {image.name}.sha256 (it has {digest}, the file says {expected}): "
                    f"the image changed after it was built, or is damaged. {target} now holds that image: "
                    "rebuild it and flash again"
                )
            zeroed = 0
            if block_device and not plan.whole_image:
                zeroed = _zero_unmapped(dst, plan, image_size=image_size, target=target, progress=progress)
            seconds_verify = 0.0
            if verify:
                seconds_verify, digest = _read_back(
                    dst,
                    image_size,
                    expected=expected or digest,
                    progress=progress,
                    src=src,
                    image=image,
                    target=target,
                    block_device=block_device,
                )
            return _Written(seconds_write, seconds_verify, digest, zeroed)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _read_back(
    dst: int,
    image_size: int,
    *,
    expected: str | None,
    progress: ProgressCallback | None,
    src: int,
    image: Path,
    target: Path,
    block_device: bool,
) -> tuple[float, str]:
    """Verify that TARGET's first IMAGE_SIZE bytes hash to EXPECTED (IMAGE.sha256, else the image's own sha256).

    Returns the seconds it took and the digest verified.
    """
    try:
        if expected is None:  # written with a bmap, and no IMAGE.sha256 to say what the whole must be
            log.info("%s has no %s.sha256 beside it: hashing it to verify the card against", image, image.name)
            expected = _image_sha256(src, image_size, image)
        # The meter reports done=0 before the cache is dropped.
        with Meter("verify", image_size, callback=progress, logger=log, interval=LOG_INTERVAL) as meter:
            device.drop_cache(dst, block_device=block_device)
            rfd = os.open(target, os.O_RDONLY)
            try:
                os.posix_fadvise(rfd, 0, 0, os.POSIX_FADV_DONTNEED)
                _verify(
                    rfd,
                    image_size=image_size,
                    expected_sha256=expected,
                    meter=meter,
                    src=src,
                    image=image,
                    target=target,
                )
            finally:
                os.close(rfd)
    except KeyboardInterrupt as e:
        raise Interrupted(f"interrupted while reading back: {target} was written completely but is not verified") from e
    except OSError as e:
        raise PibakeError(f"reading {target} back failed: {e.strerror}; the card may be faulty") from e
    log.info("%s: verified: its first %d bytes hash to the image's sha256 %s", target, image_size, expected)
    return meter.seconds, expected


# --- the space a bmap leaves out ------------------------------------------------------------------

BLKZEROOUT = 0x127F  # _IO(0x12, 127): zero a byte range of a block device, the cheapest way it can
BLKSSZGET = 0x1268  # _IO(0x12, 104): the logical block size
# BLKZEROOUT in pieces of about ZERO_SECONDS of the card's zeroing (CHUNK to ZERO_PIECE_MAX):
# the kernel may fall back to writing zero pages at the card's speed, and Ctrl-C is only
# honoured between two calls.
ZERO_SECONDS = 1.0
ZERO_PIECE_MAX = 256 << 20


def _unmapped(plan: _Plan, start: int, image_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the image's bytes from START on that PLAN does not write."""
    offset = start
    for extent in plan.extents:
        if extent.offset > offset:
            yield offset, min(extent.offset, image_size) - offset
        offset = max(offset, extent.end)
    if offset < image_size:
        yield offset, image_size - offset


def _zero_unmapped(dst: int, plan: _Plan, *, image_size: int, target: Path, progress: ProgressCallback | None) -> int:
    """Zero the device where the bmap maps nothing, so that the card is the image byte for byte; return the bytes.

    The image reads as zeros there (holes, or free space pibake knows to be zeros), but the card
    still holds whatever it held before. The first CHUNK (the partition table's) is written whole.
    """
    ranges = [r for r in _unmapped(plan, min(CHUNK, image_size), image_size) if r[1] > 0]
    total = sum(length for _, length in ranges)
    if not total:
        return 0
    log.info("zeroing the %s of %s that the bmap leaves out", format_size(total), target)
    zero = _Zeroer(dst)
    piece = CHUNK
    with Meter("zero", total, callback=progress, logger=log, interval=LOG_INTERVAL) as meter:
        try:
            for offset, length in ranges:
                end = offset + length
                while offset < end:
                    n = min(piece, end - offset)
                    started = time.monotonic()
                    zero.range(offset, n)
                    rate = n / max(time.monotonic() - started, 1e-6)
                    piece = int(min(max(rate * ZERO_SECONDS, CHUNK), ZERO_PIECE_MAX)) // CHUNK * CHUNK
                    meter.add(n)
                    offset += n
            os.fsync(dst)
        except KeyboardInterrupt as e:
            raise Interrupted(
                f"interrupted while zeroing what the bmap leaves out: {target} holds the image's data and partition "
                "table, but not yet the image byte for byte, and it is not verified. Run the same command again"
            ) from e
        except OSError as e:
            raise PibakeError(
                f"zeroing what the bmap leaves out of {target} failed: {e.strerror}. Its data and partition table are "
                "written, but it is not the image byte for byte: flash it again (--no-bmap writes every byte)"
            ) from e
        meter.finish()
    return total


class _Zeroer:
    """BLKZEROOUT where the device takes it (WRITE ZEROES, or the kernel's own zero pages); written zeros elsewhere."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        try:
            self.sector = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        except OSError:
            self.sector = 0  # not a block device: write zeros

    def range(self, offset: int, length: int) -> None:
        if self.sector and offset % self.sector == 0 and length % self.sector == 0:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
                return
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTTY):
                    raise
                log.debug("BLKZEROOUT: %s; writing zeros instead", e.strerror)
                self.sector = 0
        write_zeros(self.fd, offset, length)
        os.fdatasync(self.fd)
