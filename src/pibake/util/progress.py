"""Progress of a long byte transfer (a card written or read back, a download): its numbers, how they read, the meter."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MIB = 1 << 20


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
    ``update``.
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
        self.report()

    def add(self, n: int) -> None:
        """N more bytes are done."""
        self.update(self.done + n)

    def update(self, done: int) -> None:
        """DONE bytes are done in all (START included)."""
        self.done = done
        now = time.monotonic()
        if now - self.last_log >= self.interval:
            self.last_log = now
            self.logger.info("%s", self.snapshot().describe())
        self.report()

    def finish(self, suffix: str = "") -> None:
        """Log where the phase ended, whatever the time since the last line; SUFFIX is appended to it."""
        self.logger.info("%s%s", self.snapshot().describe(), suffix)

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
