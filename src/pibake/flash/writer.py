"""Write a finished image to an SD card: safer than dd, and at least as fast.

Safety, all decided before a single byte is written:

- the target is a whole block device (not a partition), or a regular file named
  with ``to_file=True``; never the image itself, nor the loop device of the image;
- never the disk that holds /, /boot, /boot/firmware, /boot/efi, /usr or /var,
  swap, device-mapper volumes (LVM, LUKS) or the image file itself;
- no mounted filesystem on it; ``unmount=True`` unmounts those (a desktop's
  automounts of the old card) after the confirmation, and then goes on;
- a removable device, unless ``allow_non_removable=True``; a warning for one
  larger than ``large_device_threshold``;
- the image fits on it;
- the user types the device name back, after seeing its model, serial, size,
  partitions and mounts (unless ``assume_yes=True``);
- then the device is opened with O_EXCL, so the kernel itself refuses it if
  anything mounted or claimed it meanwhile.

Writing: 4 MiB writes at 4 MiB-aligned offsets, with a bounded write-behind
window (sync_file_range) so that progress and time left describe the card and
not the page cache. With a bmap only the mapped ranges are written, each checked
against its sha256 as it is read. The first 4 MiB (the partition table) are wiped
first and written last, so a card whose write was interrupted has no partition
table: nothing mounts or boots a half-written system from it. Then fsync, drop
the device's pages from the cache, read back and compare with the image's sha256
(or the bmap's range checksums), re-read the partition table, eject.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pibake.errors import PibakeError
from pibake.flash import bmap as bmaps
from pibake.util.proc import run

log = logging.getLogger(__name__)

CHUNK = 4 << 20
# Dirty bytes allowed in flight on the target: enough to keep a fast device busy,
# small enough that progress is the card's and Ctrl-C does not wait on gigabytes.
WRITE_BEHIND = 64 << 20
LARGE_DEVICE_BYTES = 64e9
LOG_INTERVAL = 2.0
SECTOR = 512

# Mount points whose disk is the running system: never unmounted, never overwritten.
SYSTEM_MOUNT_POINTS = ("/", "/boot", "/boot/firmware", "/boot/efi", "/usr", "/var")

BLKRRPART = 0x125F
BLKFLSBUF = 0x1261
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4

SYS = Path("/sys")
PROC = Path("/proc")

SAFETY_RULES = """\
Safety rules, all checked before a single byte is written:
  - DEVICE must be a whole block device (/dev/sdb, /dev/mmcblk0), not a partition
    (/dev/sdb1); a regular file only with --to-file; never the image itself.
  - Never the disk that holds /, /boot, /boot/firmware, /boot/efi, /usr, /var or
    swap, one used by the device mapper (LVM, LUKS), or the one the image is on.
  - Nothing on it may be mounted. --unmount unmounts its filesystems (a desktop's
    automounts of the old card) after you confirm, then goes on.
  - It must be removable (/sys/block/DEV/removable is 1, as for SD card readers);
    --allow-non-removable overrides that. A device larger than
    --large-device-gb (default 64) gets a warning: cards rarely are.
  - The image must fit on it.
  - You see its model, serial, size, partitions and mounts, and type its name
    back (e.g. sdb); --yes skips that question.
  - It is opened exclusively (O_EXCL), so the kernel refuses it if anything
    mounted or claimed it in the meantime.
Writing: 4 MiB aligned writes with progress, rate and time left; with a .bmap
(IMAGE.bmap next to the image, or --bmap) only the mapped blocks, each range
checked against its sha256; the partition table is wiped first and written
last, so an interrupted card has none and nothing mounts a half-written system.
Then fsync, drop the cached pages, read everything back and compare with the
image's sha256 (IMAGE.sha256 if present) or the bmap's checksums (--no-verify
skips this), re-read the partition table and eject the card.
"""


# --- what the system says: parsers of /proc, pure -----------------------------------------------


@dataclass(frozen=True)
class Mount:
    devno: str  # "major:minor" of the mounted device, as in mountinfo
    mount_point: str
    fstype: str
    source: str


def _unescape(field_: str) -> str:
    """mountinfo and swaps write space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of /proc/self/mountinfo: device number, mount point, type, source."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) < sep + 3:
            continue
        mounts.append(Mount(fields[2], _unescape(fields[4]), fields[sep + 1], _unescape(fields[sep + 2])))
    return mounts


def parse_swaps(text: str) -> list[str]:
    """The swap devices and files of /proc/swaps."""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.strip()]


def _devno(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def swap_devnos(paths: Iterable[str]) -> set[str]:
    """Device numbers in use as swap: a swap partition's own, or the filesystem holding a swap file."""
    out = set()
    for path in paths:
        try:
            st = Path(path).stat()
        except OSError:
            continue
        out.add(_devno(st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev))
    return out


# --- what the system says: the block device, from sysfs -------------------------------------------


@dataclass(frozen=True)
class Partition:
    name: str
    devno: str
    size: int  # bytes


@dataclass(frozen=True)
class Holder:
    """A device stacked on the disk or a partition of it (device mapper: LVM, LUKS, multipath; md RAID)."""

    name: str
    devno: str
    label: str  # the dm name, e.g. "vg0-root"
    on: str  # the device it holds


@dataclass(frozen=True)
class Disk:
    path: Path
    name: str
    devno: str
    size: int  # bytes
    removable: bool
    model: str = ""
    serial: str = ""
    partitions: tuple[Partition, ...] = ()
    holders: tuple[Holder, ...] = ()
    backing_file: Path | None = None  # loop devices

    def members(self) -> dict[str, str]:
        """Every device whose use makes this disk busy: itself, its partitions, what is stacked on them."""
        out = {self.name: self.devno}
        out.update({p.name: p.devno for p in self.partitions})
        out.update({h.name: h.devno for h in self.holders})
        return out


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _holders(sys_root: Path, names: Iterable[str]) -> list[Holder]:
    """Devices stacked on NAMES, transitively, from /sys/class/block/*/slaves."""
    holders_of: dict[str, list[str]] = {}
    class_block = sys_root / "class" / "block"
    for entry in sorted(class_block.iterdir()) if class_block.is_dir() else []:
        slaves = entry / "slaves"
        for slave in sorted(slaves.iterdir()) if slaves.is_dir() else []:
            holders_of.setdefault(slave.name, []).append(entry.name)
    found: list[Holder] = []
    queue = deque(names)
    seen = set(queue)
    while queue:
        name = queue.popleft()
        for holder in holders_of.get(name, []):
            if holder not in seen:
                seen.add(holder)
                queue.append(holder)
                path = class_block / holder
                found.append(Holder(holder, _read(path / "dev"), _read(path / "dm" / "name"), name))
    return found


def disk_from_sysfs(devno: str, *, path: Path, sys_root: Path = SYS) -> Disk:
    """What sysfs says about the block device DEVNO; a partition is refused with the disk to use instead."""
    node = (sys_root / "dev" / "block" / devno).resolve()
    if not node.is_dir():
        raise PibakeError(f"{path} ({devno}) is not in {sys_root}/dev/block: is it a block device of this machine?")
    if (node / "partition").exists():
        parent = node.parent.name
        raise PibakeError(
            f"{path} is partition {_read(node / 'partition')} of /dev/{parent}, not a whole disk: an image "
            f"holds its own partition table and goes onto the whole card, e.g. /dev/{parent}"
        )
    partitions = tuple(
        Partition(child.name, _read(child / "dev"), int(_read(child / "size") or 0) * SECTOR)
        for child in sorted(node.iterdir())
        if (child / "partition").is_file()
    )
    model = " ".join(_read(node / "device" / f) for f in ("vendor", "model") if _read(node / "device" / f))
    serial = _read(node / "device" / "serial")
    backing = _read(node / "loop" / "backing_file")
    return Disk(
        path=path,
        name=node.name,
        devno=devno,
        size=int(_read(node / "size") or 0) * SECTOR,
        removable=_read(node / "removable") == "1",
        model=model,
        serial=serial,
        partitions=partitions,
        holders=tuple(_holders(sys_root, [node.name, *(p.name for p in partitions)])),
        backing_file=Path(backing) if backing else None,
    )


def _udev_identity(path: Path) -> tuple[str, str]:
    """Model and serial from udev, for devices whose sysfs has none (e.g. some USB readers)."""
    if not shutil.which("udevadm"):
        return "", ""
    try:
        out = run(["udevadm", "info", "--query=property", f"--name={path}"], timeout=10)
    except PibakeError:
        return "", ""
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    model = props.get("ID_MODEL", "").replace("_", " ")
    return model, props.get("ID_SERIAL_SHORT", props.get("ID_SERIAL", ""))


def inspect_disk(device: Path) -> Disk:
    """The whole block device DEVICE (symlinks such as /dev/disk/by-id/... are followed)."""
    try:
        st = device.stat()
    except FileNotFoundError:
        raise PibakeError(f"{device} does not exist: `lsblk` lists the disks of this machine") from None
    except OSError as e:
        raise PibakeError(f"cannot look at {device}: {e.strerror}") from e
    if not stat.S_ISBLK(st.st_mode):
        raise PibakeError(f"{device} is not a block device")
    disk = disk_from_sysfs(_devno(st.st_rdev), path=device)
    if not (disk.model and disk.serial):
        model, serial = _udev_identity(device)
        disk = dataclasses.replace(disk, model=disk.model or model, serial=disk.serial or serial)
    return disk


# --- deciding: pure ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    to_unmount: tuple[Mount, ...]  # with unmount=True: what has to go before writing


def _size(n: float) -> str:
    """Bytes as a card's label says them (GB) and as tools say them (GiB)."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB ({n / (1 << 30):.1f} GiB)"
    return f"{n / (1 << 20):.1f} MiB"


def assess(
    disk: Disk,
    *,
    image: Path,
    image_size: int,
    image_devno: str,
    mounts: Sequence[Mount],
    swaps: set[str],
    unmount: bool = False,
    allow_non_removable: bool = False,
    large_device_threshold: float = LARGE_DEVICE_BYTES,
) -> Assessment:
    """Every reason not to write IMAGE onto DISK, and what to warn about; decides nothing else."""
    refusals: list[str] = []
    warnings: list[str] = []
    members = disk.members()
    devnos = set(members.values())
    sources = {f"/dev/{name}" for name in members} | {f"/dev/mapper/{h.label}" for h in disk.holders if h.label}
    ours = [m for m in mounts if m.devno in devnos or m.source in sources]
    system = [m for m in ours if m.mount_point in SYSTEM_MOUNT_POINTS]
    others = [m for m in ours if m.mount_point not in SYSTEM_MOUNT_POINTS]

    if system:
        held = ", ".join(f"{m.mount_point} (from {m.source})" for m in system)
        refusals.append(f"{disk.path} holds {held} of the running system: it is not a card to overwrite")
    swapped = sorted(name for name, devno in members.items() if devno in swaps)
    if swapped:
        refusals.append(
            f"{disk.path} is in use as swap ({', '.join(swapped)}): `swapoff` it first if it really is the card"
        )
    if disk.holders:
        held = ", ".join(f"{h.name}{f' ({h.label})' if h.label else ''} on {h.on}" for h in disk.holders)
        refusals.append(
            f"{disk.path} is in use by {held} (device mapper: LVM, LUKS or RAID): deactivate it first "
            "(`vgchange -an VG`, `cryptsetup close NAME`)"
        )
    if image_devno in devnos:
        refusals.append(f"the image {image} is stored on {disk.path} itself: copy it to another disk first")
    if disk.backing_file is not None and _same_path(disk.backing_file, image):
        refusals.append(f"{disk.path} is the loop device of the image {image} itself")
    if others and not unmount:
        listed = ", ".join(f"{m.source} on {m.mount_point}" for m in others)
        refusals.append(f"{disk.path} has mounted filesystems ({listed}): unmount them, or pass --unmount")
    if disk.size == 0:
        refusals.append(f"{disk.path} has a size of 0: is there a card in the reader?")
    elif image_size > disk.size:
        refusals.append(f"the image ({_size(image_size)}) does not fit on {disk.path} ({_size(disk.size)})")
    if not disk.removable and not allow_non_removable:
        refusals.append(
            f"{disk.path} is not a removable device (/sys/block/{disk.name}/removable is 0), as SD card readers "
            "are: if it really is the card, pass --allow-non-removable"
        )
    if disk.size > large_device_threshold:
        warnings.append(
            f"{disk.path} is {_size(disk.size)}, larger than {large_device_threshold / 1e9:.0f} GB: SD cards rarely "
            "are; make sure it is not a backup or system disk"
        )
    to_unmount = tuple(sorted(others, key=lambda m: m.mount_point.count("/"), reverse=True)) if unmount else ()
    return Assessment(tuple(refusals), tuple(warnings), to_unmount)


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


def describe(disk: Disk, *, image: Path, to_unmount: Sequence[Mount], plan: str) -> str:
    """What the user sees before typing the device name back."""
    parts = "; ".join(_describe_partition(p) for p in disk.partitions) or "none"
    lines = [
        f"{disk.path} will be overwritten with {image}:",
        f"  model       {disk.model or 'unknown'}",
        f"  serial      {disk.serial or 'unknown'}",
        f"  size        {_size(disk.size)}, {'removable' if disk.removable else 'NOT removable'}",
        f"  partitions  {parts}",
    ]
    if disk.backing_file is not None:
        lines.append(f"  loop of     {disk.backing_file}")
    if to_unmount:
        lines.append("  mounted     " + ", ".join(m.mount_point for m in to_unmount) + " (will be unmounted)")
    lines.append(f"  writes      {plan}")
    return "\n".join(lines)


def _describe_partition(p: Partition) -> str:
    """A partition with its filesystem type and label, as blkid reads them (best effort)."""
    text = f"{p.name} {_size(p.size)}"
    if shutil.which("blkid"):
        try:
            out = run(["blkid", "-o", "export", f"/dev/{p.name}"], timeout=10)
        except PibakeError:
            return text
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        text += "".join(f" {v}" for v in (props.get("TYPE"), f'"{props["LABEL"]}"' if "LABEL" in props else None) if v)
    return text


# --- progress ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    phase: str  # "write" or "verify"
    done: int  # bytes
    total: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes a second so far."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None

    def describe(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta
        left = f"{int(eta) // 60}:{int(eta) % 60:02d} left" if eta is not None else "time left unknown"
        return (
            f"{self.phase}: {self.done >> 20}/{self.total >> 20} MiB ({pct:.0f}%), {self.rate / 1e6:.1f} MB/s, {left}"
        )


ProgressCallback = Callable[[Progress], None]


class _Meter:
    """Counts bytes of one phase; logs rate and time left every LOG_INTERVAL, calls the callback every chunk."""

    def __init__(self, phase: str, total: int, callback: ProgressCallback | None) -> None:
        self.phase, self.total, self.callback = phase, total, callback
        self.done = 0
        self.start = time.monotonic()
        self.last_log = self.start
        self.report()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last_log >= LOG_INTERVAL:
            self.last_log = now
            log.info("%s", self.snapshot().describe())
        self.report()

    def snapshot(self) -> Progress:
        return Progress(self.phase, self.done, self.total, time.monotonic() - self.start)

    def report(self) -> None:
        if self.callback is not None:
            self.callback(self.snapshot())

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start


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
    rest of the cache. Where sync_file_range is missing or refused, an fdatasync
    every WINDOW bytes does the same more coarsely.
    """

    def __init__(self, fd: int, window: int = WRITE_BEHIND) -> None:
        self.fd, self.window = fd, window
        self.pending: deque[tuple[int, int]] = deque()
        self.in_flight = 0
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


def _write_image(
    src: int, dst: int, plan: _Plan, *, image: Path, image_size: int, meter: _Meter, digest: bool
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
                raise PibakeError(
                    f"{image} does not match its bmap at bytes {extent.offset}-{extent.end}: the image changed after "
                    "the bmap was made, or one of them is damaged; recreate the bmap or flash with --no-bmap"
                )
    finally:
        hasher.close()
    _pwrite_all(dst, head, 0)
    behind.written(0, head_len)
    behind.finish()
    meter.add(head_bytes)
    return whole.hexdigest() if whole is not None else None


def _drop_cache(fd: int, *, block_device: bool) -> None:
    """Forget the target's cached pages, so that reading back reads the device and not memory."""
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if block_device:
        try:
            fcntl.ioctl(fd, BLKFLSBUF)
        except OSError as e:
            log.debug("BLKFLSBUF: %s (the page cache was dropped with fadvise)", e)


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
    plan: _Plan,
    *,
    expected_sha256: str | None,
    meter: _Meter,
    src: int,
    image: Path,
    target: Path,
) -> None:
    """Read the target back and compare with the image's sha256 or the bmap's range checksums."""
    buffers = (memoryview(bytearray(CHUNK)), memoryview(bytearray(CHUNK)))
    whole = hashlib.sha256() if plan.whole_image else None
    hasher = _HashBehind()
    turn = 0
    try:
        for extent in plan.extents:
            check = hashlib.new(plan.checksum_type)
            hashes = [whole if whole is not None else check]
            for offset, length in _pieces(extent, 0):
                data = buffers[turn][:length]
                turn ^= 1
                _pread_into(dst, data, offset, target)
                os.posix_fadvise(dst, offset, length, os.POSIX_FADV_DONTNEED)
                hasher.update(hashes, data)
                meter.add(length)
            hasher.wait()
            if whole is None:
                expected = extent.checksum
                if expected is None:  # a bmap range without a checksum: hash the image's bytes instead
                    expected = _hash_range(src, extent, plan.checksum_type, image)
                if check.hexdigest() != expected:
                    bad = _first_difference(src, dst, [extent], image, target)
                    raise _mismatch(target, bad if bad is not None else extent.offset)
    finally:
        hasher.close()
    if whole is not None and whole.hexdigest() != expected_sha256:
        raise _mismatch(target, _first_difference(src, dst, plan.extents, image, target))


def _hash_range(fd: int, extent: bmaps.Extent, checksum_type: str, image: Path) -> str:
    h = hashlib.new(checksum_type)
    buf = memoryview(bytearray(CHUNK))
    for offset, length in _pieces(extent, 0):
        _pread_into(fd, buf[:length], offset, image)
        h.update(buf[:length])
    return h.hexdigest()


def _mismatch(target: Path, offset: int | None) -> PibakeError:
    where = f" first at byte {offset} (sector {offset // SECTOR})" if offset is not None else ""
    return PibakeError(
        f"verification failed: what {target} gives back differs from the image{where}. The card is faulty, "
        "counterfeit (smaller than it claims) or was changed while writing: do not use it; flash again or use "
        "another card"
    )


def _reread_partition_table(device: Path) -> bool:
    try:
        fd = os.open(device, os.O_RDONLY)
    except OSError as e:
        log.warning("could not open %s to re-read its partition table: %s", device, e.strerror)
        return False
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError as e:
        if e.errno == errno.EINVAL:
            log.info("%s does not re-read partition tables (a loop device without partition scanning); skipped", device)
        else:
            log.warning(
                "%s: re-reading the partition table failed (%s): unplug and replug the card to see its partitions",
                device,
                e.strerror,
            )
        return False
    finally:
        os.close(fd)
    log.info("%s: partition table re-read", device)
    return True


def _eject(disk: Disk) -> bool:
    if not disk.removable:
        log.info("%s is not removable: not ejecting it", disk.path)
        return False
    if not shutil.which("eject"):
        log.info("`eject` is not installed (package eject): the card is synced, you can remove it now")
        return False
    try:
        run(["eject", str(disk.path)], timeout=60)
    except PibakeError as e:
        log.warning("could not eject %s (%s): the card is synced, you can remove it now", disk.path, e)
        return False
    log.info("%s ejected: remove the card", disk.path)
    return True


def _unmount(mounts: Sequence[Mount]) -> None:
    for m in mounts:
        log.info("unmounting %s (%s)", m.mount_point, m.source)
        try:
            run(["umount", m.mount_point], timeout=120)
        except PibakeError as e:
            raise PibakeError(
                f"could not unmount {m.mount_point}: {e}\nclose what uses it (`fuser -vm {m.mount_point}`) and try "
                "again; nothing was written"
            ) from e


# --- the one entry point ------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashResult:
    image: Path
    target: Path
    image_size: int
    bytes_written: int
    seconds_write: float
    seconds_verify: float
    verified: bool
    bmap: Path | None = None
    sha256: str | None = None  # the image's, when it was written whole
    partition_table_reread: bool = False
    ejected: bool = False
    warnings: tuple[str, ...] = field(default=())

    @property
    def write_rate(self) -> float:
        """Bytes a second written, fsync included."""
        return self.bytes_written / self.seconds_write if self.seconds_write > 0 else 0.0

    def describe(self) -> str:
        what = f"{self.bytes_written >> 20} MiB of the {self.image_size >> 20} MiB image"
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
        raise PibakeError(f"image {image} does not exist: build it first (`make demo`) or name one") from None
    except OSError as e:
        raise PibakeError(f"cannot read image {image}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise PibakeError(f"image {image} is not a regular file (the image comes first, the device second)")
    if st.st_size == 0:
        raise PibakeError(f"image {image} is empty")
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


def _open_target(target: Path, *, block_device: bool, image_size: int) -> int:
    try:
        if block_device:
            # O_EXCL on a block device: the kernel refuses it while anything has it mounted or claimed.
            return os.open(target, os.O_WRONLY | os.O_EXCL)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, image_size)  # sparse: what a bmap leaves out reads as zeros
        return fd
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise PibakeError(
                f"{target} is busy: something mounted or opened it exclusively since the checks; nothing was written"
            ) from e
        raise PibakeError(f"cannot open {target} for writing: {e.strerror}; nothing was written") from e


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
    unless ASSUME_YES. PROGRESS is called with a Progress after every chunk, and
    once with ``Progress("verify", 0, ...)`` between writing and reading back.
    Every refusal is a PibakeError raised before anything is written.
    """
    image_size = _check_image(image)
    plan, bmap_used = _plan(image, image_size, bmap=bmap, full=full)
    how = f"{_size(plan.nbytes)} of the {_size(image_size)} image" + (
        f" (bmap {bmap_used.name})" if bmap_used else " (the whole image)"
    )
    how += ", then reads it back" if verify else ", without reading it back (--no-verify)"

    disk: Disk | None = None
    warnings: tuple[str, ...] = ()
    if _is_block_device(target):
        disk, warnings = _prepare_device(
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
        _check_file_target(target, image=image, to_file=to_file)
        log.info("writing %s into the file %s", how, target)

    written = _write_and_verify(image, target, plan, block_device=disk is not None, verify=verify, progress=progress)
    reread = _reread_partition_table(target) if disk is not None else False
    ejected = _eject(disk) if disk is not None and eject else False
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
        partition_table_reread=reread,
        ejected=ejected,
        warnings=warnings,
    )


def _is_block_device(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


def _prepare_device(
    target: Path,
    *,
    image: Path,
    image_size: int,
    plan_text: str,
    unmount: bool,
    allow_non_removable: bool,
    large_device_threshold: float,
    assume_yes: bool,
    confirm: Callable[[str], str] | None,
) -> tuple[Disk, tuple[str, ...]]:
    """Every check on a block device, the confirmation, then --unmount; raises before anything is written."""
    disk = inspect_disk(target)

    def check(unmount: bool) -> Assessment:
        return _assess_now(
            disk,
            image=image,
            image_size=image_size,
            unmount=unmount,
            allow_non_removable=allow_non_removable,
            large_device_threshold=large_device_threshold,
        )

    checks = check(unmount)
    for warning in checks.warnings:
        log.warning("%s", warning)
    if checks.refusals:
        raise PibakeError(
            f"refusing to write to {target}; nothing was written:\n" + "\n".join(f"  - {r}" for r in checks.refusals)
        )
    text = describe(disk, image=image, to_unmount=checks.to_unmount, plan=plan_text)
    if assume_yes:
        log.info("%s", text)
    else:
        _confirm(disk, target, text, checks.warnings, confirm)
    if checks.to_unmount:
        _unmount(checks.to_unmount)
        again = check(False)
        if again.refusals:
            raise PibakeError(
                f"{target} is still in use after unmounting; nothing was written: {'; '.join(again.refusals)}"
            )
    return disk, checks.warnings


def _check_file_target(target: Path, *, image: Path, to_file: bool) -> None:
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = 0
    if not to_file:
        kind = "does not exist" if not mode else "is not a block device"
        raise PibakeError(
            f"{target} {kind}: name the whole card (see `lsblk`), or pass --to-file to write the image into a file"
        )
    if mode and not stat.S_ISREG(mode):
        raise PibakeError(f"{target} is neither a block device nor a regular file")
    if mode and _same_path(target, image):
        raise PibakeError(f"{target} is the image itself: writing it onto itself would destroy it")


@dataclass(frozen=True)
class _Written:
    seconds_write: float
    seconds_verify: float
    sha256: str | None


def _write_and_verify(
    image: Path, target: Path, plan: _Plan, *, block_device: bool, verify: bool, progress: ProgressCallback | None
) -> _Written:
    expected = _sidecar_sha256(image) if plan.whole_image else None
    image_size = image.stat().st_size
    src = os.open(image, os.O_RDONLY)
    try:
        os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        dst = _open_target(target, block_device=block_device, image_size=image_size)
        try:
            log.info("writing %s to %s", _size(plan.nbytes), target)
            meter = _Meter("write", plan.nbytes, progress)
            try:
                digest = _write_image(
                    src, dst, plan, image=image, image_size=image_size, meter=meter, digest=verify or bool(expected)
                )
            except KeyboardInterrupt:
                log.error(
                    "interrupted after %d of %d MiB: %s", meter.done >> 20, plan.nbytes >> 20, _incomplete(target)
                )
                raise
            except PibakeError as e:
                raise PibakeError(f"{e}\n{_incomplete(target)}") from e
            except OSError as e:
                raise PibakeError(
                    f"writing {target} failed after {meter.done >> 20} MiB: {e.strerror}\n{_incomplete(target)}"
                ) from e
            seconds_write = meter.seconds
            log.info("%s (fsync included)", meter.snapshot().describe())
            if digest is not None and expected is not None and digest != expected:
                raise PibakeError(
                    f"{image} does not match {image.name}.sha256 (it has {digest}, the file says {expected}): "
                    f"the image changed after it was built, or is damaged. {target} now holds that image: "
                    "rebuild it and flash again"
                )
            seconds_verify = 0.0
            if verify:
                seconds_verify = _read_back(
                    dst,
                    plan,
                    expected=expected or digest,
                    progress=progress,
                    src=src,
                    image=image,
                    target=target,
                    block_device=block_device,
                )
            return _Written(seconds_write, seconds_verify, digest)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _read_back(
    dst: int,
    plan: _Plan,
    *,
    expected: str | None,
    progress: ProgressCallback | None,
    src: int,
    image: Path,
    target: Path,
    block_device: bool,
) -> float:
    meter = _Meter("verify", plan.nbytes, progress)  # reports done=0 before the cache is dropped
    try:
        _drop_cache(dst, block_device=block_device)
        rfd = os.open(target, os.O_RDONLY)
        try:
            os.posix_fadvise(rfd, 0, 0, os.POSIX_FADV_DONTNEED)
            _verify(rfd, plan, expected_sha256=expected, meter=meter, src=src, image=image, target=target)
        finally:
            os.close(rfd)
    except KeyboardInterrupt:
        log.error("interrupted while reading back: %s was written completely but is not verified", target)
        raise
    except OSError as e:
        raise PibakeError(f"reading {target} back failed: {e.strerror}; the card may be faulty") from e
    log.info("%s: verified, it reads back as the image", target)
    return meter.seconds


def _assess_now(
    disk: Disk,
    *,
    image: Path,
    image_size: int,
    unmount: bool,
    allow_non_removable: bool,
    large_device_threshold: float,
) -> Assessment:
    """assess() with the system's mounts and swaps as they are now."""
    mounts = parse_mountinfo((PROC / "self" / "mountinfo").read_text())
    swaps_file = PROC / "swaps"
    swaps = swap_devnos(parse_swaps(swaps_file.read_text())) if swaps_file.exists() else set()
    return assess(
        disk,
        image=image,
        image_size=image_size,
        image_devno=_devno(image.stat().st_dev),
        mounts=mounts,
        swaps=swaps,
        unmount=unmount,
        allow_non_removable=allow_non_removable,
        large_device_threshold=large_device_threshold,
    )


def _confirm(
    disk: Disk, target: Path, text: str, warnings: Sequence[str], confirm: Callable[[str], str] | None
) -> None:
    if confirm is None:
        raise PibakeError(f"writing to {target} needs a confirmation: pass --yes (assume_yes=True) to skip it")
    prompt = text + "".join(f"\n  WARNING: {w}" for w in warnings)
    prompt += f"\nEverything on {disk.path} will be lost. Type the device name ({disk.name}) to go on: "
    typed = confirm(prompt).strip()
    if typed not in (disk.name, str(disk.path), str(target), f"/dev/{disk.name}"):
        raise PibakeError(f"you typed {typed!r}, not {disk.name!r}: nothing was written")
