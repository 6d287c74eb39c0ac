"""The inference service (target/pibake_target) started on the host as a real process, for the tests.

with serve(tmp_path, "--timeout", "10") as server:
    server.client.predict(...)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pibake.emulate.ssh import free_port as free_port  # re-exported for the tests
from pibake.util import proc
from tests.serve_client import MODELS, REPO, ServeClient, find_model

TARGET = REPO / "target"
PACKAGE = TARGET / "pibake_target"
LABELS = MODELS / "labels.txt"


def target_env() -> dict[str, str]:
    """This environment with target/ first on PYTHONPATH: `python -m pibake_target` as the Pi runs it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TARGET), env.get("PYTHONPATH", "")) if p)
    return env


def target_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pibake_target", *args]


@dataclass
class Server:
    client: ServeClient
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(tmp: Path, *args: str, model: Path | None = None, name: str = "car") -> Iterator[Server]:
    """`python -m pibake_target serve` in a subprocess on a free loopback port, stopped (SIGTERM) afterwards."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    argv = target_command("serve", "--model", str(model or find_model()), "--labels", str(LABELS))
    argv += ["--name", name, "--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("wb") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=target_env())
    server = Server(ServeClient(f"http://127.0.0.1:{port}", timeout=30), process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the server exited with {process.returncode}:\n{server.log_text()}"
            try:
                if server.client.request("GET", "/").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the server did not answer within 60 s:\n{server.log_text()}"
            time.sleep(0.1)
        yield server
    finally:
        proc.stop(process)
