"""The crash itself, reproduced without booting: the demo model under qemu-user with several CPUs.

The tflite-runtime 2.11.0 wheel is installed into a copy of the cached Debian bullseye armhf
root (built by `make image`) and the Pi-side package's predict command runs there through qemu-arm binfmt. With the
Cortex-A9 of QEMU's vexpress-a9 board it dies with SIGILL; with the Pi 2's Cortex-A7 and the
Cortex-A15 that emulates the Pi 3/4 it gives the same probabilities as the host.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pibake import isa, preflight
from pibake.emulate import profiles
from pibake.image import build as image
from tests.conftest import REPO
from tests.wheels import CORTEX_A9_FEATURES, tflite_armv7l_wheel

pytestmark = pytest.mark.root

MODELS = REPO / "models"
SAMPLES = sorted(p.name for p in (MODELS / "samples").glob("*.png"))
GUEST_DIR = "/tmp/pibake-model"
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


def _no_core_dumps() -> None:
    # qemu-user dumps a core of the guest on SIGILL; it would only fill the copy.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def in_chroot(root: Path, argv: list[str], *, cpu: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**CHROOT_ENV, **({"QEMU_CPU": cpu} if cpu else {})}
    return subprocess.run(
        ["chroot", str(root), *argv],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=_no_core_dumps,
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def guest_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A throwaway copy of the cached armhf root with the wheel pip-installed and the demo model in it."""
    image.ensure_binfmt()
    cached = image.build_rootfs(image.DebianBase(mirror=os.environ.get("PIBAKE_DEBIAN_MIRROR") or None))
    root = tmp_path_factory.mktemp("sigill") / "root"
    subprocess.run(["cp", "-a", str(cached), str(root)], check=True)
    try:
        wheel = tflite_armv7l_wheel()
        shutil.copy2(wheel, root / "tmp" / wheel.name)
        work = root / GUEST_DIR.lstrip("/")
        work.mkdir(parents=True)
        for name in ("car.tflite", "labels.txt"):
            shutil.copy2(MODELS / name, work / name)
        shutil.copytree(MODELS / "samples", work / "samples")
        shutil.copytree(
            REPO / "target" / "pibake_target", work / "pibake_target", ignore=shutil.ignore_patterns("__pycache__")
        )
        res = in_chroot(
            root, ["python3", "-m", "pip", "install", "-q", "--no-deps", "--no-index", f"/tmp/{wheel.name}"]
        )
        assert res.returncode == 0, res.stdout + res.stderr
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def predict_in_guest(root: Path, cpu: str) -> subprocess.CompletedProcess[str]:
    return in_chroot(
        root,
        [
            "env",
            f"PYTHONPATH={GUEST_DIR}",
            "python3",
            "-B",
            "-m",
            "pibake_target",
            "predict",
            "--model",
            f"{GUEST_DIR}/car.tflite",
            "--labels",
            f"{GUEST_DIR}/labels.txt",
            *(f"{GUEST_DIR}/samples/{name}" for name in SAMPLES),
        ],
        cpu=cpu,
    )


@pytest.fixture(scope="module")
def host_result() -> dict[str, Any]:
    """The same model on the host's x86_64 TFLite: the reference."""
    from pibake_target.predict import predict

    result: dict[str, Any] = predict(
        str(MODELS / "car.tflite"), str(MODELS / "labels.txt"), [str(MODELS / "samples" / n) for n in SAMPLES]
    )
    return result


def test_cortex_a9_dies_with_illegal_instruction_as_preflight_predicts(guest_root: Path) -> None:
    [wheel] = isa.scan([tflite_armv7l_wheel()])
    verdict = preflight.check(wheel, preflight.Target("cortex-a9", isa.from_cpu_features(CORTEX_A9_FEATURES), ""))
    assert not verdict.ok

    res = predict_in_guest(guest_root, "cortex-a9")
    # chroot execs python3 under qemu-arm, which re-raises the guest's SIGILL on itself.
    assert res.returncode in (-signal.SIGILL, 128 + signal.SIGILL), res.stdout + res.stderr
    assert "Illegal instruction" in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("cpu", ["cortex-a7", "cortex-a15"])
def test_the_boards_cpu_gives_the_hosts_probabilities(guest_root: Path, host_result: dict[str, Any], cpu: str) -> None:
    assert (
        isa.missing(
            isa.scan([tflite_armv7l_wheel()])[0].objects[0].needs,
            isa.from_cpu_features(profiles.load("virt").features(cpu)),
        )
        == []
    )

    res = predict_in_guest(guest_root, cpu)
    assert res.returncode == 0, res.stdout + res.stderr
    guest = json.loads(res.stdout)
    assert guest["runtime"] == "tflite_runtime 2.11.0"
    assert [r["image"] for r in guest["results"]] == SAMPLES
    for mine, ref in zip(guest["results"], host_result["results"], strict=True):
        assert mine["label"] == ref["label"], mine["image"]
        assert mine["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-5), mine["image"]
