"""The errors pibake raises, one kind per way a run can end badly, each with its own exit code.

Every kind carries a message a user can act on. ``pibake.cli.main`` catches them once, prints the
message to stderr and exits with the kind's ``exit_code``; the traceback goes to the debug log
(``pibake -v``). Code tells errors apart by their class, never by their text.
"""

from __future__ import annotations

from collections.abc import Sequence


class PibakeError(Exception):
    """A step failed (a build, a boot, a download, a provisioning run). Exit code 1."""

    exit_code = 1
    kind = "failed"


class UsageError(PibakeError):
    """The command line or an input file asks for something pibake cannot do. Exit code 2, as argparse's own."""

    exit_code = 2
    kind = "usage error"


class Refused(PibakeError):
    """Not done, for safety: the wrong disk, a mounted device, work that would overwrite its input. Exit code 3."""

    exit_code = 3
    kind = "refused"


class VerificationFailed(PibakeError):
    """A check found the bytes, the model's outputs or the image not as they must be. Exit code 4."""

    exit_code = 4
    kind = "verification failed"


class ToolMissing(PibakeError):
    """A program or package pibake drives is not installed here. Exit code 5."""

    exit_code = 5
    kind = "tool missing"


class Interrupted(PibakeError):
    """Stopped by Ctrl-C or SIGTERM, with what was left behind in the message. Exit code 130 (128 + SIGINT)."""

    exit_code = 130
    kind = "interrupted"


class CommandFailed(PibakeError):
    """A program pibake ran exited non-zero. Exit code 1; ``returncode`` and ``output`` keep what it said.

    ``output`` is the whole captured stdout and stderr, for callers that must react to what the
    program reported (resize2fs's "No space left", say) without parsing this error's message.
    """

    def __init__(self, message: str, *, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output = output


KINDS: tuple[type[PibakeError], ...] = (PibakeError, UsageError, Refused, VerificationFailed, ToolMissing, Interrupted)


def exit_codes_epilog() -> str:
    """The table of exit codes for ``pibake --help`` and the README: one line per kind, 0 first."""
    lines = ["exit codes:", "  0    success"]
    lines += [f"  {k.exit_code:<4} {k.kind}: {_first_line(k)}" for k in sorted(KINDS, key=lambda k: k.exit_code)]
    return "\n".join(lines)


def _first_line(kind: type[PibakeError]) -> str:
    doc = (kind.__doc__ or "").strip().split("\n")[0].split(" Exit code")[0].rstrip(".")
    return doc[:1].lower() + doc[1:]
