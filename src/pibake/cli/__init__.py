"""Command line: one module per verb group parses arguments and calls one stage; `main` maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pibake import __version__
from pibake.cli import bake, bench, demo, emulate, flash, hostkeys, image, init, kernel, preflight, wheels
from pibake.errors import Interrupted, PibakeError, exit_codes_epilog
from pibake.util import progress

log = logging.getLogger("pibake")

GROUPS = (init, bake, image, kernel, emulate, hostkeys, demo, preflight, wheels, flash, bench)


def build_parser() -> argparse.ArgumentParser:
    """The whole `pibake` parser: each verb group registers its own subcommands."""
    parser = argparse.ArgumentParser(
        prog="pibake",
        description="Bake a Raspberry Pi image that carries an ML model, prove it in QEMU, burn it.",
        epilog=exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pibake {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command run (debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `pibake` command; return its exit status (see `exit_codes_epilog`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # On a terminal, long steps are live rows at the foot of the screen (util/progress.py) and the log is printed
    # through the same console, above them; elsewhere (CI, a pipe, a file) the log is plain lines on stderr.
    console = progress.terminal_console()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[progress.ConsoleHandler(console) if console else logging.StreamHandler(sys.stderr)],
    )
    # paramiko narrates every connection at INFO; the harness says what matters itself.
    logging.getLogger("paramiko").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        with progress.live(console):
            return int(args.func(args))
    except PibakeError as e:
        log.debug("error", exc_info=True)
        print(f"pibake: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        log.debug("interrupted", exc_info=True)
        if isinstance(e.__context__, Interrupted):
            # Ctrl-C again while the first one's message was on its way out (a flash waits for the
            # card as it closes it): that message says what was left behind.
            print(f"pibake: error: {e.__context__}", file=sys.stderr)
            return Interrupted.exit_code
        print("pibake: interrupted", file=sys.stderr)
        return Interrupted.exit_code


if __name__ == "__main__":
    sys.exit(main())
