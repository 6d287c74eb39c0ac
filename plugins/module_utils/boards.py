# Copyright: pibake engineers
# MIT License (see galaxy.yml)
"""The board table: every Raspberry Pi pibake targets (32-bit and 64-bit OS), as plain data, defined once.

Per board: its SoC and core (Raspberry Pi documentation, "Processors"), the instruction set of that
core in 32-bit mode (Arm's Technical Reference Manual of the core), the ``uname -m`` and
/proc/cpuinfo ``Features`` a 32-bit kernel prints on the real board (Linux's arm32 hwcaps), its
device trees under the mainline / Debian names and under Raspberry Pi OS's, the GPU firmware files
and the kernel the firmware loads by default (Raspberry Pi documentation, "The boot folder" and
"config.txt"), its header UART, and the QEMU machine profile (qemu/NAME.toml) and CPU that emulate it.

For a 64-bit OS the ARMv8 boards are emulated on their own core (``cpu64``: Cortex-A53, Cortex-A72) by
qemu-system-aarch64's virt board (profile virt64): Arm's cores as QEMU models them, which add the
Cryptography Extensions the Pi's SoCs leave out.

The instruction set is stated twice on purpose: as capabilities and as the Features line; a test
checks that the second reads back as the first (plugins/module_utils/isa.py, from_cpu_features).
Everything else reads this file: the pibake harness (pibake.boards, pibake.boards.firmware,
``pibake image check``, ``pibake preflight``) through its symlink ``pibake._module_utils.boards``, the
collection's wheel_isa_check module for its ``board`` choices; the roles' argument_specs are tested
against it.

Choosing the emulated CPU. QEMU's virt board (the fast profile) takes cortex-a7, cortex-a15 and
``max`` under qemu-system-arm; there is no Cortex-A53/A72 there (those are AArch64 CPUs of
qemu-system-aarch64, whose AArch32-only mode needs KVM).

- Pi 2: its BCM2836 is a Cortex-A7, and QEMU has that very CPU: an exact match.
- Pi 3 / 3B+ / Zero 2 / 4: a Cortex-A53/A72 in AArch32 is ARMv8 with VFPv4-class FP, NEON with FMA,
  integer divide and CRC32, but without the Cryptography Extensions (the Pi's SoCs leave them out).
  ``max`` is ARMv8 too, but with AES/SHA/PMULL and ARMv8.1+ additions the Pi lacks: code that uses
  them would pass in emulation and die on the board. ``cortex-a15`` has everything of ARMv7 the Pi
  has (VFPv4, NEON with FMA, integer divide) and nothing it lacks, so whatever runs emulated runs on
  the board; code built for ARMv8 (CRC32, VRINT...) is refused in emulation, and ``pibake
  preflight`` says so before you boot. Choose ``--cpu max`` knowingly for such code.
- Pi 1 / Zero: an ARM1176JZF-S (ARMv6, VFPv2, no NEON). The virt board does not take ARMv6 CPUs, so
  no profile here emulates them faithfully. QEMU has the CPU (``-cpu arm1176``) and the SoC
  (machines ``raspi0`` and ``raspi1ap``) but pibake has no profile for them yet, and the Debian
  armhf test image is built for ARMv7 and would not run there anyway (those boards need Raspberry
  Pi OS, built for ARMv6). For a single program, qemu-user with ``QEMU_CPU=arm1176`` reproduces the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from .isa import FP, SIMD, Arch, InstructionSet


@dataclass(frozen=True)
class Board:
    """One row of the table; every field is data, nothing is computed."""

    name: str
    # The product, as Raspberry Pi names it, and nothing about the OS on it: the bake report prints it for 32-bit
    # and 64-bit images alike.
    model: str
    soc: str
    core: str
    isa: InstructionSet
    # What `uname -m` and /proc/cpuinfo say on the real board with a 32-bit kernel.
    machine: str
    cpuinfo_features: tuple[str, ...]
    # The device tree the firmware picks with upstream_kernel=1 (mainline names, as Debian's kernel
    # ships them), and without it (Raspberry Pi OS's kernel's names).
    upstream_dtb: str
    downstream_dtb: str
    # GPU firmware files that must be on the FAT partition.
    firmware: tuple[str, ...]
    # The kernel the firmware loads when config.txt names none (32-bit).
    default_kernel: str
    # The mainline kernel's name for the UART on the GPIO header ("serial0" on Raspberry Pi OS).
    serial_console: str
    # The machine profile (qemu/NAME.toml) and CPU that emulate it; None: nothing does.
    profile: str | None
    cpu: str | None
    # Why that profile and CPU (or why none), for messages.
    emulation: str
    # Raspberry Pi Imager's tag for the board running a 32-bit OS (the "devices" of its OS list:
    # the Zero shares the Pi 1's, the Zero 2 W the Pi 3's).
    imager_device: str
    # The first mainline Linux with upstream_dtb, where it is later than 5.10 (Debian bullseye's
    # kernel, the oldest pibake builds for); None: 5.10 has it.
    upstream_dtb_since: str | None = None
    # QEMU's model of the board's own core for a 64-bit OS (qemu-system-aarch64 -cpu, profile virt64); None: the
    # core is not ARMv8 and runs no 64-bit OS.
    cpu64: str | None = None
    # Whether the board has Wi-Fi on board (Raspberry Pi's product briefs): the Pi 3 Model B and B+, Zero W, Zero 2 W
    # and Pi 4 / 400 do; the Pi 1 and Pi 2 do not (a USB adapter needs firmware of its own, which pibake does not
    # pick). The pi-zero row stands for the Zero W here: the plain Zero has none.
    wifi: bool = False

    def describe(self) -> str:
        """For example "pi2 (Raspberry Pi 2 Model B v1.1, BCM2836, Cortex-A7): ARMv7, VFPv4 (D32), ..."."""
        return f"{self.name} ({self.model}, {self.soc}, {self.core}): {self.isa.describe()}"


DEFAULT_BOARD = "pi3b-plus"

# /proc/cpuinfo Features under a 32-bit kernel on the real boards (Raspberry Pi OS Legacy).
_ARM1176_FEATURES = ("half", "thumb", "fastmult", "vfp", "edsp", "java", "tls")
_CORTEX_A7_FEATURES = (
    "half", "thumb", "fastmult", "vfp", "edsp", "neon", "vfpv3", "tls", "vfpv4",
    "idiva", "idivt", "vfpd32", "lpae", "evtstrm",
)  # fmt: skip
_ARMV8_FEATURES = (*_CORTEX_A7_FEATURES, "crc32")

# ARM1176JZF-S TRM: ARMv6KZ with VFPv2. Cortex-A7 TRM: ARMv7-A, VFPv4-D32, NEON, integer divide.
_ARMV6 = InstructionSet(arch=Arch.ARMV6, fp=FP.VFPV2, simd=SIMD.NONE)
_CORTEX_A7 = InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV4, fp_d32=True, simd=SIMD.NEON_FMA, idiv=True)
# Cortex-A53/A72 TRMs, AArch32: ARMv8 FP and NEON include VFPv4 and NEON with FMA; CRC32 is part of
# the core; the Cryptography Extensions are an option the Pi's SoCs leave out (no aes/sha in cpuinfo).
_ARMV8_AARCH32 = InstructionSet(arch=Arch.ARMV8, fp=FP.ARMV8, fp_d32=True, simd=SIMD.NEON_ARMV8, idiv=True, crc32=True)

_PI123_FIRMWARE = ("bootcode.bin", "start.elf", "fixup.dat")
_PI4_FIRMWARE = ("start4.elf", "fixup4.dat")  # the Pi 4's bootloader lives in its EEPROM

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

_TABLE = (
    Board(
        name="pi1",
        imager_device="pi1-32bit",
        model="Raspberry Pi 1 Model A/B/A+/B+",
        soc="BCM2835",
        core="ARM1176JZF-S",
        isa=_ARMV6,
        machine="armv6l",
        cpuinfo_features=_ARM1176_FEATURES,
        upstream_dtb="bcm2835-rpi-b-plus.dtb",
        downstream_dtb="bcm2708-rpi-b-plus.dtb",
        firmware=_PI123_FIRMWARE,
        default_kernel="kernel.img",
        serial_console="ttyAMA0",
        profile=None,
        cpu=None,
        emulation=_NO_ARMV6_PROFILE,
    ),
    Board(
        name="pi-zero",
        imager_device="pi1-32bit",
        model="Raspberry Pi Zero / Zero W",
        soc="BCM2835",
        core="ARM1176JZF-S",
        isa=_ARMV6,
        machine="armv6l",
        cpuinfo_features=_ARM1176_FEATURES,
        upstream_dtb="bcm2835-rpi-zero-w.dtb",
        downstream_dtb="bcm2708-rpi-zero-w.dtb",
        firmware=_PI123_FIRMWARE,
        default_kernel="kernel.img",
        # The Zero W's PL011 drives Bluetooth; the header's UART is the mini UART.
        serial_console="ttyS1",
        profile=None,
        cpu=None,
        emulation=_NO_ARMV6_PROFILE,
        wifi=True,
    ),
    Board(
        name="pi2",
        imager_device="pi2-32bit",
        # The Pi 2 v1.2 has the Pi 3's BCM2837 (Cortex-A53): treat it as pi3.
        model="Raspberry Pi 2 Model B v1.1",
        soc="BCM2836",
        core="Cortex-A7",
        isa=_CORTEX_A7,
        machine="armv7l",
        cpuinfo_features=_CORTEX_A7_FEATURES,
        upstream_dtb="bcm2836-rpi-2-b.dtb",
        downstream_dtb="bcm2709-rpi-2-b.dtb",
        firmware=_PI123_FIRMWARE,
        default_kernel="kernel7.img",
        serial_console="ttyAMA0",
        profile="virt",
        cpu="cortex-a7",
        emulation="virt + cortex-a7: the Pi 2's own core (the raspi2b profile also has its SoC, but boots slowly).",
    ),
    # On the Pi 3 family and the Pi 4 the PL011 (ttyAMA0) drives Bluetooth; the header's UART is the
    # mini UART, ttyS1 under the mainline device trees.
    Board(
        name="pi3",
        imager_device="pi3-32bit",
        model="Raspberry Pi 3 Model B",
        soc="BCM2837",
        core="Cortex-A53",
        isa=_ARMV8_AARCH32,
        machine="armv7l",
        cpuinfo_features=_ARMV8_FEATURES,
        upstream_dtb="bcm2837-rpi-3-b.dtb",
        downstream_dtb="bcm2710-rpi-3-b.dtb",
        firmware=_PI123_FIRMWARE,
        default_kernel="kernel7.img",
        serial_console="ttyS1",
        profile="virt",
        cpu="cortex-a15",
        emulation=_A15_FOR_ARMV8,
        cpu64="cortex-a53",
        wifi=True,
    ),
    Board(
        name="pi3b-plus",
        imager_device="pi3-32bit",
        model="Raspberry Pi 3 Model B+",
        soc="BCM2837B0",
        core="Cortex-A53",
        isa=_ARMV8_AARCH32,
        machine="armv7l",
        cpuinfo_features=_ARMV8_FEATURES,
        upstream_dtb="bcm2837-rpi-3-b-plus.dtb",
        downstream_dtb="bcm2710-rpi-3-b-plus.dtb",
        firmware=_PI123_FIRMWARE,
        default_kernel="kernel7.img",
        serial_console="ttyS1",
        profile="virt",
        cpu="cortex-a15",
        emulation=_A15_FOR_ARMV8,
        cpu64="cortex-a53",
        wifi=True,
    ),
    Board(
        name="pi-zero-2",
        imager_device="pi3-32bit",
        model="Raspberry Pi Zero 2 W",
        soc="RP3A0 (BCM2710A1)",
        core="Cortex-A53",
        isa=_ARMV8_AARCH32,
        machine="armv7l",
        cpuinfo_features=_ARMV8_FEATURES,
        upstream_dtb="bcm2837-rpi-zero-2-w.dtb",
        downstream_dtb="bcm2710-rpi-zero-2-w.dtb",
        firmware=_PI123_FIRMWARE,
        default_kernel="kernel7.img",
        serial_console="ttyS1",
        profile="virt",
        cpu="cortex-a15",
        emulation=_A15_FOR_ARMV8,
        upstream_dtb_since="Linux 5.16",
        cpu64="cortex-a53",
        wifi=True,
    ),
    Board(
        name="pi4",
        imager_device="pi4-32bit",
        model="Raspberry Pi 4 Model B / 400",
        soc="BCM2711",
        core="Cortex-A72",
        isa=_ARMV8_AARCH32,
        machine="armv7l",
        cpuinfo_features=_ARMV8_FEATURES,
        upstream_dtb="bcm2711-rpi-4-b.dtb",
        downstream_dtb="bcm2711-rpi-4-b.dtb",
        firmware=_PI4_FIRMWARE,
        default_kernel="kernel7l.img",
        serial_console="ttyS1",
        profile="virt",
        cpu="cortex-a15",
        emulation=_A15_FOR_ARMV8,
        cpu64="cortex-a72",
        wifi=True,
    ),
)

BOARDS: dict[str, Board] = {b.name: b for b in _TABLE}
