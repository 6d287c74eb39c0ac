"""Every machine profile boots the base image to SSH and gives the CPU its data file promises."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pibake.emulate import guest as emulator
from pibake.emulate import profiles
from pibake.emulate.ssh import ssh_run
from pibake.errors import PibakeError
from tests.conftest import run_cli
from tests.integration.conftest import qemu_processes

pytestmark = pytest.mark.emulator

MODELS = {
    "virt": "linux,dummy-virt",
    "vexpress-a9": "V2P-CA9",
    "vexpress-a15": "V2P-CA15",
    "raspi2b": "Raspberry Pi 2 Model B",
}


def guest_features(guest: emulator.Guest) -> set[str]:
    code, cpuinfo = ssh_run(guest, "cat /proc/cpuinfo")
    assert code == 0
    line = next(ln for ln in cpuinfo.splitlines() if ln.startswith("Features"))
    return set(line.split(":", 1)[1].split())


@pytest.mark.parametrize(
    ("profile", "cpu"),
    [
        ("vexpress-a9", None),
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
    argv = [
        "emulate",
        "start",
        str(base_image),
        "--profile",
        profile,
        "--name",
        name,
        "--no-inventory",
        "--renew-snapshot",
    ]
    # raspi2b (one core, USB network) needs about 2 min to SSH alone, over 5 on a busy machine.
    argv += ["--timeout", "900" if profile == "raspi2b" else "300"]
    res = run_cli(argv + (["--cpu", cpu] if cpu else []))
    assert res.code == 0, res.err
    guest = emulator.status(name).guest
    assert guest is not None
    prof = profiles.load(profile)
    assert set(prof.features(cpu)) <= guest_features(guest)
    code, model = ssh_run(guest, "tr -d '\\0' < /proc/device-tree/model; echo; ip -brief link")
    assert code == 0
    assert MODELS[profile] in model
    assert prof.guest_interface in model  # the NIC the profile names is the one the guest has
    stopped = emulator.stop(name)
    assert stopped.clean
    assert not qemu_processes(str(emulator.state_dir(name)))


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
