"""The bench's emulated-Pi steps: boot and shutdown on each profile, converge with site.yml, the model on the guest.

One runner measures the three, because they share the guests: the image is provisioned
once (converge), then each profile boots it once, timing the boot and, on the same guest,
the model. Only one emulated guest runs at a time.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from pibake.bench.context import Context
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


def emulated(ctx: Context) -> None:
    """boot, converge and infer-guest, those of them that are selected; a failure outside a step is its own row."""
    wheel = ctx.wheel if "infer-guest" in ctx.selected else None
    try:
        bench_emulated(
            ctx.project, ctx.work / "emulated", ctx.rec, selected=ctx.selected, profile_names=ctx.profile_names,
            wheel=wheel, repeat=ctx.repeat, runs=ctx.runs,
        )  # fmt: skip
    except PibakeError as e:
        ctx.rec.fail("emulated", "boot", e)


def _changed(output: str) -> int | None:
    """The total of changed= in ansible-playbook's recap."""
    counts = [int(n) for n in re.findall(r"\bchanged=(\d+)", output)]
    return sum(counts) if counts else None


def _boot_profile(
    img: Path,
    profile: str,
    rec: Recorder,
    *,
    wheel: Wheel | None,
    infer: bool,
    boot: bool,
    runs: int,
) -> None:
    """Boot IMG (copy-on-write) on PROFILE: time the cold boot, shutdown and a snapshot restore, and the model."""
    infer_name = f"infer-guest-{profile}"
    can_infer = infer
    if infer:
        reason = "no tflite wheel" if wheel is None else cannot_run_model(wheel.path, profile)
        if reason:
            rec.cannot(infer_name, "inference", reason)
            can_infer = False
    if not (boot or can_infer):
        return
    # Cold, saving a snapshot on the way; then (boot step) the same launch restored from it.
    guest = emulator.start(img, profile=profile, name=GUEST_NAME, inventory=None, timeout=600, renew_snapshot=True)
    stopped: emulator.Stopped | None = None
    try:
        if boot:
            rec.add(f"boot-{profile}", "boot", guest.boot_seconds, note=f"cold, to SSH, cpu {guest.cpu}")
            stopped = emulator.stop(GUEST_NAME)
            rec.add(f"shutdown-{profile}", "boot", stopped.seconds, note="clean" if stopped.clean else "NOT clean")
            t0 = time.monotonic()
            guest = emulator.start(img, profile=profile, name=GUEST_NAME, inventory=None, timeout=600)
            how = "from its snapshot" if guest.snapshot else "NOT restored: the profile cannot be saved, booted cold"
            rec.add(f"restore-{profile}", "boot", time.monotonic() - t0, note=f"start to SSH, {how}")
        if can_infer:
            with rec.guard(infer_name, "inference"):
                timing = infer_on_guest(guest, runs=runs)
                rec.add(
                    infer_name, "inference", *timing["seconds"], ratio_to="infer-host",
                    note=f"{timing['runtime']}, per image, cpu {guest.cpu}",
                )  # fmt: skip
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
) -> None:
    """Provision a prepared copy of the base image (converge), then boot it on each of PROFILE_NAMES, REPEAT times."""
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


def _converge(project: Path, prepared: Path, provisioned: Path, work: Path, rec: Recorder, *, timed: bool) -> None:
    provisioned.unlink(missing_ok=True)
    copy_file(prepared, provisioned)
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
