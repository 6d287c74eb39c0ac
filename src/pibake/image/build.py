"""Build a Raspberry-Pi-OS-shaped image from Debian packages (armhf or arm64), without loop mounts.

Stages, each cached under a hash of its inputs:
  rootfs  mmdebstrap through qemu-user binfmt      (cache/rootfs/<hash>/root)
  image   customise a copy, assemble MBR + FAT + ext4 (cache/images/<hash>/image.img)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pibake import boards, hostkeys
from pibake.boards import DEFAULT_BOARD
from pibake.boards import firmware as piboot
from pibake.disk.layout import MIB, Layout, partuuid
from pibake.disk.sparse import match_free_space, write_at
from pibake.emulate import sshkey
from pibake.errors import CommandFailed, PibakeError, ToolMissing, UsageError
from pibake.util import progress
from pibake.util.cache import cache_root, locked, recipe_hash, sha256_file
from pibake.util.proc import run
from pibake.util.publish import publish

log = logging.getLogger(__name__)

# Bump when the way a stage turns its recipe into bytes changes, so caches rebuild.
# 2: mmdebstrap (the suite with its -updates and -security when no mirror is named), initramfs made once.
ROOTFS_FORMAT = 2
# 5: SSH host keys made by pibake.hostkeys' unit (fingerprints on the console), not an ssh.service drop-in.
# 6: holes exactly where ext4 and FAT record free space (disk.sparse.match_free_space), written zeros kept.
# 7: the boot partition is a systemd automount (BOOT_MOUNT_OPTIONS): boots do not wait for its device;
#    e2scrub_reap.service masked.
IMAGE_FORMAT = 7

BASE_PACKAGES = (
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "netbase",
    "ca-certificates",
    "openssh-server",
    "sudo",
    "procps",
    "python3",
    "python3-numpy",
    "python3-pil",
    "python3-pip",
    # The model service's HTTP stack (roles/inference_service): in the image, so that a Pi with no
    # network at first boot serves, and the role installs nothing over the network.
    "python3-uvicorn",
    "python3-prometheus-client",
    "linux-image-armmp",
    "initramfs-tools",
    # The Pi's GPU firmware (bootcode.bin, start*.elf, fixup*.dat), from non-free: its
    # kernel hooks copy the kernel, initrd and Pi device trees to /boot/firmware.
    "raspi-firmware",
)

# The Pi's Wi-Fi, as Debian's own Raspberry Pi images carry it (image-specs: wpasupplicant, firmware-brcm80211, and a
# /etc/network/interfaces.d/wlan0 for ifupdown): wpa_supplicant with its ifupdown hooks, the Pi's Broadcom Wi-Fi
# firmware (non-free on bullseye, non-free-firmware from bookworm on), and the signed regulatory database cfg80211
# needs to apply a country at all. In the current bases' root filesystems with `locales` (glibc's locale data and
# locale-gen, which Raspberry Pi OS carries too), so that a bake with system.locale or [system.wifi] downloads and
# unpacks nothing on the emulated Pi (measured: about 4 of test_arm64's 11 min); pibake bake installs whichever is
# missing, which on the legacy bullseye base is all of them.
WIFI_PACKAGES = ("wpasupplicant", "firmware-brcm80211", "wireless-regdb")
SYSTEM_SETTING_PACKAGES = ("locales", *WIFI_PACKAGES)

# The arm64 base: Debian's generic arm64 kernel (a plain Image with every Pi's device tree under broadcom/),
# python3-venv (PEP 668: trixie's system Python is externally managed; venvs with pip of their own), and the Pi
# firmware from non-free-firmware, where Debian moved it in bookworm.
ARM64_PACKAGES = (
    *(p for p in BASE_PACKAGES if p != "linux-image-armmp"),
    "linux-image-arm64",
    "python3-venv",
    *SYSTEM_SETTING_PACKAGES,
)

# The bookworm armhf base: bullseye's list and python3-venv, for the runtime's venv (PEP 668: bookworm's system Python
# is externally managed). Every name is in bookworm's armhf Packages index (main; raspi-firmware in non-free-firmware,
# 1.20220830+ds-1, which bookworm moved it to from non-free), checked 2026-11-30 against Debian 12.15:
# linux-image-armmp 6.1.176-1 (linux-image-6.1.0-50-armmp, the Pi 2/3/3B+/Zero 2 W/4 device trees in
# /usr/lib/linux-image-6.1.0-50-armmp/), python3 3.11.2, python3-numpy 1.24.2, python3-venv 3.11.2; and
# `debootstrap --download-only --variant=minbase --components=main,non-free-firmware` resolved the whole list
# (223 packages, 122 MB; nothing installed). SYSTEM_SETTING_PACKAGES were added after that check (bookworm has each:
# firmware-brcm80211 in non-free-firmware).
BOOKWORM_ARMHF_PACKAGES = (*BASE_PACKAGES, "python3-venv", *SYSTEM_SETTING_PACKAGES)

# The mainline series of each suite's kernel packages (linux-image-armmp, linux-image-arm64), as Debian's archive has
# them: bullseye 5.10.x, bookworm 6.1.x, trixie 6.12.x. A board whose device tree reached mainline after a suite's
# series is refused for it (boards.firmware.require_debian_board).
DEBIAN_LINUX = {"bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12"}


def suite_linux(suite: str) -> str:
    """The Linux series of SUITE's kernel (DEBIAN_LINUX); UsageError for a suite pibake knows no kernel of."""
    try:
        return DEBIAN_LINUX[suite]
    except KeyError:
        raise UsageError(f"no kernel series known for Debian {suite}: known suites {', '.join(DEBIAN_LINUX)}") from None


@dataclass(frozen=True)
class Base:
    """A Debian base ``pibake image build --base NAME`` makes: its suite and architecture, as mmdebstrap takes them."""

    name: str
    suite: str
    arch: str  # Debian architecture: armhf or arm64
    python: str  # the suite's python3, e.g. "3.13" (Debian's package pages)
    packages: tuple[str, ...]
    components: tuple[str, ...]
    # Why the base is legacy (printed when it is built); None: a current one.
    legacy: str | None = None
    # Whether Debian's security archive still has the suite for this architecture (the SUITE-security source).
    security: bool = True

    @property
    def linux(self) -> str:
        """The Linux series of the base's kernel, e.g. "6.1" (DEBIAN_LINUX)."""
        return suite_linux(self.suite)

    def describe(self) -> str:
        return f"Debian {self.suite} {self.arch} (Python {self.python})"


BASES: dict[str, Base] = {
    b.name: b
    for b in (
        Base(
            name="debian-trixie-arm64",
            suite="trixie",
            arch="arm64",
            python="3.13",
            packages=ARM64_PACKAGES,
            components=("main", "non-free-firmware"),
        ),
        Base(
            name="debian-bookworm-armhf",
            suite="bookworm",
            arch="armhf",
            python="3.11",
            packages=BOOKWORM_ARMHF_PACKAGES,
            # raspi-firmware is in bookworm's non-free-firmware, not in its non-free (their Packages indexes).
            components=("main", "non-free-firmware"),
        ),
        Base(
            name="debian-bullseye",
            suite="bullseye",
            arch="armhf",
            python="3.9",
            packages=BASE_PACKAGES,
            components=("main", "non-free"),
            legacy="Debian bullseye's long-term support ended in August 2026 (Debian LTS): no security updates",
            # bullseye-security's armhf indexes answer 404 since LTS ended (measured here 2026-11-30).
            security=False,
        ),
    )
}

# The base a board gets when none is named (default_base): the 64-bit one on a board with a 64-bit core, the current
# 32-bit one on the others. The legacy bullseye base only when it is named.
DEFAULT_BASE_64 = "debian-trixie-arm64"
DEFAULT_BASE_32 = "debian-bookworm-armhf"


def default_base(board: str) -> str:
    """The Debian base BOARD gets when none is named: DEFAULT_BASE_64 where the board table gives it a 64-bit core
    (Board.cpu64: the Pi 3 family, Zero 2 W, Pi 4), DEFAULT_BASE_32 elsewhere (the Pi 2; the ARMv6 boards, which
    require_debian_board then refuses with what to use). UsageError for an unknown board."""
    return DEFAULT_BASE_64 if boards.get(board).cpu64 is not None else DEFAULT_BASE_32


FIRMWARE_PATTERNS = ("bootcode.bin", "start*.elf", "fixup*.dat")

# Searched under the kernel's dtb directory and its vendor subdirectories (arm64 keeps them in broadcom/).
DTB_PATTERNS = (
    "bcm2835-rpi-*.dtb",
    "bcm2836-rpi-*.dtb",
    "bcm2837-rpi-*.dtb",
    "bcm2711-rpi-*.dtb",
    "vexpress-v2p-*.dtb",
)


@dataclass(frozen=True)
class DebianBase:
    """What mmdebstrap installs: the recipe of the rootfs stage."""

    suite: str = "bullseye"
    arch: str = "armhf"
    packages: tuple[str, ...] = BASE_PACKAGES
    components: tuple[str, ...] = ("main", "non-free")
    # None: mmdebstrap's own default mirror. Set with --mirror or $PIBAKE_DEBIAN_MIRROR.
    mirror: str | None = None
    # With the default mirror: also the SUITE-security source (Base.security; the defaults are bullseye's, which has
    # none left for armhf).
    security: bool = False

    def key(self) -> dict[str, object]:
        return {"format": ROOTFS_FORMAT, **asdict(self)}

    @property
    def linux(self) -> str:
        """The Linux series of the suite's kernel (DEBIAN_LINUX); not part of the key, which the suite decides."""
        return suite_linux(self.suite)


@dataclass(frozen=True)
class ImageSpec:
    """Everything that decides the bytes of the finished base image."""

    base: DebianBase = field(default_factory=DebianBase)
    size_mb: int = 2048
    boot_mb: int = 256
    hostname: str = "raspberrypi"
    user: str = "pi"
    ssh_pubkey: str = ""
    # The board config.txt and cmdline.txt are written for (the FAT holds every Pi DTB anyway).
    board: str = DEFAULT_BOARD

    def __post_init__(self) -> None:
        piboot.require_debian_board(self.board, arch=self.base.arch, linux=self.base.linux)

    @property
    def layout(self) -> Layout:
        return Layout(total_mb=self.size_mb, boot_mb=self.boot_mb)

    def key(self) -> dict[str, object]:
        return {
            "format": IMAGE_FORMAT,
            "rootfs": recipe_hash(self.base.key()),
            "size_mb": self.size_mb,
            "boot_mb": self.boot_mb,
            "hostname": self.hostname,
            "user": self.user,
            "ssh_pubkey": self.ssh_pubkey,
            "board": self.board,
        }

    @property
    def disk_id(self) -> int:
        """The MBR disk signature: derived from the recipe so a rebuild gives the same PARTUUIDs."""
        return int(recipe_hash(self.key())[:8], 16) or 1


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    sha256: str
    disk_id: int
    kernel_version: str
    cached: bool
    seconds: float


def default_spec(
    *, base: str | None = None, size_mb: int = 2048, mirror: str | None = None, board: str = DEFAULT_BOARD
) -> ImageSpec:
    """The recipe ``pibake image build`` makes of BASE (None: default_base(BOARD)) for BOARD.

    Raises UsageError for an unknown base or board, or a board the base cannot boot, before any work.
    """
    if base is None:
        base = default_base(board)
    if base not in BASES:
        raise UsageError(f"unknown base {base!r}; known bases: {', '.join(sorted(BASES))}")
    release = BASES[base]
    # Before anything else: no key made, nothing downloaded.
    piboot.require_debian_board(board, arch=release.arch, linux=release.linux)
    if release.legacy:
        log.warning("base %s is legacy: %s", base, release.legacy)
    mirror = mirror or os.environ.get("PIBAKE_DEBIAN_MIRROR") or None
    return ImageSpec(
        base=DebianBase(
            suite=release.suite,
            arch=release.arch,
            packages=release.packages,
            components=release.components,
            mirror=mirror,
            security=release.security,
        ),
        size_mb=size_mb,
        ssh_pubkey=sshkey.ensure_keypair().public_key,
        board=board,
    )


def build(
    *,
    base: str | None = None,
    size_mb: int = 2048,
    mirror: str | None = None,
    board: str = DEFAULT_BOARD,
    output: Path | None = None,
    rebuild: bool = False,
) -> BuiltImage:
    """What ``pibake image build`` does: the default recipe for BASE (None: default_base(BOARD)) and BOARD, built (or
    taken from the cache).

    SIZE_MB is the whole image in MiB; MIRROR a Debian mirror URL (default: $PIBAKE_DEBIAN_MIRROR, else
    mmdebstrap's own). Raises UsageError for a base or board pibake cannot build, PibakeError
    when a build step fails.
    """
    spec = default_spec(base=base, size_mb=size_mb, mirror=mirror, board=board)
    return build_image(spec, output=output, rebuild=rebuild)


# ---------------------------------------------------------------- binfmt


# Debian architecture -> the binfmt_misc entry (qemu-user-static's) that runs its binaries here.
BINFMT = {"armhf": "qemu-arm", "arm64": "qemu-aarch64"}


def ensure_binfmt(arch: str = "armhf") -> None:
    """Make sure ARCH's binaries (a Debian architecture: armhf, arm64) run on this host through qemu-user.

    Registering needs root once. Raises ToolMissing when it is not registered and cannot be.
    """
    name = BINFMT[arch]
    entry = Path("/proc/sys/fs/binfmt_misc") / name
    if entry.exists() and entry.read_text().startswith("enabled"):
        return
    if os.geteuid() != 0:
        raise ToolMissing(f"{name} binfmt is not registered and registering it needs root: run `make deps` as root")
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"])
    run(["update-binfmts", "--enable", name])
    if not entry.exists():
        raise ToolMissing(f"update-binfmts did not register {name}: is qemu-user-static installed?")


# ---------------------------------------------------------------- rootfs stage


def build_rootfs(base: DebianBase) -> Path:
    """Debootstrap the base into the cache (or return the cached tree)."""
    key = recipe_hash(base.key())
    top = cache_root() / "rootfs" / key
    if (top / "complete").exists():
        log.info("rootfs %s: cached", key[:12])
        return top / "root"
    with locked(top.with_name(key + ".lock"), f"rootfs {key[:12]}"):
        return _build_rootfs_locked(base, key, top)


# mmdebstrap's hooks (its manual, HOOKS): shell snippets run with the root tree as "$1".
# Merged /usr as debootstrap makes it for bullseye and later (its setup_merged_usr): the symlinks exist before the
# first package is unpacked. bookworm's and trixie's own packages make the same links.
MERGED_USR_HOOK = 'for d in bin sbin lib; do mkdir -p "$1/usr/$d"; ln -s "usr/$d" "$1/$d"; done'
# A suite the security archive no longer has: its line taken out of the sources before apt's first update.
NO_SECURITY_HOOK = 'sed -i "/-security /d" "$1/etc/apt/sources.list"'
# The initramfs is made once, at the end. Installing the kernel, initramfs-tools and raspi-firmware each ask
# update-initramfs for one, and each run of mkinitramfs with MODULES=most takes 4-12 min under qemu-user (measured
# here: 264 s for trixie arm64's, 12 min for bookworm armhf's; debootstrap ran it two or three times a build).
# Diverted to true once the essential packages are in, restored before the last step.
INITRAMFS_OFF_HOOK = (
    'chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs'
    ' && ln -s /bin/true "$1/usr/sbin/update-initramfs"'
)
INITRAMFS_ON_HOOK = (
    'rm "$1/usr/sbin/update-initramfs"'
    ' && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs'
    ' && chroot "$1" update-initramfs -c -k all'
)
# mmdebstrap's own hooks (in bookworm's mmdebstrap 1.3.5): dpkg under eatmydata while it installs (no fsync per
# file), removed at the end.
EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")


def mmdebstrap_argv(base: DebianBase, root: Path) -> list[str]:
    """The mmdebstrap command that builds BASE's root filesystem into ROOT (which must not exist or be empty).

    Without a mirror mmdebstrap takes its default one with the suite's -updates and -security suites (its manual,
    MIRROR), the latter left out when BASE.security is false; with one, that mirror's SUITE alone.
    """
    argv = [
        "mmdebstrap",
        # dpkg's and apt's own lines ("Setting up python3-numpy ..."): its progress bars need a terminal, and without
        # either its 15-30 min of installing print nothing (progress.step shows the latest line).
        "--verbose",
        "--mode=root",
        f"--arch={base.arch}",
        "--variant=minbase",
        f"--components={','.join(base.components)}",
        f"--include={','.join(base.packages)}",
        f"--setup-hook={MERGED_USR_HOOK}",
        *([] if base.security else [f"--setup-hook={NO_SECURITY_HOOK}"]),
        f"--essential-hook={INITRAMFS_OFF_HOOK}",
        f"--customize-hook={INITRAMFS_ON_HOOK}",
        f"--hook-dir={EATMYDATA_HOOKS}",
        base.suite,
        str(root),
    ]
    if base.mirror:
        argv.append(base.mirror)
    return argv


# apt's words for an index whose size or digest differs from its Release file's (apt's acquire-item.cc): a mirror
# caught between two syncs. Seen here 2026-11-30 on bookworm-security's armhf Packages, the same for an hour.
MIRROR_SYNC = "Mirror sync in progress?"


def mirror_sync_hint(base: DebianBase) -> str:
    """What to do when apt found a mirror of BASE's suites mid-sync (MIRROR_SYNC in mmdebstrap's output)."""
    return (
        f"mmdebstrap {base.suite} {base.arch}: apt found an index on the Debian mirror that does not match its "
        f'Release file ("{MIRROR_SYNC}", in the output above): the mirror is between two syncs. Run again later '
        "(the next build removes the unfinished root), or name one mirror with --mirror URL (or "
        f"$PIBAKE_DEBIAN_MIRROR), which takes the suite alone, without {base.suite}-updates and {base.suite}-security"
    )


def _unmount_under(top: Path) -> None:
    """Unmount what a killed mmdebstrap left mounted under TOP (its /proc, /sys, /dev/pts), deepest first, so that
    removing the tree cannot reach into them."""
    prefix = os.fspath(top.resolve()) + "/"
    points = [
        line.split()[1].encode().decode("unicode_escape")
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1].startswith(prefix)
    ]
    for point in sorted(points, key=len, reverse=True):
        run(["umount", "--lazy", point])


def _build_rootfs_locked(base: DebianBase, key: str, top: Path) -> Path:
    root = top / "root"
    if (top / "complete").exists():  # built by the process we waited for
        log.info("rootfs %s: cached", key[:12])
        return root
    if os.geteuid() != 0:
        raise PibakeError("building the root filesystem runs mmdebstrap as root: run as root (or sudo)")
    ensure_binfmt(base.arch)
    if top.exists():
        log.info("rootfs %s: removing an unfinished earlier attempt", key[:12])
        _unmount_under(top)
        shutil.rmtree(top)
    top.mkdir(parents=True)
    log.info("rootfs %s: mmdebstrap %s %s (10-25 min under qemu-user)", key[:12], base.suite, base.arch)
    start = time.monotonic()
    argv = mmdebstrap_argv(base, root)
    with progress.step(f"rootfs {key[:12]}: {argv[0]} {base.suite} {base.arch}", logger=log) as status:
        # Named by base: `make images` builds two at once, and CI's plain log interleaves their lines.
        try:
            run(argv, stream=True, on_line=lambda line: status.output(f"{base.suite} {base.arch}: {line}"))
        except CommandFailed as e:
            if MIRROR_SYNC in e.output:
                raise PibakeError(mirror_sync_hint(base)) from e
            raise
    # Downloaded .debs are not part of the image.
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    (top / "recipe.json").write_text(json.dumps(base.key(), indent=2, sort_keys=True))
    (top / "complete").write_text(f"{time.monotonic() - start:.0f} s\n")
    log.info("rootfs %s: done in %.0f s", key[:12], time.monotonic() - start)
    return root


# ---------------------------------------------------------------- customisation


def _kernel_files(root: Path) -> tuple[Path, Path, str]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise PibakeError(f"no kernel in {root / 'boot'}: linux-image-armmp/arm64 missing from the package list?")
    kernel = kernels[-1]
    version = kernel.name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise PibakeError(f"no initrd for kernel {version}: initramfs-tools missing from the package list?")
    return kernel, initrd, version


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise PibakeError(f"user {user} was not created in the image")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def kernel_cmdline(disk_id: int, *, board: str = DEFAULT_BOARD) -> str:
    return piboot.kernel_cmdline(f"PARTUUID={partuuid(disk_id, 2)}", board)


def raspi_firmware_defaults(disk_id: int, *, board: str = DEFAULT_BOARD) -> str:
    """Lines for /etc/default/raspi-firmware: when a kernel upgrade on the Pi makes raspi-firmware's
    hooks rewrite config.txt and cmdline.txt, they keep pibake's root= and consoles."""
    consoles = [t.removeprefix("console=") for t in kernel_cmdline(disk_id, board=board).split() if "console=" in t]
    return (
        "\n# Added by pibake: the root partition and consoles of the image's own cmdline.txt.\n"
        f"ROOTPART=PARTUUID={partuuid(disk_id, 2)}\n"
        f'CONSOLES="{" ".join(consoles)}"\n'
    )


# The boot partition is mounted when first used (a systemd automount), so that nothing at boot waits for it:
# sshd is ordered after local-fs.target, which otherwise waits for the FAT's device to appear. On the emulated
# virt board that device came 52 s after udev's coldplug started (measured: the serial console's "A start job is
# running for /dev/disk/by-partuuid/...-01"); nothing a Pi starts at boot reads the boot partition, and apt's
# kernel and firmware hooks, which write it, mount it by using it.
BOOT_MOUNT_OPTIONS = "defaults,noauto,x-systemd.automount"


def fstab(disk_id: int) -> str:
    return (
        "proc            /proc           proc    defaults          0       0\n"
        f"PARTUUID={partuuid(disk_id, 1)}  /boot/firmware  vfat    {BOOT_MOUNT_OPTIONS}  0       2\n"
        f"PARTUUID={partuuid(disk_id, 2)}  /               ext4    defaults,noatime  0       1\n"
    )


def customise(root: Path, spec: ImageSpec) -> None:
    """Turn a bootstrapped tree into a Raspberry-Pi-OS-shaped system for user SPEC.user."""
    disk_id = spec.disk_id
    _write(root / "etc/hostname", spec.hostname + "\n")
    _write(
        root / "etc/hosts",
        f"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{spec.hostname}\n",
    )
    _write(root / "etc/fstab", fstab(disk_id))
    # /boot/firmware is the FAT partition's mount point: what raspi-firmware's hooks put
    # there at build time goes to the FAT (boot_files), not under the mount point.
    firmware_dir = root / "boot/firmware"
    shutil.rmtree(firmware_dir, ignore_errors=True)
    firmware_dir.mkdir(parents=True)
    defaults = root / "etc/default/raspi-firmware"
    _write(
        defaults,
        (defaults.read_text() if defaults.exists() else "") + raspi_firmware_defaults(disk_id, board=spec.board),
    )
    # raspi-firmware appends this file to the config.txt it writes: the board mark survives kernel upgrades.
    arm_64bit = int(spec.base.arch == "arm64")
    _write(root / "etc/default/raspi-firmware-custom", f"{piboot.BOARD_MARK} {spec.board}\narm_64bit={arm_64bit}\n")
    # eth0 on virt/vexpress, usb0 (cdc_ether) on raspi2b.
    _write(
        root / "etc/network/interfaces.d/pibake",
        "allow-hotplug eth0\niface eth0 inet dhcp\n\nallow-hotplug usb0\niface usb0 inet dhcp\n",
    )
    # The build host's resolver, if the builder left it: the guest gets its own from DHCP.
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    # Empty machine-id: every card gets its own on first boot.
    _write(root / "etc/machine-id", "")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)

    run(
        [
            "chroot",
            str(root),
            "useradd",
            "--create-home",
            "--shell",
            "/bin/bash",
            "--groups",
            "adm,sudo,video,plugdev",
            spec.user,
        ]
    )
    # '*' matches no password: key login only (a '!' lock would also block keys without PAM).
    run(["chroot", str(root), "usermod", "--password", "*", spec.user])
    uid, gid = _passwd_ids(root, spec.user)
    ssh_dir = root / "home" / spec.user / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    _write(ssh_dir / "authorized_keys", spec.ssh_pubkey.strip() + "\n", 0o600)
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, uid, gid)
    _write(root / f"etc/sudoers.d/010_{spec.user}-nopasswd", f"{spec.user} ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    _write(
        root / "etc/ssh/sshd_config.d/pibake.conf",
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        + "".join(f"HostKey /etc/ssh/ssh_host_{t}_key\n" for t in hostkeys.KEY_TYPES),
    )
    # Host keys made at build time would be shared by every card: each device makes its own on
    # its first boot (Debian's openssh-server makes them at install, never at boot) and prints
    # their fingerprints on its consoles. The unit and its script are pibake.hostkeys'.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(root / hostkeys.SCRIPT.lstrip("/"), hostkeys.script_text(), 0o755)
    _write(root / "etc/systemd/system" / hostkeys.UNIT, hostkeys.unit_text())
    # e2scrub_reap removes the LVM snapshots an interrupted e2scrub leaves; a card has no LVM, so there is never one
    # to remove, and the unit took 12.5 s of CPU in every emulated boot (systemd-analyze blame). Masked.
    mask = root / "etc/systemd/system/e2scrub_reap.service"
    mask.unlink(missing_ok=True)
    mask.symlink_to("/dev/null")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / hostkeys.UNIT).unlink(missing_ok=True)
    (wants / hostkeys.UNIT).symlink_to(f"/etc/systemd/system/{hostkeys.UNIT}")


def _firmware_files(root: Path) -> list[Path]:
    """The GPU firmware raspi-firmware's kernel hooks put in /boot/firmware (else the package's own copy)."""
    for where in (root / "boot/firmware", root / "usr/lib/raspi-firmware"):
        found = sorted(p for pattern in FIRMWARE_PATTERNS for p in where.glob(pattern))
        if found:
            return found
    raise PibakeError(
        f"no Raspberry Pi firmware (bootcode.bin, start*.elf) in {root / 'boot/firmware'}: "
        "is raspi-firmware in the package list and non-free in the components?"
    )


def boot_files(root: Path, boot: Path, disk_id: int, *, board: str = DEFAULT_BOARD, arch: str = "armhf") -> str:
    """Fill the FAT partition's staging dir as Debian's raspi images have it; return the kernel version.

    Call before customise() empties the rootfs's /boot/firmware.
    """
    kernel, initrd, version = _kernel_files(root)
    boot.mkdir(parents=True, exist_ok=True)
    for blob in _firmware_files(root):
        shutil.copyfile(blob, boot / blob.name)
    # Versioned names, as raspi-firmware's hooks write them, so a kernel upgrade on the Pi
    # replaces them the same way.
    shutil.copyfile(kernel, boot / kernel.name)
    shutil.copyfile(initrd, boot / initrd.name)
    # Device trees: every Pi board's (the firmware picks the one of the board it runs on)
    # and the emulated vexpress boards'.
    dtb_dir = root / "usr/lib" / f"linux-image-{version}"
    for pattern in DTB_PATTERNS:
        for dtb in sorted(dtb_dir.rglob(pattern)):
            shutil.copyfile(dtb, boot / dtb.name)
    _write(boot / "cmdline.txt", kernel_cmdline(disk_id, board=board) + "\n")
    _write(boot / "config.txt", piboot.config_txt(board, kernel=kernel.name, initrd=initrd.name, arch=arch))
    return version


# ---------------------------------------------------------------- assembly


def assemble(out: Path, layout: Layout, disk_id: int, root: Path, boot: Path, work: Path) -> None:
    """MBR + FAT32 'bootfs' + ext4 'rootfs' in a plain file: no loop devices, no mounts."""
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(layout.total_mb * MIB)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)], input_text=layout.sfdisk_script(disk_id))
    fat = work / "boot.fat"
    with fat.open("wb") as f:
        f.truncate(layout.boot.nbytes)
    run(["mkfs.vfat", "-F", "32", "-n", "bootfs", "-i", f"{disk_id:08x}", str(fat)])
    run(["mcopy", "-s", "-p", "-m", "-i", str(fat), *[str(p) for p in sorted(boot.iterdir())], "::/"])
    ext4 = work / "root.ext4"
    with ext4.open("wb") as f:
        f.truncate(layout.root.nbytes)
    run(["mkfs.ext4", "-q", "-L", "rootfs", "-d", str(root), str(ext4)])
    write_at(fat, out, layout.boot.offset)
    write_at(ext4, out, layout.root.offset)
    fat.unlink()
    ext4.unlink()
    # mke2fs left ext4's inode tables and journal as holes it counts as zeroed: make them data,
    # so that a block map of the image leaves out nothing but free space.
    match_free_space(out)


def build_image(spec: ImageSpec, *, output: Path | None = None, rebuild: bool = False) -> BuiltImage:
    """Build (or take from the cache) the base image for SPEC; copy it to OUTPUT if given."""
    spec.layout  # noqa: B018 - validates sizes before any work or lock
    key = recipe_hash(spec.key())
    with locked(cache_root() / "images" / f"{key}.lock", f"image {key[:12]}"):
        return _build_image_locked(spec, key, output=output, rebuild=rebuild)


def _build_image_locked(spec: ImageSpec, key: str, *, output: Path | None, rebuild: bool) -> BuiltImage:
    start = time.monotonic()
    layout = spec.layout
    top = cache_root() / "images" / key
    image = top / "image.img"
    cached = (top / "meta.json").exists() and not rebuild
    if not cached:
        root_src = build_rootfs(spec.base)
        tmp = top.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            log.info("image %s: customising a copy of the rootfs", key[:12])
            root = tmp / "root"
            run(["cp", "-a", str(root_src), str(root)])
            version = boot_files(root, tmp / "boot", spec.disk_id, board=spec.board, arch=spec.base.arch)
            customise(root, spec)
            log.info(
                "image %s: assembling %d MiB (bootfs %d MiB, rootfs %d MiB)",
                key[:12],
                layout.total_mb,
                layout.boot_mb,
                layout.root_mb,
            )
            assemble(tmp / "image.img", layout, spec.disk_id, root, tmp / "boot", tmp)
            shutil.rmtree(root)
            shutil.rmtree(tmp / "boot")
            digest = sha256_file(tmp / "image.img")
            meta = {"sha256": digest, "disk_id": spec.disk_id, "kernel_version": version, "recipe": spec.key()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            shutil.rmtree(top, ignore_errors=True)
            tmp.rename(top)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        log.info("image %s: cached", key[:12])
    meta = json.loads((top / "meta.json").read_text())
    result = image
    if output is not None:
        result = publish(image, output, meta["sha256"])
    return BuiltImage(
        path=result,
        sha256=meta["sha256"],
        disk_id=meta["disk_id"],
        kernel_version=meta["kernel_version"],
        cached=cached,
        seconds=time.monotonic() - start,
    )


# ---------------------------------------------------------------- reading images
