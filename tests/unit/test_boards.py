from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pibake import boards, isa, preflight
from pibake.emulate import profiles
from pibake.errors import UsageError
from pibake.isa import FP, SIMD, Arch
from tests.wheels import tflite_armv7l_wheel

ARMV8_BOARDS = ("pi3", "pi3b-plus", "pi-zero-2", "pi4")


@pytest.fixture(scope="session")
def tflite_wheel() -> Path:
    return tflite_armv7l_wheel()


def test_the_table_has_every_target_board_and_defaults_to_the_pi3b_plus() -> None:
    assert boards.names() == ["pi1", "pi-zero", "pi2", "pi3", "pi3b-plus", "pi-zero-2", "pi4"]
    assert boards.DEFAULT_BOARD == "pi3b-plus"
    with pytest.raises(UsageError, match=r"unknown board 'pi5'; known boards: pi1, pi-zero"):
        boards.get("pi5")


def test_the_model_names_the_product_not_a_kernel_width() -> None:
    # The bake report prints the model for 32-bit and 64-bit images alike.
    for b in boards.BOARDS.values():
        assert "bit" not in b.model, b.name
    assert boards.get("pi4").model == "Raspberry Pi 4 Model B / 400"


def test_architecture_fp_and_simd_of_each_board() -> None:
    for name in ("pi1", "pi-zero"):
        b = boards.get(name)
        assert (b.isa.arch, b.isa.fp, b.isa.simd, b.isa.crc32) == (Arch.ARMV6, FP.VFPV2, SIMD.NONE, False)
    pi2 = boards.get("pi2").isa
    assert (pi2.arch, pi2.fp, pi2.simd, pi2.crc32) == (Arch.ARMV7, FP.VFPV4, SIMD.NEON_FMA, False)
    for name in ARMV8_BOARDS:
        v8 = boards.get(name).isa
        # FP-ARMv8 and ARMv8 NEON include VFPv4 and NEON with FMA.
        assert (v8.arch, v8.fp, v8.simd, v8.crc32, v8.idiv) == (Arch.ARMV8, FP.ARMV8, SIMD.NEON_ARMV8, True, True)
        assert v8.fp > FP.VFPV4 and v8.simd > SIMD.NEON_FMA


@pytest.mark.parametrize("name", boards.names())
def test_the_real_boards_cpuinfo_reads_back_as_its_instruction_set(name: str) -> None:
    board = boards.get(name)
    assert isa.from_cpu_features(board.cpuinfo_features, machine=board.machine) == board.isa


def test_each_board_is_emulated_by_its_own_core_or_a_cpu_with_nothing_it_lacks() -> None:
    assert (boards.get("pi2").profile, boards.get("pi2").cpu) == ("virt", "cortex-a7")
    for name in ARMV8_BOARDS:
        assert (boards.get(name).profile, boards.get(name).cpu) == ("virt", "cortex-a15")
    for board in boards.BOARDS.values():
        if board.profile is None:
            continue
        emulated = isa.from_cpu_features(profiles.load(board.profile).features(board.cpu))
        # Fidelity: whatever runs on the emulated CPU runs on the board.
        assert isa.missing(emulated, board.isa) == [], board.name
    # The Pi 2's emulation is exact.
    pi2 = boards.get("pi2")
    assert isa.from_cpu_features(profiles.load("virt").features("cortex-a7")) == pi2.isa


def test_armv6_boards_have_no_profile_and_say_why() -> None:
    for name in ("pi1", "pi-zero"):
        board = boards.get(name)
        assert board.profile is None and board.cpu is None
        assert "arm1176" in board.emulation and "raspi0" in board.emulation
        with pytest.raises(UsageError, match=rf"board {name}: no profile emulates an ARMv6.*--profile"):
            boards.emulation(board)
    # A profile named on purpose is used with its default CPU.
    assert boards.emulation(boards.get("pi1"), profile="virt") == ("virt", None)


def test_emulation_lets_the_user_choose_profile_and_cpu() -> None:
    pi3 = boards.get("pi3b-plus")
    assert boards.emulation(pi3) == ("virt", "cortex-a15")
    assert boards.emulation(pi3, cpu="max") == ("virt", "max")
    assert boards.emulation(pi3, profile="vexpress-a9") == ("vexpress-a9", None)


def test_qemu_has_the_cpus_and_machines_the_table_names() -> None:
    cpus = subprocess.run(["qemu-system-arm", "-cpu", "help"], capture_output=True, text=True, check=True).stdout
    machines = subprocess.run(["qemu-system-arm", "-M", "help"], capture_output=True, text=True, check=True).stdout
    for cpu in ("cortex-a7", "cortex-a15", "max", "arm1176"):
        assert f"  {cpu}\n" in cpus
    assert "cortex-a53" not in cpus  # why the ARMv8 Pis are emulated by a Cortex-A15
    for machine in ("virt", "raspi0", "raspi1ap"):
        assert f"\n{machine} " in machines


def test_each_armv8_board_names_its_own_core_for_a_64_bit_os() -> None:
    """qemu-aarch64 (user mode, Debian's qemu-user-static 7.2 here) has each board's exact core."""
    for name in ARMV8_BOARDS:
        board = boards.get(name)
        assert board.cpu64 == board.core.lower(), name
    for name in ("pi1", "pi-zero", "pi2"):
        assert boards.get(name).cpu64 is None  # ARMv6 / ARMv7: no AArch64 state
    # qemu-aarch64 7.2 lists its CPUs on stdout and exits 1 (measured here).
    cpus = subprocess.run(["qemu-aarch64-static", "-cpu", "help"], capture_output=True, text=True, check=False).stdout
    for name in ARMV8_BOARDS:
        assert f"  {boards.get(name).cpu64}\n" in cpus


@pytest.mark.parametrize(("board", "ok"), [("pi1", False), ("pi-zero", False), ("pi2", True), ("pi3b-plus", True)])
def test_the_tflite_wheel_runs_on_pi2_and_up_only(tflite_wheel: Path, board: str, ok: bool) -> None:
    report = preflight.preflight([tflite_wheel], board=board)
    board_verdict = next(v for v in report.verdicts if v.target.label.startswith("board "))
    assert board_verdict.ok is ok


def test_a_64_bit_os_is_emulated_on_the_boards_own_core() -> None:
    # Raspberry Pi documentation, "Processors": BCM2837 (Pi 3, 3B+), RP3A0 (Zero 2 W): Cortex-A53; BCM2711: Cortex-A72.
    own = {"pi3": "cortex-a53", "pi3b-plus": "cortex-a53", "pi-zero-2": "cortex-a53", "pi4": "cortex-a72"}
    virt64 = profiles.load(boards.PROFILE_64)
    for name, board in boards.BOARDS.items():
        assert board.cpu64 == own.get(name)
        if board.cpu64:
            assert board.cpu64 == board.core.lower()  # the very core, not a stand-in
            assert board.cpu64 in virt64.cpus
            assert boards.emulation(board, arch="arm64") == ("virt64", board.cpu64)
    assert boards.emulation(boards.get("pi4"), arch="arm64", cpu="cortex-a76") == ("virt64", "cortex-a76")


@pytest.mark.parametrize("name", ["pi1", "pi-zero", "pi2"])
def test_boards_without_an_armv8_core_refuse_a_64_bit_os(name: str) -> None:
    with pytest.raises(UsageError, match=r"runs no 64-bit \(arm64\) OS"):
        boards.emulation(boards.get(name), arch="arm64")


def test_qemu_system_aarch64_has_the_boards_own_cores() -> None:
    cpus = subprocess.run(["qemu-system-aarch64", "-cpu", "help"], capture_output=True, text=True, check=True).stdout
    for cpu in ("cortex-a53", "cortex-a72", "cortex-a76"):
        assert f"  {cpu}\n" in cpus
