"""The bench's inference steps: the demo model timed on this machine, under qemu-user, and on a booted guest.

The Pi-side package's ``time`` command (``python3 -m pibake_target time``) does the timing: on the host from
the project's ``target/``, in the chroot from a copy of it, on the guest as the python_runtime role installed it.
This module puts the package, the model and the wheel where it runs, and reads its numbers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pibake.bench.context import BENCH_BASE, Context
from pibake.bench.wheel import Wheel, cannot_run_model
from pibake.emulate import guest as emulator
from pibake.emulate import profiles
from pibake.emulate.ssh import ssh_run
from pibake.errors import PibakeError
from pibake.image import build as image
from pibake.util.cache import cache_root, recipe_hash
from pibake.util.proc import run

log = logging.getLogger(__name__)

PACKAGE = "pibake_target"
GUEST_MODEL_DIR = "/opt/pibake/model/current"
# Where pibake.raspberry.python_runtime installs the package (python_runtime_package_dir).
GUEST_PACKAGE_DIR = "/usr/local/lib/pibake"
CHROOT_DIR = "/opt/pibake-bench"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _timing_args(model_dir: str, samples: Sequence[str], *, runs: int) -> list[str]:
    return [
        "-B", "-m", PACKAGE, "time", "--model", f"{model_dir}/car.tflite", "--labels", f"{model_dir}/labels.txt",
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
    """The timing script's result for the model under PROJECT/models, on this machine's Python."""
    models = project / "models"
    samples = sorted(str(p) for p in (models / "samples").glob("*.png"))
    env = {**os.environ, "PYTHONPATH": str(project / "target")}
    return _parse_timing(run([sys.executable, *_timing_args(str(models), samples, runs=runs)], env=env))


def qemu_user_root(project: Path, wheel: Wheel) -> Path:
    """A copy of the cached armhf root with the wheel, the model and the timing script in it (cached)."""
    image.ensure_binfmt()
    base = image.default_spec(base=BENCH_BASE).base
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
    # The model and the package are refreshed every time: they are small and may have changed.
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("car.tflite", "labels.txt"):
        shutil.copy2(project / "models" / name, work / name)
    shutil.copytree(project / "models" / "samples", work / "samples")
    shutil.copytree(project / "target" / PACKAGE, work / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def infer_on_qemu_user(root: Path, cpu: str, *, runs: int) -> dict[str, Any]:
    """The timing script's result in the chroot ROOT (``qemu_user_root``), qemu-user emulating CPU."""
    samples = sorted(
        f"{CHROOT_DIR}/samples/{p.name}" for p in (root / CHROOT_DIR.lstrip("/") / "samples").glob("*.png")
    )
    argv = ["chroot", str(root), "python3", *_timing_args(CHROOT_DIR, samples, runs=runs)]
    env = {"PATH": CHROOT_PATH, "HOME": "/root", "QEMU_CPU": cpu, "PYTHONPATH": CHROOT_DIR}
    return _parse_timing(run(argv, env=env, timeout=900))


def infer_on_guest(guest: emulator.Guest, *, runs: int) -> dict[str, Any]:
    """The time command's result on the booted GUEST, over SSH, with the model and the package its roles installed."""
    args = " ".join(_timing_args(GUEST_MODEL_DIR, [f"{GUEST_MODEL_DIR}/samples/*.png"], runs=runs))
    cmd = f"PYTHONPATH={GUEST_PACKAGE_DIR} python3 {args}"
    code, out = ssh_run(guest, cmd, timeout=900)
    if code != 0:
        raise PibakeError(f"the timing script failed on the guest (exit {code}):\n{out[-1500:]}")
    return _parse_timing(out)


# ---------------------------------------------------------------- the runners


def infer_host(ctx: Context) -> None:
    """infer-host: the model on this machine's x86_64 TFLite, per image."""
    for _ in range(ctx.repeat):
        with ctx.rec.guard("infer-host", "inference"):
            timing = infer_on_host(ctx.project, runs=ctx.runs)
            ctx.rec.add("infer-host", "inference", *timing["seconds"], note=f"{timing['runtime']}, x86_64, per image")


def infer_qemu_user(ctx: Context) -> None:
    """infer-qemu-user: the model in a chroot of the armhf root under qemu-user, once for each profile's CPU."""
    cpus: dict[str, list[str]] = {}
    for name in ctx.profile_names:
        prof = profiles.load(name)
        cpus.setdefault(prof.resolve_cpu(None), []).append(name)
    root: Path | None = None
    for cpu, users in cpus.items():
        step = f"infer-qemu-user-{cpu}"
        wheel = ctx.wheel
        reason = ctx.wheel_error or (cannot_run_model(wheel.path, users[0], cpu) if wheel else "")
        if reason:
            ctx.rec.cannot(step, "inference", reason)
            continue
        assert wheel is not None
        for _ in range(ctx.repeat):
            with ctx.rec.guard(step, "inference"):
                root = root or qemu_user_root(ctx.project, wheel)
                timing = infer_on_qemu_user(root, cpu, runs=ctx.runs)
                ctx.rec.add(
                    step, "inference", *timing["seconds"], ratio_to="infer-host",
                    note=f"{timing['runtime']}, per image, QEMU_CPU={cpu} ({', '.join(users)})",
                )  # fmt: skip
