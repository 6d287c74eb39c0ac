"""Raspberry Pi OS's own kernel and device-tree names, resolved as the Pi's firmware resolves them, for an emulated
boot and for `image check`, on the Raspberry-Pi-OS-shaped fixture (its config.txt names no kernel=, as Raspberry Pi
OS's does not). No QEMU: what a boot would be given is read back from boot_inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pibake.disk.fat import FatFs
from pibake.emulate import boot, profiles
from pibake.errors import PibakeError, UsageError, VerificationFailed
from pibake.image import prepare
from tests.conftest import run_cli
from tests.integration import raspios


@pytest.fixture(scope="module")
def raspios_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("raspios-boot")
    return raspios.build_image(d / "raspios.img", d / "work")


def test_the_pi_2_board_model_boots_kernel7_and_raspberry_pis_device_tree(raspios_image: Path, tmp_path: Path) -> None:
    got = boot.boot_inputs(
        raspios_image, profiles.load("raspi2b"), tmp_path, config_txt=boot.read_config_txt(raspios_image)
    )
    assert got.kernel.read_bytes() == raspios.BOOT_FILES["kernel7.img"]  # the Pi 2's firmware default
    assert got.dtb is not None and got.dtb.name == "bcm2709-rpi-2-b.dtb"  # not mainline's bcm2836-rpi-2-b.dtb
    assert got.dtb.read_bytes() == raspios.BOOT_FILES["bcm2709-rpi-2-b.dtb"]
    assert got.initrd is None and got.cmdline == raspios.CMDLINE.strip()


def test_a_missing_firmware_file_is_named_with_why_it_was_looked_for(raspios_image: Path, tmp_path: Path) -> None:
    card = prepare.copy_image(raspios_image, tmp_path / "no-dtb.img")
    FatFs.partition(card, 1).remove("bcm2709-rpi-2-b.dtb")
    sdir = tmp_path / "boot"
    sdir.mkdir()
    with pytest.raises(
        PibakeError, match=r"bcm2709-rpi-2-b\.dtb \(the pi2's device tree \(Raspberry Pi kernel names\)\)"
    ):
        boot.boot_inputs(card, profiles.load("raspi2b"), sdir, config_txt=boot.read_config_txt(card))


def test_virt_refuses_raspberry_pi_oss_own_kernel_with_the_reason(raspios_image: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as refused:
        boot.boot_inputs(raspios_image, profiles.load("virt"), tmp_path, config_txt=boot.read_config_txt(raspios_image))
    assert "no virtio drivers" in str(refused.value) and "pibake kernel build --profile virt" in str(refused.value)


@pytest.mark.parametrize(
    ("board", "kernel", "dtb"),
    [("pi2", "kernel7.img", "bcm2709-rpi-2-b.dtb"), ("pi3b-plus", "kernel7.img", "bcm2710-rpi-3-b-plus.dtb")],
)
def test_image_check_finds_raspberry_pi_oss_names(raspios_image: Path, board: str, kernel: str, dtb: str) -> None:
    res = run_cli(["image", "check", str(raspios_image), "--board", board])
    assert res.code == 0, res.err
    assert f"kernel {kernel}" in res.out and f"device tree {dtb}" in res.out


def test_image_check_on_a_raspberry_pi_os_image_says_to_fetch_it_again(raspios_image: Path, tmp_path: Path) -> None:
    card = prepare.copy_image(raspios_image, tmp_path / "no-dtb.img")
    FatFs.partition(card, 1).remove("bcm2710-rpi-3-b-plus.dtb")
    res = run_cli(["image", "check", str(card), "--board", "pi3b-plus"])
    assert res.code == VerificationFailed.exit_code
    assert "bcm2710-rpi-3-b-plus.dtb" in res.err
    assert "Fetch its release again (`pibake image fetch`)" in res.err and "image build" not in res.err
