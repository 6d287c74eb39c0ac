"""The main job end to end: image, boot, provision, run the model on the Pi, finished image."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pibake import boards
from pibake.emulate import guest as emulator
from pibake.emulate import profiles, sshkey
from pibake.emulate.ssh import ssh_run
from pibake.errors import PibakeError, UsageError
from pibake.image import build as image
from pibake.image import finalize, prepare
from pibake.provision import provision

log = logging.getLogger(__name__)

# The model role's current version (versions/<version>, switched by a symlink).
MODEL_DIR = "/opt/pibake/model/current"
# Where pibake.raspberry.python_runtime installs the Pi-side package (python_runtime_package_dir).
GUEST_PACKAGE_DIR = "/usr/local/lib/pibake"
# The inference service's port on the guest (pibake.raspberry.inference_service), forwarded by the emulator.
SERVICE_PORT = 8000


@dataclass
class DemoResult:
    image: Path
    sha256: str
    predictions: list[dict[str, object]]
    manifest: Path
    bmap: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    # The inference service's answers to POST /predict for the same samples (through the forwarded port).
    served: list[dict[str, object]] = field(default_factory=list)


def predict_on_guest(guest: emulator.Guest, model_dir: str = MODEL_DIR) -> dict[str, object]:
    # The predict command of the Pi-side package, where pibake.raspberry.python_runtime installed it.
    cmd = (
        f"PYTHONPATH={GUEST_PACKAGE_DIR} python3 -B -m pibake_target predict --model {model_dir}/car.tflite "
        f"--labels {model_dir}/labels.txt {model_dir}/samples/*.png"
    )
    code, out = ssh_run(guest, cmd, timeout=300)
    if code != 0:
        raise PibakeError(f"the model did not run on the guest (exit {code}):\n{out[-2000:]}")
    try:
        result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise PibakeError(f"the predict command printed no JSON on the guest:\n{out[-2000:]}") from e
    return result


def predict_with_service(
    guest: emulator.Guest, samples: list[Path], *, port: int = SERVICE_PORT
) -> list[dict[str, object]]:
    """POST each sample to the inference service on the guest, from this machine."""
    url = f"http://127.0.0.1:{guest.host_port(port)}/predict"
    answers: list[dict[str, object]] = []
    for sample in samples:
        req = urllib.request.Request(
            url, data=sample.read_bytes(), headers={"Content-Type": "image/png"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as reply:  # noqa: S310
                answer = json.loads(reply.read())
        except (OSError, ValueError) as e:
            raise PibakeError(
                f"the inference service on the guest did not answer /predict for {sample.name}: {e}"
            ) from e
        answers.append({"image": sample.name, **answer})
    return answers


def demo(
    *,
    project: Path,
    board: str = "pi3b-plus",
    profile: str | None = None,
    cpu: str | None = None,
    output: Path,
    name: str = "pibake-demo",
) -> DemoResult:
    if not (project / "site.yml").is_file():
        raise UsageError(f"no site.yml in {project}: run `pibake demo` from the pibake checkout (or pass --project)")
    spec = image.default_spec(board=board)  # refuses boards the Debian base cannot boot, before any work
    profile, cpu = boards.emulation(boards.get(board), profile=profile, cpu=cpu)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    built = image.build_image(spec, output=project / "build" / "pibake-bullseye.img")
    timings["image"] = time.monotonic() - t0

    # The guest writes straight into a copy of the base image: that copy is the finished
    # image. It goes through the same prepare and finalize as a Raspberry Pi OS image.
    output.parent.mkdir(parents=True, exist_ok=True)
    work = output.with_name(output.name + ".part")
    prof = profiles.load(profile)
    t0 = time.monotonic()
    prepare.prepare(
        built.path,
        output=work,
        power_of_two=prof.needs_power_of_two,
        console=prof.console,
        ssh_pubkey=sshkey.ensure_keypair().public_key,
    )
    timings["prepare"] = time.monotonic() - t0
    inventory = output.with_name(output.name + ".inventory.yml")
    inventory.unlink(missing_ok=True)
    try:
        t0 = time.monotonic()
        guest = emulator.start(
            work, profile=profile, cpu=cpu, board=board, name=name, persist=True, inventory=inventory
        )
        timings["boot"] = time.monotonic() - t0
        try:
            t0 = time.monotonic()
            provision(project, inventory)
            timings["provision"] = time.monotonic() - t0
            t0 = time.monotonic()
            result = predict_on_guest(guest)
            timings["inference"] = time.monotonic() - t0
            t0 = time.monotonic()
            served = predict_with_service(guest, sorted((project / "models" / "samples").glob("*.png")))
            timings["service"] = time.monotonic() - t0
        finally:
            t0 = time.monotonic()
            stopped = emulator.stop(name)
            timings["shutdown"] = time.monotonic() - t0
        if not stopped.clean:
            raise PibakeError(f"{name} did not shut down cleanly; the image may not be consistent and was not kept")
        work.replace(output)
    finally:
        work.unlink(missing_ok=True)
        inventory.unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        done = finalize.finalize(output)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    timings["finalize"] = time.monotonic() - t0
    predictions = result.get("results", [])
    assert isinstance(predictions, list)
    return DemoResult(
        image=output,
        sha256=done.sha256,
        predictions=predictions,
        manifest=done.manifest_file,
        bmap=done.bmap_file,
        timings=timings,
        served=served,
    )
