# Copyright: pibake engineers
# MIT License (see galaxy.yml)
"""The ARM instruction-set rules: what an ELF file's build attributes ask for, what a CPU's features give.

ARM toolchains record in every ELF file's ``.ARM.attributes`` section what the code was compiled
for (``readelf -A``): the architecture (Tag_CPU_arch), the floating-point unit (Tag_FP_arch), the
SIMD unit (Tag_Advanced_SIMD_arch) and whether it divides in hardware (Tag_DIV_use). A CPU's side of
the same question is its /proc/cpuinfo ``Features`` line (the kernel's hwcaps). Comparing the two
tells, before anything is installed, that a wheel would die with "Illegal instruction" (SIGILL).

This file is the one implementation: the collection's module wheel_isa_check imports it as
``ansible_collections.pibake.raspberry.plugins.module_utils.isa``, the pibake harness as
``pibake._module_utils.isa`` (a symlink to this file). It may import only the standard library and
pyelftools, whose import is guarded so a module can report it missing (``ELFTOOLS_IMPORT_ERROR``).
"""

from __future__ import annotations

import io
import logging
import traceback
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

try:
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import ARMAttributesSection
except ImportError:
    ELFTOOLS_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    ELFTOOLS_IMPORT_ERROR = None

log = logging.getLogger(__name__)

ELF_MAGIC = b"\x7fELF"
NO_ATTRIBUTES = ("no build attributes",)


class Arch(IntEnum):
    """ARM architecture levels, ordered: a CPU runs code built for its level or lower (Arm ARM, A1.3)."""

    ARMV5 = 50
    ARMV6 = 60
    ARMV6T2 = 65
    ARMV7 = 70
    ARMV8 = 80
    ARMV8_1 = 81
    ARMV8_2 = 82
    ARMV8_3 = 83
    ARMV9 = 90

    @property
    def label(self) -> str:
        return _ARCH_LABELS[self]


_ARCH_LABELS = {
    Arch.ARMV5: "ARMv5",
    Arch.ARMV6: "ARMv6",
    Arch.ARMV6T2: "ARMv6T2",
    Arch.ARMV7: "ARMv7",
    Arch.ARMV8: "ARMv8 (AArch32)",
    Arch.ARMV8_1: "ARMv8.1",
    Arch.ARMV8_2: "ARMv8.2",
    Arch.ARMV8_3: "ARMv8.3",
    Arch.ARMV9: "ARMv9",
}


class FP(IntEnum):
    """Floating-point units, ordered: each level has every instruction of the ones below (Arm ARM, A2.6)."""

    NONE = 0
    VFPV2 = 2
    VFPV3 = 3
    VFPV4 = 4  # VFPv3 + fused multiply-add (VFMA) + half-precision conversions
    ARMV8 = 8  # VFPv4 + VRINT, VSEL, VMAXNM, VCVTA...

    @property
    def label(self) -> str:
        return _FP_LABELS[self]


_FP_LABELS = {FP.NONE: "no FPU", FP.VFPV2: "VFPv2", FP.VFPV3: "VFPv3", FP.VFPV4: "VFPv4", FP.ARMV8: "FP-ARMv8"}


class SIMD(IntEnum):
    """Advanced SIMD (NEON) levels, ordered (Arm ARM, A2.6)."""

    NONE = 0
    NEON = 1
    NEON_FMA = 2  # NEONv2: NEON with fused multiply-add (VFMA.F32 on vectors)
    NEON_ARMV8 = 3
    NEON_ARMV8_1 = 4

    @property
    def label(self) -> str:
        return _SIMD_LABELS[self]


_SIMD_LABELS = {
    SIMD.NONE: "no NEON",
    SIMD.NEON: "NEON",
    SIMD.NEON_FMA: "NEON with FMA",
    SIMD.NEON_ARMV8: "NEON for ARMv8",
    SIMD.NEON_ARMV8_1: "NEON for ARMv8.1",
}

# Tag values (ARM IHI 0045, "Addenda to the ARM ABI", section 3.3.5) -> levels. Values newer than
# the table map to the highest level: a requirement we cannot name is not assumed to be met.
CPU_ARCH_TAG = {
    0: Arch.ARMV5,  # Pre-v4
    1: Arch.ARMV5,  # v4
    2: Arch.ARMV5,  # v4T
    3: Arch.ARMV5,  # v5T
    4: Arch.ARMV5,  # v5TE
    5: Arch.ARMV5,  # v5TEJ
    6: Arch.ARMV6,  # v6
    7: Arch.ARMV6,  # v6KZ (the Pi 1's ARM1176JZF-S)
    8: Arch.ARMV6T2,  # v6T2
    9: Arch.ARMV6,  # v6K
    10: Arch.ARMV7,  # v7
    # M-profile code has no place in a Linux shared object; these are the A-profile levels that run it.
    11: Arch.ARMV7,  # v6-M
    12: Arch.ARMV7,  # v6S-M
    13: Arch.ARMV7,  # v7E-M
    14: Arch.ARMV8,  # v8-A
    15: Arch.ARMV8,  # v8-R
    16: Arch.ARMV8,  # v8-M.baseline
    17: Arch.ARMV8,  # v8-M.mainline
    18: Arch.ARMV8_1,  # v8.1-A
    19: Arch.ARMV8_2,  # v8.2-A
    20: Arch.ARMV8_3,  # v8.3-A
    21: Arch.ARMV8_1,  # v8.1-M.mainline
    22: Arch.ARMV9,  # v9-A
}
# The names `readelf -A` (binutils) prints for the same values.
CPU_ARCH_NAMES = {
    0: "Pre-v4",
    1: "v4",
    2: "v4T",
    3: "v5T",
    4: "v5TE",
    5: "v5TEJ",
    6: "v6",
    7: "v6KZ",
    8: "v6T2",
    9: "v6K",
    10: "v7",
    11: "v6-M",
    12: "v6S-M",
    13: "v7E-M",
    14: "v8-A",
    15: "v8-R",
    16: "v8-M.baseline",
    17: "v8-M.mainline",
    18: "v8.1-A",
    19: "v8.2-A",
    20: "v8.3-A",
    21: "v8.1-M.mainline",
    22: "v9-A",
}
# Tag_FP_arch -> (level, needs 32 double-precision registers)
FP_ARCH_TAG = {
    0: (FP.NONE, False),
    1: (FP.VFPV2, False),  # VFPv1: obsolete, a subset of VFPv2
    2: (FP.VFPV2, False),
    3: (FP.VFPV3, True),
    4: (FP.VFPV3, False),  # VFPv3-D16
    5: (FP.VFPV4, True),
    6: (FP.VFPV4, False),  # VFPv4-D16
    7: (FP.ARMV8, True),
    8: (FP.ARMV8, False),  # FPv5 / FP-D16 for ARMv8
}
FP_ARCH_NAMES = {
    0: "No",
    1: "VFPv1",
    2: "VFPv2",
    3: "VFPv3",
    4: "VFPv3-D16",
    5: "VFPv4",
    6: "VFPv4-D16",
    7: "FP for ARMv8",
    8: "FPv5/FP-D16 for ARMv8",
}
SIMD_ARCH_TAG = {
    0: SIMD.NONE,
    1: SIMD.NEON,
    2: SIMD.NEON_FMA,
    3: SIMD.NEON_ARMV8,
    4: SIMD.NEON_ARMV8_1,
}
SIMD_ARCH_NAMES = {
    0: "No",
    1: "NEONv1",
    2: "NEONv1 with Fused-MAC",
    3: "NEON for ARMv8",
    4: "NEON for ARMv8.1",
}
THUMB2 = 2  # Tag_THUMB_ISA_use: Thumb-2 needs ARMv6T2 or later
DIV_USED = 2  # Tag_DIV_use: SDIV/UDIV used in ARMv7-A code (the integer-divide extension)

# /proc/cpuinfo features (Linux's arm32 hwcap names in arch/arm/kernel/setup.c, and arm64's in
# arch/arm64/kernel/cpuinfo.c for a 64-bit kernel) that only CPUs of a given architecture or later report.
V8_FEATURES = frozenset({"crc32", "aes", "pmull", "sha1", "sha2", "asimd"})
V7_FEATURES = frozenset(
    {"neon", "vfpv3", "vfpv3d16", "vfpv4", "idiva", "idivt", "vfpd32", "lpae", "thumbee", "evtstrm"}
)
V6_FEATURES = frozenset({"tls"})
# uname -m -> the architecture it guarantees (a 32-bit kernel on a Pi 3 still says armv7l).
MACHINE_ARCH = {"armv6l": Arch.ARMV6, "armv7l": Arch.ARMV7, "armv8l": Arch.ARMV8, "aarch64": Arch.ARMV8}


@dataclass(frozen=True)
class InstructionSet:
    """What code needs, or what a CPU has: architecture, FPU, NEON, hardware divide, CRC32."""

    arch: Arch = Arch.ARMV5
    fp: FP = FP.NONE
    fp_d32: bool = False
    simd: SIMD = SIMD.NONE
    idiv: bool = False
    crc32: bool = False

    def describe(self, *, only_present: bool = False) -> str:
        """For example "ARMv7, VFPv4 (D32), NEON with FMA"; ONLY_PRESENT leaves out "no FPU" and "no NEON"."""
        parts = [self.arch.label]
        if self.fp is not FP.NONE or not only_present:
            parts.append(self.fp.label + (" (D32)" if self.fp_d32 and self.fp is not FP.NONE else ""))
        if self.simd is not SIMD.NONE or not only_present:
            parts.append(self.simd.label)
        if self.idiv:
            parts.append("integer divide")
        if self.crc32:
            parts.append("CRC32")
        return ", ".join(parts)

    def union(self, other: InstructionSet) -> InstructionSet:
        """What code made of both parts needs."""
        return InstructionSet(
            arch=max(self.arch, other.arch),
            fp=max(self.fp, other.fp),
            fp_d32=self.fp_d32 or other.fp_d32,
            simd=max(self.simd, other.simd),
            idiv=self.idiv or other.idiv,
            crc32=self.crc32 or other.crc32,
        )


def missing(needs: InstructionSet, has: InstructionSet) -> list[str]:
    """What NEEDS asks for that HAS lacks, one phrase each ("VFPv4 (has VFPv3)"); empty if it runs.

    The levels are ordered as the Arm ARM defines them (each FP and NEON level includes the ones
    below), so "lacks" is a comparison per component.
    """
    out: list[str] = []
    if needs.arch > has.arch:
        out.append(f"{needs.arch.label} (has {has.arch.label})")
    if needs.fp > has.fp:
        out.append(f"{needs.fp.label} (has {has.fp.label})")
    elif needs.fp_d32 and not has.fp_d32 and has.fp is not FP.NONE:
        out.append(f"{needs.fp.label} with 32 double registers (has 16)")
    if needs.simd > has.simd:
        out.append(f"{needs.simd.label} (has {has.simd.label})")
    if needs.idiv and not has.idiv:
        out.append("hardware integer divide, SDIV/UDIV (has none)")
    if needs.crc32 and not has.crc32:
        out.append("CRC32 instructions (has none)")
    return out


def from_cpu_features(features: Iterable[str], *, machine: str | None = None) -> InstructionSet:
    """The instruction set of a CPU from its /proc/cpuinfo Features (and ``uname -m`` if known).

    Feature names are Linux's hwcaps (arch/arm/kernel/setup.c, arch/arm64/kernel/cpuinfo.c). A
    32-bit kernel reports ARMv8 cores (Pi 3/4) as armv7l with ``vfpv4`` and ``neon``; what gives
    them away is ``crc32`` (measured on a Pi 3B+ under Raspberry Pi OS Legacy), so v8-only features
    raise the architecture.
    """
    feats = {f.lower() for f in features}
    arch = MACHINE_ARCH.get((machine or "").lower(), Arch.ARMV5)
    if feats & V8_FEATURES:
        arch = max(arch, Arch.ARMV8)
    elif feats & V7_FEATURES:
        arch = max(arch, Arch.ARMV7)
    elif feats & V6_FEATURES:
        arch = max(arch, Arch.ARMV6)
    if "vfpv4" in feats or "fp" in feats:
        fp = FP.ARMV8 if arch >= Arch.ARMV8 else FP.VFPV4
    elif feats & {"vfpv3", "vfpv3d16"}:
        fp = FP.VFPV3
    elif "vfp" in feats:
        fp = FP.VFPV2
    else:
        fp = FP.NONE
    # NEON always comes with 32 double registers; vfpv3d16 says there are only 16.
    fp_d32 = fp is not FP.NONE and bool(feats & {"vfpd32", "neon", "asimd"}) and "vfpv3d16" not in feats
    if feats & {"neon", "asimd"}:
        simd = SIMD.NEON_ARMV8 if arch >= Arch.ARMV8 else SIMD.NEON_FMA if "vfpv4" in feats else SIMD.NEON
    else:
        simd = SIMD.NONE
    return InstructionSet(
        arch=arch,
        fp=fp,
        fp_d32=fp_d32,
        simd=simd,
        idiv="idiva" in feats or arch >= Arch.ARMV8,
        crc32="crc32" in feats,
    )


# ---------------------------------------------------------------- reading ELF files


@dataclass(frozen=True)
class ElfObject:
    """One ELF file inside a wheel or directory, and what it needs to run."""

    name: str
    needs: InstructionSet
    # readelf-style tags behind NEEDS, e.g. ("Tag_FP_arch: VFPv4", ...)
    tags: tuple[str, ...] = ()
    # Set when the file cannot run on any 32-bit ARM CPU (x86 or AArch64 code, unreadable).
    problem: str | None = None
    # The ELF header's class (32 or 64: e_ident[EI_CLASS]) and machine (e_machine, pyelftools' name); 0 and ""
    # when the headers are unreadable. userland_problem() compares them with a userland.
    elf_class: int = 32
    machine: str = "EM_ARM"

    @property
    def recorded(self) -> bool:
        """Whether the file states what it needs (ARM code with build attributes)."""
        return bool(self.tags) and self.tags != NO_ATTRIBUTES

    def describe(self) -> str:
        if self.problem:
            return f"{self.name}: {self.problem}"
        if self.tags == NO_ATTRIBUTES:
            return f"{self.name}: no build attributes, nothing to check"
        return f"{self.name}: needs {self.needs.describe(only_present=True)} ({', '.join(self.tags)})"


@dataclass(frozen=True)
class Artifact:
    """A wheel (or a directory of loose files) and the ELF files in it."""

    path: Path
    objects: tuple[ElfObject, ...]

    @property
    def name(self) -> str:
        return self.path.name


class NoSuchPath(Exception):
    """A path given to scan() that is neither a file nor a directory."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"no wheel or directory at {path}")
        self.path = path


class UnreadableWheel(Exception):
    """A file that is neither an ELF file nor a readable zip archive; REASON is what zipfile said."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: not a readable wheel ({reason})")
        self.path = path
        self.reason = reason


def read_elf(data: bytes, name: str) -> ElfObject:
    """What the ELF file DATA (called NAME in reports) needs, from its ARM build attributes.

    The attributes are the ``aeabi`` subsection of ``.ARM.attributes`` (ARM IHI 0045); the tags
    are worded as ``readelf -A`` prints them. Needs pyelftools (see ELFTOOLS_IMPORT_ERROR).
    """
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = str(elf["e_machine"])
        if machine != "EM_ARM":
            what = "AArch64 (64-bit)" if machine == "EM_AARCH64" else _without_em(machine)
            return ElfObject(
                name,
                InstructionSet(),
                problem=f"is {what} code, which no 32-bit ARM system can run",
                elf_class=elf.elfclass,
                machine=machine,
            )
        sections = [s for s in elf.iter_sections() if isinstance(s, ARMAttributesSection)]
        if not sections:
            log.debug("%s: no .ARM.attributes section, nothing to check", name)
            return ElfObject(name, InstructionSet(), tags=NO_ATTRIBUTES)
        values: dict[str, int] = {}
        for section in sections:
            for subsection in section.iter_subsections("aeabi"):
                for subsub in subsection.iter_subsubsections():
                    for attr in subsub.iter_attributes():
                        if isinstance(attr.value, int) and isinstance(attr.tag, str):
                            # Section- and symbol-scoped attributes can only ask for more.
                            values[attr.tag] = max(values.get(attr.tag, 0), attr.value)
    except (ELFError, ConstructError, ValueError, KeyError) as e:
        return ElfObject(
            name,
            InstructionSet(),
            problem=f"has unreadable ELF headers or build attributes ({e})",
            elf_class=0,
            machine="",
        )
    return _needs_from_tags(name, values)


# Debian's architecture names (``dpkg --print-architecture``) of the two ARM userlands -> the ELF class and
# machine of the files their processes load (ELF gABI: a process maps only objects of its own class; Arm's
# ELF for the Arm Architecture and ELF for the Arm 64-bit Architecture give EM_ARM = 40, EM_AARCH64 = 183).
USERLANDS = {"armhf": (32, "EM_ARM"), "arm64": (64, "EM_AARCH64")}
_USERLAND_WORDS = {"armhf": "a 32-bit (armhf) system", "arm64": "a 64-bit (arm64) system"}
_MACHINE_WORDS = {"EM_ARM": "ARM", "EM_AARCH64": "AArch64"}


def userland_problem(obj: ElfObject, userland: str) -> str | None:
    """Why a process of USERLAND ("armhf" or "arm64", see USERLANDS) cannot load OBJ by its ELF class; None if it can.

    Only the ELF header is compared (class and machine): whether the instructions inside run on the
    board's core is a separate question (missing() for 32-bit files; a run on the core for 64-bit ones).
    Raises KeyError for a userland not in USERLANDS.
    """
    want = USERLANDS[userland]
    if (obj.elf_class, obj.machine) == want:
        return None
    if not obj.machine:
        return obj.problem or "has unreadable ELF headers"
    for other, (elf_class, machine) in USERLANDS.items():
        if (obj.elf_class, obj.machine) == (elf_class, machine):
            return (
                f"is ELFCLASS{elf_class} {_MACHINE_WORDS[machine]} ({other}) code, which {_USERLAND_WORDS[userland]} "
                f"cannot load: a process loads only ELFCLASS{want[0]} {_MACHINE_WORDS[want[1]]} libraries"
            )
    return f"is ELFCLASS{obj.elf_class} {_without_em(obj.machine)} code, which no ARM system can run"


def _without_em(machine: str) -> str:
    return machine[len("EM_") :] if machine.startswith("EM_") else machine


def _needs_from_tags(name: str, values: dict[str, int]) -> ElfObject:
    cpu_arch = values.get("TAG_CPU_ARCH", 0)
    fp_arch = values.get("TAG_FP_ARCH", 0)
    simd_arch = values.get("TAG_ADVANCED_SIMD_ARCH", 0)
    arch = CPU_ARCH_TAG.get(cpu_arch, Arch.ARMV9)
    if values.get("TAG_THUMB_ISA_USE") == THUMB2:
        arch = max(arch, Arch.ARMV6T2)
    fp, fp_d32 = FP_ARCH_TAG.get(fp_arch, (FP.ARMV8, True))
    needs = InstructionSet(
        arch=arch,
        fp=fp,
        fp_d32=fp_d32,
        simd=SIMD_ARCH_TAG.get(simd_arch, SIMD.NEON_ARMV8_1),
        # Integer divide is part of ARMv8; on ARMv7-A it is an extension the attribute asks for.
        idiv=values.get("TAG_DIV_USE") == DIV_USED and arch < Arch.ARMV8,
    )
    tags = [f"Tag_CPU_arch: {CPU_ARCH_NAMES.get(cpu_arch, f'?{cpu_arch}')}"]
    if fp_arch:
        tags.append(f"Tag_FP_arch: {FP_ARCH_NAMES.get(fp_arch, f'?{fp_arch}')}")
    if simd_arch:
        tags.append(f"Tag_Advanced_SIMD_arch: {SIMD_ARCH_NAMES.get(simd_arch, f'?{simd_arch}')}")
    if needs.idiv:
        tags.append("Tag_DIV_use: Allowed in v7-A with integer division extension")
    return ElfObject(name, needs, tags=tuple(tags))


def _elf_members(wheel: Path) -> Iterator[ElfObject]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.is_dir() or info.file_size < len(ELF_MAGIC):
                    continue
                with zf.open(info) as f:
                    head = f.read(len(ELF_MAGIC))
                    if head == ELF_MAGIC:
                        yield read_elf(head + f.read(), info.filename)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnreadableWheel(wheel, str(e)) from e


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(ELF_MAGIC)) == ELF_MAGIC
    except OSError:
        return False


def scan(paths: Sequence[Path]) -> list[Artifact]:
    """The ELF files of every wheel named in PATHS, or found in directories among them.

    A directory gives one artifact per ``*.whl`` under it, plus one for the loose ELF files in it
    (an unpacked wheel, a site-packages tree). A single ELF file is its own artifact. Raises
    NoSuchPath for a path that is not there, UnreadableWheel for a file that is no zip archive.
    """
    artifacts: list[Artifact] = []
    for path in paths:
        if path.is_dir():
            wheels = sorted(path.rglob("*.whl"))
            artifacts += [Artifact(w, tuple(_elf_members(w))) for w in wheels]
            loose = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".whl" and _is_elf(p))
            if loose or not wheels:
                artifacts.append(
                    Artifact(path, tuple(read_elf(p.read_bytes(), str(p.relative_to(path))) for p in loose))
                )
        elif path.is_file() and _is_elf(path):
            artifacts.append(Artifact(path, (read_elf(path.read_bytes(), path.name),)))
        elif path.is_file():
            artifacts.append(Artifact(path, tuple(_elf_members(path))))
        else:
            raise NoSuchPath(path)
    return artifacts
