#!/usr/bin/python
# Copyright: pibake engineers
# MIT License (see galaxy.yml)
"""Ansible module: refuse a wheel whose native code the target's CPU cannot run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wheel_isa_check
short_description: Check that a wheel's native code can run on a Raspberry Pi board and on a given ARM CPU
version_added: "0.1.0"
description:
  - Reads the ELF ARM build attributes (C(Tag_CPU_arch), C(Tag_FP_arch), C(Tag_Advanced_SIMD_arch),
    C(Tag_DIV_use); what C(readelf -A) shows) of every ELF file inside a wheel, or inside the wheels and
    loose files of a directory.
  - Compares what they need with the CPU of a Raspberry Pi O(board) and with the CPU described by its
    C(/proc/cpuinfo) O(cpu_features), and fails, naming the wheel, the shared object, the instructions it
    needs and what the CPU lacks, when either could not run it. Installing such a wheel ends in
    C(Illegal instruction) (SIGILL) the first time its code runs.
  - Reads files only, where it runs; delegate it to the controller to check a wheel before it is copied.
  - The same check as C(pibake preflight); the board table is kept equal to pibake's by its tests.
requirements:
  - pyelftools (on the host that runs the module)
options:
  path:
    description:
      - A wheel file, a single ELF file, or a directory of wheels and/or unpacked files.
    type: path
    required: true
  board:
    description:
      - Raspberry Pi model whose CPU (with a 32-bit OS) must run the wheel.
      - C(pi1) and C(pi-zero) are ARMv6 with VFPv2 and no NEON; C(pi2) is ARMv7 with VFPv4 and NEON;
        C(pi3), C(pi3b-plus), C(pi-zero-2) and C(pi4) are ARMv8 in AArch32 with CRC32.
    type: str
    choices: [pi1, pi-zero, pi2, pi3, pi3b-plus, pi-zero-2, pi4]
  cpu_features:
    description:
      - The C(Features) of the CPU that will run the wheel, as C(/proc/cpuinfo) lists them (for example
        C(half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt lpae)). An emulated Pi reports the
        emulated CPU's, which is the point. Elements may hold several space-separated features.
    type: list
    elements: str
  architecture:
    description:
      - C(uname -m) of the machine with O(cpu_features) (C(ansible_facts['architecture'])), for example
        C(armv7l). Without it the architecture is inferred from the features.
    type: str
  cpu_name:
    description:
      - What to call the CPU of O(cpu_features) in messages, for example the inventory host name.
    type: str
    default: the target CPU
attributes:
  check_mode:
    support: full
    description: Reads files only; the check runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing.
notes:
  - At least one of O(board) and O(cpu_features) is required.
  - A shared object without build attributes is reported but not refused (there is nothing to check).
author:
  - pibake engineers
"""

EXAMPLES = r"""
- name: Read the CPU features of the target
  ansible.builtin.slurp:
    src: /proc/cpuinfo
  register: cpuinfo

- name: Check the downloaded wheel on the controller before copying it
  pibake.raspberry.wheel_isa_check:
    path: /var/cache/wheels/tflite_runtime-2.11.0-cp39-cp39-manylinux2014_armv7l.whl
    board: pi3b-plus
    # The Features line of /proc/cpuinfo, split into words.
    cpu_features: >-
      {{ cpuinfo.content | b64decode
         | regex_search('^Features\s*:(.*)$', '\1', multiline=True) | first | split }}
    architecture: "{{ ansible_facts['architecture'] }}"
    cpu_name: "{{ inventory_hostname }}"
  delegate_to: localhost

- name: Check a directory of wheels against a Pi Zero
  pibake.raspberry.wheel_isa_check:
    path: /srv/wheels
    board: pi-zero
  delegate_to: localhost
"""

RETURN = r"""
compatible:
  description: Whether every wheel can run on the board and on the CPU.
  returned: always
  type: bool
  sample: false
board:
  description: The board checked against and its instruction set.
  returned: when O(board) is set
  type: dict
  sample: {"name": "pi3b-plus", "has": "ARMv8 (AArch32), FP-ARMv8 (D32), NEON for ARMv8, integer divide, CRC32"}
cpu:
  description: The CPU of O(cpu_features) and the instruction set read from them.
  returned: when O(cpu_features) is set
  type: dict
  sample: {"name": "pi", "has": "ARMv7, VFPv3 (D32), NEON"}
wheels:
  description: One entry per wheel (or directory of loose files).
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The wheel or directory.
      type: str
    compatible:
      description: Whether it can run on the board and on the CPU.
      type: bool
    objects:
      description: Its ELF files, what each needs, and what the board and the CPU lack for it.
      type: list
      elements: dict
      sample:
        - name: tflite_runtime/_pywrap_tensorflow_interpreter_wrapper.so
          needs: ARMv7, VFPv4 (D32), NEON with FMA
          tags: ["Tag_CPU_arch: v7", "Tag_FP_arch: VFPv4", "Tag_Advanced_SIMD_arch: NEONv1 with Fused-MAC"]
          problem: null
          board_lacks: []
          cpu_lacks: ["VFPv4 (has VFPv3)", "NEON with FMA (has NEON)"]
"""

import io
import traceback
import zipfile
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import ARMAttributesSection
except ImportError:
    ELFTOOLS_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    ELFTOOLS_IMPORT_ERROR = None

# A copy of pibake.isa's and pibake.boards' tables (the pibake package is not installed where a
# collection module may run); tests/unit/test_wheel_isa_check.py keeps the two equal.
# Levels are ordered: a CPU runs code built for its level or lower.
ARCH_LABELS = {
    50: "ARMv5",
    60: "ARMv6",
    65: "ARMv6T2",
    70: "ARMv7",
    80: "ARMv8 (AArch32)",
    81: "ARMv8.1",
    82: "ARMv8.2",
    83: "ARMv8.3",
    90: "ARMv9",
}
FP_LABELS = {0: "no FPU", 2: "VFPv2", 3: "VFPv3", 4: "VFPv4", 8: "FP-ARMv8"}
SIMD_LABELS = {0: "no NEON", 1: "NEON", 2: "NEON with FMA", 3: "NEON for ARMv8", 4: "NEON for ARMv8.1"}
# Tag value -> level (ARM IHI 0045); unknown values map to the highest level.
CPU_ARCH_TAG = {
    **dict.fromkeys(range(6), 50),
    6: 60,
    7: 60,
    8: 65,
    9: 60,
    10: 70,
    11: 70,
    12: 70,
    13: 70,
    14: 80,
    15: 80,
    16: 80,
    17: 80,
    18: 81,
    19: 82,
    20: 83,
    21: 81,
    22: 90,
}
CPU_ARCH_NAMES = {
    **{0: "Pre-v4", 1: "v4", 2: "v4T", 3: "v5T", 4: "v5TE", 5: "v5TEJ", 6: "v6", 7: "v6KZ", 8: "v6T2", 9: "v6K"},
    **{10: "v7", 11: "v6-M", 12: "v6S-M", 13: "v7E-M", 14: "v8-A", 15: "v8-R", 16: "v8-M.baseline"},
    **{17: "v8-M.mainline", 18: "v8.1-A", 19: "v8.2-A", 20: "v8.3-A", 21: "v8.1-M.mainline", 22: "v9-A"},
}
FP_ARCH_TAG = {0: (0, False), 1: (2, False), 2: (2, False), 3: (3, True), 4: (3, False), 5: (4, True)}
FP_ARCH_TAG.update({6: (4, False), 7: (8, True), 8: (8, False)})
FP_ARCH_NAMES = {0: "No", 1: "VFPv1", 2: "VFPv2", 3: "VFPv3", 4: "VFPv3-D16", 5: "VFPv4", 6: "VFPv4-D16"}
FP_ARCH_NAMES.update({7: "FP for ARMv8", 8: "FPv5/FP-D16 for ARMv8"})
SIMD_ARCH_TAG = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
SIMD_ARCH_NAMES = {0: "No", 1: "NEONv1", 2: "NEONv1 with Fused-MAC", 3: "NEON for ARMv8", 4: "NEON for ARMv8.1"}
THUMB2 = 2
DIV_USED = 2
V8_FEATURES = frozenset({"crc32", "aes", "pmull", "sha1", "sha2", "asimd"})
V7_FEATURES = frozenset(
    {"neon", "vfpv3", "vfpv3d16", "vfpv4", "idiva", "idivt", "vfpd32", "lpae", "thumbee", "evtstrm"}
)
V6_FEATURES = frozenset({"tls"})
MACHINE_ARCH = {"armv6l": 60, "armv7l": 70, "armv8l": 80, "aarch64": 80}

# Each board: (uname -m, /proc/cpuinfo Features) on the real board with a 32-bit kernel.
_ARM1176 = "half thumb fastmult vfp edsp java tls"
_CORTEX_A7 = "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm"
BOARDS = {
    "pi1": ("armv6l", _ARM1176),
    "pi-zero": ("armv6l", _ARM1176),
    "pi2": ("armv7l", _CORTEX_A7),
    "pi3": ("armv7l", _CORTEX_A7 + " crc32"),
    "pi3b-plus": ("armv7l", _CORTEX_A7 + " crc32"),
    "pi-zero-2": ("armv7l", _CORTEX_A7 + " crc32"),
    "pi4": ("armv7l", _CORTEX_A7 + " crc32"),
}
ELF_MAGIC = b"\x7fELF"
NO_ATTRIBUTES = ["no build attributes"]


def from_cpu_features(features, machine=None):
    """(arch, fp, fp_d32, simd, idiv, crc32) of a CPU from its /proc/cpuinfo Features."""
    feats = {f.lower() for f in features}
    arch = MACHINE_ARCH.get((machine or "").lower(), 50)
    if feats & V8_FEATURES:
        arch = max(arch, 80)
    elif feats & V7_FEATURES:
        arch = max(arch, 70)
    elif feats & V6_FEATURES:
        arch = max(arch, 60)
    if "vfpv4" in feats or "fp" in feats:
        fp = 8 if arch >= 80 else 4
    elif feats & {"vfpv3", "vfpv3d16"}:
        fp = 3
    elif "vfp" in feats:
        fp = 2
    else:
        fp = 0
    fp_d32 = fp != 0 and bool(feats & {"vfpd32", "neon", "asimd"}) and "vfpv3d16" not in feats
    simd = 0
    if feats & {"neon", "asimd"}:
        simd = 3 if arch >= 80 else 2 if "vfpv4" in feats else 1
    return (arch, fp, fp_d32, simd, "idiva" in feats or arch >= 80, "crc32" in feats)


def describe(isa, only_present=False):
    arch, fp, fp_d32, simd, idiv, crc32 = isa
    parts = [ARCH_LABELS[arch]]
    if fp or not only_present:
        parts.append(FP_LABELS[fp] + (" (D32)" if fp_d32 and fp else ""))
    if simd or not only_present:
        parts.append(SIMD_LABELS[simd])
    return ", ".join(parts + (["integer divide"] if idiv else []) + (["CRC32"] if crc32 else []))


def missing(needs, has):
    out = []
    if needs[0] > has[0]:
        out.append(f"{ARCH_LABELS[needs[0]]} (has {ARCH_LABELS[has[0]]})")
    if needs[1] > has[1]:
        out.append(f"{FP_LABELS[needs[1]]} (has {FP_LABELS[has[1]]})")
    elif needs[2] and not has[2] and has[1]:
        out.append(f"{FP_LABELS[needs[1]]} with 32 double registers (has 16)")
    if needs[3] > has[3]:
        out.append(f"{SIMD_LABELS[needs[3]]} (has {SIMD_LABELS[has[3]]})")
    if needs[4] and not has[4]:
        out.append("hardware integer divide, SDIV/UDIV (has none)")
    if needs[5] and not has[5]:
        out.append("CRC32 instructions (has none)")
    return out


def read_elf(data, name):
    """{"name", "needs" (tuple), "tags", "problem"} for one ELF file."""
    obj = {"name": name, "needs": (50, 0, False, 0, False, False), "tags": [], "problem": None}
    try:
        elf = ELFFile(io.BytesIO(data))
        machine = elf["e_machine"]
        if machine != "EM_ARM":
            what = "AArch64 (64-bit)" if machine == "EM_AARCH64" else str(machine).removeprefix("EM_")
            obj["problem"] = f"is {what} code, which no 32-bit ARM system can run"
            return obj
        values = {}
        sections = [s for s in elf.iter_sections() if isinstance(s, ARMAttributesSection)]
        for section in sections:
            for subsection in section.iter_subsections("aeabi"):
                for subsub in subsection.iter_subsubsections():
                    for attr in subsub.iter_attributes():
                        if isinstance(attr.value, int) and isinstance(attr.tag, str):
                            values[attr.tag] = max(values.get(attr.tag, 0), attr.value)
    except (ELFError, ConstructError, ValueError, KeyError) as e:
        obj["problem"] = f"has unreadable ELF headers or build attributes ({e})"
        return obj
    if not sections:
        obj["tags"] = list(NO_ATTRIBUTES)
        return obj
    cpu_arch = values.get("TAG_CPU_ARCH", 0)
    fp_arch = values.get("TAG_FP_ARCH", 0)
    simd_arch = values.get("TAG_ADVANCED_SIMD_ARCH", 0)
    arch = CPU_ARCH_TAG.get(cpu_arch, 90)
    if values.get("TAG_THUMB_ISA_USE") == THUMB2:
        arch = max(arch, 65)
    fp, fp_d32 = FP_ARCH_TAG.get(fp_arch, (8, True))
    idiv = values.get("TAG_DIV_USE") == DIV_USED and arch < 80
    obj["needs"] = (arch, fp, fp_d32, SIMD_ARCH_TAG.get(simd_arch, 4), idiv, False)
    obj["tags"] = [f"Tag_CPU_arch: {CPU_ARCH_NAMES.get(cpu_arch, f'?{cpu_arch}')}"]
    if fp_arch:
        obj["tags"].append(f"Tag_FP_arch: {FP_ARCH_NAMES.get(fp_arch, f'?{fp_arch}')}")
    if simd_arch:
        obj["tags"].append(f"Tag_Advanced_SIMD_arch: {SIMD_ARCH_NAMES.get(simd_arch, f'?{simd_arch}')}")
    if idiv:
        obj["tags"].append("Tag_DIV_use: Allowed in v7-A with integer division extension")
    return obj


def wheel_objects(wheel):
    objects = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or info.file_size < len(ELF_MAGIC):
                continue
            with zf.open(info) as f:
                head = f.read(len(ELF_MAGIC))
                if head == ELF_MAGIC:
                    objects.append(read_elf(head + f.read(), info.filename))
    return objects


def is_elf(path):
    try:
        with path.open("rb") as f:
            return f.read(len(ELF_MAGIC)) == ELF_MAGIC
    except OSError:
        return False


def scan(path):
    """[(path, [objects])] for a wheel, an ELF file or a directory."""
    if path.is_dir():
        wheels = sorted(path.rglob("*.whl"))
        found = [(w, wheel_objects(w)) for w in wheels]
        loose = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".whl" and is_elf(p))
        if loose or not wheels:
            found.append((path, [read_elf(p.read_bytes(), str(p.relative_to(path))) for p in loose]))
        return found
    if is_elf(path):
        return [(path, [read_elf(path.read_bytes(), path.name)])]
    return [(path, wheel_objects(path))]


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "board": {"type": "str", "choices": list(BOARDS)},
            "cpu_features": {"type": "list", "elements": "str"},
            "architecture": {"type": "str"},
            "cpu_name": {"type": "str", "default": "the target CPU"},
        },
        required_one_of=[("board", "cpu_features")],
        supports_check_mode=True,
    )
    if ELFTOOLS_IMPORT_ERROR:
        module.fail_json(
            msg=missing_required_lib("pyelftools", reason="to read the wheels' ARM build attributes"),
            exception=ELFTOOLS_IMPORT_ERROR,
        )
    p = module.params
    path = Path(p["path"])
    if not path.exists():
        module.fail_json(
            msg=f"no wheel or directory at {path} on the host running this check: download the wheel there "
            "first (delegate this task to the host that has it)"
        )

    targets = []
    result = {"changed": False}
    if p["board"]:
        machine, features = BOARDS[p["board"]]
        isa = from_cpu_features(features.split(), machine)
        targets.append(("board", f"board {p['board']}", isa))
        result["board"] = {"name": p["board"], "has": describe(isa)}
    if p["cpu_features"] is not None:
        features = [f for item in p["cpu_features"] for f in item.split()]
        isa = from_cpu_features(features, p["architecture"])
        label = f"{p['cpu_name']} (CPU features: {' '.join(features) or 'none'})"
        targets.append(("cpu", label, isa))
        result["cpu"] = {"name": p["cpu_name"], "has": describe(isa)}

    try:
        found = scan(path)
    except (zipfile.BadZipFile, OSError) as e:
        module.fail_json(msg=f"{path} is not a readable wheel ({e}): delete it and download it again", **result)

    wheels, errors, failed_kinds = [], [], set()
    for wheel_path, objects in found:
        entries, bad = [], {}
        for obj in objects:
            entry = {k: obj[k] for k in ("name", "tags", "problem")}
            recorded = obj["tags"] and obj["tags"] != NO_ATTRIBUTES
            entry["needs"] = describe(obj["needs"], only_present=True) if recorded else "nothing recorded"
            for kind, label, isa in targets:
                lacks = missing(obj["needs"], isa)
                entry[f"{kind}_lacks"] = lacks
                if obj["problem"] or lacks:
                    failed_kinds.add(kind)
                    why = obj["problem"] or "needs " + ", ".join(lacks)
                    bad.setdefault(label, []).append(f"{obj['name']} {why}")
            entries.append(entry)
        wheels.append({"path": str(wheel_path), "compatible": not bad, "objects": entries})
        errors += [f"{wheel_path.name} cannot run on {label}: {'; '.join(why)}." for label, why in bad.items()]

    result.update(compatible=not errors, wheels=wheels)
    if errors:
        hints = ['Installing it would end in "Illegal instruction" (SIGILL). Use a wheel built for this CPU.']
        if "board" in failed_kinds:
            hints.append(
                f"If the image is not for a {p['board']}, name the board it is for "
                "(board; python_runtime_board in the python_runtime role)."
            )
        if "cpu" in failed_kinds:
            hints.append(
                f"If {p['cpu_name']} is an emulated Pi, emulate the board's own CPU (QEMU -cpu cortex-a7 for a "
                "Pi 2, cortex-a15 for a Pi 3/4), not a Cortex-A9 (vexpress-a9)."
            )
        module.fail_json(msg=" ".join(errors + hints), **result)
    result["msg"] = f"{len(wheels)} wheel(s) can run on " + " and ".join(t[1] for t in targets)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
