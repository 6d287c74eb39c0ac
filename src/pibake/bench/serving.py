"""The bench's serving steps: a load generator for the inference service, and the rows it records.

Two workloads, each N requests at concurrency C (``LoadPlan``), bounded in count and in time:

  serve-predict   POST /predict of the sample PNGs under models/samples, in turn
  serve-v2-infer  POST /v2/models/NAME/infer of the same images as float32 tensors with Triton's binary
                  tensor data extension (the request tritonclient.http sends by default)

C threads each keep one HTTP/1.1 connection open (a new one after an error) and take the next request
until N have been sent or the time is up. A row's samples are the latencies of the requests that
succeeded (its median is the p50; p99 by nearest rank); requests/s, p50, p99 and the error count of every run go in its
``metrics`` and its note. A run with any error (a transport error, a status other than 200, a reply
that is not the model's answer) is recorded as the failure of its row, with the first error as reason.

Where the service runs is the caller's business: ``pibake.bench.host_service`` on this machine,
``pibake.bench.emulated`` on each booted guest (the guest's port 8000 as forwarded to the host).
"""

from __future__ import annotations

import array
import http.client
import json
import logging
import math
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pibake.bench.results import Recorder
from pibake.errors import PibakeError

log = logging.getLogger(__name__)

GROUP = "serving"
ENDPOINTS = ("serve-predict", "serve-v2-infer")
# The service's port on the guest (the role's inference_service_port; forwarded by default, emulator.DEFAULT_FORWARDS).
GUEST_PORT = 8000
# Errors quoted in a failed row's reason and in the log, at most.
ERRORS_KEPT = 5


@dataclass(frozen=True)
class LoadPlan:
    """How hard and how long to load the service: REQUESTS at CONCURRENCY, stopping at SECONDS in any case."""

    requests: int = 100
    concurrency: int = 4
    seconds: float = 120.0  # the time limit of one run; requests not sent by then are not sent
    warmup: int = 4  # untimed requests first: the runtime's first invokes, the connections
    timeout: float = 60.0  # one request, at most


@dataclass(frozen=True)
class Request:
    """One request of a workload, and what makes its reply a success."""

    method: str
    path: str
    body: bytes
    headers: dict[str, str]
    check: Callable[[int, dict[str, str], bytes], str | None]  # None when the reply is right, else why not


@dataclass
class LoadResult:
    """What one run measured: the latency of each successful request, the errors, the wall time."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    planned: int = 0
    concurrency: int = 0

    @property
    def sent(self) -> int:
        """Requests that were sent (fewer than planned when the time ran out)."""
        return len(self.latencies) + len(self.errors)

    @property
    def requests_per_second(self) -> float:
        """Successful requests per second of wall time."""
        return len(self.latencies) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The Q-th percentile (nearest rank) of the latencies, in seconds."""
        return percentile(self.latencies, q)

    def metrics(self) -> dict[str, float | None]:
        """The run's figures as bench.json keeps them (latencies in ms)."""
        return {
            "requests": float(self.planned),
            "sent": float(self.sent),
            "concurrency": float(self.concurrency),
            "requests_per_second": round(self.requests_per_second, 3),
            "p50_ms": round(statistics.median(self.latencies) * 1e3, 3) if self.latencies else None,
            "p99_ms": round(self.percentile(99) * 1e3, 3) if self.latencies else None,
            "errors": float(len(self.errors)),
            "wall_seconds": round(self.wall_seconds, 3),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """The Q-th percentile (0-100) of VALUES by nearest rank; there must be one value at least."""
    if not values:
        raise PibakeError("no values to take a percentile of")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(len(ordered) * q / 100)))
    return ordered[rank - 1]


# ---------------------------------------------------------------- requests


class _Connection(http.client.HTTPConnection):
    """An HTTP connection with Nagle's algorithm off.

    http.client sends a request's headers and its body in two writes; with Nagle on, the body waits for the
    server to acknowledge the headers, and the server delays that acknowledgement (40 ms on Linux): every
    request would take 40 ms more than the service does.
    """

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _get_json(host: str, port: int, path: str, *, timeout: float) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise PibakeError(f"GET {path} answered {response.status} {response.reason}: {body[:200]!r}")
    try:
        return json.loads(body)
    except ValueError as e:
        raise PibakeError(f"GET {path} answered no JSON: {body[:200]!r}") from e


def wait_ready(
    host: str, port: int, *, timeout: float, alive: Callable[[], bool] | None = None, hint: str = ""
) -> dict[str, Any]:
    """Poll GET / until it answers 200 (the service has loaded its model); its JSON.

    PibakeError after TIMEOUT, or as soon as ALIVE says the service's process is gone; HINT ends the message.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            health = _get_json(host, port, "/", timeout=10)
            if isinstance(health, dict):
                return health
            last = f"GET / answered {health!r}"
        except (OSError, http.client.HTTPException, PibakeError) as e:
            last = str(e) or type(e).__name__
        if alive is not None and not alive():
            raise PibakeError(f"the inference service on {host}:{port} exited before it answered GET / (last: {last})")
        if time.monotonic() > deadline:
            raise PibakeError(
                f"the inference service on {host}:{port} did not answer GET / with 200 within {timeout:.0f} s "
                f"(last: {last}){hint}"
            )
        time.sleep(0.2)


def _check_predict(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200:
        return f"{status}: {body[:160]!r}"
    try:
        label = json.loads(body).get("label")
    except (ValueError, AttributeError):
        label = None
    return None if isinstance(label, str) else f"200 without a label: {body[:160]!r}"


def _check_infer(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200:
        return f"{status}: {body[:160]!r}"
    length = headers.get("inference-header-content-length")
    if length is None or not length.isdigit() or int(length) > len(body):
        return f"200 without binary outputs (Inference-Header-Content-Length {length!r})"
    return None


def predict_requests(samples: Sequence[Path]) -> list[Request]:
    """POST /predict of each sample image."""
    if not samples:
        raise PibakeError("no sample images for the serving load (models/samples/*.png)")
    return [Request("POST", "/predict", s.read_bytes(), {"Content-Type": "image/png"}, _check_predict) for s in samples]


def image_tensor_bytes(path: Path, height: int, width: int) -> bytes:
    """An image as the model's input, float32 little-endian (1, HEIGHT, WIDTH, 3) in [0, 1]: RGB, BILINEAR resize,
    / 255, as pibake_target.preprocess does."""
    try:
        from PIL import Image
    except ImportError as e:
        raise PibakeError("serve-v2-infer needs Pillow on the host to make its tensors (`make venv`)") from e
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), getattr(Image, "Resampling", Image).BILINEAR)
    values = array.array("f", (b / 255.0 for b in rgb.tobytes()))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def infer_requests(host: str, port: int, samples: Sequence[Path], *, timeout: float = 30.0) -> list[Request]:
    """OIP v2 binary infer of each sample image, for the model the service on HOST:PORT says it serves."""
    if not samples:
        raise PibakeError("no sample images for the serving load (models/samples/*.png)")
    name = str(_get_json(host, port, "/", timeout=timeout)["model"])
    meta = _get_json(host, port, f"/v2/models/{quote(name)}", timeout=timeout)
    try:
        spec = meta["inputs"][0]
        input_name, (_, height, width, channels) = str(spec["name"]), spec["shape"]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise PibakeError(f"the model's metadata has no (N, H, W, 3) input: {json.dumps(meta)[:300]}") from e
    if channels != 3:
        raise PibakeError(f"the model's input has {channels} channels; the serving load sends RGB images")
    requests = []
    for sample in samples:
        raw = image_tensor_bytes(sample, int(height), int(width))
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": input_name,
                        "shape": [1, int(height), int(width), 3],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
        requests.append(Request("POST", f"/v2/models/{quote(name)}/infer", header + raw, headers, _check_infer))
    return requests


def workload(endpoint: str, host: str, port: int, samples: Sequence[Path]) -> list[Request]:
    """The requests of ENDPOINT (one of ENDPOINTS) for the service on HOST:PORT."""
    if endpoint == "serve-predict":
        return predict_requests(samples)
    if endpoint == "serve-v2-infer":
        return infer_requests(host, port, samples)
    raise PibakeError(f"no serving workload {endpoint!r}; there are {', '.join(ENDPOINTS)}")


# ---------------------------------------------------------------- the load


def _send(conn: http.client.HTTPConnection, req: Request) -> str | None:
    conn.request(req.method, req.path, body=req.body, headers=req.headers)
    response = conn.getresponse()
    body = response.read()
    headers = {k.lower(): v for k, v in response.getheaders()}
    problem = req.check(response.status, headers, body)
    if problem is None and response.will_close:
        conn.close()  # the server ends the connection; the next request opens another
    return problem


def run_load(host: str, port: int, requests: Sequence[Request], plan: LoadPlan) -> LoadResult:
    """PLAN.requests of REQUESTS (in turn) to HOST:PORT from PLAN.concurrency threads; stops at PLAN.seconds."""
    if not requests:
        raise PibakeError("a serving load needs one request at least")
    if plan.requests < 1 or plan.concurrency < 1:
        raise PibakeError(f"a serving load needs requests and concurrency of 1 or more, not {plan}")
    warm = _Connection(host, port, timeout=plan.timeout)
    try:
        for i in range(plan.warmup):
            _send(warm, requests[i % len(requests)])
    except (OSError, http.client.HTTPException) as e:
        raise PibakeError(f"the warm-up request to {host}:{port} failed: {e!r}") from e
    finally:
        warm.close()

    result = LoadResult(planned=plan.requests, concurrency=plan.concurrency)
    lock = threading.Lock()
    next_index = 0
    start = time.perf_counter()
    deadline = start + plan.seconds

    def take() -> int | None:
        nonlocal next_index
        with lock:
            if next_index >= plan.requests or time.perf_counter() >= deadline:
                return None
            next_index += 1
            return next_index - 1

    def worker() -> None:
        conn = _Connection(host, port, timeout=plan.timeout)
        try:
            while (index := take()) is not None:
                req = requests[index % len(requests)]
                t0 = time.perf_counter()
                try:
                    problem = _send(conn, req)
                except (OSError, http.client.HTTPException) as e:
                    problem = f"{type(e).__name__}: {e}"
                seconds = time.perf_counter() - t0
                if problem is not None:
                    conn.close()  # a fresh connection for the next one; the server may have closed this one
                with lock:
                    if problem is None:
                        result.latencies.append(seconds)
                    else:
                        result.errors.append(f"#{index} {req.method} {req.path}: {problem}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, name=f"serve-load-{i}", daemon=True) for i in range(plan.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        # Each thread stops taking requests at the deadline; one in flight ends within its timeout.
        t.join(timeout=plan.seconds + plan.timeout + 5)
    result.wall_seconds = time.perf_counter() - start
    if any(t.is_alive() for t in threads):
        result.errors.append(f"a request was still in flight {plan.timeout:.0f} s after the time limit")
    return result


# ---------------------------------------------------------------- the rows


def _note(where: str, runs: Sequence[dict[str, float | None]], samples: Sequence[float]) -> str:
    rates = ", ".join(f"{r['requests_per_second'] or 0.0:.1f}" for r in runs)
    last = runs[-1]
    short = [r for r in runs if (r["sent"] or 0) < (r["requests"] or 0)]
    cut = f"; time limit hit after {int(short[-1]['sent'] or 0)} requests" if short else ""
    return (
        f"{where}: {int(last['requests'] or 0)} requests at concurrency {int(last['concurrency'] or 0)}: "
        f"{rates} req/s, p50 {statistics.median(samples) * 1e3:.1f} ms, p99 {percentile(samples, 99) * 1e3:.1f} ms, "
        f"0 errors{cut}"
    )


def record_load(rec: Recorder, name: str, result: LoadResult, *, where: str, ratio_to: str | None = None) -> None:
    """RESULT as a run of the row NAME: latencies as samples, the run's figures in its metrics; failed on any error."""
    step = rec.step(name, GROUP, ratio_to=ratio_to)
    step.metrics.append(result.metrics())
    if result.errors:
        for error in result.errors[:ERRORS_KEPT]:
            log.warning("%s: %s", name, error)
        rec.fail(
            name,
            GROUP,
            PibakeError(
                f"{len(result.errors)} of {result.sent} requests failed ({where}), first: {result.errors[0][:200]}"
            ),
        )
        return
    if not result.latencies:
        rec.fail(name, GROUP, PibakeError(f"no request was sent within {result.wall_seconds:.0f} s ({where})"))
        return
    rec.add(name, GROUP, *result.latencies, ratio_to=ratio_to)
    step.note = _note(where, step.metrics, step.samples)


def measure(
    rec: Recorder,
    host: str,
    port: int,
    samples: Sequence[Path],
    plan: LoadPlan,
    *,
    suffix: str,
    where: str,
    ratio_suffix: str | None = None,
) -> None:
    """Load the service on HOST:PORT with each workload once, as rows ``<endpoint>-<SUFFIX>``.

    RATIO_SUFFIX names the rows the latencies are compared with (``host``: the same endpoint on this machine).
    """
    for endpoint in ENDPOINTS:
        name = f"{endpoint}-{suffix}"
        with rec.guard(name, GROUP):
            reqs = workload(endpoint, host, port, samples)
            log.info("bench: %s, %d requests at concurrency %d (%s)", name, plan.requests, plan.concurrency, where)
            result = run_load(host, port, reqs, plan)
            ratio_to = f"{endpoint}-{ratio_suffix}" if ratio_suffix else None
            record_load(rec, name, result, where=where, ratio_to=ratio_to)


def sample_images(project: Path) -> list[Path]:
    """The demo's sample images, sent by both workloads."""
    return sorted((project / "models" / "samples").glob("*.png"))
