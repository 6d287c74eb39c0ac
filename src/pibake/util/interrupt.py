"""SIGTERM stops a long step the way Ctrl-C does: as ``KeyboardInterrupt``, so that the step says what it left behind.

By default SIGTERM (``kill PID``, a CI job's timeout, systemd stopping a unit) ends the process
on the spot, without a word. A step that can leave something half-done (a card half-written)
runs inside ``sigterm_as_interrupt()`` so that its ``except KeyboardInterrupt`` runs for SIGTERM
too. It matters most for a background job: a shell starts those with SIGINT ignored, so Ctrl-C
never reaches them and SIGTERM is how they are stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt in the main thread; the previous handler comes back on the way out.

    Left alone where it cannot or should not be changed: outside the main thread (Python only runs
    signal handlers there), and where SIGTERM already has a handler or is ignored (the caller's choice).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
