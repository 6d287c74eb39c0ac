#!/usr/bin/python
# Copyright: pibake engineers
# MIT License (see galaxy.yml)
"""Ansible module: read a runtime lock, download its wheels, or verify a directory of them against it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: wheel_lock
short_description: Read a pibake runtime lock, download its wheels checked by SHA-256, or verify them
version_added: "0.1.0"
description:
  - A runtime lock (C(roles/python_runtime/files/locks/*.txt), written by C(make locks)) pins every package of a
    runtime's dependency closure for one Python and platform, with one wheel file name and one SHA-256 each.
  - O(state=read) parses the lock and returns its Python, platform tags, the distribution packages it leaves to
    the system (numpy) and its pins.
  - O(state=present) downloads into O(wheel_dir) every wheel it lacks, with pip for the lock's platform and
    Python (C(pip download --no-deps --only-binary=:all:), with C(--platform) for each tag), and checks each
    file's SHA-256 against the lock. pip uses its default index, or the one C(PIP_INDEX_URL), C(PIP_FIND_LINKS)
    or C(pip.conf) name. A file whose digest differs is deleted and the module fails naming it and both digests.
    Run it on the controller (delegate the task to localhost).
  - O(state=verified) downloads nothing and fails unless O(wheel_dir) holds every wheel of the lock with its
    digest; run it on the target after copying the wheels there.
  - The same code as C(pibake wheels fetch) (this collection's C(plugins/module_utils/wheel_lock.py)).
options:
  lock:
    description: The lock file, on the host the module runs on.
    type: path
    required: true
  wheel_dir:
    description: Directory of the wheels; required unless O(state=read).
    type: path
  state:
    description: What to do with the lock (see the description).
    type: str
    choices: [read, present, verified]
    default: read
  pip_python:
    description:
      - Python whose pip downloads the wheels for O(state=present), for example C(ansible_playbook_python).
      - Defaults to the Python running the module.
    type: str
attributes:
  check_mode:
    support: full
    description: Downloads into the controller's cache in check mode too; the target is not changed.
  diff_mode:
    support: none
    description: Reports no diff.
author:
  - pibake engineers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Download the lock's wheels to the controller's cache
  pibake.raspberry.wheel_lock:
    lock: "{{ role_path }}/files/locks/ai-edge-litert-3.13-debian-trixie-arm64.txt"
    wheel_dir: ~/.cache/pibake/wheels
    state: present
    pip_python: "{{ ansible_playbook_python }}"
  delegate_to: localhost
  run_once: true
  register: fetched

- name: Verify the copied wheels on the target
  pibake.raspberry.wheel_lock:
    lock: /var/cache/pibake/wheels/ai-edge-litert-3.13-debian-trixie-arm64.txt
    wheel_dir: /var/cache/pibake/wheels
    state: verified
"""

RETURN = r"""
python_version:
  description: The target's Python (X.Y) the lock was resolved for.
  returned: always
  type: str
  sample: "3.13"
platforms:
  description: The platform tags pip downloads for, newest first.
  returned: always
  type: list
  elements: str
  sample: [manylinux_2_41_aarch64, manylinux_2_40_aarch64]
machine:
  description: The machine (C(uname -m) of the userland) of the first platform tag.
  returned: always
  type: str
  sample: aarch64
system:
  description: Requirements the lock leaves to the distribution (the venv sees them through --system-site-packages).
  returned: always
  type: list
  elements: str
  sample: ["numpy==2.2.4"]
wheels:
  description: One entry per pin.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The distribution's normalised name.
      type: str
    version:
      description: Its pinned version.
      type: str
    filename:
      description: The wheel's file name.
      type: str
    sha256:
      description: The pinned SHA-256 (the file's, unless O(state=read)).
      type: str
downloaded:
  description: File names downloaded by this run (O(state=present)).
  returned: always
  type: list
  elements: str
"""

import sys
import traceback

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.pibake.raspberry.plugins.module_utils.wheel_lock import (
    HashMismatch,
    LockError,
    MissingWheel,
    check_dir,
    fetch,
    read,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "lock": {"type": "path", "required": True},
            "wheel_dir": {"type": "path"},
            "state": {"type": "str", "choices": ["read", "present", "verified"], "default": "read"},
            "pip_python": {"type": "str"},
        },
        required_if=[("state", "present", ["wheel_dir"]), ("state", "verified", ["wheel_dir"])],
        supports_check_mode=True,
    )
    p = module.params
    try:
        lock = read(p["lock"])
    except (OSError, LockError) as e:
        module.fail_json(msg=f"cannot read the lock {p['lock']}: {e}. Regenerate it with `make locks`.")
    machine = lock.platforms[0].rsplit("_", 1)[-1] if lock.platforms else ""
    if machine == "64" or lock.platforms[0].endswith("x86_64"):
        machine = "x86_64"
    result = {
        "changed": False,
        "python_version": lock.python_version,
        "platforms": list(lock.platforms),
        "machine": machine,
        "system": list(lock.system),
        "downloaded": [],
        "wheels": [
            {"name": pin.key, "version": pin.version, "filename": pin.filename, "sha256": pin.hashes[0]}
            for pin in lock.pins
        ],
    }
    if p["state"] == "read":
        module.exit_json(**result)

    def run(argv):
        rc, out, err = module.run_command(list(argv))
        if rc != 0:
            module.fail_json(msg=f"pip failed (exit {rc}): {' '.join(argv)}\n{(out + err)[-3000:]}", **result)

    try:
        if p["state"] == "present":
            found, downloaded = fetch(
                lock, p["wheel_dir"], pip=[p["pip_python"] or sys.executable, "-m", "pip"], run=run
            )
            result["downloaded"] = downloaded
            result["changed"] = bool(downloaded)
        else:
            found = check_dir(lock, p["wheel_dir"])
    except HashMismatch as e:
        module.fail_json(
            msg=f"{e.path} has SHA-256 {e.actual}, but {p['lock']} pins {e.expected}: refused. A download is not "
            "kept; a copied file was corrupted or changed, delete it and run again. If the release was replaced on "
            "purpose, regenerate the lock with `make locks`.",
            **result,
        )
    except MissingWheel as e:
        module.fail_json(
            msg=f"{e} ({p['lock']}): copy the wheels again, or regenerate the lock with `make locks`.", **result
        )
    except OSError as e:
        module.fail_json(msg=f"cannot use {p['wheel_dir']}: {e}", exception=traceback.format_exc(), **result)
    result["wheels"] = [
        {"name": pin.key, "version": pin.version, "filename": path.name, "sha256": digest}
        for pin, path, digest in found
    ]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
