"""The service under slow and idle clients, on loopback only, bounded in count and time.

Issue 17's attack on the old thread-per-connection server: connections that send the headers of a
POST /predict with Content-Length 100000 and 3 bytes of body, then wait, took every slot, and ordinary
requests got 503 or a reset for as long as the slow ones lived. Here 500 such connections (half of
them sending nothing at all, a quarter of them trickling a byte now and then) stay open while 200
ordinary requests run: every one must succeed, and their p99 latency must stay within 2x of the p99
measured without the slow connections.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path

import pytest

from tests.serve_client import ServeClient, expected_label, run_fuzz, sample_images, slow_connections
from tests.serve_host import serve

if importlib.util.find_spec("tflite_runtime") is None and importlib.util.find_spec("ai_edge_litert") is None:
    pytest.skip("no TFLite runtime on the host (pip install -e '.[test]')", allow_module_level=True)
if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("prometheus_client") is None:
    pytest.skip("no uvicorn or prometheus_client on the host (pip install -e '.[test]')", allow_module_level=True)

log = logging.getLogger(__name__)

SAMPLES = sample_images()
SLOW_CONNECTIONS = 500
REQUESTS = 200
# The whole test, at most: everything below stops by itself well before.
BUDGET_SECONDS = 120


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def _timed_requests(client: ServeClient, count: int) -> tuple[list[float], list[str]]:
    """COUNT POST /predict of the samples, one after the other, each on a new connection."""
    bodies = [(s, s.read_bytes()) for s in SAMPLES]
    seconds: list[float] = []
    failures: list[str] = []
    for number in range(count):
        sample, body = bodies[number % len(bodies)]
        start = time.perf_counter()
        try:
            reply = client.predict(body)
        except OSError as exc:
            failures.append(f"#{number}: {exc!r}")
            continue
        seconds.append(time.perf_counter() - start)
        if reply.status != 200 or reply.json().get("label") != expected_label(sample):
            failures.append(f"#{number}: {reply.status} {reply.body[:120]!r}")
    return seconds, failures


def _measure(client: ServeClient, *, rounds: int = 4) -> tuple[list[float], list[float]]:
    """REQUESTS timed requests without and REQUESTS with the slow connections open, interleaved in ROUNDS so that
    the other load of a shared machine falls on both alike."""
    unloaded: list[float] = []
    loaded: list[float] = []
    per_round = REQUESTS // rounds
    for _ in range(rounds):
        seconds, failures = _timed_requests(client, per_round)
        assert not failures, failures[:10]
        unloaded += seconds
        with slow_connections(client, SLOW_CONNECTIONS) as held:
            time.sleep(0.5)  # let the server take every connection and the trickle start
            seconds, failures = _timed_requests(client, per_round)
            # The slow ones are still open: nobody freed the service by cutting them off.
            still_open = sum(1 for sock in held if sock.fileno() >= 0)
        assert not failures, (
            f"{len(failures)} requests failed with {SLOW_CONNECTIONS} connections held: {failures[:10]}"
        )
        assert still_open == SLOW_CONNECTIONS
        loaded += seconds
    return unloaded, loaded


def test_slow_and_idle_connections_do_not_starve_ready_requests(tmp_path: Path) -> None:
    started = time.monotonic()
    # A timeout longer than the test: the slow connections must not be what frees the service.
    with serve(tmp_path, "--timeout", str(BUDGET_SECONDS), "--max-connections", "1000") as server:
        client = server.client
        _timed_requests(client, 20)  # warm-up: the runtime's first invokes, the page cache
        summaries = []
        # Every request must succeed every time; the latency bound gets three tries, for the machine is shared
        # (2 cores, emulated Pis running beside): one scheduling hiccup is a p99 of 200 samples.
        for _attempt in range(3):
            unloaded, loaded = _measure(client)
            p50_unloaded, p99_unloaded = _percentile(unloaded, 50), _percentile(unloaded, 99)
            p50_loaded, p99_loaded = _percentile(loaded, 50), _percentile(loaded, 99)
            summaries.append(
                f"POST /predict, {len(unloaded)} requests: unloaded p50 {p50_unloaded * 1000:.1f} ms p99 "
                f"{p99_unloaded * 1000:.1f} ms; with {SLOW_CONNECTIONS} slow/idle connections p50 "
                f"{p50_loaded * 1000:.1f} ms p99 {p99_loaded * 1000:.1f} ms"
            )
            print(summaries[-1])
            if p99_loaded <= 2 * p99_unloaded or time.monotonic() - started > BUDGET_SECONDS / 2:
                break
        assert p99_loaded <= 2 * p99_unloaded, "\n".join(summaries)
        assert client.health()["status"] == "ok"
    assert time.monotonic() - started < BUDGET_SECONDS


def test_a_full_queue_answers_503_at_once(tmp_path: Path) -> None:
    """More inference requests at once than the queue holds: the extra ones get 503 with Retry-After, quickly."""
    with serve(tmp_path, "--queue-size", "1", "--max-batch-size", "32") as server:
        client = server.client
        height, width = client.input_hw
        import numpy as np

        batch = np.full((32, height, width, 3), 0.5, dtype=np.float32)
        results: list[tuple[int, float, str | None]] = []
        lock = threading.Lock()

        def one() -> None:
            reply = client.infer_binary(batch)
            with lock:
                # When the answer came (one clock for all threads), not how long this thread waited:
                # under CPU load a thread may start late, so per-thread durations do not compare.
                results.append((reply.status, time.perf_counter(), reply.headers.get("retry-after")))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        statuses = sorted(status for status, _, _ in results)
        assert len(results) == 8 and set(statuses) <= {200, 503} and 503 in statuses, statuses
        assert statuses.count(200) >= 1
        last_ok = max(answered for status, answered, _ in results if status == 200)
        for status, answered, retry_after in results:
            if status == 503:
                assert retry_after == "1"
                assert answered < last_ok, "a refusal waited for the work it was refused for"
        assert client.health()["status"] == "ok"


def test_malformed_requests_with_slow_connections_open(tmp_path: Path) -> None:
    """A few hundred malformed requests while 100 slow connections are held: every one answered, still healthy."""
    with serve(tmp_path, "--timeout", "60") as server:
        with slow_connections(server.client, 100):
            report = run_fuzz(server.client, SAMPLES, count=300, seed=17)
        assert not report.failures, report.summary()
        assert server.process.poll() is None
        assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
