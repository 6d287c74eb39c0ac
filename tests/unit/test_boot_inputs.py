from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pibake.boards.firmware import parse_config_txt
from pibake.disk.layout import SECTOR
from pibake.emulate import profiles
from pibake.emulate.boot import check_kernel_arch, image_arch, kernel_arch, needs_pibake_kernel
from pibake.emulate.profiles import Launch
from pibake.errors import CommandFailed, UsageError


def test_config_txt_names_kernel_and_initramfs_like_the_firmware_reads_them() -> None:
    text = """# a comment
arm_64bit=0
kernel=vmlinuz-5.10.0-32-armmp   # trailing comment
initramfs initrd.img-5.10.0-32-armmp followkernel
[pi4]
kernel=kernel8.img
[all]
device_tree=bcm2837-rpi-3-b-plus.dtb
"""
    cfg = parse_config_txt(text)
    assert cfg["kernel"] == "vmlinuz-5.10.0-32-armmp"  # the [pi4] section does not apply
    assert cfg["initramfs"] == "initrd.img-5.10.0-32-armmp"
    assert cfg["device_tree"] == "bcm2837-rpi-3-b-plus.dtb"
    assert cfg["arm_64bit"] == "0"


def test_empty_config_txt_names_nothing() -> None:
    assert parse_config_txt("\n# nothing\n") == {}


def test_an_emulated_boot_waits_longer_for_devices_than_systemd_s_90_s() -> None:
    from pibake.emulate.boot import emulated_cmdline

    cmdline = "console=ttyAMA0,115200 root=PARTUUID=0000abcd-02 rootwait"
    assert emulated_cmdline(cmdline) == cmdline + " systemd.default_timeout_start_sec=600"
    mine = "root=/dev/vda2 systemd.default_timeout_start_sec=30"
    assert emulated_cmdline(mine) == mine  # the image's own choice stays


def test_a_start_reads_config_txt_from_the_image_once(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The arch (image_arch) and the kernel and initramfs (boot_inputs) come from the same read: each read is an mtools
    # call, and a start made three for config.txt (mdir and mcopy for the arch, mcopy again for the kernel).
    from pibake.disk import fat
    from pibake.emulate import guest

    files = {
        "config.txt": "arm_64bit=0\nkernel=vmlinuz-6.1.0-50-armmp\ninitramfs initrd.img-6.1.0-50-armmp followkernel\n",
        "cmdline.txt": "console=ttyAMA0,115200 root=PARTUUID=1234abcd-02 rootwait\n",
        "vmlinuz-6.1.0-50-armmp": "zImage",
        "initrd.img-6.1.0-50-armmp": "initrd",
    }
    mtools: list[list[str]] = []

    def boot_partition(argv: list[str], **_: object) -> str:
        """mdir and mcopy on a FAT partition holding FILES."""
        mtools.append(argv := [str(a) for a in argv])
        if argv[0] == "mdir":
            return "\n".join(f"::/{name}" for name in files)
        name = argv[-2].removeprefix("::/")
        if argv[0] != "mcopy" or name not in files:
            raise CommandFailed(f"{argv[0]}: no {name}", argv=argv, returncode=1, output="")
        Path(argv[-1]).write_text(files[name])
        return ""

    class Launched(Exception):
        pass

    def launch(prof: object, launch: Launch, *args: object, **kwargs: object) -> None:
        assert (launch.kernel.read_text(), launch.initrd and launch.initrd.read_text()) == ("zImage", "initrd")
        assert launch.cmdline.startswith(files["cmdline.txt"].strip())
        raise Launched

    monkeypatch.setattr(fat, "run", boot_partition)
    monkeypatch.setattr(guest, "_boot", launch)
    image = tmp_path / "pi2.img"
    sector0 = bytearray(SECTOR)
    sector0[446 + 4] = 0x0C  # partition 1: FAT32 (LBA)
    struct.pack_into("<II", sector0, 446 + 8, 8192, 524288)
    sector0[510:512] = b"\x55\xaa"
    image.write_bytes(bytes(sector0))
    with pytest.raises(Launched):
        guest.start(image, board="pi2", name="once", persist=True, inventory=None)
    reads = [argv for argv in mtools if argv[0] == "mdir" or "::/config.txt" in argv]
    assert len(reads) == 1, mtools
    assert image_arch(files["config.txt"]) == "armhf" and image_arch("arm_64bit=1\n") == "arm64"
    assert image_arch(None) == "armhf"  # no config.txt, or no FAT boot partition, as before


def _kernel_file(path: Path, offset: int, magic: bytes) -> Path:
    head = bytearray(64)
    head[offset : offset + len(magic)] = magic
    path.write_bytes(bytes(head) + b"\0" * 1024)
    return path


def test_kernel_headers_name_their_architecture(tmp_path: Path) -> None:
    image = _kernel_file(tmp_path / "Image", 56, b"ARM\x64")
    zimage = _kernel_file(tmp_path / "zImage", 36, bytes.fromhex("18286f01"))
    assert kernel_arch(image) == "arm64"
    assert kernel_arch(zimage) == "armhf"
    assert kernel_arch(_kernel_file(tmp_path / "uImage", 0, bytes.fromhex("27051956"))) is None


def test_a_kernel_for_the_other_emulator_is_refused_before_qemu_starts(tmp_path: Path) -> None:
    zimage = _kernel_file(tmp_path / "zImage", 36, bytes.fromhex("18286f01"))
    image = _kernel_file(tmp_path / "Image", 56, b"ARM\x64")
    with pytest.raises(UsageError, match=r"a 32-bit zImage, and profile virt64 boots arm64 kernels"):
        check_kernel_arch(zimage, profiles.load("virt64"))
    with pytest.raises(UsageError, match=r"an arm64 Image, and profile virt boots armhf kernels"):
        check_kernel_arch(image, profiles.load("virt"))
    with pytest.raises(UsageError, match=r"no kernel at .*pibake kernel build --profile virt64"):
        check_kernel_arch(tmp_path / "none", profiles.load("virt64"))
    check_kernel_arch(image, profiles.load("virt64"))
    check_kernel_arch(zimage, profiles.load("vexpress-a9"))


def test_raspberry_pi_os_boots_on_a_generic_board_only_with_a_pibake_kernel() -> None:
    raspios = "dtparam=audio=on\nauto_initramfs=1\narm_64bit=1\n"  # no kernel=: the firmware's kernel8.img
    debian = "arm_64bit=1\nkernel=vmlinuz-6.12.57+deb13-arm64\ninitramfs initrd.img-6.12.57+deb13-arm64 followkernel\n"
    assert needs_pibake_kernel(raspios, profiles.load("virt64"))
    assert needs_pibake_kernel(None, profiles.load("virt"))  # no config.txt read: the firmware's default too
    assert not needs_pibake_kernel(debian, profiles.load("virt64"))  # pibake's bases name their Debian kernel
    assert not needs_pibake_kernel(raspios, profiles.load("raspi3b"))  # a board model boots kernel8.img itself
