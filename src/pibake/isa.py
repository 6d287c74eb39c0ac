"""pibake's view of the ARM instruction-set rules in plugins/module_utils/isa.py, with pibake's error kinds.

The rules themselves (build attributes, CPU features, the comparison) are defined once, in the
collection's module_utils, and shared with the wheel_isa_check module; this module re-exports them
under the names pibake has always used and turns scan()'s failures into PibakeError kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pibake._module_utils import isa as _rules
from pibake._module_utils.isa import (
    CPU_ARCH_NAMES,
    CPU_ARCH_TAG,
    DIV_USED,
    ELF_MAGIC,
    FP,
    FP_ARCH_NAMES,
    FP_ARCH_TAG,
    MACHINE_ARCH,
    NO_ATTRIBUTES,
    SIMD,
    SIMD_ARCH_NAMES,
    SIMD_ARCH_TAG,
    THUMB2,
    USERLANDS,
    V6_FEATURES,
    V7_FEATURES,
    V8_FEATURES,
    Arch,
    Artifact,
    ElfObject,
    InstructionSet,
    from_cpu_features,
    missing,
    read_elf,
    userland_problem,
)
from pibake.errors import UsageError, VerificationFailed

__all__ = [
    "CPU_ARCH_NAMES",
    "CPU_ARCH_TAG",
    "DIV_USED",
    "ELF_MAGIC",
    "FP",
    "FP_ARCH_NAMES",
    "FP_ARCH_TAG",
    "MACHINE_ARCH",
    "NO_ATTRIBUTES",
    "SIMD",
    "SIMD_ARCH_NAMES",
    "SIMD_ARCH_TAG",
    "THUMB2",
    "USERLANDS",
    "V6_FEATURES",
    "V7_FEATURES",
    "V8_FEATURES",
    "Arch",
    "Artifact",
    "ElfObject",
    "InstructionSet",
    "from_cpu_features",
    "missing",
    "read_elf",
    "scan",
    "userland_problem",
]


def scan(paths: Sequence[Path]) -> list[Artifact]:
    """The ELF files of every wheel named in PATHS, or found in directories among them (see module_utils' scan).

    Raises UsageError for a path that is not there, VerificationFailed for a wheel that is no zip archive.
    """
    try:
        return _rules.scan(paths)
    except _rules.NoSuchPath as e:
        raise UsageError(str(e)) from e
    except _rules.UnreadableWheel as e:
        raise VerificationFailed(f"{e}; download it again") from e
