#!/usr/bin/env python3
"""Where `make test`'s time went: run a step and record its seconds, then print the table.

    test_times.py run STEP -- COMMAND...   run COMMAND (output passed through), append STEP's seconds;
                                           Molecule's own steps (create, converge, ...) are read from its
                                           output and recorded as STEP/create, STEP/converge, ...
    test_times.py begin STEP               note that STEP starts now (for a step make runs itself, such as a
    test_times.py end STEP                 sub-make: `make -n` runs a sub-make line, so it cannot be wrapped)
                                           and, at its end, append STEP's seconds since `begin`
    test_times.py start STEP LOG -- COMMAND...
                                           start COMMAND in the background, its output to LOG, and go on;
    test_times.py wait STEP                wait for it: its seconds are recorded as a step beside the others
                                           (left out of the total; the wait itself is counted), and its exit
                                           status is passed on, with LOG's end printed when it failed; a `run`
                                           inside COMMAND records its step (and Molecule's) as beside the
                                           others too
    test_times.py report                   print the table of everything recorded since `reset`
    test_times.py reset                    forget what was recorded

The record is a TSV file (step, seconds), $PIBAKE_TEST_TIMES or build/test-times.tsv; pytest's
per-file times are appended to it by tests/conftest.py when that variable is set. When a step
fails, the table so far is printed before its exit status is passed on. Standard library only:
it runs before the venv exists.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_RECORD = Path("build/test-times.tsv")
# Molecule announces each step as "SCENARIO ➜ STEP: Executing" (older releases: "[SCENARIO > STEP]
# Executing") and ends it with "Executed: ..."; colour codes are dropped before matching.
MOLECULE_STEP = re.compile(
    r"(?:\[(?P<s1>[\w.-]+) > (?P<step1>[\w-]+)\]|(?P<s2>[\w.-]+) ➜ (?P<step2>[\w-]+):) (?P<what>Executing|Executed)"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def record_path() -> Path:
    return Path(os.environ.get("PIBAKE_TEST_TIMES") or DEFAULT_RECORD)


def append(step: str, seconds: float) -> None:
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"{step}\t{seconds:.1f}\n")


def read() -> list[tuple[str, float]]:
    path = record_path()
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        step, _, seconds = line.partition("\t")
        rows.append((step, float(seconds)))
    return rows


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


BESIDE = " (beside the steps above)"
# Set by `_background` for its command, so that a `run` inside it is tabled as beside the others.
BESIDE_ENV = "PIBAKE_TEST_BESIDE"


def report() -> str:
    """The table: top-level steps with their share of the total, their sub-steps indented below them. A step that
    ran in the background (`start`) is shown, and left out of the total: its time was spent beside the others."""
    rows = read()
    if not rows:
        return "test times: nothing recorded"
    top = [(s, t) for s, t in rows if "/" not in s]
    total = sum(t for s, t in top if not s.endswith(BESIDE))
    lines = ["", "Where make test's time went:", f"  {'step':<58} {'time':>12} {'share':>6}"]
    for step, seconds in top:
        share = f"{seconds / total:.0%}" if total > 0 and not step.endswith(BESIDE) else "-"
        lines.append(f"  {step:<58} {format_seconds(seconds):>12} {share:>6}")
        subs = sorted(((s, t) for s, t in rows if s.startswith(step + "/")), key=lambda r: -r[1])
        for sub, sub_seconds in subs:
            lines.append(f"    {sub[len(step) + 1 :]:<56} {format_seconds(sub_seconds):>12}")
    lines.append(f"  {'total':<58} {format_seconds(total):>12}")
    return "\n".join(lines)


def run(step: str, argv: list[str]) -> int:
    if os.environ.get(BESIDE_ENV):  # inside a background step (`start`): its time is spent beside the others
        step += BESIDE
    # PIBAKE_TEST_STEP: the step pytest's per-file rows go under (tests/conftest.py).
    env = {**os.environ, "PIBAKE_TEST_TIMES": str(record_path().resolve()), "PIBAKE_TEST_STEP": step}
    t0 = time.monotonic()
    started: dict[str, float] = {}
    pending = b""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        assert proc.stdout is not None
        # Passed through as it comes, not line by line: pytest's progress dots have no newline.
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                match = MOLECULE_STEP.search(ANSI.sub("", line.decode(errors="replace")))
                name = match and (match["step1"] or match["step2"])
                if match and name and match["what"] == "Executing":
                    started[name] = time.monotonic()
                elif match and name in started:
                    append(f"{step}/{name}", time.monotonic() - started.pop(name))
    append(step, time.monotonic() - t0)
    if proc.returncode != 0:
        print(report())
    return proc.returncode


def _side_file(step: str, what: str) -> Path:
    """Beside the record: STEP's WHAT (begin, status, log), for a step whose end another process records."""
    return record_path().with_name(f"{record_path().name}.{step}.{what}")


def start(step: str, log: str, argv: list[str]) -> int:
    """Run ARGV in the background through `_background`, which writes its exit status where `wait` looks."""
    status = _side_file(step, "status")
    status.parent.mkdir(parents=True, exist_ok=True)
    status.unlink(missing_ok=True)
    _side_file(step, "log").write_text(str(Path(log).resolve()) + "\n")
    print(f"{step}: started in the background (output: {log})", flush=True)
    subprocess.Popen(
        [sys.executable, __file__, "_background", step, log, "--", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return 0


def background(step: str, log: str, argv: list[str]) -> int:
    env = {**os.environ, "PIBAKE_TEST_TIMES": str(record_path().resolve()), BESIDE_ENV: "1"}
    t0 = time.monotonic()
    with Path(log).open("wb") as out:
        try:
            code = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            ).returncode
        except OSError as e:
            out.write(f"{argv[0]}: {e}\n".encode())
            code = 127
    append(step + BESIDE, time.monotonic() - t0)
    tmp = _side_file(step, "status.part")
    tmp.write_text(f"{code}\n")
    tmp.replace(_side_file(step, "status"))
    return code


WAIT_TAIL_LINES = 3000


def wait(step: str, poll: float = 5.0) -> int:
    """Wait for STEP's background command (`start`) to end; its exit status, its log's end printed if not 0."""
    status = _side_file(step, "status")
    log_note = _side_file(step, "log")
    if not log_note.exists():
        print(f"{step}: was never started (test_times.py start)", file=sys.stderr)
        return 2
    log = Path(log_note.read_text().strip())
    if not status.exists():
        print(f"{step}: waiting for it to end (output: {log})", flush=True)
    t0 = time.monotonic()
    while not status.exists():
        time.sleep(poll)
    # Time the steps above spent waiting for it: counted, so that the total is make test's own time.
    append(f"waiting for {step}", time.monotonic() - t0)
    code = int(status.read_text())
    status.unlink()
    log_note.unlink()
    if code != 0:
        # make test's background job is a build, a Molecule scenario and a pytest run: enough for all of them.
        tail = log.read_text(errors="replace").splitlines()[-WAIT_TAIL_LINES:] if log.exists() else []
        print("\n".join([f"{step} failed (exit {code}); the end of {log}:", *tail]), file=sys.stderr)
        print(report())
    else:
        print(f"{step}: done", flush=True)
    return code


def begin(step: str) -> None:
    path = _side_file(step, "begin")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{time.time():.1f}\n")  # wall clock: `end` runs in another process


def end(step: str) -> None:
    path = _side_file(step, "begin")
    append(step, time.time() - float(path.read_text()))
    path.unlink()


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] in ("begin", "end"):
        (begin if argv[0] == "begin" else end)(argv[1])
        return 0
    if len(argv) >= 5 and argv[0] in ("start", "_background") and argv[3] == "--":
        return (start if argv[0] == "start" else background)(argv[1], argv[2], argv[4:])
    if len(argv) == 2 and argv[0] == "wait":
        return wait(argv[1])
    if argv[:1] == ["report"]:
        print(report())
        return 0
    if argv[:1] == ["reset"]:
        record_path().unlink(missing_ok=True)
        return 0
    if len(argv) >= 4 and argv[0] == "run" and argv[2] == "--":
        return run(argv[1], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
