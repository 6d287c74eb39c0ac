"""The checkout's ansible.cfg and Molecule run plays with Mitogen's strategy, found through ansible_plugins/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO, molecule_config

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def test_a_play_runs_on_mitogen_with_the_checkouts_ansible_cfg(tmp_path: Path) -> None:
    play = tmp_path / "play.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "all",
                    "gather_facts": False,
                    "tasks": [
                        {"ansible.builtin.command": "uname -m", "changed_when": False},
                        {"ansible.builtin.stat": {"path": str(play)}, "register": "st"},
                        {"ansible.builtin.assert": {"that": ["st.stat.exists"]}},
                    ],
                }
            ]
        )
    )
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    res = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-vvv",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ok=3" in res.stdout and "failed=0" in res.stdout
    # Mitogen's local connection ran the tasks, not Ansible's own.
    assert "mitogen" in (res.stdout + res.stderr).lower(), res.stdout


def test_molecule_uses_the_same_strategy() -> None:
    for scenario in ("default", "armhf", "raspi3b"):  # the board models' raspi2b keeps Ansible's own
        defaults = molecule_config(REPO / "molecule" / scenario / "molecule.yml")["ansible"]["cfg"]["defaults"]
        assert defaults["strategy"] == "mitogen_linear", scenario
        assert defaults["strategy_plugins"].endswith("/ansible_plugins/strategy")
    assert (REPO / "ansible_plugins" / "strategy" / "mitogen_linear.py").is_file()
