"""The Raspberry Pi boards pibake targets (32-bit OS), their CPUs, and how each is emulated.

Each board states its instruction set twice on purpose: as capabilities (architecture,
FPU, NEON, CRC32) and as the /proc/cpuinfo ``Features`` line a 32-bit kernel prints on
the real board. A test checks that the second reads back as the first, and the collection
module (plugins/modules/wheel_isa_check.py) carries the feature lines.

Choosing the emulated CPU. QEMU's virt board (the fast profile) takes cortex-a7,
cortex-a15 and ``max`` under qemu-system-arm; there is no Cortex-A53/A72 there (those
are AArch64 CPUs of qemu-system-aarch64, whose AArch32-only mode needs KVM).

- Pi 2: its BCM2836 is a Cortex-A7, and QEMU has that very CPU: an exact match.
- Pi 3 / 3B+ / Zero 2 / 4: a Cortex-A53/A72 in AArch32 is ARMv8 with VFPv4-class FP,
  NEON with FMA, integer divide and CRC32, but without the Cryptography Extensions
  (the Pi's SoCs leave them out). ``max`` is ARMv8 too, but with AES/SHA/PMULL and
  ARMv8.1+ additions the Pi lacks: code that uses them would pass in emulation and
  die on the board. ``cortex-a15`` has everything of ARMv7 the Pi has (VFPv4, NEON with
  FMA, integer divide) and nothing it lacks, so whatever runs emulated runs on the board;
  code built for ARMv8 (CRC32, VRINT...) is refused in emulation, and ``pibake
  preflight`` says so before you boot. Choose ``--cpu max`` knowingly for such code.
- Pi 1 / Zero: an ARM1176JZF-S (ARMv6, VFPv2, no NEON). The virt board does not take
  ARMv6 CPUs, so no profile here emulates them faithfully. QEMU has the CPU (``-cpu
  arm1176``) and the SoC (machines ``raspi0`` and ``raspi1ap``) but pibake has no
  profile for them yet, and the Debian armhf test image is built for ARMv7 and would not
  run there anyway (those boards need Raspberry Pi OS, built for ARMv6). For a single
  program, qemu-user with ``QEMU_CPU=arm1176`` reproduces the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from pibake.errors import PibakeError
from pibake.isa import FP, SIMD, Arch, InstructionSet

DEFAULT_BOARD = "pi3b-plus"

# /proc/cpuinfo Features under a 32-bit kernel on the real boards.
_ARM1176_FEATURES = ("half", "thumb", "fastmult", "vfp", "edsp", "java", "tls")
_CORTEX_A7_FEATURES = (
    "half", "thumb", "fastmult", "vfp", "edsp", "neon", "vfpv3", "tls", "vfpv4",
    "idiva", "idivt", "vfpd32", "lpae", "evtstrm",
)  # fmt: skip
_ARMV8_FEATURES = (*_CORTEX_A7_FEATURES, "crc32")

_ARMV6 = InstructionSet(arch=Arch.ARMV6, fp=FP.VFPV2, simd=SIMD.NONE)
_CORTEX_A7 = InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV4, fp_d32=True, simd=SIMD.NEON_FMA, idiv=True)
# ARMv8 FP and NEON include VFPv4 and NEON with FMA; no Cryptography Extensions on the Pi.
_ARMV8_AARCH32 = InstructionSet(arch=Arch.ARMV8, fp=FP.ARMV8, fp_d32=True, simd=SIMD.NEON_ARMV8, idiv=True, crc32=True)

_NO_ARMV6_PROFILE = (
    "no profile emulates an ARMv6 + VFPv2 CPU: QEMU's virt board takes only ARMv7 and later CPUs; "
    "QEMU has -cpu arm1176 and the raspi0 / raspi1ap machines, but pibake has no profile for them, and "
    "the Debian armhf image is ARMv7-only. Use qemu-user with QEMU_CPU=arm1176 to run one program."
)
_A15_FOR_ARMV8 = (
    "virt + cortex-a15: every instruction the Pi's ARMv8 core has in 32-bit mode except the ARMv8 additions "
    "(CRC32, VRINT...), and nothing it lacks; 'max' would add AES/SHA and ARMv8.1+ instructions the Pi does "
    "not have, so code could pass in emulation and die on the board."
)


@dataclass(frozen=True)
class Board:
    name: str
    model: str
    soc: str
    core: str
    isa: InstructionSet
    # What `uname -m` and /proc/cpuinfo say on the real board with a 32-bit kernel.
    machine: str
    cpuinfo_features: tuple[str, ...]
    # The machine profile (qemu/NAME.toml) and CPU that emulate it; None: nothing does.
    profile: str | None
    cpu: str | None
    emulation: str

    def describe(self) -> str:
        return f"{self.name} ({self.model}, {self.soc}, {self.core}): {self.isa.describe()}"


BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board(
            name="pi1",
            model="Raspberry Pi 1 Model A/B/A+/B+",
            soc="BCM2835",
            core="ARM1176JZF-S",
            isa=_ARMV6,
            machine="armv6l",
            cpuinfo_features=_ARM1176_FEATURES,
            profile=None,
            cpu=None,
            emulation=_NO_ARMV6_PROFILE,
        ),
        Board(
            name="pi-zero",
            model="Raspberry Pi Zero / Zero W",
            soc="BCM2835",
            core="ARM1176JZF-S",
            isa=_ARMV6,
            machine="armv6l",
            cpuinfo_features=_ARM1176_FEATURES,
            profile=None,
            cpu=None,
            emulation=_NO_ARMV6_PROFILE,
        ),
        Board(
            name="pi2",
            # The Pi 2 v1.2 has the Pi 3's BCM2837 (Cortex-A53): treat it as pi3.
            model="Raspberry Pi 2 Model B v1.1",
            soc="BCM2836",
            core="Cortex-A7",
            isa=_CORTEX_A7,
            machine="armv7l",
            cpuinfo_features=_CORTEX_A7_FEATURES,
            profile="virt",
            cpu="cortex-a7",
            emulation="virt + cortex-a7: the Pi 2's own core (the raspi2b profile also has its SoC, but boots slowly).",
        ),
        Board(
            name="pi3",
            model="Raspberry Pi 3 Model B",
            soc="BCM2837",
            core="Cortex-A53",
            isa=_ARMV8_AARCH32,
            machine="armv7l",
            cpuinfo_features=_ARMV8_FEATURES,
            profile="virt",
            cpu="cortex-a15",
            emulation=_A15_FOR_ARMV8,
        ),
        Board(
            name="pi3b-plus",
            model="Raspberry Pi 3 Model B+",
            soc="BCM2837B0",
            core="Cortex-A53",
            isa=_ARMV8_AARCH32,
            machine="armv7l",
            cpuinfo_features=_ARMV8_FEATURES,
            profile="virt",
            cpu="cortex-a15",
            emulation=_A15_FOR_ARMV8,
        ),
        Board(
            name="pi-zero-2",
            model="Raspberry Pi Zero 2 W",
            soc="RP3A0 (BCM2710A1)",
            core="Cortex-A53",
            isa=_ARMV8_AARCH32,
            machine="armv7l",
            cpuinfo_features=_ARMV8_FEATURES,
            profile="virt",
            cpu="cortex-a15",
            emulation=_A15_FOR_ARMV8,
        ),
        Board(
            name="pi4",
            model="Raspberry Pi 4 Model B / 400, 32-bit kernel",
            soc="BCM2711",
            core="Cortex-A72",
            isa=_ARMV8_AARCH32,
            machine="armv7l",
            cpuinfo_features=_ARMV8_FEATURES,
            profile="virt",
            cpu="cortex-a15",
            emulation=_A15_FOR_ARMV8,
        ),
    )
}


def names() -> list[str]:
    return list(BOARDS)


def get(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise PibakeError(f"unknown board {name!r}; known boards: {', '.join(BOARDS)}") from None


def emulation(board: Board, *, profile: str | None = None, cpu: str | None = None) -> tuple[str, str | None]:
    """The (profile, CPU) that emulate BOARD, unless the user chose them (CPU None: the profile's default).

    Raises PibakeError for a board no profile emulates when the user did not name one.
    """
    if profile is None:
        if board.profile is None:
            raise PibakeError(f"board {board.name}: {board.emulation} Name a profile with --profile to use one anyway.")
        return board.profile, cpu or board.cpu
    if profile == board.profile:
        return profile, cpu or board.cpu
    return profile, cpu
