"""The 64-bit base: Debian trixie arm64 built from Debian's packages, its boot partition checked for the Pi 4, and
booted on qemu-system-aarch64's virt board with the Pi 4's own core (Cortex-A72) by `emulate start --board pi4`."""

from __future__ import annotations

from pathlib import Path

import pytest

from pibake.emulate import guest as emulator
from pibake.emulate import profiles
from pibake.emulate.ssh import ssh_run
from pibake.image import build as image
from tests.conftest import REPO, run_cli
from tests.integration.conftest import qemu_processes

pytestmark = pytest.mark.emulator

ARM64_IMAGE = REPO / "build" / "pibake-trixie-arm64.img"
# MIDR_EL1's part number, which /proc/cpuinfo prints as "CPU part" (Arm's Cortex-A72 TRM: 0xD08).
CORTEX_A72_PART = "0xd08"


@pytest.fixture(scope="module")
def arm64_image() -> Path:
    """The trixie arm64 base for the Pi 4 (cached: seconds after the first build, about 10 min before it)."""
    built = image.build_image(image.default_spec(base="debian-trixie-arm64", board="pi4"), output=ARM64_IMAGE)
    return built.path


def test_the_arm64_image_would_boot_a_pi4(arm64_image: Path) -> None:
    res = run_cli(["image", "check", str(arm64_image)])
    assert res.code == 0, res.err
    res = run_cli(["image", "check", str(arm64_image), "--board", "pi2"])
    assert res.code != 0
    assert "arm_64bit=1" in res.err and "Cortex-A7 cannot run one" in res.err


def test_emulate_start_board_pi4_boots_the_arm64_image_on_a_cortex_a72(
    arm64_image: Path, stop_guests: list[str]
) -> None:
    name = "it-arm64"
    stop_guests.append(name)
    res = run_cli(["emulate", "start", str(arm64_image), "--board", "pi4", "--name", name, "--cold", "--no-inventory"])
    assert res.code == 0, res.err
    guest = emulator.status(name).guest
    assert guest is not None
    assert (guest.profile, guest.cpu) == ("virt64", "cortex-a72")
    code, out = ssh_run(
        guest,
        "uname -m; dpkg --print-architecture; python3 -c 'import sys; print(sys.version_info[:2])'; "
        "grep -m1 '^CPU part' /proc/cpuinfo; grep -m1 '^Features' /proc/cpuinfo",
    )
    assert code == 0, out
    machine, arch, python, part, features = out.splitlines()
    assert (machine, arch, python) == ("aarch64", "arm64", "(3, 13)")
    assert part.split(":")[1].strip() == CORTEX_A72_PART
    assert set(profiles.load("virt64").features("cortex-a72")) <= set(features.split(":", 1)[1].split())
    stopped = emulator.stop(name)
    assert stopped.clean
    assert not qemu_processes(str(emulator.state_dir(name)))


def test_a_32_bit_profile_refuses_the_arm64_image(arm64_image: Path) -> None:
    res = run_cli(["emulate", "start", str(arm64_image), "--profile", "virt", "--name", "it-arm64-wrong", "--cold"])
    assert res.code != 0
    assert "64-bit (arm64) image" in res.err and "--profile virt64" in res.err
