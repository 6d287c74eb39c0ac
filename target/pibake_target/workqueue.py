"""The bounded queue inference runs from: a few worker threads, a fixed number of waiting jobs.

A job is the whole CPU work of a request (decompressing, decoding, the model, encoding), so the
event loop only moves bytes. When the queue is full, submit() raises QueueFull at once: the
service answers 503 with Retry-After instead of letting latency grow without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every worker is busy and the queue holds as many jobs as it may."""


class WorkQueue:
    def __init__(self, capacity: int, *, workers: int = 1, name: str = "inference") -> None:
        self.capacity = capacity
        self._jobs: queue.Queue[tuple[Future[Any], Callable[[], Any]] | None] = queue.Queue(maxsize=capacity)
        self._running = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def depth(self) -> int:
        """Jobs waiting plus jobs running."""
        with self._lock:
            return self._jobs.qsize() + self._running

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        """Queue a job; its future gets the job's result or exception. QueueFull when there is no room."""
        future: Future[Any] = Future()
        try:
            self._jobs.put_nowait((future, job))
        except queue.Full:
            raise QueueFull(f"{self.capacity} requests are already waiting") from None
        return future

    def close(self) -> None:
        """Let the workers finish the queued jobs and stop (blocks until there is room for the stop marks)."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue  # the client went away before its turn
            with self._lock:
                self._running += 1
            try:
                future.set_result(job())
            except BaseException as exc:  # the job's failure is the request's, never the worker's
                future.set_exception(exc)
            finally:
                with self._lock:
                    self._running -= 1
