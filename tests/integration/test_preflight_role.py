"""On the classic vexpress-a9 setup, site.yml stops at the instruction-set check, not at a later SIGILL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pibake.emulate import guest as emulator
from pibake.emulate.ssh import ssh_run
from tests.conftest import REPO

pytestmark = pytest.mark.emulator


def test_site_yml_stops_with_the_preflight_message_on_vexpress_a9(
    base_image: Path, tmp_path: Path, stop_guests: list[str]
) -> None:
    inventory = tmp_path / "hosts.yml"
    stop_guests.append("it-a9-role")
    guest = emulator.start(base_image, profile="vexpress-a9", name="it-a9-role", inventory=inventory)
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "site.yml", "-i", str(inventory)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "tflite_runtime-2.11.0-cp39-cp39-manylinux2014_armv7l.whl" in out
    assert "VFPv4" in out
    # Stopped before anything was installed: the wheel is not on the guest.
    _, listing = ssh_run(guest, "python3 -c 'import tflite_runtime' 2>&1; echo rc=$?")
    assert "rc=1" in listing
    assert emulator.stop("it-a9-role").clean
