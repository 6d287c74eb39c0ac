"""Provisioning: ansible-playbook against an emulated or real Pi, with the collection on its path."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pibake import resources
from pibake.errors import ToolMissing
from pibake.util.proc import run


def _tool(name: str) -> str:
    """A tool from this interpreter's venv first, then from PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if not found:
        raise ToolMissing(f"{name} not found: install pibake with its dependencies (`make venv`)")
    return found


def provision(
    project: Path,
    inventory: Path,
    *,
    extra_vars: dict[str, str] | None = None,
    extra_vars_file: Path | None = None,
    playbook: Path | None = None,
) -> str:
    """Run PLAYBOOK (default: PROJECT's site.yml) against INVENTORY with PROJECT's ansible.cfg (and, for pibake's
    installed collection, its collections path: pibake.resources.ansible_env), streaming Ansible's
    output; return that output. EXTRA_VARS_FILE (JSON or YAML) is passed as ``-e @FILE``, then each EXTRA_VARS.

    Raises pibake.errors.ToolMissing without ansible-playbook, and the error util.proc.run raises for a failed run.
    """
    argv = [_tool("ansible-playbook"), str(playbook or project / "site.yml"), "-i", str(inventory)]
    if extra_vars_file is not None:
        argv += ["-e", f"@{extra_vars_file}"]
    for key, value in (extra_vars or {}).items():
        argv += ["-e", f"{key}={value}"]
    # Unbuffered, so each task shows as it happens rather than in blocks.
    env = {**resources.ansible_env(project), "PYTHONUNBUFFERED": "1", "ANSIBLE_FORCE_COLOR": "0"}
    return run(argv, cwd=project, env=env, stream=True)
