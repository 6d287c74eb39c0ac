"""BannerProbe against local servers that behave like QEMU's user network in each phase of a guest's boot."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pibake.emulate.ssh import BannerProbe


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket, float], None]], int]]:
    """Start a loopback server whose connections HANDLER(conn, seconds since the server started) serves."""
    listeners: list[socket.socket] = []

    def start(handler: Callable[[socket.socket, float], None]) -> int:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(64)
        listeners.append(lsock)
        t0 = time.monotonic()

        def accept() -> None:
            while True:
                try:
                    conn, _ = lsock.accept()
                except OSError:
                    return
                threading.Thread(target=handler, args=(conn, time.monotonic() - t0), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return int(lsock.getsockname()[1])

    yield start
    for lsock in listeners:
        lsock.close()


def test_a_greeting_after_silent_connections_is_seen_within_about_an_interval(server) -> None:  # type: ignore[no-untyped-def]
    # Connections made in the first 2 s hang without a word (the guest has no address yet); the ones after are
    # greeted at once.
    def handler(conn: socket.socket, at: float) -> None:
        with conn:
            if at < 2.0:
                time.sleep(15)
            else:
                conn.sendall(b"SSH-2.0-OpenSSH_8.4\r\n")
                time.sleep(1)

    port = server(handler)
    started = time.monotonic()
    with BannerProbe(port) as probe:
        seen = False
        while not seen and time.monotonic() - started < 20:
            seen = probe.poll(wait=1.0)
    assert seen
    # A one-connection probe with a 5 s timeout would have seen it only after about 5 s.
    assert time.monotonic() - started < 2.0 + 2 * BannerProbe.INTERVAL + 1.0


def test_a_slow_greeting_is_still_seen(server) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, at: float) -> None:
        with conn:
            time.sleep(3)  # a busy guest's sshd takes its time on every connection
            conn.sendall(b"SSH-2.0-OpenSSH_8.4\r\n")
            time.sleep(1)

    port = server(handler)
    with BannerProbe(port) as probe:
        assert any(probe.poll(wait=1.0) for _ in range(10))


def test_closed_connections_and_other_servers_are_not_sshd(server) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, at: float) -> None:
        with conn:
            if int(at * 10) % 2:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    port = server(handler)
    with BannerProbe(port) as probe:
        assert not probe.poll(wait=2.0)
        assert len(probe._open) <= BannerProbe.PATIENCE / BannerProbe.INTERVAL + 1


def test_nothing_listening_is_not_sshd() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])  # bound, not listening: connections are refused
        with BannerProbe(port) as probe:
            assert not probe.poll(wait=1.5)
