"""SSH to a guest: the banner wait, paramiko connections with the harness key, one-off commands."""

from __future__ import annotations

import logging
import selectors
import socket
import time
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


class BannerProbe:
    """Watches for a guest's sshd greeting through QEMU's user network, with overlapping connections.

    QEMU's user network accepts on the host side at once and only then connects to the guest: while the guest has
    no address yet, a connection just hangs; once it has one but sshd is not listening, it is closed at once. One
    connection at a time with a timeout makes a greeting wait for the timeout to run out (measured on virt: sshd
    listened 11.5 s before a 5 s probe loop saw it, DHCP's retry included). So a new connection is opened every
    INTERVAL seconds and each is given up to PATIENCE seconds to greet: the greeting is seen within about INTERVAL
    of being sent, however slowly a busy guest sends it.
    """

    INTERVAL = 0.5
    PATIENCE = 10.0

    def __init__(self, port: int) -> None:
        self.port = port
        self._open: dict[socket.socket, float] = {}
        self._selector = selectors.DefaultSelector()
        self._next = 0.0

    def poll(self, wait: float) -> bool:
        """True once sshd has greeted on one of the connections; else False after WAIT seconds."""
        end = time.monotonic() + wait
        while True:
            now = time.monotonic()
            if now >= self._next:
                self._connect()
                self._next = now + self.INTERVAL
            for sock, opened in list(self._open.items()):
                if now - opened > self.PATIENCE:
                    self._drop(sock)
            left = min(end, self._next) - now
            for key, _ in self._selector.select(timeout=max(0.0, left)) if self._open else ():
                sock = key.data
                try:
                    data = sock.recv(64)
                except OSError:
                    data = b""
                if data.startswith(b"SSH-"):
                    self.close()
                    return True
                self._drop(sock)  # closed (no sshd yet) or not an SSH server
            if not self._open:
                time.sleep(max(0.0, min(end, self._next) - time.monotonic()))
            if time.monotonic() >= end:
                return False

    def _connect(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
        except OSError:
            return
        sock.setblocking(False)
        self._open[sock] = time.monotonic()
        self._selector.register(sock, selectors.EVENT_READ, data=sock)

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._open[sock]
        sock.close()

    def close(self) -> None:
        for sock in list(self._open):
            self._drop(sock)

    def __enter__(self) -> BannerProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._selector.close()


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
