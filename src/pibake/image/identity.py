"""What must be unique per device: reset at finalize, so that every card makes its own on its first boot.

An image that was booted (prepare's emulated boot, `pibake demo`, which boots the very file that
becomes the finished image) keeps what that boot made: systemd's machine-id, the SSH host keys,
the random seed, DHCP leases and client ids, cloud-init's instance. Every card flashed from it would
share them: one machine-id (one DHCP client id under systemd-networkd, one node id for cluster
software), one host key. `plan` finds them in the root filesystem, `apply` resets them, and both
bases come back with their own at first boot:

  /etc/machine-id   emptied, as Raspberry Pi OS's pi-gen and Debian's cloud images leave it: systemd
                    makes a new id at boot and commits it once / is writable. Not removed, nor
                    "uninitialized": on systemd 247 (bullseye) either makes the boot a "first boot",
                    which enables every unit the presets name (systemd-networkd, systemd-resolved...)
                    and so boots the card differently from the emulated boot that was tested.
  SSH host keys     removed, once something in the image makes new ones at boot (KEY_MAKERS):
                    pibake's unit in the Debian base, Raspberry Pi OS's
                    regenerate_ssh_host_keys.service (which disables itself once it has run: the
                    first-boot marker finalize puts back). An image with neither is refused rather
                    than left with keys every card would share or with no keys at all.
  the rest          removed (ITEMS): each is made again by the program that owns it.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Literal

from pibake import hostkeys
from pibake.disk.ext4 import Change, DirEntry, ExtFs, Remove, Symlink, WriteFile
from pibake.errors import Refused

log = logging.getLogger(__name__)

MACHINE_ID = "/etc/machine-id"
SSH_DIR = "/etc/ssh"
HOST_KEYS = "ssh_host_*"
CLOUD = "/var/lib/cloud"
# cloud-init's seed (NoCloud data put in the image on purpose) is input, not state: `cloud-init clean` keeps it.
CLOUD_KEEP = f"{CLOUD}/seed"
WANTS = "/etc/systemd/system/multi-user.target.wants"
HOST_KEYS_WHAT = "SSH host keys"


@dataclass(frozen=True)
class Item:
    """Per-device state: the entries of DIRECTORY matching NAMES (files and links, not directories)."""

    what: str
    directory: str
    names: tuple[str, ...]
    remade_by: str


ITEMS = (
    # systemd reads an id from it when /etc/machine-id is empty: a copy would come back on every card.
    Item("dbus machine-id", "/var/lib/dbus", ("machine-id",), "dbus's tmpfiles.d (a link to /etc/machine-id)"),
    Item(HOST_KEYS_WHAT, SSH_DIR, (HOST_KEYS,), "nothing in the image"),
    # credential.secret (systemd 250 and later) encrypts the host's credentials.
    Item("systemd random seed", "/var/lib/systemd", ("random-seed", "credential.secret"), "systemd"),
    # dhclient keeps its DUID in the lease file.
    Item("DHCP leases", "/var/lib/dhcp", ("*",), "isc-dhcp-client"),
    # dhcpcd 9 keeps its DUID and secret here too; dhcpcd 8 (Raspberry Pi OS bullseye) uses dhcpcd5.
    Item("DHCP leases", "/var/lib/dhcpcd", ("*",), "dhcpcd"),
    Item("DHCP leases", "/var/lib/dhcpcd5", ("*",), "dhcpcd"),
    # dhcpcd 8's DUID, and the secret its stable private IPv6 addresses derive from (two cards on one
    # network would take the same address).
    Item("DHCP client id", "/etc", ("dhcpcd.duid", "dhcpcd.secret"), "dhcpcd"),
    # NetworkManager (bookworm and later) derives DUIDs and stable IPv6 addresses from its secret key.
    Item("NetworkManager leases and secret", "/var/lib/NetworkManager", ("*.lease", "secret_key"), "NetworkManager"),
)


@dataclass(frozen=True)
class KeyMaker:
    """Something that makes SSH host keys at boot when there are none."""

    name: str
    paths: tuple[str, ...]  # it is installed when one of these exists
    link: str | None  # its enable link; None: active whenever installed
    reenable: bool  # put back a missing link (the unit disables itself once it has run)


KEY_MAKERS = (
    # pibake's Debian base (image/build.py installs pibake.hostkeys' unit).
    KeyMaker(hostkeys.UNIT, (f"/etc/systemd/system/{hostkeys.UNIT}",), f"{WANTS}/{hostkeys.UNIT}", True),
    # Raspberry Pi OS (raspberrypi-sys-mods, enabled by pi-gen): runs `ssh-keygen -A` and disables itself.
    KeyMaker(
        "regenerate_ssh_host_keys.service",
        (
            "/lib/systemd/system/regenerate_ssh_host_keys.service",
            "/usr/lib/systemd/system/regenerate_ssh_host_keys.service",
        ),
        f"{WANTS}/regenerate_ssh_host_keys.service",
        True,
    ),
    # Debian's own Raspberry Pi images (image-specs).
    KeyMaker(
        "rpi-generate-ssh-host-keys.service",
        ("/etc/systemd/system/rpi-generate-ssh-host-keys.service",),
        "/etc/systemd/system/multi-user.target.requires/rpi-generate-ssh-host-keys.service",
        False,
    ),
    # pibake's Debian base before IMAGE_FORMAT 5: a drop-in that made missing keys before sshd started.
    KeyMaker(
        "ssh.service drop-in pibake-hostkeys.conf",
        ("/etc/systemd/system/ssh.service.d/pibake-hostkeys.conf",),
        None,
        False,
    ),
    # cloud-init's ssh module makes new keys for a new instance (the instance state is reset too).
    KeyMaker("cloud-init", ("/usr/bin/cloud-init",), None, False),
)


@dataclass(frozen=True)
class Reset:
    """One thing reset: PATH in the root filesystem, and how."""

    what: str
    path: str
    action: Literal["emptied", "removed", "enabled"]
    remade_by: str

    def to_json(self) -> dict[str, str]:
        return {"what": self.what, "path": self.path, "action": self.action, "remade_by": self.remade_by}


@dataclass(frozen=True)
class Plan:
    """The changes that reset an image's per-device identity, and what makes SSH host keys on the card."""

    changes: tuple[Change, ...]
    resets: tuple[Reset, ...]
    host_keys_made_by: str | None

    @property
    def summary(self) -> tuple[str, ...]:
        """What was reset, one entry per kind, in table order ("SSH host keys (4)")."""
        counts: dict[str, int] = {}
        for r in self.resets:
            if r.action != "enabled":
                counts[r.what] = counts.get(r.what, 0) + 1
        enabled = [f"{r.path.rsplit('/', 1)[-1]} enabled again" for r in self.resets if r.action == "enabled"]
        return (*(f"{what} ({n})" if n > 1 else what for what, n in counts.items()), *enabled)


def machine_id_is_set(data: bytes | None) -> bool:
    """Does /etc/machine-id hold an id (neither missing, empty, nor systemd's "uninitialized")?"""
    return data is not None and data.strip() not in (b"", b"uninitialized")


def matching(entries: list[DirEntry] | None, names: tuple[str, ...]) -> list[DirEntry]:
    """The files and links among ENTRIES whose names match one of the fnmatch patterns NAMES."""
    return [
        e
        for e in entries or []
        if e.name not in (".", "..") and not e.is_dir and any(fnmatch.fnmatchcase(e.name, n) for n in names)
    ]


def plan(root: ExtFs) -> Plan:
    """What resets the identity of the root filesystem ROOT (nothing is changed yet).

    Raises Refused when host keys would go and nothing in the image makes new ones at boot.
    """
    changes: list[Change] = []
    resets: list[Reset] = []
    maker, enable = _key_maker(root)
    if machine_id_is_set(root.read(MACHINE_ID)):
        changes.append(WriteFile(MACHINE_ID, b""))
        resets.append(Reset("machine-id", MACHINE_ID, "emptied", "systemd, at boot"))

    listings = root.list_dirs(sorted({i.directory for i in ITEMS}))
    for item in ITEMS:
        for entry in matching(listings.get(item.directory), item.names):
            path = f"{item.directory}/{entry.name}"
            changes.append(Remove(path))
            remade_by = f"{maker}, at first boot" if item.what == HOST_KEYS_WHAT and maker else item.remade_by
            resets.append(Reset(item.what, path, "removed", remade_by))

    # cloud-init's instance state, as `cloud-init clean` removes it: all of /var/lib/cloud but the seed.
    cloud = [(p, e) for p, e in root.walk(CLOUD) if p != CLOUD_KEEP and not p.startswith(CLOUD_KEEP + "/")]
    for path, _ in reversed(cloud):  # children before their directories
        changes.append(Remove(path))
    resets += [
        Reset("cloud-init instance state", p, "removed", "cloud-init, for the card's new instance") for p, _ in cloud
    ]

    keys_go = any(r.what == HOST_KEYS_WHAT for r in resets)
    if maker is None:
        if keys_go:
            raise Refused(
                f"{root.image}: finalize removes the SSH host keys a boot left in the image (every card would "
                "share them), but nothing in the image makes new ones at boot, so the card's sshd would not start. "
                f"Install a unit that runs `ssh-keygen -A` when /etc/ssh has no keys ({hostkeys.UNIT} of pibake's "
                "Debian base is one), or build the base again with `pibake image build`"
            )
        log.warning("%s: nothing in the image makes SSH host keys at boot", root.image.name)
    if enable is not None:
        changes.append(enable)
        resets.append(Reset(HOST_KEYS_WHAT, enable.path, "enabled", f"{maker}, at first boot"))
    return Plan(tuple(changes), tuple(resets), maker)


def _key_maker(root: ExtFs) -> tuple[str | None, Symlink | None]:
    """The first of KEY_MAKERS installed in ROOT, and the link to put back if it disabled itself."""
    paths = [p for m in KEY_MAKERS for p in (*m.paths, *([m.link] if m.link else []))]
    found = root.stat_many(paths)
    for maker in KEY_MAKERS:
        installed = next((p for p in maker.paths if found[p] is not None), None)
        if installed is None:
            continue
        if maker.link is None or found[maker.link] is not None:
            return maker.name, None
        if maker.reenable:
            return maker.name, Symlink(maker.link, installed)
    return None, None


def apply(root: ExtFs, reset: Plan) -> None:
    """Make the changes of RESET (one debugfs session, each change checked)."""
    root.apply(list(reset.changes))
    for r in reset.resets:
        log.debug("%s: %s %s (%s)", root.image.name, r.action, r.path, r.what)
