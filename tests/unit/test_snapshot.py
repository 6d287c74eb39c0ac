"""Snapshot keys, the image digest memo, eviction and the -incoming launch, without booting anything."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pibake.emulate import profiles, snapshot
from tests.conftest import run_cli


@pytest.fixture(autouse=True)
def private_cache(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No qemu needed: the version string is part of the key, so pin it.
    monkeypatch.setitem(profiles._qemu_versions, "qemu-system-arm", "QEMU emulator version 7.2.0")
    return isolated_cache


def _files(tmp_path: Path) -> profiles.Launch:
    for name, data in (("image.img", b"\0" * 4096), ("vmlinuz", b"kernel"), ("initrd.img", b"initrd")):
        (tmp_path / name).write_bytes(data)
    return profiles.Launch(
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd.img",
        cmdline="console=ttyAMA0 root=PARTUUID=0000abcd-02",
        drive=tmp_path / "overlay.qcow2",
        drive_format="qcow2",
        ssh_port=40022,
        serial_log=tmp_path / "serial.log",
        qmp_socket=tmp_path / "qmp.sock",
        pidfile=tmp_path / "qemu.pid",
        cpu="cortex-a15",
        forwards=((41000, 8000),),
    )


def _key(tmp_path: Path, launch: profiles.Launch, profile: str = "virt") -> str:
    return snapshot.launch_key(tmp_path / "image.img", profiles.load(profile), launch, "qemu-system-arm")


def test_the_key_follows_what_the_guest_sees_and_not_host_ports_or_paths(tmp_path: Path) -> None:
    launch = _files(tmp_path)
    key = _key(tmp_path, launch)
    assert key == _key(tmp_path, replace(launch, ssh_port=50022, forwards=((52000, 8000),), serial_log=tmp_path / "x"))
    others = {
        _key(tmp_path, replace(launch, cpu="cortex-a7")),
        _key(tmp_path, replace(launch, memory_mb=768)),
        _key(tmp_path, replace(launch, cmdline=launch.cmdline + " quiet")),
        _key(tmp_path, replace(launch, forwards=((41000, 8000), (41001, 9000)))),
        _key(tmp_path, replace(launch, initrd=None)),
        _key(tmp_path, launch, profile="vexpress-a15"),
    }
    assert key not in others and len(others) == 6
    (tmp_path / "vmlinuz").write_bytes(b"another kernel")
    assert _key(tmp_path, launch) != key


def test_an_image_changed_in_place_gets_a_new_digest_even_with_its_old_size_and_mtime(tmp_path: Path) -> None:
    image = tmp_path / "image.img"
    image.write_bytes(b"\0" * 8192)
    before = image.stat()
    first = snapshot.image_digest(image)
    assert snapshot.image_digest(image) == first  # remembered
    with image.open("r+b") as f:
        f.seek(100)
        f.write(b"\1")
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # hide the write from mtime
    assert image.stat().st_size == before.st_size
    assert snapshot.image_digest(image) != first


def _fake_snapshot(key: str, size: int, used: float) -> Path:
    d = snapshot.snapshots_dir() / key
    d.mkdir(parents=True)
    (d / "state").write_bytes(b"\0" * size)
    (d / "disk.qcow2").write_bytes(b"q")
    meta = {"key": key, "profile": "virt", "cpu": "cortex-a15", "boot_seconds": 40.0, "image": "/x.img"}
    (d / "meta.json").write_text(json.dumps(meta))
    os.utime(d / "meta.json", (used, used))
    return d


def test_eviction_removes_the_least_recently_used_first_and_never_the_one_kept() -> None:
    now = time.time()
    _fake_snapshot("old", 4000, now - 300)
    _fake_snapshot("mid", 4000, now - 200)
    _fake_snapshot("new", 4000, now - 100)
    assert snapshot.evict(keep="old", max_bytes=9000) == ["mid"]
    assert sorted(p.name for p in snapshot.snapshots_dir().iterdir()) == ["new", "old"]
    assert snapshot.evict(max_bytes=0) == ["old", "new"]


def test_find_ignores_an_incomplete_snapshot_and_marks_a_found_one_used() -> None:
    d = _fake_snapshot("k1", 10, time.time() - 1000)
    (d / "disk.qcow2").unlink()
    assert snapshot.find("k1") is None
    (d / "disk.qcow2").write_bytes(b"q")
    found = snapshot.find("k1")
    assert found is not None and found.state == d / "state"
    assert time.time() - (d / "meta.json").stat().st_mtime < 60
    assert found.incoming() == f"exec:cat {d / 'state'}"


def test_a_restore_launch_has_incoming_and_a_boot_has_not(tmp_path: Path) -> None:
    launch = _files(tmp_path)
    prof = profiles.load("virt")
    assert "-incoming" not in profiles.qemu_command(prof, launch)
    argv = profiles.qemu_command(prof, replace(launch, incoming="exec:cat /s/state"))
    assert argv[argv.index("-incoming") + 1] == "exec:cat /s/state"


def test_the_cli_lists_and_clears_snapshots() -> None:
    res = run_cli(["emulate", "snapshots"])
    assert res.code == 0 and "no snapshots" in res.out
    _fake_snapshot("a" * 64, 2 << 20, time.time())
    res = run_cli(["emulate", "snapshots"])
    assert res.code == 0 and "aaaaaaaaaaaa  virt" in res.out and "2 MiB" in res.out
    res = run_cli(["emulate", "snapshots", "--clear"])
    assert res.code == 0 and "removed 1 snapshot" in res.out
    assert not snapshot.snapshots_dir().exists()


def test_only_profiles_seen_to_restore_take_snapshots() -> None:
    # virt: measured; vexpress-a9: a restored guest never answered SSH on QEMU 7.2.
    assert profiles.load("virt").snapshot
    assert not profiles.load("vexpress-a9").snapshot
    assert not profiles.load("raspi2b").snapshot
