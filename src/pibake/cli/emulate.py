"""`pibake emulate start|run|stop|reboot|status|ssh`: arguments, one guest call each, the result printed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pibake import boards
from pibake.cli.common import DEFAULT_IMAGE, add_guest_options
from pibake.emulate import profiles

if TYPE_CHECKING:
    from pibake.emulate.guest import Guest


def _forwards(a: argparse.Namespace) -> tuple[int, ...] | None:
    return None if a.forward is None else tuple(a.forward)


def _print_guest(guest: Guest) -> None:
    how = f"restored from snapshot {guest.snapshot[:12]}" if guest.snapshot else "booted"
    print(f"{guest.name}: ssh -p {guest.ssh_port} {guest.user}@127.0.0.1 ({how} in {guest.boot_seconds:.1f} s)")
    for gp, hp in sorted(guest.forwards.items()):
        print(f"  guest port {gp}: 127.0.0.1:{hp}")


def _start(a: argparse.Namespace) -> int:
    from pibake.emulate import guest

    started = guest.start(
        a.image,
        board=a.board,
        profile=a.profile,
        cpu=a.cpu,
        name=a.name,
        persist=a.persist,
        memory_mb=a.memory,
        timeout=a.timeout,
        inventory=None if a.no_inventory else a.inventory,
        kernel=a.kernel,
        dtb=a.dtb,
        forward=_forwards(a),
        cold=a.cold,
        renew_snapshot=a.renew_snapshot,
        user=a.user,
    )
    _print_guest(started)
    return 0


def _run(a: argparse.Namespace) -> int:
    from pibake.emulate import guest

    return guest.run_foreground(
        a.image,
        board=a.board,
        profile=a.profile,
        cpu=a.cpu,
        name=a.name,
        persist=a.persist,
        kernel=a.kernel,
        dtb=a.dtb,
        forward=_forwards(a),
        cold=a.cold,
        user=a.user,
    )


def _reboot(a: argparse.Namespace) -> int:
    from pibake.emulate import guest

    _print_guest(guest.reboot(a.name, timeout=a.timeout))
    return 0


def _stop(a: argparse.Namespace) -> int:
    from pibake.emulate import guest

    stopped = guest.stop(a.name, timeout=a.timeout)
    print(f"{a.name}: {'stopped cleanly' if stopped.clean else 'killed after timeout'} in {stopped.seconds:.1f} s")
    return 0 if stopped.clean else 1


def _status(a: argparse.Namespace) -> int:
    from pibake.emulate import guest

    st = guest.status(a.name)
    print(json.dumps(st.as_dict(), indent=2, sort_keys=True) if a.json else st.describe())
    return 0 if st.running else 3


def _snapshots(a: argparse.Namespace) -> int:
    from pibake.emulate import snapshot

    if a.clear:
        print(f"removed {snapshot.clear()} snapshot(s) from {snapshot.snapshots_dir()}")
        return 0
    saved = snapshot.listing()
    if a.json:
        print(json.dumps(saved, indent=2, sort_keys=True))
        return 0
    if not saved:
        print(f"no snapshots in {snapshot.snapshots_dir()}")
    for s in saved:
        print(
            f"{s['key'][:12]}  {s['profile']:<12} {s['cpu']:<11} {s['bytes'] >> 20:>5} MiB  "
            f"cold boot {s['boot_seconds']:.0f} s  {s['image']}"
        )
    return 0


def _ssh(a: argparse.Namespace) -> int:
    from pibake.emulate import guest

    return guest.ssh(a.name, a.command)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `emulate` and its actions to the top-level subparsers SUB."""
    p_emu = sub.add_parser(
        "emulate", help="boot an image under qemu-system-arm (32-bit) or qemu-system-aarch64 (64-bit), SSH forwarded"
    )
    emu_sub = p_emu.add_subparsers(dest="emulate_command", required=True, metavar="ACTION")
    for action, help_text in (
        ("start", "boot the image in the background, wait for SSH, write the Ansible inventory"),
        ("run", "boot the image in the foreground until Ctrl-C, then shut it down cleanly"),
    ):
        p = emu_sub.add_parser(action, help=help_text, description=help_text)
        p.add_argument("image", nargs="?", type=Path, default=DEFAULT_IMAGE, help="raw image (default: %(default)s)")
        p.add_argument(
            "--board",
            default=boards.DEFAULT_BOARD,
            choices=boards.names(),
            help="target board: picks the profile and CPU that emulate it (default: %(default)s)",
        )
        p.add_argument(
            "--profile",
            default=None,
            help=f"machine profile: {', '.join(profiles.available())} (the README's table says what each emulates; "
            "default: the board's)",
        )
        p.add_argument("--cpu", default=None, help="CPU model, for profiles that let you choose (default: the board's)")
        p.add_argument(
            "--persist", action="store_true", help="write into the image itself instead of a copy-on-write overlay"
        )
        p.add_argument(
            "--kernel",
            type=Path,
            default=None,
            help="boot this kernel (no initrd) instead of the image's own, e.g. from `pibake kernel build`",
        )
        p.add_argument(
            "--dtb", type=Path, default=None, help="device tree instead of the one on the image's boot partition"
        )
        p.add_argument(
            "--forward",
            type=int,
            action="append",
            default=None,
            metavar="PORT",
            help="forward the guest's TCP PORT to a free port on 127.0.0.1 (repeatable; `emulate status` shows "
            "where; default: 8000, the inference service)",
        )
        p.add_argument(
            "--cold",
            action="store_true",
            help="boot from scratch: neither restore nor save a snapshot (default: restore the snapshot saved by an "
            "earlier start of the same image and settings, or save one once SSH answers)",
        )
        p.add_argument(
            "--user",
            default="pi",
            help="the user SSH logs in as, with pibake's key: the --user the image was prepared with "
            "(default: %(default)s)",
        )
        add_guest_options(p)
        if action == "start":
            p.add_argument("--memory", type=int, default=None, metavar="MIB", help="guest RAM (default: the profile's)")
            p.add_argument(
                "--timeout",
                type=float,
                default=300,
                metavar="S",
                help="give up waiting for SSH after S seconds (default: %(default)s)",
            )
            p.add_argument(
                "--inventory",
                type=Path,
                default=Path("inventories/qemu/hosts.yml"),
                help="Ansible inventory to write (default: %(default)s)",
            )
            p.add_argument("--no-inventory", action="store_true", help="do not write an inventory")
            p.add_argument(
                "--renew-snapshot",
                action="store_true",
                help="boot cold even when a snapshot exists, and save a new one in its place",
            )
            p.set_defaults(func=_start)
        else:
            p.set_defaults(func=_run)
    p = emu_sub.add_parser("stop", help="shut the guest down cleanly (poweroff over SSH, then ACPI, then kill)")
    add_guest_options(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=120,
        metavar="S",
        help="seconds to wait for a clean shutdown (default: %(default)s)",
    )
    p.set_defaults(func=_stop)
    p = emu_sub.add_parser(
        "reboot",
        help="power the guest off cleanly and boot it again from the same disk and ports",
        description="Shut the guest down cleanly (as `stop` does) but keep its overlay, then boot it again with the "
        "same profile, CPU, ports and disk and wait for SSH: proves that what was provisioned comes up at boot. "
        "(The emulated boards run with -no-reboot, so a reboot inside the guest ends qemu.)",
    )
    add_guest_options(p)
    p.add_argument(
        "--timeout", type=float, default=300, metavar="S", help="give up waiting for SSH after S seconds (default: 300)"
    )
    p.set_defaults(func=_reboot)
    p = emu_sub.add_parser("status", help="is the guest running, and where is its SSH port and serial log")
    add_guest_options(p)
    p.add_argument("--json", action="store_true", help="print the guest's state as JSON (for scripts and Molecule)")
    p.set_defaults(func=_status)
    p = emu_sub.add_parser(
        "snapshots",
        help="list the saved guests that `start` restores, or remove them all (--clear)",
        description="A start boots cold the first time an image boots with given settings and saves the running "
        "guest once SSH answers; later starts restore it in seconds. Snapshots are keyed by the image's sha256 and "
        "every launch setting, kept in the cache (least recently used removed past $PIBAKE_SNAPSHOT_MAX_MB, "
        "default 4096).",
    )
    p.add_argument("--clear", action="store_true", help="remove every snapshot")
    p.add_argument("--json", action="store_true", help="print each snapshot's record as JSON")
    p.set_defaults(func=_snapshots)
    p = emu_sub.add_parser("ssh", help="open a shell on the guest, or run COMMAND there")
    add_guest_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="command to run on the guest")
    p.set_defaults(func=_ssh)
