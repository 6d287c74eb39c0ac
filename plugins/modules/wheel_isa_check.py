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
  - The same check, on the same board table, as C(pibake preflight); both use this collection's
    C(plugins/module_utils/isa.py) and C(plugins/module_utils/boards.py).
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
  - pibake engineers (!UNKNOWN)
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

from pathlib import Path

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.pibake.raspberry.plugins.module_utils.boards import BOARDS
from ansible_collections.pibake.raspberry.plugins.module_utils.isa import (
    ELFTOOLS_IMPORT_ERROR,
    NoSuchPath,
    UnreadableWheel,
    from_cpu_features,
    missing,
    scan,
)


def emulation_hint():
    """Which QEMU CPU emulates which board, from the board table: "cortex-a7 for a pi2, cortex-a15 for a pi3, ..."."""
    by_cpu = {}
    for board in BOARDS.values():
        if board.cpu:
            by_cpu.setdefault(board.cpu, []).append(board.name)
    return ", ".join(f"{cpu} for a {' or '.join(names)}" for cpu, names in by_cpu.items())


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
        isa = BOARDS[p["board"]].isa
        targets.append(("board", f"board {p['board']}", isa))
        result["board"] = {"name": p["board"], "has": isa.describe()}
    if p["cpu_features"] is not None:
        features = [f for item in p["cpu_features"] for f in item.split()]
        isa = from_cpu_features(features, machine=p["architecture"])
        label = f"{p['cpu_name']} (CPU features: {' '.join(features) or 'none'})"
        targets.append(("cpu", label, isa))
        result["cpu"] = {"name": p["cpu_name"], "has": isa.describe()}

    try:
        found = scan([path])
    except NoSuchPath as e:
        module.fail_json(msg=f"{e} on the host running this check: a wheel file, an ELF file or a directory", **result)
    except UnreadableWheel as e:
        module.fail_json(
            msg=f"{e.path} is not a readable wheel ({e.reason}): delete it and download it again", **result
        )

    wheels, errors, failed_kinds = [], [], set()
    for artifact in found:
        entries, bad = [], {}
        for obj in artifact.objects:
            entry = {
                "name": obj.name,
                "tags": list(obj.tags),
                "problem": obj.problem,
                "needs": obj.needs.describe(only_present=True) if obj.recorded else "nothing recorded",
            }
            for kind, label, isa in targets:
                lacks = missing(obj.needs, isa)
                entry[f"{kind}_lacks"] = lacks
                if obj.problem or lacks:
                    failed_kinds.add(kind)
                    why = obj.problem or "needs " + ", ".join(lacks)
                    bad.setdefault(label, []).append(f"{obj.name} {why}")
            entries.append(entry)
        wheels.append({"path": str(artifact.path), "compatible": not bad, "objects": entries})
        errors += [f"{artifact.name} cannot run on {label}: {'; '.join(why)}." for label, why in bad.items()]

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
                f"If {p['cpu_name']} is an emulated Pi, emulate the board's own CPU (QEMU -cpu {emulation_hint()}), "
                "not a Cortex-A9 (vexpress-a9)."
            )
        module.fail_json(msg=" ".join(errors + hints), **result)
    result["msg"] = f"{len(wheels)} wheel(s) can run on " + " and ".join(t[1] for t in targets)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
