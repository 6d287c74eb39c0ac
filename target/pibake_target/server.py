"""The service: uvicorn serving the ASGI app on one asyncio event loop, and systemd told when it is ready.

uvicorn (Debian's python3-uvicorn: 0.13 on bullseye, 0.17 on bookworm, 0.32 on trixie) with its
pure-Python h11 parser and the standard asyncio loop on every release, so the behaviour does not depend
on which optional accelerators a release happens to install. A connection is a socket and a parser
on the event loop (epoll): idle and slow clients cost a few kilobytes each and never hold a thread.

uvicorn cuts idle kept-alive connections (timeout_keep_alive), but not a connection that never
completes its first request. DeadlineH11Protocol adds that: a connection must deliver a whole request
header within the request timeout of opening (or of its previous answer), or it gets 408 and is closed.
On uvicorn releases that close on a request h11 cannot parse (bullseye's 0.13), it answers
400 first, as later releases do. It also answers a client that sends a whole request and then
shuts down its sending side (uvicorn alone takes that for a disconnect and drops the answer). It
uses only what the three releases'
H11Protocol share: connection_made, eof_received, on_response_complete, connection_lost, `conn`,
`cycle` (response_complete, more_body) and `transport`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

_TIMEOUT_BODY = b'{"error": "the request took too long"}'
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


_BAD_REQUEST_BODY = b'{"error": "malformed HTTP request"}'
BAD_REQUEST_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_BAD_REQUEST_BODY)).encode() + b"\r\n\r\n" + _BAD_REQUEST_BODY
)
# uvicorn answers a request h11 cannot parse with 400 since it has send_400_response; bullseye's 0.13.3
# closes the connection without a word (measured: 38 of 300 malformed requests got no answer).
ANSWERS_PROTOCOL_ERRORS = hasattr(H11Protocol, "send_400_response")


def deadline_protocol(request_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    class DeadlineH11Protocol(H11Protocol):
        _pibake_timer: asyncio.TimerHandle | None = None
        _pibake_half_closed = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if not ANSWERS_PROTOCOL_ERRORS:
                self._pibake_answer_protocol_errors()
            self._pibake_arm()

        def _pibake_answer_protocol_errors(self) -> None:
            """Answer 400 before an older uvicorn closes on a request h11 cannot parse."""
            next_event = self.conn.next_event

            def next_event_or_400() -> Any:
                try:
                    return next_event()
                except h11.RemoteProtocolError:
                    if not self.transport.is_closing():
                        self.transport.write(BAD_REQUEST_RESPONSE)
                    raise

            self.conn.next_event = next_event_or_400  # type: ignore[method-assign]

        def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio's signature
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and not cycle.more_body:
                # The client sent a whole request and then shut its side down (as `nc -N` does): keep the
                # connection to answer, then close it. uvicorn alone takes the EOF for a disconnect.
                self._pibake_half_closed = True
                return True
            result: bool | None = super().eof_received()
            return result

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self._pibake_half_closed:
                self.transport.close()
                return
            self._pibake_arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._pibake_cancel()
            super().connection_lost(exc)

        def _pibake_arm(self) -> None:
            self._pibake_cancel()
            self._pibake_timer = asyncio.get_event_loop().call_later(request_timeout, self._pibake_expire)

        def _pibake_cancel(self) -> None:
            if self._pibake_timer is not None:
                self._pibake_timer.cancel()
                self._pibake_timer = None

        def _pibake_expire(self) -> None:
            self._pibake_timer = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # The headers came: the app holds the body to its own deadline, and the answer re-arms this.
                return
            if self.transport.is_closing():
                return
            # Part of a request arrived (h11 holds it unparsed): answer 408; an idle connection just closes.
            if self.conn.trailing_data[0]:
                self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    return DeadlineH11Protocol


def listen(host: str, port: int, *, backlog: int) -> socket.socket:
    """The listening socket (IPv6 when the address has a colon); OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP by name: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose proto says TCP,
    # and accepted sockets inherit it. With Nagle on, an answer's body waits for the client to acknowledge its
    # headers, which a kept-alive client delays by 40 ms: every request but a connection's first took 40 ms more.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: tell systemd (Type=notify) the service's state."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)


def make_server(app: Any, *, request_timeout: float, max_connections: int, backlog: int = 1024) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        http=deadline_protocol(request_timeout),
        ws="none",
        loop="asyncio",
        lifespan="off",
        interface="asgi3",
        # The service's own logging (stderr -> journald); one line a request comes from the app.
        log_config=None,
        access_log=False,
        # More connections than this, or as many requests in progress: 503 at once.
        limit_concurrency=max_connections,
        # Whole seconds (uvicorn's type); DeadlineH11Protocol holds idle connections to the exact timeout anyway.
        timeout_keep_alive=max(1, math.ceil(request_timeout)),
        backlog=backlog,
    )
    return uvicorn.Server(config)


async def serve(server: uvicorn.Server, sock: socket.socket, *, ready_status: str) -> None:
    """Serve on SOCK until SIGTERM or SIGINT (uvicorn's handlers); READY=1 to systemd once it listens."""
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        notify_systemd("READY=1\nSTATUS=" + ready_status)
    try:
        await task
    finally:
        notify_systemd("STOPPING=1")
