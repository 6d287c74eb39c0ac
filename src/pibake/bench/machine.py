"""The facts of the machine a bench ran on: CPU, cores, RAM, QEMU, kernel, versions, date and load."""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pibake import __version__
from pibake.errors import PibakeError
from pibake.util.proc import run


def _first_line(argv: Sequence[str]) -> str:
    try:
        return run(argv, timeout=30).strip().splitlines()[0]
    except (PibakeError, IndexError):
        return "not installed"


def machine_facts() -> dict[str, Any]:
    """What the numbers depend on, for bench.json and the line above the table."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": os.cpu_count() or 0,
        "ram_gib": round(int(mem.group(1)) / (1 << 20), 1) if mem else None,
        "qemu_version": _first_line(["qemu-system-arm", "--version"]),
        "qemu_user_version": _first_line(["qemu-arm-static", "--version"]),
        "kvm": Path("/dev/kvm").exists(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pibake_version": __version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        # Other work on the machine skews the numbers: say how busy it was.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
