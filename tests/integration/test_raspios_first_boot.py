"""Raspberry Pi OS's first boots before cloud-init, through prepare, an emulated boot and finalize.

One image per mechanism (tests/integration/raspios_first_boot.py: the trixie arm64 base laid out as bullseye's
init_resize.sh, bullseye's and bookworm's raspberrypi-sys-mods firstboot, and a bookworm card customised by Raspberry
Pi Imager, whose firstrun.sh runs through systemd.run=). Each init= program and firstrun.sh reboots, which ends a
QEMU started with -no-reboot: the guest answers SSH only if prepare took them out of cmdline.txt for the emulated
boot. userconf-pi and sshswitch then give the prepared user its login from boot:/userconf.txt and boot:/ssh, as on a
card, and finalize must give the card its own first boot back: the boot partition byte for byte as it was.
Booted on virt64 with the Pi 4's Cortex-A72 and pibake's virt64 kernel (Raspberry Pi OS's kernel8.img has no virtio
drivers), as `pibake bake` boots such an image.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pibake import kernel
from pibake.disk.ext4 import ExtFs
from pibake.disk.fat import FatFs
from pibake.emulate import guest as emulator
from pibake.emulate.ssh import ssh_run
from pibake.image import finalize
from tests.conftest import run_cli
from tests.integration import raspios_first_boot as layout
from tests.integration.imagetree import boot_snapshot

pytestmark = pytest.mark.emulator

NAME = "it-raspios-first-boot"
# init_resize's image keeps pi (userconf.txt with the same name); the others rename pi, as Imager's users do.
USERS = {"init_resize": "pi", "firstboot": "alice", "firstrun": "alice"}


@pytest.mark.parametrize("mechanism", layout.MECHANISMS)
def test_the_emulated_boot_skips_the_first_boot_and_finalize_gives_it_back_to_the_card(
    mechanism: str, arm64_image: Path, virt64_kernel: kernel.KernelBuild, tmp_path: Path, stop_guests: list[str]
) -> None:
    base = layout.build(arm64_image, tmp_path / f"{mechanism}.img", mechanism)
    boot_before = boot_snapshot(base, tmp_path / "before")
    base_cmdline = FatFs.partition(base, 1).read_text("cmdline.txt") or ""
    assert base_cmdline.rstrip().endswith(layout.CMDLINE_TAIL[mechanism])
    user = USERS[mechanism]
    work = tmp_path / "work.img"
    res = run_cli(["image", "prepare", str(base), "-o", str(work), "--user", user])
    assert res.code == 0, res.err
    assert "boot:/userconf.txt" in res.out and "boot:/cmdline.txt (emulation only" in res.out, res.out
    cmdline = FatFs.partition(work, 1).read_text("cmdline.txt") or ""
    assert "init=" not in cmdline and "systemd.run" not in cmdline and "systemd.unit" not in cmdline, cmdline

    stop_guests.append(NAME)
    t0 = time.monotonic()
    guest = emulator.start(
        work, board="pi4", name=NAME, persist=True, inventory=None, user=user, timeout=900, kernel=virt64_kernel.kernel
    )
    print(f"{mechanism}: cold boot to SSH as {user}: {time.monotonic() - t0:.1f} s")
    code, out = ssh_run(
        guest, "id -un; id -u; sudo -n true && echo sudo-ok; systemctl is-enabled ssh.service; ls -1 /boot/firmware"
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:4] == [user, "1000", "sudo-ok", "enabled"], out
    # userconf-pi and sshswitch took their files, as on a card; Imager's firstrun.sh did not run (it removes itself).
    assert "userconf.txt" not in lines[4:] and "ssh" not in lines[4:], out
    assert ("firstrun.sh" in lines[4:]) == (mechanism == "firstrun"), out
    assert emulator.stop(NAME).clean

    done = finalize.finalize(work, write_bmap=False)
    assert "cmdline.txt" in done.undone
    # The card's first boot is the image's own: its cmdline.txt (init= and firstrun's words), firstrun.sh, and no
    # userconf.txt or ssh left to apply a second time.
    assert boot_snapshot(work, tmp_path / "after") == boot_before
    root = ExtFs.partition(work, 2)
    assert root.read_text(layout.INIT_RESIZE) == layout.INIT_STAND_IN.format(name="init_resize.sh")
    assert not root.exists("/var/lib/pibake")
    assert f"{user}:x:1000:1000:" in (root.read_text("/etc/passwd") or "")
    res = run_cli(["image", "check", str(work), "--board", "pi4"])
    assert res.code == 0, res.err
