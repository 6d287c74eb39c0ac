from __future__ import annotations

from pibake.boards.firmware import parse_config_txt


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
