"""Snapshot starts on virt: the first start saves the booted guest, later ones restore it with the host's clock,
a reseeded random number generator and a disk of their own."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from pibake.disk.sparse import copy_file
from pibake.emulate import guest as emulator
from pibake.emulate import snapshot
from pibake.emulate.ssh import ssh_run
from tests.integration.conftest import qemu_processes

pytestmark = [pytest.mark.emulator, pytest.mark.root]


def _clock_and_random(guest: emulator.Guest) -> tuple[float, str]:
    """(guest clock minus host clock in seconds, 32 bytes of the guest's /dev/urandom in hex)."""
    before = time.time()
    code, out = ssh_run(guest, "date +%s.%N; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
    after = time.time()
    assert code == 0, out
    clock, random_hex = out.split()
    return float(clock) - (before + after) / 2, random_hex


def test_a_second_start_restores_the_first_ones_snapshot(
    base_image: Path, tmp_path: Path, isolated_cache: Path, stop_guests: list[str]
) -> None:
    # A copy with its own digest (random bytes where the MBR's boot code would be: no Pi and no
    # -kernel boot reads them), so this test always boots cold first and saves.
    image = tmp_path / "snap.img"
    copy_file(base_image, image)
    with image.open("r+b") as f:
        f.write(secrets.token_bytes(16))
    name = "it-snap"
    stop_guests.append(name)

    first = emulator.start(image, profile="virt", name=name, inventory=None)
    assert first.snapshot is None
    saved = snapshot.listing()
    assert len(saved) == 1 and saved[0]["image"] == str(image), saved
    key = saved[0]["key"]
    skew, _ = _clock_and_random(first)
    assert abs(skew) < 5, f"guest clock {skew:+.1f} s off after the save (it stood still while paused)"
    assert emulator.stop(name).clean

    seen = []
    for n in range(2):
        guest = emulator.start(image, profile="virt", name=name, inventory=None)
        assert guest.snapshot == key, "the second start booted cold instead of restoring"
        skew, random_hex = _clock_and_random(guest)
        assert abs(skew) < 5, f"restored guest's clock is {skew:+.1f} s off the host's"
        seen.append(random_hex)
        # Each restore writes to a disk of its own: the first restore's file is not in the second.
        code, out = ssh_run(guest, f"touch marker-{n} && sync && ls marker-*")
        assert code == 0 and out.split() == [f"marker-{n}"], out
        assert emulator.stop(name).clean
        assert not qemu_processes(str(emulator.state_dir(name)))
    assert seen[0] != seen[1], "two restores of one snapshot gave the same random bytes: the CRNG was not reseeded"
    assert snapshot.find(key) is not None
