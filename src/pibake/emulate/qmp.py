"""A QEMU Machine Protocol client: one command at a time over qemu's -qmp UNIX socket.

QMP is JSON lines (QEMU's docs/interop/qmp-spec.rst): a greeting, `qmp_capabilities`, then
commands answered by {"return": ...} or {"error": {"class", "desc"}}, with asynchronous
{"event": ...} messages in between, which this client skips.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from pibake.errors import PibakeError


class QMPError(PibakeError):
    """QEMU answered a command with an error (its class and description are in the message)."""


class QMP:
    """A connected QMP session; use as a context manager.

    Raises OSError when the socket cannot be reached or times out (TIMEOUT seconds per read).
    """

    def __init__(self, sock_path: Path, *, timeout: float = 10) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(sock_path))
        except OSError:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise OSError("qemu closed its QMP socket")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run COMMAND with ARGUMENTS and return its "return" value; raises QMPError on an error answer."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._file.write(json.dumps(request).encode() + b"\n")
        self._file.flush()
        while True:
            msg = self._read()
            if "event" in msg:
                continue
            if "error" in msg:
                err = msg["error"]
                raise QMPError(f"qemu refused {command}: {err.get('desc', err)} ({err.get('class', '?')})")
            return msg.get("return")
