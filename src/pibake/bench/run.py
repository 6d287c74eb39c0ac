"""`pibake bench`: run the selected steps of the registry on this machine, N times, and write what they measured.

A step that cannot run here (a CPU the tflite wheel needs instructions from, no TFLite or
uvicorn on this machine's Python, no root for a loop device) is reported with its reason, never dropped.
Results go to OUTPUT_DIR/bench.json (with the machine's facts), OUTPUT_DIR/bench.png and
OUTPUT_DIR/bench.md (the table). The steps are listed in ``pibake.bench.registry``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pibake.bench import registry, report
from pibake.bench.context import Context
from pibake.bench.machine import machine_facts
from pibake.bench.results import GROUPS, Recorder, Step
from pibake.bench.serving import LoadPlan
from pibake.emulate import profiles
from pibake.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchResult:
    """The steps measured, the machine's facts, the files written and the table as printed."""

    steps: tuple[Step, ...]
    machine: dict[str, Any]
    json_path: Path
    png_path: Path
    table_path: Path
    table: str


def run_bench(
    project: Path,
    *,
    output_dir: Path,
    repeat: int = 3,
    steps: Sequence[str] | None = None,
    profile_names: Sequence[str] | None = None,
    quick: bool = False,
    cold_rootfs: bool = False,
    flash_size_mib: int | None = None,
    serve_requests: int = LoadPlan.requests,
    serve_concurrency: int = LoadPlan.concurrency,
) -> BenchResult:
    """Run the selected steps REPEAT times (once with QUICK) and write bench.json, bench.png and bench.md."""
    if repeat < 1:
        raise UsageError(f"--repeat takes a positive number, not {repeat}")
    if serve_requests < 1 or serve_concurrency < 1:
        raise UsageError(
            f"--serve-requests and --serve-concurrency take positive numbers, not {serve_requests} and "
            f"{serve_concurrency}"
        )
    if not (project / "site.yml").is_file():
        raise UsageError(f"no site.yml in {project}: run the bench from the pibake checkout (or pass --project)")
    if quick:
        repeat = 1
    selected = registry.pick(steps, quick=quick)
    names = list(profile_names or profiles.available())
    for name in names:
        profiles.load(name)
    machine = machine_facts()
    output_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        project=project,
        work=output_dir / "work",
        rec=Recorder(),
        selected=selected,
        profile_names=names,
        repeat=repeat,
        runs=3 if quick else 5,
        cold_rootfs=cold_rootfs,
        flash_size_mib=flash_size_mib or (64 if quick else 1024),
        serve_plan=LoadPlan(requests=serve_requests, concurrency=serve_concurrency),
    )
    log.info("bench: steps %s, %d repetition(s), profiles %s", ", ".join(selected), repeat, ", ".join(names))
    for runner in registry.runners(selected):
        runner(ctx)
    shutil.rmtree(ctx.work, ignore_errors=True)

    # Grouped as the pipeline runs (inference on the host, qemu-user and the guest side by side).
    all_steps = tuple(sorted(ctx.rec.steps.values(), key=lambda s: GROUPS.index(s.group)))
    data = report.to_json(machine, all_steps, repeat=repeat, quick=quick)
    report.validate(data)
    json_path = output_dir / "bench.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    table = report.format_table(all_steps)
    facts = report.format_facts(machine, repeat=repeat)
    table_path = output_dir / "bench.md"
    table_path.write_text(f"{facts}\n\n{table}\n")
    png_path = report.render_chart(all_steps, machine, output_dir / "bench.png")
    return BenchResult(all_steps, machine, json_path, png_path, table_path, facts + "\n\n" + table)
