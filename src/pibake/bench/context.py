"""What every bench runner is given: the checkout, the work directory, the recorder, the selection and settings."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pibake.bench.results import Recorder
from pibake.bench.serving import LoadPlan
from pibake.bench.wheel import Wheel, tflite_wheel
from pibake.errors import PibakeError

# The base the bench builds, boots and times: the one its measurements (README, Benchmark) were taken on. Named, not
# left to image.build.default_base, so that a change of default does not change what the bench measures; its
# qemu-user step pip-installs the tflite-runtime wheel into the system Python, which bookworm's and trixie's refuse
# (PEP 668).
BENCH_BASE = "debian-bullseye"
# The base the bench boots on the 64-bit profiles (virt64, the board models raspi3b and raspi4b), and whose runtime
# (LiteRT from its lock) it times on the 64-bit cores; the board its image is made for, whose core is the A72.
ARM64_BASE = "debian-trixie-arm64"
ARM64_BOARD = "pi4"


@dataclass
class Context:
    """One bench run as its runners see it. A runner records into ``rec`` and leaves nothing in ``work``."""

    project: Path  # the pibake checkout: site.yml, roles/, models/
    work: Path  # scratch space of this run; each runner uses a directory of its own below it
    rec: Recorder
    selected: Sequence[str]  # the steps asked for, as ``pibake bench --steps`` names them
    profile_names: Sequence[str]  # the machine profiles to boot and to emulate the CPUs of
    repeat: int  # times each step is measured
    runs: int  # invocations of the model in one inference timing
    cold_rootfs: bool = False  # image-cold also rebuilds the root filesystem (mmdebstrap)
    flash_size_mib: int = 1024  # size of the images the flash step writes
    serve_plan: LoadPlan = field(default_factory=LoadPlan)  # requests, concurrency, time limit of a serving run

    @functools.cached_property
    def _wheel(self) -> tuple[Wheel | None, str]:
        try:
            return tflite_wheel(self.project), ""
        except PibakeError as e:
            return None, f"no armv7l tflite-runtime wheel: {e}"

    @property
    def wheel(self) -> Wheel | None:
        """The armv7l tflite-runtime wheel, looked up (or downloaded) once; None when there is none."""
        return self._wheel[0]

    @property
    def wheel_error(self) -> str:
        """Why there is no wheel; empty when there is one."""
        return self._wheel[1]


Runner = Callable[[Context], None]
