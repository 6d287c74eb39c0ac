from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pibake import kernel
from pibake.emulate import guest as emulator
from pibake.image import build as image
from tests.conftest import REPO
from tests.integration import wheel

IMAGE = Path(os.environ.get("PIBAKE_IMAGE", REPO / "build" / "pibake-bullseye.img"))
ARM64_IMAGE = REPO / "build" / "pibake-trixie-arm64.img"


def qemu_processes(marker: str) -> list[int]:
    """PIDs of live qemu-system-arm or qemu-system-aarch64 processes whose command line mentions MARKER."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if ("qemu-system-arm" in cmdline or "qemu-system-aarch64" in cmdline) and marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with pibake's wheel installed (tests/integration/wheel.py), built once a session."""
    return wheel.install(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def base_image() -> Path:
    """The base image built by `make image`, bullseye's (built here if missing; the cache makes that cheap)."""
    if not IMAGE.exists():
        image.build_image(image.default_spec(base="debian-bullseye"), output=IMAGE)
    return IMAGE


@pytest.fixture(scope="session")
def arm64_image() -> Path:
    """The trixie arm64 base for the Pi 4 (`make image-arm64`; cached: seconds after the first build)."""
    built = image.build_image(image.default_spec(base="debian-trixie-arm64", board="pi4"), output=ARM64_IMAGE)
    return built.path


@pytest.fixture(scope="session")
def virt64_kernel() -> kernel.KernelBuild:
    """pibake's arm64 kernel for virt64 (`make kernel PROFILE=virt64`), what Raspberry Pi OS's arm64 layouts boot with
    there: built once (about 4 minutes on 2 cores), then cached by its recipe."""
    return kernel.build("virt64", provider="debian-source")


@pytest.fixture
def stop_guests() -> Iterator[list[str]]:
    """Names appended here are stopped at teardown, whatever the test did: no qemu left behind."""
    names: list[str] = []
    yield names
    for name in names:
        emulator.stop(name, timeout=60)
        assert not qemu_processes(str(emulator.state_dir(name))), f"qemu of {name} left behind"
