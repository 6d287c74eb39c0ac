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


def names() -> list[str]:
    """The boards' names, in the table's order (oldest first)."""
    return list(BOARDS)


def get(name: str) -> Board:
    """The board called NAME; UsageError listing the known ones if there is none."""
    try:
        return BOARDS[name]
    except KeyError:
        raise UsageError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None


def emulation(board: Board, *, profile: str | None = None, cpu: str | None = None) -> tuple[str, str | None]:
    """The (profile, CPU) that emulate BOARD, unless the user chose them (CPU None: the profile's default).

    The board's own profile and CPU come from the table. Raises UsageError for a board no profile
    emulates when the user did not name one.
    """
    if profile is None:
        if board.profile is None:
            raise UsageError(f"board {board.name}: {board.emulation} Name a profile with --profile to use one anyway.")
        return board.profile, cpu or board.cpu
    if profile == board.profile:
        return profile, cpu or board.cpu
    return profile, cpu
