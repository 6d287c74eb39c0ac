"""Boot the base image under qemu-system-arm: SSH, the CPU, inventory, clean shutdown, failures."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pibake.disk.fsck import check_filesystems
from pibake.disk.layout import read_mbr
from pibake.emulate import guest as emulator
from pibake.emulate.ssh import ssh_run
from pibake.errors import PibakeError, Refused, UsageError
from pibake.util.cache import sha256_file
from tests.conftest import run_cli
from tests.integration.conftest import qemu_processes

pytestmark = pytest.mark.emulator


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    return dst


def test_boot_ssh_inventory_and_clean_shutdown(base_image: Path, tmp_path: Path, stop_guests: list[str]) -> None:
    disk = _copy(base_image, tmp_path / "disk.img")
    inv = tmp_path / "inventory" / "hosts.yml"
    stop_guests.append("it-boot")
    res = run_cli(["emulate", "start", str(disk), "--name", "it-boot", "--persist", "--inventory", str(inv)])
    assert res.code == 0, res.err
    st = emulator.status("it-boot")
    assert st.running and st.guest
    guest = st.guest
    assert len(qemu_processes(str(emulator.state_dir("it-boot")))) == 1

    code, cpuinfo = ssh_run(guest, "cat /proc/cpuinfo")
    assert code == 0
    features = next(line for line in cpuinfo.splitlines() if line.startswith("Features"))
    assert {"vfpv4", "neon"} <= set(features.split(":")[1].split())
    code, out = ssh_run(
        guest, "uname -m; python3 -c 'import sys, numpy; print(sys.version_info[:2], numpy.__version__)'"
    )
    assert out.split() == ["armv7l", "(3,", "9)", "1.19.5"]
    # An automount: mounted by the first use (ls), then findmnt lists the autofs point and the FAT on it.
    code, out = ssh_run(
        guest, "ls /boot/firmware/config.txt && findmnt -no SOURCE,FSTYPE /boot/firmware; sudo -n true && echo sudo-ok"
    )
    assert "vfat" in out and "sudo-ok" in out, out

    hosts = yaml.safe_load(inv.read_text())["raspberry_pi"]["hosts"]
    assert hosts["it-boot"]["ansible_port"] == guest.ssh_port
    status_json = run_cli(["emulate", "status", "--name", "it-boot", "--json"])
    assert '"running": true' in status_json.out

    res = run_cli(["emulate", "stop", "--name", "it-boot"])
    assert res.code == 0, res.err
    assert "stopped cleanly" in res.out
    assert not qemu_processes(str(emulator.state_dir("it-boot")))
    assert not inv.exists()  # the only host was removed
    assert emulator.POWER_DOWN_MARK in Path(guest.serial_log).read_text(errors="replace")
    check_filesystems(disk, tmp_path)  # raises unless both filesystems are clean


def test_overlay_leaves_the_image_untouched_and_a_second_start_is_refused(
    base_image: Path, tmp_path: Path, stop_guests: list[str]
) -> None:
    before = sha256_file(base_image)
    stop_guests.append("it-overlay")
    guest = emulator.start(base_image, name="it-overlay", inventory=None)
    assert guest.overlay and Path(guest.overlay).exists()
    res = run_cli(["emulate", "start", str(base_image), "--name", "it-overlay", "--no-inventory"])
    assert res.code == Refused.exit_code
    assert "already running" in res.err
    assert len(qemu_processes(str(emulator.state_dir("it-overlay")))) == 1
    code, _ = ssh_run(guest, "echo scratch | sudo tee /root/scratch && sync")
    assert code == 0

    # A reboot powers off cleanly and boots the same overlay on the same ports.
    res = run_cli(["emulate", "reboot", "--name", "it-overlay"])
    assert res.code == 0, res.err
    again = emulator.status("it-overlay").guest
    assert again is not None and again.pid != guest.pid
    assert (again.ssh_port, again.forwards, again.overlay) == (guest.ssh_port, guest.forwards, guest.overlay)
    assert len(qemu_processes(str(emulator.state_dir("it-overlay")))) == 1
    code, out = ssh_run(again, "sudo cat /root/scratch")
    assert (code, out.strip()) == (0, "scratch")

    # Guest port 8000 (the inference service's) is forwarded to the loopback port status names, by the
    # running qemu. (Traffic through it is what Molecule's verify sends the service: tests/serve_client.py.)
    cmdline = Path(f"/proc/{again.pid}/cmdline").read_bytes().decode().split("\0")
    assert f"hostfwd=tcp:127.0.0.1:{again.host_port(8000)}-:8000" in ",".join(cmdline)
    status_json = run_cli(["emulate", "status", "--name", "it-overlay", "--json"])
    assert f'"8000": {again.host_port(8000)}' in status_json.out
    with pytest.raises(PibakeError, match="--forward 9000"):
        again.host_port(9000)

    assert emulator.stop("it-overlay").clean
    assert not Path(guest.overlay).exists()
    assert sha256_file(base_image) == before
    res = run_cli(["emulate", "reboot", "--name", "it-overlay"])
    assert res.code == UsageError.exit_code and "not running" in res.err


def test_timeout_quotes_the_serial_log_and_leaves_no_qemu(base_image: Path, stop_guests: list[str]) -> None:
    stop_guests.append("it-timeout")
    with pytest.raises(PibakeError) as err:
        emulator.start(base_image, name="it-timeout", timeout=4, inventory=None, cold=True)
    msg = str(err.value)
    assert "did not answer SSH within 4 s" in msg
    assert "  | " in msg  # quoted serial console lines
    assert not qemu_processes(str(emulator.state_dir("it-timeout")))
    assert not emulator.status("it-timeout").running


def test_a_boot_that_fails_says_why(base_image: Path, tmp_path: Path, stop_guests: list[str]) -> None:
    disk = _copy(base_image, tmp_path / "broken.img")
    boot = read_mbr(disk).partition(1)
    cmdline = tmp_path / "cmdline.txt"
    # A root partition that does not exist: the initramfs gives up and panics, qemu exits.
    cmdline.write_text("console=ttyAMA0,115200 root=PARTUUID=deadbeef-02 rootdelay=3 panic=1\n")
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{boot.start * 512}", str(cmdline), "::/cmdline.txt"], check=True)
    stop_guests.append("it-broken")
    with pytest.raises(PibakeError) as err:
        emulator.start(disk, name="it-broken", timeout=240, inventory=None, cold=True)
    msg = str(err.value)
    assert "qemu exited while it-broken was booting" in msg
    assert "deadbeef-02" in msg or "Gave up waiting for root" in msg
    assert not qemu_processes(str(emulator.state_dir("it-broken")))
