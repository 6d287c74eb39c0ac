"""util/progress.py: long steps and byte transfers as live rows on a terminal, as plain log lines elsewhere.

The terminal is a rich Console forced to be one, writing into a StringIO; the clock the rows count is the test's.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from pibake.emulate.guest import serial_last_line
from pibake.provision import AnsibleOutput
from pibake.util import progress
from pibake.util.proc import run
from pibake.util.progress import Meter, Progress

MIB = 1 << 20
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

log = logging.getLogger("pibake.test_progress")


class Clock:
    """The time the rows count, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal:
    """A forced terminal, 120 columns, and what was drawn on it (without its control codes)."""

    def __init__(self) -> None:
        self.file = io.StringIO()
        self.console = Console(file=self.file, force_terminal=True, width=120, color_system="standard")
        self.clock = Clock()

    def drawn(self) -> str:
        progress.refresh()
        return ANSI.sub("", self.file.getvalue())


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal()
    with progress.live(term.console, clock=term.clock):
        yield term


def _info(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


# --- a step on a terminal --------------------------------------------------------------------------


def test_on_a_terminal_a_step_is_a_row_with_its_elapsed_time_and_latest_line(
    terminal: Terminal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pibake")
    with progress.step("rootfs 0123abcd: debootstrap bookworm armhf", logger=log) as status:
        assert status.live
        status.output("I: Retrieving InRelease")
        terminal.clock.now += 75
        status.output("I: Retrieving libc6 2.36-9+deb12u10")
        status.output("")  # a blank line leaves the row as it was
        row = next(line for line in terminal.drawn().splitlines()[::-1] if "rootfs 0123abcd" in line)
    assert "0:01:15" in row
    assert row.rstrip().endswith("I: Retrieving libc6 2.36-9+deb12u10")
    # On the row, not in the log at INFO: the log has it at DEBUG (-v) only.
    assert not any("Retrieving" in m for m in _info(caplog))
    assert any("Retrieving libc6" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_on_a_terminal_warnings_and_errors_stay_in_the_log(
    terminal: Terminal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    with progress.step("rootfs", logger=log) as status:
        status.output("I: Extracting libc6...")
        status.output("W: Failure trying to run: chroot /root mount -t proc proc /proc")
        status.output("E: Couldn't find these debs: python3-nope")
        status.output("[WARNING]: Platform linux on host pi is using the discovered Python interpreter")
    assert _info(caplog) == [
        "  W: Failure trying to run: chroot /root mount -t proc proc /proc",
        "  E: Couldn't find these debs: python3-nope",
        "  [WARNING]: Platform linux on host pi is using the discovered Python interpreter",
    ]


def test_steps_nest_and_the_rows_go_when_they_end(terminal: Terminal) -> None:
    with progress.step("provision", logger=log):
        terminal.clock.now += 3
        with progress.step("ansible-playbook site.yml", logger=log) as inner:
            inner.show("PLAY [Provision the Pi]")
            drawn = terminal.drawn().splitlines()
    outer = next(i for i, line in enumerate(drawn) if "provision" in line and "0:00:03" in line)
    assert re.match(r"\S {3}ansible-playbook site\.yml", drawn[outer + 1])  # under its outer, indented
    assert progress._board is not None and progress._board.users == 0  # nothing left drawn


def test_a_command_s_lines_reach_its_step_and_stay_its_output(
    terminal: Terminal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    with progress.step("rootfs", logger=log) as status:
        out = run(["sh", "-c", "echo 'I: Validating'; echo 'W: no checksum'; echo 'I: Base system installed'"],
                  stream=True, on_line=status.output)  # fmt: skip
        assert "I: Base system installed" in terminal.drawn()
    assert out == "I: Validating\nW: no checksum\nI: Base system installed"
    assert _info(caplog) == ["  W: no checksum"]


ANSIBLE_RUN = """\
PLAY [Provision the Pi] ********************************************************

TASK [Gathering Facts] *********************************************************
ok: [pi]

TASK [pibake.raspberry.model : Copy the model] *********************************
changed: [pi]

RUNNING HANDLER [pibake.raspberry.inference_service : Restart the service] *****
changed: [pi]

PLAY RECAP *********************************************************************
pi                         : ok=3    changed=2    unreachable=0    failed=0    skipped=0
"""


def test_on_a_terminal_each_ansible_task_is_the_row_then_one_line_with_its_result_and_time(
    terminal: Terminal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    seen: list[str] = []
    with progress.step("ansible-playbook site.yml", logger=log) as status:
        ansible = AnsibleOutput(status)
        for line in ANSIBLE_RUN.splitlines():
            ansible(line)
            if line.startswith("TASK [pibake.raspberry.model"):
                terminal.clock.now += 4
                seen = [ln for ln in terminal.drawn().splitlines() if "Copy the model" in ln]
            elif line.startswith("RUNNING HANDLER"):
                terminal.clock.now += 2
    # The row: the step, its time, then the task's own time and its name.
    assert seen and re.search(r"ansible-playbook site\.yml +0:00:04 +0:00:04 TASK \[pibake\.raspberry\.model", seen[-1])
    assert _info(caplog) == [
        "  PLAY [Provision the Pi] ********************************************************",
        "  TASK [Gathering Facts]: ok, 0:00:00",
        "  TASK [pibake.raspberry.model : Copy the model]: changed, 0:00:04",
        "  RUNNING HANDLER [pibake.raspberry.inference_service : Restart the service]: changed, 0:00:02",
        "  PLAY RECAP *********************************************************************",
        "  pi                         : ok=3    changed=2    unreachable=0    failed=0    skipped=0",
    ]


def test_on_a_terminal_a_failed_task_keeps_its_message(terminal: Terminal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    lines = [
        "TASK [pibake.raspberry.python_runtime : Install the runtime] *******************",
        "fatal: [pi]: FAILED! => changed=false",
        "  msg: No package matching 'python3-nope' is available",
        "",
        "PLAY RECAP *********************************************************************",
    ]
    with progress.step("ansible-playbook site.yml", logger=log) as status:
        ansible = AnsibleOutput(status)
        for line in lines:
            ansible(line)
    assert _info(caplog)[:3] == [
        "  fatal: [pi]: FAILED! => changed=false",
        "    msg: No package matching 'python3-nope' is available",
        "  TASK [pibake.raspberry.python_runtime : Install the runtime]: failed, 0:00:00",
    ]


# --- the same steps elsewhere ----------------------------------------------------------------------


def test_elsewhere_a_step_is_the_plain_log_lines_it_always_was(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    assert progress._board is None  # no terminal: what the CLI has when stderr is not one (CI)
    with progress.step("ansible-playbook site.yml", logger=log) as status:
        assert not status.live
        ansible = AnsibleOutput(status)
        for line in ANSIBLE_RUN.splitlines():
            ansible(line)
        status.show("not for the log")
        status.tick("waiting for SSH on port %d (%.0f s)", 40123, 45.0)
    assert _info(caplog) == [f"  {line}" for line in ANSIBLE_RUN.splitlines()] + [
        "waiting for SSH on port 40123 (45 s)"
    ]


def test_elsewhere_a_streamed_command_logs_every_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    with progress.step("rootfs", logger=log) as status:
        run(["sh", "-c", "echo 'I: Retrieving libc6'; echo 'I: Extracting libc6'"], stream=True, on_line=status.output)
    run(["sh", "-c", "echo 'no step'"], stream=True)
    assert _info(caplog) == ["  I: Retrieving libc6", "  I: Extracting libc6", "  no step"]


def test_stderr_that_is_no_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.terminal_console() is None


def test_a_terminal_on_a_terminal_and_plain_lines_come_back_after(terminal: Terminal) -> None:
    assert progress._board is not None
    with progress.live(None):
        assert progress._board is None
    assert progress._board is not None


# --- byte transfers --------------------------------------------------------------------------------


def test_on_a_terminal_a_transfer_is_a_bar_with_its_rate_and_time_left(
    terminal: Terminal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    seen: list[Progress] = []
    with Meter("2026-06-18-raspios-trixie-arm64-lite.img.xz", 400 * MIB, callback=seen.append, interval=0) as meter:
        for _ in range(2):
            terminal.clock.now += 10
            meter.add(100 * MIB)
        bar = next(ln for ln in terminal.drawn().splitlines() if "raspios-trixie" in ln)
        meter.finish()
    assert "50%" in bar
    assert "200.0/400.0 MiB" in bar
    assert "10.5 MB/s" in bar  # 100 MiB every 10 s
    assert "0:00:20" in bar  # 200 MiB left at that rate
    # The bar stands in for the periodic lines; the last line is logged, and the callback API is as it was.
    (line,) = _info(caplog)
    assert line.startswith("2026-06-18-raspios-trixie-arm64-lite.img.xz: 200/400 MiB (50%), ")
    assert [p.done for p in seen] == [0, 100 * MIB, 200 * MIB]
    assert progress._board is not None and progress._board.users == 0


def test_a_bar_goes_when_its_transfer_fails(terminal: Terminal) -> None:
    board = progress._board
    assert board is not None
    with pytest.raises(OSError), Meter("write", 10 * MIB) as meter:
        meter.add(MIB)
        assert board.users == 1
        raise OSError("card removed")
    assert board.users == 0


def test_elsewhere_a_transfer_logs_a_line_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pibake")
    with Meter("write", 4 * MIB, interval=0, logger=log) as meter:
        meter.add(2 * MIB)
        meter.finish(" (fsync included)")
    lines = _info(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("write: 2/4 MiB (50%), ") and lines[0].endswith(" left")
    assert lines[1].startswith("write: 2/4 MiB (50%), ") and lines[1].endswith(" (fsync included)")


# --- the pieces ------------------------------------------------------------------------------------


def test_log_lines_go_through_the_console_so_that_they_scroll_above_the_rows(terminal: Terminal) -> None:
    handler = progress.ConsoleHandler(terminal.console)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    record = logging.LogRecord("pibake.x", logging.INFO, __file__, 1, "TASK [a : b] [not markup]", None, None)
    handler.emit(record)
    assert "pibake.x: TASK [a : b] [not markup]\n" in terminal.drawn()


def test_a_row_shows_text_without_colour_codes_or_control_characters() -> None:
    assert progress.printable("[\x1b[0;32m  OK  \x1b[0m] Started ssh.service\r") == "[  OK  ] Started ssh.service"
    assert progress.printable("a\tb\x07") == "a b"
    assert progress.printable("10%\r20%\r") == "20%"
    assert progress.format_seconds(3725.9) == "1:02:05"


def test_the_serial_console_s_last_line(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    assert serial_last_line(serial) == ""
    serial.write_bytes(b"x" * 10000 + b"\n[    1.234] Booting\r\n[  OK  ] Reached target Multi-User System.\r\n\r\n")
    assert serial_last_line(serial) == "[  OK  ] Reached target Multi-User System."
