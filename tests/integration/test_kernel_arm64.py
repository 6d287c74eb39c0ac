"""The arm64 no-initrd kernel (`pibake kernel build --profile virt64`) boots 64-bit Raspberry Pi OS's layout on virt.

Raspberry Pi OS's kernel8.img has no virtio drivers, and its images cannot be downloaded here: the image is the
trixie arm64 base (`make image-arm64`) with Raspberry Pi OS's arm64 boot files
(raspios_first_boot.as_raspios_arm64_boot: pi-gen's config.txt, which names no kernel=, and the firmware's
kernel8.img and initramfs8).
The first-boot and cloud-init tests boot their Raspberry Pi OS layouts with it as well.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pibake import kernel
from pibake.disk.sparse import copy_file
from pibake.emulate import guest as emulator
from pibake.emulate.boot import kernel_arch
from pibake.emulate.ssh import ssh_run
from pibake.errors import UsageError
from tests.integration.conftest import qemu_processes
from tests.integration.raspios_first_boot import as_raspios_arm64_boot

pytestmark = [pytest.mark.emulator, pytest.mark.root]

# MIDR_EL1's part number, which /proc/cpuinfo prints as "CPU part" (Arm's Cortex-A72 TRM: 0xD08).
CORTEX_A72_PART = "0xd08"


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
    as_raspios_arm64_boot(image)
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
