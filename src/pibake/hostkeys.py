"""SSH host keys of a Pi: made on its first boot, fingerprints printed on its console, checked before trusting it.

Every card makes its own host keys on its first boot (`pibake image finalize` removes the ones an
emulated boot made). The Debian base makes them with the unit and script below, which print each
key's fingerprint on every console, marked with MARK: on a real Pi the screen or the serial line,
under QEMU the guest's serial log. `pibake hostkeys` reads them back from a serial log (or from an
emulated guest) and, with --scan, checks what a host answers with against them and prints the
known_hosts lines to trust: the way to accept a reflashed Pi's new key without trusting the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pibake.errors import PibakeError, UsageError, VerificationFailed
from pibake.util.proc import run

log = logging.getLogger(__name__)

UNIT = "pibake-ssh-hostkeys.service"
SCRIPT = "/usr/local/sbin/pibake-ssh-hostkeys"
MARK = "pibake-ssh-hostkey:"
# The types the base's sshd is configured with (image/build.py writes its HostKey lines). Not RSA: an
# RSA-3072 key takes some 15 s to make under emulation, and every client of the last decade
# speaks one of these two.
KEY_TYPES = ("ed25519", "ecdsa")
# What ssh-keygen -l names in parentheses, by the key's algorithm name in a public key line.
ALGORITHMS = {
    "ssh-ed25519": "ED25519",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "ssh-rsa": "RSA",
}
# `ssh-keygen -l` output: "256 SHA256:<43 base64 characters> comment (ED25519)".
_KEYGEN_LINE = re.compile(r"(\d+) (SHA256:[A-Za-z0-9+/]{43}) .*\(([A-Z0-9-]+)\)\s*$")


def unit_text() -> str:
    """The systemd unit that makes the host keys on a card's first boot (installed by image/build.py)."""
    return (
        "[Unit]\n"
        "Description=Make this device's own SSH host keys and show their fingerprints (pibake)\n"
        "# Only when there are none: on the first boot of a card, since finalize removed the image's.\n"
        "# Debian's openssh-server makes them when it is installed, never at boot.\n"
        "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key\n"
        "Before=ssh.service\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={SCRIPT}\n"
        "StandardOutput=journal\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def script_text() -> str:
    """The script the unit runs: the keys of KEY_TYPES, then their fingerprints on every active console."""
    types = " ".join(KEY_TYPES)
    return (
        "#!/bin/sh\n"
        "# Installed by pibake: this device's own SSH host keys, made on its first boot, and their\n"
        "# fingerprints on every console (the screen, the serial line), so that the first SSH\n"
        "# connection can be checked against them (`pibake hostkeys` reads them from a serial log).\n"
        "set -e\n"
        f"for type in {types}; do\n"
        '    key="/etc/ssh/ssh_host_${type}_key"\n'
        '    [ -e "$key" ] || ssh-keygen -q -t "$type" -N "" -f "$key"\n'
        "done\n"
        "for pub in /etc/ssh/ssh_host_*_key.pub; do\n"
        f'    line="{MARK} $(ssh-keygen -l -f "$pub")"\n'
        '    echo "$line"\n'
        "    for tty in $(cat /sys/class/tty/console/active 2>/dev/null); do\n"
        '        echo "$line" > "/dev/$tty" 2>/dev/null || true\n'
        "    done\n"
        "done\n"
    )


@dataclass(frozen=True)
class Fingerprint:
    """One host key's fingerprint, as `ssh-keygen -l` shows it."""

    key_type: str  # ED25519, ECDSA, RSA
    sha256: str  # SHA256:<base64, no padding>
    bits: int

    def __str__(self) -> str:
        return f"{self.bits} {self.sha256} ({self.key_type})"


def parse_keygen_line(line: str) -> Fingerprint | None:
    """A line of `ssh-keygen -l` output; None for anything else."""
    m = _KEYGEN_LINE.search(line.strip())
    return Fingerprint(m.group(3), m.group(2), int(m.group(1))) if m else None


def console_fingerprints(text: str) -> tuple[Fingerprint, ...]:
    """The fingerprints the base printed on its console (MARK lines), the latest of each key type.

    A serial log can hold several boots (a reflashed Pi logged to the same file): the last boot
    that made keys wins.
    """
    latest: dict[str, Fingerprint] = {}
    for line in text.replace("\r", "\n").splitlines():
        if MARK in line:
            found = parse_keygen_line(line.split(MARK, 1)[1])
            if found is not None:
                latest[found.key_type] = found
    return tuple(latest[t] for t in sorted(latest))


def known_hosts_fingerprint(line: str) -> Fingerprint | None:
    """The fingerprint of the key in a known_hosts (or ssh-keyscan) line: HOST ALGORITHM BASE64 [COMMENT]."""
    fields = line.split()
    if len(fields) < 3 or fields[0].startswith("#") or fields[1] not in ALGORITHMS:
        return None
    try:
        blob = base64.b64decode(fields[2], validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    bits = {"ssh-ed25519": 256, "ecdsa-sha2-nistp256": 256, "ecdsa-sha2-nistp384": 384, "ecdsa-sha2-nistp521": 521}
    return Fingerprint(ALGORITHMS[fields[1]], f"SHA256:{digest}", bits.get(fields[1], 0))


def trusted_lines(scanned: list[str], expected: tuple[Fingerprint, ...], *, host: str) -> list[str]:
    """The known_hosts lines of SCANNED whose keys have an EXPECTED fingerprint.

    Raises VerificationFailed when a key of a type the console printed does not match it (something
    else answers for HOST), or when no key matches at all.
    """
    wanted = {f.key_type: f.sha256 for f in expected}
    good: list[str] = []
    for line in scanned:
        found = known_hosts_fingerprint(line)
        if found is None:
            continue
        if found.key_type in wanted and wanted[found.key_type] != found.sha256:
            raise VerificationFailed(
                f"{host} answers with the {found.key_type} key {found.sha256}, but the Pi printed "
                f"{wanted[found.key_type]} on its console: this is not the Pi that printed it (or the "
                "log is from another boot). Do not accept the key"
            )
        if found.key_type in wanted:
            good.append(line.strip())
    if not good:
        offered = ", ".join(sorted({f.key_type for line in scanned if (f := known_hosts_fingerprint(line))}))
        raise VerificationFailed(
            f"{host} offered no key of a type the console printed ({', '.join(sorted(wanted))}); "
            f"it offered: {offered or 'nothing'}"
        )
    return good


# ---------------------------------------------------------------- sources


def from_serial_log(path: Path) -> tuple[Fingerprint, ...]:
    """The fingerprints printed in the serial log at PATH (a real Pi's console captured to a file, or a guest's)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UsageError(f"cannot read the serial log {path}: {e.strerror}") from e
    found = console_fingerprints(text)
    if not found:
        raise PibakeError(
            f"no host key fingerprints ({MARK} lines) in {path}: the base prints them on the boot that makes "
            "the keys, the first one of a card. A Raspberry Pi OS image makes its keys without printing them"
        )
    return found


def from_guest(name: str) -> tuple[Fingerprint, ...]:
    """The host key fingerprints of the emulated guest NAME: from its serial log, else asked over SSH.

    The serial log has them when this boot made the keys; a guest booted from an image that has keys
    already is asked (it listens on this machine's loopback only).
    """
    from pibake.emulate import guest as emulator
    from pibake.emulate.ssh import ssh_run

    st = emulator.status(name)
    if st.guest is None:
        raise UsageError(f"no guest {name}: start it with `pibake emulate start --name {name}`")
    found = console_fingerprints(_read(Path(st.guest.serial_log)))
    if found:
        return found
    if not st.running:
        raise PibakeError(f"guest {name} is not running and its serial log has no host key fingerprints")
    code, out = ssh_run(st.guest, 'for f in /etc/ssh/ssh_host_*_key.pub; do ssh-keygen -l -f "$f"; done')
    keys = {f.key_type: f for line in out.splitlines() if (f := parse_keygen_line(line))}
    if code != 0 or not keys:
        raise PibakeError(f"guest {name} listed no SSH host keys (exit {code}):\n{out[-1000:]}")
    return tuple(keys[t] for t in sorted(keys))


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def scan(host: str, *, port: int = 22, timeout: int = 10) -> list[str]:
    """The host keys HOST answers with, as known_hosts lines (ssh-keyscan)."""
    out = run(
        ["ssh-keyscan", "-T", str(timeout), "-p", str(port), "-t", ",".join(KEY_TYPES), host], timeout=timeout * 4
    )
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise PibakeError(f"{host} port {port} answered with no SSH host key (is it up, and is sshd running?)")
    return lines


@dataclass(frozen=True)
class HostKeys:
    """What `pibake hostkeys` found: the printed fingerprints and, with a scan, the lines to trust."""

    source: str
    fingerprints: tuple[Fingerprint, ...]
    known_hosts: tuple[str, ...] = ()


def hostkeys(
    serial_log: Path | None = None, *, guest: str | None = None, scan_host: str | None = None, port: int = 22
) -> HostKeys:
    """What ``pibake hostkeys`` does: the fingerprints from SERIAL_LOG or GUEST; with SCAN_HOST, the
    known_hosts lines of the keys SCAN_HOST answers with, once they match those fingerprints.

    Raises UsageError without a source, PibakeError when no fingerprints are found, VerificationFailed
    when the scanned keys do not match.
    """
    if (serial_log is None) == (guest is None):
        raise UsageError("give a serial log file or --name of an emulated guest (one of the two)")
    if serial_log is not None:
        found, source = from_serial_log(serial_log), str(serial_log)
    else:
        assert guest is not None
        found, source = from_guest(guest), f"guest {guest}"
    if scan_host is None:
        return HostKeys(source, found)
    lines = trusted_lines(scan(scan_host, port=port), found, host=scan_host)
    log.info("%s answers with the keys %s printed", scan_host, source)
    return HostKeys(source, found, tuple(lines))
