"""The Pi boot partition pibake writes, and the static check of it: pure parts, no image needed."""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from pibake.boards import firmware as piboot
from pibake.boards.firmware import parse_config_txt
from pibake.errors import UsageError
from pibake.image import build
from pibake.image.build import DebianBase, ImageSpec, default_spec, kernel_cmdline, raspi_firmware_defaults
from pibake.image.check import BootPartition, RootPartition, inspect, parse_ext_superblock, root_mismatch
from pibake.util.cache import recipe_hash
from tests.conftest import run_cli

# The boards bullseye's 5.10 boots: the ARMv7 and later ones but the Zero 2 W, whose device tree came in 5.16.
DEBIAN_BOARDS = ("pi2", "pi3", "pi3b-plus", "pi4")
ARMV7_BOARDS = ("pi2", "pi3", "pi3b-plus", "pi-zero-2", "pi4")
KERNEL = "vmlinuz-5.10.0-32-armmp"
INITRD = "initrd.img-5.10.0-32-armmp"
# Debian bookworm's armmp kernel as linux-image-6.1.0-50-armmp (6.1.176-1) installs it, and its initrd.
BOOKWORM_KERNEL = "vmlinuz-6.1.0-50-armmp"
BOOKWORM_INITRD = "initrd.img-6.1.0-50-armmp"


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
        piboot.require_debian_board(board, linux="6.1")
    with pytest.raises(UsageError, match="ARMv6"):
        ImageSpec(ssh_pubkey="k", board=board)
    with pytest.raises(UsageError, match="ARMv6"):
        default_spec(board=board)  # the board's default, bookworm armhf, refuses it too
    for base in build.BASES:
        with pytest.raises(UsageError, match=r"ARMv6|cannot run 64-bit"):
            default_spec(base=base, board=board)


def test_the_zero_2_is_refused_because_bullseyes_kernel_has_no_device_tree_for_it() -> None:
    with pytest.raises(UsageError, match=r"bcm2837-rpi-zero-2-w.dtb, which this base's Linux 5.10 kernel.*5\.16"):
        default_spec(base="debian-bullseye", board="pi-zero-2")
    with pytest.raises(UsageError, match=r"bcm2837-rpi-zero-2-w.dtb.*debian-bookworm-armhf.*Raspberry Pi OS"):
        ImageSpec(ssh_pubkey="k", board="pi-zero-2")  # DebianBase(): bullseye
    assert piboot.debian_boards(linux="5.10") == list(DEBIAN_BOARDS)


def test_the_device_tree_refusal_follows_the_bases_kernel() -> None:
    # The Zero 2 W's device tree reached mainline in 5.16: after bullseye's 5.10, before bookworm's 6.1.
    assert build.BASES["debian-bullseye"].linux == "5.10"
    assert build.BASES["debian-bookworm-armhf"].linux == "6.1"
    assert build.BASES["debian-trixie-arm64"].linux == "6.12"
    assert piboot.debian_boards(linux="6.1") == list(ARMV7_BOARDS)
    assert piboot.debian_boards(linux="5.15") == list(DEBIAN_BOARDS)
    assert piboot.debian_boards(linux="5.16") == list(ARMV7_BOARDS)
    assert piboot.require_debian_board("pi-zero-2", linux="6.1").upstream_dtb == "bcm2837-rpi-zero-2-w.dtb"
    assert piboot.require_debian_board("pi-zero-2", linux=BOOKWORM_KERNEL).name == "pi-zero-2"  # a file name will do
    with pytest.raises(UsageError, match=r"Linux 5\.10 kernel does not ship"):
        piboot.require_debian_board("pi-zero-2", linux=KERNEL)
    # The series is compared as numbers: 5.9 is older than 5.16, 6.1 newer.
    assert piboot.linux_series("5.9") < piboot.linux_series("Linux 5.16") == (5, 16) < piboot.linux_series("6.1")
    assert piboot.linux_series("vmlinuz-6.12.117+deb13-arm64") == (6, 12)
    with pytest.raises(UsageError, match="names no Linux version"):
        piboot.linux_series("kernel7.img")


def test_the_bases_the_refusals_name_exist_with_the_kernels_they_say() -> None:
    messages = []
    for board, base in (
        ("pi2", "debian-trixie-arm64"),
        ("pi1", "debian-bookworm-armhf"),
        ("pi-zero-2", "debian-bullseye"),
    ):
        with pytest.raises(UsageError) as e:
            default_spec(base=base, board=board)
        messages.append(str(e.value))
    text = "\n".join(messages)
    named = set(re.findall(r"\b(debian-[a-z0-9]+(?:-[a-z0-9]+)*)", text))
    assert named and named <= set(build.BASES)
    for name, series in re.findall(r"\b(debian-[a-z0-9]+(?:-[a-z0-9]+)*): Linux ([0-9.]+)", text):
        assert build.BASES[name].linux == series


def test_cli_refuses_an_armv6_board_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBAKE_CACHE", str(tmp_path / "cache"))
    res = run_cli(["image", "build", "--board", "pi-zero", "-o", str(tmp_path / "x.img")])
    assert res.code == UsageError.exit_code
    assert "Raspberry Pi OS" in res.err
    assert not (tmp_path / "cache" / "ssh").exists()  # not even a key was made
    assert not (tmp_path / "x.img").exists()


def test_image_build_without_base_builds_the_boards_to_its_own_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from pibake.cli.common import DEFAULT_IMAGE, image_for

    asked: list[dict[str, object]] = []

    def fake_build(**kwargs: object) -> build.BuiltImage:
        asked.append(kwargs)
        return build.BuiltImage(Path(str(kwargs["output"])), "ab" * 32, 1, "6.1.0-50-armmp", cached=True, seconds=0.1)

    monkeypatch.setattr(build, "build", fake_build)
    for args, base, output in (
        (["--board", "pi2"], "debian-bookworm-armhf", "build/pibake-bookworm-armhf.img"),
        (["--board", "pi4"], "debian-trixie-arm64", "build/pibake-trixie-arm64.img"),
        ([], "debian-trixie-arm64", "build/pibake-trixie-arm64.img"),
        (["--base", "debian-bullseye"], "debian-bullseye", "build/pibake-bullseye.img"),
        (["--board", "pi2", "--base", "debian-bullseye", "-o", "x.img"], "debian-bullseye", "x.img"),
    ):
        res = run_cli(["image", "build", *args])
        assert res.code == 0, res.err
        got = asked.pop()
        assert (got["base"], got["output"]) == (base, Path(output)), args
        assert f"({base}, cached, 0.1 s)" in res.out
    # `make image`'s file and `make image-arm64`'s: one base never overwrites another's.
    assert image_for("debian-bullseye") == DEFAULT_IMAGE
    assert image_for("debian-trixie-arm64") == Path("build/pibake-trixie-arm64.img")


def test_unknown_board_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="known boards: pi1"):
        piboot.require_debian_board("pi5", linux="6.1")


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
    assert piboot.debian_boards(arch="arm64", linux="6.12") == ["pi3", "pi3b-plus", "pi-zero-2", "pi4"]
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
    # An ARMv7 board is sent to the 32-bit base; an ARMv6 one, which that base cannot boot either, to Raspberry Pi OS.
    armv7 = r"use the 32-bit base \(debian-bookworm-armhf\)"
    armv6 = r"only Raspberry Pi OS armhf runs on it"
    with pytest.raises(UsageError, match=r"cannot run 64-bit \(arm64\) code: " + (armv7 if board == "pi2" else armv6)):
        default_spec(base="debian-trixie-arm64", board=board)


# The bullseye rootfs's cache key since mmdebstrap builds it (ROOTFS_FORMAT 2): recipe_hash(DebianBase().key()).
BULLSEYE_ROOTFS_KEY = "cf0a1b47709608d3c961755be8f42a13467af66de9951cc9c06741fe59c51dcc"


def test_the_bullseye_recipe_is_unchanged_by_the_other_bases() -> None:
    # The cached bullseye rootfs stays valid: its recipe is still bullseye armhf with the same packages.
    assert default_spec(base="debian-bullseye").base.key() == replace(DebianBase(), mirror=None).key()
    assert recipe_hash(default_spec(base="debian-bullseye").base.key()) == BULLSEYE_ROOTFS_KEY
    assert recipe_hash(DebianBase().key()) == BULLSEYE_ROOTFS_KEY


@pytest.mark.parametrize(
    ("board", "base"),
    [
        ("pi1", "debian-bookworm-armhf"),  # then refused, with what to use
        ("pi-zero", "debian-bookworm-armhf"),
        ("pi2", "debian-bookworm-armhf"),
        ("pi3", "debian-trixie-arm64"),
        ("pi3b-plus", "debian-trixie-arm64"),
        ("pi-zero-2", "debian-trixie-arm64"),
        ("pi4", "debian-trixie-arm64"),
    ],
)
def test_the_default_base_is_the_boards(board: str, base: str) -> None:
    assert build.default_base(board) == base
    assert build.BASES[base].legacy is None  # bullseye only when it is named


def test_without_a_base_the_board_chooses_it() -> None:
    spec = default_spec(board="pi2")
    assert (spec.base.suite, spec.base.arch) == ("bookworm", "armhf")
    spec = default_spec()  # the default board, the pi3b-plus, has a 64-bit core
    assert (spec.base.suite, spec.base.arch, spec.board) == ("trixie", "arm64", "pi3b-plus")
    with pytest.raises(UsageError, match="unknown board 'pi9'"):
        build.default_base("pi9")


def test_the_bookworm_armhf_base() -> None:
    base = build.BASES["debian-bookworm-armhf"]
    assert (base.suite, base.arch, base.python, base.legacy) == ("bookworm", "armhf", "3.11", None)
    assert base.components == ("main", "non-free-firmware")  # raspi-firmware's component since bookworm
    # Bullseye's list, with python3-venv for the runtime's venv (PEP 668) and what system.locale and [system.wifi]
    # need (locales, wpasupplicant, firmware-brcm80211, wireless-regdb); the 32-bit armmp kernel.
    assert base.packages == (*build.BASE_PACKAGES, "python3-venv", *build.SYSTEM_SETTING_PACKAGES)
    assert {"locales", "wpasupplicant", "firmware-brcm80211", "wireless-regdb"} <= set(base.packages)
    assert {"locales", "wpasupplicant"}.isdisjoint(build.BASES["debian-bullseye"].packages)  # legacy: at bake time
    assert "linux-image-armmp" in base.packages and "linux-image-arm64" not in base.packages
    for board in ARMV7_BOARDS:  # 6.1 has the Zero 2 W's device tree
        spec = default_spec(base="debian-bookworm-armhf", board=board)
        assert (spec.base.suite, spec.base.arch, spec.base.components) == ("bookworm", "armhf", base.components)
    spec = default_spec(base="debian-bookworm-armhf")
    assert recipe_hash(spec.base.key()) != BULLSEYE_ROOTFS_KEY


@pytest.mark.parametrize("board", ARMV7_BOARDS)
def test_bookworm_config_txt_is_32_bit_with_the_armmp_kernel(board: str) -> None:
    text = piboot.config_txt(board, kernel=BOOKWORM_KERNEL, initrd=BOOKWORM_INITRD)
    cfg = parse_config_txt(text)
    assert (cfg["kernel"], cfg["initramfs"]) == (BOOKWORM_KERNEL, BOOKWORM_INITRD)
    assert (cfg["arm_64bit"], cfg["upstream_kernel"], cfg["enable_uart"]) == ("0", "1", "1")
    assert piboot.recorded_board(text) == board


def test_a_bullseye_kernel_in_config_txt_refuses_the_zero_2() -> None:
    with pytest.raises(UsageError, match=r"bcm2837-rpi-zero-2-w\.dtb"):
        piboot.config_txt("pi-zero-2", kernel=KERNEL, initrd=INITRD)


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


def test_auto_initramfs_takes_the_kernels_initramfs_when_it_is_there() -> None:
    # Raspberry Pi OS bookworm and trixie: auto_initramfs=1, kernel8.img and initramfs8 (or none).
    boot = BootPartition(
        files=frozenset({"start4.elf", "fixup4.dat", "kernel8.img", "initramfs8", "bcm2711-rpi-4-b.dtb"}),
        config_txt="auto_initramfs=1\narm_64bit=1\n",
        cmdline_txt="console=serial0,115200 root=PARTUUID=1234abcd-02 rootwait\n",
    )
    result = inspect(boot, ROOT, "pi4")
    assert result.problems == () and (result.kernel, result.initrd) == ("kernel8.img", "initramfs8")
    bare = inspect(replace(boot, files=boot.files - {"initramfs8"}), ROOT, "pi4")
    assert bare.problems == () and bare.initrd is None  # the firmware boots without one
    # The names the kernel selection gives; an initramfs line is required, and wins.
    assert piboot.firmware_initramfs({"auto_initramfs": "1"}, "kernel7l.img") == (
        "initramfs7l",
        "auto_initramfs=1 beside kernel7l.img",
        False,
    )
    assert piboot.firmware_initramfs({"auto_initramfs": "1"}, "kernel_2712.img") == (
        "initramfs_2712",
        "auto_initramfs=1 beside kernel_2712.img",
        False,
    )
    assert piboot.firmware_initramfs({"auto_initramfs": "1"}, "vmlinuz-6.12") is None
    assert piboot.firmware_initramfs({}, "kernel8.img") is None
    assert piboot.firmware_initramfs({"initramfs": "initrd.img", "auto_initramfs": "1"}, "kernel8.img") == (
        "initrd.img",
        "config.txt's initramfs line",
        True,
    )


@pytest.mark.parametrize("board", ["pi1", "pi-zero"])
@pytest.mark.parametrize(
    ("kernel", "arm_64bit", "initrd"),
    [
        (BOOKWORM_KERNEL, "0", BOOKWORM_INITRD),
        ("vmlinuz-6.12.117+deb13-arm64", None, "initrd.img-6.12.117+deb13-arm64"),
        ("vmlinuz-6.12.117+deb13-arm64", "1", "initrd.img-6.12.117+deb13-arm64"),
    ],
)
def test_image_check_fails_an_armv6_board_on_a_debian_image_as_the_build_refuses_it(
    board: str, kernel: str, arm_64bit: str | None, initrd: str
) -> None:
    spec = piboot.boot_of(board)
    # Every file the firmware would look for is there: only the kernel's port is wrong for the board.
    config = f"upstream_kernel=1\nkernel={kernel}\ninitramfs {initrd} followkernel\n"
    config += f"arm_64bit={arm_64bit}\n" if arm_64bit else ""
    boot = BootPartition(
        files=frozenset(f.lower() for f in (*spec.firmware, kernel, initrd, spec.upstream_dtb, spec.downstream_dtb)),
        config_txt=config,
        cmdline_txt="root=PARTUUID=1234abcd-02 rootwait\n",
    )
    port = "arm64" if kernel.endswith("-arm64") else "armhf"
    with pytest.raises(UsageError) as refused:
        piboot.require_debian_board(board, arch=port, linux=kernel)
    (problem,) = inspect(boot, ROOT, board).problems  # once, also with arm_64bit=1's own line about the core
    if arm_64bit == "1":
        assert "arm_64bit=1" in problem and "ARM1176JZF-S cannot run one" in problem
    else:
        assert problem == f"kernel={kernel} is Debian's {port} kernel, and {refused.value}"
    if port == "armhf":  # the same partition passes for an ARMv7 board
        assert inspect(replace(boot, files=boot.files | {"bcm2836-rpi-2-b.dtb"}), ROOT, "pi2").problems == ()


# ---------------------------------------------------------------- the bookworm armhf layout

# What bookworm's packages put where boot_files reads, measured 2026-11-30 from linux-image-6.1.0-50-armmp_6.1.176-1
# (every Pi and vexpress device tree it has, and two of its other boards', flat under
# /usr/lib/linux-image-6.1.0-50-armmp/: armhf has no vendor subdirectories there) and raspi-firmware_1.20220830+ds-1
# (/usr/lib/raspi-firmware/, which its postinst copies to /boot/firmware). A bullseye root stands in below with the
# same trees but the Zero 2 W's, which its armmp 5.10.0-32 lacks (README, "Booting the real board").
BOOKWORM_DTBS = (
    "bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb", "bcm2711-rpi-cm4-io.dtb", "bcm2835-rpi-a-plus.dtb",
    "bcm2835-rpi-a.dtb", "bcm2835-rpi-b-plus.dtb", "bcm2835-rpi-b-rev2.dtb", "bcm2835-rpi-b.dtb",
    "bcm2835-rpi-cm1-io1.dtb", "bcm2835-rpi-zero-w.dtb", "bcm2835-rpi-zero.dtb", "bcm2836-rpi-2-b.dtb",
    "bcm2837-rpi-3-a-plus.dtb", "bcm2837-rpi-3-b-plus.dtb", "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-cm3-io3.dtb",
    "bcm2837-rpi-zero-2-w.dtb", "vexpress-v2p-ca15-tc1.dtb", "vexpress-v2p-ca15_a7.dtb", "vexpress-v2p-ca5s.dtb",
    "vexpress-v2p-ca9.dtb", "am335x-boneblack.dtb", "sun7i-a20-cubietruck.dtb",
)  # fmt: skip
BOOKWORM_FIRMWARE = (
    "bootcode.bin", "fixup.dat", "fixup4.dat", "fixup4cd.dat", "fixup4db.dat", "fixup4x.dat", "fixup_cd.dat",
    "fixup_db.dat", "fixup_x.dat", "start.elf", "start4.elf", "start4cd.elf", "start4db.elf", "start4x.elf",
    "start_cd.elf", "start_db.elf", "start_x.elf",
)  # fmt: skip


def _debian_root(root: Path, version: str, dtbs: tuple[str, ...]) -> Path:
    """A root filesystem with what mmdebstrap leaves for boot_files: /boot's kernel and initrd, the kernel's device
    trees, raspi-firmware's GPU firmware (only their names matter here)."""
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{version}").write_bytes(b"zImage")
    (root / "boot" / f"initrd.img-{version}").write_bytes(b"initrd")
    for directory, names in ((f"usr/lib/linux-image-{version}", dtbs), ("usr/lib/raspi-firmware", BOOKWORM_FIRMWARE)):
        (root / directory).mkdir(parents=True)
        for name in names:
            (root / directory / name).write_bytes(b"x")
    return root


def _boot_partition(boot: Path) -> BootPartition:
    return BootPartition(
        files=frozenset(p.name.lower() for p in boot.iterdir()),
        config_txt=(boot / "config.txt").read_text(),
        cmdline_txt=(boot / "cmdline.txt").read_text(),
    )


@pytest.mark.parametrize("board", ARMV7_BOARDS)
def test_image_check_passes_the_bookworm_armhf_boot_partition(tmp_path: Path, board: str) -> None:
    root = _debian_root(tmp_path / "root", "6.1.0-50-armmp", BOOKWORM_DTBS)
    version = build.boot_files(root, tmp_path / "boot", 0x1234ABCD, board=board, arch="armhf")
    assert version == "6.1.0-50-armmp"
    boot = _boot_partition(tmp_path / "boot")
    # Every Pi's device tree and the vexpress ones, not the kernel's other boards'.
    assert "bcm2837-rpi-zero-2-w.dtb" in boot.files and "vexpress-v2p-ca15_a7.dtb" in boot.files
    assert "am335x-boneblack.dtb" not in boot.files
    assert {"start4.elf", "fixup4.dat", "bootcode.bin", "start.elf"} <= boot.files
    result = inspect(boot, ROOT, board)
    assert result.problems == ()
    assert (result.kernel, result.initrd) == (BOOKWORM_KERNEL, BOOKWORM_INITRD)
    assert result.dtb == piboot.boot_of(board).upstream_dtb
    assert result.root == "PARTUUID=1234abcd-02"
    assert parse_config_txt(boot.config_txt or "")["arm_64bit"] == "0"


def test_image_check_fails_the_zero_2_on_a_bullseye_boot_partition(tmp_path: Path) -> None:
    bullseye = tuple(d for d in BOOKWORM_DTBS if d != "bcm2837-rpi-zero-2-w.dtb")
    root = _debian_root(tmp_path / "root", "5.10.0-32-armmp", bullseye)
    with pytest.raises(UsageError, match=r"bcm2837-rpi-zero-2-w\.dtb"):  # its config.txt is refused: 5.10 lacks it
        build.boot_files(root, tmp_path / "refused", 0x1234ABCD, board="pi-zero-2")
    build.boot_files(root, tmp_path / "boot", 0x1234ABCD, board="pi3")
    boot = _boot_partition(tmp_path / "boot")
    assert inspect(boot, ROOT, "pi3").problems == ()
    (problem,) = inspect(boot, ROOT, "pi-zero-2").problems
    assert problem.startswith("bcm2837-rpi-zero-2-w.dtb is missing")
    assert "from Linux 5.16 on" in problem


@pytest.mark.parametrize(
    ("kernel", "arm_64bit", "problem"),
    [
        (BOOKWORM_KERNEL, "0", None),
        (BOOKWORM_KERNEL, "1", "is Debian's 32-bit armhf kernel: set arm_64bit=0"),
        ("vmlinuz-6.12.117+deb13-arm64", "1", None),
        ("vmlinuz-6.12.117+deb13-arm64", "0", "is Debian's 64-bit arm64 kernel: set arm_64bit=1"),
        ("vmlinuz-6.12.117+deb13-arm64", None, None),  # the firmware's default differs by board: not judged
        ("kernel8.img", "0", None),  # not Debian's: not judged
    ],
)
def test_image_check_compares_arm_64bit_with_the_debian_kernels_width(
    kernel: str, arm_64bit: str | None, problem: str | None
) -> None:
    config = f"upstream_kernel=1\nkernel={kernel}\n" + (f"arm_64bit={arm_64bit}\n" if arm_64bit else "")
    boot = BootPartition(
        files=frozenset({"bootcode.bin", "start.elf", "fixup.dat", kernel.lower(), "bcm2837-rpi-3-b.dtb"}),
        config_txt=config,
        cmdline_txt="root=PARTUUID=1234abcd-02 rootwait\n",
    )
    found = inspect(boot, ROOT, "pi3").problems
    if problem is None:
        assert found == ()
    else:
        (message,) = found
        assert problem in message and f"arm_64bit={arm_64bit}" in message


@pytest.mark.parametrize(
    ("board", "config", "kernel", "dtb"),
    [
        # Raspberry Pi OS 32-bit: no kernel=, Raspberry Pi's device tree names.
        ("pi2", {}, "kernel7.img", "bcm2709-rpi-2-b.dtb"),
        ("pi3", {}, "kernel7.img", "bcm2710-rpi-3-b.dtb"),
        ("pi4", {}, "kernel7l.img", "bcm2711-rpi-4-b.dtb"),
        # Raspberry Pi OS 64-bit: arm_64bit=1 makes the firmware load kernel8.img.
        ("pi3", {"arm_64bit": "1"}, "kernel8.img", "bcm2710-rpi-3-b.dtb"),
        # pibake's Debian bases: kernel= and the mainline names under upstream_kernel=1.
        (
            "pi3",
            {"kernel": "vmlinuz-6.12", "upstream_kernel": "1", "arm_64bit": "1"},
            "vmlinuz-6.12",
            "bcm2837-rpi-3-b.dtb",
        ),
        ("pi2", {"device_tree": "my.dtb", "upstream_kernel": "1"}, "kernel7.img", "my.dtb"),
    ],
)
def test_the_firmware_resolves_kernel_and_device_tree_names(
    board: str, config: dict[str, str], kernel: str, dtb: str
) -> None:
    spec = piboot.boot_of(board)
    assert piboot.firmware_kernel(config, spec)[0] == kernel
    assert piboot.firmware_dtb(config, spec)[0] == dtb


def test_qemus_board_models_are_the_boards_they_model() -> None:
    assert {m: piboot.boot_of(b).model for m, b in piboot.QEMU_BOARDS.items()} == {
        "raspi2b": "Raspberry Pi 2 Model B v1.1",
        "raspi3b": "Raspberry Pi 3 Model B",
        "raspi4b": "Raspberry Pi 4 Model B / 400",
    }
