"""Provisioning: ansible-playbook against an emulated or real Pi, with the collection on its path."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from pathlib import Path

from pibake import resources
from pibake.errors import ToolMissing
from pibake.util import progress
from pibake.util.proc import run

log = logging.getLogger(__name__)

# ansible-playbook's default callback: a task's or handler's header ("TASK [role : Name] ****"), then one result per
# host ("ok: [pi]", "changed: [pi] => (item=x)", "fatal: [pi]: FAILED! => ..."), and "PLAY RECAP" at the end.
TASK_HEADER = re.compile(r"^(?P<task>(?:TASK|RUNNING HANDLER) \[.*\])\s*\**\s*$")
HOST_RESULT = re.compile(r"^(?P<result>ok|changed|skipping|fatal|failed|included): \[")
RESULT_WORDS = {"skipping": "skipped", "fatal": "failed"}


def _tool(name: str) -> str:
    """A tool from this interpreter's venv first, then from PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if not found:
        raise ToolMissing(f"{name} not found: install pibake with its dependencies (`make venv`)")
    return found


class AnsibleOutput:
    """ansible-playbook's output lines for a progress step. On a terminal each task is the row's section, logged
    once when it ends with its hosts' results and time; plays, failures (with their message) and the recap are
    kept. Elsewhere every line is logged as it comes, as before."""

    def __init__(self, status: progress.Step) -> None:
        self.status = status
        self.failure = False  # inside a failed task's message, which ends at a blank line
        self.recap = False  # PLAY RECAP and everything after it

    def __call__(self, line: str) -> None:
        header = TASK_HEADER.match(line)
        if header:
            self.failure = False
            self.status.section(header["task"], line=line)
            return
        result = HOST_RESULT.match(line)
        if result:
            self.status.tag(RESULT_WORDS.get(result["result"], result["result"]))
            self.failure = result["result"] in ("fatal", "failed")
        elif not line.strip():
            self.failure = False
        if line.startswith(("PLAY [", "PLAY RECAP")):
            self.status.end_section()  # the last task's line before the play's or the recap's
            self.recap = line.startswith("PLAY RECAP")
            self.status.keep(line)
        elif self.failure or self.recap or line.startswith("...ignoring"):
            self.status.keep(line)
        else:
            self.status.output(line)


def provision(
    project: Path,
    inventory: Path,
    *,
    extra_vars: dict[str, str] | None = None,
    extra_vars_file: Path | None = None,
    playbook: Path | None = None,
) -> str:
    """Run PLAYBOOK (default: PROJECT's site.yml) against INVENTORY with PROJECT's ansible.cfg (and, for pibake's
    installed collection, its collections path: pibake.resources.ansible_env), streaming Ansible's output (on a
    terminal, the current task and its time on a progress row); return that output. EXTRA_VARS_FILE (JSON or YAML)
    is passed as ``-e @FILE``, then each EXTRA_VARS.

    Raises pibake.errors.ToolMissing without ansible-playbook, and the error util.proc.run raises for a failed run.
    """
    book = playbook or project / "site.yml"
    argv = [_tool("ansible-playbook"), str(book), "-i", str(inventory)]
    if extra_vars_file is not None:
        argv += ["-e", f"@{extra_vars_file}"]
    for key, value in (extra_vars or {}).items():
        argv += ["-e", f"{key}={value}"]
    # Unbuffered, so each task shows as it happens rather than in blocks.
    env = {**resources.ansible_env(project), "PYTHONUNBUFFERED": "1", "ANSIBLE_FORCE_COLOR": "0"}
    with progress.step(f"ansible-playbook {book.name}", logger=log) as status:
        return run(argv, cwd=project, env=env, stream=True, on_line=AnsibleOutput(status))
