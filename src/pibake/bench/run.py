"""`pibake bench`: time the whole pipeline on this machine, N times, and show it.

Steps (``STEPS``), each run ``repeat`` times; a step reports median, min and max:

  image-cold       the base image rebuilt with its cache entry ignored (``cold_rootfs``: the
                   debootstrapped root too, 5-7 minutes, and every later step waits for it)
  image-cached     the base image taken from the cache and published, as a second `make image`
  boot             boot to SSH and clean shutdown, for each machine profile
  converge         site.yml against a fresh copy of the image on the virt profile, then again
  infer-host       the demo model on this machine's x86_64 TFLite, per image
  infer-qemu-user  the same in a chroot of the cached armhf root, under qemu-user with each
                   profile's CPU (QEMU_CPU)
  infer-guest      the same on the provisioned image booted on each profile
  serve            requests/s and latency of the inference service (issue 5)
  flash            scripts/bench_flash.py's runs: dd, pibake, bmap, to a loop device

A step that cannot run here (a CPU the tflite wheel needs instructions from, a service that
does not exist yet, no root for a loop device) is reported with its reason, never dropped.
Results go to OUTPUT_DIR/bench.json (with the machine's facts), OUTPUT_DIR/bench.png and
OUTPUT_DIR/bench.md (the table).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from pibake import __version__, isa, preflight
from pibake.emulate import guest as emulator
from pibake.emulate import profiles, sshkey
from pibake.emulate.ssh import ssh_run
from pibake.errors import PibakeError
from pibake.image import build as image
from pibake.image import prepare
from pibake.provision import provision
from pibake.util.cache import cache_root, recipe_hash, sha256_file
from pibake.util.proc import run

log = logging.getLogger(__name__)

SCHEMA = "pibake-bench/1"
STEPS = (
    "image-cold",
    "image-cached",
    "boot",
    "converge",
    "infer-host",
    "infer-qemu-user",
    "infer-guest",
    "serve",
    "flash",
)
QUICK_STEPS = ("image-cached", "infer-host", "infer-qemu-user", "flash")
GROUPS = ("image", "boot", "converge", "inference", "serving", "flash")
STATUSES = ("ok", "cannot run", "failed")

GUEST_NAME = "pibake-bench"
GUEST_MODEL_DIR = "/opt/pibake/model/current"
CHROOT_DIR = "/opt/pibake-bench"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONVERGE_PROFILE = "virt"
MIB = 1 << 20


# ---------------------------------------------------------------- results: pure


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    min: float
    max: float


def summarize(samples: Sequence[float]) -> Summary:
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

    @property
    def summary(self) -> Summary | None:
        return summarize(self.samples) if self.samples and self.status == "ok" else None


def ratio(step: Step, steps: Sequence[Step]) -> float | None:
    """STEP's median time over its reference's median time (2.0: twice as long)."""
    if step.ratio_to is None or step.summary is None:
        return None
    ref = next((s for s in steps if s.name == step.ratio_to), None)
    if ref is None or ref.summary is None or ref.summary.median <= 0:
        return None
    return step.summary.median / ref.summary.median


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
            }
        )
    return {"schema": SCHEMA, "machine": machine, "repeat": repeat, "quick": quick, "steps": out_steps}


MACHINE_KEYS = ("cpu_model", "cores", "ram_gib", "qemu_version", "kernel", "pibake_version", "date")


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


# ---------------------------------------------------------------- machine facts


def _first_line(argv: Sequence[str]) -> str:
    try:
        return run(argv, timeout=30).strip().splitlines()[0]
    except (PibakeError, IndexError):
        return "not installed"


def machine_facts() -> dict[str, Any]:
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


# ---------------------------------------------------------------- chart


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
        scale, unit = (1e3, "ms") if group == "inference" else (1.0, "s")
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


# ---------------------------------------------------------------- recording


class _Recorder:
    """Steps in the order they first appear; a failing measurement marks its step failed, and the run goes on."""

    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}

    def step(self, name: str, group: str, *, ratio_to: str | None = None, note: str = "") -> Step:
        if name not in self.steps:
            self.steps[name] = Step(name, group, ratio_to=ratio_to, note=note)
        return self.steps[name]

    def add(self, name: str, group: str, *values: float, ratio_to: str | None = None, note: str = "") -> None:
        st = self.step(name, group, ratio_to=ratio_to, note=note)
        st.samples.extend(values)
        if note:
            st.note = note

    def cannot(self, name: str, group: str, reason: str) -> None:
        st = self.step(name, group)
        st.status, st.reason = "cannot run", reason

    def fail(self, name: str, group: str, error: Exception) -> None:
        st = self.step(name, group)
        first = str(error).strip().splitlines()
        st.status, st.reason = "failed", (first[0] if first else type(error).__name__)[:300]
        log.error("bench step %s failed: %s", name, error)

    @contextlib.contextmanager
    def guard(self, name: str, group: str) -> Iterator[None]:
        try:
            yield
        except PibakeError as e:
            self.fail(name, group, e)


# ---------------------------------------------------------------- the model and its wheel


@dataclass(frozen=True)
class Wheel:
    path: Path
    version: str


def tflite_wheel(project: Path) -> Wheel:
    """The armv7l tflite-runtime wheel the python_runtime role installs: from the wheel cache, else downloaded.

    Its name and sha256 come from the role's defaults, so the bench times what the image carries.
    """
    defaults = yaml.safe_load((project / "roles/python_runtime/defaults/main.yml").read_text())
    version, tag = defaults["python_runtime_version"], defaults["python_runtime_python_tag"]
    plat, digest = defaults["python_runtime_platform_tag"], defaults["python_runtime_wheel_sha256"]
    cache = cache_root() / "wheels"
    wheel = cache / f"tflite_runtime-{version}-{tag}-{tag}-{plat}.whl"
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s into %s", wheel.name, cache)
        run(
            [
                sys.executable, "-m", "pip", "download", f"tflite-runtime=={version}", "--no-deps",
                "--only-binary=:all:", "--platform", plat, "--python-version", tag.removeprefix("cp"),
                "--implementation", "cp", "--abi", tag, "--disable-pip-version-check", "-d", str(cache),
            ]
        )  # fmt: skip
    if sha256_file(wheel) != digest:
        raise PibakeError(f"{wheel} does not have the sha256 the python_runtime role pins ({digest}): delete it")
    return Wheel(wheel, str(version))


def cannot_run_model(wheel: Path, profile: str, cpu: str | None = None) -> str | None:
    """None when the wheel's native code runs on the profile's CPU; else preflight's reason."""
    prof = profiles.load(profile)
    cpu = prof.resolve_cpu(cpu)
    target = preflight.Target(
        label=f"CPU {cpu} (profile {profile})",
        isa=isa.from_cpu_features(prof.features(cpu)),
        hint=f"Profile {profile} lacks what the model needs.",
    )
    verdicts = [preflight.check(art, target) for art in isa.scan([wheel])]
    errors = [v.error() for v in verdicts if not v.ok]
    return " ".join(errors) or None


def _timing_args(model_dir: str, samples: Sequence[str], *, runs: int) -> list[str]:
    return [
        "--predict-dir", model_dir, "--model", f"{model_dir}/car.tflite", "--labels", f"{model_dir}/labels.txt",
        "--runs", str(runs), *samples,
    ]  # fmt: skip


def _parse_timing(out: str) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        if not result["seconds"]:
            raise ValueError("no timings")
    except (ValueError, IndexError, KeyError) as e:
        raise PibakeError(f"the timing script printed no timings:\n{out[-1500:]}") from e
    return result


def infer_on_host(project: Path, *, runs: int) -> dict[str, Any]:
    models = project / "models"
    samples = sorted(str(p) for p in (models / "samples").glob("*.png"))
    script = Path(__file__).with_name("infer_timing.py")
    return _parse_timing(run([sys.executable, str(script), *_timing_args(str(models), samples, runs=runs)]))


def qemu_user_root(project: Path, wheel: Wheel) -> Path:
    """A copy of the cached armhf root with the wheel, the model and the timing script in it (cached)."""
    image.ensure_binfmt()
    base = image.default_spec().base
    rootfs = image.build_rootfs(base)
    key = recipe_hash({"rootfs": recipe_hash(base.key()), "wheel": wheel.path.name, "format": 1})
    top = cache_root() / "bench" / f"qemu-user-{key[:16]}"
    root = top / "root"
    work = root / CHROOT_DIR.lstrip("/")
    if not (top / "complete").exists():
        shutil.rmtree(top, ignore_errors=True)
        top.mkdir(parents=True)
        log.info("qemu-user root: copying the cached armhf root and installing %s", wheel.path.name)
        run(["cp", "-a", str(rootfs), str(root)])
        shutil.copy2(wheel.path, root / "tmp" / wheel.path.name)
        run(
            ["chroot", str(root), "python3", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
             f"/tmp/{wheel.path.name}"],
            env={"PATH": CHROOT_PATH, "HOME": "/root", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )  # fmt: skip
        (top / "complete").write_text(wheel.path.name + "\n")
    # The model and the script are refreshed every time: they are small and may have changed.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("predict.py", "car.tflite", "labels.txt"):
        shutil.copy2(project / "models" / name, work / name)
    shutil.copytree(project / "models" / "samples", work / "samples")
    shutil.copy2(Path(__file__).with_name("infer_timing.py"), work / "infer_timing.py")
    return root


def infer_on_qemu_user(root: Path, cpu: str, *, runs: int) -> dict[str, Any]:
    samples = sorted(
        f"{CHROOT_DIR}/samples/{p.name}" for p in (root / CHROOT_DIR.lstrip("/") / "samples").glob("*.png")
    )
    argv = [
        "chroot",
        str(root),
        "python3",
        f"{CHROOT_DIR}/infer_timing.py",
        *_timing_args(CHROOT_DIR, samples, runs=runs),
    ]
    return _parse_timing(run(argv, env={"PATH": CHROOT_PATH, "HOME": "/root", "QEMU_CPU": cpu}, timeout=900))


def infer_on_guest(guest: emulator.Guest, *, runs: int) -> dict[str, Any]:
    script = base64.b64encode(Path(__file__).with_name("infer_timing.py").read_bytes()).decode()
    args = " ".join(_timing_args(GUEST_MODEL_DIR, [f"{GUEST_MODEL_DIR}/samples/*.png"], runs=runs))
    cmd = f"echo {script} | base64 -d > /tmp/pibake_infer_timing.py && python3 /tmp/pibake_infer_timing.py {args}"
    code, out = ssh_run(guest, cmd, timeout=900)
    if code != 0:
        raise PibakeError(f"the timing script failed on the guest (exit {code}):\n{out[-1500:]}")
    return _parse_timing(out)


# ---------------------------------------------------------------- serving


def serving_unavailable(project: Path) -> str | None:
    """Why the serving load test cannot run, or None when it can."""
    role = project / "roles" / "inference_service"
    if not (role / "tasks").is_dir():
        return f"no inference_service role yet (issue 5): {role.relative_to(project)}/tasks does not exist"
    # The service and the forwarded port exist (emulator.DEFAULT_FORWARDS); the load generator does not yet.
    return (
        "no load test of the service in the bench yet: the service answers on the guest's port 8000, forwarded "
        "to the host (`pibake emulate status`); tests/serve_client.py has the requests to time"
    )


# ---------------------------------------------------------------- flashing


def _bench_flash_module(project: Path) -> ModuleType:
    """scripts/bench_flash.py, whose image, card and timing helpers the flash step reuses."""
    path = project / "scripts" / "bench_flash.py"
    spec = importlib.util.spec_from_file_location("pibake_bench_flash", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise PibakeError(f"no flash benchmark at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_flash(project: Path, work: Path, rec: _Recorder, *, size_mib: int, repeat: int) -> None:
    from pibake.flash import writer as flash

    if os.geteuid() != 0:
        for name in ("flash-dd", "flash-pibake", "flash-bmap-30pct"):
            rec.cannot(name, "flash", "needs root for a loop device standing in for the card")
        return
    bf: Any = _bench_flash_module(project)
    # flash() narrates every write at INFO; here only the times matter.
    flash_log = logging.getLogger(flash.__name__)
    level = flash_log.level
    flash_log.setLevel(logging.WARNING)
    try:
        _bench_flash_runs(bf, work, rec, size_mib=size_mib, repeat=repeat)
    finally:
        flash_log.setLevel(level)


def _bench_flash_runs(bf: Any, work: Path, rec: _Recorder, *, size_mib: int, repeat: int) -> None:
    from pibake.flash import writer as flash

    work.mkdir(parents=True, exist_ok=True)
    size = size_mib * MIB
    full, sparse = bf.make_images(work, size)
    dev, _ = bf.make_card(work, size + 64 * MIB, direct_io=True)
    try:
        for img in (full, sparse):  # both tools read the image from the page cache
            with img.open("rb") as f:
                while f.read(4 * MIB):
                    pass

        def pibake(img: Path, *, full_write: bool, verify: bool) -> Callable[[], object]:
            return lambda: flash.flash(
                img, dev, full=full_write, verify=verify, eject=False, allow_non_removable=True, assume_yes=True
            )

        def dd() -> None:
            run(["dd", f"if={full}", f"of={dev}", "bs=4M", "conv=fsync", "status=none"])

        mapped = f"{size_mib} MiB image, 30% data"
        runs: list[tuple[str, Callable[[], object], str | None, str]] = [
            ("flash-dd", dd, None, f"dd bs=4M conv=fsync, {size_mib} MiB"),
            ("flash-pibake", pibake(full, full_write=True, verify=False), "flash-dd", "--no-verify"),
            ("flash-pibake-verified", pibake(full, full_write=True, verify=True), "flash-dd", "write + read-back"),
            ("flash-full-30pct", pibake(sparse, full_write=True, verify=False), None, f"{mapped}, every byte"),
            ("flash-bmap-30pct", pibake(sparse, full_write=False, verify=False), "flash-full-30pct", f"{mapped}, bmap"),
        ]
        for _ in range(repeat):
            for name, fn, ref, note in runs:
                with rec.guard(name, "flash"):
                    rec.add(name, "flash", bf.timed(fn, dev), ratio_to=ref, note=note)
    finally:
        run(["losetup", "-d", str(dev)])
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- the emulated Pi


def _changed(output: str) -> int | None:
    """The total of changed= in ansible-playbook's recap."""
    counts = [int(n) for n in re.findall(r"\bchanged=(\d+)", output)]
    return sum(counts) if counts else None


def _boot_profile(
    img: Path,
    profile: str,
    rec: _Recorder,
    *,
    wheel: Wheel | None,
    infer: bool,
    boot: bool,
    runs: int,
) -> None:
    """Boot IMG (copy-on-write) on PROFILE, time boot and shutdown, and the model if asked."""
    infer_name = f"infer-guest-{profile}"
    can_infer = infer
    if infer:
        reason = "no tflite wheel" if wheel is None else cannot_run_model(wheel.path, profile)
        if reason:
            rec.cannot(infer_name, "inference", reason)
            can_infer = False
    if not (boot or can_infer):
        return
    guest = emulator.start(img, profile=profile, name=GUEST_NAME, inventory=None, timeout=600)
    stopped: emulator.Stopped | None = None
    try:
        if boot:
            rec.add(f"boot-{profile}", "boot", guest.boot_seconds, note=f"to SSH, cpu {guest.cpu}")
        if can_infer:
            with rec.guard(infer_name, "inference"):
                timing = infer_on_guest(guest, runs=runs)
                rec.add(
                    infer_name, "inference", *timing["seconds"], ratio_to="infer-host",
                    note=f"{timing['runtime']}, per image, cpu {guest.cpu}",
                )  # fmt: skip
    finally:
        stopped = emulator.stop(GUEST_NAME)
    if boot:
        rec.add(f"shutdown-{profile}", "boot", stopped.seconds, note="clean" if stopped.clean else "NOT clean: killed")


def bench_emulated(
    project: Path,
    work: Path,
    rec: _Recorder,
    *,
    selected: Sequence[str],
    profile_names: Sequence[str],
    wheel: Wheel | None,
    repeat: int,
    runs: int,
) -> None:
    built = image.build_image(image.default_spec())
    work.mkdir(parents=True, exist_ok=True)
    prepared = work / "prepared.img"
    sd = any(profiles.load(p).needs_power_of_two for p in profile_names)
    prepare.prepare(
        built.path, output=prepared, power_of_two=sd, console="ttyAMA0", ssh_pubkey=sshkey.ensure_keypair().public_key
    )
    provisioned = work / "provisioned.img"
    needs_provisioned = "converge" in selected or "infer-guest" in selected
    try:
        for i in range(repeat):
            log.info("bench: emulated steps, repetition %d of %d", i + 1, repeat)
            if needs_provisioned:
                with rec.guard("converge", "converge"):
                    _converge(project, prepared, provisioned, work, rec, timed="converge" in selected)
            img = provisioned if provisioned.exists() else prepared
            for profile in profile_names:
                with rec.guard(f"boot-{profile}", "boot"):
                    _boot_profile(
                        img,
                        profile,
                        rec,
                        wheel=wheel,
                        infer="infer-guest" in selected and provisioned.exists(),
                        boot="boot" in selected,
                        runs=runs,
                    )
            if "infer-guest" in selected and not provisioned.exists():
                for profile in profile_names:
                    rec.cannot(f"infer-guest-{profile}", "inference", "the image could not be provisioned (converge)")
    finally:
        prepared.unlink(missing_ok=True)
        provisioned.unlink(missing_ok=True)


def _converge(project: Path, prepared: Path, provisioned: Path, work: Path, rec: _Recorder, *, timed: bool) -> None:
    provisioned.unlink(missing_ok=True)
    run(["cp", "--sparse=always", str(prepared), str(provisioned)])
    inventory = work / "inventory.yml"
    inventory.unlink(missing_ok=True)
    emulator.start(
        provisioned, profile=CONVERGE_PROFILE, name=GUEST_NAME, persist=True, inventory=inventory, timeout=600
    )
    ok = False
    try:
        for name in ("converge", "converge-again"):
            t0 = time.monotonic()
            out = provision(project, inventory)
            seconds = time.monotonic() - t0
            if timed:
                rec.add(name, "converge", seconds, note=f"site.yml on {CONVERGE_PROFILE}, changed={_changed(out)}")
        ok = True
    finally:
        stopped = emulator.stop(GUEST_NAME)
        inventory.unlink(missing_ok=True)
        if not (ok and stopped.clean):
            provisioned.unlink(missing_ok=True)


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class BenchResult:
    steps: tuple[Step, ...]
    machine: dict[str, Any]
    json_path: Path
    png_path: Path
    table_path: Path
    table: str


def _pick(selected: Sequence[str] | None, *, quick: bool) -> list[str]:
    chosen = list(selected) if selected else list(QUICK_STEPS if quick else STEPS)
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise PibakeError(f"unknown bench step(s) {', '.join(unknown)}; the steps are: {', '.join(STEPS)}")
    return [s for s in STEPS if s in chosen]


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
) -> BenchResult:
    """Run the selected steps REPEAT times (once with QUICK) and write bench.json, bench.png and bench.md."""
    if repeat < 1:
        raise PibakeError(f"--repeat takes a positive number, not {repeat}")
    if not (project / "site.yml").is_file():
        raise PibakeError(f"no site.yml in {project}: run the bench from the pibake checkout (or pass --project)")
    if quick:
        repeat = 1
    selected = _pick(steps, quick=quick)
    names = list(profile_names or profiles.available())
    for name in names:
        profiles.load(name)
    runs = 3 if quick else 5
    flash_mib = flash_size_mib or (64 if quick else 1024)
    machine = machine_facts()
    output_dir.mkdir(parents=True, exist_ok=True)
    work = output_dir / "work"
    rec = _Recorder()
    log.info("bench: steps %s, %d repetition(s), profiles %s", ", ".join(selected), repeat, ", ".join(names))

    wheel: Wheel | None = None
    wheel_error = ""
    if {"infer-qemu-user", "infer-guest"} & set(selected):
        try:
            wheel = tflite_wheel(project)
        except PibakeError as e:
            wheel_error = f"no armv7l tflite-runtime wheel: {e}"

    if "image-cold" in selected:
        spec = image.default_spec()
        for _ in range(repeat):
            with rec.guard("image-cold", "image"):
                if cold_rootfs:
                    shutil.rmtree(cache_root() / "rootfs" / recipe_hash(spec.base.key()), ignore_errors=True)
                built = image.build_image(spec, rebuild=True)
                what = "rootfs (debootstrap) and image" if cold_rootfs else "image from the cached rootfs"
                rec.add("image-cold", "image", built.seconds, note=f"{what}; --cold-rootfs: debootstrap too")
    if "image-cached" in selected:
        for _ in range(repeat):
            with rec.guard("image-cached", "image"):
                built = image.build_image(image.default_spec(), output=work / "base.img")
                note = "cache hit, published" if built.cached else "cache MISS: built"
                rec.add("image-cached", "image", built.seconds, note=note)
        (work / "base.img").unlink(missing_ok=True)
        (work / "base.img.sha256").unlink(missing_ok=True)

    if "infer-host" in selected:
        for _ in range(repeat):
            with rec.guard("infer-host", "inference"):
                timing = infer_on_host(project, runs=runs)
                rec.add("infer-host", "inference", *timing["seconds"], note=f"{timing['runtime']}, x86_64, per image")
    if "infer-qemu-user" in selected:
        cpus: dict[str, list[str]] = {}
        for name in names:
            prof = profiles.load(name)
            cpus.setdefault(prof.resolve_cpu(None), []).append(name)
        root: Path | None = None
        for cpu, users in cpus.items():
            step = f"infer-qemu-user-{cpu}"
            reason = wheel_error or (cannot_run_model(wheel.path, users[0], cpu) if wheel else "")
            if reason:
                rec.cannot(step, "inference", reason)
                continue
            assert wheel is not None
            for _ in range(repeat):
                with rec.guard(step, "inference"):
                    root = root or qemu_user_root(project, wheel)
                    timing = infer_on_qemu_user(root, cpu, runs=runs)
                    rec.add(
                        step, "inference", *timing["seconds"], ratio_to="infer-host",
                        note=f"{timing['runtime']}, per image, QEMU_CPU={cpu} ({', '.join(users)})",
                    )  # fmt: skip

    if {"boot", "converge", "infer-guest"} & set(selected):
        try:
            bench_emulated(
                project, work / "emulated", rec, selected=selected, profile_names=names, wheel=wheel, repeat=repeat,
                runs=runs,
            )  # fmt: skip
        except PibakeError as e:
            rec.fail("emulated", "boot", e)

    if "serve" in selected:
        reason = serving_unavailable(project)
        for endpoint in ("serve-predict", "serve-v2-infer"):
            if reason:
                rec.cannot(endpoint, "serving", reason)

    if "flash" in selected:
        try:
            bench_flash(project, work / "flash", rec, size_mib=flash_mib, repeat=repeat)
        except PibakeError as e:
            rec.fail("flash", "flash", e)

    shutil.rmtree(work, ignore_errors=True)
    # Grouped as the pipeline runs (inference on the host, qemu-user and the guest side by side).
    all_steps = tuple(sorted(rec.steps.values(), key=lambda s: GROUPS.index(s.group)))
    data = to_json(machine, all_steps, repeat=repeat, quick=quick)
    validate(data)
    json_path = output_dir / "bench.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    table = format_table(all_steps)
    table_path = output_dir / "bench.md"
    facts = (
        f"{machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, {machine['qemu_version']}, "
        f"Linux {machine['kernel']}, pibake {machine['pibake_version']}, {machine['date']}, "
        f"{repeat} repetition(s), load average at start {machine['load_average_at_start'][0]}"
    )
    table_path.write_text(f"{facts}\n\n{table}\n")
    png_path = render_chart(all_steps, machine, output_dir / "bench.png")
    return BenchResult(all_steps, machine, json_path, png_path, table_path, facts + "\n\n" + table)
