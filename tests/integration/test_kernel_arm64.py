"""The arm64 no-initrd kernel (`pibake kernel build --profile virt64`) boots 64-bit Raspberry Pi OS's layout on virt.

Raspberry Pi OS's kernel8.img has no virtio drivers, and its images cannot be downloaded here: the image is the
trixie arm64 base (`make image-arm64`) with Raspberry Pi OS's config.txt, which names no kernel= (the firmware's
default, kernel8.img, is what a Pi 3/4 starts) and no initramfs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pibake import kernel
from pibake.disk.fat import FatFs
from pibake.disk.sparse import copy_file
from pibake.emulate import guest as emulator
from pibake.emulate.boot import kernel_arch
from pibake.emulate.ssh import ssh_run
from pibake.errors import UsageError
from tests.integration.conftest import qemu_processes

pytestmark = [pytest.mark.emulator, pytest.mark.root]

# pi-gen's stage1 config.txt for the arm64 images (bookworm and trixie): no kernel=, so kernel8.img.
RASPIOS_CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[all]
"""
# MIDR_EL1's part number, which /proc/cpuinfo prints as "CPU part" (Arm's Cortex-A72 TRM: 0xD08).
CORTEX_A72_PART = "0xd08"


@pytest.fixture(scope="module")
def virt64_kernel() -> kernel.KernelBuild:
    """Built once (minutes on 2 cores), then cached by its recipe."""
    return kernel.build("virt64", provider="debian-source")


def test_the_arm64_config_has_every_option_of_its_fragment(virt64_kernel: kernel.KernelBuild) -> None:
    wanted = kernel.parse_fragment(kernel.fragment("arm64").read_text())
    assert kernel.missing_options(wanted, virt64_kernel.config.read_text()) == []
    assert "CONFIG_MODULES=y" not in virt64_kernel.config.read_text()  # no initrd, so nothing can be a module
    assert kernel_arch(virt64_kernel.kernel) == "arm64"
    assert virt64_kernel.dtb is None  # QEMU's virt board makes its own device tree


def test_64_bit_raspberry_pi_os_boots_on_the_pi4_core_with_it(
    arm64_image: Path, virt64_kernel: kernel.KernelBuild, tmp_path: Path, stop_guests: list[str]
) -> None:
    image = copy_file(arm64_image, tmp_path / "raspios-arm64.img")
    FatFs.partition(image, 1).write("config.txt", RASPIOS_CONFIG_TXT.encode())
    name = "it-kernel-virt64"
    stop_guests.append(name)
    with pytest.raises(UsageError, match=r"names no kernel=.*pibake kernel build --profile virt64"):
        emulator.start(image, board="pi4", name=name, inventory=None, cold=True)
    guest = emulator.start(image, board="pi4", name=name, kernel=virt64_kernel.kernel, inventory=None, cold=True)
    assert guest.profile == "virt64"
    code, out = ssh_run(
        guest,
        "uname -r; uname -m; grep -m1 'CPU part' /proc/cpuinfo; stat -f -c %T /boot/firmware/config.txt; "
        "systemctl is-system-running --wait || true",
    )
    assert code == 0, out
    release, machine, part, boot_fs, state = out.split("\n")[:5]
    assert release.startswith("6.1.")  # pibake's, not the image's own 6.12
    assert machine == "aarch64"
    assert part.split(":")[1].strip() == CORTEX_A72_PART
    assert boot_fs == "msdos"  # fstab's boot partition (vfat, automounted), found by udev without an initrd
    assert state in ("running", "degraded"), out
    assert emulator.stop(name).clean
    assert not qemu_processes(str(emulator.state_dir(name)))
