from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from pibake.disk.sparse import write_at
from pibake.errors import PibakeError
from pibake.image import build
from pibake.image.build import (
    MERGED_USR_HOOK,
    NO_SECURITY_HOOK,
    DebianBase,
    ImageSpec,
    default_spec,
    fstab,
    kernel_cmdline,
    mmdebstrap_argv,
)
from pibake.util.cache import recipe_hash


def test_recipe_hash_ignores_key_order_and_sees_every_value() -> None:
    assert recipe_hash({"a": 1, "b": [1, 2]}) == recipe_hash({"b": [1, 2], "a": 1})
    assert recipe_hash({"a": 1}) != recipe_hash({"a": 2})
    assert len(recipe_hash({})) == 64


def test_image_key_changes_with_user_facing_inputs_but_rootfs_key_does_not() -> None:
    spec = ImageSpec(ssh_pubkey="ssh-ed25519 AAAA one")
    other_key = replace(spec, ssh_pubkey="ssh-ed25519 AAAA two")
    assert recipe_hash(spec.key()) != recipe_hash(other_key.key())
    assert spec.base.key() == other_key.base.key()  # no new root filesystem for a new key
    bigger = replace(spec, size_mb=4096)
    assert recipe_hash(spec.key()) != recipe_hash(bigger.key())


def test_a_package_or_mirror_change_rebuilds_the_rootfs() -> None:
    base = DebianBase()
    assert recipe_hash(base.key()) != recipe_hash(replace(base, packages=(*base.packages, "vim")).key())
    assert recipe_hash(base.key()) != recipe_hash(replace(base, mirror="http://mirror.invalid/debian").key())
    spec = ImageSpec(ssh_pubkey="k")
    assert recipe_hash(spec.key()) != recipe_hash(replace(spec, base=replace(base, suite="bookworm")).key())


def test_mmdebstrap_builds_the_recipe_with_one_initramfs_and_the_mirror_last(tmp_path: Path) -> None:
    base = DebianBase(suite="trixie", arch="arm64", packages=("python3", "linux-image-arm64"), components=("main",))
    argv = mmdebstrap_argv(base, tmp_path / "root")
    assert argv[0] == "mmdebstrap" and argv[-2:] == ["trixie", str(tmp_path / "root")]
    assert "--verbose" in argv  # dpkg's lines: the progress of the half hour under qemu-user
    assert "--arch=arm64" in argv and "--include=python3,linux-image-arm64" in argv and "--components=main" in argv
    # update-initramfs is diverted once the essential packages are in and run once at the end.
    hooks = [a for a in argv if a.startswith(("--essential-hook=", "--customize-hook="))]
    assert "--rename --add /usr/sbin/update-initramfs" in hooks[0]
    assert "--rename --remove /usr/sbin/update-initramfs" in hooks[1] and hooks[1].endswith(
        "update-initramfs -c -k all"
    )
    mirrored = mmdebstrap_argv(replace(base, mirror="http://mirror.invalid/debian"), tmp_path / "root")
    assert mirrored[-3:] == ["trixie", str(tmp_path / "root"), "http://mirror.invalid/debian"]


def test_the_merged_usr_hook_makes_debootstraps_links(tmp_path: Path) -> None:
    subprocess.run(["sh", "-c", MERGED_USR_HOOK, "hook", str(tmp_path)], check=True)
    for d in ("bin", "sbin", "lib"):
        assert (tmp_path / d).is_symlink() and str((tmp_path / d).readlink()) == f"usr/{d}"
        assert (tmp_path / "usr" / d).is_dir()


def test_a_suite_without_security_updates_loses_that_source_before_apt_runs(tmp_path: Path) -> None:
    bullseye = default_spec(base="debian-bullseye").base
    assert not bullseye.security and default_spec(base="debian-trixie-arm64", board="pi4").base.security
    assert f"--setup-hook={NO_SECURITY_HOOK}" in mmdebstrap_argv(bullseye, tmp_path / "root")
    sources = tmp_path / "etc/apt/sources.list"
    sources.parent.mkdir(parents=True)
    lines = [
        "deb http://mirror.invalid/debian bullseye main non-free",
        "deb http://mirror.invalid/debian bullseye-updates main non-free",
        "deb http://mirror.invalid/debian-security bullseye-security main non-free",
    ]
    sources.write_text("\n".join(lines) + "\n")
    subprocess.run(["sh", "-c", NO_SECURITY_HOOK, "hook", str(tmp_path)], check=True)
    assert sources.read_text().splitlines() == lines[:2]


def test_disk_id_is_stable_and_root_is_found_by_partuuid() -> None:
    spec = ImageSpec(ssh_pubkey="k")
    assert spec.disk_id == ImageSpec(ssh_pubkey="k").disk_id
    root = f"root=PARTUUID={spec.disk_id:08x}-02"
    assert root in kernel_cmdline(spec.disk_id)
    assert f"PARTUUID={spec.disk_id:08x}-01  /boot/firmware  vfat" in fstab(spec.disk_id)
    assert f"PARTUUID={spec.disk_id:08x}-02  /               ext4" in fstab(spec.disk_id)


def test_unknown_base_is_a_clear_error(isolated_cache: Path) -> None:
    with pytest.raises(PibakeError, match=r"unknown base 'gentoo'.*debian-bullseye"):
        default_spec(base="gentoo")


def test_write_at_places_bytes_at_offset_and_keeps_holes(tmp_path: Path) -> None:
    src = tmp_path / "part"
    src.write_bytes(bytes(8192) + b"data" + bytes(8188))
    dst = tmp_path / "disk"
    with dst.open("wb") as f:
        f.truncate(65536)
    write_at(src, dst, 16384)
    blob = dst.read_bytes()
    assert len(blob) == 65536
    assert blob[16384 + 8192 : 16384 + 8196] == b"data"
    assert blob.count(b"data") == 1
    # The source's written zeros are written too (a hole would be a card's old bytes); DST's holes elsewhere stay.
    assert dst.stat().st_blocks * 512 == 16384


def test_a_mirror_between_two_syncs_says_to_run_again_or_name_one_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apt's "Mirror sync in progress?" (seen here on bookworm-security's armhf index for an hour) becomes what to do.
    A stand-in mmdebstrap says it: a mirror mid-sync cannot be had on demand."""
    if os.geteuid() != 0:
        pytest.skip("building a root filesystem runs as root")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mmdebstrap").write_text(
        "#!/bin/sh\n"
        "echo 'E: Failed to fetch http://mirror.invalid/debian-security/dists/bookworm-security/main/binary-armhf/"
        "Packages.xz  File has unexpected size (334084 != 354900). Mirror sync in progress? [IP: 192.0.2.1 80]' >&2\n"
        "echo 'E: mmdebstrap failed to run' >&2\nexit 1\n"
    )
    (bin_dir / "mmdebstrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(build, "ensure_binfmt", lambda arch: None)
    base = default_spec(base="debian-bookworm-armhf", board="pi3b-plus").base
    with pytest.raises(PibakeError, match="between two syncs") as caught:
        build._build_rootfs_locked(base, "0" * 64, tmp_path / "top")
    assert "--mirror URL" in str(caught.value) and "bookworm-security" in str(caught.value)
    assert not (tmp_path / "top" / "complete").exists()
