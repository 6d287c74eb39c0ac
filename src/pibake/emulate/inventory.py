"""The Ansible inventory for emulated Pis (inventories/qemu/hosts.yml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GROUP = "raspberry_pi"
HEADER = "# Written by `pibake emulate start`; rewritten on every start and stop. Do not edit.\n"
SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


@dataclass(frozen=True)
class Host:
    name: str
    port: int
    user: str
    private_key: Path
    profile: str
    cpu: str
    board: str | None = None

    def variables(self) -> dict[str, Any]:
        board = {"python_runtime_board": self.board} if self.board else {}
        return {
            **board,
            "ansible_host": "127.0.0.1",
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.private_key),
            # Host keys are made on each first boot of an overlay: nothing to pin. OpenSSH reads the
            # options; Mitogen's connection (ansible.cfg's strategy) reads the variable.
            "ansible_ssh_common_args": SSH_ARGS,
            "ansible_ssh_host_key_checking": False,
            "pibake_profile": self.profile,
            "pibake_cpu": self.cpu,
        }


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return data if isinstance(data, dict) else {}


def _hosts(data: dict[str, Any]) -> dict[str, Any]:
    group = data.setdefault(GROUP, {}) or {}
    data[GROUP] = group
    hosts = group.setdefault("hosts", {}) or {}
    group["hosts"] = hosts
    return hosts


def render(data: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(data, sort_keys=True, default_flow_style=False)


def add_host(path: Path, host: Host) -> None:
    """Add or replace HOST in the inventory at PATH (other guests' entries are kept)."""
    data = _load(path)
    _hosts(data)[host.name] = host.variables()
    _write(path, render(data))


def remove_host(path: Path, name: str) -> None:
    data = _load(path)
    hosts = _hosts(data)
    if name not in hosts:
        return
    del hosts[name]
    if hosts:
        _write(path, render(data))
    else:
        path.unlink()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
