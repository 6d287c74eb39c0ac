"""A small image shaped like Raspberry Pi OS Lite (Legacy, bullseye, armhf), built without root.

Same partition layout as the real release (MBR, FAT32 'bootfs' at sector 8192, ext4
'rootfs' after it, up to the end), with the files pibake reads or changes: os-release
and rpi-issue, ld.so.preload with raspi-copies-and-fills' line, cmdline.txt with
init_resize.sh, the account files with pi at uid 1000, a dpkg status database and
Python distributions. 64 MiB of FAT and 200 MiB of ext4 instead of 512 MiB and 1.7 GiB.
"""

from __future__ import annotations

import hashlib
import lzma
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pibake.disk.ext4 import ExtFs
from pibake.disk.sparse import copy_extents

MIB = 1 << 20
DISK_ID = 0x3A90E54F
BOOT_START = 8192
BOOT_SECTORS = 64 * MIB // 512
ROOT_START = BOOT_START + BOOT_SECTORS
ROOT_SECTORS = 200 * MIB // 512
SIZE = (ROOT_START + ROOT_SECTORS) * 512
PI_OWNED = ("/home/pi", "/home/pi/.bashrc", "/home/pi/.profile")

CMDLINE = (
    f"console=serial0,115200 console=tty1 root=PARTUUID={DISK_ID:08x}-02 rootfstype=ext4 fsck.repair=yes "
    "rootwait quiet init=/usr/lib/raspi-config/init_resize.sh\n"
)
LD_SO_PRELOAD = "/usr/lib/arm-linux-gnueabihf/libarmmem-${PLATFORM}.so\n"

DPKG_PACKAGES = (
    ("raspberrypi-sys-mods", "20230510", "armhf"),
    ("raspi-copies-and-fills", "0.13", "armhf"),
    ("raspi-config", "20231012~bullseye", "all"),
    ("userconf-pi", "0.7", "all"),
    ("openssh-server", "1:8.4p1-5+deb11u3", "armhf"),
    ("python3", "3.9.2-3", "armhf"),
    ("python3-numpy", "1:1.19.5-1", "armhf"),
    ("libc6", "2.31-13+rpt2+rpi1+deb11u11", "armhf"),
)

REGENERATE_UNIT = "/lib/systemd/system/regenerate_ssh_host_keys.service"
REGENERATE_LINK = "/etc/systemd/system/multi-user.target.wants/regenerate_ssh_host_keys.service"

ROOT_FILES: dict[str, tuple[str, int]] = {
    "/etc/os-release": (
        'PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"\nNAME="Raspbian GNU/Linux"\nVERSION_ID="11"\n'
        'VERSION="11 (bullseye)"\nVERSION_CODENAME=bullseye\nID=raspbian\nID_LIKE=debian\n'
        'HOME_URL="http://www.raspbian.org/"\n',
        0o644,
    ),
    "/etc/rpi-issue": (
        "Raspberry Pi reference 2024-10-22\n"
        "Generated using pi-gen, https://github.com/RPi-Distro/pi-gen, 0123456789abcdef, stage2\n",
        0o644,
    ),
    "/etc/ld.so.preload": (LD_SO_PRELOAD, 0o644),
    # pi-gen leaves it empty: systemd makes each card's id at boot.
    "/etc/machine-id": ("", 0o444),
    # raspberrypi-sys-mods' first-boot host keys, enabled by pi-gen (REGENERATE_LINK); it disables itself once run.
    REGENERATE_UNIT: (
        "[Unit]\nDescription=Regenerate SSH host keys\nBefore=ssh.service\n"
        "ConditionFileIsExecutable=/usr/bin/ssh-keygen\n\n[Service]\nType=oneshot\n"
        "ExecStart=/usr/lib/raspberrypi-sys-mods/regenerate_ssh_host_keys\n\n"
        "[Install]\nWantedBy=multi-user.target\n",
        0o644,
    ),
    "/etc/hostname": ("raspberrypi\n", 0o644),
    "/etc/hosts": (
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\n"
        "ff02::2\t\tip6-allrouters\n\n127.0.1.1\t\traspberrypi\n",
        0o644,
    ),
    "/etc/passwd": (
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "sshd:x:105:65534::/run/sshd:/usr/sbin/nologin\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n",
        0o644,
    ),
    "/etc/shadow": (
        "root:*:19653:0:99999:7:::\ndaemon:*:19653:0:99999:7:::\nsshd:*:19653:0:99999:7:::\npi:*:19653:0:99999:7:::\n",
        0o640,
    ),
    "/etc/group": (
        "root:x:0:\nadm:x:4:pi\nsudo:x:27:pi\nvideo:x:44:pi\nplugdev:x:46:pi\nshadow:x:42:\npi:x:1000:\n",
        0o644,
    ),
    "/etc/gshadow": ("root:*::\nadm:*::pi\nsudo:*::pi\nvideo:*::pi\nplugdev:*::pi\nshadow:*::\npi:!::\n", 0o640),
    "/etc/fstab": (
        "proc            /proc           proc    defaults          0       0\n"
        f"PARTUUID={DISK_ID:08x}-01  /boot           vfat    defaults          0       2\n"
        f"PARTUUID={DISK_ID:08x}-02  /               ext4    defaults,noatime  0       1\n",
        0o644,
    ),
    "/etc/sudoers.d/010_pi-nopasswd": ("pi ALL=(ALL) NOPASSWD: ALL\n", 0o440),
    "/home/pi/.bashrc": ("# ~/.bashrc\n", 0o644),
    "/home/pi/.profile": ("# ~/.profile\n", 0o644),
    "/usr/lib/raspi-config/init_resize.sh": ("#!/bin/sh\n# resizes the root partition, then reboots\n", 0o755),
    # userconf-pi's program (it reads boot:/userconf.txt on the first boot).
    "/usr/lib/userconf-pi/userconf": ("#!/bin/sh\n# renames the first user, sets its password\n", 0o755),
    "/usr/lib/arm-linux-gnueabihf/libarmmem-v7l.so": ("\x7fELF armhf stand-in\n", 0o644),
    "/usr/lib/python3/dist-packages/numpy-1.19.5.egg-info/PKG-INFO": (
        "Metadata-Version: 1.2\nName: numpy\nVersion: 1.19.5\nSummary: NumPy\n",
        0o644,
    ),
    "/usr/lib/python3/dist-packages/RPi.GPIO-0.7.0.egg-info": (
        "Metadata-Version: 1.1\nName: RPi.GPIO\nVersion: 0.7.0\n",
        0o644,
    ),
    "/usr/lib/python3/dist-packages/numpy/__init__.py": ("# numpy\n", 0o644),
}


def dpkg_status(extra: tuple[tuple[str, str, str], ...] = ()) -> str:
    stanzas = []
    for name, version, arch in (*DPKG_PACKAGES, *extra):
        stanzas.append(
            f"Package: {name}\nStatus: install ok installed\nPriority: optional\nArchitecture: {arch}\n"
            f"Version: {version}\nDescription: {name}\n the {name} package\n"
        )
    stanzas.append("Package: removed-thing\nStatus: deinstall ok config-files\nArchitecture: armhf\nVersion: 1.0\n")
    return "\n".join(stanzas)


BOOT_FILES: dict[str, bytes] = {
    "cmdline.txt": CMDLINE.encode(),
    "config.txt": b"# For more options and information see http://rptl.io/configtxt\ndtparam=audio=on\n"
    b"camera_auto_detect=1\ndisplay_auto_detect=1\ndtoverlay=vc4-kms-v3d\nmax_framebuffers=2\n"
    b"arm_boost=1\n\n[cm4]\notg_mode=1\n\n[all]\n",
    "issue.txt": b"Raspberry Pi reference 2024-10-22\n",
    # Incompressible, like a real kernel: the archive gets a few MiB to download and resume.
    "kernel7.img": random.Random(7).randbytes(3 * MIB),
    "start.elf": hashlib.sha256(b"start").digest() * 2048,
    "bootcode.bin": hashlib.sha256(b"bootcode").digest() * 1024,
    "fixup.dat": hashlib.sha256(b"fixup").digest() * 128,
    # Raspberry Pi's own device tree names (the firmware's without upstream_kernel=1).
    "bcm2709-rpi-2-b.dtb": b"\xd0\x0d\xfe\xed" + bytes(2044),
    "bcm2710-rpi-3-b-plus.dtb": b"\xd0\x0d\xfe\xed" + bytes(4092),
    "overlays/README": b"overlays live here\n",
}


# Raspberry Pi OS trixie (2025-10 on): cloud-init takes the first boot's settings from the boot partition's NoCloud
# seed (pi-gen's stage2/04-cloud-init), and cmdline.txt ends in `resize` (rpi-resize) instead of an init=.
CLOUD_INIT_CMDLINE = (
    f"console=serial0,115200 console=tty1 root=PARTUUID={DISK_ID:08x}-02 rootfstype=ext4 fsck.repair=yes "
    "rootwait resize\n"
)
CLOUD_INIT_PACKAGES = (("cloud-init", "25.1.4-1", "all"),)
CLOUD_INIT_ROOT_FILES: dict[str, tuple[str, int]] = {
    "/usr/bin/cloud-init": ("#!/usr/bin/python3\n# cloud-init\n", 0o755),
}
CLOUD_INIT_BOOT_FILES: dict[str, bytes] = {
    "cmdline.txt": CLOUD_INIT_CMDLINE.encode(),
    # pi-gen's stage2/04-cloud-init/files, shortened to their keys (its comments say what each is for).
    "meta-data": b"# This is the meta-data configuration file for cloud-init.\n"
    b"dsmode: local\ninstance_id: rpios-image\n",
    "user-data": b"#cloud-config\n\n# This is the user-data configuration file for cloud-init.\n"
    b"#hostname: raspberrypi\n",
    "network-config": b"# This file contains a netplan-compatible configuration.\n#network:\n#  version: 2\n",
}


def _root_tree(dest: Path, extra: dict[str, tuple[str, int]], packages: tuple[tuple[str, str, str], ...]) -> None:
    for path, (text, mode) in {**ROOT_FILES, **extra}.items():
        target = dest / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)
    status = dest / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(dpkg_status(packages))
    info = dest / "var/lib/dpkg/info"
    info.mkdir()
    for name, _version, arch in (*DPKG_PACKAGES, *packages):
        md5 = hashlib.md5(name.encode()).hexdigest()  # dpkg's own format
        suffix = f":{arch}" if arch != "all" else ""
        (info / f"{name}{suffix}.md5sums").write_text(f"{md5}  usr/share/doc/{name}/copyright\n")
    (dest / "etc/localtime").symlink_to("/usr/share/zoneinfo/Etc/UTC")
    link = dest / REGENERATE_LINK.lstrip("/")
    link.parent.mkdir(parents=True)
    link.symlink_to(REGENERATE_UNIT)
    (dest / "home/pi").chmod(0o755)


def build_image(path: Path, work: Path, *, cloud_init: bool = False) -> Path:
    """Write the Raspberry-Pi-OS-shaped image to PATH (sparse); CLOUD_INIT: trixie's first-boot layout."""
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "rootfs"
    extra_root = CLOUD_INIT_ROOT_FILES if cloud_init else {}
    _root_tree(tree, extra_root, CLOUD_INIT_PACKAGES if cloud_init else ())
    ext4 = work / "root.ext4"
    with ext4.open("wb") as f:
        f.truncate(ROOT_SECTORS * 512)
    subprocess.run(["mkfs.ext4", "-q", "-L", "rootfs", "-d", str(tree), str(ext4)], check=True)
    # mkfs -d copies the builder's owners: make the tree root's, and pi's home pi's.
    root_owned = [p for p in {**ROOT_FILES, **extra_root} if p not in PI_OWNED]
    owners = [f"sif {p} {field} 0" for p in root_owned for field in ("uid", "gid")]
    owners += [f"sif {p} {field} 1000" for p in PI_OWNED for field in ("uid", "gid")]
    owners += [f"sif {p} gid 42" for p in ("/etc/shadow", "/etc/gshadow")]
    for d in ("/etc", "/home", "/usr", "/var", "/var/lib", "/var/lib/dpkg", "/var/lib/dpkg/status", "/etc/localtime"):
        owners += [f"sif {d} uid 0", f"sif {d} gid 0"]
    ExtFs(ext4, 0).debugfs(owners, write=True)

    fat = work / "boot.fat"
    with fat.open("wb") as f:
        f.truncate(BOOT_SECTORS * 512)
    subprocess.run(
        ["mkfs.vfat", "-F", "32", "-n", "bootfs", "-i", f"{DISK_ID:08x}", str(fat)], check=True, capture_output=True
    )
    boot = work / "boot"
    for name, data in {**BOOT_FILES, **(CLOUD_INIT_BOOT_FILES if cloud_init else {})}.items():
        (boot / name).parent.mkdir(parents=True, exist_ok=True)
        (boot / name).write_bytes(data)
    subprocess.run(["mcopy", "-s", "-i", str(fat), *[str(p) for p in sorted(boot.iterdir())], "::/"], check=True)

    with path.open("wb") as f:
        f.truncate(SIZE)
    table = (
        f"label: dos\nlabel-id: 0x{DISK_ID:08x}\nunit: sectors\n\n"
        f"start={BOOT_START}, size={BOOT_SECTORS}, type=c\nstart={ROOT_START}, size={ROOT_SECTORS}, type=83\n"
    )
    subprocess.run(["sfdisk", "--quiet", str(path)], input=table, text=True, check=True)
    copy_extents(fat, 0, path, BOOT_START * 512, BOOT_SECTORS * 512)
    copy_extents(ext4, 0, path, ROOT_START * 512, ROOT_SECTORS * 512)
    fat.unlink()
    ext4.unlink()
    return path


def compress_xz(image: Path, out: Path) -> Path:
    """IMAGE compressed as Raspberry Pi compresses its releases (xz), streaming."""
    with image.open("rb") as src, lzma.open(out, "wb", preset=1) as dst:
        while chunk := src.read(4 * MIB):
            dst.write(chunk)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Release:
    """The fixture release: the image, its .img.xz and the published sha256 of the archive."""

    image: Path
    archive: Path
    archive_sha256: str
    image_sha256: str

    @property
    def sha256_file_text(self) -> str:
        return f"{self.archive_sha256}  {self.archive.name}\n"


def build_release(directory: Path) -> Release:
    directory.mkdir(parents=True, exist_ok=True)
    image = build_image(directory / "2024-10-22-raspios-bullseye-armhf-lite.img", directory / "work")
    archive = compress_xz(image, directory / (image.name + ".xz"))
    return Release(image=image, archive=archive, archive_sha256=sha256(archive), image_sha256=sha256(image))


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512
