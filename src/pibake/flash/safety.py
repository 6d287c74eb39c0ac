"""Which devices may be written: the safety rules, what is mounted and swapped, the checks and the confirmation.

All decided before a single byte is written:

- the target is a whole block device (not a partition), or a regular file named
  with ``to_file=True``; never the image itself, nor the loop device of the image;
- never the disk that holds /, /boot, /boot/firmware, /boot/efi, /usr or /var,
  swap, device-mapper volumes (LVM, LUKS) or the image file itself;
- no mounted filesystem on it; ``unmount=True`` unmounts those (a desktop's
  automounts of the old card) after the confirmation, and then goes on;
- removable media: a device whose sysfs ``removable`` is 1 (USB card readers), or an SD
  card in an MMC host (a laptop's built-in reader: the card's type is SD, though
  ``removable`` is 0 there), unless ``allow_non_removable=True``; never eMMC or other
  fixed disks without it; a warning for one larger than ``large_device_threshold``;
- the image fits on it;
- the user types the device name back, after seeing its model, serial, size,
  partitions and mounts (unless ``assume_yes=True``).

``assess`` decides from what it is given (pure); ``check_device`` gathers it from the system
as it is now, asks, unmounts, and raises ``Refused`` for every reason not to write.
Opening the device with O_EXCL (``pibake.flash.device.open_target``) is the kernel's own
last check.
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pibake.errors import Refused, UsageError
from pibake.flash import device
from pibake.flash.device import Disk
from pibake.util.progress import format_size

log = logging.getLogger(__name__)

LARGE_DEVICE_BYTES = 64e9
PROC = Path("/proc")

# Mount points whose disk is the running system: never unmounted, never overwritten.
SYSTEM_MOUNT_POINTS = ("/", "/boot", "/boot/firmware", "/boot/efi", "/usr", "/var")

SAFETY_RULES = """\
Safety rules, all checked before a single byte is written:
  - DEVICE must be a whole block device (/dev/sdb, /dev/mmcblk0), not a partition
    (/dev/sdb1); a regular file only with --to-file; never the image itself.
  - Never the disk that holds /, /boot, /boot/firmware, /boot/efi, /usr, /var or
    swap, one used by the device mapper (LVM, LUKS), or the one the image is on.
  - Nothing on it may be mounted. --unmount unmounts its filesystems (a desktop's
    automounts of the old card) after you confirm, then goes on.
  - It must be removable media: /sys/block/DEV/removable is 1 (USB card
    readers), or it is an SD card in a built-in reader (/dev/mmcblkN: removable
    is 0 there, but the kernel reads the card's type, SD, from the card:
    /sys/block/DEV/device/type). eMMC (type MMC, with boot partitions
    mmcblkNboot0/1: storage soldered to the board) and other fixed disks are
    refused; --allow-non-removable overrides this rule and no other. A device
    larger than --large-device-gb (default 64) gets a warning: cards rarely are.
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
    """A mounted filesystem, as /proc/self/mountinfo lists it."""

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


def swap_devnos(paths: Iterable[str]) -> set[str]:
    """Device numbers in use as swap: a swap partition's own, or the filesystem holding a swap file."""
    out = set()
    for path in paths:
        try:
            st = Path(path).stat()
        except OSError:
            continue
        out.add(device.devno(st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev))
    return out


# --- deciding: pure ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """Every reason not to write, what to warn about, and (with unmount) what has to be unmounted first."""

    refusals: tuple[str, ...]
    warnings: tuple[str, ...]
    to_unmount: tuple[Mount, ...]  # with unmount=True: what has to go before writing


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
    if disk.backing_file is not None and same_path(disk.backing_file, image):
        refusals.append(f"{disk.path} is the loop device of the image {image} itself")
    if others and not unmount:
        listed = ", ".join(f"{m.source} on {m.mount_point}" for m in others)
        refusals.append(f"{disk.path} has mounted filesystems ({listed}): unmount them, or pass --unmount")
    if disk.size == 0:
        refusals.append(f"{disk.path} has a size of 0: is there a card in the reader?")
    elif image_size > disk.size:
        refusals.append(f"the image ({format_size(image_size)}) does not fit on {disk.path} ({format_size(disk.size)})")
    if not (disk.removable or disk.sd_card) and not allow_non_removable:
        refusals.append(_not_removable(disk))
    if disk.size > large_device_threshold:
        warnings.append(
            f"{disk.path} is {format_size(disk.size)}, larger than {large_device_threshold / 1e9:.0f} GB: SD cards "
            "rarely are; make sure it is not a backup or system disk"
        )
    to_unmount = tuple(sorted(others, key=lambda m: m.mount_point.count("/"), reverse=True)) if unmount else ()
    return Assessment(tuple(refusals), tuple(warnings), to_unmount)


def _not_removable(disk: Disk) -> str:
    """Why DISK is not taken for a card, in the kernel's words."""
    if not disk.mmc_type:
        return (
            f"{disk.path} is not a removable device (/sys/block/{disk.name}/removable is 0), as SD card readers "
            "are: if it really is the card, pass --allow-non-removable"
        )
    boot = ", ".join(disk.mmc_boot)
    if disk.emmc:
        what = f"eMMC, storage soldered to the board (it has the eMMC boot partitions {boot})"
    else:
        what = f"an MMC device of type {disk.mmc_type}{f' with the boot partitions {boot}' if boot else ''}"
    udev = ", whatever udev's ID_DRIVE_FLASH_SD says (udisks sets it on every mmcblk device)"
    return (
        f"{disk.path} is {what}, not an SD card (/sys/block/{disk.name}/device/type is {disk.mmc_type}"
        f"{udev if disk.udev_flash_sd else ''}): if it really is the card, pass --allow-non-removable"
    )


def _removable_text(disk: Disk) -> str:
    if disk.removable:
        return "removable"
    if disk.sd_card:
        return f"removable: an SD card in a built-in reader (its type is {disk.mmc_type})"
    if disk.emmc:
        return "NOT removable: eMMC"
    return "NOT removable"


def same_path(a: Path, b: Path) -> bool:
    """A and B name the same file (False where either cannot be looked at)."""
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


def describe(disk: Disk, *, image: Path, to_unmount: Sequence[Mount], plan: str) -> str:
    """What the user sees before typing the device name back."""
    parts = "; ".join(device.describe_partition(p) for p in disk.partitions) or "none"
    lines = [
        f"{disk.path} will be overwritten with {image}:",
        f"  model       {disk.model or 'unknown'}",
        f"  serial      {disk.serial or 'unknown'}",
        f"  size        {format_size(disk.size)}, {_removable_text(disk)}",
        f"  partitions  {parts}",
    ]
    if disk.backing_file is not None:
        lines.append(f"  loop of     {disk.backing_file}")
    if to_unmount:
        lines.append("  mounted     " + ", ".join(m.mount_point for m in to_unmount) + " (will be unmounted)")
    lines.append(f"  writes      {plan}")
    return "\n".join(lines)


# --- deciding now: the system as it is, the question, the unmounts ------------------------------


def assess_now(
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
        image_devno=device.devno(image.stat().st_dev),
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
        raise UsageError(f"writing to {target} needs a confirmation: pass --yes (assume_yes=True) to skip it")
    prompt = text + "".join(f"\n  WARNING: {w}" for w in warnings)
    prompt += f"\nEverything on {disk.path} will be lost. Type the device name ({disk.name}) to go on: "
    typed = confirm(prompt).strip()
    if typed not in (disk.name, str(disk.path), str(target), f"/dev/{disk.name}"):
        raise Refused(f"you typed {typed!r}, not {disk.name!r}: nothing was written")


def check_device(
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
    """Every check on the block device TARGET, the confirmation, then --unmount; raises before anything is written.

    Returns the disk and the warnings given. PLAN_TEXT says what will be written, for the confirmation.
    """
    disk = device.inspect_disk(target)

    def check(unmount: bool) -> Assessment:
        return assess_now(
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
        raise Refused(
            f"refusing to write to {target}; nothing was written:\n" + "\n".join(f"  - {r}" for r in checks.refusals)
        )
    text = describe(disk, image=image, to_unmount=checks.to_unmount, plan=plan_text)
    if assume_yes:
        log.info("%s", text)
    else:
        _confirm(disk, target, text, checks.warnings, confirm)
    if checks.to_unmount:
        for m in checks.to_unmount:
            device.unmount(m.mount_point, m.source)
        again = check(False)
        if again.refusals:
            raise Refused(
                f"{target} is still in use after unmounting; nothing was written: {'; '.join(again.refusals)}"
            )
    return disk, checks.warnings


def check_file_target(target: Path, *, image: Path, to_file: bool) -> None:
    """TARGET, not a block device, may be written only as a file named with TO_FILE, and never be IMAGE."""
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = 0
    if not to_file:
        advice = "name the whole card (see `lsblk`), or pass --to-file to write the image into a file"
        if not mode:
            raise UsageError(f"{target} does not exist: {advice}")
        raise Refused(f"{target} is not a block device: {advice}")
    if mode and not stat.S_ISREG(mode):
        raise UsageError(f"{target} is neither a block device nor a regular file")
    if mode and same_path(target, image):
        raise Refused(f"{target} is the image itself: writing it onto itself would destroy it")
