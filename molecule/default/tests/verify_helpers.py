"""Shared by the verify tests (imported by name: pytest puts this directory on sys.path)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

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
