"""The Pi boot partition pibake writes, and the static check of it: pure parts, no image needed."""

from __future__ import annotations

import struct
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from pibake.boards import firmware as piboot
from pibake.boards.firmware import parse_config_txt
from pibake.errors import UsageError
from pibake.image.build import DebianBase, ImageSpec, default_spec, kernel_cmdline, raspi_firmware_defaults
from pibake.image.check import BootPartition, RootPartition, inspect, parse_ext_superblock, root_mismatch
from tests.conftest import run_cli

DEBIAN_BOARDS = ("pi2", "pi3", "pi3b-plus", "pi4")
KERNEL = "vmlinuz-5.10.0-32-armmp"
INITRD = "initrd.img-5.10.0-32-armmp"


@pytest.mark.parametrize("board", DEBIAN_BOARDS)
def test_config_txt_names_the_armmp_kernel_and_initrd_and_records_the_board(board: str) -> None:
    text = piboot.config_txt(board, kernel=KERNEL, initrd=INITRD)
    cfg = parse_config_txt(text)
    assert cfg["kernel"] == KERNEL
    assert cfg["initramfs"] == INITRD
    assert cfg["upstream_kernel"] == "1"  # mainline DTB names, as the armmp kernel ships them
    assert cfg["arm_64bit"] == "0"
    assert cfg["enable_uart"] == "1"
    assert piboot.recorded_board(text) == board


@pytest.mark.parametrize(
    ("board", "consoles"),
    [
        ("pi2", ["tty1", "ttyAMA0,115200"]),
        ("pi3b-plus", ["tty1", "ttyS1,115200", "ttyAMA0,115200"]),
        ("pi4", ["tty1", "ttyS1,115200", "ttyAMA0,115200"]),
    ],
)
def test_cmdline_has_the_pi_consoles_and_ends_on_qemus_serial_line(board: str, consoles: list[str]) -> None:
    line = kernel_cmdline(0x1234ABCD, board=board)
    tokens = line.split()
    assert [t.removeprefix("console=") for t in tokens if t.startswith("console=")] == consoles
    assert "root=PARTUUID=1234abcd-02" in tokens
    assert "rootwait" in tokens
    assert "\n" not in line


def test_raspi_firmware_keeps_the_root_and_consoles_on_kernel_upgrades() -> None:
    text = raspi_firmware_defaults(0x1234ABCD, board="pi3b-plus")
    assert "ROOTPART=PARTUUID=1234abcd-02\n" in text
    assert 'CONSOLES="tty1 ttyS1,115200 ttyAMA0,115200"\n' in text


@pytest.mark.parametrize("board", ["pi1", "pi-zero"])
def test_armv6_boards_are_refused_with_what_to_use_instead(board: str) -> None:
    with pytest.raises(UsageError, match=r"ARMv6.*Raspberry Pi OS"):
        piboot.require_debian_board(board)
    with pytest.raises(UsageError, match="ARMv6"):
        ImageSpec(ssh_pubkey="k", board=board)
    with pytest.raises(UsageError, match="ARMv6"):
        default_spec(board=board)


def test_the_zero_2_is_refused_because_bullseyes_kernel_has_no_device_tree_for_it() -> None:
    with pytest.raises(UsageError, match=r"bcm2837-rpi-zero-2-w.dtb.*Raspberry Pi OS"):
        default_spec(board="pi-zero-2")
    assert piboot.debian_boards() == list(DEBIAN_BOARDS)


def test_cli_refuses_an_armv6_board_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBAKE_CACHE", str(tmp_path / "cache"))
    res = run_cli(["image", "build", "--board", "pi-zero", "-o", str(tmp_path / "x.img")])
    assert res.code == UsageError.exit_code
    assert "Raspberry Pi OS" in res.err
    assert not (tmp_path / "cache" / "ssh").exists()  # not even a key was made
    assert not (tmp_path / "x.img").exists()


def test_unknown_board_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="known boards: pi1"):
        piboot.require_debian_board("pi5")


def test_the_board_is_part_of_the_image_recipe() -> None:
    spec = ImageSpec(ssh_pubkey="k")
    assert spec.board == "pi3b-plus"
    assert spec.key() != replace(spec, board="pi2").key()
    assert spec.base.key() == replace(spec, board="pi2").base.key()  # same rootfs


def test_recorded_board_is_none_for_other_config_txts() -> None:
    assert piboot.recorded_board("kernel=kernel7.img\n# pibake board:\n") is None
    assert piboot.recorded_board("dtparam=audio=on\n") is None


# ---------------------------------------------------------------- the check

ROOT = RootPartition(number=2, partuuid="1234abcd-02", label="rootfs", uuid="0f0e0d0c-0b0a-0908-0706-050403020100")


def _good(board: str = "pi3b-plus") -> BootPartition:
    spec = piboot.boot_of(board)
    files = {*spec.firmware, KERNEL, INITRD, spec.upstream_dtb, "config.txt", "cmdline.txt"}
    return BootPartition(
        files=frozenset(f.lower() for f in files),
        config_txt=piboot.config_txt(board, kernel=KERNEL, initrd=INITRD),
        cmdline_txt=kernel_cmdline(0x1234ABCD, board=board) + "\n",
    )


@pytest.mark.parametrize("board", DEBIAN_BOARDS)
def test_a_complete_boot_partition_passes(board: str) -> None:
    result = inspect(_good(board), ROOT, board)
    assert result.problems == ()
    assert result.kernel == KERNEL
    assert result.dtb == piboot.boot_of(board).upstream_dtb
    assert result.root == "PARTUUID=1234abcd-02"
    assert "cmdline.txt" in result.checked


def test_every_problem_is_listed_at_once() -> None:
    good = _good()
    broken = replace(
        good,
        files=good.files - {"start.elf", "bcm2837-rpi-3-b-plus.dtb", INITRD.lower()},
        cmdline_txt=good.cmdline_txt.replace("1234abcd-02", "deadbeef-02") if good.cmdline_txt else None,
    )
    found = inspect(broken, ROOT, "pi3b-plus").problems
    assert len(found) == 4
    text = "\n".join(found)
    for expected in ("start.elf is missing", "bcm2837-rpi-3-b-plus.dtb is missing", INITRD, "deadbeef-02"):
        assert expected in text


def test_the_pi4_needs_start4_not_bootcode() -> None:
    good = _good("pi4")
    assert "bootcode.bin" not in good.files
    found = inspect(replace(good, files=good.files - {"start4.elf"}), ROOT, "pi4").problems
    assert found == ("start4.elf is missing (the pi4's GPU firmware)",)


def test_raspberry_pi_os_style_boot_uses_default_kernel_and_downstream_dtb() -> None:
    boot = BootPartition(
        files=frozenset({"bootcode.bin", "start.elf", "fixup.dat", "kernel7.img", "bcm2709-rpi-2-b.dtb"}),
        config_txt="dtparam=audio=on\n[pi4]\nkernel=other.img\n[all]\n",
        cmdline_txt="console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootfstype=ext4 rootwait\n",
    )
    result = inspect(boot, ROOT, "pi2")
    assert result.problems == ()
    assert (result.kernel, result.initrd, result.dtb) == ("kernel7.img", None, "bcm2709-rpi-2-b.dtb")


def test_missing_config_and_cmdline_are_reported() -> None:
    boot = BootPartition(files=frozenset({"bootcode.bin", "start.elf", "fixup.dat"}), config_txt=None, cmdline_txt=None)
    text = "\n".join(inspect(boot, ROOT, "pi2").problems)
    assert "config.txt is missing" in text
    assert "cmdline.txt is missing" in text
    assert "kernel7.img is missing" in text


@pytest.mark.parametrize(
    ("root_arg", "ok"),
    [
        ("PARTUUID=1234ABCD-02", True),
        ("PARTUUID=1234abcd-01", False),
        ("LABEL=rootfs", True),
        ("LABEL=writable", False),
        ("UUID=0f0e0d0c-0b0a-0908-0706-050403020100", True),
        ("/dev/mmcblk0p2", True),
        ("/dev/mmcblk0p3", False),
        ("/dev/sda2", False),
    ],
)
def test_root_argument_forms(root_arg: str, ok: bool) -> None:
    assert (root_mismatch(root_arg, ROOT) is None) is ok


def test_ext_superblock_label_and_uuid() -> None:
    block = bytearray(1024)
    struct.pack_into("<H", block, 56, 0xEF53)
    fs_uuid = uuid.uuid4()
    block[104:120] = fs_uuid.bytes
    block[120:126] = b"rootfs"
    assert parse_ext_superblock(bytes(block)) == ("rootfs", str(fs_uuid))
    assert parse_ext_superblock(bytes(1024)) == (None, None)


def test_the_arm64_base_boots_every_armv8_board_with_a_64_bit_config_txt() -> None:
    assert piboot.debian_boards(arch="arm64") == ["pi3", "pi3b-plus", "pi-zero-2", "pi4"]
    text = piboot.config_txt(
        "pi-zero-2", kernel="vmlinuz-6.12.117+deb13-arm64", initrd="initrd.img-6.12.117+deb13-arm64", arch="arm64"
    )
    cfg = piboot.parse_config_txt(text)
    assert cfg["arm_64bit"] == "1" and cfg["upstream_kernel"] == "1"
    assert cfg["kernel"] == "vmlinuz-6.12.117+deb13-arm64"
    assert piboot.recorded_board(text) == "pi-zero-2"
    spec = default_spec(base="debian-trixie-arm64", board="pi-zero-2")  # 6.12 has the Zero 2 W's device tree
    assert (spec.base.suite, spec.base.arch) == ("trixie", "arm64")
    assert "linux-image-arm64" in spec.base.packages and "linux-image-armmp" not in spec.base.packages
    assert "non-free-firmware" in spec.base.components  # raspi-firmware's component since bookworm


@pytest.mark.parametrize("board", ["pi1", "pi-zero", "pi2"])
def test_the_arm64_base_refuses_boards_that_cannot_run_64_bit_code(board: str) -> None:
    with pytest.raises(UsageError, match=r"cannot run 64-bit \(arm64\) code.*debian-bullseye"):
        default_spec(base="debian-trixie-arm64", board=board)


def test_the_bullseye_recipe_is_unchanged_by_the_arm64_base() -> None:
    # The cached bullseye rootfs stays valid: its recipe is still debootstrap's bullseye armhf with the same packages.
    assert default_spec(base="debian-bullseye").base.key() == replace(DebianBase(), mirror=None).key()


def test_a_64_bit_boot_partition_needs_an_armv8_board_and_defaults_to_kernel8() -> None:
    config = "arm_64bit=1\n"
    boot = BootPartition(
        files=frozenset({"bootcode.bin", "start.elf", "fixup.dat", "kernel8.img", "bcm2710-rpi-3-b.dtb"}),
        config_txt=config,
        cmdline_txt="console=serial0,115200 root=PARTUUID=1234abcd-02 rootwait\n",
    )
    result = inspect(boot, ROOT, "pi3")  # Raspberry Pi OS arm64: kernel8.img, downstream names
    assert result.problems == ()
    assert (result.kernel, result.dtb) == ("kernel8.img", "bcm2710-rpi-3-b.dtb")
    pi2 = replace(boot, files=boot.files | {"bcm2709-rpi-2-b.dtb"})
    (problem,) = inspect(pi2, ROOT, "pi2").problems
    assert "arm_64bit=1" in problem and "Cortex-A7 cannot run one" in problem
