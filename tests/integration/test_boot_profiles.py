"""Every machine profile boots the base image to SSH and gives the CPU its data file promises; on vexpress-a9,
whose Cortex-A9 lacks VFPv4, site.yml stops at the instruction-set preflight, not at a later SIGILL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pibake.emulate import guest as emulator
from pibake.emulate import profiles
from pibake.emulate.ssh import ssh_run
from pibake.errors import PibakeError, ToolMissing
from tests.conftest import REPO, run_cli
from tests.integration.conftest import qemu_processes

pytestmark = pytest.mark.emulator

MODELS = {
    "virt": "linux,dummy-virt",
    "vexpress-a9": "V2P-CA9",
    "vexpress-a15": "V2P-CA15",
    "raspi2b": "Raspberry Pi 2 Model B",
    "raspi3b": "Raspberry Pi 3 Model B",
    "raspi4b": "Raspberry Pi 4 Model B",
}


def guest_features(guest: emulator.Guest) -> set[str]:
    code, cpuinfo = ssh_run(guest, "cat /proc/cpuinfo")
    assert code == 0
    line = next(ln for ln in cpuinfo.splitlines() if ln.startswith("Features"))
    return set(line.split(":", 1)[1].split())


def _start(base_image: Path, profile: str, cpu: str | None, name: str, inventory: Path | None = None) -> emulator.Guest:
    """Boot BASE_IMAGE cold on PROFILE through the CLI (saving a snapshot where the profile can)."""
    argv = ["emulate", "start", str(base_image), "--profile", profile, "--name", name, "--renew-snapshot"]
    argv += ["--inventory", str(inventory)] if inventory else ["--no-inventory"]
    # The board models (4 vCPUs, SD card, USB network) need 2 to 3 min to SSH alone, over 5 on a busy machine.
    argv += ["--timeout", "900" if profiles.load(profile).fixed_soc else "300"]
    res = run_cli(argv + (["--cpu", cpu] if cpu else []))
    assert res.code == 0, res.err
    guest = emulator.status(name).guest
    assert guest is not None
    return guest


def _check_machine(guest: emulator.Guest, profile: str, cpu: str | None) -> None:
    """The guest has the CPU features, the board model and the NIC PROFILE's data file promises."""
    prof = profiles.load(profile)
    assert set(prof.features(cpu)) <= guest_features(guest)
    code, model = ssh_run(guest, "tr -d '\\0' < /proc/device-tree/model; echo; ip -brief link")
    assert code == 0
    assert MODELS[profile] in model
    assert prof.guest_interface in model  # the NIC the profile names is the one the guest has


def _stop(name: str) -> None:
    stopped = emulator.stop(name)
    assert stopped.clean
    assert not qemu_processes(str(emulator.state_dir(name)))


@pytest.mark.parametrize(
    ("profile", "cpu"),
    [
        ("vexpress-a15", None),
        # QEMU's Pi 2 board model: `make test-raspi2b`, not `make test` (its guest kernel stalls here).
        pytest.param("raspi2b", None, marks=pytest.mark.raspi2b),
        ("virt", "cortex-a7"),
    ],
)
def test_profile_boots_to_ssh_with_the_cpu_it_promises(
    base_image: Path, profile: str, cpu: str | None, stop_guests: list[str]
) -> None:
    name = f"it-{profile}"
    stop_guests.append(name)
    _check_machine(_start(base_image, profile, cpu, name), profile, cpu)
    _stop(name)


@pytest.mark.parametrize(
    ("profile", "part"),
    [
        # MIDR_EL1's part number, /proc/cpuinfo's "CPU part" (Arm's TRMs): Cortex-A53 0xD03, Cortex-A72 0xD08.
        pytest.param("raspi3b", "0xd03", marks=pytest.mark.raspi3b),
        pytest.param("raspi4b", "0xd08", marks=pytest.mark.raspi4b),
    ],
)
def test_the_pi_board_models_boot_the_64_bit_image_with_its_own_kernel_and_device_tree(
    arm64_image: Path, profile: str, part: str, stop_guests: list[str]
) -> None:
    name = f"it-{profile}"
    stop_guests.append(name)
    try:
        profiles.check_machine(profiles.load(profile))
        refused = False
    except ToolMissing:
        refused = True
    if refused:
        # raspi4b: refused before anything starts, on bookworm's QEMU 7.2 with the release that has the machine, on
        # bookworm-backports' 10.0.2 with what a boot there does (measured).
        res = run_cli(["emulate", "start", str(arm64_image), "--profile", profile, "--name", name, "--no-inventory"])
        assert res.code == 5, res.err
        missing = "QEMU 9.0 or later" in res.err and "bookworm-backports" in res.err
        assert missing or "cannot boot pibake's images" in res.err, res.err
        assert not qemu_processes(str(emulator.state_dir(name)))
        return
    guest = _start(arm64_image, profile, None, name)
    _check_machine(guest, profile, None)
    code, out = ssh_run(guest, "uname -m; grep -m1 'CPU part' /proc/cpuinfo; findmnt -no SOURCE /")
    assert code == 0, out
    arch, cpu_part, root = out.split("\n")[:3]
    assert arch == "aarch64" and cpu_part.split(":")[1].strip() == part
    assert root.startswith("/dev/mmcblk")  # the SD card, not virtio
    _stop(name)


# vexpress-a9 (the classic Cortex-A9 setup) is booted once for three tests: its boot, site.yml's preflight
# stop on it, and its clean shutdown (a cold boot there costs over a minute).
A9 = "it-vexpress-a9"


@pytest.fixture(scope="module")
def a9_guest(base_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[emulator.Guest, Path]]:
    inventory = tmp_path_factory.mktemp("a9") / "hosts.yml"
    try:
        yield _start(base_image, "vexpress-a9", None, A9, inventory), inventory
    finally:
        emulator.stop(A9, timeout=60)
        assert not qemu_processes(str(emulator.state_dir(A9))), f"qemu of {A9} left behind"


def test_vexpress_a9_boots_to_ssh_with_the_cpu_it_promises(a9_guest: tuple[emulator.Guest, Path]) -> None:
    _check_machine(a9_guest[0], "vexpress-a9", None)


def test_site_yml_stops_with_the_preflight_message_on_vexpress_a9(a9_guest: tuple[emulator.Guest, Path]) -> None:
    guest, inventory = a9_guest
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "site.yml", "-i", str(inventory)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "tflite_runtime-2.11.0-cp39-cp39-manylinux2014_armv7l.whl" in out
    assert "VFPv4" in out
    # Stopped before anything was installed: the wheel is not on the guest.
    _, listing = ssh_run(guest, "python3 -c 'import tflite_runtime' 2>&1; echo rc=$?")
    assert "rc=1" in listing


def test_vexpress_a9_guest_stops_cleanly(a9_guest: tuple[emulator.Guest, Path]) -> None:
    _stop(A9)
    assert not a9_guest[1].exists()  # its only host was removed from the inventory


def test_vexpress_a9_lacks_vfpv4_and_virt_has_it() -> None:
    # The reason for the classic "Illegal instruction": checked against real guests above.
    assert "vfpv4" not in profiles.load("vexpress-a9").features()
    assert "vfpv4" in profiles.load("virt").features("cortex-a7")


def test_sd_profiles_refuse_an_image_that_is_not_a_power_of_two(base_image: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd.img"
    subprocess.run(["cp", "--sparse=always", str(base_image), str(odd)], check=True)
    with odd.open("r+b") as f:
        f.truncate(3 << 30)
    with pytest.raises(PibakeError, match="power-of-two size"):
        emulator.start(odd, profile="vexpress-a9", name="it-odd", inventory=None)
    assert not qemu_processes(str(emulator.state_dir("it-odd")))
