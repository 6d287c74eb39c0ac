"""The model's runtime for the bench: the armv7l tflite-runtime wheel the image carries, and the CPUs it runs on."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from pibake import isa, preflight
from pibake.emulate import profiles
from pibake.errors import VerificationFailed
from pibake.util.cache import cache_root, sha256_file
from pibake.util.proc import run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    """A wheel file and the version it holds."""

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
        raise VerificationFailed(f"{wheel} does not have the sha256 the python_runtime role pins ({digest}): delete it")
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
