from __future__ import annotations

from pathlib import Path

import yaml

from pibake.emulate import inventory


def _host(name: str, port: int) -> inventory.Host:
    return inventory.Host(name, port, "pi", Path("/keys/id_ed25519"), "virt", "cortex-a15")


def test_inventory_puts_the_guest_in_the_raspberry_pi_group(tmp_path: Path) -> None:
    path = tmp_path / "qemu" / "hosts.yml"
    inventory.add_host(path, _host("pibake", 40022))
    text = path.read_text()
    assert text.startswith("# Written by `pibake emulate start`")
    data = yaml.safe_load(text)
    host = data["raspberry_pi"]["hosts"]["pibake"]
    assert host["ansible_host"] == "127.0.0.1"
    assert host["ansible_port"] == 40022
    assert host["ansible_user"] == "pi"
    assert host["ansible_ssh_private_key_file"] == "/keys/id_ed25519"
    assert "StrictHostKeyChecking=no" in host["ansible_ssh_common_args"]


def test_hosts_are_added_replaced_and_removed_without_touching_others(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    inventory.add_host(path, _host("a", 1))
    inventory.add_host(path, _host("b", 2))
    inventory.add_host(path, _host("a", 3))
    hosts = yaml.safe_load(path.read_text())["raspberry_pi"]["hosts"]
    assert (hosts["a"]["ansible_port"], hosts["b"]["ansible_port"]) == (3, 2)
    inventory.remove_host(path, "a")
    assert list(yaml.safe_load(path.read_text())["raspberry_pi"]["hosts"]) == ["b"]
    inventory.remove_host(path, "missing")
    inventory.remove_host(path, "b")
    assert not path.exists()
