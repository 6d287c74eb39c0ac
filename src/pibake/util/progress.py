"""Progress of the long steps, followed live on a terminal and as plain log lines elsewhere.

Two kinds: a byte transfer (a card written or read back, a download: ``Meter``, with its numbers in
``Progress``) and a step that takes minutes without counting bytes (a root filesystem built, a guest
booting, an Ansible run, a stage of ``pibake bake``: ``step``).

On a terminal (stderr is one that can redraw lines: not TERM=dumb), rich draws at the foot of the
screen one row per step under way, with its elapsed time and its latest line (the Ansible task and
its own time, the builder's last line, the guest's serial console), and a bar per transfer with its
rate and time left; log lines scroll above them. Elsewhere (CI, a pipe, a file) and until
``live(...)`` is given a console, the same steps are the plain log lines they always were: a line
every few seconds for a transfer, every output line of a command.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType

from rich import progress as rp
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Column
from rich.text import Text

log = logging.getLogger(__name__)

MIB = 1 << 20
# Output lines that stay in the log on a terminal too: Debian's tools' "W: "/"E: " (debootstrap, mmdebstrap, apt),
# Ansible's "[WARNING]:", "[ERROR]:" and "ERROR!", a compiler's "warning:".
WARNING = re.compile(
    r"^(?:[WE]: |\[(?:WARNING|ERROR|DEPRECATION WARNING)\]|ERROR!)|\b(?:warning|error): ", re.IGNORECASE
)


def format_size(n: float) -> str:
    """Bytes as a card's label says them (GB) and as tools say them (GiB); MiB below a gigabyte."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB ({n / (1 << 30):.1f} GiB)"
    return f"{n / MIB:.1f} MiB"


@dataclass(frozen=True)
class Progress:
    """Where one phase of a transfer stands. TOTAL is None when not known (a download without a length)."""

    phase: str  # "write", "verify", or the name of the file being downloaded
    done: int  # bytes
    total: int | None
    seconds: float  # since the meter started
    start: int = 0  # bytes already there when the meter started (a resumed download): not in the rate

    @property
    def rate(self) -> float:
        """Bytes a second so far."""
        return (self.done - self.start) / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far."""
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate

    def describe(self) -> str:
        """One line for the log: ``write: 100/400 MiB (25%), 10.5 MB/s, 0:30 left``."""
        rate = f"{self.rate / 1e6:.1f} MB/s"
        if self.total is None:
            return f"{self.phase}: {self.done // MIB} MiB, {rate}"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta
        left = f"{int(eta) // 60}:{int(eta) % 60:02d} left" if eta is not None else "time left unknown"
        return f"{self.phase}: {self.done // MIB}/{self.total // MIB} MiB ({pct:.0f}%), {rate}, {left}"


ProgressCallback = Callable[[Progress], None]


class Meter:
    """Counts the bytes of one phase: logs where it stands every INTERVAL seconds, hands it to CALLBACK on every step.

    LOGGER is the caller's, so that the lines carry its name and its level silences them. The
    callback is called once as the meter starts (``done`` = START) and after every ``add`` or
    ``update``. On a terminal (``live``) a bar with the rate and time left stands in for the
    periodic lines; ``finish`` logs the last line either way. Used as a context manager, or closed
    by ``finish``: the bar goes when the phase ends, however it ends.
    """

    def __init__(
        self,
        phase: str,
        total: int | None,
        *,
        callback: ProgressCallback | None = None,
        logger: logging.Logger = log,
        interval: float = 2.0,
        start: int = 0,
    ) -> None:
        self.phase, self.total, self.callback = phase, total, callback
        self.logger, self.interval, self.start_bytes = logger, interval, start
        self.done = start
        self.start = time.monotonic()
        self.last_log = self.start
        self._board = _board
        self._bar = self._board.add_bar(phase, total, start) if self._board is not None else None
        self.report()

    def __enter__(self) -> Meter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def add(self, n: int) -> None:
        """N more bytes are done."""
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """DONE bytes are done in all (START included)."""
        self.done = done
        if self._board is not None and self._bar is not None:
            self._board.bars.update(self._bar, completed=done)
        else:
            now = time.monotonic()
            if now - self.last_log >= self.interval:
                self.last_log = now
                self.logger.info("%s", self.snapshot().describe())
        self.report()

    def finish(self, suffix: str = "") -> None:
        """Log where the phase ended, whatever the time since the last line; SUFFIX is appended to it."""
        self.close()
        self.logger.info("%s%s", self.snapshot().describe(), suffix)

    def close(self) -> None:
        """Take the bar off the terminal (nothing elsewhere); a second call does nothing."""
        if self._board is not None and self._bar is not None:
            self._board.remove_bar(self._bar)
            self._bar = None

    def snapshot(self) -> Progress:
        """Where the phase stands now."""
        return Progress(self.phase, self.done, self.total, time.monotonic() - self.start, self.start_bytes)

    def report(self) -> None:
        """Hand the snapshot to the callback, if there is one."""
        if self.callback is not None:
            self.callback(self.snapshot())

    @property
    def seconds(self) -> float:
        """Seconds since the meter started."""
        return time.monotonic() - self.start


# ---------------------------------------------------------------- steps


class Step:
    """One long step, as ``step`` hands it out: what it says goes to a row on a terminal, to the log elsewhere."""

    def __init__(self, title: str, logger: logging.Logger, board: _Board | None) -> None:
        self.title, self.logger, self._board = title, logger, board
        self._row: rp.TaskID | None = None
        self._section: str | None = None
        self._section_start = 0.0
        self._tags: list[str] = []

    @property
    def live(self) -> bool:
        """Whether the step is drawn on a terminal (the plain log then leaves out what the row shows)."""
        return self._row is not None

    def output(self, line: str) -> None:
        """A line of the step's output (a command's): the row's latest line on a terminal, where the log has it at
        DEBUG (``-v``) unless it is a warning or an error (``WARNING``); an INFO line of the log elsewhere, as a
        streamed command's lines always were."""
        if not self.live or WARNING.search(line):
            self.logger.info("  %s", line)
        else:
            self.logger.debug("  %s", line)
        self.show(line)

    def keep(self, line: str) -> None:
        """An output line worth keeping on a terminal too (a warning, an error, a summary): an INFO line everywhere."""
        self.logger.info("  %s", line)

    def show(self, text: str) -> None:
        """What the row says the step is doing now (a blank TEXT leaves it as it was); nothing in the plain log."""
        if self._board is None or self._row is None:
            return
        text = printable(text)
        if text:
            self._board.steps.update(self._row, latest=text)

    def tick(self, msg: str, *args: object) -> None:
        """A "still at it" line for the plain log (``waiting for SSH (45 s)``); on a terminal the row's elapsed time
        says it, and nothing is logged."""
        if not self.live:
            self.logger.info(msg, *args)

    def section(self, text: str, *, line: str | None = None) -> None:
        """A new part of the step begins (an Ansible task), begun by the output LINE (default TEXT). On a terminal
        the row shows TEXT with its own elapsed time, and the part before it is logged once with its tags and time;
        elsewhere LINE is an output line."""
        line = text if line is None else line
        if self._board is None or self._row is None:
            self.logger.info("  %s", line)
            return
        self.logger.debug("  %s", line)
        self.end_section()
        self._section, self._section_start, self._tags = printable(text), self._board.clock(), []
        self._board.steps.update(self._row, section=self._section, section_start=self._section_start)

    def tag(self, word: str) -> None:
        """A word for the current section's line on a terminal (an Ansible task's ``changed``), each once."""
        if self._section is not None and word not in self._tags:
            self._tags.append(word)

    def end_section(self) -> None:
        """The current section is over: on a terminal it is logged with its tags and time (elsewhere, nothing)."""
        if self._board is None or self._section is None:
            return
        took = format_seconds(self._board.clock() - self._section_start)
        self.logger.info("  %s: %s", self._section, ", ".join([*self._tags, took]))
        self._section = None
        if self._row is not None:
            self._board.steps.update(self._row, section=None, latest="")

    def _open(self) -> None:
        if self._board is not None:
            self._row = self._board.add_step(self.title)

    def _close(self) -> None:
        if self._board is not None and self._row is not None:
            self.end_section()
            self._board.remove_step(self._row)
            self._row = None


@contextlib.contextmanager
def step(title: str, *, logger: logging.Logger = log) -> Iterator[Step]:
    """A long step called TITLE: on a terminal, a row with a spinner, TITLE, the elapsed time and the latest line,
    for as long as the block runs; elsewhere nothing of its own (the step's ``output`` and ``tick`` lines go to
    LOGGER, the caller's, as before). Steps nest: an inner step's row is drawn under, and indented from, its outer's.
    """
    s = Step(title, logger, _board)
    s._open()
    try:
        yield s
    finally:
        s._close()


# ---------------------------------------------------------------- the terminal


def format_seconds(seconds: float) -> str:
    """Elapsed time as rich's progress columns write it: ``0:02:31``."""
    return str(timedelta(seconds=max(int(seconds), 0)))


def printable(text: str) -> str:
    """TEXT as one row can show it: no colour codes (systemd's ``[  OK  ]``), no control characters, no ends; of a
    line a carriage return rewrote (``10%\r20%``), what a terminal would show last."""
    rewrites = [part for part in text.split("\r") if part.strip()]
    plain = Text.from_ansi(rewrites[-1] if rewrites else "").plain
    return "".join(c if c.isprintable() else " " for c in plain).strip()


class _Latest(rp.ProgressColumn):
    """A step's current section (an Ansible task) after its own elapsed time, or else its latest line; cut to fit."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1))
        self.clock = clock

    def render(self, task: rp.Task) -> Text:
        section = task.fields.get("section")
        if section:
            # The section's time first: a long task name is cut at the end, its time never.
            took = format_seconds(self.clock() - float(task.fields.get("section_start", 0.0)))
            return Text.assemble((took, "yellow"), " ", (section, "cyan"), no_wrap=True, overflow="ellipsis")
        return Text(str(task.fields.get("latest", "")), style="dim", no_wrap=True, overflow="ellipsis")


class _Board:
    """The live rows at the foot of a terminal: the steps under way, then the byte bars. Drawn while any is."""

    def __init__(self, console: Console, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.clock = console, clock
        self.steps = rp.Progress(
            rp.SpinnerColumn(),
            rp.TextColumn("{task.description}", markup=False),
            rp.TimeElapsedColumn(),
            _Latest(clock),
            console=console,
            get_time=clock,
            expand=True,
        )
        self.bars = rp.Progress(
            rp.TextColumn("{task.description}", markup=False),
            rp.BarColumn(bar_width=None),
            rp.TaskProgressColumn(),
            rp.DownloadColumn(binary_units=True),
            rp.TransferSpeedColumn(),
            rp.TimeRemainingColumn(),
            console=console,
            get_time=clock,
            expand=True,
        )
        # Printing to stdout while rows are drawn would tear them: it goes above them, through the console, but only
        # when stdout is this terminal too (`pibake bake > out.txt` keeps its stdout to itself).
        self.live = Live(
            get_renderable=self.render,
            console=console,
            transient=True,
            refresh_per_second=4,
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=True,
        )
        self.users = 0
        self.lock = threading.RLock()

    def render(self) -> RenderableType:
        parts = [p for p in (self.steps, self.bars) if p.tasks]
        return Group(*parts)

    def add_step(self, title: str) -> rp.TaskID:
        with self.lock:
            indent = "  " * len(self.steps.tasks)
            row = self.steps.add_task(indent + title, total=None, latest="", section=None)
            self._use()
            return row

    def remove_step(self, row: rp.TaskID) -> None:
        with self.lock:
            self.steps.remove_task(row)
            self._release()

    def add_bar(self, phase: str, total: int | None, start: int) -> rp.TaskID:
        with self.lock:
            bar = self.bars.add_task(phase, total=total, completed=start)
            self._use()
            return bar

    def remove_bar(self, bar: rp.TaskID) -> None:
        with self.lock:
            self.bars.remove_task(bar)
            self._release()

    def _use(self) -> None:
        self.users += 1
        if self.users == 1:
            self.live.start()

    def _release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.live.stop()

    def stop(self) -> None:
        with self.lock:
            if self.users:
                self.users = 0
                self.live.stop()

    def refresh(self) -> None:
        with self.lock:
            if self.users:
                self.live.refresh()


_board: _Board | None = None


def terminal_console() -> Console | None:
    """A rich console on stderr when stderr is a terminal that can redraw lines; None elsewhere (CI, a pipe, a file,
    TERM=dumb), where progress stays plain log lines."""
    if not sys.stderr.isatty():
        return None
    console = Console(stderr=True)
    return console if console.is_terminal and not console.is_dumb_terminal else None


@contextlib.contextmanager
def live(console: Console | None, *, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Inside, steps and meters are drawn on CONSOLE (None: plain log lines); what was before comes back after.

    The command line opens one around a whole command with ``terminal_console()``, and logs through
    ``ConsoleHandler`` so that log lines scroll above the rows. CLOCK is the time the rows count (tests move it).
    """
    global _board
    previous = _board
    _board = _Board(console, clock=clock) if console is not None else None
    try:
        yield
    finally:
        if _board is not None:
            _board.stop()
        _board = previous


def refresh() -> None:
    """Draw the rows now rather than at the next tick (a test reads them); nothing when none is drawn."""
    if _board is not None:
        _board.refresh()


class ConsoleHandler(logging.Handler):
    """Log records printed through CONSOLE, so that on a terminal they scroll above the live rows, not through them."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, emoji=False, soft_wrap=True)
        except Exception:  # as logging.StreamHandler does: a broken terminal does not take the command down
            self.handleError(record)
