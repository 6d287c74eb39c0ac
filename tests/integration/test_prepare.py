"""prepare + finalize round trips, on a Raspberry-Pi-OS-shaped fixture and on the Debian-built base.

The finalized image must differ from the original only where intended: every file of
both partitions is compared (metadata and content digest). No root, no mounts, no QEMU.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pibake.disk import sparse
from pibake.disk.ext4 import ExtFs, MakeDir, Remove, WriteFile
from pibake.disk.fat import FatFs
from pibake.disk.layout import read_mbr
from pibake.errors import PibakeError, Refused, UsageError
from pibake.flash import bmap
from pibake.image import finalize, prepare
from pibake.util.cache import sha256_file
from tests.conftest import REPO, run_cli
from tests.integration import raspios
from tests.integration.imagetree import compare, snapshot

MIB = 1 << 20
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFq0XlJ2z1v2dYbW3TtuG2pQ9nqgk7vH0S2r0c3mCk7Q round-trip@test"
DEBIAN_IMAGE = Path(os.environ.get("PIBAKE_IMAGE", REPO / "build" / "pibake-bullseye.img"))


@pytest.fixture(scope="module")
def raspios_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("raspios")
    return raspios.build_image(d / "raspios.img", d / "work")


def _copy(src: Path, dest: Path) -> Path:
    return sparse.copy_file(src, dest)


@pytest.fixture
def debian_image(tmp_path: Path) -> Path:
    if not DEBIAN_IMAGE.exists():
        pytest.skip(f"{DEBIAN_IMAGE} is not built (`make image`, which needs root)")
    return _copy(DEBIAN_IMAGE, tmp_path / "debian.img")


def _fsck_clean(image: Path) -> None:
    offset = read_mbr(image).partition(2).start * 512
    subprocess.run(["e2fsck", "-f", "-n", f"{image}?offset={offset}"], check=True, capture_output=True)


def _provision_model(image: Path) -> dict[str, bytes]:
    """What Ansible's model role leaves behind, written as it would be (a change finalize must keep)."""
    files = {"/opt/pibake/model/car.tflite": b"TFL3" + bytes(2000), "/opt/pibake/model/labels.txt": b"cat\ndog\n"}
    ExtFs.partition(image, 2).apply(
        [
            MakeDir("/opt"),
            MakeDir("/opt/pibake"),
            MakeDir("/opt/pibake/model"),
            *[WriteFile(p, data) for p, data in files.items()],
        ]
    )
    return files


def test_raspios_round_trip_changes_only_what_was_asked(raspios_image: Path, tmp_path: Path) -> None:
    original = raspios_image
    before = snapshot(original, tmp_path / "before")
    work = tmp_path / "work.img"

    res = run_cli(
        [
            "image", "prepare", str(original), "-o", str(work), "--grow", "64", "--profile", "vexpress-a15",
            "--user", "alice", "--hostname", "pitest", "--ssh-key", str(_pubkey(tmp_path)),
        ]
    )  # fmt: skip
    assert res.code == 0, res.err
    assert "userconf.txt" in res.out and "emulation only" in res.out
    assert sha256_file(original) == sha256_file(raspios_image)  # -o: the original is untouched

    # Prepared for QEMU's SD card: a power of two, partition and filesystem to the end.
    card = raspios.SIZE + 64 * MIB
    assert work.stat().st_size == 512 * MIB
    root_part = read_mbr(work).partition(2)
    assert (root_part.start + root_part.size) * 512 == 512 * MIB
    _fsck_clean(work)
    root, boot = ExtFs.partition(work, 2), FatFs.partition(work, 1)
    assert boot.read("ssh") == b""
    assert boot.read_text("userconf.txt") == "alice:*\n"
    cmdline = boot.read_text("cmdline.txt") or ""
    assert "init_resize" not in cmdline and "serial0" not in cmdline
    assert cmdline.split()[-1] == "console=ttyAMA0,115200"
    assert root.read_text("/etc/ld.so.preload") == "#" + raspios.LD_SO_PRELOAD
    keys = root.stat("/home/pi/.ssh/authorized_keys")
    assert keys is not None and (keys.perm, keys.uid, keys.gid) == (0o600, 1000, 1000)
    assert root.read_text("/home/pi/.ssh/authorized_keys") == KEY + "\n"
    ssh_dir = root.stat("/home/pi/.ssh")
    assert ssh_dir is not None and (ssh_dir.perm, ssh_dir.uid) == (0o700, 1000)
    assert root.read_text("/etc/hostname") == "pitest\n"
    record = json.loads(root.read(prepare.RECORD) or b"{}")
    assert record["base"]["sha256"] == sha256_file(raspios_image)
    assert [t["name"] for t in record["tweaks"]] == ["ld.so.preload", "cmdline.txt"]

    model = _provision_model(work)

    res = run_cli(["image", "finalize", str(work)])
    assert res.code == 0, res.err
    assert "undone: ld.so.preload, cmdline.txt" in res.out
    assert work.stat().st_size == card  # the power of two was for QEMU only
    after = snapshot(work, tmp_path / "after")
    diff = compare(before, after)
    assert diff.removed == set()
    assert diff.changed == {"root:/etc/hostname", "root:/etc/hosts"}
    assert diff.added == {
        "boot:/ssh",
        "boot:/userconf.txt",
        "root:/home/pi/.ssh",
        "root:/home/pi/.ssh/authorized_keys",
        "root:/opt",
        "root:/opt/pibake",
        "root:/opt/pibake/model",
        "root:/opt/pibake/model/car.tflite",
        "root:/opt/pibake/model/labels.txt",
    }
    # ...and the emulation tweaks are gone byte for byte, with the original owner and mode.
    assert after["boot:/cmdline.txt"] == before["boot:/cmdline.txt"]
    assert after["root:/etc/ld.so.preload"] == before["root:/etc/ld.so.preload"]
    assert not ExtFs.partition(work, 2).exists("/var/lib/pibake")

    digest = sha256_file(work)
    assert (tmp_path / "work.img.sha256").read_text() == f"{digest}  work.img\n"
    _fsck_clean(work)
    loaded = bmap.load(bmap.default_path(work))
    assert loaded.image_size == card
    # What the bmap leaves out (a card keeps its old bytes there) is free space of a filesystem, nothing else.
    free = sparse.free_ranges(work)
    starts, ends = [0, *(e.end for e in loaded.extents())], [*(e.offset for e in loaded.extents()), card]
    unmapped = [(a, b) for a, b in zip(starts, ends, strict=True) if a < b]
    assert unmapped and all(any(f0 <= a and b <= f1 for f0, f1 in free) for a, b in unmapped)
    manifest = json.loads((tmp_path / "work.img.manifest.json").read_text())
    assert manifest["image"] == {"name": "work.img", "sha256": digest, "size": card}
    assert manifest["base"]["sha256"] == sha256_file(raspios_image)
    assert manifest["os"] == "Raspbian GNU/Linux 11 (bullseye)"
    assert manifest["emulation_tweaks_undone"] == ["ld.so.preload", "cmdline.txt"]
    packages = {p["name"]: p for p in manifest["packages"]}
    assert set(packages) == {name for name, _, _ in raspios.DPKG_PACKAGES}
    assert packages["python3-numpy"]["version"] == "1:1.19.5-1"
    assert len(packages["raspi-copies-and-fills"]["md5sums_sha256"]) == 64
    python = {d["name"]: d for d in manifest["python"]}
    assert python["numpy"]["version"] == "1.19.5" and python["numpy"]["sha256_of"] == "PKG-INFO"
    assert python["RPi.GPIO"]["version"] == "0.7.0"
    files = {f["path"]: f["sha256"] for f in manifest["model"]["files"]}
    assert files == {p.rsplit("/", 1)[1]: sha256_bytes(data) for p, data in model.items()}
    assert manifest["model"]["sha256"] == finalize.tree_digest(files)

    # Finalizing again changes nothing and keeps what the first run knew about the base.
    again = finalize.finalize(work)
    assert again.sha256 == digest and again.undone == ()
    assert json.loads(again.manifest_file.read_text())["base"] == manifest["base"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pubkey(tmp_path: Path) -> Path:
    path = tmp_path / "key.pub"
    path.write_text(KEY + "\n")
    return path


def test_debian_base_takes_the_same_path(debian_image: Path, tmp_path: Path) -> None:
    before = snapshot(debian_image, tmp_path / "before")
    pi_keys_before = ExtFs.partition(debian_image, 2).read_text("/home/pi/.ssh/authorized_keys") or ""
    prepared = prepare.prepare(
        debian_image, grow_mb=256, power_of_two=True, ssh_pubkey=KEY, hostname="pibake-test", user="pi"
    )
    assert prepared.os == "debian"
    assert prepared.tweaks == ()  # built for emulation already: nothing to undo
    assert debian_image.stat().st_size == 4096 * MIB
    _fsck_clean(debian_image)
    done = finalize.finalize(debian_image)
    assert done.shrunk_to == 2304 * MIB == debian_image.stat().st_size
    after = snapshot(debian_image, tmp_path / "after")
    diff = compare(before, after)
    assert diff.paths == {"root:/etc/hostname", "root:/etc/hosts", "root:/home/pi/.ssh/authorized_keys"}
    keys = ExtFs.partition(debian_image, 2).read_text("/home/pi/.ssh/authorized_keys") or ""
    assert keys == pi_keys_before + KEY + "\n"  # appended: the harness key still works
    manifest = json.loads(done.manifest_file.read_text())
    names = {p["name"] for p in manifest["packages"]}
    assert {"openssh-server", "python3-numpy", "sudo"} <= names
    assert {d["name"] for d in manifest["python"]} >= {"numpy", "Pillow", "pip"}
    assert manifest["model"] is None


def test_a_new_user_on_the_debian_base(debian_image: Path) -> None:
    prepare.prepare(debian_image, user="bob", ssh_pubkey=KEY, password_hash="$6$salt$abcdefghijklmnop")
    root = ExtFs.partition(debian_image, 2)
    passwd = prepare.parse_passwd(root.read_text("/etc/passwd") or "")
    bob = next(u for u in passwd if u.name == "bob")
    assert (bob.uid, bob.home, bob.shell) == (1001, "/home/bob", "/bin/bash")
    assert "bob:$6$salt$abcdefghijklmnop:" in (root.read_text("/etc/shadow") or "")
    assert "sudo:x:27:pi,bob" in (root.read_text("/etc/group") or "")
    home = root.stat("/home/bob")
    assert home is not None and (home.uid, home.gid) == (1001, bob.gid)
    assert root.read_text("/home/bob/.ssh/authorized_keys") == KEY + "\n"
    assert root.read_text("/etc/sudoers.d/010_bob-nopasswd") == "bob ALL=(ALL) NOPASSWD: ALL\n"
    _fsck_clean(debian_image)


def test_an_imager_customised_card_boots_without_firstrun_sh_and_gets_it_back(
    raspios_image: Path, tmp_path: Path
) -> None:
    # Raspberry Pi Imager's settings (bullseye, bookworm): systemd runs firstrun.sh, which reboots. Not in the emulated
    # boot (QEMU runs with -no-reboot); on the card, byte for byte.
    card = _copy(raspios_image, tmp_path / "imager.img")
    imager = raspios.CMDLINE.rstrip("\n") + (
        " systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n"
    )
    cmdline = tmp_path / "cmdline.txt"
    cmdline.write_text(imager)
    offset = read_mbr(card).partition(1).start * 512
    subprocess.run(["mcopy", "-o", "-i", f"{card}@@{offset}", str(cmdline), "::/cmdline.txt"], check=True)
    work = tmp_path / "work.img"
    res = run_cli(["image", "prepare", str(card), "-o", str(work), "--ssh-key", str(_pubkey(tmp_path))])
    assert res.code == 0, res.err
    emulated = FatFs.partition(work, 1).read_text("cmdline.txt") or ""
    assert "systemd.run" not in emulated and "kernel-command-line.target" not in emulated, emulated
    assert "init_resize" not in emulated
    res = run_cli(["image", "finalize", str(work)])
    assert res.code == 0, res.err
    assert FatFs.partition(work, 1).read_text("cmdline.txt") == imager


def test_prepare_twice_and_a_changed_tweak_are_refused(raspios_image: Path, tmp_path: Path) -> None:
    work = prepare.copy_image(raspios_image, tmp_path / "w.img")
    prepare.prepare(work, ssh_pubkey=KEY)
    with pytest.raises(PibakeError, match="prepared already"):
        prepare.prepare(work, ssh_pubkey=KEY)
    with pytest.raises(PibakeError, match="prepared already"):
        prepare.prepare(work, output=tmp_path / "copy.img", ssh_pubkey=KEY)
    assert not (tmp_path / "copy.img").exists()  # no half-prepared copy left behind
    # Provisioning rewrote a file prepare had tweaked: finalize must not guess.
    ExtFs.partition(work, 2).apply([WriteFile("/etc/ld.so.preload", b"/usr/lib/something-else.so\n")])
    res = run_cli(["image", "finalize", str(work)])
    assert res.code == Refused.exit_code
    assert "changed after prepare" in res.err and "Traceback" not in res.err


def test_no_emulation_tweaks_for_a_card_only_image(raspios_image: Path, tmp_path: Path) -> None:
    work = prepare.copy_image(raspios_image, tmp_path / "w.img")
    res = prepare.prepare(work, ssh_pubkey=KEY, emulation_tweaks=False)
    assert res.tweaks == ()
    assert FatFs.partition(work, 1).read_text("cmdline.txt") == raspios.CMDLINE
    done = finalize.finalize(work, write_bmap=False)
    assert done.undone == () and done.bmap_file is None
    assert work.stat().st_size == raspios.SIZE


def test_finalize_of_an_image_never_prepared(raspios_image: Path, tmp_path: Path) -> None:
    work = prepare.copy_image(raspios_image, tmp_path / "w.img")
    done = finalize.finalize(work)
    manifest = json.loads(done.manifest_file.read_text())
    assert manifest["base"] is None and manifest["emulation_tweaks_undone"] == []
    assert sha256_file(work) == sha256_file(raspios_image)  # nothing to undo: not a byte changed


def test_prepare_errors_are_actionable(raspios_image: Path, tmp_path: Path) -> None:
    res = run_cli(["image", "prepare", str(tmp_path / "missing.img")])
    assert res.code == UsageError.exit_code and "pibake image fetch" in res.err
    res = run_cli(["image", "prepare", str(raspios_image), "--user", "Root!"])
    assert res.code == UsageError.exit_code and "invalid user name" in res.err
    res = run_cli(["image", "prepare", str(raspios_image), "--password-hash", "hunter2"])
    assert res.code == UsageError.exit_code and "openssl passwd -6" in res.err


@pytest.fixture(scope="module")
def cloud_init_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("raspios-cloud-init")
    return raspios.build_image(d / "raspios-trixie.img", d / "work", cloud_init=True)


def test_a_cloud_init_image_takes_its_settings_as_cloud_init_user_data(cloud_init_image: Path, tmp_path: Path) -> None:
    # Raspberry Pi OS trixie: cloud-init reads user-data and meta-data from the boot partition; rpi-resize's word ends
    # cmdline.txt. Its emulated boot is tested with real cloud-init in test_cloud_init.py.
    before = snapshot(cloud_init_image, tmp_path / "before")
    work = tmp_path / "work.img"
    res = run_cli(
        [
            "image", "prepare", str(cloud_init_image), "-o", str(work), "--user", "alice", "--hostname", "pitest",
            "--ssh-key", str(_pubkey(tmp_path)),
        ]
    )  # fmt: skip
    assert res.code == 0, res.err
    assert "boot:/user-data (cloud-init on first boot: user alice, SSH key, hostname pitest, SSH on)" in res.out
    boot = FatFs.partition(work, 1)
    user_data = boot.read_text("user-data") or ""
    assert user_data.startswith("#cloud-config\n# Written by pibake image prepare")
    config = yaml.safe_load(user_data)
    assert config["user"] == {
        "name": "alice",
        "shell": "/bin/bash",
        "lock_passwd": True,
        "ssh_authorized_keys": [KEY],
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
    }
    assert (config["hostname"], config["manage_etc_hosts"], config["ssh_pwauth"]) == ("pitest", True, False)
    assert config["runcmd"] == [["systemctl", "enable", "--now", "ssh"]]
    meta = yaml.safe_load(boot.read_text("meta-data") or "")
    assert meta["dsmode"] == "local" and meta["instance-id"].startswith("pibake-")
    cmdline = boot.read_text("cmdline.txt") or ""
    assert "resize" not in cmdline.split() and cmdline.split()[-1] == "console=ttyAMA0,115200", cmdline
    # No userconf.txt, no boot:/ssh, nothing in the root filesystem but the record: cloud-init does it at boot.
    assert not boot.exists("userconf.txt") and not boot.exists("ssh")

    res = run_cli(["image", "finalize", str(work)])
    assert res.code == 0, res.err
    diff = compare(before, snapshot(work, tmp_path / "after"))
    assert diff.added == set() and diff.removed == set()
    assert diff.changed == {"boot:/user-data", "boot:/meta-data"}
    assert FatFs.partition(work, 1).read_text("cmdline.txt") == raspios.CLOUD_INIT_CMDLINE  # `resize` is back
    # Finalize reads the same mechanism from dpkg's list: Imager may write cloud-init settings for this card.
    (entry,) = json.loads(Path(f"{work}.os_list.json").read_text())["os_list"]
    assert entry["init_format"] == "cloudinit-rpi"
    # A second image from the same base is a new cloud-init instance.
    again = prepare.prepare(cloud_init_image, output=tmp_path / "again.img", ssh_pubkey=KEY)
    meta_again = yaml.safe_load(FatFs.partition(again.path, 1).read_text("meta-data") or "")
    assert meta_again["instance-id"] != meta["instance-id"]
    assert yaml.safe_load(FatFs.partition(again.path, 1).read_text("user-data") or "")["user"]["name"] == "pi"


def test_a_cloud_init_image_with_its_own_user_data_is_refused_whole(cloud_init_image: Path, tmp_path: Path) -> None:
    card = _copy(cloud_init_image, tmp_path / "own.img")
    FatFs.partition(card, 1).write("user-data", b"#cloud-config\npackages: [htop]\nusers: [default]\n")
    before = sha256_file(card)
    res = run_cli(["image", "prepare", str(card), "--ssh-key", str(_pubkey(tmp_path))])
    assert res.code == Refused.exit_code
    assert "already holds cloud-init settings (packages, users)" in res.err and "Traceback" not in res.err
    assert sha256_file(card) == before  # refused before a byte was written


@pytest.mark.parametrize("other", ["userconf.txt", "firstrun.sh"])
def test_a_cloud_init_image_with_a_second_first_boot_mechanism_is_refused(
    cloud_init_image: Path, tmp_path: Path, other: str
) -> None:
    card = _copy(cloud_init_image, tmp_path / "two.img")
    FatFs.partition(card, 1).write(other, b"pi:*\n" if other == "userconf.txt" else b"#!/bin/bash\n")
    before = sha256_file(card)
    res = run_cli(["image", "prepare", str(card), "--ssh-key", str(_pubkey(tmp_path))])
    assert res.code == Refused.exit_code, res.err
    assert f"also carries boot:/{other}, a second first-boot mechanism" in res.err
    assert sha256_file(card) == before


def test_a_bad_key_or_output_is_refused_before_the_image_grows(raspios_image: Path, tmp_path: Path) -> None:
    card = _copy(raspios_image, tmp_path / "k.img")
    before = sha256_file(card)
    two = tmp_path / "two.pub"
    two.write_text(f"{KEY}\n{KEY.replace('round-trip', 'other')}\n")
    empty = tmp_path / "empty.pub"
    empty.write_text("\n")
    for key, says in ((two, "exactly one line"), (empty, "holds no SSH public key")):
        res = run_cli(["image", "prepare", str(card), "--grow", "64", "--ssh-key", str(key)])
        assert res.code == UsageError.exit_code and says in res.err, res.err
    (tmp_path / "a-dir").mkdir()
    res = run_cli(["image", "prepare", str(card), "-o", str(tmp_path / "a-dir")])
    assert res.code == UsageError.exit_code and "is a directory" in res.err and "Traceback" not in res.err
    assert sha256_file(card) == before and card.stat().st_size == raspios.SIZE
    # A prepared image given with -o is named as it is, and no copy is made of it.
    prepare.prepare(card, ssh_pubkey=KEY)
    res = run_cli(["image", "prepare", str(card), "-o", str(tmp_path / "copy.img")])
    assert res.code == Refused.exit_code and f"{card} was prepared already" in res.err
    assert not (tmp_path / "copy.img").exists()


def test_a_raspberry_pi_os_with_no_known_first_boot_program_is_refused(raspios_image: Path, tmp_path: Path) -> None:
    card = _copy(raspios_image, tmp_path / "odd.img")
    ExtFs.partition(card, 2).apply([Remove("/usr/lib/userconf-pi/userconf")])
    before = sha256_file(card)
    res = run_cli(["image", "prepare", str(card)])
    assert res.code == Refused.exit_code
    assert "neither userconf-pi (/usr/lib/userconf-pi/userconf) nor cloud-init (/usr/bin/cloud-init)" in res.err
    assert "users: pi" in res.err
    assert sha256_file(card) == before
