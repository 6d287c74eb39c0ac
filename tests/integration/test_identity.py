"""Every card from one image has its own identity: finalize resets what a boot made, each card makes its own.

The fast tests write into a prepared image what a boot leaves behind (the files an emulated boot of
the Debian base left, listed in BOOT_LEFTOVERS, plus Raspberry Pi OS's own), finalize it and read it
back with debugfs: no QEMU. The `emulator` test does it for real, as `pibake demo` does: boots a
prepared image, finalizes it, boots two copies of the result and compares their machine-ids and
host keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pibake import hostkeys
from pibake.disk.ext4 import ExtFs, MakeDir, Remove, Symlink, WriteFile
from pibake.emulate import guest as emulator
from pibake.emulate.ssh import ssh_run
from pibake.errors import Refused
from pibake.image import finalize, identity, prepare
from pibake.util.cache import sha256_file
from tests.conftest import REPO, run_cli
from tests.integration import raspios

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFq0XlJ2z1v2dYbW3TtuG2pQ9nqgk7vH0S2r0c3mCk7Q identity@test"
DEBIAN_IMAGE = Path(os.environ.get("PIBAKE_IMAGE", REPO / "build" / "pibake-bullseye.img"))
MACHINE_ID = b"a31ed9693c2e40c1bf22047addb718e3\n"
HOST_KEYS = (
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ed25519_key.pub",
    "/etc/ssh/ssh_host_ecdsa_key",
    "/etc/ssh/ssh_host_ecdsa_key.pub",
)
# What a boot of the Debian base left in it (seen on a real one), and what Raspberry Pi OS's
# dhcpcd and a cloud-init image keep.
BOOT_LEFTOVERS = {
    **{p: b"key material\n" for p in HOST_KEYS},
    "/var/lib/systemd/random-seed": bytes(range(256)) * 2,
    "/var/lib/dhcp/dhclient.eth0.leases": b'lease {\n  interface "eth0";\n  fixed-address 10.0.2.15;\n}\n',
    "/etc/dhcpcd.duid": b"00:01:00:01:2c:aa:bb:cc:b8:27:eb:00:00:01\n",
    "/etc/dhcpcd.secret": bytes(64),
    "/var/lib/cloud/instances/iid-raspberrypi/sem/config_ssh": b"",
    "/var/lib/cloud/data/instance-id": b"iid-raspberrypi\n",
    "/var/lib/cloud/seed/nocloud/meta-data": b"instance-id: iid-raspberrypi\n",
}


def _copy(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True)
    return dest


def _boot_leftovers(image: Path) -> None:
    """Write into IMAGE's root what a boot leaves: machine-id, host keys, seed, leases, cloud-init's instance."""
    root = ExtFs.partition(image, 2)
    dirs = sorted({str(Path(p).parent) for p in BOOT_LEFTOVERS} | {"/var/lib/dbus"})
    wanted = sorted({str(d) for p in dirs for d in (Path(p), *Path(p).parents) if str(d) != "/"}, key=len)
    missing = [d for d, e in root.stat_many(wanted).items() if e is None]
    root.apply(
        [
            *[MakeDir(d) for d in sorted(missing, key=len)],
            WriteFile("/etc/machine-id", MACHINE_ID),
            # dbus's tmpfiles.d makes this link; systemd reads an id from it when /etc/machine-id is empty.
            Symlink("/var/lib/dbus/machine-id", "/etc/machine-id"),
            Symlink("/var/lib/cloud/instance", "/var/lib/cloud/instances/iid-raspberrypi"),
            *[WriteFile(p, data, 0o600) for p, data in BOOT_LEFTOVERS.items()],
        ]
    )


def _assert_reset(image: Path) -> None:
    root = ExtFs.partition(image, 2)
    assert root.read("/etc/machine-id") == b""
    gone = [*HOST_KEYS, "/var/lib/dbus/machine-id", "/var/lib/systemd/random-seed", "/etc/dhcpcd.duid"]
    gone += ["/etc/dhcpcd.secret", "/var/lib/cloud/instance", "/var/lib/cloud/instances", "/var/lib/cloud/data"]
    assert {p: e for p, e in root.stat_many(gone).items() if e is not None} == {}
    assert root.list_dir("/var/lib/dhcp") == []
    # The seed is input put there on purpose, not state: kept, as `cloud-init clean` keeps it.
    assert root.read("/var/lib/cloud/seed/nocloud/meta-data") == b"instance-id: iid-raspberrypi\n"


@pytest.fixture(scope="module")
def raspios_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("raspios")
    return raspios.build_image(d / "raspios.img", d / "work")


def test_finalize_resets_what_a_boot_made_on_raspberry_pi_os(raspios_image: Path, tmp_path: Path) -> None:
    work = prepare.copy_image(raspios_image, tmp_path / "w.img")
    prepare.prepare(work, ssh_pubkey=KEY)
    _boot_leftovers(work)
    # Raspberry Pi OS's regenerate_ssh_host_keys.service disabled itself on that boot.
    ExtFs.partition(work, 2).apply([Remove(raspios.REGENERATE_LINK)])

    res = run_cli(["image", "finalize", str(work)])
    assert res.code == 0, res.err
    assert "reset, each card makes its own at first boot: machine-id, dbus machine-id, SSH host keys (4)" in res.out
    assert "regenerate_ssh_host_keys.service enabled again" in res.out
    _assert_reset(work)
    # ...and on the card's first boot the base's own unit makes new host keys.
    link = ExtFs.partition(work, 2).stat(raspios.REGENERATE_LINK)
    assert link is not None and link.is_symlink

    manifest = json.loads((tmp_path / "w.img.manifest.json").read_text())
    reset = {(r["path"], r["action"]) for r in manifest["identity"]["reset"]}
    assert {("/etc/machine-id", "emptied"), ("/etc/ssh/ssh_host_ed25519_key", "removed")} <= reset
    assert {("/etc/dhcpcd.duid", "removed"), ("/var/lib/cloud/instances", "removed")} <= reset
    assert (raspios.REGENERATE_LINK, "enabled") in reset
    assert manifest["identity"]["ssh_host_keys_made_by"] == "regenerate_ssh_host_keys.service"

    digest = sha256_file(work)
    again = finalize.finalize(work)
    assert again.identity_reset == () and again.sha256 == digest  # nothing left to reset


def test_finalize_resets_what_a_boot_made_on_the_debian_base(tmp_path: Path) -> None:
    if not DEBIAN_IMAGE.exists():
        pytest.skip(f"{DEBIAN_IMAGE} is not built (`make image`, which needs root)")
    work = prepare.prepare(DEBIAN_IMAGE, output=tmp_path / "d.img", ssh_pubkey=KEY).path
    root = ExtFs.partition(work, 2)
    unit = root.read_text(f"/etc/systemd/system/{hostkeys.UNIT}") or ""
    assert "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key" in unit and "Before=ssh.service" in unit
    _boot_leftovers(work)

    done = finalize.finalize(work)
    _assert_reset(work)
    assert done.ssh_host_keys_made_by == hostkeys.UNIT
    assert done.identity_reset[:3] == ("machine-id", "dbus machine-id", "SSH host keys (4)")
    link = ExtFs.partition(work, 2).stat(f"{identity.WANTS}/{hostkeys.UNIT}")
    assert link is not None and link.is_symlink


def test_host_keys_with_nothing_to_make_new_ones_are_refused(raspios_image: Path, tmp_path: Path) -> None:
    work = prepare.copy_image(raspios_image, tmp_path / "w.img")
    prepare.prepare(work, ssh_pubkey=KEY)
    _boot_leftovers(work)
    ExtFs.partition(work, 2).apply([Remove(raspios.REGENERATE_LINK), Remove(raspios.REGENERATE_UNIT)])
    before = sha256_file(work)
    res = run_cli(["image", "finalize", str(work)])
    assert res.code == Refused.exit_code, res.err
    assert "nothing in the image makes new ones at boot" in res.err
    assert sha256_file(work) == before  # refused before anything changed


def _identity(guest: emulator.Guest) -> tuple[str, tuple[hostkeys.Fingerprint, ...]]:
    code, machine_id = ssh_run(guest, "cat /etc/machine-id")
    assert code == 0
    return machine_id.strip(), hostkeys.from_guest(guest.name)


def _ping_as_a_fleet_host(guest: emulator.Guest, known_hosts: Path) -> subprocess.CompletedProcess[str]:
    """Ansible's ping of GUEST as a host of a real fleet: the repository's ansible.cfg, a test known_hosts."""
    inv = known_hosts.with_name("fleet.yml")
    host = {
        "ansible_host": "127.0.0.1",
        "ansible_port": guest.ssh_port,
        "ansible_user": guest.user,
        "ansible_ssh_private_key_file": guest.private_key,
        "ansible_python_interpreter": "/usr/bin/python3",
        # The test's own known_hosts, not the user's; "yes" rather than ssh's "ask", which would wait on a
        # terminal. Ansible puts these after its own options, and ssh takes the first value of each, so a
        # host_key_checking = False in ansible.cfg (its StrictHostKeyChecking=no) would still win here.
        "ansible_ssh_extra_args": f"-o UserKnownHostsFile={known_hosts} -o GlobalKnownHostsFile=/dev/null "
        "-o StrictHostKeyChecking=yes",
    }
    inv.write_text(yaml.safe_dump({"raspberry_pi": {"hosts": {"pi4-lab": host}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env |= {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    argv = [str(Path(sys.executable).parent / "ansible"), "all", "-i", str(inv), "-m", "ansible.builtin.ping"]
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def _accept(guest: emulator.Guest, known_hosts: Path) -> None:
    """README's way to accept a (reflashed) Pi: forget its old key, add the new one once it matches the console."""
    host = f"[127.0.0.1]:{guest.ssh_port}"
    subprocess.run(["ssh-keygen", "-R", host, "-f", str(known_hosts)], capture_output=True, check=False)
    res = run_cli(["hostkeys", guest.serial_log, "--scan", "127.0.0.1", "--port", str(guest.ssh_port)])
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{host} ") for line in lines), res.out
    with known_hosts.open("a") as f:
        f.write(res.out)


@pytest.mark.emulator
def test_two_cards_from_one_finalized_image_have_their_own_identity(
    base_image: Path, tmp_path: Path, stop_guests: list[str]
) -> None:
    # As `pibake demo` does: the prepared copy is booted (and provisioned), then it is the finished image.
    work = prepare.prepare(base_image, output=tmp_path / "finished.img").path
    stop_guests += ["it-id-build", "it-id-card1", "it-id-card2"]
    boots: dict[str, float] = {}
    t0 = time.monotonic()
    built = emulator.start(work, name="it-id-build", persist=True, inventory=None)
    boots["build"] = time.monotonic() - t0
    image_identity = _identity(built)
    assert emulator.stop("it-id-build").clean
    done = finalize.finalize(work)
    assert "machine-id" in done.identity_reset and "SSH host keys (4)" in done.identity_reset

    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    cards = {}
    previous_port = 0
    for n in (1, 2):
        card = _copy(work, tmp_path / f"card{n}.img")  # what flashing writes, byte for byte
        t0 = time.monotonic()
        guest = emulator.start(card, name=f"it-id-card{n}", inventory=None, cold=True)
        boots[f"card{n}"] = time.monotonic() - t0
        cards[n] = _identity(guest)
        # An empty machine-id is not a "first boot" for systemd 247: no unit enabled by presets on the card.
        _, networkd = ssh_run(guest, "systemctl is-enabled systemd-networkd.service")
        assert networkd.strip() == "disabled", networkd

        # Host keys are checked for a real fleet. Card 2 is card 1 reflashed: known_hosts has the old key.
        if n == 2:
            old = known_hosts.read_text().replace(f"[127.0.0.1]:{previous_port}", f"[127.0.0.1]:{guest.ssh_port}")
            known_hosts.write_text(old)
        refused = _ping_as_a_fleet_host(guest, known_hosts)
        assert refused.returncode != 0, refused.stdout
        # OpenSSH's words (Ansible's own connection), or Mitogen's (ansible.cfg's strategy), which are the same
        # for an unknown and for a changed key.
        openssh = "REMOTE HOST IDENTIFICATION HAS CHANGED" if n == 2 else "Host key verification failed"
        mitogen = "unrecognized or mismatching host key"
        assert openssh in refused.stdout + refused.stderr or mitogen in refused.stdout + refused.stderr, (
            refused.stdout + refused.stderr
        )
        _accept(guest, known_hosts)
        accepted = _ping_as_a_fleet_host(guest, known_hosts)
        assert accepted.returncode == 0 and "pong" in accepted.stdout, accepted.stdout + accepted.stderr
        previous_port = guest.ssh_port
        assert emulator.stop(f"it-id-card{n}").clean
    print(f"boot to SSH: {', '.join(f'{k} {v:.0f} s' for k, v in boots.items())}")

    ids = [image_identity[0], cards[1][0], cards[2][0]]
    assert all(len(i) == 32 for i in ids) and len(set(ids)) == 3, ids
    keys = [{f.sha256 for f in image_identity[1]}, {f.sha256 for f in cards[1][1]}, {f.sha256 for f in cards[2][1]}]
    assert all(len(k) == 2 for k in keys)
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2]), keys
    # The finished image itself still has no identity: the cards booted copies of it.
    assert ExtFs.partition(work, 2).read("/etc/machine-id") == b""
