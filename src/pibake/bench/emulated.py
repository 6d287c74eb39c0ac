"""The bench's emulated-Pi steps: boot and shutdown on each profile, converge with site.yml, the model on the guest.

One runner measures the four, because they share the guests: the image is provisioned
once (converge), then each profile boots it once, timing the boot and, on the same guest,
the model and its inference service (serve: the load of pibake.bench.serving through the
guest's port 8000 as forwarded to the host, compared with the same service run on this
machine first). Only one emulated guest runs at a time.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pibake import bake, boards
from pibake.bench import serving
from pibake.bench.context import ARM64_BASE, ARM64_BOARD, BENCH_BASE, Context
from pibake.bench.host_service import measure_on_host
from pibake.bench.inference import infer_on_guest
from pibake.bench.results import Recorder
from pibake.bench.wheel import Wheel, cannot_run_model
from pibake.disk.sparse import copy_file
from pibake.emulate import guest as emulator
from pibake.emulate import profiles, sshkey
from pibake.errors import PibakeError
from pibake.image import build as image
from pibake.image import prepare
from pibake.provision import provision

log = logging.getLogger(__name__)

GUEST_NAME = "pibake-bench"
CONVERGE_PROFILE = "virt"


@dataclass(frozen=True)
class Platform:
    """What the bench boots on the profiles of one architecture: the base image (made for BOARD), where it converges
    site.yml and with which extra vars (the runtime's lock), the Python on the guest that runs the model, and the
    suffix of its converge rows."""

    arch: str
    base: str
    board: str | None
    converge_profile: str
    extra_vars: dict[str, str]
    python: str
    suffix: str


def platforms() -> dict[str, Platform]:
    """The armhf profiles boot BENCH_BASE (tflite-runtime in the system Python), the arm64 ones ARM64_BASE made for a
    Pi 4, provisioned as `pibake bake` does it there (LiteRT from its lock into the venv, pibake.bake)."""
    runtime = bake.platform_runtime(ARM64_BASE)
    assert runtime.lock is not None
    return {
        "armhf": Platform("armhf", BENCH_BASE, None, CONVERGE_PROFILE, {}, "python3", ""),
        "arm64": Platform(
            "arm64", ARM64_BASE, ARM64_BOARD, "virt64",
            {"python_runtime_lock": runtime.lock, "python_runtime_board": ARM64_BOARD}, runtime.python, "-arm64",
        ),
    }  # fmt: skip


@dataclass(frozen=True)
class Launch:
    """One boot of the bench: PROFILE with CPU (None: the profile's own), its rows named by LABEL; SERVE: the
    service is loaded there too (once per profile, on its own core)."""

    profile: str
    cpu: str | None
    label: str
    serve: bool = True


def launches(profile_names: Sequence[str]) -> list[Launch]:
    """Each profile on its own core, then, for an arm64 profile that offers several (virt64: the Pi 3's A53, the
    Pi 4's A72, the Pi 5's A76), boots on the others as PROFILE-CORE, without the service's load."""
    found = [Launch(name, None, name) for name in profile_names]
    for name in profile_names:
        prof = profiles.load(name)
        if prof.arch == "arm64":
            own = prof.resolve_cpu(None)
            found += [Launch(name, cpu, f"{name}-{cpu}", serve=False) for cpu in prof.cpus if cpu != own]
    return found


# Seconds a booted guest's service may take to answer GET / (the role's inference_service_start_timeout).
SERVICE_READY_SECONDS = 300.0


def emulated(ctx: Context) -> None:
    """boot, converge, infer-guest and serve, those of them that are selected; a failure outside a step is its own row.

    serve measures the service on this machine first, with no guest running, for the guests' rows to compare with.
    """
    serve = ctx.serve_plan if "serve" in ctx.selected else None
    wheel = ctx.wheel if "infer-guest" in ctx.selected or serve else None
    if serve:
        measure_on_host(ctx.project, ctx.work / "serving", ctx.rec, serve, repeat=ctx.repeat)
    try:
        bench_emulated(
            ctx.project, ctx.work / "emulated", ctx.rec, selected=ctx.selected, profile_names=ctx.profile_names,
            wheel=wheel, repeat=ctx.repeat, runs=ctx.runs, serve=serve,
            samples=serving.sample_images(ctx.project),
        )  # fmt: skip
    except PibakeError as e:
        ctx.rec.fail("emulated", "boot", e)


def _changed(output: str) -> int | None:
    """The total of changed= in ansible-playbook's recap."""
    counts = [int(n) for n in re.findall(r"\bchanged=(\d+)", output)]
    return sum(counts) if counts else None


def _boot_profile(
    img: Path,
    launch: Launch,
    rec: Recorder,
    *,
    wheel: Wheel | None,
    infer: bool,
    boot: bool,
    runs: int,
    serve: serving.LoadPlan | None = None,
    samples: Sequence[Path] = (),
    python: str = "python3",
) -> None:
    """Boot IMG (copy-on-write) as LAUNCH says: time cold boot, shutdown and snapshot restore; the model (run by
    PYTHON on the guest); the service. WHEEL: the armhf wheel whose native code is checked against the core first
    (None on arm64, where only running it tells: pibake.preflight_dynamic)."""
    profile, label = launch.profile, launch.label
    infer_name = f"infer-guest-{label}"
    serve = serve if launch.serve else None
    prof = profiles.load(profile)
    try:
        profiles.check_machine(prof)
    except PibakeError as e:
        for name, group in [(f"boot-{label}", "boot"), (infer_name, "inference")]:
            rec.cannot(name, group, str(e))
        for endpoint in serving.ENDPOINTS if serve is not None else ():
            rec.cannot(f"{endpoint}-{label}", serving.GROUP, str(e))
        return
    can_infer = infer
    if infer and prof.arch != "arm64":
        reason = "no tflite wheel" if wheel is None else cannot_run_model(wheel.path, profile, launch.cpu)
        if reason:
            rec.cannot(infer_name, "inference", reason)
            can_infer = False
    can_serve = serve is not None
    if serve is not None and wheel is not None and prof.arch != "arm64":
        # The service loads the model when it starts: where the model cannot run, the service never answers.
        reason = cannot_run_model(wheel.path, profile, launch.cpu)
        if reason:
            for endpoint in serving.ENDPOINTS:
                rec.cannot(f"{endpoint}-{label}", serving.GROUP, f"the service cannot load the model: {reason}")
            can_serve = False
    if not (boot or can_infer or can_serve):
        return
    # Cold, saving a snapshot on the way; then (boot step) the same launch restored from it.
    guest = emulator.start(
        img, profile=profile, cpu=launch.cpu, name=GUEST_NAME, inventory=None, timeout=600, renew_snapshot=True
    )
    stopped: emulator.Stopped | None = None
    try:
        if boot:
            rec.add(f"boot-{label}", "boot", guest.boot_seconds, note=f"cold, to SSH, cpu {guest.cpu}")
            stopped = emulator.stop(GUEST_NAME)
            rec.add(f"shutdown-{label}", "boot", stopped.seconds, note="clean" if stopped.clean else "NOT clean")
            t0 = time.monotonic()
            guest = emulator.start(img, profile=profile, cpu=launch.cpu, name=GUEST_NAME, inventory=None, timeout=600)
            how = "from its snapshot" if guest.snapshot else "NOT restored: the profile cannot be saved, booted cold"
            rec.add(f"restore-{label}", "boot", time.monotonic() - t0, note=f"start to SSH, {how}")
        if can_infer:
            with rec.guard(infer_name, "inference"):
                timing = infer_on_guest(guest, runs=runs, python=python)
                rec.add(
                    infer_name, "inference", *timing["seconds"], ratio_to="infer-host",
                    note=f"{timing['runtime']}, per image, cpu {guest.cpu}",
                )  # fmt: skip
        if can_serve and serve is not None:
            _serve_on_guest(guest, rec, serve, samples)
    finally:
        emulator.stop(GUEST_NAME)


def bench_emulated(
    project: Path,
    work: Path,
    rec: Recorder,
    *,
    selected: Sequence[str],
    profile_names: Sequence[str],
    wheel: Wheel | None,
    repeat: int,
    runs: int,
    serve: serving.LoadPlan | None = None,
    samples: Sequence[Path] = (),
) -> None:
    """For each architecture among PROFILE_NAMES' (platforms()), provision a prepared copy of its base image
    (converge), then boot it on each of its launches (launches()), REPEAT times.

    With SERVE, the service on each booted guest gets that load of SAMPLES.
    """
    by_arch: dict[str, list[str]] = {}
    for name in profile_names:
        by_arch.setdefault(profiles.load(name).arch, []).append(name)
    for arch, names in by_arch.items():
        platform = platforms()[arch]
        with rec.guard(f"emulated{platform.suffix}", "boot"):
            _bench_platform(
                project, work / arch, rec, platform, selected=selected, profile_names=names,
                wheel=wheel if arch == "armhf" else None, repeat=repeat, runs=runs, serve=serve, samples=samples,
            )  # fmt: skip


def _bench_platform(
    project: Path,
    work: Path,
    rec: Recorder,
    platform: Platform,
    *,
    selected: Sequence[str],
    profile_names: Sequence[str],
    wheel: Wheel | None,
    repeat: int,
    runs: int,
    serve: serving.LoadPlan | None,
    samples: Sequence[Path],
) -> None:
    spec = image.default_spec(base=platform.base, board=platform.board or boards.DEFAULT_BOARD)
    built = image.build_image(spec)
    work.mkdir(parents=True, exist_ok=True)
    prepared = work / "prepared.img"
    sd = any(profiles.load(p).needs_power_of_two for p in profile_names)
    prepare.prepare(
        built.path, output=prepared, power_of_two=sd, console="ttyAMA0", ssh_pubkey=sshkey.ensure_keypair().public_key
    )
    provisioned = work / "provisioned.img"
    needs_provisioned = "converge" in selected or "infer-guest" in selected or serve is not None
    try:
        for i in range(repeat):
            log.info("bench: emulated steps (%s), repetition %d of %d", platform.arch, i + 1, repeat)
            if needs_provisioned:
                with rec.guard(f"converge{platform.suffix}", "converge"):
                    _converge(project, prepared, provisioned, work, rec, platform, timed="converge" in selected)
            img = provisioned if provisioned.exists() else prepared
            for launch in launches(profile_names):
                with rec.guard(f"boot-{launch.label}", "boot"):
                    _boot_profile(
                        img,
                        launch,
                        rec,
                        wheel=wheel,
                        infer="infer-guest" in selected and provisioned.exists(),
                        boot="boot" in selected,
                        runs=runs,
                        serve=serve if provisioned.exists() else None,
                        samples=samples,
                        python=platform.python,
                    )
            if not provisioned.exists():
                unprovisioned = "the image could not be provisioned (converge)"
                for launch in launches(profile_names):
                    if "infer-guest" in selected:
                        rec.cannot(f"infer-guest-{launch.label}", "inference", unprovisioned)
                    if serve is not None and launch.serve:
                        for endpoint in serving.ENDPOINTS:
                            rec.cannot(f"{endpoint}-{launch.label}", serving.GROUP, unprovisioned)
    finally:
        prepared.unlink(missing_ok=True)
        provisioned.unlink(missing_ok=True)


def _serve_on_guest(guest: emulator.Guest, rec: Recorder, plan: serving.LoadPlan, samples: Sequence[Path]) -> None:
    """The serving rows of GUEST's profile: the load through the guest's port 8000, once its service answers."""
    names = [f"{endpoint}-{guest.profile}" for endpoint in serving.ENDPOINTS]
    try:
        port = guest.host_port(serving.GUEST_PORT)
        serving.wait_ready(
            "127.0.0.1", port, timeout=SERVICE_READY_SECONDS,
            hint="; on the guest: systemctl status pibake-inference.service",
        )  # fmt: skip
    except PibakeError as e:
        for name in names:
            rec.fail(name, serving.GROUP, e)
        return
    serving.measure(
        rec, "127.0.0.1", port, samples, plan, suffix=guest.profile, where=f"{guest.profile}, cpu {guest.cpu}",
        ratio_suffix="host",
    )  # fmt: skip


def _converge(
    project: Path, prepared: Path, provisioned: Path, work: Path, rec: Recorder, platform: Platform, *, timed: bool
) -> None:
    provisioned.unlink(missing_ok=True)
    copy_file(prepared, provisioned)
    inventory = work / "inventory.yml"
    inventory.unlink(missing_ok=True)
    where = platform.converge_profile
    emulator.start(
        provisioned, profile=where, board=platform.board, name=GUEST_NAME, persist=True, inventory=inventory,
        timeout=600,
    )  # fmt: skip
    ok = False
    try:
        for name in ("converge", "converge-again"):
            t0 = time.monotonic()
            out = provision(project, inventory, extra_vars=platform.extra_vars)
            seconds = time.monotonic() - t0
            if timed:
                rec.add(
                    name + platform.suffix, "converge", seconds,
                    note=f"site.yml on {where} ({platform.base}), changed={_changed(out)}",
                )  # fmt: skip
        ok = True
    finally:
        stopped = emulator.stop(GUEST_NAME)
        inventory.unlink(missing_ok=True)
        if not (ok and stopped.clean):
            provisioned.unlink(missing_ok=True)
