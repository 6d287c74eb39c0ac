"""How bench results are shown and kept: the Markdown table, the JSON document and its schema, the chart."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pibake.bench.results import GROUPS, STATUSES, Step, ratio
from pibake.errors import PibakeError

SCHEMA = "pibake-bench/1"
MACHINE_KEYS = ("cpu_model", "cores", "ram_gib", "qemu_version", "kernel", "pibake_version", "date")


def format_seconds(seconds: float) -> str:
    """A duration in the unit a person reads it in: µs, ms, s, or min."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def format_table(steps: Sequence[Step]) -> str:
    """A Markdown table: one row per step, numbers or the reason it did not run."""
    rows = [
        "| step | n | median | min | max | ratio | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for step in steps:
        s = step.summary
        if s is None:
            why = f"{step.status}: {step.reason}".replace("|", "/").replace("\n", " ")
            rows.append(f"| {step.name} | 0 | - | - | - | - | {why} |")
            continue
        r = ratio(step, steps)
        ratio_text = f"{r:.2f}x {step.ratio_to}" if r is not None else ""
        rows.append(
            f"| {step.name} | {s.n} | {format_seconds(s.median)} | {format_seconds(s.min)} | "
            f"{format_seconds(s.max)} | {ratio_text} | {step.note.replace('|', '/')} |"
        )
    return "\n".join(rows)


def to_json(machine: dict[str, Any], steps: Sequence[Step], *, repeat: int, quick: bool) -> dict[str, Any]:
    """The bench.json document (schema ``SCHEMA``): the machine, the settings, every step with its numbers or reason."""
    out_steps = []
    for step in steps:
        s = step.summary
        out_steps.append(
            {
                "name": step.name,
                "group": step.group,
                "unit": "s",
                "status": step.status,
                "reason": step.reason,
                "samples": list(step.samples) if s else [],
                "n": s.n if s else 0,
                "median": s.median if s else None,
                "min": s.min if s else None,
                "max": s.max if s else None,
                "ratio_to": step.ratio_to,
                "ratio": ratio(step, steps),
                "note": step.note,
                "metrics": step.metrics,
            }
        )
    return {"schema": SCHEMA, "machine": machine, "repeat": repeat, "quick": quick, "steps": out_steps}


def validate(data: dict[str, Any]) -> None:
    """Raise PibakeError unless DATA is a bench result this version writes and reads."""
    problems: list[str] = []
    if data.get("schema") != SCHEMA:
        problems.append(f"schema is {data.get('schema')!r}, not {SCHEMA!r}")
    machine = data.get("machine")
    if not isinstance(machine, dict):
        problems.append("no machine facts")
    else:
        problems += [f"machine.{k} missing" for k in MACHINE_KEYS if k not in machine]
    if not isinstance(data.get("repeat"), int) or data["repeat"] < 1:
        problems.append("repeat must be a positive integer")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        problems.append("no steps")
        steps = []
    for i, step in enumerate(steps):
        where = f"steps[{i}] ({step.get('name', '?') if isinstance(step, dict) else '?'})"
        if not isinstance(step, dict):
            problems.append(f"{where} is not an object")
            continue
        if not isinstance(step.get("name"), str) or step.get("group") not in GROUPS:
            problems.append(f"{where}: needs a name and a group of {GROUPS}")
        if step.get("status") not in STATUSES:
            problems.append(f"{where}: status must be one of {STATUSES}")
        elif step["status"] == "ok":
            numbers = [x for x in (step.get(k) for k in ("median", "min", "max")) if isinstance(x, int | float)]
            if len(numbers) != 3 or not step.get("samples"):
                problems.append(f"{where}: an ok step needs samples, median, min and max")
            elif not numbers[1] <= numbers[0] <= numbers[2]:
                problems.append(f"{where}: min <= median <= max does not hold")
        elif not step.get("reason"):
            problems.append(f"{where}: a step that did not run needs its reason")
    if problems:
        raise PibakeError("not a valid bench result: " + "; ".join(problems))


def format_facts(machine: dict[str, Any], *, repeat: int) -> str:
    """The line above the table: the machine, the versions, the date, how busy the machine was."""
    return (
        f"{machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, {machine['qemu_version']}, "
        f"Linux {machine['kernel']}, pibake {machine['pibake_version']}, {machine['date']}, "
        f"{repeat} repetition(s), load average at start {machine['load_average_at_start'][0]}"
    )


def render_chart(steps: Sequence[Step], machine: dict[str, Any], path: Path) -> Path:
    """One horizontal bar per step (median, with a min-max whisker), one panel per group."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PibakeError("the chart needs matplotlib: install pibake with its dev extra (`make venv`)") from e
    groups = [g for g in GROUPS if any(s.group == g for s in steps)]
    heights = [max(1, sum(1 for s in steps if s.group == g)) for g in groups]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 1.2 + 0.45 * sum(heights) + 0.6 * len(groups)), squeeze=False)
    fig.suptitle(
        f"pibake bench: {machine.get('cpu_model')}, {machine.get('cores')} cores, {machine.get('date')}\n"
        "bar: median; whisker: min-max; grey: did not run",
        fontsize=9,
    )
    for ax, group in zip(axes[:, 0], groups, strict=True):
        members = [s for s in steps if s.group == group]
        scale, unit = (1e3, "ms") if group in ("inference", "serving") else (1.0, "s")
        labels = [s.name for s in members]
        ys = list(range(len(members)))
        top = max((s.summary.max * scale for s in members if s.summary), default=1.0) or 1.0
        for y, step in zip(ys, members, strict=True):
            s = step.summary
            if s is None:
                lines = textwrap.wrap(f"{step.status}: {step.reason}", 120)
                text = "\n".join(lines[:3]) + (" ..." if len(lines) > 3 else "")
                ax.text(0, y, text, va="center", fontsize=6.5, color="grey")
                continue
            ax.barh(y, s.median * scale, color="tab:blue" if step.ratio_to is None else "tab:orange")
            ax.errorbar(
                s.median * scale,
                y,
                xerr=[[(s.median - s.min) * scale], [(s.max - s.median) * scale]],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
            r = ratio(step, steps)
            label = format_seconds(s.median) + (f"  ({r:.2f}x {step.ratio_to})" if r is not None else "")
            ax.text(s.max * scale + top * 0.01, y, label, va="center", fontsize=7)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.45)
        ax.set_title(group, fontsize=9, loc="left")
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
