"""One helper to run external tools: logs the command, captures output, raises CommandFailed or ToolMissing."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pibake.errors import CommandFailed, PibakeError, ToolMissing

log = logging.getLogger(__name__)

TAIL_LINES = 25


def last_json_object(out: str) -> dict[str, Any] | None:
    """The JSON object a child printed as its answer: the last line of OUT that parses as one (a child may chatter
    before and after it, e.g. LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."); None if none."""
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict):
                return answer
    return None


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stream: bool = False,
    on_line: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> str:
    """Run ARGV and return its stdout (stderr merged when streaming).

    With ``stream=True`` every output line is handed to ON_LINE as it arrives (by default
    logged at INFO), so long steps (debootstrap) show progress: a ``progress.step``'s
    ``output`` puts it on the step's row on a terminal. A non-zero exit raises CommandFailed quoting
    the tail of the output (the whole output is in its ``output``); a program that is not
    installed raises ToolMissing; a timeout raises PibakeError.
    """
    args = [os.fspath(a) for a in argv]
    cmd = shlex.join(args)
    log.debug("run: %s", cmd)
    full_env = {**os.environ, **env} if env else None
    if stream:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        lines: list[str] = []
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=full_env,
                cwd=cwd,
            )
        except FileNotFoundError as e:
            raise ToolMissing(f"{args[0]} is not installed (run `make deps`): {e}") from e
        with proc as p:
            if input_text is not None and p.stdin:
                p.stdin.write(input_text)
                p.stdin.close()
            assert p.stdout is not None
            for line in p.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                lines.append(line)
                if on_line is None:
                    log.info("  %s", line)
                else:
                    on_line(line)
            rc = p.wait(timeout=timeout)
        if rc != 0:
            raise CommandFailed(
                f"{args[0]} failed (exit {rc}): {cmd}\n" + "\n".join(tail),
                argv=args,
                returncode=rc,
                output="\n".join(lines),
            )
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
        raise ToolMissing(f"{args[0]} is not installed (run `make deps`): {e}") from e
    except subprocess.TimeoutExpired as e:
        raise PibakeError(f"{args[0]} timed out after {timeout} s: {cmd}") from e
    if res.returncode != 0:
        output = res.stdout + res.stderr
        tail_lines = output.strip().splitlines()[-TAIL_LINES:]
        raise CommandFailed(
            f"{args[0]} failed (exit {res.returncode}): {cmd}\n" + "\n".join(tail_lines),
            argv=args,
            returncode=res.returncode,
            output=output,
        )
    return res.stdout


def stop(process: subprocess.Popen[bytes], *, grace: float = 15) -> None:
    """End a long-running PROCESS of ours: SIGTERM, then SIGKILL after GRACE seconds; reaped either way."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
