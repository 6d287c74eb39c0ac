"""Provisioning: ansible-playbook against an emulated or real Pi, with the collection on its path."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pibake.errors import ToolMissing
from pibake.util.proc import run


def _tool(name: str) -> str:
    """A tool from this interpreter's venv first, then from PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if not found:
        raise ToolMissing(f"{name} not found: install pibake with its dependencies (`make venv`)")
    return found


def provision(project: Path, inventory: Path, *, extra_vars: dict[str, str] | None = None) -> str:
    """Run site.yml against INVENTORY, streaming Ansible's output; return that output."""
    argv = [_tool("ansible-playbook"), str(project / "site.yml"), "-i", str(inventory)]
    for key, value in (extra_vars or {}).items():
        argv += ["-e", f"{key}={value}"]
    # Unbuffered, so each task shows as it happens rather than in blocks.
    env = {"ANSIBLE_CONFIG": str(project / "ansible.cfg"), "PYTHONUNBUFFERED": "1", "ANSIBLE_FORCE_COLOR": "0"}
    return run(argv, cwd=project, env=env, stream=True)
