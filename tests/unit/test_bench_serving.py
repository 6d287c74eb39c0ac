"""The bench's serving load against the service run on the host, on loopback only, a few seconds in all.

The same load generator runs against the emulated Pi's forwarded port in `pibake bench --steps serve`;
here it meets the real service (tests/serve_host.py starts it) with small counts.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pibake.bench import host_service, report, serving
from pibake.bench.results import Recorder
from tests.serve_client import REPO, sample_images
from tests.serve_host import Server, serve

if importlib.util.find_spec("tflite_runtime") is None and importlib.util.find_spec("ai_edge_litert") is None:
    pytest.skip("no TFLite runtime on the host (pip install -e '.[test]')", allow_module_level=True)
if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("prometheus_client") is None:
    pytest.skip("no uvicorn or prometheus_client on the host (pip install -e '.[test]')", allow_module_level=True)

SAMPLES = sample_images()
SMALL = serving.LoadPlan(requests=24, concurrency=3, seconds=20, warmup=2, timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("serve")) as running:
        yield running


def _address(server: Server) -> tuple[str, int]:
    return server.client.host, server.client.port


@pytest.mark.parametrize("endpoint", serving.ENDPOINTS)
def test_each_workload_runs_its_requests_without_error(server: Server, endpoint: str) -> None:
    host, port = _address(server)
    requests = serving.workload(endpoint, host, port, SAMPLES)
    assert len(requests) == len(SAMPLES)
    result = serving.run_load(host, port, requests, SMALL)
    assert result.errors == []
    assert len(result.latencies) == result.sent == SMALL.requests
    assert result.requests_per_second > 0
    metrics = result.metrics()
    assert metrics["errors"] == 0 and metrics["concurrency"] == 3
    assert 0 < (metrics["p50_ms"] or 0) <= (metrics["p99_ms"] or 0) <= max(result.latencies) * 1e3 + 1e-3


def test_the_binary_infer_tensor_is_the_services_own_preprocessing() -> None:
    np = pytest.importorskip("numpy")
    from pibake_target.preprocess import load_image

    raw = serving.image_tensor_bytes(SAMPLES[0], 128, 128)
    ours = np.frombuffer(raw, dtype="<f4").reshape((1, 128, 128, 3))
    assert np.allclose(ours, load_image(str(SAMPLES[0]), 128, 128), atol=1e-6)


def test_errors_fail_the_row_with_the_first_one_as_reason(server: Server) -> None:
    host, port = _address(server)
    missing = serving.Request("POST", "/v2/models/nope/infer", b"{}", {}, serving._check_infer)
    result = serving.run_load(host, port, [missing], serving.LoadPlan(requests=5, concurrency=2, warmup=0))
    assert len(result.errors) == 5 and not result.latencies
    rec = Recorder()
    serving.record_load(rec, "serve-v2-infer-host", result, where="this machine")
    step = rec.steps["serve-v2-infer-host"]
    assert step.status == "failed" and step.summary is None
    assert step.reason.startswith("5 of 5 requests failed (this machine), first: #") and "404" in step.reason


def test_the_time_limit_bounds_a_run(server: Server) -> None:
    host, port = _address(server)
    requests = serving.predict_requests(SAMPLES)
    started = time.monotonic()
    result = serving.run_load(host, port, requests, serving.LoadPlan(requests=100_000, concurrency=2, seconds=0.5))
    assert time.monotonic() - started < 10
    assert 0 < result.sent < 100_000 and not result.errors
    rec = Recorder()
    serving.record_load(rec, "serve-predict-host", result, where="this machine")
    assert "time limit hit after" in rec.steps["serve-predict-host"].note


def test_an_unanswered_port_is_a_clear_failure() -> None:
    from tests.serve_host import free_port

    with pytest.raises(Exception, match="did not answer GET / with 200 within 1 s"):
        serving.wait_ready("127.0.0.1", free_port(), timeout=1)


def test_host_rows_from_the_service_the_bench_starts(tmp_path: Path) -> None:
    """What `pibake bench --steps serve` records before it boots any guest: one row per endpoint, valid JSON."""
    rec = Recorder()
    plan = serving.LoadPlan(requests=12, concurrency=2, seconds=20, warmup=1, timeout=10)
    host_service.measure_on_host(REPO, tmp_path, rec, plan, repeat=1)
    assert list(rec.steps) == ["serve-predict-host", "serve-v2-infer-host"]
    for step in rec.steps.values():
        assert step.status == "ok", step.reason
        assert len(step.samples) == 12 and len(step.metrics) == 1
        assert "12 requests at concurrency 2" in step.note and "0 errors" in step.note
        print(f"{step.name}: {step.note}")
    data = report.to_json(
        {k: "x" for k in report.MACHINE_KEYS}, list(rec.steps.values()), repeat=1, quick=False
    )  # fmt: skip
    report.validate(json.loads(json.dumps(data, allow_nan=False)))
    assert not list(tmp_path.iterdir()), "the service's log is left behind"


def test_a_guests_rows_come_through_its_forwarded_port(server: Server) -> None:
    """The emulated runner's part, with the host's service standing in for the guest's forwarded port 8000."""
    from pibake.bench import emulated
    from pibake.emulate.guest import Guest

    guest = Guest(
        name="fake", pid=0, ssh_port=0, user="pi", private_key="", serial_log="", profile="virt", cpu="cortex-a15",
        image="", overlay=None, inventory=None, started_at=0.0, forwards={"8000": server.client.port},
    )  # fmt: skip
    rec = Recorder()
    emulated._serve_on_guest(guest, rec, serving.LoadPlan(requests=8, concurrency=2, warmup=1), SAMPLES)
    assert [(s.name, s.status, s.ratio_to) for s in rec.steps.values()] == [
        ("serve-predict-virt", "ok", "serve-predict-host"),
        ("serve-v2-infer-virt", "ok", "serve-v2-infer-host"),
    ]
    assert "virt, cpu cortex-a15: 8 requests at concurrency 2" in rec.steps["serve-predict-virt"].note
    guest.forwards = {}
    rec = Recorder()
    emulated._serve_on_guest(guest, rec, serving.LoadPlan(requests=8), SAMPLES)
    assert all(s.status == "failed" and "no forward for its port 8000" in s.reason for s in rec.steps.values())


def test_kept_alive_requests_do_not_wait_for_delayed_acks(server: Server) -> None:
    """Every request after a connection's first used to take 40 ms more (Nagle against delayed ACKs, both ends):
    GET / answers in well under a millisecond, so its median over one kept-alive connection shows it."""
    host, port = _address(server)
    health = serving.Request("GET", "/", b"", {}, lambda status, headers, body: None if status == 200 else str(status))
    result = serving.run_load(host, port, [health], serving.LoadPlan(requests=20, concurrency=1, warmup=1))
    assert not result.errors
    assert serving.percentile(result.latencies, 50) < 0.02, result.latencies
