"""The no-initrd kernel cross-built from Debian's linux-source boots the image on virt and vexpress-a9."""

from __future__ import annotations

from pathlib import Path

import pytest

from pibake import kernel
from pibake.emulate import guest as emulator
from pibake.emulate.ssh import ssh_run
from tests.conftest import run_cli
from tests.integration.conftest import qemu_processes

pytestmark = [pytest.mark.emulator, pytest.mark.root]


@pytest.fixture(scope="module")
def debian_kernel() -> kernel.KernelBuild:
    """Built once (about 5 minutes on 2 cores), then cached by its recipe."""
    return kernel.build("vexpress-a9", provider="debian-source")


def test_the_config_has_every_option_of_the_fragment(debian_kernel: kernel.KernelBuild) -> None:
    wanted = kernel.parse_fragment(kernel.fragment().read_text())
    assert kernel.missing_options(wanted, debian_kernel.config.read_text()) == []
    assert debian_kernel.dtb is not None and debian_kernel.dtb.name == "vexpress-v2p-ca9.dtb"


def test_a_second_build_is_cached_and_the_cli_says_how_to_boot_it(debian_kernel: kernel.KernelBuild) -> None:
    res = run_cli(["kernel", "build", "--profile", "vexpress-a9"])
    assert res.code == 0, res.err
    assert "cached" in res.out
    assert f"--kernel {debian_kernel.kernel} --dtb {debian_kernel.dtb}" in res.out


@pytest.mark.parametrize("profile", ["virt", "vexpress-a9"])
def test_the_image_boots_without_initrd(
    base_image: Path, debian_kernel: kernel.KernelBuild, profile: str, stop_guests: list[str]
) -> None:
    build = kernel.build(profile, provider="debian-source")
    assert build.kernel == debian_kernel.kernel  # one kernel for every board
    name = f"it-kernel-{profile}"
    stop_guests.append(name)
    guest = emulator.start(
        base_image, profile=profile, name=name, kernel=build.kernel, dtb=build.dtb, inventory=None, cold=True
    )
    code, out = ssh_run(guest, "uname -r; cat /proc/cmdline; systemctl is-system-running --wait || true")
    assert code == 0
    release, cmdline, state = out.split("\n")[:3]
    assert release.startswith("6.1.")  # not the image's 5.10 armmp kernel
    assert "root=PARTUUID=" in cmdline
    assert state in ("running", "degraded"), out
    assert emulator.stop(name).clean
    assert not qemu_processes(str(emulator.state_dir(name)))
