"""The inference service run on this machine for the bench: `python -m pibake_target serve` on a loopback port.

The same package, model and default settings as the guest's service (the role's defaults), on this machine's
Python with its x86_64 TFLite, uvicorn and prometheus_client (the test extra): the reference the emulated
Pi's serving rows are compared with.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pibake.bench import serving
from pibake.bench.results import Recorder
from pibake.emulate.ssh import free_port
from pibake.errors import PibakeError
from pibake.util import proc

log = logging.getLogger(__name__)

MODEL_NAME = "car"  # the role's inference_service_model_name
READY_SECONDS = 60.0


def unavailable(project: Path) -> str | None:
    """Why the service cannot run on this machine, or None when it can."""
    if importlib.util.find_spec("tflite_runtime") is None and importlib.util.find_spec("ai_edge_litert") is None:
        return "no TFLite runtime on this machine's Python (make venv: the test extra)"
    missing = [m for m in ("uvicorn", "prometheus_client", "numpy", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        return f"no {', '.join(missing)} on this machine's Python (make venv: the test extra)"
    if not (project / "target" / "pibake_target").is_dir():
        return f"no Pi-side package in {project / 'target'}"
    if not (project / "models" / f"{MODEL_NAME}.tflite").is_file():
        return f"no models/{MODEL_NAME}.tflite in {project}"
    return None


@contextlib.contextmanager
def host_service(project: Path, log_path: Path) -> Iterator[int]:
    """The service started from PROJECT's target/ and models/ on a free loopback port (yielded), ready; stopped after.

    A long-running server, so Popen rather than pibake.util.proc.run; its output goes to LOG_PATH.
    """
    port = free_port()
    models = project / "models"
    argv = [
        sys.executable, "-m", "pibake_target", "serve", "--model", str(models / f"{MODEL_NAME}.tflite"),
        "--labels", str(models / "labels.txt"), "--name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(project / "target")}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.debug("run: %s", " ".join(argv))
    with log_path.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            serving.wait_ready("127.0.0.1", port, timeout=READY_SECONDS, alive=lambda: process.poll() is None)
        except PibakeError as e:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise PibakeError(f"{e}\n{tail}") from e
        yield port
    finally:
        proc.stop(process)


def measure_on_host(project: Path, work: Path, rec: Recorder, plan: serving.LoadPlan, *, repeat: int) -> None:
    """The serving rows of this machine (``serve-predict-host``, ``serve-v2-infer-host``), REPEAT runs each.

    The service is started once for all the runs; it and its log are gone afterwards.
    """
    reason = unavailable(project)
    if reason:
        for endpoint in serving.ENDPOINTS:
            rec.cannot(f"{endpoint}-host", serving.GROUP, reason)
        return
    samples = serving.sample_images(project)
    log_path = work / "host-service.log"
    try:
        with host_service(project, log_path) as port:
            for _ in range(repeat):
                serving.measure(rec, "127.0.0.1", port, samples, plan, suffix="host", where="this machine")
    except PibakeError as e:
        for endpoint in serving.ENDPOINTS:
            rec.fail(f"{endpoint}-host", serving.GROUP, e)
    finally:
        log_path.unlink(missing_ok=True)
