"""Raspberry Pi OS's cloud-init first boot, with Debian's real cloud-init: prepare writes the user, key, hostname and
SSH as cloud-init user-data with a new instance, the emulated boot runs cloud-init (which creates the user, installs
the key, sets the hostname and starts sshd: the image ships sshd disabled and no key), and finalize gives the card its
own first boot back: rpi-resize's word in cmdline.txt, and no cloud-init instance state, so each card runs cloud-init
again. The image is tests/integration/raspios_cloud.py's: the trixie arm64 base made to take its settings as
Raspberry Pi OS trixie does, booted on virt64 with the Pi 4's Cortex-A72."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from pibake import kernel
from pibake.disk.ext4 import ExtFs
from pibake.disk.fat import FatFs
from pibake.emulate import guest as emulator
from pibake.emulate.ssh import ssh_run
from pibake.image import finalize
from tests.conftest import run_cli
from tests.integration import raspios_cloud

pytestmark = pytest.mark.emulator

NAME = "it-cloud-init"
GUEST_FACTS = (
    "id -un; hostname; sudo -n true && echo sudo-ok; systemctl is-enabled ssh.service; "
    "cloud-init status --format json; sudo cat /var/lib/cloud/data/instance-id"
)


def test_cloud_init_gives_the_prepared_user_a_login_and_the_card_its_first_boot_back(
    arm64_image: Path, virt64_kernel: kernel.KernelBuild, tmp_path: Path, stop_guests: list[str]
) -> None:
    base = raspios_cloud.build(arm64_image, tmp_path / "trixie-cloud-init.img")
    base_cmdline = FatFs.partition(base, 1).read_text("cmdline.txt") or ""
    assert base_cmdline.split()[-1] == "resize"
    work = tmp_path / "work.img"
    res = run_cli(["image", "prepare", str(base), "-o", str(work), "--user", "alice", "--hostname", "pibake-ci"])
    assert res.code == 0, res.err
    assert "boot:/user-data (cloud-init on first boot: user alice, SSH key, hostname pibake-ci, SSH on)" in res.out
    boot = FatFs.partition(work, 1)
    instance = yaml.safe_load(boot.read_text("meta-data") or "")["instance-id"]
    user_data = boot.read("user-data")

    stop_guests.append(NAME)
    t0 = time.monotonic()
    guest = emulator.start(
        work, board="pi4", name=NAME, persist=True, inventory=None, user="alice", timeout=900,
        kernel=virt64_kernel.kernel,
    )  # fmt: skip
    print(f"cold boot with cloud-init's first run to SSH as alice: {time.monotonic() - t0:.1f} s")
    code, out = ssh_run(guest, GUEST_FACTS, timeout=300)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:4] == ["alice", "pibake-ci", "sudo-ok", "enabled"], out
    status = json.loads("\n".join(lines[4:-1]))
    assert status["status"] == "done" and not status.get("errors"), status
    assert lines[-1] == instance  # cloud-init ran as the instance prepare named
    assert emulator.stop(NAME).clean

    done = finalize.finalize(work, write_bmap=False)
    assert "cloud-init instance state" in " ".join(done.identity_reset), done.identity_reset
    boot, root = FatFs.partition(work, 1), ExtFs.partition(work, 2)
    assert boot.read_text("cmdline.txt") == base_cmdline  # the card's first boot resizes its root
    assert boot.read("user-data") == user_data  # ...and runs cloud-init again, as a new machine, with the same settings
    assert not root.exists("/var/lib/cloud/instance") and not root.exists("/var/lib/cloud/data/instance-id")
    assert "alice:" in (root.read_text("/etc/passwd") or "")
    res = run_cli(["image", "check", str(work), "--board", "pi4"])  # the card boots a Pi 4
    assert res.code == 0, res.err
