"""Shared by the verify tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pibake import bake, resources, wheels

REPO = Path(__file__).resolve().parents[3]
SERVICE_PORT = 8000


def _serve_client() -> ModuleType:
    """tests/serve_client.py, the checks tests/unit/test_serve.py runs against the server on the host."""
    spec = importlib.util.spec_from_file_location("pibake_serve_client", REPO / "tests" / "serve_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


serve_client = _serve_client()


def rebooted() -> bool:
    """True in the verify run after side_effect's reboot (side_effect.yml leaves this mark)."""
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    return bool(ephemeral) and (Path(ephemeral) / "pibake-rebooted").exists()


# For checks whose subject a reboot cannot change (files, the model's answers, how the service handles load):
# the verify run before side_effect's reboot made them; the one after checks what the reboot is about.
before_reboot_only = pytest.mark.skipif(
    rebooted(), reason="a reboot does not change what this checks: the verify before the reboot ran it"
)


@dataclass(frozen=True)
class GuestRuntime:
    """The runtime python_runtime installed on the guest, as the scenario's inventory asks for it: its distribution
    name and version, the module the Pi-side package imports, the Python that runs it, and every wheel the role
    copied to the guest with the SHA-256 it must have there."""

    distribution: str
    version: str
    module: str
    python: str
    # (path on the guest, the SHA-256 digests (hex) the wheel may have)
    wheels: tuple[tuple[str, tuple[str, ...]], ...]


def role_defaults(role: str) -> dict[str, Any]:
    """roles/ROLE/defaults/main.yml of this checkout."""
    data = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    assert isinstance(data, dict)
    return data


def guest_runtime(variables: dict[str, Any]) -> GuestRuntime:
    """The runtime for a host with inventory VARIABLES: the lock named by python_runtime_lock (pibake.bake's
    LOCKED_RUNTIMES says whose lock it is; its wheels go into the venv), else the role's single pinned wheel in
    the system Python (the legacy bullseye base)."""
    defaults = role_defaults("python_runtime")
    wheel_dir = str(variables.get("python_runtime_target_wheel_dir", defaults["python_runtime_target_wheel_dir"]))
    lock_name = str(variables.get("python_runtime_lock") or "")
    if not lock_name:
        version = str(defaults["python_runtime_version"])
        tag = defaults["python_runtime_python_tag"]
        wheel = f"tflite_runtime-{version}-{tag}-{tag}-{defaults['python_runtime_platform_tag']}.whl"
        return GuestRuntime(
            distribution=bake.RUNTIME,
            version=version,
            module="tflite_runtime",
            python=str(defaults["python_runtime_python"]),
            wheels=((f"{wheel_dir}/{wheel}", (str(defaults["python_runtime_wheel_sha256"]),)),),
        )
    owners = [name for locks in bake.LOCKED_RUNTIMES.values() for name, lock in locks.items() if lock == lock_name]
    assert owners, f"python_runtime_lock {lock_name!r} is none of pibake's locks (pibake.bake.LOCKED_RUNTIMES)"
    lock = wheels.read_lock(resources.LOCK_DIR / lock_name)
    pins = {pin.key: pin for pin in lock.pins}
    root = pins[wheels.normalize(owners[0])]
    venv = str(variables.get("python_runtime_venv", defaults["python_runtime_venv"]))
    return GuestRuntime(
        distribution=root.name,
        version=root.version,
        module=root.key.replace("-", "_"),
        python=f"{venv}/bin/python",
        wheels=tuple((f"{wheel_dir}/{pin.filename}", pin.hashes) for pin in lock.pins),
    )
