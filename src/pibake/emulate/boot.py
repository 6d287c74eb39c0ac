"""Kernel, initrd, device tree and command line for a boot, read from the image the way the Pi firmware does."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pibake import boards
from pibake.boards.firmware import QEMU_BOARDS, firmware_dtb, firmware_initramfs, firmware_kernel, parse_config_txt
from pibake.disk.fat import read_boot_file
from pibake.emulate import profiles
from pibake.errors import PibakeError, UsageError


@dataclass(frozen=True)
class BootInputs:
    kernel: Path
    initrd: Path | None
    dtb: Path | None
    cmdline: str


def read_config_txt(image: Path) -> str | None:
    """IMAGE's config.txt, read once for a boot (one mtools call) and passed to image_arch and boot_inputs.

    None when there is none to read: no config.txt, or no FAT boot partition.
    """
    with tempfile.TemporaryDirectory(prefix="pibake-boot-") as tmp:
        try:
            copy = read_boot_file(image, "config.txt", Path(tmp) / "config.txt")
        except PibakeError:
            return None
        return copy.read_text(encoding="utf-8", errors="replace")


def boot_inputs(
    image: Path,
    prof: profiles.Profile,
    sdir: Path,
    *,
    config_txt: str | None,
    kernel: Path | None = None,
    dtb: Path | None = None,
) -> BootInputs:
    """Kernel, initrd, device tree and command line, read from the image's boot partition.

    CONFIG_TXT is the image's config.txt as read_config_txt read it (None: it could not). With KERNEL
    (a no-initrd kernel from `pibake kernel build`) the image's own kernel and initrd are not used;
    its cmdline.txt still names the root partition.
    """
    cmdline = read_boot_file(image, "cmdline.txt", sdir / "cmdline.txt").read_text().strip()
    if not cmdline:
        raise PibakeError(f"{image}: cmdline.txt on the boot partition is empty")
    if config_txt is None and kernel is None:
        # The one read found none: copy it again so that the failure is mtools' own, as it always was.
        config_txt = read_boot_file(image, "config.txt", sdir / "config.txt").read_text()
    elif config_txt is not None:
        (sdir / "config.txt").write_text(config_txt)  # beside cmdline.txt and the kernel, as booted
    config = parse_config_txt(config_txt or "")
    # A board model boots what the board's firmware would load (kernel7.img and bcm2710-rpi-3-b.dtb on Raspberry Pi
    # OS, the kernel= and mainline device tree config.txt names on the Debian bases); the generic boards take the
    # profile's device tree name and config.txt's kernel=.
    board = boards.get(QEMU_BOARDS[prof.machine]) if prof.machine in QEMU_BOARDS else None
    if dtb is None and prof.dtb:
        dtb_name, why = firmware_dtb(config, board) if board else (prof.dtb, f"the {prof.name} profile's")
        dtb = _boot_file(image, dtb_name, why, sdir / dtb_name)
    if kernel is not None:
        if not kernel.is_file():
            raise UsageError(f"no kernel at {kernel}: build one with `pibake kernel build`")
        return BootInputs(kernel=kernel, initrd=None, dtb=dtb, cmdline=cmdline)
    if board is not None:
        kernel_name, why = firmware_kernel(config, board)
    elif config.get("kernel"):
        kernel_name, why = config["kernel"], "config.txt's kernel="
    else:
        raise UsageError(
            f"{image}: config.txt on the boot partition names no kernel= to boot. On a Pi the firmware would load "
            f"its default (kernel7.img, kernel8.img: Raspberry Pi OS's own kernels), which the {prof.name} board "
            f"cannot boot (no virtio drivers in them): boot it with a pibake-built kernel (`pibake kernel build "
            f"--profile {prof.name}`, then --kernel FILE) or on a board model (--profile raspi2b, raspi3b)"
        )
    kernel_file = _boot_file(image, kernel_name, why, sdir / "kernel.img")
    initrd: Path | None = None
    initramfs = firmware_initramfs(config, kernel_name)
    if initramfs is not None:
        initrd_name, initrd_why, required = initramfs
        try:
            initrd = _boot_file(image, initrd_name, initrd_why, sdir / "initrd.img")
        except PibakeError:
            if required:
                raise  # auto_initramfs: the firmware boots without one when it is not there
    return BootInputs(
        kernel=kernel_file,
        initrd=initrd,
        dtb=dtb,
        cmdline=cmdline,
    )


# Where each kernel format says what it is. arm64 Image: "ARM\x64" at byte 56 (the kernel's
# Documentation/arm64/booting.rst, the image header's magic); 32-bit zImage: 0x016f2818, little-endian, at byte 36
# (arch/arm/boot/compressed/head.S, "Magic numbers to help the loader", ZIMAGE_MAGIC in its vmlinux.lds.S).
KERNEL_MAGIC = {"arm64": (56, b"ARM\x64"), "armhf": (36, (0x016F2818).to_bytes(4, "little"))}


def kernel_arch(kernel: Path) -> str | None:
    """The Debian architecture KERNEL (a file) is built for by its header (KERNEL_MAGIC): "arm64", "armhf", or None
    for a file with neither header (a uImage, say), which is left for QEMU to try."""
    with kernel.open("rb") as f:
        head = f.read(64)
    for arch, (offset, magic) in KERNEL_MAGIC.items():
        if head[offset : offset + len(magic)] == magic:
            return arch
    return None


def check_kernel_arch(kernel: Path, prof: profiles.Profile) -> None:
    """Refuse (UsageError) KERNEL when its header says it is not for PROFILE's emulator (a zImage on virt64, an arm64
    Image on virt): QEMU would start it and print nothing."""
    if not kernel.is_file():
        raise UsageError(f"no kernel at {kernel}: build one with `pibake kernel build --profile {prof.name}`")
    found = kernel_arch(kernel)
    if found is not None and found != prof.arch:
        kind = "an arm64 Image" if found == "arm64" else "a 32-bit zImage"
        raise UsageError(
            f"{kernel} is {kind}, and profile {prof.name} boots {prof.arch} kernels with "
            f"{profiles.qemu_binary(prof)}: build its own with `pibake kernel build --profile {prof.name}`"
        )


def needs_pibake_kernel(config_txt: str | None, prof: profiles.Profile) -> bool:
    """Whether an image with CONFIG_TXT (read_config_txt's; None: none) boots on PROF only with a pibake-built kernel.

    True on a generic board (virt, virt64, vexpress-*: not a board model) when config.txt names no ``kernel=``: the Pi
    firmware then loads its default, Raspberry Pi OS's kernel7l.img or kernel8.img (Raspberry Pi documentation,
    "config.txt": kernel), which have no virtio or Versatile Express drivers. pibake's Debian bases name theirs.
    """
    if prof.machine in QEMU_BOARDS:
        return False
    return not parse_config_txt(config_txt or "").get("kernel")


def _boot_file(image: Path, name: str, why: str, dest: Path) -> Path:
    """NAME copied from IMAGE's boot partition to DEST; a PibakeError naming WHY it was looked for when it is not."""
    try:
        return read_boot_file(image, name, dest)
    except PibakeError as e:
        raise PibakeError(f"{image}: cannot read {name} ({why}) from the boot partition: {e}") from e


# systemd waits DefaultTimeoutStartSec (90 s) for a device named in fstab, then drops to emergency
# mode (no sshd). An emulated raspi2b (4 vCPUs on TCG) was measured here reaching udev 160 s after
# systemd started, with the kernel's soft-lockup warnings on the way: /boot/firmware's device came
# too late. The emulated boot gets longer start timeouts; the image itself is not changed.
EMULATION_CMDLINE = ("systemd.default_timeout_start_sec=600",)


def image_arch(config_txt: str | None) -> str:
    """The Debian architecture an image's kernel runs: "arm64" when CONFIG_TXT, its config.txt (read_config_txt),
    says ``arm_64bit=1``, else "armhf".

    The firmware reads the same setting to start the cores in AArch64 (Raspberry Pi documentation,
    "config.txt": arm_64bit; Debian's raspi-firmware and Raspberry Pi OS's arm64 images set it).
    An image with no config.txt (or no FAT boot partition: CONFIG_TXT None) is taken as armhf.
    """
    settings = parse_config_txt(config_txt or "")
    return "arm64" if settings.get("arm_64bit", "0").strip() == "1" else "armhf"


def emulated_cmdline(cmdline: str) -> str:
    """CMDLINE (the image's cmdline.txt) with what an emulated boot needs added: EMULATION_CMDLINE.

    A setting the image names already is left as the image has it.
    """
    words = cmdline.split()
    keys = {w.split("=", 1)[0] for w in words}
    return " ".join(words + [a for a in EMULATION_CMDLINE if a.split("=", 1)[0] not in keys])


def check_power_of_two(image: Path, prof: profiles.Profile) -> None:
    size = image.stat().st_size
    if prof.needs_power_of_two and size & (size - 1):
        raise UsageError(
            f"profile {prof.name} emulates an SD card, which QEMU only accepts with a power-of-two size; "
            f"{image} has {size} bytes. Grow it to {1 << size.bit_length()} bytes "
            f"(`pibake image prepare --grow-to-power-of-two`) or use the virt profile"
        )
