"""The inference service (target/pibake_target, `python3 -m pibake_target serve`), run on the host as a real process.

It is started with this Python and the committed model (the one .tflite in models/), and checked through
tests/serve_client.py: the same checks the Molecule verify runs against the emulated Pi. A last test runs
the package under the guest's own Python 3.9, numpy 1.19 and Pillow 8.1 with Debian bullseye's uvicorn,
h11 and prometheus_client (qemu-user, the cached Debian rootfs, read-only). The load test is
test_serve_load.py.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import http.client
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.serve_client import (
    Reply,
    ServeClient,
    check_service,
    check_tritonclient,
    expected_label,
    find_model,
    image_tensor,
    infer_outputs,
    run_fuzz,
    sample_images,
)
from tests.serve_host import LABELS, PACKAGE, TARGET, Server, free_port, serve, target_command, target_env

SAMPLES = sample_images()

if importlib.util.find_spec("tflite_runtime") is None and importlib.util.find_spec("ai_edge_litert") is None:
    pytest.skip("no TFLite runtime on the host (pip install -e '.[test]')", allow_module_level=True)
if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("prometheus_client") is None:
    pytest.skip("no uvicorn or prometheus_client on the host (pip install -e '.[test]')", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("serve"), "--timeout", "10", "--version", "1.0.0") as running:
        yield running
        # Nothing a client sent may have crashed a request thread.
        assert "Traceback" not in running.log_text(), running.log_text()


@pytest.fixture
def client(server: Server) -> ServeClient:
    assert server.process.poll() is None, f"the server died:\n{server.log_text()}"
    return server.client


def _reference() -> dict[str, dict[str, Any]]:
    """The predict command's results for the samples: what the server must answer."""
    argv = target_command("predict", "--model", str(find_model()), "--labels", str(LABELS), *map(str, SAMPLES))
    result = subprocess.run(argv, capture_output=True, text=True, env=target_env(), timeout=120, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {item["image"]: item for item in report["results"]}


def _assert_good_requests_work(client: ServeClient) -> None:
    assert client.health()["status"] == "ok"
    reply = client.predict(SAMPLES[0].read_bytes())
    assert reply.status == 200 and reply.json()["label"] == expected_label(SAMPLES[0]), reply


# ---- command line and start-up ----


def test_help() -> None:
    result = subprocess.run(
        target_command("serve", "--help"), capture_output=True, text=True, env=target_env(), check=False
    )
    assert result.returncode == 0
    for option in (
        "--model",
        "--labels",
        "--name",
        "--version",
        "--port",
        "--max-body-bytes",
        "--top-k",
        "--queue-size",
    ):
        assert option in result.stdout


@pytest.mark.parametrize("module", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_source_is_python_3_9(module: Path) -> None:
    """The Pi runs Python 3.9: no match statements, no parenthesised context managers and the like."""
    source = module.read_text()
    tree = ast.parse(source, filename=str(module), feature_version=(3, 9))
    if any(isinstance(node, ast.AnnAssign) or getattr(node, "returns", None) for node in ast.walk(tree)):
        assert any(
            isinstance(node, ast.ImportFrom) and node.module == "__future__" and node.names[0].name == "annotations"
            for node in tree.body
        ), "annotations must stay strings on 3.9 (X | None): keep `from __future__ import annotations`"
    for node in ast.walk(tree):
        # zip(strict=...) and int | None outside annotations are 3.10+.
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "zip":
            assert not any(k.arg == "strict" for k in node.keywords), f"zip(strict=) on line {node.lineno}"


def test_a_model_that_cannot_be_loaded_ends_the_process(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = target_command("serve", "--name", "car", "--host", "127.0.0.1", "--port", str(free_port()), *args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=target_env(), check=False)

    missing = run("--model", str(tmp_path / "nope.tflite"), "--labels", str(LABELS))
    assert missing.returncode == 1 and "no model file" in missing.stderr, missing.stderr
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer" * 10)
    broken = run("--model", str(garbage), "--labels", str(LABELS))
    assert broken.returncode == 1 and "cannot load the model" in broken.stderr, broken.stderr
    labels = tmp_path / "labels.txt"
    labels.write_text("only-one\n")
    wrong_labels = run("--model", str(find_model()), "--labels", str(labels))
    assert wrong_labels.returncode == 1 and "labels" in wrong_labels.stderr, wrong_labels.stderr


def test_version_defaults_to_the_model_directory(tmp_path: Path) -> None:
    """As the model role deploys it: <root>/versions/<version>/<model>, <root>/current -> versions/<version>."""
    version_dir = tmp_path / "model" / "versions" / "2.1.0"
    version_dir.mkdir(parents=True)
    (version_dir / "car.tflite").write_bytes(find_model().read_bytes())
    (tmp_path / "model" / "current").symlink_to("versions/2.1.0")
    with serve(tmp_path, model=tmp_path / "model" / "current" / "car.tflite") as running:
        assert running.client.health() == {"status": "ok", "model": "car", "version": "2.1.0"}
        assert running.client.metadata()["versions"] == ["2.1.0"]
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=10) == 0, "SIGTERM is a clean stop"
    assert "serving model 'car' version '2.1.0'" in running.log_text()


# ---- the API ----


def test_predict_preprocesses_as_preprocessing_json_beside_the_model_says(tmp_path: Path, client: ServeClient) -> None:
    """As the model role deploys a version with its preprocessing.json, and the unit names current/<model>."""
    version_dir = tmp_path / "model" / "versions" / "2"
    version_dir.mkdir(parents=True)
    (version_dir / "car.tflite").write_bytes(find_model().read_bytes())
    spec = {"scale": 1 / 127.5, "mean": [1.0, 0.9, 0.8], "std": [0.5, 0.25, 0.75], "channel_order": "bgr"}
    (version_dir / "preprocessing.json").write_text(json.dumps(spec))
    (tmp_path / "model" / "current").symlink_to("versions/2")
    model = tmp_path / "model" / "current" / "car.tflite"
    argv = target_command("predict", "--model", str(model), "--labels", str(LABELS), *map(str, SAMPLES))
    result = subprocess.run(argv, capture_output=True, text=True, env=target_env(), timeout=120, check=True)
    reference = {r["image"]: r for r in json.loads(result.stdout.strip().splitlines()[-1])["results"]}
    labels = LABELS.read_text().split()
    moved = 0.0
    with serve(tmp_path, model=model) as running:
        for sample in SAMPLES:
            answer = running.client.predict(sample.read_bytes()).json()
            want = reference[sample.name]
            assert answer["label"] == want["label"], (sample.name, answer, want)
            for entry in answer["top_k"]:
                probability = want["probabilities"][labels.index(entry["label"])]
                assert entry["probability"] == pytest.approx(probability, rel=1e-6)
            # The default server (no preprocessing.json beside the committed model) answers otherwise.
            moved = max(moved, abs(answer["probability"] - client.predict(sample.read_bytes()).json()["probability"]))
    assert moved > 1e-3, "the preprocessing.json beside the model changed nothing the service answered"
    assert "preprocessing of POST /predict images: (pixel * 0.00784314 - [1, 0.9, 0.8]) / [0.5, 0.25, 0.75], bgr" in (
        running.log_text()
    )


def test_health(client: ServeClient) -> None:
    assert client.health() == {"status": "ok", "model": "car", "version": "1.0.0"}
    head = client.request("HEAD", "/")
    assert head.status == 200 and head.body == b""


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_predict_matches_predict_py(client: ServeClient, sample: Path) -> None:
    reference = _reference()[sample.name]
    for content_type in ("image/png", "application/octet-stream", "image/png; charset=binary"):
        result = client.predict(sample.read_bytes(), content_type).json()
        assert result["label"] == expected_label(sample) == reference["label"]
        assert result["probability"] == pytest.approx(reference["probability"], rel=1e-6)
        assert result["model"] == "car" and result["version"] == "1.0.0"
        assert result["top_k"][0]["label"] == result["label"]
        probabilities = [item["probability"] for item in result["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert len(result["top_k"]) == min(5, len(reference["probabilities"]))


def test_predict_takes_jpeg_and_any_size(client: ServeClient) -> None:
    sample = SAMPLES[-1]
    with Image.open(sample) as img:
        big = img.convert("RGB").resize((300, 200))
    out = io.BytesIO()
    big.save(out, "JPEG", quality=95)
    for content_type in ("image/jpeg", None):
        headers = {"Content-Type": content_type} if content_type else {}
        reply = client.request("POST", "/predict", out.getvalue(), headers)
        assert reply.status == 200, reply
        assert reply.json()["label"] in {expected_label(p) for p in SAMPLES}


def test_oip_metadata(client: ServeClient) -> None:
    server = client.request("GET", "/v2").json()
    assert server["name"] == "pibake-inference" and "binary_tensor_data" in server["extensions"]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/car/ready", "/v2/models/car/versions/1.0.0/ready"):
        reply = client.request("GET", path)
        assert reply.status == 200, path
    metadata = client.request("GET", "/v2/models/car").json()
    assert metadata == client.request("GET", "/v2/models/car/versions/1.0.0").json()
    height, width = client.input_hw
    labels = LABELS.read_text().split()
    assert (
        metadata["name"] == "car" and metadata["versions"] == ["1.0.0"] and metadata["platform"] == "tensorflow_tflite"
    )
    assert [(t["datatype"], t["shape"]) for t in metadata["inputs"]] == [("FP32", [-1, height, width, 3])]
    assert [(t["datatype"], t["shape"]) for t in metadata["outputs"]] == [("FP32", [-1, len(labels)])]


def test_service_checks(client: ServeClient) -> None:
    """What the Molecule verify runs against the Pi."""
    check_service(client, SAMPLES)


def test_infer_json_and_binary(client: ServeClient) -> None:
    reference = _reference()
    height, width = client.input_hw
    chosen = SAMPLES[:3]
    batch = np.concatenate([image_tensor(p, height, width) for p in chosen])
    for reply in (
        client.infer_json(batch),
        client.infer_binary(batch),
        client.infer_binary(batch, binary_output=False),
    ):
        assert reply.status == 200, reply
        binary = "inference-header-content-length" in reply.headers
        assert reply.headers["content-type"] == ("application/octet-stream" if binary else "application/json")
        probabilities = infer_outputs(reply)[client.output_name]
        assert probabilities.shape == (len(chosen), len(reference[SAMPLES[0].name]["probabilities"]))
        for row, sample in zip(probabilities, chosen, strict=True):
            np.testing.assert_allclose(row, reference[sample.name]["probabilities"], rtol=1e-5, atol=1e-7)
    assert client.infer_json(batch).json()["id"] == "json-1"
    # Binary output for one requested output, and the classification extension in binary.
    tensor = batch[:1]
    outputs = [{"name": client.output_name, "parameters": {"binary_data": True, "classification": 2}}]
    classes = infer_outputs(client.infer_json(tensor, outputs=outputs))[client.output_name]
    assert classes.shape == (1, 2)
    assert str(classes[0][0]).split(":")[2] == expected_label(SAMPLES[0])
    # An explicit version in the path.
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": client.input_name,
                    "shape": [1, height, width, 3],
                    "datatype": "FP32",
                    "data": tensor.reshape(-1).tolist(),
                }
            ]
        }
    )
    reply = client.request("POST", "/v2/models/car/versions/1.0.0/infer", header.encode())
    assert reply.status == 200 and reply.json()["model_version"] == "1.0.0"


def test_gzip_and_deflate_bodies(client: ServeClient) -> None:
    png = SAMPLES[0].read_bytes()
    import zlib

    for encoding, body in (("gzip", gzip.compress(png)), ("deflate", zlib.compress(png))):
        reply = client.request("POST", "/predict", body, {"Content-Type": "image/png", "Content-Encoding": encoding})
        assert reply.status == 200 and reply.json()["label"] == expected_label(SAMPLES[0]), reply


def test_tritonclient_with_its_defaults(client: ServeClient) -> None:
    pytest.importorskip("tritonclient.http")
    check_tritonclient(client, SAMPLES)


def test_tritonclient_compression(client: ServeClient) -> None:
    triton = pytest.importorskip("tritonclient.http")
    height, width = client.input_hw
    tensor = image_tensor(SAMPLES[0], height, width)
    with triton.InferenceServerClient(client.triton_url) as tc:
        infer_input = triton.InferInput(client.input_name, list(tensor.shape), "FP32")
        infer_input.set_data_from_numpy(tensor)
        result = tc.infer(
            "car", [infer_input], request_compression_algorithm="gzip", response_compression_algorithm="gzip"
        )
        assert result.as_numpy(client.output_name).shape == (1, len(LABELS.read_text().split()))


def test_keep_alive_survives_client_errors(client: ServeClient) -> None:
    """tritonclient reuses its connection: a 4xx whose body was read leaves the connection usable."""
    conn = http.client.HTTPConnection(client.host, client.port, timeout=30)
    try:
        for body, status in (
            (b"not an image", 400),
            (SAMPLES[0].read_bytes(), 200),
            (b"{", 400),
            (SAMPLES[1].read_bytes(), 200),
        ):
            conn.request("POST", "/predict", body, {"Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            assert response.status == status, payload
            assert response.getheader("Connection") != "close"
    finally:
        conn.close()


# ---- errors: each gets its 4xx and a JSON error, and the next good request works ----

_ERROR_CASES: list[tuple[str, str, str, bytes | None, dict[str, str], int, str]] = [
    ("unknown path", "GET", "/nope", None, {}, 404, "no such endpoint"),
    ("unknown model", "GET", "/v2/models/truck", None, {}, 404, "unknown model"),
    ("unknown model infer", "POST", "/v2/models/truck/infer", b"{}", {}, 404, "unknown model"),
    ("unknown version", "GET", "/v2/models/car/versions/9/ready", None, {}, 404, "no version"),
    ("wrong method", "GET", "/predict", None, {}, 405, "not allowed"),
    ("wrong method with a body", "PUT", "/v2/models/car/infer", b"{}", {}, 405, "not allowed"),
    ("unknown method", "BREW", "/", None, {}, 405, "not allowed"),
    ("wrong content type", "POST", "/predict", b"{}", {"Content-Type": "application/json"}, 415, "Content-Type"),
    ("unsupported encoding", "POST", "/predict", b"x", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    ("not an image", "POST", "/predict", b"GIF89a....", {"Content-Type": "image/png"}, 400, "not a PNG or JPEG"),
    (
        "broken PNG",
        "POST",
        "/predict",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        {"Content-Type": "image/png"},
        400,
        "cannot decode",
    ),
    ("malformed JSON", "POST", "/v2/models/car/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
    ("not an object", "POST", "/v2/models/car/infer", b"[1, 2]", {}, 400, "JSON object"),
]


@pytest.mark.parametrize("case", _ERROR_CASES, ids=[c[0] for c in _ERROR_CASES])
def test_error(client: ServeClient, case: tuple[str, str, str, bytes | None, dict[str, str], int, str]) -> None:
    _name, method, path, body, headers, status, message = case
    reply = client.request(method, path, body, headers)
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    assert message in reply.error(), reply.error()
    if status == 405:
        assert "allow" in reply.headers
    _assert_good_requests_work(client)


def _tensor_request(client: ServeClient, **changes: Any) -> tuple[bytes, dict[str, str]]:
    height, width = client.input_hw
    raw = image_tensor(SAMPLES[0], height, width).astype("<f4").tobytes()
    tensor: dict[str, Any] = {
        "name": client.input_name,
        "shape": [1, height, width, 3],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(raw)},
    }
    tensor.update(changes)
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shape": [1, 3, 3, 3]}, "has shape"),
        ({"shape": [1, 1, 1, 1, 1]}, "has shape"),
        ({"shape": [99, 1, 1, 3]}, "has shape"),
        ({"datatype": "FP64"}, "datatype"),
        ({"datatype": "UINT8"}, "datatype"),
        ({"name": "pixels"}, "unknown input"),
        ({"parameters": {"binary_data_size": 12}}, "binary data"),
    ],
    ids=["shape", "rank", "batch", "FP64", "UINT8", "name", "binary size"],
)
def test_wrong_tensor(client: ServeClient, changes: dict[str, Any], message: str) -> None:
    body, headers = _tensor_request(client, **changes)
    reply = client.request("POST", "/v2/models/car/infer", body, headers)
    assert reply.status == 400 and message in reply.error(), reply
    _assert_good_requests_work(client)


def test_binary_header_length_that_lies(client: ServeClient) -> None:
    body, headers = _tensor_request(client)
    for length in ("0", "5", str(len(body) + 1), "-1", "ten"):
        reply = client.request("POST", "/v2/models/car/infer", body, {"Inference-Header-Content-Length": length})
        assert reply.status == 400 and "Inference-Header-Content-Length" in reply.error(), (length, reply)
    ok = client.request("POST", "/v2/models/car/infer", body, headers)
    assert ok.status == 200, ok


def _raw(client: ServeClient, data: bytes) -> Reply:
    reply = client.raw(data)
    assert reply is not None, "the server closed without answering"
    return reply


def test_body_over_the_limit_is_refused_unread(client: ServeClient) -> None:
    limit = 8 * 1024 * 1024
    for extra in ("", "Expect: 100-continue\r\n"):
        request = f"POST /predict HTTP/1.1\r\nHost: pi\r\n{extra}Content-Length: {limit + 1}\r\n\r\n"
        reply = _raw(client, request.encode())
        assert reply.status == 413 and "limit" in reply.error(), reply
        assert reply.headers.get("connection") == "close"
    # A client that sends the oversized body anyway still gets its 413.
    with socket.create_connection((client.host, client.port), timeout=30) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: pi\r\nContent-Length: {limit + 1}\r\n\r\n".encode())
        with contextlib.suppress(OSError):
            sock.sendall(b"\0" * (2 * 1024 * 1024))
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    _assert_good_requests_work(client)


def test_body_without_length(client: ServeClient) -> None:
    reply = _raw(client, b"POST /predict HTTP/1.1\r\nHost: pi\r\nContent-Type: image/png\r\n\r\n")
    assert reply.status == 411, reply
    # A chunked body is read (to the same limit): here it is not an image.
    chunked = b"POST /predict HTTP/1.1\r\nHost: pi\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    reply = _raw(client, chunked)
    assert reply.status == 400 and "not a PNG or JPEG" in reply.error(), reply
    png = SAMPLES[0].read_bytes()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(png[i : i + 1000]), png[i : i + 1000]) for i in range(0, len(png), 1000))
    head = b"POST /predict HTTP/1.1\r\nHost: pi\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    reply = _raw(client, head + chunks + b"0\r\n\r\n")
    assert reply.status == 200 and reply.json()["label"] == expected_label(SAMPLES[0]), reply
    _assert_good_requests_work(client)


def test_malformed_request_lines(client: ServeClient) -> None:
    """The HTTP library (uvicorn's h11) answers these itself, in plain text."""
    for data, statuses in (
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls?\r\n\r\n", (400,)),
        (b"GET / HTTP/1.1 extra\r\nHost: pi\r\n\r\n", (400,)),
        (b"GET / HTTP/1.1\r\nHost: pi\r\nBad Header\r\n\r\n", (400,)),
    ):
        reply = _raw(client, data)
        assert reply.status in statuses, reply
    _assert_good_requests_work(client)


def test_fuzz(server: Server, client: ServeClient) -> None:
    report = run_fuzz(client, SAMPLES, count=300, seed=20261122)
    assert not report.failures, report.summary()
    assert report.sent >= 300
    assert server.process.poll() is None, "the server died"
    _assert_good_requests_work(client)
    check_service(client, SAMPLES)


# ---- slow and many clients ----


def test_concurrent_requests(client: ServeClient) -> None:
    """The interpreter is shared: requests from many threads at once each get their own image's answer."""
    height, width = client.input_hw
    tensors = {p.name: image_tensor(p, height, width) for p in SAMPLES}

    def one(number: int) -> bool:
        sample = SAMPLES[number % len(SAMPLES)]
        if number % 2:
            reply = client.predict(sample.read_bytes())
            return reply.status == 200 and reply.json()["label"] == expected_label(sample)
        probabilities = infer_outputs(client.infer_binary(tensors[sample.name]))[client.output_name]
        expected = client.predict(sample.read_bytes()).json()["probability"]
        return bool(np.isclose(float(probabilities.max()), expected, rtol=1e-5))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(96)))
    assert all(results), f"{results.count(False)} of {len(results)} concurrent requests got a wrong answer"


def test_slow_client_is_cut_off(tmp_path: Path) -> None:
    with serve(tmp_path, "--timeout", "1.5") as running:
        with socket.create_connection((running.client.host, running.client.port), timeout=30) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: pi\r\nContent-Length: 1000\r\n\r\n")
            start = time.monotonic()
            answer = b""
            with contextlib.suppress(OSError):
                # One byte every 0.4 s: each read is quick, the request is not.
                while time.monotonic() - start < 10:
                    sock.sendall(b"x")
                    sock.settimeout(0.4)
                    with contextlib.suppress(TimeoutError):
                        answer += sock.recv(4096)
                        if answer:
                            break
            elapsed = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert elapsed < 4, f"cut off after {elapsed:.1f} s, the timeout is 1.5 s"
        # An idle connection is closed too.
        with socket.create_connection((running.client.host, running.client.port), timeout=10) as idle:
            start = time.monotonic()
            assert idle.recv(1) == b""
            assert time.monotonic() - start < 4
        _assert_good_requests_work(running.client)


def test_too_many_connections_get_503(tmp_path: Path) -> None:
    with serve(tmp_path, "--max-connections", "2", "--timeout", "5") as running:
        client = running.client
        holders = [socket.create_connection((client.host, client.port), timeout=10) for _ in range(2)]
        try:
            time.sleep(0.3)
            reply = client.request("GET", "/")
            assert reply.status == 503, reply  # uvicorn's own answer (limit_concurrency), at once
        finally:
            for holder in holders:
                holder.close()
        deadline = time.monotonic() + 5
        while client.request("GET", "/").status != 200:
            assert time.monotonic() < deadline, "the slots were not given back"
            time.sleep(0.1)


# ---- metrics and the token ----


def test_metrics(client: ServeClient) -> None:
    assert client.predict(SAMPLES[0].read_bytes()).status == 200
    assert client.request("GET", "/nope").status == 404
    # The queue depth is a gauge of now: an inference the module's earlier tests started for a client that went away
    # (the 499s) may still be in the queue on a busy machine. It must come back to 0, within generous bounds.
    deadline = time.monotonic() + 60
    while True:
        reply = client.request("GET", "/metrics")
        assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain"), reply
        text = reply.body.decode()
        depth = [line for line in text.splitlines() if line.startswith("pibake_inference_queue_depth ")]
        if depth == ["pibake_inference_queue_depth 0.0"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert depth == ["pibake_inference_queue_depth 0.0"], depth
    for line in (
        'pibake_http_requests_total{endpoint="predict",status="200"}',
        'pibake_http_requests_total{endpoint="unknown",status="404"}',
        "pibake_inference_duration_seconds_bucket{",
        "pibake_inference_duration_seconds_count ",
        'pibake_http_request_duration_seconds_bucket{endpoint="predict",',
        "pibake_inference_queue_depth 0.0",
        "pibake_inference_queue_capacity 16.0",
    ):
        assert line in text, f"{line} not in /metrics:\n{text[:3000]}"
    (info,) = [line for line in text.splitlines() if line.startswith("pibake_model_info{")]
    assert 'model="car"' in info and 'version="1.0.0"' in info and info.endswith(" 1.0"), info


def test_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with serve(tmp_path, "--token-file", str(token_file)) as running:
        client = running.client
        for path in ("/", "/v2/health/live", "/v2/health/ready"):
            assert client.request("GET", path).status == 200, path
        png = SAMPLES[0].read_bytes()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
            for method, path, body in (("POST", "/predict", png), ("GET", "/metrics", None), ("GET", "/v2", None)):
                reply = client.request(method, path, body, {"Content-Type": "image/png", **headers})
                assert reply.status == 401 and "token" in reply.error(), (path, headers, reply)
                assert reply.headers["www-authenticate"].startswith("Bearer")
        good = {"Authorization": "Bearer s3cret-token", "Content-Type": "image/png"}
        assert client.request("POST", "/predict", png, good).json()["label"] == expected_label(SAMPLES[0])
        assert client.request("GET", "/metrics", None, good).status == 200
    token_file.write_text("two words\n")
    argv = target_command("serve", "--model", str(find_model()), "--labels", str(LABELS), "--name", "car")
    argv += ["--port", str(free_port()), "--host", "127.0.0.1", "--token-file", str(token_file)]
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=target_env(), check=False)
    assert bad.returncode == 1 and "token" in bad.stderr, bad.stderr


# ---- the guest's Python ----

_GUEST_CHECK = r"""
import asyncio, io, json, os, sys, tempfile, threading, time, urllib.request, urllib.error
import numpy as np
from PIL import Image
import uvicorn, h11, prometheus_client

from pibake_target.app import InferenceApp, Settings
from pibake_target.errors import ModelError
from pibake_target.metrics import Metrics
from pibake_target.model import Model
from pibake_target.preprocess import read_preprocessing, to_input
from pibake_target.server import listen, make_server
from pibake_target.workqueue import WorkQueue


class FakeInterpreter:
    # Scores are the mean of each colour channel: a red image is class 0.
    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [{"name": "image", "index": 0, "shape": np.array([1, 8, 8, 3]), "dtype": np.float32}]

    def get_output_details(self):
        return [{"name": "scores", "index": 1, "shape": np.array([1, 3]), "dtype": np.float32}]

    def set_tensor(self, index, value):
        self.value = value

    def invoke(self):
        self.out = self.value.reshape(-1, 3).mean(axis=0).reshape(1, 3)

    def get_tensor(self, index):
        return self.out


model = Model(FakeInterpreter(), ["red", "green", "blue"], name="m", version="1")
work = WorkQueue(4)
metrics = Metrics(model="m", version="1", runtime="fake", queue_depth=work.depth, queue_capacity=4)
app = InferenceApp(model, Settings(max_body_bytes=1 << 20, top_k=2, request_timeout=10, token="t"), work, metrics)
sock = listen("127.0.0.1", 0, backlog=16)
server = make_server(app, request_timeout=10, max_connections=16)
thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
thread.start()
while not server.started:
    time.sleep(0.1)
base = "http://127.0.0.1:%d" % sock.getsockname()[1]


def call(path, body=None, headers=None):
    request = urllib.request.Request(base + path, data=body, headers=dict(headers or {}, Authorization="Bearer t"))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


png = io.BytesIO()
Image.new("RGB", (20, 10), (0, 0, 255)).save(png, "PNG")
raw = np.zeros((1, 8, 8, 3), dtype="<f4")
raw[..., 1] = 1.0
header = json.dumps({"inputs": [{"name": "image", "shape": [1, 8, 8, 3], "datatype": "FP32",
                                 "parameters": {"binary_data_size": raw.nbytes}}],
                     "parameters": {"binary_data_output": True}}).encode()
results = {
    "python": sys.version.split()[0], "numpy": np.__version__, "pillow": Image.__version__,
    "uvicorn": uvicorn.__version__, "h11": h11.__version__,
    "health": call("/")[0],
    "predict": json.loads(call("/predict", png.getvalue(), {"Content-Type": "image/png"})[2]),
    "bad_type": call("/predict", b"x", {"Content-Type": "text/plain"})[0],
    "bad_image": call("/predict", b"xxxx", {"Content-Type": "image/png"})[0],
    "metrics": call("/metrics")[2].decode(),
}
length = {"Inference-Header-Content-Length": str(len(header))}
status, headers, body = call("/v2/models/m/infer", header + raw.tobytes(), length)
split = int(headers["inference-header-content-length"])
results["infer"] = [status, json.loads(body[:split]), np.frombuffer(body[split:], dtype="<f4").tolist()]

# The default preprocessing, bit for bit float32(pixel) / 255 under numpy 1.19 on the Pi's core: every pixel value.
values = np.arange(256, dtype=np.uint8).reshape(16, 16)
image = Image.fromarray(np.stack([values, values[::-1], values.T], axis=-1))
want = (np.asarray(image, dtype=np.float32) / np.float32(255)).reshape(1, 16, 16, 3)
results["default_bits"] = bool(np.array_equal(to_input(image, 16, 16).view(np.uint32), want.view(np.uint32)))
# A model with a preprocessing.json: /predict's blue image is (1 - 0.5) / 0.25 = 2 in blue, -2 in red and green,
# and blue comes first in BGR, where the fake model's "red" class reads it.
folder = tempfile.mkdtemp()
with open(os.path.join(folder, "preprocessing.json"), "w") as f:
    json.dump({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channel_order": "bgr"}, f)
app.model = Model(FakeInterpreter(), ["red", "green", "blue"], name="m", version="1",
                  preprocessing=read_preprocessing(os.path.join(folder, "preprocessing.json")))
results["predict_bgr"] = json.loads(call("/predict", png.getvalue(), {"Content-Type": "image/png"})[2])
with open(os.path.join(folder, "preprocessing.json"), "w") as f:
    f.write('{"std": [1, 1]}')
try:
    read_preprocessing(os.path.join(folder, "preprocessing.json"))
except ModelError as exc:
    results["bad_file"] = str(exc)
server.should_exit = True
thread.join(timeout=30)
print(json.dumps(results))
"""

# Debian bullseye's packages of the service's HTTP side (what the inference_service role installs with apt).
# apt would bring their dependencies too; `apt-get download` takes only the names it is given.
_BULLSEYE_SERVICE_PACKAGES = (
    "python3-uvicorn",
    "python3-h11",
    "python3-click",
    "python3-prometheus-client",
    "python3-decorator",
)


def _guest_rootfs() -> Path | None:
    cache = Path(os.environ.get("PIBAKE_CACHE") or Path.home() / ".cache" / "pibake")
    found = sorted(cache.glob("rootfs/*/root/usr/bin/python3.9"))
    return found[0].parents[2] if found else None


def _bullseye_service_packages(rootfs: Path) -> Path:
    """Debian's .debs of the service's HTTP side, for the rootfs's release, unpacked (cached by the rootfs's key).

    apt-get downloads them with the rootfs's own sources and dpkg status (read only), as the role's apt would, after
    an update into package lists of its own (the rootfs keeps none: mmdebstrap removes them)."""
    top = rootfs.parents[2] / "tests" / f"service-packages-{rootfs.parent.name[:16]}"
    site = top / "usr" / "lib" / "python3" / "dist-packages"
    if (top / "complete").exists():
        return site
    shutil.rmtree(top, ignore_errors=True)
    debs = top / "debs"
    debs.mkdir(parents=True)
    (top / "lists" / "partial").mkdir(parents=True)
    options = [
        f"-oDir::State::Lists={top}/lists",
        f"-oDir::Etc::SourceList={rootfs}/etc/apt/sources.list",
        "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State::status={rootfs}/var/lib/dpkg/status",
        f"-oDir::Cache={debs}",
        "-oAPT::Architecture=armhf",
        "-oDebug::NoLocking=1",
    ]
    for command in (["update"], ["download", *_BULLSEYE_SERVICE_PACKAGES]):
        result = subprocess.run(
            ["apt-get", *options, *command], cwd=debs, capture_output=True, text=True, timeout=300, check=False
        )
        if result.returncode != 0:
            break
    if result.returncode != 0:
        pytest.skip(f"cannot download {' '.join(_BULLSEYE_SERVICE_PACKAGES)} with apt-get: {result.stderr[-500:]}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(top)], check=True)
    (top / "complete").write_text("\n".join(p.name for p in sorted(debs.glob("*.deb"))) + "\n")
    return site


def _alternatives_dirs(rootfs: Path) -> list[str]:
    """Guest directories of the libraries that /usr/lib/<triplet>/*.so.* reach through /etc/alternatives."""
    dirs = []
    for link in sorted(rootfs.glob("usr/lib/*/*.so.*")):
        target = str(link.readlink()) if link.is_symlink() else ""
        if target.startswith("/etc/alternatives/"):
            final = (rootfs / target.lstrip("/")).readlink()
            dirs.append(str(final.parent))
    return dirs


def test_service_runs_on_the_guests_python(tmp_path: Path) -> None:
    """Python 3.9, numpy 1.19 and Pillow 8.1 of the Debian rootfs the image is built from, with bullseye's
    uvicorn 0.13, h11 0.12 and prometheus_client 0.9, under qemu-user.

    The rootfs is only read (-B: no bytecode written). The TFLite runtime is not in it (the
    python_runtime role installs it): a stand-in interpreter takes its place.
    """
    rootfs = _guest_rootfs()
    if rootfs is None:
        pytest.skip("no Debian rootfs in the cache (make image builds it)")
    binfmt = Path("/proc/sys/fs/binfmt_misc/qemu-arm")
    if not binfmt.exists() or "enabled" not in binfmt.read_text():
        pytest.skip("qemu-arm is not registered with binfmt_misc (make binfmt)")
    site = _bullseye_service_packages(rootfs)
    script = tmp_path / "guest_check.py"
    script.write_text(_GUEST_CHECK)
    env = {
        "PATH": "/usr/bin:/bin",
        "QEMU_LD_PREFIX": str(rootfs),
        "QEMU_CPU": "cortex-a7",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": f"{TARGET}:{site}",
        # qemu looks paths up in the prefix first, but an absolute symlink (Debian's alternatives: libblas.so.3
        # -> /etc/alternatives/... -> the BLAS numpy loads) resolves on the host: name the targets' directories.
        "LD_LIBRARY_PATH": ":".join(_alternatives_dirs(rootfs)),
    }
    result = subprocess.run(
        [str(rootfs / "usr/bin/python3.9"), "-B", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["python"].startswith("3.9.") and report["numpy"].startswith("1.19."), report
    assert report["uvicorn"] == "0.13.3" and report["h11"].startswith("0.12"), report
    assert report["health"] == 200
    assert report["predict"]["label"] == "blue" and report["predict"]["top_k"][0]["label"] == "blue"
    assert (report["bad_type"], report["bad_image"]) == (415, 400)
    assert 'pibake_model_info{model="m",runtime="fake",version="1"} 1.0' in report["metrics"]
    status, header, values = report["infer"]
    assert status == 200 and header["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert values == [0.0, 1.0, 0.0]
    assert report["default_bits"] is True
    bgr = report["predict_bgr"]
    assert (bgr["label"], bgr["probability"]) == ("red", 2.0), bgr
    assert [(t["label"], t["probability"]) for t in bgr["top_k"]] == [("red", 2.0), ("green", -2.0)], bgr
    assert report["bad_file"].endswith("preprocessing.json: std: must be a list of 3 numbers [r, g, b], got [1, 1]")


def test_bullseyes_uvicorn_answers_malformed_requests_with_400_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bullseye's uvicorn 0.13 closes on a request h11 cannot parse without an answer (measured on the emulated
    Pi: 38 of 300 malformed requests answered by a closed connection); the service answers 400 there as later
    uvicorn releases do. The .debs are pure Python: the host's Python runs them."""
    rootfs = _guest_rootfs()
    if rootfs is None:
        pytest.skip("no Debian rootfs in the cache (make image builds it)")
    site = _bullseye_service_packages(rootfs)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    versions = subprocess.run(
        [target_command()[0], "-c", "import uvicorn, h11; print(uvicorn.__version__, h11.__version__)"],
        env=target_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert versions == ["0.13.3", "0.12.0"], versions
    with serve(tmp_path) as server:
        report = run_fuzz(server.client, SAMPLES, count=300, seed=20261129)
        assert report.sent >= 300
        assert not report.failures, report.summary()
