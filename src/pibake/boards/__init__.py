"""The Raspberry Pi boards pibake targets: the one table (plugins/module_utils/boards.py), looked up for the harness.

The facts (SoC, core, instruction set, cpuinfo, device trees, firmware files, the emulating profile
and CPU, and why) live in that table, shared with the collection's wheel_isa_check module; this
package adds lookups that fail with pibake's error kinds. pibake.boards.firmware writes and reads
the boot partition's config.txt and cmdline.txt for a board.
"""

from __future__ import annotations

from pibake._module_utils.boards import BOARDS, DEFAULT_BOARD, Board
from pibake.errors import UsageError

__all__ = ["BOARDS", "DEFAULT_BOARD", "Board", "emulation", "get", "names"]


def article(word: str) -> str:
    """English's indefinite article before WORD as it is spoken: "an ARM1176JZF-S", "a Cortex-A7"."""
    return "an" if word[:1].upper() in "AEIOU" else "a"


def names() -> list[str]:
    """The boards' names, in the table's order (oldest first)."""
    return list(BOARDS)


def get(name: str) -> Board:
    """The board called NAME; UsageError listing the known ones if there is none."""
    try:
        return BOARDS[name]
    except KeyError:
        raise UsageError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None


# The machine profile (qemu/virt64.toml) that boots 64-bit images on the board's own core (Board.cpu64).
PROFILE_64 = "virt64"


def emulation(
    board: Board, *, profile: str | None = None, cpu: str | None = None, arch: str = "armhf"
) -> tuple[str, str | None]:
    """The (profile, CPU) that emulate BOARD running an ARCH (armhf, arm64) OS, unless the user chose them.

    CPU None: the profile's default. The board's own profile and CPU come from the table: for arm64,
    PROFILE_64 with the board's cpu64. Raises UsageError for a board no profile emulates when the user
    did not name one, and for an arm64 OS on a board whose core is not ARMv8.
    """
    if arch == "arm64":
        if board.cpu64 is None:
            raise UsageError(
                f"board {board.name} ({board.model}) has {article(board.core)} {board.core}, which runs no 64-bit "
                "(arm64) OS: use a 32-bit (armhf) image for it (the debian-bookworm-armhf base, or Raspberry Pi OS "
                "armhf)"
            )
        if profile in (None, PROFILE_64):
            return PROFILE_64, cpu or board.cpu64
        return profile, cpu
    if profile is None:
        if board.profile is None:
            raise UsageError(f"board {board.name}: {board.emulation} Name a profile with --profile to use one anyway.")
        return board.profile, cpu or board.cpu
    if profile == board.profile:
        return profile, cpu or board.cpu
    return profile, cpu
