"""Host keys: the fingerprints a Pi prints at first boot, read back and checked; SSH host key checking stays on.

Also what finalize resets (the pure parts of image/identity.py) and the first-boot init= that
prepare takes out of cmdline.txt for a QEMU boot and finalize puts back.
"""

from __future__ import annotations

import configparser
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pibake import hostkeys
from pibake.disk.ext4 import S_IFDIR, S_IFLNK, S_IFREG, DirEntry
from pibake.emulate import inventory
from pibake.errors import PibakeError, UsageError, VerificationFailed
from pibake.image import identity, prepare
from tests.conftest import REPO, molecule_config, run_cli

BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


def _keypair(tmp_path: Path, key_type: str) -> tuple[str, str]:
    """A new host key's public line and `ssh-keygen -l` of it."""
    key = tmp_path / f"ssh_host_{key_type}_key"
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(key)], check=True)
    listed = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], check=True, capture_output=True, text=True)
    return (tmp_path / f"{key.name}.pub").read_text().strip(), listed.stdout.strip()


def _console(*keygen_lines: str) -> str:
    """A serial log as the base's unit leaves it: kernel and systemd noise around MARK lines, CRLF."""
    noise = "[    4.123456] systemd[1]: Starting Make this device's own SSH host keys...\r\n"
    return noise + "".join(f"{hostkeys.MARK} {line}\r\n" for line in keygen_lines) + "Debian GNU/Linux 11\r\n"


def test_the_printed_fingerprints_are_ssh_keygens_and_a_later_boot_wins(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ed_pub, ed_listed = _keypair(tmp_path / "a", "ed25519")
    ec_pub, ec_listed = _keypair(tmp_path / "a", "ecdsa")
    _, reflashed = _keypair(tmp_path / "b", "ed25519")
    found = hostkeys.console_fingerprints(_console(ed_listed, ec_listed))
    assert [str(f) for f in found] == [
        " ".join([ec_listed.split()[0], ec_listed.split()[1], "(ECDSA)"]),
        " ".join([ed_listed.split()[0], ed_listed.split()[1], "(ED25519)"]),
    ]
    # ...and the fingerprint of a public key line is computed the way ssh-keygen does.
    for pub, listed in ((ed_pub, ed_listed), (ec_pub, ec_listed)):
        computed = hostkeys.known_hosts_fingerprint(f"pi4-lab {pub}")
        assert computed is not None and computed.sha256 == listed.split()[1]
    # A log of two boots (the card was reflashed): the later keys are the card's.
    later = hostkeys.console_fingerprints(_console(ed_listed) + _console(reflashed))
    assert [f.sha256 for f in later] == [reflashed.split()[1]]
    assert hostkeys.console_fingerprints("no marks here\n") == ()


def test_scanned_keys_are_trusted_only_when_they_match_the_console(tmp_path: Path) -> None:
    ed_pub, ed_listed = _keypair(tmp_path, "ed25519")
    printed = hostkeys.console_fingerprints(_console(ed_listed))
    scanned = ["# 127.0.0.1:22 SSH-2.0-OpenSSH_8.4p1", f"pi4-lab {ed_pub}"]
    assert hostkeys.trusted_lines(scanned, printed, host="pi4-lab") == [f"pi4-lab {ed_pub}"]

    (tmp_path / "other").mkdir()
    impostor, _ = _keypair(tmp_path / "other", "ed25519")
    with pytest.raises(VerificationFailed, match="not the Pi that printed it"):
        hostkeys.trusted_lines([f"pi4-lab {impostor}"], printed, host="pi4-lab")
    ec_pub, _ = _keypair(tmp_path / "other", "ecdsa")
    with pytest.raises(VerificationFailed, match="offered no key of a type the console printed"):
        hostkeys.trusted_lines([f"pi4-lab {ec_pub}"], printed, host="pi4-lab")


def test_pibake_hostkeys_reads_a_serial_log(tmp_path: Path) -> None:
    _, listed = _keypair(tmp_path, "ed25519")
    log = tmp_path / "serial.log"
    log.write_text(_console(listed))
    res = run_cli(["hostkeys", str(log)])
    assert res.code == 0, res.err
    assert res.out.split() == [listed.split()[0], listed.split()[1], "(ED25519)"]

    log.write_text("a boot that made no keys\n")
    res = run_cli(["hostkeys", str(log)])
    assert res.code == PibakeError.exit_code and "first one of a card" in res.err
    res = run_cli(["hostkeys"])
    assert res.code == UsageError.exit_code and "--name" in res.err
    res = run_cli(["hostkeys", str(tmp_path / "missing.log")])
    assert res.code == UsageError.exit_code and "cannot read" in res.err


def test_the_first_boot_script_makes_keys_once_and_prints_them(tmp_path: Path) -> None:
    """The base's script, run on this machine against a scratch /etc/ssh: what the card runs at first boot."""
    etc_ssh = tmp_path / "etc/ssh"
    etc_ssh.mkdir(parents=True)
    script = tmp_path / "pibake-ssh-hostkeys"
    script.write_text(hostkeys.script_text().replace("/etc/ssh/", f"{etc_ssh}/").replace("/sys/", f"{tmp_path}/"))
    out = subprocess.run(["sh", str(script)], check=True, capture_output=True, text=True).stdout
    printed = hostkeys.console_fingerprints(out)
    assert sorted(f.key_type for f in printed) == ["ECDSA", "ED25519"]
    assert sorted(p.name for p in etc_ssh.iterdir()) == sorted(
        f"ssh_host_{t}_key{s}" for t in hostkeys.KEY_TYPES for s in ("", ".pub")
    )
    again = hostkeys.console_fingerprints(
        subprocess.run(["sh", str(script)], check=True, capture_output=True, text=True).stdout
    )
    assert again == printed  # existing keys are kept, and shown again
    unit = hostkeys.unit_text()
    assert "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key" in unit
    assert "Before=ssh.service" in unit and f"ExecStart={hostkeys.SCRIPT}" in unit


# ---------------------------------------------------------------- host key checking


def test_host_keys_are_checked_except_for_emulated_guests(tmp_path: Path) -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "ansible.cfg")
    assert cfg.get("defaults", "host_key_checking", fallback="True").lower() not in ("false", "no", "0")
    # What Ansible itself makes of the repository's configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    dump = subprocess.run(
        [str(BIN / "ansible-config"), "dump", "--only-changed"],
        env={**env, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "HOST_KEY_CHECKING" not in dump
    # A real fleet's inventory does not turn it off either...
    example = (REPO / "inventories/example/hosts.yml").read_text()
    assert "StrictHostKeyChecking" not in yaml.safe_dump(yaml.safe_load(example))
    # ...while an emulated guest's inventory and Molecule's scenarios carry their own options.
    inventory.add_host(tmp_path / "hosts.yml", inventory.Host("g", 2222, "pi", Path("/k"), "virt", "cortex-a15"))
    host = yaml.safe_load((tmp_path / "hosts.yml").read_text())["raspberry_pi"]["hosts"]["g"]
    assert "StrictHostKeyChecking=no" in host["ansible_ssh_common_args"]
    scenarios = sorted((REPO / "molecule").glob("*/molecule.yml"))
    assert len(scenarios) >= 2, scenarios
    for scenario in scenarios:
        molecule = molecule_config(scenario)
        assert molecule["ansible"]["cfg"]["defaults"]["host_key_checking"] is False, scenario


# ---------------------------------------------------------------- what finalize resets


def _entry(name: str, kind: int) -> DirEntry:
    return DirEntry(12, kind | 0o644, 0, 0, name, None if kind == S_IFDIR else 1)


@pytest.mark.parametrize(
    ("content", "is_set"),
    [
        (None, False),
        (b"", False),
        (b"\n", False),
        (b"uninitialized\n", False),
        (b"a31ed9693c2e40c1bf22047addb718e3\n", True),
    ],
)
def test_a_machine_id_is_reset_only_when_it_holds_an_id(content: bytes | None, is_set: bool) -> None:
    assert identity.machine_id_is_set(content) is is_set


def test_only_files_and_links_of_the_patterns_are_reset() -> None:
    entries = [
        _entry(".", S_IFDIR),
        _entry("ssh_host_ed25519_key", S_IFREG),
        _entry("ssh_host_ed25519_key.pub", S_IFREG),
        _entry("sshd_config", S_IFREG),
        _entry("ssh_host_weird_dir", S_IFDIR),
        _entry("ssh_host_link", S_IFLNK),
    ]
    names = [e.name for e in identity.matching(entries, (identity.HOST_KEYS,))]
    assert names == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_link"]
    assert identity.matching(None, ("*",)) == []


@pytest.mark.parametrize(
    "init", ["init=/usr/lib/raspi-config/init_resize.sh", "init=/usr/lib/raspberrypi-sys-mods/firstboot"]
)
def test_the_first_boot_init_of_either_raspberry_pi_os_is_taken_out_for_qemu(init: str) -> None:
    cmdline = f"console=serial0,115200 console=tty1 root=PARTUUID=3a90e54f-02 rootwait quiet {init}\n"
    new = prepare.tweak_cmdline(cmdline, "ttyAMA0")
    assert new == "console=tty1 root=PARTUUID=3a90e54f-02 rootwait quiet console=ttyAMA0,115200\n"
