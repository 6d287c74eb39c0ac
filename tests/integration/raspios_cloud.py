"""A bootable image shaped like Raspberry Pi OS trixie (2025-10 on): cloud-init takes the first boot's settings.

Raspberry Pi's own images cannot be downloaded here and their kernel has no virtio drivers, so the
fixture is the Debian-built trixie arm64 base (`make image-arm64`) given what makes a trixie Raspberry
Pi OS image take its settings through cloud-init, as pi-gen's stage2/04-cloud-init and stage1's boot
files make it:

- Debian's cloud-init package, installed in an emulated boot from the mirror (the real thing: its
  systemd units, generator and ds-identify, its modules), reading its NoCloud seed from the FAT
  partition labelled ``bootfs`` as Raspberry Pi OS reads it from its boot partition. How Raspberry
  Pi's rpi-cloud-init-mods arranges that is not available here: NOCLOUD is the fixture's own, in
  cloud-init's documented form, with cloud-init's root growing off (rpi-resize grows the root) and
  its network configuration off (the base's network is ifupdown's, not NetworkManager's);
- pi-gen's ``meta-data`` (``dsmode: local``, its fixed ``instance_id: rpios-image``), ``user-data``
  (comments only) and ``network-config`` (comments only) on the boot partition;
- Raspberry Pi OS's arm64 boot files (``raspios_first_boot.as_raspios_arm64_boot``: pi-gen's config.txt with no
  kernel=, kernel8.img and initramfs8), so the emulated boot runs pibake's virt64 kernel, as `pibake bake` does;
- ``resize`` at the end of cmdline.txt (rpi-resize grows the root partition on the card's first boot);
- ssh.service disabled (pi-gen's default, ENABLE_SSH=0) and no authorized key for pi, so that only
  the user-data can give a login;
- /etc/rpi-issue, which marks Raspberry Pi OS for pibake.

The base with cloud-init installed is built once per base image and kept in the cache
(``$PIBAKE_CACHE/fixtures``): 412 s measured on 2 TCG cores (boot 59 s, then mostly apt installing
cloud-init and its Python dependencies under emulation); the rest is written on each copy.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from pibake.disk.ext4 import ExtFs, WriteFile
from pibake.disk.fat import FatFs
from pibake.disk.sparse import copy_file
from pibake.emulate import guest as emulator
from pibake.emulate.ssh import ssh_run
from pibake.image import finalize, prepare
from pibake.util.cache import cache_root, locked, sha256_file
from tests.integration import raspios, raspios_first_boot

log = logging.getLogger(__name__)

# Bumped when the cached part (cloud-init installed) changes, so a cached one is rebuilt.
RECIPE = 2
NOCLOUD_CFG = "/etc/cloud/cloud.cfg.d/90_pibake-fixture.cfg"
NOCLOUD = """\
# The fixture's stand-in for rpi-cloud-init-mods. NoCloud's seed is on the boot partition (label bootfs).
# The root partition is rpi-resize's to grow, and the network the base's own (ifupdown on eth0).
datasource_list: [NoCloud, None]
datasource:
  NoCloud:
    fs_label: bootfs
growpart:
  mode: "off"
resize_rootfs: false
network:
  config: disabled
"""
RPI_ISSUE = (
    "Raspberry Pi reference 2025-10-01\n"
    "Generated using pi-gen, https://github.com/RPi-Distro/pi-gen, 0123456789abcdef, stage2\n"
)
GUEST_STEPS = """\
set -e
export DEBIAN_FRONTEND=noninteractive
sudo -E apt-get update -q
sudo -E apt-get install -y -q --no-install-recommends cloud-init
sudo apt-get clean
sudo systemctl disable ssh.service
rm -f ~/.ssh/authorized_keys
sudo cloud-init clean --logs
"""


def build(base: Path, dest: Path) -> Path:
    """Write the cloud-init fixture derived from BASE (the trixie arm64 image) to DEST.

    The slow part, BASE with cloud-init installed, is cached by BASE's digest and the guest steps; the layout
    (the NoCloud configuration, the boot files, cmdline.txt's `resize`, /etc/rpi-issue) is written on each copy.
    """
    key = hashlib.sha256(repr([sha256_file(base), RECIPE, GUEST_STEPS]).encode()).hexdigest()[:16]
    cached = cache_root() / "fixtures" / f"trixie-arm64-cloud-init-{key}.img"
    cached.parent.mkdir(parents=True, exist_ok=True)
    with locked(cached.with_suffix(".lock"), "the cloud-init fixture"):
        if not cached.exists():
            _derive(base, cached)
    image = copy_file(cached, dest)
    raspios_first_boot.as_raspios_arm64_boot(image)
    boot = FatFs.partition(image, 1)
    for name in ("meta-data", "user-data", "network-config"):
        boot.write(name, raspios.CLOUD_INIT_BOOT_FILES[name])
    cmdline = (boot.read_text("cmdline.txt") or "").strip()
    boot.write("cmdline.txt", f"{cmdline} resize\n".encode())
    ExtFs.partition(image, 2).apply(
        [
            WriteFile(NOCLOUD_CFG, NOCLOUD.encode(), 0o644, 0, 0),
            WriteFile("/etc/rpi-issue", RPI_ISSUE.encode(), 0o644, 0, 0),
        ]
    )
    return image


def _derive(base: Path, out: Path) -> None:
    work = out.with_name(out.stem + "-work.img")
    copy_file(base, work)
    try:
        prepare.prepare(work)  # the harness's key for pi, ssh.service enabled: the guest steps undo both
        name = "it-cloudinit-fixture"
        guest = emulator.start(work, board="pi4", name=name, persist=True, inventory=None, timeout=600)
        try:
            code, output = ssh_run(guest, GUEST_STEPS, timeout=1800)
            assert code == 0, output[-4000:]
        finally:
            assert emulator.stop(name).clean
        finalize.finalize(work, write_bmap=False)
        for side in work.parent.glob(work.name + ".*"):
            side.unlink()
        work.replace(out)
    finally:
        if work.exists():
            work.unlink()
        shutil.rmtree(emulator.state_dir("it-cloudinit-fixture"), ignore_errors=True)
