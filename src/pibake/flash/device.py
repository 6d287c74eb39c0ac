"""The block device a card is written to: what sysfs and udev say about it, and handling it (open, cache, eject).

Looking: ``inspect_disk`` gives a ``Disk`` (size, removable, model, serial, partitions,
device-mapper holders, a loop device's backing file, and for a device on the MMC bus the
card's type and eMMC boot partitions); a partition is refused with the disk to name instead.
Handling: opening the target exclusively, dropping its cached pages before reading back,
re-reading its partition table, unmounting a filesystem, ejecting the card.
Whether the device may be written at all is ``pibake.flash.safety``'s decision.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pibake.errors import PibakeError, Refused, UsageError
from pibake.util.proc import run
from pibake.util.progress import format_size

log = logging.getLogger(__name__)

SECTOR = 512
SYS = Path("/sys")
SD_TYPES = ("SD", "SDcombo")  # /sys/bus/mmc/devices/*/type of an SD memory card

BLKRRPART = 0x125F
BLKFLSBUF = 0x1261


def devno(rdev: int) -> str:
    """A device number as sysfs and mountinfo write it: ``major:minor``."""
    return f"{os.major(rdev)}:{os.minor(rdev)}"


# --- looking: the block device, from sysfs -------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """A partition of the disk, as sysfs lists it."""

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
    """A whole block device: what the checks look at and what the confirmation shows."""

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
    # On the MMC bus (/dev/mmcblkN): the card's type as the kernel read it from the card (SD,
    # SDcombo, MMC), and the hardware boot partitions (mmcblkNboot0, ...) that only eMMC has.
    mmc_type: str = ""
    mmc_boot: tuple[str, ...] = ()
    udev_flash_sd: bool = False  # udev's ID_DRIVE_FLASH_SD or ID_DRIVE_MEDIA_FLASH_SD

    @property
    def sd_card(self) -> bool:
        """An SD card in an MMC host, such as a laptop's built-in reader: removable media, though removable is 0.

        The kernel's word, from the card itself: its type is SD (or SDcombo, SD memory with SDIO),
        and it has no eMMC boot partitions. The mmc block driver never sets removable (the card
        comes and goes with its block device), and udev's ID_DRIVE_FLASH_SD is no proof either:
        udisks sets it on every mmcblkN, eMMC soldered to the board included.
        """
        return self.mmc_type in SD_TYPES and not self.mmc_boot

    @property
    def emmc(self) -> bool:
        """eMMC: an MMC device with hardware boot partitions, storage soldered to the board."""
        return self.mmc_type == "MMC" and bool(self.mmc_boot)

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
        raise UsageError(f"{path} ({devno}) is not in {sys_root}/dev/block: is it a block device of this machine?")
    if (node / "partition").exists():
        parent = node.parent.name
        raise Refused(
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
    mmc_type, mmc_boot = _mmc(node)
    if mmc_type and not model:  # an MMC bus card has a product name (e.g. SD32G), no vendor or model
        model = f"{mmc_type} card {_read(node / 'device' / 'name')}".strip()
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
        mmc_type=mmc_type,
        mmc_boot=mmc_boot,
    )


def _mmc(node: Path) -> tuple[str, tuple[str, ...]]:
    """For a disk on the MMC bus: the card's type and its eMMC boot partitions; ("", ()) for any other disk.

    The boot partitions are block devices of their own beside the disk (mmcblk0boot0 next to
    mmcblk0 under the card's block/), not partitions of it.
    """
    device_dir = node / "device"
    if (device_dir / "subsystem").resolve().name != "mmc":
        return "", ()  # a SCSI disk's device/type is its SCSI peripheral type, not a card's
    block = device_dir / "block"
    siblings = sorted(child.name for child in block.iterdir()) if block.is_dir() else []
    boot = tuple(name for name in siblings if re.fullmatch(rf"{re.escape(node.name)}boot\d+", name))
    return _read(device_dir / "type"), boot


def _udev_properties(path: Path) -> dict[str, str]:
    """What udev says about PATH (`udevadm info --query=property`); {} without udev."""
    if not shutil.which("udevadm"):
        return {}
    try:
        out = run(["udevadm", "info", "--query=property", f"--name={path}"], timeout=10)
    except PibakeError:
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def with_udev(disk: Disk, props: dict[str, str]) -> Disk:
    """DISK with what udev adds: model and serial where sysfs has none (some USB readers), its SD flags."""
    model = props.get("ID_MODEL", "").replace("_", " ")
    serial = props.get("ID_SERIAL_SHORT", props.get("ID_SERIAL", ""))
    flash_sd = "1" in (props.get("ID_DRIVE_FLASH_SD"), props.get("ID_DRIVE_MEDIA_FLASH_SD"))
    return dataclasses.replace(disk, model=disk.model or model, serial=disk.serial or serial, udev_flash_sd=flash_sd)


def is_block_device(path: Path) -> bool:
    """PATH exists and is a block device (symlinks followed)."""
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


def inspect_disk(device: Path) -> Disk:
    """The whole block device DEVICE (symlinks such as /dev/disk/by-id/... are followed)."""
    try:
        st = device.stat()
    except FileNotFoundError:
        raise UsageError(f"{device} does not exist: `lsblk` lists the disks of this machine") from None
    except OSError as e:
        raise PibakeError(f"cannot look at {device}: {e.strerror}") from e
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{device} is not a block device")
    return with_udev(disk_from_sysfs(devno(st.st_rdev), path=device), _udev_properties(device))


def describe_partition(p: Partition) -> str:
    """A partition with its size, filesystem type and label, as blkid reads them (best effort)."""
    text = f"{p.name} {format_size(p.size)}"
    if shutil.which("blkid"):
        try:
            out = run(["blkid", "-o", "export", f"/dev/{p.name}"], timeout=10)
        except PibakeError:
            return text
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        text += "".join(f" {v}" for v in (props.get("TYPE"), f'"{props["LABEL"]}"' if "LABEL" in props else None) if v)
    return text


# --- handling: open, cache, partition table, unmount, eject --------------------------------------


def open_target(target: Path, *, block_device: bool, image_size: int) -> int:
    """Open TARGET for writing: a block device exclusively, a file created or cut to IMAGE_SIZE (sparse)."""
    try:
        if block_device:
            # O_EXCL on a block device: the kernel refuses it while anything has it mounted or claimed.
            return os.open(target, os.O_WRONLY | os.O_EXCL)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, image_size)  # sparse: what a bmap leaves out reads as zeros
        return fd
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise Refused(
                f"{target} is busy: something mounted or opened it exclusively since the checks; nothing was written"
            ) from e
        raise PibakeError(f"cannot open {target} for writing: {e.strerror}; nothing was written") from e


def drop_cache(fd: int, *, block_device: bool) -> None:
    """Forget the target's cached pages, so that reading back reads the device and not memory."""
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if block_device:
        try:
            fcntl.ioctl(fd, BLKFLSBUF)
        except OSError as e:
            log.debug("BLKFLSBUF: %s (the page cache was dropped with fadvise)", e)


def reread_partition_table(device: Path) -> bool:
    """Have the kernel read DEVICE's new partition table; False (with why, in the log) where it could not."""
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


def unmount(mount_point: str, source: str) -> None:
    """Unmount MOUNT_POINT (SOURCE's filesystem); one that will not go is a refusal to write."""
    log.info("unmounting %s (%s)", mount_point, source)
    try:
        run(["umount", mount_point], timeout=120)
    except PibakeError as e:
        raise Refused(
            f"could not unmount {mount_point}: {e}\nclose what uses it (`fuser -vm {mount_point}`) and try "
            "again; nothing was written"
        ) from e


def eject(disk: Disk) -> bool:
    """Eject a removable DISK once it is written; False (with why, in the log) where it was not."""
    if disk.sd_card and not disk.removable:
        log.info("%s is an SD card in a built-in reader, which has no eject: it is synced, remove it now", disk.path)
        return False
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
