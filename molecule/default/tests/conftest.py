"""Fixtures of the verify tests: the guest behind testinfra's host, and where its service answers."""

from __future__ import annotations

from typing import Any

import pytest
from verify_helpers import SERVICE_PORT

from pibake.emulate import guest as emulator


@pytest.fixture(scope="module")
def guest(host: Any) -> emulator.Guest:
    """The emulated Pi testinfra talks to (the instance name is the guest name)."""
    name = host.ansible.get_variables()["inventory_hostname"]
    st = emulator.status(name)
    assert st.running and st.guest, f"guest {name} is not running: {st.describe()}"
    return st.guest


@pytest.fixture(scope="module")
def service_url(guest: emulator.Guest) -> str:
    """The inference service from this machine, through the port the harness forwards to the guest's 8000."""
    return f"http://127.0.0.1:{guest.host_port(SERVICE_PORT)}"
