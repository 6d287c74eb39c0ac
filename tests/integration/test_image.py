"""The Debian-built base image: layout, contents, cache. Reads the image without mounting it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pibake.boards.firmware import parse_config_txt
from pibake.disk.layout import partuuid, read_mbr
from pibake.emulate import sshkey
from tests.conftest import run_cli

pytestmark = pytest.mark.root


def _debugfs(img: Path, offset: int, request: str) -> str:
    res = subprocess.run(
        ["debugfs", "-R", request, f"{img}?offset={offset}"], capture_output=True, text=True, check=True
    )
    return res.stdout


def _mtype(img: Path, offset: int, name: str) -> str:
    return subprocess.run(
        ["mtype", "-i", f"{img}@@{offset}", f"::/{name}"], capture_output=True, text=True, check=True
    ).stdout


def test_second_build_comes_from_the_cache(base_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "again.img"
    res = run_cli(["image", "build", "--base", "debian-bullseye", "-o", str(out)])
    assert res.code == 0, res.err
    assert "cached" in res.out
    digest = res.out.split("sha256 ")[1].split()[0]
    assert (tmp_path / "again.img.sha256").read_text() == f"{digest}  again.img\n"
    assert out.stat().st_size == base_image.stat().st_size


def test_layout_is_raspberry_pi_os_shaped(base_image: Path) -> None:
    mbr = read_mbr(base_image)
    boot, root = mbr.partition(1), mbr.partition(2)
    assert (boot.type_code, root.type_code) == (0x0C, 0x83)
    assert boot.start == 8192
    assert root.start + root.size == base_image.stat().st_size // 512
    fat_label = subprocess.run(
        ["mlabel", "-s", "-i", f"{base_image}@@{boot.start * 512}", "::"], capture_output=True, text=True, check=True
    ).stdout
    assert "BOOTFS" in fat_label.upper()
    fs = _debugfs(base_image, root.start * 512, "stats")
    assert "Filesystem volume name:   rootfs" in fs


def test_boot_partition_boots_the_armmp_kernel_by_partuuid(base_image: Path) -> None:
    mbr = read_mbr(base_image)
    off = mbr.partition(1).start * 512
    cmdline = _mtype(base_image, off, "cmdline.txt")
    assert f"root=PARTUUID={partuuid(mbr.disk_id, 2)}" in cmdline
    assert cmdline.split()[:3] == ["console=tty1", "console=ttyS1,115200", "console=ttyAMA0,115200"]
    listing = subprocess.run(
        ["mdir", "-b", "-i", f"{base_image}@@{off}", "::/"], capture_output=True, text=True, check=True
    ).stdout
    config = parse_config_txt(_mtype(base_image, off, "config.txt"))
    assert config["kernel"].startswith("vmlinuz-") and config["kernel"].endswith("-armmp")
    assert config["initramfs"] == config["kernel"].replace("vmlinuz-", "initrd.img-")
    assert config["upstream_kernel"] == "1"
    # What the Pi's GPU firmware needs (raspi-firmware), the kernel and initrd config.txt
    # names, the Pi device trees and the vexpress ones the emulated boards read.
    for name in (
        "bootcode.bin",
        "start.elf",
        "fixup.dat",
        "start4.elf",
        "fixup4.dat",
        config["kernel"],
        config["initramfs"],
        "bcm2836-rpi-2-b.dtb",
        "bcm2837-rpi-3-b-plus.dtb",
        "bcm2711-rpi-4-b.dtb",
        "vexpress-v2p-ca9.dtb",
        "vexpress-v2p-ca15-tc1.dtb",
        "config.txt",
        "cmdline.txt",
    ):
        assert f"::/{name}" in listing, name
    # /boot/firmware in the root filesystem is the FAT's mount point: empty.
    firmware_dir = _debugfs(base_image, mbr.partition(2).start * 512, "ls /boot/firmware")
    assert "start.elf" not in firmware_dir and "vmlinuz" not in firmware_dir
    fstab = _debugfs(base_image, mbr.partition(2).start * 512, "cat /etc/fstab")
    assert f"PARTUUID={partuuid(mbr.disk_id, 1)}  /boot/firmware  vfat" in fstab
    assert f"PARTUUID={partuuid(mbr.disk_id, 2)}  /               ext4" in fstab


def test_root_has_the_pi_user_with_the_harness_key_and_the_python_stack(base_image: Path) -> None:
    off = read_mbr(base_image).partition(2).start * 512
    shadow = _debugfs(base_image, off, "cat /etc/shadow")
    pi = next(line for line in shadow.splitlines() if line.startswith("pi:"))
    assert pi.split(":")[1] == "*"  # no password can log in
    keys = _debugfs(base_image, off, "cat /home/pi/.ssh/authorized_keys")
    assert sshkey.ensure_keypair().public_key in keys
    assert "NOPASSWD" in _debugfs(base_image, off, "cat /etc/sudoers.d/010_pi-nopasswd")
    for path in (
        "/usr/bin/python3.9",
        "/usr/lib/python3/dist-packages/numpy",
        "/usr/lib/python3/dist-packages/PIL",
        "/usr/sbin/sshd",
        "/usr/bin/sudo",
    ):
        assert "Inode:" in _debugfs(base_image, off, f"stat {path}"), path
    # No build-time host keys: each card makes its own on first boot.
    assert "ssh_host_" not in _debugfs(base_image, off, "ls -l /etc/ssh")
