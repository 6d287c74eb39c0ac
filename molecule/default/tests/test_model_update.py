"""playbooks/model_update.yml against the emulated Pi: a broken model is rolled back and stops
the rollout; a good one goes live; naming the old version rolls the fleet back.

The fleet is two inventory hosts that are the same guest (pi-a, then pi-b, serial 1): after pi-a
fails, pi-b must not have been touched. Runs once, before side_effect's reboot (it ends with the
guest on the version it started with).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from verify_helpers import REPO, rebooted, serve_client

from pibake.emulate import guest as emulator
from pibake.emulate import inventory as ansible_inventory

MODELS = REPO / "models"
MODEL = yaml.safe_load((REPO / "roles/model/defaults/main.yml").read_text())
CURRENT = f"{MODEL['model_root']}/current"
VERSION = (MODELS / "VERSION").read_text().split()[0]
GOOD = f"{VERSION}-update"
BROKEN = f"{VERSION}-broken"

pytestmark = [
    pytest.mark.skipif(rebooted(), reason="ran before side_effect's reboot; once is enough"),
    # The playbook's logic does not depend on the board; the slow raspi2b scenario checks the rest.
    pytest.mark.skipif(
        os.environ.get("MOLECULE_SCENARIO_NAME", "default") != "default", reason="runs in the default scenario"
    ),
]


@dataclass
class Rollout:
    rc: int
    out: str


@pytest.fixture(scope="module")
def fleet(guest: emulator.Guest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory of two hosts, pi-a and pi-b, that are both the emulated Pi."""
    inv = tmp_path_factory.mktemp("fleet") / "hosts.yml"
    for name in ("pi-a", "pi-b"):
        ansible_inventory.add_host(inv, dataclasses.replace(emulator._inventory_host(guest), name=name))
    shutil.copytree(REPO / "inventories/qemu/group_vars", inv.parent / "group_vars")
    return inv


def _source(tmp: Path, version: str, *, broken: bool = False) -> Path:
    src = tmp / version
    shutil.copytree(MODELS, src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "VERSION").write_text(version + "\n")
    if broken:
        # Not a TFLite flatbuffer: the service cannot load it and never becomes healthy.
        (src / MODEL["model_file"]).write_bytes(b"this is not a model\n" * 64)
    return src


def _rollout(fleet: Path, *extra: str) -> Rollout:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        # One line per message: the YAML format would fold the long ones this test looks for.
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    }
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        str(REPO / "playbooks/model_update.yml"),
        "-i",
        str(fleet),
        *extra,
    ]
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    return Rollout(p.returncode, p.stdout + p.stderr)


def _live(url: str) -> dict[str, Any]:
    """The version the service answers with, and that it still predicts every sample right."""
    client = serve_client.ServeClient(url)
    client.wait_ready(timeout=180)
    for sample in serve_client.sample_images():
        result = client.predict(sample.read_bytes()).json()
        assert result["label"] == serve_client.expected_label(sample), (sample.name, result)
    health: dict[str, Any] = client.health()
    return health


def test_a_broken_model_is_rolled_back_and_stops_the_rollout(
    host: Any, fleet: Path, service_url: str, tmp_path: Path
) -> None:
    assert host.file(CURRENT).linked_to.endswith(f"/versions/{VERSION}")
    res = _rollout(fleet, "-e", f"model_source_dir={_source(tmp_path, BROKEN, broken=True)}",
                   "-e", "model_update_health_timeout=90")  # fmt: skip
    assert res.rc != 0, res.out[-4000:]
    assert f"rolling it back to {VERSION}" in res.out, res.out[-4000:]
    assert f"Model version {BROKEN} failed its check on pi-a" in res.out, res.out[-4000:]
    # serial 1, max_fail_percentage 0: pi-b was never touched.
    assert "pi-b" not in res.out.split("PLAY RECAP", 1)[0], res.out[-4000:]
    assert host.file(CURRENT).linked_to.endswith(f"/versions/{VERSION}")
    assert _live(service_url)["version"] == VERSION


def test_a_good_model_goes_live_on_every_host(host: Any, fleet: Path, service_url: str, tmp_path: Path) -> None:
    res = _rollout(fleet, "-e", f"model_source_dir={_source(tmp_path, GOOD)}")
    assert res.rc == 0, res.out[-4000:]
    assert host.file(CURRENT).linked_to.endswith(f"/versions/{GOOD}")
    assert _live(service_url)["version"] == GOOD


def test_naming_the_old_version_rolls_the_fleet_back(host: Any, fleet: Path, service_url: str) -> None:
    res = _rollout(fleet, "-e", f"model_update_version={VERSION}")
    assert res.rc == 0, res.out[-4000:]
    assert host.file(CURRENT).linked_to.endswith(f"/versions/{VERSION}")
    assert _live(service_url)["version"] == VERSION
    # The versions the rollouts left, all verifiable; the broken one is kept too (the last three).
    versions = host.check_output("ls %s/versions", MODEL["model_root"]).split()
    assert {VERSION, GOOD, BROKEN} <= set(versions)
