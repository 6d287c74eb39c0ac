"""One helper to run external tools: logs the command, captures output, raises PibakeError."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from pibake.errors import PibakeError

log = logging.getLogger(__name__)

TAIL_LINES = 25


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stream: bool = False,
    timeout: float | None = None,
) -> str:
    """Run ARGV and return its stdout (stderr merged when streaming).

    With ``stream=True`` every output line is logged at INFO as it arrives, so long
    steps (debootstrap) show progress. A non-zero exit raises PibakeError quoting
    the tail of the output.
    """
    args = [os.fspath(a) for a in argv]
    cmd = shlex.join(args)
    log.debug("run: %s", cmd)
    full_env = {**os.environ, **env} if env else None
    if stream:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        lines: list[str] = []
        with subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=full_env,
            cwd=cwd,
        ) as p:
            if input_text is not None and p.stdin:
                p.stdin.write(input_text)
                p.stdin.close()
            assert p.stdout is not None
            for line in p.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                lines.append(line)
                log.info("  %s", line)
            rc = p.wait(timeout=timeout)
        if rc != 0:
            raise PibakeError(f"{args[0]} failed (exit {rc}): {cmd}\n" + "\n".join(tail))
        return "\n".join(lines)
    try:
        res = subprocess.run(
            args,
            input=input_text,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise PibakeError(f"{args[0]} is not installed (run `make deps`): {e}") from e
    except subprocess.TimeoutExpired as e:
        raise PibakeError(f"{args[0]} timed out after {timeout} s: {cmd}") from e
    if res.returncode != 0:
        out = (res.stdout + res.stderr).strip().splitlines()
        raise PibakeError(f"{args[0]} failed (exit {res.returncode}): {cmd}\n" + "\n".join(out[-TAIL_LINES:]))
    return res.stdout
