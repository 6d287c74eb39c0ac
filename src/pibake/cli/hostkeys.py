"""`pibake hostkeys`: the SSH host key fingerprints a Pi printed at first boot, and the known_hosts lines to trust."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _hostkeys(a: argparse.Namespace) -> int:
    from pibake import hostkeys

    found = hostkeys.hostkeys(a.serial_log, guest=a.name, scan_host=a.scan, port=a.port)
    if a.scan:
        # stdout is for known_hosts (`>> ~/.ssh/known_hosts`); the rest goes to stderr.
        for fp in found.fingerprints:
            print(f"{found.source}: {fp}", file=sys.stderr)
        print(f"{a.scan} answers with these keys; lines for known_hosts:", file=sys.stderr)
        for line in found.known_hosts:
            print(line)
        return 0
    for fp in found.fingerprints:
        print(fp)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `hostkeys` to the top-level subparsers SUB."""
    p = sub.add_parser(
        "hostkeys",
        help="the SSH host key fingerprints a Pi printed on its console at first boot (to accept a reflashed Pi)",
        description="Print the SSH host key fingerprints that pibake's base printed on the console at its first "
        "boot, read from a serial log (a real Pi's console captured to a file, e.g. `picocom --logfile`) or from an "
        "emulated guest (--name). With --scan HOST, ask HOST for its keys (ssh-keyscan), check them against those "
        "fingerprints and print them as known_hosts lines: `pibake hostkeys pi.log --scan pi4-lab >> "
        "~/.ssh/known_hosts` after `ssh-keygen -R pi4-lab`. A key that does not match is an error.",
    )
    p.add_argument("serial_log", nargs="?", type=Path, default=None, help="a serial console log of the Pi's first boot")
    p.add_argument("--name", default=None, help="an emulated guest instead: its serial log, or the guest itself")
    p.add_argument("--scan", metavar="HOST", default=None, help="check HOST's keys and print its known_hosts lines")
    p.add_argument("--port", type=int, default=22, help="HOST's SSH port (default: %(default)s)")
    p.set_defaults(func=_hostkeys)
