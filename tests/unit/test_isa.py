from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pibake import isa, preflight
from pibake.emulate import profiles
from pibake.errors import UsageError, VerificationFailed
from pibake.isa import FP, SIMD, Arch, InstructionSet
from tests.conftest import run_cli
from tests.wheels import (
    CORTEX_A9_FEATURES,
    EM_AARCH64,
    EM_X86_64,
    TAG_ADVANCED_SIMD_ARCH,
    TAG_CPU_ARCH,
    TAG_DIV_USE,
    TAG_FP_ARCH,
    TAG_THUMB_ISA_USE,
    TFLITE_SO,
    elf32,
    elf64,
    make_wheel,
    tflite_armv7l_wheel,
)

# What GCC records for -march=armv7-a -mfpu=neon-vfpv4, the tflite-runtime 2.11.0 build.
ARMV7_NEON_VFPV4 = {TAG_CPU_ARCH: 10, TAG_FP_ARCH: 5, TAG_ADVANCED_SIMD_ARCH: 2}
# -march=armv8-a+crc -mfpu=crypto-neon-fp-armv8
ARMV8 = {TAG_CPU_ARCH: 14, TAG_FP_ARCH: 7, TAG_ADVANCED_SIMD_ARCH: 3}
# Raspbian's baseline: -march=armv6kz -mfpu=vfp
ARMV6_VFP = {TAG_CPU_ARCH: 7, TAG_FP_ARCH: 2}

VEXPRESS_A9_TOML = f"""
name = "vexpress-a9"
machine = "vexpress-a9"
cpu = "cortex-a9"
[cpus]
cortex-a9 = {list(CORTEX_A9_FEATURES)!r}
[resources]
smp = 1
memory_mb = 1024
max_memory_mb = 1024
[disk]
bus = "sd"
guest_device = "/dev/mmcblk0"
[network]
model = "nic"
guest_interface = "eth0"
[boot]
console = "ttyAMA0"
"""


@pytest.fixture(scope="session")
def tflite_wheel() -> Path:
    return tflite_armv7l_wheel()


@pytest.fixture
def a9_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real profiles plus a vexpress-a9 one (Cortex-A9: NEON, VFPv3, no VFPv4) if qemu/ has none yet."""
    qemu = tmp_path / "qemu"
    shutil.copytree(profiles.profile_dir(), qemu)
    if not (qemu / "vexpress-a9.toml").exists():
        (qemu / "vexpress-a9.toml").write_text(VEXPRESS_A9_TOML)
    monkeypatch.setattr(profiles, "PROFILE_DIR", qemu)
    return qemu


def test_the_tflite_wheel_needs_armv7_vfpv4_and_neon_with_fma(tflite_wheel: Path) -> None:
    [wheel] = isa.scan([tflite_wheel])
    assert wheel.path == tflite_wheel
    [so] = wheel.objects
    assert so.name == TFLITE_SO
    assert so.problem is None
    assert so.needs == InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV4, fp_d32=True, simd=SIMD.NEON_FMA)
    # The same words as `readelf -A`.
    assert so.tags == ("Tag_CPU_arch: v7", "Tag_FP_arch: VFPv4", "Tag_Advanced_SIMD_arch: NEONv1 with Fused-MAC")


def test_cpu_features_read_as_instruction_sets() -> None:
    a15 = isa.from_cpu_features(profiles.load("virt").features("cortex-a15"))
    assert a15 == InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV4, fp_d32=True, simd=SIMD.NEON_FMA, idiv=True)
    a9_profile = profiles.parse(
        {
            "name": "vexpress-a9",
            "machine": "vexpress-a9",
            "cpu": "cortex-a9",
            "cpus": {"cortex-a9": list(CORTEX_A9_FEATURES)},
            "resources": {"smp": 1, "memory_mb": 512, "max_memory_mb": 1024},
            "disk": {"bus": "sd", "guest_device": "/dev/mmcblk0"},
            "network": {"model": "nic", "guest_interface": "eth0"},
            "boot": {"console": "ttyAMA0"},
        }
    )
    a9 = isa.from_cpu_features(a9_profile.features())
    assert a9 == InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV3, fp_d32=True, simd=SIMD.NEON)
    # A Pi 3 under a 32-bit kernel says armv7l; crc32 shows it is ARMv8.
    pi3 = isa.from_cpu_features(
        ["half", "thumb", "vfp", "neon", "vfpv3", "tls", "vfpv4", "idiva", "lpae", "crc32"], machine="armv7l"
    )
    assert (pi3.arch, pi3.fp, pi3.simd, pi3.crc32) == (Arch.ARMV8, FP.ARMV8, SIMD.NEON_ARMV8, True)
    # A 64-bit kernel's names.
    arm64 = isa.from_cpu_features(["fp", "asimd", "evtstrm", "crc32", "cpuid"], machine="aarch64")
    assert (arm64.arch, arm64.fp, arm64.simd) == (Arch.ARMV8, FP.ARMV8, SIMD.NEON_ARMV8)
    assert isa.from_cpu_features(["vfp", "vfpv3d16", "tls"]) == InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV3)
    assert isa.from_cpu_features([], machine="armv6l") == InstructionSet(arch=Arch.ARMV6)


def test_missing_names_what_the_cpu_lacks() -> None:
    needs = InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV4, fp_d32=True, simd=SIMD.NEON_FMA)
    a9 = isa.from_cpu_features(CORTEX_A9_FEATURES)
    assert isa.missing(needs, a9) == ["VFPv4 (has VFPv3)", "NEON with FMA (has NEON)"]
    assert isa.missing(needs, isa.from_cpu_features(profiles.load("virt").features("cortex-a7"))) == []
    d16 = isa.from_cpu_features(["vfp", "vfpv3", "vfpv4", "vfpv3d16", "tls", "idiva"])
    assert isa.missing(needs, d16) == ["VFPv4 with 32 double registers (has 16)", "NEON with FMA (has no NEON)"]
    assert isa.missing(InstructionSet(idiv=True, crc32=True), InstructionSet()) == [
        "hardware integer divide, SDIV/UDIV (has none)",
        "CRC32 instructions (has none)",
    ]


@pytest.mark.parametrize(
    ("tags", "needs"),
    [
        (ARMV7_NEON_VFPV4, InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV4, fp_d32=True, simd=SIMD.NEON_FMA)),
        (ARMV8, InstructionSet(arch=Arch.ARMV8, fp=FP.ARMV8, fp_d32=True, simd=SIMD.NEON_ARMV8)),
        (ARMV6_VFP, InstructionSet(arch=Arch.ARMV6, fp=FP.VFPV2)),
        ({TAG_CPU_ARCH: 10, TAG_FP_ARCH: 4, TAG_DIV_USE: 2}, InstructionSet(arch=Arch.ARMV7, fp=FP.VFPV3, idiv=True)),
        ({TAG_CPU_ARCH: 6, TAG_THUMB_ISA_USE: 2}, InstructionSet(arch=Arch.ARMV6T2)),
        # Values newer than the tables are not assumed to be met.
        (
            {TAG_CPU_ARCH: 99, TAG_FP_ARCH: 99, TAG_ADVANCED_SIMD_ARCH: 99},
            InstructionSet(Arch.ARMV9, FP.ARMV8, True, SIMD.NEON_ARMV8_1),
        ),
    ],
)
def test_build_attributes_read_as_requirements(tags: dict[int, int], needs: InstructionSet) -> None:
    obj = isa.read_elf(elf32(tags), "lib.so")
    assert obj.problem is None
    assert obj.needs == needs


def test_files_no_32_bit_arm_cpu_can_run_are_problems() -> None:
    assert "X86_64 code" in (isa.read_elf(elf64(EM_X86_64), "x.so").problem or "")
    assert "AArch64 (64-bit) code" in (isa.read_elf(elf64(EM_AARCH64), "x.so").problem or "")
    assert "unreadable" in (isa.read_elf(elf32(ARMV7_NEON_VFPV4)[:60], "x.so").problem or "")
    bare = isa.read_elf(elf32(None), "bare.so")
    assert bare.problem is None and bare.needs == InstructionSet()
    assert bare.describe() == "bare.so: no build attributes, nothing to check"


def test_scan_finds_elf_files_in_wheels_directories_and_loose(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels / "native-1-cp39-cp39-linux_armv7l.whl", {"n/_a.so": elf32(ARMV8), "n/__init__.py": b""})
    make_wheel(wheels / "pure-1-py3-none-any.whl", {"pure/__init__.py": b"print('hi')\n"})
    (wheels / "loose").mkdir()
    (wheels / "loose" / "_b.cpython-39-arm-linux-gnueabihf.so").write_bytes(elf32(ARMV6_VFP))
    (wheels / "README").write_text("not ELF")
    found = {a.name: a for a in isa.scan([wheels])}
    assert set(found) == {"native-1-cp39-cp39-linux_armv7l.whl", "pure-1-py3-none-any.whl", "wheels"}
    assert [o.name for o in found["native-1-cp39-cp39-linux_armv7l.whl"].objects] == ["n/_a.so"]
    assert found["pure-1-py3-none-any.whl"].objects == ()
    assert [o.name for o in found["wheels"].objects] == ["loose/_b.cpython-39-arm-linux-gnueabihf.so"]
    so = wheels / "loose" / "_b.cpython-39-arm-linux-gnueabihf.so"
    assert isa.scan([so])[0].objects[0].needs.arch is Arch.ARMV6


def test_scan_refuses_what_is_not_a_wheel(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no wheel or directory at"):
        isa.scan([tmp_path / "missing.whl"])
    (tmp_path / "broken.whl").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(VerificationFailed, match=r"broken\.whl: not a readable wheel"):
        isa.scan([tmp_path / "broken.whl"])


def test_preflight_of_the_tflite_wheel_on_pi2_and_pi3b_plus_passes(tflite_wheel: Path) -> None:
    for board, cpu in (("pi2", "cortex-a7"), ("pi3b-plus", "cortex-a15")):
        report = preflight.preflight([tflite_wheel], board=board)
        assert report.ok, report.describe()
        assert [t.label for t in report.targets] == [
            f"board {board} ({report.board.model})",
            f"emulated CPU {cpu} (profile virt)",
        ]


def test_preflight_of_the_tflite_wheel_on_pi1_fails_on_the_board(tflite_wheel: Path) -> None:
    report = preflight.preflight([tflite_wheel], board="pi1")
    assert not report.ok
    assert len(report.targets) == 1  # nothing emulates an ARMv6 Pi
    assert "no profile emulates an ARMv6" in report.notes[0]
    [error] = report.errors()
    assert error.startswith(
        f"{tflite_wheel.name} cannot run on board pi1 (Raspberry Pi 1 Model A/B/A+/B+): {TFLITE_SO}"
    )
    assert "ARMv7 (has ARMv6), VFPv4 (has VFPv2), NEON with FMA (has no NEON)" in error
    assert "Illegal instruction" in error


def test_preflight_of_the_tflite_wheel_on_vexpress_a9_fails_on_the_emulated_cpu(
    tflite_wheel: Path, a9_profiles: Path
) -> None:
    report = preflight.preflight([tflite_wheel], board="pi3b-plus", profile="vexpress-a9")
    assert not report.ok
    [error] = report.errors()
    assert "cannot run on emulated CPU cortex-a9 (profile vexpress-a9)" in error
    assert f"{TFLITE_SO} needs VFPv4 (has VFPv3), NEON with FMA (has NEON)" in error
    assert "--profile virt --cpu cortex-a15" in error  # what to do instead
    assert "OK on board pi3b-plus" in report.describe()


def test_an_armv8_wheel_passes_the_pi3_but_not_its_cortex_a15_emulation(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "v8-1-cp39-cp39-linux_armv7l.whl", {"v8/_v8.so": elf32(ARMV8)})
    report = preflight.preflight([wheel], board="pi3")
    [error] = report.errors()
    assert "cannot run on emulated CPU cortex-a15 (profile virt)" in error
    assert "ARMv8 (AArch32) (has ARMv7)" in error
    assert "--cpu max" in error
    assert preflight.preflight([wheel], board="pi2").errors()[0].startswith(f"{wheel.name} cannot run on board pi2")


def test_cli_preflight_reports_and_exits_0_when_every_wheel_fits(tflite_wheel: Path, tmp_path: Path) -> None:
    res = run_cli(["preflight", str(tflite_wheel)])
    assert res.code == 0, res.err
    assert "board pi3b-plus (Raspberry Pi 3 Model B+)" in res.out  # the default board
    assert f"{TFLITE_SO}: needs ARMv7, VFPv4 (D32), NEON with FMA" in res.out
    assert "OK on emulated CPU cortex-a15 (profile virt)" in res.out
    assert res.err == ""
    # A directory is scanned whole: one holding only this wheel (the shared wheel cache has the arm64 runtimes' too).
    alone = tmp_path / "wheels"
    alone.mkdir()
    shutil.copyfile(tflite_wheel, alone / tflite_wheel.name)
    res = run_cli(["preflight", "--board", "pi2", str(alone)])
    assert res.code == 0, res.err
    assert "OK on emulated CPU cortex-a7 (profile virt)" in res.out


def test_cli_preflight_fails_verification_naming_the_wheel_the_so_and_what_is_lacking(tflite_wheel: Path) -> None:
    res = run_cli(["preflight", "--board", "pi-zero", str(tflite_wheel)])
    assert res.code == VerificationFailed.exit_code
    assert "INCOMPATIBLE on board pi-zero" in res.out
    assert res.err.startswith(f"pibake: error: {tflite_wheel.name} cannot run on board pi-zero")
    assert TFLITE_SO in res.err and "NEON with FMA (has no NEON)" in res.err


def test_cli_preflight_usage_errors(tflite_wheel: Path, tmp_path: Path) -> None:
    res = run_cli(["preflight", "--cpu", "cortex-a9", str(tflite_wheel)])
    assert res.code == UsageError.exit_code
    assert "profile virt cannot emulate CPU 'cortex-a9'" in res.err
    res = run_cli(["preflight", "--board", "pi5", str(tflite_wheel)])
    assert res.code == 2 and "invalid choice: 'pi5'" in res.err
    res = run_cli(["preflight", str(tmp_path / "nope.whl")])
    assert res.code == UsageError.exit_code and "no wheel or directory at" in res.err
    assert "Traceback" not in res.err


def test_cli_preflight_against_the_real_vexpress_a9_profile(tflite_wheel: Path) -> None:
    res = run_cli(["preflight", "--profile", "vexpress-a9", str(tflite_wheel)])
    assert res.code == VerificationFailed.exit_code
    assert "cannot run on emulated CPU cortex-a9 (profile vexpress-a9)" in res.err
    assert "VFPv4 (has VFPv3)" in res.err
