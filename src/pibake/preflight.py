"""`pibake preflight`: can these wheels run on the board, and on the CPU that emulates it?

For a 32-bit (armhf) OS the board's instruction set and emulating profile come from the board table,
the rules from plugins/module_utils/isa.py: the same ones the collection's wheel_isa_check module
applies, read from the ELF files' ARM build attributes. For a 64-bit (arm64) OS there are no such
attributes: every native wheel is imported (and the model run once) on the board's own core under
qemu-aarch64 (pibake.preflight_dynamic). Either way a file of the other ELF class is refused first:
an armhf process cannot load an AArch64 library, nor an arm64 process an armhf one.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pibake import boards, isa, preflight_dynamic
from pibake.boards import Board
from pibake.emulate import profiles, user
from pibake.errors import UsageError
from pibake.isa import Artifact, ElfObject, InstructionSet
from pibake.preflight_dynamic import Trial

log = logging.getLogger(__name__)

# The userlands a wheel is checked for, by Debian's names (dpkg --print-architecture).
ARCHES = tuple(isa.USERLANDS)
DEFAULT_ARCH = "armhf"


@dataclass(frozen=True)
class Target:
    """A CPU the wheels are checked against: the board's, or the emulated one."""

    label: str
    isa: InstructionSet
    # What to do when a wheel does not fit.
    hint: str
    # The userland whose processes load the wheels ("armhf" or "arm64"), and for arm64 the core that
    # qemu-aarch64 runs them on (no build attributes to compare: isa is unused there).
    arch: str = DEFAULT_ARCH
    cpu: str | None = None
    # What to do with a file of the other ELF class.
    class_hint: str = ""

    def summary(self) -> str:
        """One line for the report: the label and what the target has."""
        if self.arch == "arm64":
            level = preflight_dynamic.CORE_LEVELS.get(self.cpu or "", self.cpu or "")
            return f"{self.label}: {level}; native wheels are run on it (AArch64 files record no FP/SIMD needs)"
        return f"{self.label}: {self.isa.describe()}"


@dataclass(frozen=True)
class Mismatch:
    obj: ElfObject
    lacks: tuple[str, ...]
    # Why the target's userland cannot load the file at all (its ELF class or machine; isa.userland_problem).
    wrong_class: str | None = None

    def describe(self) -> str:
        if self.wrong_class:
            return f"{self.obj.name} {self.wrong_class}"
        if self.obj.problem:
            return f"{self.obj.name} {self.obj.problem}"
        return f"{self.obj.name} needs {', '.join(self.lacks)}"


@dataclass(frozen=True)
class Verdict:
    artifact: Artifact
    target: Target
    mismatches: tuple[Mismatch, ...]
    # Runs of the wheel on the target's core (64-bit targets only).
    trials: tuple[Trial, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.mismatches and all(t.ok for t in self.trials)

    def details(self) -> list[str]:
        """What went wrong, one phrase each: the files that do not fit, then the runs that did not go well."""
        return [m.describe() for m in self.mismatches] + [t.describe() for t in self.trials if not t.ok]

    def errors(self) -> list[str]:
        """One message per kind of failure, each saying what to do instead."""
        out = []
        wrong = [m.describe() for m in self.mismatches if m.wrong_class]
        lacking = [m.describe() for m in self.mismatches if not m.wrong_class]
        if wrong:
            out.append(
                f"{self.artifact.name} cannot be loaded on {self.target.label}: {'; '.join(wrong)}. "
                f"{self.target.class_hint}".rstrip()
            )
        if lacking:
            out.append(
                f"{self.artifact.name} cannot run on {self.target.label}: {'; '.join(lacking)}. "
                f'It would die with "Illegal instruction" (SIGILL). {self.target.hint}'
            )
        return out + [t.error() for t in self.trials if not t.ok]

    def error(self) -> str:
        return "\n".join(self.errors())


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
        return [e for v in self.verdicts for e in v.errors()]

    def describe(self) -> str:
        lines = [t.summary() for t in self.targets]
        lines += [f"note: {n}" for n in self.notes]
        for art in self.artifacts:
            lines += ["", str(art.path)]
            lines += [f"  {_describe(o, self.targets[0].arch)}" for o in art.objects] or ["  no native code"]
            for v in self.verdicts:
                if v.artifact is art:
                    lines += [f"  {t.describe()}" for t in v.trials]
                    status = "OK" if v.ok else "INCOMPATIBLE"
                    detail = "" if v.ok else ": " + "; ".join(v.details())
                    lines.append(f"  {status} on {v.target.label}{detail}")
        return "\n".join(lines)


def _describe(obj: ElfObject, arch: str) -> str:
    if arch == "arm64" and isa.userland_problem(obj, arch) is None:
        return f"{obj.name}: AArch64 code, which records no FP/SIMD needs: run on the core"
    return obj.describe()


def check(artifact: Artifact, target: Target) -> Verdict:
    """Every ELF file of ARTIFACT that TARGET cannot load (ELF class) or, on armhf, run (isa.missing)."""
    mismatches = []
    for obj in artifact.objects:
        wrong = isa.userland_problem(obj, target.arch)
        if wrong:
            mismatches.append(Mismatch(obj, (), wrong))
            continue
        if target.arch != "armhf":
            continue  # nothing recorded to compare: preflight_dynamic runs it instead
        lacks = isa.missing(obj.needs, target.isa)
        if obj.problem or lacks:
            mismatches.append(Mismatch(obj, tuple(lacks)))
    return Verdict(artifact, target, tuple(mismatches))


def targets_for(
    board: Board, *, profile: str | None = None, cpu: str | None = None
) -> tuple[tuple[Target, ...], tuple[str, ...]]:
    """The board's CPU and, where one exists, the emulated CPU; plus notes for the report."""
    class_hint = _class_hint(board, DEFAULT_ARCH)
    board_target = Target(
        label=f"board {board.name} ({board.model})",
        isa=board.isa,
        hint=f"Use a build for the {board.name}'s {board.core} ({board.isa.describe()}), "
        "or pick the board with --board.",
        class_hint=class_hint,
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
        class_hint=class_hint,
    )
    return (board_target, emulated), ()


def target64_for(board: Board, *, cpu: str | None = None) -> Target:
    """BOARD under a 64-bit OS: its own core (board table: cpu64) or CPU, as qemu-aarch64 runs it.

    Raises UsageError for a board whose core has no AArch64 state (ARMv6, ARMv7), and for a CPU
    qemu-aarch64 does not have (its ``-cpu help``).
    """
    if board.cpu64 is None:
        raise UsageError(
            f"board {board.name} ({board.model}) has {boards.article(board.core)} {board.core}, which cannot run a "
            "64-bit OS: check its "
            f"wheels with --arch armhf, or pick a board that can: "
            + ", ".join(b.name for b in boards.BOARDS.values() if b.cpu64)
        )
    core = cpu or board.cpu64
    if cpu is not None and cpu not in (known := user.cpus("arm64")):
        raise UsageError(f"qemu-aarch64 has no CPU {cpu!r}: it has {', '.join(known)}")
    own = "its own core" if core == board.cpu64 else f"chosen with --cpu; its own is {board.cpu64}"
    return Target(
        label=f"board {board.name} ({board.soc}, 64-bit OS) on {core} ({own}) under qemu-aarch64",
        isa=board.isa,
        hint="",
        arch="arm64",
        cpu=core,
        class_hint=_class_hint(board, "arm64"),
    )


def _class_hint(board: Board, arch: str) -> str:
    if arch == "arm64":
        return (
            "Use the build for aarch64 (a *_aarch64.whl) on a 64-bit OS, "
            "or check this one for a 32-bit OS (--arch armhf)."
        )
    other = " or check this one for a 64-bit OS (--arch arm64)" if board.cpu64 else ""
    return f"Use the build for 32-bit ARM (a *_armv7l.whl) on a 32-bit OS{other}."


def userland_of(artifacts: Sequence[Artifact]) -> str:
    """The userland ("armhf", "arm64") the ARTIFACTS' native code is built for, read from its ELF headers.

    DEFAULT_ARCH when there is no ARM or AArch64 code to read (pure-Python wheels, x86 files: the armhf check then
    says what each is). Raises UsageError when both kinds are there: which one the OS runs is the user's to say.
    """
    found: dict[str, list[str]] = {}
    for art in artifacts:
        for obj in art.objects:
            for userland, header in isa.USERLANDS.items():
                if (obj.elf_class, obj.machine) == header:
                    found.setdefault(userland, []).append(art.name)
    if len(found) > 1:
        which = "; ".join(f"{u}: {', '.join(sorted(set(names)))}" for u, names in sorted(found.items()))
        raise UsageError(f"the wheels hold code for both userlands ({which}): name the OS's with --arch")
    return next(iter(found), DEFAULT_ARCH)


def preflight(
    paths: Sequence[Path],
    *,
    board: str = boards.DEFAULT_BOARD,
    profile: str | None = None,
    cpu: str | None = None,
    arch: str | None = None,
    sysroot: Path | None = None,
    model: Path | None = None,
    timeout: float = 600,
) -> Report:
    """Check every wheel (or directory) in PATHS against BOARD running an ARCH ("armhf", "arm64") userland.

    ARCH None: the one the wheels' native code is built for (userland_of), arm64 when MODEL or SYSROOT is given.

    armhf: against the board's CPU and the CPU that emulates it, from the files' build attributes;
    PROFILE and CPU override the board's own emulation profile and CPU. arm64: every file's ELF class
    first, then each wheel with aarch64 code is imported, and MODEL (a .tflite or .onnx file) run once, by
    SYSROOT's usr/bin/python3 under qemu-aarch64 on the board's core (CPU overrides it; PROFILE is
    refused), TIMEOUT seconds per run; SYSROOT defaults to the arm64 root `pibake image build` cached.

    Raises UsageError for an unknown board, arch or CPU, a board without a 64-bit core, a missing
    path; ToolMissing when arm64 needs a sysroot and there is none, or qemu-user is not installed;
    VerificationFailed for a damaged wheel.
    """
    the_board = boards.get(board)
    if arch is not None and arch not in ARCHES:
        raise UsageError(f"unknown arch {arch!r}: pibake checks wheels for {', '.join(ARCHES)}")
    artifacts = tuple(isa.scan(paths))
    if arch is None:
        arch = "arm64" if model is not None or sysroot is not None else userland_of(artifacts)
        log.info("checking for a %s OS (the wheels' ELF headers; --arch chooses)", arch)
    if arch == "armhf":
        if model is not None or sysroot is not None:
            raise UsageError(
                "--model and --sysroot are for the 64-bit check (--arch arm64); the 32-bit one reads build attributes"
            )
        targets, notes = targets_for(the_board, profile=profile, cpu=cpu)
        verdicts = tuple(check(a, t) for a in artifacts for t in targets)
    else:
        if profile is not None:
            raise UsageError(
                "--profile is for the 32-bit check: the 64-bit one runs the wheels under qemu-aarch64 (user mode) "
                "on the board's core; choose another core with --cpu"
            )
        target = target64_for(the_board, cpu=cpu)
        targets, notes = (target,), ()
        verdicts = _run_arm64(artifacts, target, the_board, sysroot=sysroot, model=model, timeout=timeout)
    for v in verdicts:
        log.debug("%s on %s: %s", v.artifact.name, v.target.label, "OK" if v.ok else "incompatible")
    return Report(the_board, targets, artifacts, verdicts, notes)


def _run_arm64(
    artifacts: Sequence[Artifact],
    target: Target,
    board: Board,
    *,
    sysroot: Path | None,
    model: Path | None,
    timeout: float,
) -> tuple[Verdict, ...]:
    """Static verdicts (ELF class) for every artifact; wheels that load get their runs on the core as trials."""
    static = {a.path: check(a, target) for a in artifacts}
    wheels = [a.path for a in artifacts if a.path.is_file() and zipfile.is_zipfile(a.path)]
    native = [a.path for a in artifacts if a.path in wheels and a.objects and static[a.path].ok]
    if not native and model is None:
        return tuple(static.values())
    if model is not None and not model.is_file():
        raise UsageError(f"--model {model}: no such file")
    root = preflight_dynamic.require_sysroot(sysroot)
    trials = preflight_dynamic.try_wheels(
        [w for w in wheels if static[w].ok],
        board=board,
        cpu=target.cpu or "",
        sysroot=root,
        native=native,
        model=model,
        timeout=timeout,
    )
    by_wheel: dict[Path, list[Trial]] = {}
    for trial in trials:
        # An import belongs to its wheel; the model's run to the wheel Python was in when it died, else to every
        # native wheel (each could have been the one).
        owners = (
            [w for w in native if trial.subject == w.name]
            or [w for w in wheels if (trial.culprit or "").startswith(f"{w.name}:")]
            or native
            or [artifacts[0].path]
        )
        for owner in owners:
            by_wheel.setdefault(owner, []).append(trial)
    return tuple(Verdict(a, target, static[a.path].mismatches, tuple(by_wheel.get(a.path, ()))) for a in artifacts)
