"""The bench's results: a measured step, its samples and their summary, ratios, and the recorder that collects them."""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pibake.errors import PibakeError

log = logging.getLogger(__name__)

# The panels of the chart and the order of the table, as the pipeline runs.
GROUPS = ("image", "boot", "converge", "inference", "serving", "flash")
STATUSES = ("ok", "cannot run", "failed")


@dataclass(frozen=True)
class Summary:
    """How many samples, and their median, min and max (seconds)."""

    n: int
    median: float
    min: float
    max: float


def summarize(samples: Sequence[float]) -> Summary:
    """The summary of SAMPLES; there must be one at least."""
    if not samples:
        raise PibakeError("no samples to summarize")
    return Summary(len(samples), statistics.median(samples), min(samples), max(samples))


@dataclass
class Step:
    """One measured quantity. Samples are seconds; RATIO_TO names the step it is compared with."""

    name: str
    group: str
    samples: list[float] = field(default_factory=list)
    status: str = "ok"
    reason: str = ""
    ratio_to: str | None = None
    note: str = ""
    # Figures of each run beyond the samples, by name (the serving rows: requests_per_second, p50_ms, p99_ms, errors).
    metrics: list[dict[str, float | None]] = field(default_factory=list)

    @property
    def summary(self) -> Summary | None:
        """The summary of its samples; None for a step that did not run."""
        return summarize(self.samples) if self.samples and self.status == "ok" else None


def ratio(step: Step, steps: Sequence[Step]) -> float | None:
    """STEP's median time over its reference's median time (2.0: twice as long)."""
    if step.ratio_to is None or step.summary is None:
        return None
    ref = next((s for s in steps if s.name == step.ratio_to), None)
    if ref is None or ref.summary is None or ref.summary.median <= 0:
        return None
    return step.summary.median / ref.summary.median


class Recorder:
    """Steps in the order they first appear; a failing measurement marks its step failed, and the run goes on."""

    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}

    def step(self, name: str, group: str, *, ratio_to: str | None = None, note: str = "") -> Step:
        """The step NAME, created (in GROUP, compared with RATIO_TO) the first time it is asked for."""
        if name not in self.steps:
            self.steps[name] = Step(name, group, ratio_to=ratio_to, note=note)
        return self.steps[name]

    def add(self, name: str, group: str, *values: float, ratio_to: str | None = None, note: str = "") -> None:
        """Samples (seconds) of the step NAME; a NOTE replaces the one it had."""
        st = self.step(name, group, ratio_to=ratio_to, note=note)
        st.samples.extend(values)
        if note:
            st.note = note

    def cannot(self, name: str, group: str, reason: str) -> None:
        """The step NAME cannot run on this machine, for REASON."""
        st = self.step(name, group)
        st.status, st.reason = "cannot run", reason

    def fail(self, name: str, group: str, error: Exception) -> None:
        """The step NAME failed with ERROR: its first line becomes the reason."""
        st = self.step(name, group)
        first = str(error).strip().splitlines()
        st.status, st.reason = "failed", (first[0] if first else type(error).__name__)[:300]
        log.error("bench step %s failed: %s", name, error)

    @contextlib.contextmanager
    def guard(self, name: str, group: str) -> Iterator[None]:
        """Record a PibakeError raised inside as the failure of the step NAME, and go on."""
        try:
            yield
        except PibakeError as e:
            self.fail(name, group, e)
