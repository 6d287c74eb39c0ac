"""The collection module pibake.raspberry.wheel_isa_check, and the python_runtime role that runs it.

No emulator: the module runs on the controller (as the role delegates it), against the real
tflite-runtime wheel in the controller's cache, with the CPU features an emulated Pi reports.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pibake import boards, isa
from pibake.emulate import profiles
from pibake.isa import InstructionSet
from tests.conftest import REPO
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
    tflite_armv7l_wheel,
)

MODULE_PATH = REPO / "plugins" / "modules" / "wheel_isa_check.py"
ROLE_TASKS = REPO / "roles" / "python_runtime" / "tasks" / "isa_check.yml"
BIN = Path(sys.executable).parent
CORTEX_A7_FEATURES = profiles.load("virt").features("cortex-a7")
# What a Pi 3 prints under a 32-bit kernel (Raspberry Pi OS Legacy).
PI3_CPUINFO = """processor\t: 0
model name\t: ARMv7 Processor rev 4 (v7l)
BogoMIPS\t: 38.40
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32
CPU implementer\t: 0x41
CPU architecture: 7

processor\t: 1
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 3 Model B Plus Rev 1.3
"""


@pytest.fixture(scope="session")
def tflite_wheel() -> Path:
    return tflite_armv7l_wheel()


@pytest.fixture(scope="module")
def module() -> Iterator[ModuleType]:
    """The module loaded from its file, importing its module_utils from the collection, as Ansible does.

    .collections/ (see ansible.cfg) holds ansible_collections/pibake/raspberry, a link to this checkout.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO / ".collections"))
        spec = importlib.util.spec_from_file_location("wheel_isa_check", MODULE_PATH)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod


@pytest.fixture(scope="module")
def collection_isa(module: ModuleType) -> ModuleType:
    """plugins/module_utils/isa.py under the name the module imports it by."""
    return importlib.import_module(module.scan.__module__)


def _ansible_env() -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run_module(args: dict[str, Any], *options: str) -> tuple[int, dict[str, Any]]:
    """Run the module ad hoc on the controller, as `ansible localhost -m` does; return (rc, result)."""
    res = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-m", "pibake.raspberry.wheel_isa_check", "-a", json.dumps(args), *options],
        capture_output=True,
        text=True,
        env=_ansible_env(),
        cwd=REPO,
        check=False,
        timeout=120,
    )
    match = re.search(r"^localhost \| \S+ => (\{.*\})\s*$", res.stdout, re.MULTILINE | re.DOTALL)
    assert match, res.stdout + res.stderr
    return res.returncode, json.loads(match.group(1))


def run_playbook(tmp_path: Path, play: list[dict[str, Any]], *extra: str) -> subprocess.CompletedProcess[str]:
    inventory = tmp_path / "hosts.yml"
    # A stand-in Pi reached locally, with an interpreter the role must not need for the check:
    # the module is delegated to the controller's Python.
    interpreter = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    inventory.write_text(
        yaml.safe_dump(
            {
                "raspberry_pi": {
                    "hosts": {"pi": {"ansible_connection": "local", "ansible_python_interpreter": interpreter}}
                }
            }
        )
    )
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *extra],
        capture_output=True,
        text=True,
        env=_ansible_env(),
        cwd=REPO,
        check=False,
        timeout=300,
    )


def _role_play(**role_vars: object) -> list[dict[str, Any]]:
    """The role with only the steps that need no Pi: fetch (cached) and the instruction-set check."""
    return [
        {
            "name": "Check the runtime wheel",
            "hosts": "raspberry_pi",
            "gather_facts": False,
            "roles": [
                {
                    "role": "pibake.raspberry.python_runtime",
                    "vars": {
                        "python_runtime_preflight_enabled": False,
                        "python_runtime_install_enabled": False,
                        "python_runtime_package_enabled": False,
                        **role_vars,
                    },
                }
            ],
        }
    ]


# ---------------------------------------------------------------- the module runs pibake.isa's rules


def _as_tuple(s: InstructionSet) -> tuple[int, int, bool, int, bool, bool]:
    return (int(s.arch), int(s.fp), s.fp_d32, int(s.simd), s.idiv, s.crc32)


def test_the_modules_tables_are_pibakes(module: ModuleType, collection_isa: ModuleType) -> None:
    """Not a copy any more: the module imports the very file pibake.isa re-exports."""
    shared = REPO / "plugins" / "module_utils" / "isa.py"
    assert collection_isa.__name__ == "ansible_collections.pibake.raspberry.plugins.module_utils.isa"
    assert Path(collection_isa.__file__ or "").resolve() == shared
    assert Path(sys.modules[isa.InstructionSet.__module__].__file__ or "").resolve() == shared
    for name in ("CPU_ARCH_NAMES", "FP_ARCH_NAMES", "SIMD_ARCH_NAMES", "THUMB2", "DIV_USED"):
        assert getattr(collection_isa, name) == getattr(isa, name)
    assert {int(a): a.label for a in collection_isa.Arch} == {int(a): a.label for a in isa.Arch}
    assert {int(f): f.label for f in collection_isa.FP} == {int(f): f.label for f in isa.FP}
    assert {int(s): s.label for s in collection_isa.SIMD} == {int(s): s.label for s in isa.SIMD}
    assert {k: int(v) for k, v in collection_isa.CPU_ARCH_TAG.items()} == {
        k: int(v) for k, v in isa.CPU_ARCH_TAG.items()
    }
    assert {k: (int(fp), d32) for k, (fp, d32) in collection_isa.FP_ARCH_TAG.items()} == {
        k: (int(fp), d32) for k, (fp, d32) in isa.FP_ARCH_TAG.items()
    }
    assert {k: int(v) for k, v in collection_isa.SIMD_ARCH_TAG.items()} == {
        k: int(v) for k, v in isa.SIMD_ARCH_TAG.items()
    }
    assert (collection_isa.V8_FEATURES, collection_isa.V7_FEATURES, collection_isa.V6_FEATURES) == (
        isa.V8_FEATURES,
        isa.V7_FEATURES,
        isa.V6_FEATURES,
    )
    assert {k: int(v) for k, v in collection_isa.MACHINE_ARCH.items()} == {
        k: int(v) for k, v in isa.MACHINE_ARCH.items()
    }
    assert {b.name: (b.machine, b.cpuinfo_features, _as_tuple(b.isa)) for b in module.BOARDS.values()} == {
        b.name: (b.machine, b.cpuinfo_features, _as_tuple(b.isa)) for b in boards.BOARDS.values()
    }


def test_the_module_reads_cpus_and_elf_files_as_pibake_does(
    module: ModuleType, collection_isa: ModuleType, tflite_wheel: Path
) -> None:
    cpus: list[tuple[tuple[str, ...], str | None]] = [(b.cpuinfo_features, b.machine) for b in boards.BOARDS.values()]
    cpus += [(profiles.load("virt").features(c), None) for c in profiles.load("virt").cpus]
    cpus += [(CORTEX_A9_FEATURES, None), (("fp", "asimd", "crc32"), "aarch64"), (("vfp", "vfpv3d16"), None), ((), None)]
    for features, machine in cpus:
        mine = module.from_cpu_features(features, machine=machine)
        has = isa.from_cpu_features(features, machine=machine)
        assert _as_tuple(mine) == _as_tuple(has)
        assert mine.describe() == has.describe()

    elves = [
        elf32({TAG_CPU_ARCH: 10, TAG_FP_ARCH: 5, TAG_ADVANCED_SIMD_ARCH: 2}),
        elf32({TAG_CPU_ARCH: 14, TAG_FP_ARCH: 7, TAG_ADVANCED_SIMD_ARCH: 3}),
        elf32({TAG_CPU_ARCH: 7, TAG_FP_ARCH: 2}),
        elf32({TAG_CPU_ARCH: 10, TAG_FP_ARCH: 6, TAG_DIV_USE: 2}),
        elf32({TAG_CPU_ARCH: 6, TAG_THUMB_ISA_USE: 2}),
        elf32({TAG_CPU_ARCH: 99, TAG_FP_ARCH: 99, TAG_ADVANCED_SIMD_ARCH: 99}),
        elf32(None),
        elf32({TAG_CPU_ARCH: 10})[:60],
        elf64(EM_X86_64),
        elf64(EM_AARCH64),
    ]
    [wheel] = isa.scan([tflite_wheel])
    [found] = module.scan([tflite_wheel])
    [tflite_so] = found.objects
    assert _as_tuple(tflite_so.needs) == _as_tuple(wheel.objects[0].needs)
    for data in elves:
        mine, theirs = collection_isa.read_elf(data, "x.so"), isa.read_elf(data, "x.so")
        assert _as_tuple(mine.needs) == _as_tuple(theirs.needs)
        assert mine.tags == theirs.tags
        assert mine.problem == theirs.problem
        for features, machine in cpus:
            mine_has = module.from_cpu_features(features, machine=machine)
            has = isa.from_cpu_features(features, machine=machine)
            assert module.missing(mine.needs, mine_has) == isa.missing(theirs.needs, has)


# ---------------------------------------------------------------- the module, ad hoc


def test_module_refuses_the_wheel_for_a_cortex_a9(tflite_wheel: Path) -> None:
    rc, res = run_module(
        {"path": str(tflite_wheel), "board": "pi3b-plus", "cpu_features": list(CORTEX_A9_FEATURES), "cpu_name": "a9"}
    )
    assert rc != 0
    assert res["compatible"] is False and res["changed"] is False
    assert res["msg"].startswith(f"{tflite_wheel.name} cannot run on a9 (CPU features: half thumb")
    assert f"{TFLITE_SO} needs VFPv4 (has VFPv3), NEON with FMA (has NEON)" in res["msg"]
    assert '"Illegal instruction"' in res["msg"] and "cortex-a7" in res["msg"]
    [obj] = res["wheels"][0]["objects"]
    assert obj["board_lacks"] == []
    assert obj["cpu_lacks"] == ["VFPv4 (has VFPv3)", "NEON with FMA (has NEON)"]
    assert obj["tags"] == ["Tag_CPU_arch: v7", "Tag_FP_arch: VFPv4", "Tag_Advanced_SIMD_arch: NEONv1 with Fused-MAC"]


def test_module_passes_the_wheel_for_a_pi2_in_check_mode(tflite_wheel: Path, tmp_path: Path) -> None:
    features = " ".join(CORTEX_A7_FEATURES)  # a whole Features line is split too
    # A directory is scanned whole: one holding only this wheel (the shared wheel cache has the arm64 runtimes' too).
    wheel = tmp_path / tflite_wheel.name
    shutil.copyfile(tflite_wheel, wheel)
    rc, res = run_module(
        {"path": str(tmp_path), "board": "pi2", "cpu_features": [features], "architecture": "armv7l"},
        "--check",
    )
    assert rc == 0, res
    assert res["compatible"] is True and res["changed"] is False
    assert res["board"]["has"] == "ARMv7, VFPv4 (D32), NEON with FMA, integer divide"
    assert any(w["path"] == str(wheel) and w["compatible"] for w in res["wheels"])


def test_module_refuses_the_wheel_for_a_pi1_board(tflite_wheel: Path) -> None:
    rc, res = run_module({"path": str(tflite_wheel), "board": "pi1"})
    assert rc != 0
    assert f"cannot run on board pi1: {TFLITE_SO} needs ARMv7 (has ARMv6), VFPv4 (has VFPv2)" in res["msg"]


def test_module_says_what_is_missing_in_its_arguments(tmp_path: Path) -> None:
    rc, res = run_module({"path": str(tmp_path / "nope.whl"), "board": "pi2"})
    assert rc != 0 and "no wheel or directory at" in res["msg"] and "download the wheel there" in res["msg"]
    rc, res = run_module({"path": str(tmp_path)})
    assert rc != 0 and res["msg"] == "one of the following is required: board, cpu_features"


# ---------------------------------------------------------------- the python_runtime role


def test_role_stops_before_installing_on_a_cortex_a9(tflite_wheel: Path, tmp_path: Path) -> None:
    res = run_playbook(tmp_path, _role_play(python_runtime_target_cpu_features=list(CORTEX_A9_FEATURES)))
    assert res.returncode != 0, res.stdout
    assert "TASK [pibake.raspberry.python_runtime : Check the wheel's instruction set" in res.stdout
    assert f"cannot run on pi (CPU features: {' '.join(CORTEX_A9_FEATURES)})" in res.stdout
    assert "VFPv4 (has VFPv3), NEON with FMA (has NEON)" in res.stdout
    assert "failed=1" in res.stdout


def test_role_passes_the_wheel_for_a_cortex_a7_and_changes_nothing(tflite_wheel: Path, tmp_path: Path) -> None:
    res = run_playbook(
        tmp_path, _role_play(python_runtime_target_cpu_features=list(CORTEX_A7_FEATURES), python_runtime_board="pi2")
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"pi\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", res.stdout), res.stdout


def test_role_checks_the_board_too(tflite_wheel: Path, tmp_path: Path) -> None:
    res = run_playbook(
        tmp_path,
        _role_play(python_runtime_target_cpu_features=list(CORTEX_A7_FEATURES), python_runtime_board="pi-zero"),
    )
    assert res.returncode != 0
    assert f"cannot run on board pi-zero: {TFLITE_SO} needs ARMv7 (has ARMv6)" in res.stdout


def test_role_reads_the_features_line_of_the_targets_cpuinfo(tmp_path: Path) -> None:
    """The role's own expression, fed the /proc/cpuinfo of a Pi 3 (this host is not an ARM machine)."""
    tasks = yaml.safe_load(ROLE_TASKS.read_text())
    [choose] = [t for t in tasks if "ansible.builtin.set_fact" in t]
    play = [
        {
            "name": "Parse a Pi's cpuinfo",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {
                "python_runtime_target_cpu_features": [],
                "python_runtime_cpuinfo": {"content": base64.b64encode(PI3_CPUINFO.encode()).decode()},
            },
            "tasks": [
                choose,
                {"name": "Show", "ansible.builtin.debug": {"var": "python_runtime_isa_check_features"}},
            ],
        }
    ]
    res = run_playbook(tmp_path, play)
    assert res.returncode == 0, res.stdout + res.stderr
    match = re.search(r'ok: \[localhost\] => (\{\s*"python_runtime_isa_check_features".*?\n\})', res.stdout, re.DOTALL)
    assert match, res.stdout
    features = json.loads(match.group(1))["python_runtime_isa_check_features"]
    assert tuple(features) == boards.get("pi3b-plus").cpuinfo_features
    assert isa.from_cpu_features(features) == boards.get("pi3b-plus").isa


@pytest.mark.skipif("\nFeatures" in Path("/proc/cpuinfo").read_text(), reason="this host is an ARM machine")
def test_role_asks_for_the_features_when_the_target_has_none(tflite_wheel: Path, tmp_path: Path) -> None:
    res = run_playbook(tmp_path, _role_play())
    assert res.returncode != 0
    assert '/proc/cpuinfo on pi has no \\"Features\\" line' in res.stdout
    assert "python_runtime_target_cpu_features" in res.stdout
