"""`pibake preflight`: can these wheels run on the board, and on the CPU that emulates it?

The board's instruction set and emulating profile come from the board table, the rules from
plugins/module_utils/isa.py: the same ones the collection's wheel_isa_check module applies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pibake import boards, isa
from pibake.boards import Board
from pibake.emulate import profiles
from pibake.isa import Artifact, ElfObject, InstructionSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A CPU the wheels are checked against: the board's, or the emulated one."""

    label: str
    isa: InstructionSet
    # What to do when a wheel does not fit.
    hint: str


@dataclass(frozen=True)
class Mismatch:
    obj: ElfObject
    lacks: tuple[str, ...]

    def describe(self) -> str:
        if self.obj.problem:
            return f"{self.obj.name} {self.obj.problem}"
        return f"{self.obj.name} needs {', '.join(self.lacks)}"


@dataclass(frozen=True)
class Verdict:
    artifact: Artifact
    target: Target
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def error(self) -> str:
        what = "; ".join(m.describe() for m in self.mismatches)
        return (
            f"{self.artifact.name} cannot run on {self.target.label}: {what}. "
            f'It would die with "Illegal instruction" (SIGILL). {self.target.hint}'
        )


@dataclass(frozen=True)
class Report:
    board: Board
    targets: tuple[Target, ...]
    artifacts: tuple[Artifact, ...]
    verdicts: tuple[Verdict, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def errors(self) -> list[str]:
        return [v.error() for v in self.verdicts if not v.ok]

    def describe(self) -> str:
        lines = [f"{t.label}: {t.isa.describe()}" for t in self.targets]
        lines += [f"note: {n}" for n in self.notes]
        for art in self.artifacts:
            lines += ["", str(art.path)]
            lines += [f"  {o.describe()}" for o in art.objects] or ["  no native code"]
            for v in self.verdicts:
                if v.artifact is art:
                    status = "OK" if v.ok else "INCOMPATIBLE"
                    detail = "" if v.ok else ": " + "; ".join(m.describe() for m in v.mismatches)
                    lines.append(f"  {status} on {v.target.label}{detail}")
        return "\n".join(lines)


def check(artifact: Artifact, target: Target) -> Verdict:
    """Every ELF file of ARTIFACT that TARGET cannot run, with what it lacks (isa.missing)."""
    mismatches = []
    for obj in artifact.objects:
        lacks = isa.missing(obj.needs, target.isa)
        if obj.problem or lacks:
            mismatches.append(Mismatch(obj, tuple(lacks)))
    return Verdict(artifact, target, tuple(mismatches))


def targets_for(
    board: Board, *, profile: str | None = None, cpu: str | None = None
) -> tuple[tuple[Target, ...], tuple[str, ...]]:
    """The board's CPU and, where one exists, the emulated CPU; plus notes for the report."""
    board_target = Target(
        label=f"board {board.name} ({board.model})",
        isa=board.isa,
        hint=f"Use a build for the {board.name}'s {board.core} ({board.isa.describe()}), "
        "or pick the board with --board.",
    )
    if profile is None and board.profile is None:
        return (board_target,), (f"board {board.name}: {board.emulation}",)
    prof_name, cpu_name = boards.emulation(board, profile=profile, cpu=cpu)
    prof = profiles.load(prof_name)
    cpu_name = prof.resolve_cpu(cpu_name)
    if (prof_name, cpu_name) == (board.profile, board.cpu) and cpu_name == board.core.lower():
        hint = f"The {cpu_name} is the {board.name}'s own core: use a build for it."
    elif (prof_name, cpu_name) == (board.profile, board.cpu):
        hint = (
            f"The {cpu_name} is the closest CPU to the {board.core} that has nothing the board lacks; "
            "if the board itself can run the wheel, emulate it with a CPU that has these instructions "
            "(for example --cpu max, which also has some the board lacks)."
        )
    elif board.profile is not None:
        hint = (
            f"Emulate the {board.name}'s CPU instead: --profile {board.profile} --cpu {board.cpu} "
            f"(pibake emulate start --profile {board.profile} --cpu {board.cpu})."
        )
    else:
        hint = f"Choose a CPU the wheel can run on with --cpu (profile {prof_name} has: {', '.join(prof.cpus)})."
    emulated = Target(
        label=f"emulated CPU {cpu_name} (profile {prof_name})",
        isa=isa.from_cpu_features(prof.features(cpu_name)),
        hint=hint,
    )
    return (board_target, emulated), ()


def preflight(
    paths: Sequence[Path],
    *,
    board: str = boards.DEFAULT_BOARD,
    profile: str | None = None,
    cpu: str | None = None,
) -> Report:
    """Check every wheel (or directory) in PATHS against BOARD and the CPU that emulates it.

    PROFILE and CPU override the board's own emulation profile and CPU.
    """
    the_board = boards.get(board)
    targets, notes = targets_for(the_board, profile=profile, cpu=cpu)
    artifacts = tuple(isa.scan(paths))
    verdicts = tuple(check(a, t) for a in artifacts for t in targets)
    for v in verdicts:
        log.debug("%s on %s: %s", v.artifact.name, v.target.label, "OK" if v.ok else "incompatible")
    return Report(the_board, targets, artifacts, verdicts, notes)
