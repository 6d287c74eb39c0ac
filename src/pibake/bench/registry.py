"""The bench's steps: their names in pipeline order, the runner that measures each, the ones --quick runs.

  image-cold       the base image rebuilt with its cache entry ignored (``cold_rootfs``: the
                   root filesystem too, 10-25 minutes, and every later step waits for it)
  image-cached     the base image taken from the cache and published, as a second `make image`
  boot             boot to SSH and clean shutdown, for each machine profile
  converge         site.yml against a fresh copy of the image on the virt profile, then again
  infer-host       the demo model on this machine's x86_64 TFLite, per image
  infer-qemu-user  the same in a chroot of the cached armhf root, under qemu-user with each
                   profile's CPU (QEMU_CPU)
  infer-guest      the same on the provisioned image booted on each profile
  serve            requests/s, p50 and p99 latency of the inference service under load (POST /predict, OIP v2
                   binary infer): on this machine, then on the provisioned image booted on each profile
  flash            pibake.bench.flash's runs: dd, pibake, bmap, to a loop device

A runner may measure several steps (one set of guests serves boot, converge,
infer-guest and serve); it runs once, at the place of the last of its steps, so that the guest's
inference comes after the host's and qemu-user's it is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pibake.bench import emulated, image, inference
from pibake.bench.context import Runner
from pibake.bench.flash import flash_step
from pibake.errors import UsageError


@dataclass(frozen=True)
class Entry:
    """A step as ``--steps`` names it, the runner that measures it, and whether ``--quick`` runs it."""

    name: str
    runner: Runner
    quick: bool = False


REGISTRY: tuple[Entry, ...] = (
    Entry("image-cold", image.image_cold),
    Entry("image-cached", image.image_cached, quick=True),
    Entry("boot", emulated.emulated),
    Entry("converge", emulated.emulated),
    Entry("infer-host", inference.infer_host, quick=True),
    Entry("infer-qemu-user", inference.infer_qemu_user, quick=True),
    Entry("infer-guest", emulated.emulated),
    Entry("serve", emulated.emulated),
    Entry("flash", flash_step, quick=True),
)
STEPS = tuple(e.name for e in REGISTRY)
QUICK_STEPS = tuple(e.name for e in REGISTRY if e.quick)


def pick(selected: Sequence[str] | None, *, quick: bool) -> list[str]:
    """The steps to run, in pipeline order: SELECTED, else the quick ones or all of them."""
    chosen = list(selected) if selected else list(QUICK_STEPS if quick else STEPS)
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        raise UsageError(f"unknown bench step(s) {', '.join(unknown)}; the steps are: {', '.join(STEPS)}")
    return [s for s in STEPS if s in chosen]


def runners(selected: Sequence[str]) -> list[Runner]:
    """The runners of the SELECTED steps, each once, in the order of the last step each one measures."""
    last: dict[Runner, int] = {}
    for i, entry in enumerate(REGISTRY):
        last[entry.runner] = i
    wanted = {e.runner for e in REGISTRY if e.name in selected}
    return sorted(wanted, key=last.__getitem__)
