"""The bench's inference steps: the demo model timed on this machine, under qemu-user, and on a booted guest.

The Pi-side package's ``time`` command (``python3 -m pibake_target time``) does the timing: on the host from
the project's ``target/``, in the chroot from a copy of it, on the guest as the python_runtime role installed it.
This module puts the package, the model and the wheel where it runs, and reads its numbers.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pibake import bake, preflight_dynamic, resources, wheels
from pibake.bench.context import ARM64_BASE, BENCH_BASE, Context
from pibake.bench.wheel import Wheel, cannot_run_model
from pibake.emulate import guest as emulator
from pibake.emulate import profiles, user
from pibake.emulate.ssh import ssh_run
from pibake.errors import PibakeError
from pibake.image import build as image
from pibake.util.cache import cache_root, recipe_hash
from pibake.util.proc import last_json_object, run

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
    """The time command's JSON object: the last line that is one (LiteRT prints "INFO: Created TensorFlow Lite
    XNNPACK delegate for CPU." on stderr, which SSH interleaves with stdout, after it or before)."""
    result = last_json_object(out)
    if result is None or not result.get("seconds"):
        raise PibakeError(f"the timing script printed no timings:\n{out[-1500:]}")
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


def infer_on_guest(guest: emulator.Guest, *, runs: int, python: str = "python3") -> dict[str, Any]:
    """The time command's result on the booted GUEST, over SSH, with the model and the package its roles installed,
    run by PYTHON (the runtime's: the venv's on the bases whose runtime comes from a lock)."""
    args = " ".join(_timing_args(GUEST_MODEL_DIR, [f"{GUEST_MODEL_DIR}/samples/*.png"], runs=runs))
    cmd = f"PYTHONPATH={GUEST_PACKAGE_DIR} {python} {args}"
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


class QemuUserCrash(PibakeError):
    """The emulator, not the core, failed the program: what runs on the board cannot be timed with this QEMU."""


def arm64_runtime_sites(work: Path) -> list[Path]:
    """The wheels of ARM64_BASE's TFLite runtime (LiteRT's lock, pibake.bake.LOCKED_RUNTIMES), downloaded to the
    wheel cache and checked against the lock (pibake.wheels.fetch), each unpacked into a directory below WORK as
    site-packages would hold it. Raises what wheels.fetch raises (no network, a digest that differs)."""
    lock = bake.platform_runtime(ARM64_BASE).lock
    assert lock is not None, f"{ARM64_BASE} installs its runtime from a lock"
    fetched = wheels.fetch(resources.LOCK_DIR / lock)
    return [preflight_dynamic.unpack(path, work / f"site-{i}") for i, (_, path, _) in enumerate(fetched.wheels)]


def infer_on_qemu_aarch64(
    project: Path, sysroot: Path, sites: Sequence[Path], cpu: str, *, runs: int
) -> dict[str, Any]:
    """The timing script's result for PROJECT/models under qemu-aarch64 on core CPU: SYSROOT's Python 3.13 and numpy
    (the cached arm64 root filesystem, read only), the runtime from SITES (arm64_runtime_sites), the Pi-side package
    from this checkout. The files are the host's: qemu-user finds a path in SYSROOT first, then here.

    Raises PibakeError when the run fails (a SIGILL included: the core lacks what the runtime chose to run).
    """
    # Absolute: the program runs in a scratch directory.
    models = project.resolve() / "models"
    samples = sorted(str(p) for p in (models / "samples").glob("*.png"))
    with tempfile.TemporaryDirectory(prefix="pibake-bench-") as tmp:
        home = Path(tmp)
        env = preflight_dynamic.python_env(sysroot, [*sites, resources.TARGET], home=home)
        argv = [str(sysroot / preflight_dynamic.PYTHON), *_timing_args(str(models), samples, runs=runs)]
        done = user.run_on_core(argv, cpu=cpu, sysroot=sysroot, arch="arm64", env=env, cwd=home, timeout=900)
    if done.signal == signal.SIGSEGV:
        raise QemuUserCrash(
            f"LiteRT's Interpreter dies of SIGSEGV under {user.version('arm64')} -cpu {cpu}, as under QEMU 7.2's user "
            "mode on every core (measured 2026-11-30; 10.0.2 from bookworm-backports runs it): put a newer "
            "qemu-aarch64-static first in PATH"
        )
    if done.outcome is not user.Outcome.OK:
        raise PibakeError(
            f"the timing script {done.outcome.value} under qemu-aarch64 -cpu {cpu} ({done.describe_exit()}):\n"
            + done.stderr_tail(1500)
        )
    return _parse_timing(done.stdout)


def infer_qemu_user(ctx: Context) -> None:
    """infer-qemu-user: the model under qemu-user once for each core of the profiles: the armhf profiles' in a chroot
    of the armhf root with tflite-runtime, the arm64 profiles' (every core virt64 offers: the Pi 3's, 4's and 5's)
    with LiteRT on the arm64 root (infer-qemu-user-arm64-CORE)."""
    cpus: dict[str, list[str]] = {}
    cores64: dict[str, list[str]] = {}
    for name in ctx.profile_names:
        prof = profiles.load(name)
        if prof.arch == "arm64":
            for cpu in prof.cpus:
                cores64.setdefault(cpu, []).append(name)
        else:
            cpus.setdefault(prof.resolve_cpu(None), []).append(name)
    _infer_qemu_armhf(ctx, cpus)
    if cores64:
        _infer_qemu_arm64(ctx, cores64)


def _infer_qemu_arm64(ctx: Context, cores: dict[str, list[str]]) -> None:
    steps = {cpu: f"infer-qemu-user-arm64-{cpu}" for cpu in cores}
    try:
        sysroot = preflight_dynamic.require_sysroot(None)
    except PibakeError as e:
        for step in steps.values():
            ctx.rec.cannot(step, "inference", str(e))
        return
    with tempfile.TemporaryDirectory(prefix="pibake-bench-sites-") as tmp:
        try:
            sites = arm64_runtime_sites(Path(tmp))
        except PibakeError as e:
            for step in steps.values():
                ctx.rec.fail(step, "inference", e)
            return
        for cpu, users in cores.items():
            for _ in range(ctx.repeat):
                with ctx.rec.guard(steps[cpu], "inference"):
                    try:
                        timing = infer_on_qemu_aarch64(ctx.project, sysroot, sites, cpu, runs=ctx.runs)
                    except QemuUserCrash as e:
                        ctx.rec.cannot(steps[cpu], "inference", str(e))
                        break
                    ctx.rec.add(
                        steps[cpu], "inference", *timing["seconds"], ratio_to="infer-host",
                        note=f"{timing['runtime']}, per image, qemu-aarch64 -cpu {cpu} ({', '.join(users)})",
                    )  # fmt: skip


def _infer_qemu_armhf(ctx: Context, cpus: dict[str, list[str]]) -> None:
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
