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
