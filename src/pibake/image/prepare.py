"""Prepare a base image (Raspberry Pi OS or the Debian-built one) for emulation and provisioning.

Everything happens on the image file: no loop devices, no mounts, no root. ext4 changes
go through debugfs, FAT changes through mtools, the partition table through sfdisk on
the file, and the filesystem grows with resize2fs on an extracted copy of the partition
(see grow_root for why not in place).

What prepare changes falls in two kinds:
  for good      size, SSH on, the user and its key, the hostname
  emulation     tweaks a QEMU boot needs and a card must not keep (ld.so.preload,
                cmdline.txt, the power-of-two size of an SD-card profile). Each is
                recorded, with the original bytes, in /var/lib/pibake/emulation.json
                inside the image, so `finalize` undoes exactly those and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pibake import __version__
from pibake.disk.ext4 import Change, ExtFs, MakeDir, Remove, Symlink, WriteFile
from pibake.disk.fat import FatFs
from pibake.disk.layout import MIB, SECTOR
from pibake.disk.resize import grow_root, root_partition
from pibake.disk.sparse import copy_file
from pibake.emulate import profiles, sshkey
from pibake.errors import PibakeError, Refused, UsageError
from pibake.util.cache import sha256_file

log = logging.getLogger(__name__)

RECORD_DIR = "/var/lib/pibake"
RECORD = f"{RECORD_DIR}/emulation.json"
RECORD_FORMAT = 1

# userconf-pi's own rule for the name in userconf.txt (its validate_user).
USERNAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
# A hash as crypt(3) writes it, or "*" (no password can log in: keys only).
PASSWORD_HASH = re.compile(r"^(\*|!|\$[0-9a-z]+\$[^:\s]+)$")
HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

# Groups a Raspberry Pi OS first user is in; a user added to the Debian base joins those that exist.
USER_GROUPS = ("adm", "dialout", "cdrom", "sudo", "audio", "video", "plugdev", "games", "users", "input", "netdev")

LD_SO_PRELOAD = "/etc/ld.so.preload"
CMDLINE = "cmdline.txt"
SERIAL_CONSOLES = ("serial0", "serial1", "ttyAMA0", "ttyS0")
# Raspberry Pi OS's first-boot programs, run as init= from cmdline.txt (see tweak_cmdline).
FIRST_BOOT_INITS = ("/init_resize.sh", "/raspberrypi-sys-mods/firstboot")
# Raspberry Pi Imager's customisation on bullseye and bookworm cards: systemd runs its firstrun.sh as the boot's only
# job, then reboots (rpi-imager's cmdline.txt words; systemd's kernel-command-line(7): systemd.run=,
# systemd.run_success_action=, systemd.run_failure_action=, systemd.unit=).
FIRST_RUN_WORDS = ("systemd.run=", "systemd.run_success_action=", "systemd.run_failure_action=")
FIRST_RUN_UNIT = "systemd.unit=kernel-command-line.target"
# Raspberry Pi OS trixie's cmdline.txt ends in this word: rpi-resize grows the root partition on the first boot and
# takes the word out (pi-gen's stage1/00-boot-files/files/cmdline.txt).
RESIZE_WORD = "resize"

# How a Raspberry Pi OS image gives its first user a login on the first boot, found by the program that does it:
# userconf-pi reads boot:/userconf.txt (bullseye 2022-04 to bookworm); cloud-init reads the NoCloud seed on the
# boot partition, user-data and meta-data (trixie 2025-10 on: pi-gen's stage2/04-cloud-init). Both may be
# installed; cloud-init is what Raspberry Pi Imager writes for such an image (its init_format cloudinit-rpi).
USERCONF = "/usr/lib/userconf-pi/userconf"
CLOUD_INIT = "/usr/bin/cloud-init"
USER_DATA = "user-data"
META_DATA = "meta-data"
# How what prepare writes for cloud-init starts (user-data: its second line, after #cloud-config): a user-data whose
# second line starts so is pibake's own, not the image's.
USER_DATA_MARK = "# Written by pibake image prepare"


# ---------------------------------------------------------------- pure helpers


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def parse_os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2].isdigit() and fields[3].isdigit():
            entries.append(PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6]))
    return entries


@dataclass(frozen=True)
class Accounts:
    """The four account files of a root filesystem, as text."""

    passwd: str
    shadow: str
    group: str
    gshadow: str | None


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _joined(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def add_user(accounts: Accounts, user: str, *, password_hash: str, groups: tuple[str, ...]) -> tuple[Accounts, int]:
    """Accounts with USER added as useradd would (own group, supplementary GROUPS that exist); and its uid."""
    users = parse_passwd(accounts.passwd)
    if any(u.name == user for u in users):
        raise UsageError(f"user {user} exists already")
    taken_uids = {u.uid for u in users}
    group_lines = _lines(accounts.group)
    taken_gids = {int(f[2]) for f in (line.split(":") for line in group_lines) if len(f) > 2 and f[2].isdigit()}
    uid = next(n for n in range(1000, 60000) if n not in taken_uids)
    gid = uid if uid not in taken_gids else next(n for n in range(1000, 60000) if n not in taken_gids)
    passwd = [*_lines(accounts.passwd), f"{user}:x:{uid}:{gid}:,,,:/home/{user}:/bin/bash"]
    shadow = [*_lines(accounts.shadow), f"{user}:{password_hash}:{int(time.time() // 86400)}:0:99999:7:::"]
    group = [_with_member(line, user, 3) if line.split(":")[0] in groups else line for line in group_lines]
    group.append(f"{user}:x:{gid}:")
    gshadow = None
    if accounts.gshadow is not None:
        gshadow = [
            _with_member(line, user, 3) if line.split(":")[0] in groups else line for line in _lines(accounts.gshadow)
        ]
        gshadow.append(f"{user}:!::")
    return (
        Accounts(_joined(passwd), _joined(shadow), _joined(group), _joined(gshadow) if gshadow is not None else None),
        uid,
    )


def _with_member(line: str, user: str, field: int) -> str:
    fields = line.split(":")
    while len(fields) <= field:
        fields.append("")
    members = [m for m in fields[field].split(",") if m]
    if user not in members:
        members.append(user)
    fields[field] = ",".join(members)
    return ":".join(fields)


def set_password_hash(shadow: str, user: str, password_hash: str) -> str:
    out, found = [], False
    for line in _lines(shadow):
        fields = line.split(":")
        if fields[0] == user and len(fields) > 1:
            fields[1] = password_hash
            found = True
        out.append(":".join(fields))
    if not found:
        raise PibakeError(f"user {user} has no line in /etc/shadow")
    return _joined(out)


def with_hostname(hosts: str, hostname: str) -> str:
    """/etc/hosts with 127.0.1.1 naming HOSTNAME (the line replaced, or added)."""
    lines = hosts.splitlines()
    for i, line in enumerate(lines):
        if line.split()[:1] == ["127.0.1.1"]:
            lines[i] = f"127.0.1.1\t{hostname}"
            break
    else:
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def with_authorized_key(existing: str | None, key: str) -> str | None:
    """authorized_keys with KEY in it; None when it is there already."""
    key = key.strip()
    if not key or "\n" in key:
        raise UsageError(
            "the SSH public key must be exactly one line (one public key, such as a .pub file holds; "
            "not a private key, not several keys)"
        )
    fields = key.split()
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise UsageError(f"{key[:40]!r}... is not an OpenSSH public key line")
    text = existing or ""
    if any(line.split()[:2] == fields[:2] for line in text.splitlines()):
        return None
    if text and not text.endswith("\n"):
        text += "\n"
    return text + key + "\n"


def tweak_ld_so_preload(text: str) -> str | None:
    """Comment out raspi-copies-and-fills' libarmmem preload, which QEMU boots choke on; None if nothing to do.

    libarmmem-${PLATFORM}.so is an ARMv6/v7 memcpy/memset tuned for the Pi's own cores:
    under emulation every process start prints 'cannot be preloaded' (or worse). A card
    must keep it, so finalize puts the line back.
    """
    out, changed = [], False
    for line in text.splitlines(keepends=True):
        if "libarmmem" in line and not line.lstrip().startswith("#"):
            out.append("#" + line)
            changed = True
        else:
            out.append(line)
    return "".join(out) if changed else None


def tweak_cmdline(text: str, console: str) -> str | None:
    """cmdline.txt for a QEMU boot; None if it needs nothing.

    - The serial console: the Pi's firmware turns console=serial0 into the right UART;
      a direct kernel boot does not, so it becomes the emulated board's (ttyAMA0),
      last so that /dev/console (and the emulator's serial log) is the serial line.
    - init=/usr/lib/raspi-config/init_resize.sh (Raspberry Pi OS before 2022-09) and
      init=/usr/lib/raspberrypi-sys-mods/firstboot (after): the base's first-boot step grows
      the root partition to the card (firstboot also makes new SSH host keys and a new disk
      id) and reboots, which ends a QEMU started with -no-reboot. prepare has grown the image
      already; on the card it must run, so finalize puts it back.
    - systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot
      systemd.unit=kernel-command-line.target (Raspberry Pi Imager's settings on a bullseye or
      bookworm card read back into an image): the script applies the user, hostname, SSH and
      Wi-Fi chosen in Imager, removes itself and reboots. The emulated boot is pibake's (its
      user and key); the card's first boot runs the script, since finalize puts it back.
    - resize (Raspberry Pi OS trixie): rpi-resize grows the root partition to the card and takes
      the word out of cmdline.txt, a change finalize would have to refuse. prepare has grown the
      image already; finalize puts the word back for the card.
    """
    tokens = text.split()
    ours = f"console={console},115200"
    serial = [t for t in tokens if t.startswith("console=") and t.split("=", 1)[1].split(",")[0] in SERIAL_CONSOLES]
    resize = [t for t in tokens if (t.startswith("init=") and t.endswith(FIRST_BOOT_INITS)) or t == RESIZE_WORD]
    resize += [t for t in tokens if t.startswith(FIRST_RUN_WORDS) or t == FIRST_RUN_UNIT]
    consoles = [t for t in tokens if t.startswith("console=")]
    if not resize and serial == [ours] and consoles[-1] == ours:
        return None
    kept = [t for t in tokens if t not in serial and t not in resize]
    return " ".join([*kept, ours]) + "\n"


def cloud_init_user_data(*, user: str, password_hash: str | None, ssh_pubkey: str | None, hostname: str | None) -> str:
    """A NoCloud user-data (cloud-config YAML) giving USER a login, as Raspberry Pi Imager writes it for cloud-init.

    The keys are Imager's (rpi-imager's CustomisationGenerator::generateCloudInitUserData): the
    singular ``user`` (cloud-init merges it over the distribution's default user, keeping its
    groups), ``lock_passwd`` and a crypt(3) hash (``hashed_passwd``, which cloud-init applies to an
    existing user too; Imager writes ``passwd``, which it applies only to a new one; none: locked, keys only),
    ``ssh_authorized_keys``, ``sudo`` without a password (what pibake's provisioning needs),
    ``hostname`` with ``manage_etc_hosts``, ``ssh_pwauth: false`` when there is no password, and
    ``runcmd`` enabling ssh.service: cloud-init's ssh module writes keys but starts no server, and
    Raspberry Pi OS ships it disabled. Returns the file's text.
    """
    entry: dict[str, Any] = {"name": user, "shell": "/bin/bash"}
    if password_hash and password_hash not in ("*", "!"):
        # hashed_passwd, not passwd: cloud-init applies passwd only to a user it creates, and Raspberry Pi OS's
        # first user (pi, uid 1000) exists already (cloud-init 25.1's Distro.create_user, trixie's package).
        entry |= {"lock_passwd": False, "hashed_passwd": password_hash}
    else:
        entry["lock_passwd"] = True
    if ssh_pubkey:
        entry["ssh_authorized_keys"] = [ssh_pubkey.strip()]
    entry["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    config: dict[str, Any] = {}
    if hostname:
        config |= {"hostname": hostname, "manage_etc_hosts": True}
    config["user"] = entry
    if not entry.get("hashed_passwd"):
        config["ssh_pwauth"] = False
    config["runcmd"] = [["systemctl", "enable", "--now", "ssh"]]
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=4096)
    return f"#cloud-config\n{USER_DATA_MARK} {__version__}: the first boot's user, key, hostname and SSH.\n{body}"


def cloud_init_meta_data(instance_id: str) -> str:
    """A NoCloud meta-data naming a new instance: cloud-init then applies user-data on the next boot."""
    return (
        f"{USER_DATA_MARK} {__version__}: a new instance for the first boot.\n"
        f"dsmode: local\ninstance-id: {instance_id}\n"
    )


def user_data_keys(text: str) -> list[str]:
    """The top-level keys of a user-data the image carries ([] for pi-gen's comments-only file or pibake's own).

    Raises PibakeError for a user-data that is not a cloud-config YAML mapping.
    """
    lines = text.splitlines()
    if len(lines) > 1 and lines[1].startswith(USER_DATA_MARK):
        return []
    what = (
        f"pibake writes the first boot's cloud-config itself and would lose what it holds: move that to a playbook "
        f"pibake runs after its roles (provision in pibake.toml), or remove boot:/{USER_DATA}"
    )
    first = next((line.strip() for line in lines if line.strip()), "")
    if first and not first.startswith("#"):
        raise PibakeError(f"boot:/{USER_DATA} is not a cloud-config (it starts {first[:40]!r}); {what}")
    if first.startswith(("#!", "#include", "## template", "#cloud-boothook", "#part-handler")):
        raise PibakeError(f"boot:/{USER_DATA} is cloud-init user data of another kind ({first[:40]!r}); {what}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PibakeError(f"boot:/{USER_DATA} is not valid YAML ({e}); {what}") from e
    if data is None:
        return []
    if not isinstance(data, dict):
        raise PibakeError(f"boot:/{USER_DATA} is not a cloud-config mapping (it holds a {type(data).__name__}); {what}")
    return sorted(str(k) for k in data)


# ---------------------------------------------------------------- tweaks and their record


@dataclass(frozen=True)
class Tweak:
    """One emulation-only change: the original bytes go back at finalize."""

    name: str
    fs: Literal["boot", "root"]
    path: str
    original: bytes
    tweaked_sha256: str

    @classmethod
    def make(cls, name: str, fs: Literal["boot", "root"], path: str, original: bytes, tweaked: bytes) -> Tweak:
        return cls(name, fs, path, original, hashlib.sha256(tweaked).hexdigest())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fs": self.fs,
            "path": self.path,
            "original_base64": base64.b64encode(self.original).decode(),
            "tweaked_sha256": self.tweaked_sha256,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tweak:
        try:
            return cls(
                name=str(data["name"]),
                fs="boot" if data["fs"] == "boot" else "root",
                path=str(data["path"]),
                original=base64.b64decode(data["original_base64"]),
                tweaked_sha256=str(data["tweaked_sha256"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PibakeError(f"a tweak in {RECORD} is malformed ({e!r})") from e


@dataclass(frozen=True)
class OsInfo:
    id: Literal["raspios", "debian"]
    pretty_name: str
    users: tuple[PasswdEntry, ...]
    # Raspberry Pi OS's first-boot program for the first user's login (USERCONF, CLOUD_INIT): "userconf",
    # "cloud-init", or "" (none of them: the Debian base, or a Raspberry Pi OS prepare cannot give a login).
    login_by: Literal["userconf", "cloud-init", ""] = ""

    @property
    def first_user(self) -> PasswdEntry | None:
        """The uid-1000 user that Raspberry Pi OS's userconf renames on first boot."""
        return next((u for u in self.users if u.uid == 1000), None)


def detect_os(root: ExtFs) -> OsInfo:
    files = root.read_many(["/etc/os-release", "/usr/lib/os-release", "/etc/rpi-issue", "/etc/passwd"])
    programs = root.stat_many([CLOUD_INIT, USERCONF])
    release_text = files["/etc/os-release"] or files["/usr/lib/os-release"]
    if release_text is None or files["/etc/passwd"] is None:
        raise PibakeError(
            f"{root.image}: the second partition holds no Linux root filesystem (no /etc/os-release or /etc/passwd)"
        )
    release = parse_os_release(release_text.decode(errors="replace"))
    raspios = files["/etc/rpi-issue"] is not None or release.get("ID") == "raspbian"
    login_by: Literal["userconf", "cloud-init", ""] = ""
    if raspios and programs[CLOUD_INIT] is not None:
        login_by = "cloud-init"
    elif raspios and programs[USERCONF] is not None:
        login_by = "userconf"
    return OsInfo(
        id="raspios" if raspios else "debian",
        pretty_name=release.get("PRETTY_NAME", release.get("ID", "unknown")),
        users=tuple(parse_passwd(files["/etc/passwd"].decode(errors="replace"))),
        login_by=login_by,
    )


def read_record(root: ExtFs) -> dict[str, Any] | None:
    data = root.read(RECORD)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError as e:
        raise PibakeError(
            f"{root.image}: {RECORD} is not valid JSON ({e}); restore it or remove it with debugfs"
        ) from e
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise PibakeError(f"{root.image}: {RECORD} was written by another pibake version (format {record!r:.40})")
    return record


# ---------------------------------------------------------------- resizing


@contextmanager
def work_dir(image: Path) -> Iterator[Path]:
    """Scratch space next to IMAGE: a partition copy needs as much room as the image."""
    with tempfile.TemporaryDirectory(prefix=".pibake-", dir=image.parent) as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------- prepare


@dataclass(frozen=True)
class PreparedImage:
    path: Path
    os: str
    base_sha256: str
    size_before: int
    size: int
    card_size: int
    changes: tuple[str, ...]
    tweaks: tuple[str, ...]
    seconds: float


def copy_image(image: Path, output: Path) -> Path:
    """Copy IMAGE to OUTPUT atomically, with IMAGE's holes and only those."""
    if not image.is_file():
        raise UsageError(f"no image at {image}")
    return copy_file(image, output)


def prepare(
    image: Path,
    *,
    output: Path | None = None,
    grow_mb: int = 0,
    power_of_two: bool = False,
    user: str = "pi",
    password_hash: str | None = None,
    ssh_pubkey: str | None = None,
    hostname: str | None = None,
    emulation_tweaks: bool = True,
    console: str = "ttyAMA0",
) -> PreparedImage:
    """Grow IMAGE (or a copy at OUTPUT), enable SSH, set up USER and its key, set HOSTNAME, tweak for emulation."""
    t0 = time.monotonic()
    if not image.is_file():
        raise UsageError(f"no image at {image}: fetch one with `pibake image fetch` or build one with `make image`")
    if grow_mb < 0:
        raise UsageError(f"--grow takes a size to add in MiB, not {grow_mb}")
    if not USERNAME.match(user) or user == "root":
        raise UsageError(
            f"invalid user name {user!r}: lower-case letters, digits and hyphens, starting with a letter, "
            "at most 32 characters, not root (Raspberry Pi OS's own rule)"
        )
    if password_hash is not None and not PASSWORD_HASH.match(password_hash):
        raise UsageError("--password-hash takes a crypt(3) hash such as `openssl passwd -6` prints, or '*'")
    if hostname is not None and not HOSTNAME.match(hostname):
        raise UsageError(f"invalid hostname {hostname!r}: letters, digits and inner hyphens, at most 63 characters")
    if ssh_pubkey is not None:
        with_authorized_key(None, ssh_pubkey)  # one OpenSSH public key line, checked before anything is written
    if output is not None and output.is_dir():
        raise UsageError(f"-o {output} is a directory: name the image file to write")
    if output is not None and ExtFs.partition(image, 2).exists(RECORD):
        raise Refused(
            f"{image} was prepared already ({RECORD} is in it): run `pibake image finalize` on it, "
            "or prepare a copy of the base image it came from"
        )

    def prepare_file(target: Path) -> PreparedImage:
        return _prepare_file(
            target,
            t0=t0,
            grow_mb=grow_mb,
            power_of_two=power_of_two,
            user=user,
            password_hash=password_hash,
            ssh_pubkey=ssh_pubkey,
            hostname=hostname,
            emulation_tweaks=emulation_tweaks,
            console=console,
        )

    if output is None:
        return prepare_file(image)
    copy = copy_image(image, output)
    try:
        return prepare_file(copy)
    except BaseException:
        copy.unlink(missing_ok=True)  # a half-prepared copy is worse than none
        raise


def prepare_for_emulation(
    image: Path,
    *,
    output: Path | None = None,
    grow_mb: int = 0,
    grow_to_power_of_two: bool = False,
    profile: str | None = None,
    user: str = "pi",
    password_hash: str | None = None,
    ssh_key_file: Path | None = None,
    hostname: str | None = None,
    emulation_tweaks: bool = True,
) -> PreparedImage:
    """What ``pibake image prepare`` does: `prepare` with a machine PROFILE's needs and a key from a file.

    PROFILE (a name from qemu/) sets the serial console of the emulated boot and, for an SD-card
    profile, the power-of-two size QEMU needs. The public key is read from SSH_KEY_FILE, or is
    the harness's own (made on first use). Raises UsageError for an unreadable key file or an
    unknown profile, and whatever `prepare` raises.
    """
    power_of_two, console = grow_to_power_of_two, "ttyAMA0"
    if profile:
        prof = profiles.load(profile)
        power_of_two = power_of_two or prof.needs_power_of_two
        console = prof.console
    if ssh_key_file:
        try:
            key = ssh_key_file.read_text().strip()
        except OSError as e:
            raise UsageError(f"cannot read the SSH public key {ssh_key_file}: {e.strerror}") from e
        if not key:
            raise UsageError(f"{ssh_key_file} holds no SSH public key: nobody could log in to the image")
    else:
        key = sshkey.ensure_keypair().public_key
    return prepare(
        image,
        output=output,
        grow_mb=grow_mb,
        power_of_two=power_of_two,
        user=user,
        password_hash=password_hash,
        ssh_pubkey=key,
        hostname=hostname,
        emulation_tweaks=emulation_tweaks,
        console=console,
    )


def _prepare_file(
    image: Path,
    *,
    t0: float,
    grow_mb: int,
    power_of_two: bool,
    user: str,
    password_hash: str | None,
    ssh_pubkey: str | None,
    hostname: str | None,
    emulation_tweaks: bool,
    console: str,
) -> PreparedImage:
    root_partition(image)
    root = ExtFs.partition(image, 2)
    boot = FatFs.partition(image, 1)
    if root.exists(RECORD):
        raise Refused(
            f"{image} was prepared already ({RECORD} is in it): run `pibake image finalize` on it, "
            "or prepare a fresh copy of the base image"
        )
    info = detect_os(root)
    log.info("%s: %s (%s)", image.name, info.pretty_name, info.id)
    if info.id == "raspios" and not info.login_by:
        raise Refused(
            f"{image}: this Raspberry Pi OS has neither userconf-pi ({USERCONF}) nor cloud-init ({CLOUD_INIT}), "
            "the two programs pibake knows to give the first user a login on the first boot "
            f"(users: {', '.join(u.name for u in info.users if u.uid >= 1000) or 'none'} at uid 1000 and up). "
            "Fetch a release with either (`pibake image fetch --list`), or set the user up in the image yourself"
        )
    if info.login_by == "cloud-init":
        _check_cloud_init_seed(boot, ssh_pubkey)
    base_sha256 = sha256_file(image)
    size_before = image.stat().st_size
    if size_before % SECTOR:
        raise UsageError(f"{image}: {size_before} bytes is not a whole number of 512-byte sectors")
    card_size = size_before + grow_mb * MIB
    size = next_power_of_two(card_size) if power_of_two else card_size
    if size > card_size:
        log.info(
            "%s: %d MiB for the card, %d MiB (a power of two) for the emulated SD card",
            image.name,
            card_size // MIB,
            size // MIB,
        )
    with work_dir(image) as work:
        grow_root(image, size, work)

    changes: list[str] = []
    root_changes: list[Change] = []
    boot_files: dict[str, bytes] = {}
    tweaks: list[Tweak] = []

    if info.login_by == "cloud-init":
        # The user, its key, the hostname and SSH, all through cloud-init's seed on the boot partition.
        _cloud_init_changes(
            boot, boot_files, changes, user=user, password_hash=password_hash, ssh_pubkey=ssh_pubkey, hostname=hostname
        )
    else:
        # SSH on.
        if info.id == "raspios":
            boot_files["ssh"] = b""
            changes.append("boot:/ssh (sshswitch enables the SSH server on first boot)")
        else:
            _enable_ssh_unit(root, root_changes, changes)

        # The user, its password hash and its key.
        home_user = _user_changes(root, info, boot_files, root_changes, changes, user=user, password_hash=password_hash)
        if ssh_pubkey:
            _key_changes(root, home_user, ssh_pubkey, root_changes, changes)

        if hostname:
            _hostname_changes(root, hostname, root_changes, changes)

    if emulation_tweaks:
        preload = root.read(LD_SO_PRELOAD)
        new = tweak_ld_so_preload(preload.decode()) if preload is not None else None
        if preload is not None and new is not None:
            tweaks.append(Tweak.make("ld.so.preload", "root", LD_SO_PRELOAD, preload, new.encode()))
            root_changes.append(WriteFile(LD_SO_PRELOAD, new.encode()))
        cmdline = boot.read(CMDLINE)
        new = tweak_cmdline(cmdline.decode(), console) if cmdline is not None else None
        if cmdline is not None and new is not None:
            tweaks.append(Tweak.make("cmdline.txt", "boot", "/" + CMDLINE, cmdline, new.encode()))
            boot_files[CMDLINE] = new.encode()

    record = {
        "format": RECORD_FORMAT,
        "pibake": __version__,
        "base": {"sha256": base_sha256, "size": size_before, "os": info.id, "pretty_name": info.pretty_name},
        "card_size": card_size,
        "size": size,
        "created_record_dir": not root.exists(RECORD_DIR),
        "tweaks": [t.to_json() for t in tweaks],
    }
    if record["created_record_dir"]:
        root_changes.append(MakeDir(RECORD_DIR, 0o755))
    root_changes.append(WriteFile(RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), 0o644, 0, 0))
    # The root batch carries the record, so it goes first: a tweak on the boot partition
    # is never made without its record.
    root.apply(root_changes)
    for name, data in boot_files.items():
        boot.write(name, data)
    for t in tweaks:
        changes.append(f"{t.fs}:{t.path} (emulation only, undone by finalize)")
    seconds = time.monotonic() - t0
    log.info("%s: prepared in %.1f s", image.name, seconds)
    return PreparedImage(
        path=image,
        os=info.id,
        base_sha256=base_sha256,
        size_before=size_before,
        size=size,
        card_size=card_size,
        changes=tuple(changes),
        tweaks=tuple(t.name for t in tweaks),
        seconds=seconds,
    )


def _check_cloud_init_seed(boot: FatFs, ssh_pubkey: str | None) -> None:
    """Refuse, before anything is written, a user-data of the image's own, a second first-boot mechanism beside
    cloud-init (userconf.txt, which userconf-pi would apply too; Imager's firstrun.sh), and a key that is not one
    key line."""
    others = [f"boot:/{name}" for name in ("userconf.txt", "firstrun.sh") if boot.exists(name)]
    if others:
        raise Refused(
            f"{boot.image}: this image takes its first boot's settings through cloud-init, and it also carries "
            f"{' and '.join(others)}, a second first-boot mechanism that would set the user too. pibake writes "
            "cloud-init's user-data; remove the other and prepare again"
        )
    current = boot.read(USER_DATA)
    if current is not None:
        keys = user_data_keys(current.decode(errors="replace"))
        if keys:
            raise Refused(
                f"{boot.image}: boot:/{USER_DATA} already holds cloud-init settings ({', '.join(keys)}); pibake writes "
                "the first boot's user-data itself (the user, key, hostname and SSH) and would lose them. Move them "
                "to a playbook pibake runs after its roles (provision in pibake.toml), or remove the file"
            )
    if ssh_pubkey:
        with_authorized_key(None, ssh_pubkey)  # the same check as for the other images: one OpenSSH key line


def _cloud_init_changes(
    boot: FatFs,
    boot_files: dict[str, bytes],
    changes: list[str],
    *,
    user: str,
    password_hash: str | None,
    ssh_pubkey: str | None,
    hostname: str | None,
) -> None:
    """Queue user-data and a new instance's meta-data for cloud-init's first boot (see cloud_init_user_data)."""
    instance = f"pibake-{uuid.uuid4().hex[:16]}"
    text = cloud_init_user_data(user=user, password_hash=password_hash, ssh_pubkey=ssh_pubkey, hostname=hostname)
    boot_files[USER_DATA] = text.encode()
    boot_files[META_DATA] = cloud_init_meta_data(instance).encode()
    what = [f"user {user}", "SSH key" if ssh_pubkey else "", f"hostname {hostname}" if hostname else "", "SSH on"]
    changes.append(f"boot:/{USER_DATA} (cloud-init on first boot: {', '.join(w for w in what if w)})")
    changes.append(f"boot:/{META_DATA} (cloud-init instance {instance}: user-data is applied on the next boot)")


def _enable_ssh_unit(root: ExtFs, out: list[Change], changes: list[str]) -> None:
    link = "/etc/systemd/system/multi-user.target.wants/ssh.service"
    found = root.stat_many([link, "/lib/systemd/system/ssh.service", "/usr/lib/systemd/system/ssh.service"])
    if found[link] is not None:
        return
    unit = next(
        (p for p in ("/lib/systemd/system/ssh.service", "/usr/lib/systemd/system/ssh.service") if found[p]), None
    )
    if unit is None:
        raise PibakeError(f"{root.image}: openssh-server is not installed in the image (no ssh.service)")
    out.append(Symlink(link, unit))
    changes.append(f"root:{link} (ssh.service enabled)")


def _user_changes(
    root: ExtFs,
    info: OsInfo,
    boot_files: dict[str, bytes],
    out: list[Change],
    changes: list[str],
    *,
    user: str,
    password_hash: str | None,
) -> PasswdEntry:
    """Queue the changes that give USER a login; return the passwd entry whose home gets the key."""
    if info.id == "raspios":
        first = info.first_user
        if first is None:
            raise PibakeError(f"{root.image}: no user with uid 1000 for Raspberry Pi OS's userconf to rename")
        # userconf-pi reads "name:hash" on first boot, renames the uid-1000 user (moving
        # its home, so the key below moves with it) and runs chpasswd -e with the hash.
        # "*" matches no password: SSH keys only.
        boot_files["userconf.txt"] = f"{user}:{password_hash or '*'}\n".encode()
        changes.append(
            f"boot:/userconf.txt (first boot: user {user}"
            + (f", renamed from {first.name})" if first.name != user else ")")
        )
        return first
    existing = next((u for u in info.users if u.name == user), None)
    if existing is not None:
        if password_hash:
            shadow = root.read("/etc/shadow")
            if shadow is None:
                raise PibakeError(f"{root.image}: no /etc/shadow")
            out.append(WriteFile("/etc/shadow", set_password_hash(shadow.decode(), user, password_hash).encode()))
            changes.append(f"root:/etc/shadow (password of {user})")
        return existing
    files = root.read_many(["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"])
    if files["/etc/shadow"] is None or files["/etc/group"] is None or files["/etc/passwd"] is None:
        raise PibakeError(f"{root.image}: /etc/shadow or /etc/group is missing")
    gshadow = files["/etc/gshadow"]
    accounts, uid = add_user(
        Accounts(
            files["/etc/passwd"].decode(),
            files["/etc/shadow"].decode(),
            files["/etc/group"].decode(),
            gshadow.decode() if gshadow is not None else None,
        ),
        user,
        password_hash=password_hash or "*",
        groups=USER_GROUPS,
    )
    entry = next(u for u in parse_passwd(accounts.passwd) if u.name == user)
    out += [
        WriteFile("/etc/passwd", accounts.passwd.encode()),
        WriteFile("/etc/shadow", accounts.shadow.encode()),
        WriteFile("/etc/group", accounts.group.encode()),
    ]
    if accounts.gshadow is not None:
        out.append(WriteFile("/etc/gshadow", accounts.gshadow.encode()))
    out.append(MakeDir(entry.home, 0o755, entry.uid, entry.gid))
    # Like the base's pi: sudo without a password (there is none to type).
    out.append(
        WriteFile(f"/etc/sudoers.d/010_{user}-nopasswd", f"{user} ALL=(ALL) NOPASSWD: ALL\n".encode(), 0o440, 0, 0)
    )
    changes.append(f"root:/etc/passwd,shadow,group,gshadow,sudoers.d (user {user}, uid {uid}), {entry.home}")
    return entry


def _key_changes(root: ExtFs, owner: PasswdEntry, key: str, out: list[Change], changes: list[str]) -> None:
    ssh_dir = f"{owner.home.rstrip('/')}/.ssh"
    keys_file = f"{ssh_dir}/authorized_keys"
    if root.stat(owner.home) is None and not any(isinstance(c, MakeDir) and c.path == owner.home for c in out):
        out.append(MakeDir(owner.home, 0o755, owner.uid, owner.gid))
    current = root.read(keys_file)
    new = with_authorized_key(current.decode() if current is not None else None, key)
    if new is None:
        return
    out.append(MakeDir(ssh_dir, 0o700, owner.uid, owner.gid))
    out.append(WriteFile(keys_file, new.encode(), 0o600, owner.uid, owner.gid))
    changes.append(
        f"root:{keys_file} (SSH key {key.split()[0]} {key.split()[-1] if len(key.split()) > 2 else ''})".rstrip()
    )


def _hostname_changes(root: ExtFs, hostname: str, out: list[Change], changes: list[str]) -> None:
    files = root.read_many(["/etc/hostname", "/etc/hosts"])
    if (files["/etc/hostname"] or b"").decode().strip() != hostname:
        out.append(WriteFile("/etc/hostname", f"{hostname}\n".encode()))
        changes.append(f"root:/etc/hostname ({hostname})")
    hosts = (files["/etc/hosts"] or b"127.0.0.1\tlocalhost\n").decode()
    new_hosts = with_hostname(hosts, hostname)
    if new_hosts != hosts:
        out.append(WriteFile("/etc/hosts", new_hosts.encode()))
        changes.append("root:/etc/hosts (127.0.1.1)")


# ---------------------------------------------------------------- undo


def undo_tweaks(image: Path) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """Put back the original bytes of every recorded tweak and remove the record; return it and what was undone."""
    root = ExtFs.partition(image, 2)
    record = read_record(root)
    if record is None:
        log.info("%s: no %s: not prepared by pibake, no emulation tweaks to undo", image.name, RECORD)
        return None, ()
    boot = FatFs.partition(image, 1)
    undone: list[str] = []
    root_changes: list[Change] = []
    for data in record.get("tweaks", []):
        tweak = Tweak.from_json(data)
        current = boot.read(tweak.path) if tweak.fs == "boot" else root.read(tweak.path)
        if current == tweak.original:
            continue
        if current is None or hashlib.sha256(current).hexdigest() != tweak.tweaked_sha256:
            raise Refused(
                f"{image}: {tweak.fs}:{tweak.path} changed after prepare (by provisioning?), so pibake cannot tell "
                f"which bytes the card should have. Put its original back by hand (it is base64 in {RECORD}) "
                "and run finalize again"
            )
        if tweak.fs == "boot":
            boot.write(tweak.path, tweak.original)
        else:
            root_changes.append(WriteFile(tweak.path, tweak.original))
        undone.append(tweak.name)
    root_changes.append(Remove(RECORD))
    if record.get("created_record_dir") and {e.name for e in root.list_dir(RECORD_DIR) or []} <= {"emulation.json"}:
        root_changes.append(Remove(RECORD_DIR))
    root.apply(root_changes)
    return record, tuple(undone)
