"""Static check of an image's boot partition: will the Pi's firmware find what it needs?

QEMU loads the kernel, initrd and device tree itself: the GPU firmware stage (bootcode.bin,
start.elf reading config.txt) is not emulated. This check covers that stage without
booting: it reads the FAT partition with mtools (no mounts, no root) and lists every
problem at once. What each board's firmware needs (firmware files, default kernel, device
tree names) comes from the board table, plugins/module_utils/boards.py.
"""

from __future__ import annotations

import logging
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from pibake import boards
from pibake.boards import firmware as piboot
from pibake.boards.firmware import parse_config_txt
from pibake.disk.layout import SECTOR, Mbr, MbrEntry, partuuid, read_mbr
from pibake.errors import CommandFailed, UsageError, VerificationFailed
from pibake.util.proc import run

log = logging.getLogger(__name__)

LINUX_PARTITION = 0x83
EXT4_MAGIC = 0xEF53


@dataclass(frozen=True)
class Inspection:
    """What the firmware and kernel would load for a board, and every problem on the way."""

    board: str
    kernel: str
    initrd: str | None
    dtb: str
    root: str
    checked: tuple[str, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True)
class BootCheck:
    image: Path
    board: str
    kernel: str
    initrd: str | None
    dtb: str
    root: str
    checked: tuple[str, ...]


@dataclass(frozen=True)
class BootPartition:
    """What the check reads from the FAT partition: its file names and the two text files."""

    files: frozenset[str]  # lower case: FAT names are case-insensitive, and so is the firmware
    config_txt: str | None
    cmdline_txt: str | None


@dataclass(frozen=True)
class RootPartition:
    number: int
    partuuid: str
    label: str | None
    uuid: str | None


# ---------------------------------------------------------------- the pure part


def inspect(boot: BootPartition, root: RootPartition, board: str) -> Inspection:
    """What booting BOARD from BOOT and ROOT would load, and every problem the firmware or the kernel would meet.

    The firmware's choices follow the Raspberry Pi documentation ("The boot folder", "config.txt"):
    config.txt's kernel= or the board's default kernel, device_tree= or the board's device tree under
    its mainline name with upstream_kernel=1, else under Raspberry Pi OS's name.
    """
    spec = boards.get(board)
    found: list[str] = []
    checked: list[str] = []

    def need(name: str, why: str) -> None:
        checked.append(name)
        if name.lower() not in boot.files:
            found.append(f"{name} is missing ({why})")

    for blob in spec.firmware:
        need(blob, f"the {board}'s GPU firmware")

    config = parse_config_txt(boot.config_txt) if boot.config_txt is not None else {}
    if boot.config_txt is None:
        found.append("config.txt is missing: the firmware would look for its default kernel and no initramfs")
    no_64_bit_core = config.get("arm_64bit") == "1" and spec.cpu64 is None
    if no_64_bit_core:
        found.append(
            f"config.txt sets arm_64bit=1 (a 64-bit kernel), and the {board}'s {spec.core} cannot run one: "
            "use a 32-bit image for this board"
        )
    kernel, why = piboot.firmware_kernel(config, spec)
    need(kernel, why)
    mode = _mode_mismatch(kernel, config.get("arm_64bit"))
    if mode:
        found.append(mode)
    port = debian_port(kernel)
    # A 64-bit kernel on a core without AArch64 is reported once, by the arm_64bit line above.
    if port is not None and not (port == "arm64" and no_64_bit_core):
        # What the build refuses (pibake.boards.firmware.require_debian_board): the ARMv6 boards on Debian's
        # ARMv7 armhf port, the boards without a 64-bit core on its arm64 port.
        unbootable = piboot.debian_port_problem(board, arch=port, linux=kernel)
        if unbootable:
            found.append(f"kernel={kernel} is Debian's {port} kernel, and {unbootable}")
    initrd: str | None = None
    initramfs = piboot.firmware_initramfs(config, kernel)
    if initramfs is not None:
        name, why, required = initramfs
        if required:
            need(name, why)
            initrd = name
        elif name.lower() in boot.files:  # auto_initramfs: loaded when it is there
            checked.append(name)
            initrd = name
    dtb, why = piboot.firmware_dtb(config, spec)
    if dtb == spec.upstream_dtb and "device_tree" not in config and spec.upstream_dtb_since:
        why += f"; mainline kernels have it from {spec.upstream_dtb_since} on (Debian bookworm's 6.1 does)"
    need(dtb, why)

    root_arg = ""
    if boot.cmdline_txt is None:
        found.append("cmdline.txt is missing: the kernel would get no root=")
    else:
        checked.append("cmdline.txt")
        roots = [t.removeprefix("root=") for t in boot.cmdline_txt.split() if t.startswith("root=")]
        if not roots:
            found.append("cmdline.txt has no root=: the kernel would not find the root filesystem")
        else:
            root_arg = roots[-1]  # the kernel takes the last one
            mismatch = root_mismatch(root_arg, root)
            if mismatch:
                found.append(mismatch)
    return Inspection(board, kernel, initrd, dtb, root_arg, tuple(checked), tuple(found))


# Debian's kernel image names (vmlinuz-VERSION-FLAVOUR, the linux-image-* packages): the flavours of armhf (armmp,
# armmp-lpae, 32-bit) and of arm64 (arm64), each with its port.
_DEBIAN_KERNEL = re.compile(r"vmlinuz-\d+\.\d+\S*-(?P<flavour>armmp|armmp-lpae|arm64)")
_DEBIAN_PORTS = {"armmp": "armhf", "armmp-lpae": "armhf", "arm64": "arm64"}


def debian_port(kernel: str) -> str | None:
    """The Debian port ("armhf", "arm64") whose kernel KERNEL (a file name, vmlinuz-6.1.0-50-armmp) is, or None."""
    found = _DEBIAN_KERNEL.fullmatch(kernel)
    return _DEBIAN_PORTS[found.group("flavour")] if found else None


def _mode_mismatch(kernel: str, arm_64bit: str | None) -> str | None:
    """Why config.txt's arm_64bit contradicts the width of the Debian kernel KERNEL it names, or None.

    ``arm_64bit=1`` makes the firmware start the cores in AArch64, ``0`` in AArch32 (Raspberry Pi documentation,
    "config.txt": arm_64bit); a kernel of the other width does not start. Only a stated value is compared: the
    firmware's default differs between boards and firmware releases, and kernels other than Debian's are not judged.
    """
    port = debian_port(kernel)
    if port == "armhf" and arm_64bit == "1":
        return (
            f"config.txt sets arm_64bit=1 (cores started in AArch64), but kernel={kernel} is Debian's 32-bit armhf "
            "kernel: set arm_64bit=0"
        )
    if port == "arm64" and arm_64bit == "0":
        return (
            f"config.txt sets arm_64bit=0 (cores started in AArch32), but kernel={kernel} is Debian's 64-bit arm64 "
            "kernel: set arm_64bit=1"
        )
    return None


def root_mismatch(root_arg: str, root: RootPartition) -> str | None:
    """Why cmdline.txt's root= ROOT_ARG does not name ROOT, or None if it does."""
    where = f"the root filesystem is partition {root.number}"
    if root_arg.startswith("PARTUUID="):
        if root_arg.removeprefix("PARTUUID=").lower() != root.partuuid:
            return f"cmdline.txt has root={root_arg} but {where}, PARTUUID={root.partuuid}"
    elif root_arg.startswith("LABEL="):
        if root_arg.removeprefix("LABEL=") != root.label:
            return f"cmdline.txt has root={root_arg} but {where}, labelled {root.label!r}"
    elif root_arg.startswith("UUID="):
        if root_arg.removeprefix("UUID=").lower() != root.uuid:
            return f"cmdline.txt has root={root_arg} but {where}, UUID={root.uuid}"
    elif root_arg.startswith("/dev/mmcblk0p"):
        if root_arg != f"/dev/mmcblk0p{root.number}":
            return f"cmdline.txt has root={root_arg} but {where}, /dev/mmcblk0p{root.number}"
    else:
        return f"cmdline.txt has root={root_arg}, which pibake cannot match to a partition (use PARTUUID= or LABEL=)"
    return None


def parse_ext_superblock(block: bytes) -> tuple[str | None, str | None]:
    """(volume label, UUID) from the 1024 bytes of an ext2/3/4 superblock; (None, None) if it is none."""
    if len(block) < 136 or struct.unpack_from("<H", block, 56)[0] != EXT4_MAGIC:
        return None, None
    label = block[120:136].split(b"\0", 1)[0].decode(errors="replace")
    return label, str(uuid.UUID(bytes=bytes(block[104:120])))


# ---------------------------------------------------------------- reading the image


def _root_entry(mbr: Mbr) -> MbrEntry:
    for p in mbr.partitions:
        if p.type_code == LINUX_PARTITION:
            return p
    return mbr.partition(2)


def read_root(image: Path, mbr: Mbr) -> RootPartition:
    entry = _root_entry(mbr)
    with image.open("rb") as f:
        f.seek(entry.start * SECTOR + 1024)
        label, fs_uuid = parse_ext_superblock(f.read(1024))
    return RootPartition(entry.number, partuuid(mbr.disk_id, entry.number), label, fs_uuid)


def read_boot(image: Path, mbr: Mbr) -> BootPartition:
    target = f"{image}@@{mbr.partition(1).start * SECTOR}"
    listing = run(["mdir", "-b", "-i", target, "::/"])
    files = frozenset(line.removeprefix("::/").lower() for line in listing.splitlines() if line.startswith("::/"))

    def text(name: str) -> str | None:
        return run(["mtype", "-i", target, f"::/{name}"]) if name in files else None

    return BootPartition(files, text("config.txt"), text("cmdline.txt"))


def board_recorded_in(image: Path) -> str | None:
    """The board pibake wrote the image's config.txt for (its `# pibake board:` line), or None."""
    boot = read_boot(image, read_mbr(image))
    return piboot.recorded_board(boot.config_txt) if boot.config_txt else None


def check_boot(image: Path, *, board: str | None = None) -> BootCheck:
    """Check IMAGE's boot partition for BOARD (default: the board recorded in its config.txt).

    Raises VerificationFailed listing every problem found, or saying that IMAGE is no disk image with a boot
    partition: that is the check's answer too (exit 4, README "Exit codes"), not a usage error.
    """
    if not image.is_file():
        raise UsageError(f"no image at {image}")
    try:
        mbr = read_mbr(image)
    except UsageError as e:
        raise VerificationFailed(f"{e}: the firmware would find no boot partition in it") from None
    if not any(p.number == 1 for p in mbr.partitions):
        raise VerificationFailed(
            f"{image}: its partition table has no partition 1, the boot partition the firmware reads"
        )
    try:
        boot = read_boot(image, mbr)
    except CommandFailed as e:
        raise VerificationFailed(f"{image}: partition 1 is no FAT filesystem the firmware could read: {e}") from e
    # The board pibake built it for (its config.txt's mark); None for anything else (a Raspberry Pi OS release).
    recorded = piboot.recorded_board(boot.config_txt) if boot.config_txt else None
    if board is None:
        board = recorded
        if board is None:
            raise UsageError(f"{image}: its config.txt records no board (not built by pibake): name one with --board")
    found = inspect(boot, read_root(image, mbr), board)
    if found.problems:
        # pibake built it: a build for this board makes one; anything else comes from its release again.
        again = (
            f"Build it for the {board} (`pibake image build --board {board}`)"
            if recorded
            else "Fetch its release again (`pibake image fetch`)"
        )
        raise VerificationFailed(
            f"{image} would not boot a {board}:\n  - "
            + "\n  - ".join(found.problems)
            + f"\n{again} or restore the files on its boot partition."
        )
    log.info("%s: boot partition ready for %s (%s)", image.name, board, ", ".join(found.checked))
    return BootCheck(image, board, found.kernel, found.initrd, found.dtb, found.root, found.checked)
