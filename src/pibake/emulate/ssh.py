"""SSH to a guest: the banner wait, paramiko connections with the harness key, one-off commands."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

if TYPE_CHECKING:
    from pibake.emulate.guest import Guest

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh_banner(port: int, timeout: float = 5.0) -> bool:
    """True once the guest's sshd greets. QEMU's user network accepts on the host side
    before the guest listens, so a successful connect alone proves nothing."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class _AcceptHostKey(paramiko.MissingHostKeyPolicy):
    """Guests make new host keys on each first boot and listen on loopback only."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


def connect(port: int, user: str, key: Path, timeout: float = 30) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_AcceptHostKey())
    client.connect(
        "127.0.0.1",
        port=port,
        username=user,
        key_filename=str(key),
        look_for_keys=False,
        allow_agent=False,
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
    )
    return client


def ssh_run(guest: Guest, command: str, *, timeout: float = 120) -> tuple[int, str]:
    """Run COMMAND on the guest over paramiko; return (exit status, stdout+stderr)."""
    client = connect(guest.ssh_port, guest.user, Path(guest.private_key))
    try:
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace") + stderr.read().decode(errors="replace")
        return stdout.channel.recv_exit_status(), out
    finally:
        client.close()
