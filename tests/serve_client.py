"""Checks of the pibake inference service from a client, for any URL it answers on.

tests/unit/test_serve.py runs them against the server started on the host; the Molecule verify
runs the same ones against the emulated Pi (http://127.0.0.1:<the host port forwarded to the
guest's 8000>). Standard library, numpy and Pillow; tritonclient[http] only in check_tritonclient.

    from tests.serve_client import ServeClient, check_service, check_tritonclient, run_fuzz, sample_images
    client = ServeClient("http://127.0.0.1:18000")
    check_service(client, sample_images())       # health, /predict and OIP infer on every sample
    check_tritonclient(client, sample_images())  # tritonclient.http with its default settings
    report = run_fuzz(client, count=300)          # malformed requests: each gets its 4xx, then all is well
    assert not report.failures, report.summary()

Outside this package (molecule/default/tests has its own `tests`), load it by path and register it first
(its dataclasses look their module up in sys.modules):

    spec = importlib.util.spec_from_file_location("pibake_serve_client", REPO / "tests" / "serve_client.py")
    serve_client = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = serve_client
    spec.loader.exec_module(serve_client)
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import http.client
import json
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import numpy.typing as npt
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
# The service's defaults (pibake_target serve --max-body-bytes, --max-batch-size): the fuzz aims just past them.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = 8
_RESAMPLE = getattr(Image, "Resampling", Image).BILINEAR


# --------------------------------------------------------------------------------------------
# The model's files
# --------------------------------------------------------------------------------------------


def find_model(models_dir: Path = MODELS) -> Path:
    """The one .tflite file in models_dir."""
    found = sorted(models_dir.glob("*.tflite"))
    assert len(found) == 1, f"expected one .tflite model in {models_dir}, found {[p.name for p in found]}"
    return found[0]


def sample_images(models_dir: Path = MODELS) -> list[Path]:
    samples = sorted(models_dir.glob("samples/*.png"))
    assert samples, f"no sample images in {models_dir / 'samples'}"
    return samples


def expected_label(sample: Path) -> str:
    """The label a sample must get: its file name up to the last underscore (car_1.png -> car)."""
    return sample.stem.rsplit("_", 1)[0]


def image_tensor(path: Path, height: int, width: int) -> npt.NDArray[np.float32]:
    """The model's input for an image, float32 (1, height, width, 3): models/predict.py's preprocessing."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), _RESAMPLE)
    array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return array.reshape((1, height, width, 3))


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> str:
        """The {"error": ...} message of an error reply (an AssertionError if it has none)."""
        payload = self.json()
        assert isinstance(payload, dict) and isinstance(payload.get("error"), str), f"not a JSON error: {self.body!r}"
        return str(payload["error"])


class ServeClient:
    """Requests to one server, a new connection each (the server closes after most errors)."""

    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        assert parts.scheme == "http" and parts.hostname, f"not an http:// URL: {base_url}"
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout = timeout
        self._metadata: dict[str, Any] | None = None

    @property
    def triton_url(self) -> str:
        """host:port, as tritonclient wants it."""
        return f"{self.host}:{self.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        finally:
            conn.close()

    def raw(self, data: bytes, *, half_close: bool = True) -> Reply | None:
        """Send bytes as they are and read the answer; None when the server closes without one."""
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            try:
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                # The server answered (400, 413, 431, ...) and closed before reading everything: the send
                # breaks (EPIPE, ECONNRESET), or the half-close finds no connection left (ENOTCONN).
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise
            chunks = []
            try:
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except ConnectionResetError:
                pass
        return parse_reply(b"".join(chunks))

    def wait_ready(self, timeout: float = 120.0) -> Reply:
        """Poll GET / until it answers 200."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                reply = self.request("GET", "/")
                if reply.status == 200:
                    return reply
                last = reply
            except OSError as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"{self.base_url}/ did not answer 200 within {timeout:.0f} s (last: {last})")

    # ---- the API ----

    def health(self) -> dict[str, Any]:
        reply = self.request("GET", "/")
        assert reply.status == 200, f"GET / answered {reply.status}: {reply.body[:300]!r}"
        payload = reply.json()
        assert isinstance(payload, dict)
        return payload

    def predict(self, image: bytes, content_type: str = "image/png") -> Reply:
        return self.request("POST", "/predict", image, {"Content-Type": content_type})

    def metadata(self) -> dict[str, Any]:
        """The OIP metadata of the model the server serves (cached)."""
        if self._metadata is None:
            name = self.health()["model"]
            reply = self.request("GET", f"/v2/models/{quote(name)}")
            assert reply.status == 200, f"model metadata answered {reply.status}: {reply.body[:300]!r}"
            self._metadata = reply.json()
        return self._metadata

    @property
    def model_name(self) -> str:
        return str(self.metadata()["name"])

    @property
    def input_name(self) -> str:
        return str(self.metadata()["inputs"][0]["name"])

    @property
    def output_name(self) -> str:
        return str(self.metadata()["outputs"][0]["name"])

    @property
    def input_hw(self) -> tuple[int, int]:
        shape = self.metadata()["inputs"][0]["shape"]
        return int(shape[1]), int(shape[2])

    def infer_path(self, version: str | None = None) -> str:
        path = f"/v2/models/{quote(self.model_name)}"
        if version is not None:
            path += f"/versions/{quote(version)}"
        return path + "/infer"

    def infer_json(self, tensor: npt.NDArray[np.float32], *, outputs: list[dict[str, Any]] | None = None) -> Reply:
        """An infer request with the data in the JSON (no extension)."""
        request: dict[str, Any] = {
            "id": "json-1",
            "inputs": [
                {
                    "name": self.input_name,
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "data": tensor.reshape(-1).tolist(),
                }
            ],
        }
        if outputs is not None:
            request["outputs"] = outputs
        return self.request(
            "POST", self.infer_path(), json.dumps(request).encode(), {"Content-Type": "application/json"}
        )

    def infer_binary(self, tensor: npt.NDArray[np.float32], *, binary_output: bool = True) -> Reply:
        """An infer request with Triton's binary tensor data extension, as tritonclient sends it by default."""
        raw = tensor.astype("<f4").tobytes()
        request = {
            "inputs": [
                {
                    "name": self.input_name,
                    "shape": list(tensor.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": binary_output},
        }
        header = json.dumps(request).encode()
        return self.request(
            "POST",
            self.infer_path(),
            header + raw,
            {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        )


def parse_reply(data: bytes) -> Reply | None:
    """A whole HTTP/1.x response as read off a socket; None for no bytes at all."""
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    assert len(status_line) >= 2 and status_line[0].startswith("HTTP/1."), f"not an HTTP/1.x response: {data[:200]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return Reply(int(status_line[1]), headers, body)


def infer_outputs(reply: Reply) -> dict[str, npt.NDArray[Any]]:
    """The output tensors of an infer reply, JSON or binary (Inference-Header-Content-Length)."""
    assert reply.status == 200, f"infer answered {reply.status}: {reply.body[:300]!r}"
    header_length = reply.headers.get("inference-header-content-length")
    header = reply.body if header_length is None else reply.body[: int(header_length)]
    binary = b"" if header_length is None else reply.body[int(header_length) :]
    response = json.loads(header)
    tensors: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for output in response["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            values = np.array(output["data"], dtype=object if output["datatype"] == "BYTES" else np.float32)
        elif output["datatype"] == "BYTES":
            items, chunk, pos = [], binary[offset : offset + size], 0
            while pos < len(chunk):
                (length,) = struct.unpack_from("<I", chunk, pos)
                items.append(chunk[pos + 4 : pos + 4 + length].decode())
                pos += 4 + length
            values = np.array(items, dtype=object)
        else:
            values = np.frombuffer(binary[offset : offset + size], dtype="<f4").astype(np.float32)
        offset += size or 0
        tensors[output["name"]] = values.reshape(output["shape"])
    assert offset == len(binary), f"{len(binary) - offset} bytes of binary data left over"
    return tensors


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def check_service(client: ServeClient, samples: Sequence[Path]) -> None:
    """Health, the OIP endpoints, and every sample predicted right by /predict and by OIP infer
    (data in JSON, binary data, and the classification extension), the three agreeing."""
    health = client.health()
    assert health["status"] == "ok", health
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{quote(client.model_name)}/ready"):
        reply = client.request("GET", path)
        assert reply.status == 200, f"GET {path} answered {reply.status}: {reply.body!r}"
    server = client.request("GET", "/v2").json()
    assert "binary_tensor_data" in server["extensions"], server
    height, width = client.input_hw
    classify = [{"name": client.output_name, "parameters": {"classification": 1}}]
    for sample in samples:
        want = expected_label(sample)
        reply = client.predict(sample.read_bytes())
        assert reply.status == 200, f"/predict {sample.name} answered {reply.status}: {reply.body[:300]!r}"
        result = reply.json()
        assert result["label"] == want, f"/predict {sample.name}: {result['label']}, expected {want}"
        assert result["top_k"][0] == {"label": want, "probability": result["probability"]}, result
        tensor = image_tensor(sample, height, width)
        from_json = infer_outputs(client.infer_json(tensor))[client.output_name]
        from_binary = infer_outputs(client.infer_binary(tensor))[client.output_name]
        assert from_json.shape == from_binary.shape == (1, len(from_json[0])), (from_json.shape, from_binary.shape)
        np.testing.assert_allclose(from_binary, from_json, rtol=1e-6)
        np.testing.assert_allclose(float(from_json.max()), result["probability"], rtol=1e-5)
        (top,) = infer_outputs(client.infer_json(tensor, outputs=classify))[client.output_name].reshape(-1)
        _value, index, label = str(top).split(":", 2)
        assert label == want and int(index) == int(np.argmax(from_json[0])), f"classification of {sample.name}: {top}"


def check_tritonclient(client: ServeClient, samples: Sequence[Path]) -> None:
    """The Triton Python client with its default settings (binary inputs and outputs, keep-alive)."""
    import tritonclient.http as triton  # type: ignore[import-untyped]  # only this check needs it

    with triton.InferenceServerClient(client.triton_url) as tc:
        assert tc.is_server_live() and tc.is_server_ready()
        metadata = tc.get_model_metadata(client.model_name)
        name = metadata["name"]
        assert tc.is_model_ready(name)
        assert tc.is_model_ready(name, model_version=metadata["versions"][0])
        assert not tc.is_model_ready(name + "-nonexistent")
        assert "binary_tensor_data" in tc.get_server_metadata()["extensions"]
        spec_in, spec_out = metadata["inputs"][0], metadata["outputs"][0]
        height, width = int(spec_in["shape"][1]), int(spec_in["shape"][2])
        tensors = [image_tensor(sample, height, width) for sample in samples]
        for sample, tensor in zip(samples, tensors, strict=True):
            infer_input = triton.InferInput(spec_in["name"], list(tensor.shape), spec_in["datatype"])
            infer_input.set_data_from_numpy(tensor)
            result = tc.infer(name, [infer_input])
            probabilities = result.as_numpy(spec_out["name"])
            assert probabilities is not None and probabilities.shape == (1, int(spec_out["shape"][1]))
            # The labels come with the classification extension.
            classified = tc.infer(
                name, [infer_input], outputs=[triton.InferRequestedOutput(spec_out["name"], class_count=1)]
            )
            top = classified.as_numpy(spec_out["name"])
            assert top is not None
            _value, index, label = top.reshape(-1)[0].decode().split(":", 2)
            assert label == expected_label(sample), f"tritonclient: {sample.name} classified {label}"
            assert int(index) == int(np.argmax(probabilities[0]))
        # One request with the whole batch, data in the JSON both ways, an explicit version.
        batch = np.concatenate(tensors[:DEFAULT_MAX_BATCH_SIZE])
        infer_input = triton.InferInput(spec_in["name"], list(batch.shape), "FP32")
        infer_input.set_data_from_numpy(batch, binary_data=False)
        output = triton.InferRequestedOutput(spec_out["name"], binary_data=False)
        result = tc.infer(name, [infer_input], outputs=[output], model_version=metadata["versions"][0], request_id="b")
        probabilities = result.as_numpy(spec_out["name"])
        assert probabilities is not None and probabilities.shape[0] == batch.shape[0]
        assert result.get_response()["id"] == "b"
        # A bad request is an InferenceServerException with the server's message, and the client goes on.
        bad = triton.InferInput(spec_in["name"], [1, 2, 2, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 2, 2, 3), dtype=np.float32))
        try:
            tc.infer(name, [bad])
        except triton.InferenceServerException as exc:
            assert exc.status() == "400" and "shape" in (exc.message() or ""), exc
        else:
            raise AssertionError("an input of the wrong shape was accepted")
        assert tc.is_server_ready()


# --------------------------------------------------------------------------------------------
# Fuzz
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzCase:
    name: str
    data: bytes  # a whole raw request
    # Statuses that are right for it; None among them: the server may close without answering.
    expect: tuple[int | None, ...]
    # False for what the HTTP library refuses before the application sees a request (a broken request line or
    # header syntax): uvicorn answers those in plain text.
    json_error: bool = True


@dataclass
class FuzzReport:
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        head = f"{self.sent} malformed requests in {self.seconds:.1f} s, answers {dict(sorted(self.statuses.items()))}"
        return head + "".join(f"\n  {failure}" for failure in self.failures[:30])


ANY_4XX = tuple(range(400, 500))


def _http(
    method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = (), *, length: bool = True
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: pibake", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; the image data is a stub."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def fuzz_cases(
    client: ServeClient,
    samples: Sequence[Path],
    *,
    count: int,
    seed: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> list[FuzzCase]:
    """A fixed list of known-bad requests, then random mutations of good ones up to count requests in all."""
    rng = random.Random(seed)
    png = samples[0].read_bytes()
    height, width = client.input_hw
    name, in_name, out_name = client.model_name, client.input_name, client.output_name
    infer = client.infer_path()
    good_values = image_tensor(samples[0], height, width)
    good_raw = good_values.astype("<f4").tobytes()
    shape = [1, height, width, 3]

    def infer_json(request: Any) -> FuzzCase:
        return FuzzCase("infer JSON", _http("POST", infer, json.dumps(request).encode()), (400,))

    def tensor(**overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "name": in_name,
            "shape": shape,
            "datatype": "FP32",
            "parameters": {"binary_data_size": len(good_raw)},
        }
        base.update(overrides)
        return base

    def infer_binary(
        request: Any, raw: bytes = good_raw, header_length: int | None = None, expect: int = 400
    ) -> FuzzCase:
        header = json.dumps(request).encode()
        length = len(header) if header_length is None else header_length
        data = _http("POST", infer, header + raw, [("Inference-Header-Content-Length", str(length))])
        return FuzzCase("infer binary", data, (expect,))

    fixed = [
        # Request line and headers
        # The HTTP library's own answers: any refusal will do, or, for what it takes leniently (a long header
        # that arrives whole, an HTTP/2.0 version on an HTTP/1 request line), the answer to the request.
        FuzzCase("garbage line", b"\x00\xff\xfe garbage \x01\r\n\r\n", (*ANY_4XX, None), json_error=False),
        FuzzCase("empty line", b"\r\n\r\n", (None, 400), json_error=False),
        FuzzCase("bad version", b"GET / HTTP/9\r\n\r\n", (400, 505), json_error=False),
        FuzzCase("HTTP/2 line", b"GET / HTTP/2.0\r\n\r\n", (200, 400, 505), json_error=False),
        FuzzCase("four words", b"GET / x HTTP/1.1\r\n\r\n", (400,), json_error=False),
        FuzzCase("long URI", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", (400, 404, 414), json_error=False),
        FuzzCase(
            "long header", _http("GET", "/", headers=[("X-Long", "b" * 70000)]), (200, 400, 431), json_error=False
        ),
        FuzzCase(
            "many headers",
            _http("GET", "/", headers=[(f"X-H{i}", "1") for i in range(150)]),
            (200, 400, 431),
            json_error=False,
        ),
        FuzzCase("unknown method", _http("BREW", "/predict", png), (405,)),
        FuzzCase("unknown method, unknown path", _http("BREW", "/pot"), (404,)),
        # Routing
        FuzzCase("unknown path", _http("GET", "/nope"), (404,)),
        FuzzCase("unknown model", _http("GET", "/v2/models/nope"), (404,)),
        FuzzCase("unknown version", _http("GET", f"/v2/models/{quote(name)}/versions/nope/ready"), (404,)),
        FuzzCase("bad percent-encoding", _http("GET", "/v2/models/%ff%fe%00/ready"), (404,)),
        FuzzCase("model subpath", _http("GET", f"/v2/models/{quote(name)}/config"), (404,)),
        FuzzCase("GET /predict", _http("GET", "/predict"), (405,)),
        FuzzCase("PUT /predict", _http("PUT", "/predict", png), (405,)),
        FuzzCase("DELETE /", _http("DELETE", "/"), (405,)),
        FuzzCase("POST /", _http("POST", "/", b"{}"), (405,)),
        FuzzCase("GET infer", _http("GET", infer), (405,)),
        # Bodies
        FuzzCase(
            "no Content-Length",
            _http("POST", "/predict", headers=[("Content-Type", "image/png")], length=False),
            (411,),
        ),
        FuzzCase(
            "chunked",
            _http("POST", "/predict", b"5\r\nhello\r\n0\r\n\r\n", [("Transfer-Encoding", "chunked")], length=False),
            (400, 411),  # "hello" is not an image
        ),
        FuzzCase(
            "Content-Length not a number",
            _http("POST", "/predict", headers=[("Content-Length", "12a")], length=False),
            (400,),
            json_error=False,
        ),
        FuzzCase(
            "Content-Length negative",
            _http("POST", "/predict", headers=[("Content-Length", "-5")], length=False),
            (400,),
            json_error=False,
        ),
        FuzzCase(
            "Content-Length twice, different",
            _http("POST", "/predict", png, [("Content-Type", "image/png"), ("Content-Length", "3")]),
            (400,),
            json_error=False,
        ),
        FuzzCase(
            "Content-Length huge",
            _http("POST", "/predict", headers=[("Content-Length", str(10**15))], length=False),
            (413,),
        ),
        FuzzCase(
            "Content-Length over the limit",
            _http("POST", infer, headers=[("Content-Length", str(max_body_bytes + 1))], length=False),
            (413,),
        ),
        FuzzCase(
            "Expect 100-continue over the limit",
            _http(
                "POST",
                "/predict",
                headers=[("Content-Length", str(max_body_bytes + 1)), ("Expect", "100-continue")],
                length=False,
            ),
            (413,),
        ),
        # The client ends its side mid-body: nobody is left to answer (or a 400).
        FuzzCase("body shorter than Content-Length", _http("POST", "/predict", png)[:-100], (400, None)),
        FuzzCase("Content-Encoding br", _http("POST", "/predict", png, [("Content-Encoding", "br")]), (415,)),
        FuzzCase(
            "gzip garbage", _http("POST", "/predict", b"\x1f\x8b" + b"x" * 50, [("Content-Encoding", "gzip")]), (400,)
        ),
        FuzzCase(
            "gzip bomb",
            _http("POST", infer, gzip.compress(b"\0" * (max_body_bytes + 4096)), [("Content-Encoding", "gzip")]),
            (413,),
        ),
        FuzzCase(
            "truncated gzip",
            _http("POST", "/predict", gzip.compress(png)[:-20], [("Content-Encoding", "gzip")]),
            (400,),
        ),
        # /predict
        FuzzCase("text/plain image", _http("POST", "/predict", png, [("Content-Type", "text/plain")]), (415,)),
        FuzzCase("JSON to /predict", _http("POST", "/predict", b"{}", [("Content-Type", "application/json")]), (415,)),
        FuzzCase(
            "form to /predict",
            _http("POST", "/predict", png, [("Content-Type", "application/x-www-form-urlencoded")]),
            (415,),
        ),
        FuzzCase("GIF", _http("POST", "/predict", b"GIF89a" + png[6:], [("Content-Type", "image/gif")]), (415,)),
        FuzzCase("empty image", _http("POST", "/predict", b"", [("Content-Type", "image/png")]), (400,)),
        FuzzCase("not an image", _http("POST", "/predict", b"hello world", [("Content-Type", "image/png")]), (400,)),
        FuzzCase("PNG magic only", _http("POST", "/predict", png[:8], [("Content-Type", "image/png")]), (400,)),
        FuzzCase(
            "truncated PNG", _http("POST", "/predict", png[: len(png) // 2], [("Content-Type", "image/png")]), (400,)
        ),
        FuzzCase(
            "JPEG magic, garbage",
            _http("POST", "/predict", b"\xff\xd8\xff" + b"\0" * 200, [("Content-Type", "image/jpeg")]),
            (400,),
        ),
        FuzzCase(
            "PNG 100000x100000",
            _http("POST", "/predict", _png_header_only(100000, 100000), [("Content-Type", "image/png")]),
            (400,),
        ),
        FuzzCase("PNG 0x0", _http("POST", "/predict", _png_header_only(0, 0), [("Content-Type", "image/png")]), (400,)),
        # OIP infer
        FuzzCase("infer empty body", _http("POST", infer, b""), (400,)),
        FuzzCase("infer not JSON", _http("POST", infer, b"{nope"), (400,)),
        FuzzCase("infer invalid UTF-8", _http("POST", infer, b'{"inputs": "\xff\xfe"}'), (400,)),
        FuzzCase("infer deep nesting", _http("POST", infer, b"[" * 100000 + b"]" * 100000), (400,)),
        infer_json([]),
        infer_json("inputs"),
        infer_json({}),
        infer_json({"inputs": []}),
        infer_json({"inputs": [1]}),
        infer_json({"id": 5, "inputs": [tensor()]}),
        infer_json({"inputs": [{"name": in_name, "shape": shape, "datatype": "FP32", "data": [0.5] * 10}]}),
        infer_json(
            {"inputs": [{"name": in_name, "shape": shape, "datatype": "FP32", "data": ["x"] * (height * width * 3)}]}
        ),
        infer_json(
            {"inputs": [{"name": in_name, "shape": shape, "datatype": "FP32", "data": [True] * (height * width * 3)}]}
        ),
        infer_json(
            {"inputs": [{"name": in_name, "shape": shape, "datatype": "FP32", "data": [None] * (height * width * 3)}]}
        ),
        infer_json({"inputs": [{"name": in_name, "shape": shape, "datatype": "FP32", "data": {"a": 1}}]}),
        infer_json({"inputs": [{"name": in_name, "shape": shape, "datatype": "FP32"}]}),
        # json.dumps writes NaN, which is not JSON.
        FuzzCase(
            "infer NaN",
            _http(
                "POST",
                infer,
                json.dumps(
                    {
                        "inputs": [
                            {
                                "name": in_name,
                                "shape": shape,
                                "datatype": "FP32",
                                "data": [float("nan")] * (height * width * 3),
                            }
                        ]
                    }
                ).encode(),
            ),
            (400,),
        ),
        infer_binary({"inputs": [tensor(), tensor()]}, good_raw + good_raw),
        infer_binary({"inputs": [tensor(name="nope")]}),
        infer_binary({"inputs": [tensor(name=None)]}),
        infer_binary({"inputs": [tensor(datatype="FP64")]}),
        infer_binary({"inputs": [tensor(datatype="INT8")]}),
        infer_binary({"inputs": [tensor(datatype="BYTES")]}),
        infer_binary({"inputs": [tensor(datatype="fp32")]}),
        infer_binary({"inputs": [tensor(shape=[height, width, 3])]}),
        infer_binary({"inputs": [tensor(shape=[1, height, width])]}),
        infer_binary({"inputs": [tensor(shape=[1, width + 1, height, 3])]}),
        infer_binary({"inputs": [tensor(shape=[0, height, width, 3])]}),
        infer_binary({"inputs": [tensor(shape=[-1, height, width, 3])]}),
        infer_binary({"inputs": [tensor(shape=[10**30, height, width, 3])]}),
        infer_binary(
            {"inputs": [tensor(shape=[max_batch_size + 1, height, width, 3])]}, good_raw * (max_batch_size + 1)
        ),
        infer_binary({"inputs": [tensor(shape=[1.0, height, width, 3])]}),
        infer_binary({"inputs": [tensor(shape="1x64")]}),
        infer_binary({"inputs": [tensor(shape=[True, height, width, 3])]}),
        infer_binary({"inputs": [tensor(parameters={"binary_data_size": len(good_raw) + 4})]}),
        infer_binary({"inputs": [tensor(parameters={"binary_data_size": len(good_raw) - 4})]}, good_raw[:-4]),
        infer_binary({"inputs": [tensor(parameters={"binary_data_size": -1})]}),
        infer_binary({"inputs": [tensor(parameters={"binary_data_size": "12"})]}),
        infer_binary({"inputs": [tensor(parameters=[])]}),
        infer_binary({"inputs": [tensor(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 4})]}, b""),
        infer_binary({"inputs": [tensor(data=[0.0])]}),
        infer_binary({"inputs": [tensor()]}, good_raw + b"\0\0\0\0"),
        infer_binary({"inputs": [tensor()]}, good_raw[:-1]),
        infer_binary({"inputs": [tensor()]}, np.full(len(good_raw) // 4, np.inf, dtype="<f4").tobytes()),
        infer_binary({"inputs": [tensor()]}, np.full(len(good_raw) // 4, np.nan, dtype="<f4").tobytes()),
        infer_binary({"inputs": [tensor()], "outputs": [{"name": "nope"}]}),
        infer_binary({"inputs": [tensor()], "outputs": [{"name": out_name}, {"name": out_name}]}),
        infer_binary({"inputs": [tensor()], "outputs": [{"name": out_name, "parameters": {"classification": -2}}]}),
        infer_binary({"inputs": [tensor()], "outputs": [{"name": out_name, "parameters": {"classification": "2"}}]}),
        infer_binary({"inputs": [tensor()], "outputs": [{"name": out_name, "parameters": {"binary_data": "yes"}}]}),
        infer_binary({"inputs": [tensor()], "outputs": "all"}),
        infer_binary({"inputs": [tensor()], "parameters": {"binary_data_output": 1}}),
        infer_binary({"inputs": [tensor()], "parameters": []}),
        infer_binary({"inputs": [tensor()]}, header_length=0),
        infer_binary({"inputs": [tensor()]}, header_length=10),
        infer_binary({"inputs": [tensor()]}, header_length=10**9),
        FuzzCase(
            "Inference-Header-Content-Length not a number",
            _http("POST", infer, b"{}", [("Inference-Header-Content-Length", "x")]),
            (400,),
        ),
        FuzzCase(
            "Inference-Header-Content-Length negative",
            _http("POST", infer, b"{}", [("Inference-Header-Content-Length", "-3")]),
            (400,),
        ),
    ]
    cases = list(fixed)
    templates: list[Callable[[], FuzzCase]] = [
        # Random bytes as an image, and PNGs with bytes flipped or cut.
        lambda: FuzzCase(
            "random image",
            _http("POST", "/predict", rng.randbytes(rng.randint(0, 4096)), [("Content-Type", "image/png")]),
            (400,),
        ),
        # A PNG cut after its last image data still decodes.
        lambda: FuzzCase(
            "cut PNG",
            _http("POST", "/predict", png[: rng.randint(0, len(png) - 1)], [("Content-Type", "image/png")]),
            (200, 400),
        ),
        lambda: FuzzCase(
            "corrupt PNG", _http("POST", "/predict", _corrupt(rng, png), [("Content-Type", "image/png")]), (200, 400)
        ),
        # Random bytes as a request, and as an infer body.
        lambda: FuzzCase(
            "random request", rng.randbytes(rng.randint(1, 2048)) + b"\r\n\r\n", (*ANY_4XX, None), json_error=False
        ),
        lambda: FuzzCase("random infer body", _http("POST", infer, rng.randbytes(rng.randint(0, 4096))), (400,)),
        # A good binary request with its numbers changed.
        lambda: infer_binary({"inputs": [tensor(shape=_bad_shape(rng, shape))]}),
        lambda: infer_binary(
            {"inputs": [tensor()]},
            header_length=rng.randint(1, 10_000) * rng.choice([1, -1]) + len(json.dumps({"inputs": [tensor()]})),
        ),
        lambda: infer_binary(
            {
                "inputs": [
                    tensor(
                        parameters={"binary_data_size": len(good_raw) + rng.choice([-1, 1]) * rng.randint(1, 10_000)}
                    )
                ]
            }
        ),
        lambda: infer_binary(
            {"inputs": [tensor(datatype=rng.choice(["FP16", "FP64", "UINT8", "INT32", "BOOL", "BYTES", "", "FP 32"]))]}
        ),
        # A good JSON request, cut at a random place.
        lambda: FuzzCase(
            "cut JSON",
            _http("POST", infer, _cut_json(rng, in_name, height, width)),
            (400,),
        ),
    ]
    while len(cases) < count:
        cases.append(rng.choice(templates)())
    return cases


def _corrupt(rng: random.Random, data: bytes) -> bytes:
    """data with a few bytes past the signature changed (may still decode: PNG chunks other than IHDR/IDAT)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(8, len(out))] = rng.randrange(256)
    return bytes(out)


def _bad_shape(rng: random.Random, shape: list[int]) -> list[Any]:
    bad: list[Any] = list(shape)
    choice = rng.randrange(4)
    if choice == 0:
        bad[rng.randrange(1, 4)] += rng.choice([-1, 1]) * rng.randint(1, 100)
    elif choice == 1:
        bad.append(1)
    elif choice == 2:
        bad.pop(rng.randrange(4))
    else:
        bad[rng.randrange(4)] = rng.choice([None, "1", 2.5, -7, [1], 2**70])
    return bad


def _cut_json(rng: random.Random, in_name: str, height: int, width: int) -> bytes:
    request = {
        "inputs": [
            {"name": in_name, "shape": [1, height, width, 3], "datatype": "FP32", "data": [0.5] * (height * width * 3)}
        ]
    }
    text = json.dumps(request).encode()
    return text[: rng.randrange(1, len(text) - 1)]


def run_fuzz(
    client: ServeClient,
    samples: Sequence[Path] | None = None,
    *,
    count: int = 300,
    seed: int = 0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    health_every: int = 25,
) -> FuzzReport:
    """Send count malformed requests; each must get one of its expected answers (never a 5xx but the 505 of an
    HTTP/2 request line), with a JSON {"error": ...} body; GET / must keep answering 200 between them, and
    every sample must still be predicted right at the end."""
    samples = list(samples or sample_images())
    report = FuzzReport()
    start = time.monotonic()
    cases = fuzz_cases(
        client, samples, count=count, seed=seed, max_body_bytes=max_body_bytes, max_batch_size=max_batch_size
    )
    for number, case in enumerate(cases, 1):
        try:
            reply = client.raw(case.data)
        except OSError as exc:
            report.failures.append(f"#{number} {case.name}: {exc!r}")
            continue
        report.sent += 1
        status = None if reply is None else reply.status
        report.statuses[str(status)] = report.statuses.get(str(status), 0) + 1
        if status not in case.expect:
            body = b"" if reply is None else reply.body[:200]
            report.failures.append(f"#{number} {case.name}: answered {status}, expected {case.expect[:6]}: {body!r}")
        elif reply is not None and status != 200 and case.json_error:
            try:
                reply.error()
            except (AssertionError, ValueError) as exc:
                report.failures.append(f"#{number} {case.name}: {status} without a JSON error: {exc}")
        if number % health_every == 0:
            try:
                client.health()
            except (AssertionError, OSError) as exc:
                report.failures.append(f"after #{number} {case.name}: GET / failed: {exc}")
    report.seconds = time.monotonic() - start
    for sample in samples:
        reply = client.predict(sample.read_bytes())
        if reply.status != 200 or reply.json().get("label") != expected_label(sample):
            report.failures.append(
                f"after the fuzz: /predict {sample.name} answered {reply.status} {reply.body[:200]!r}"
            )
    return report


@contextlib.contextmanager
def slow_connections(client: ServeClient, count: int) -> Iterator[list[socket.socket]]:
    """COUNT open connections: half idle (nothing sent), half a POST /predict that promises 100000 bytes and
    sends 3; half of those trickle one more byte a second. All closed on exit."""
    sockets: list[socket.socket] = []
    stop = threading.Event()
    head = b"POST /predict HTTP/1.1\r\nHost: pibake\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    try:
        for number in range(count):
            sock = socket.create_connection((client.host, client.port), timeout=10)
            if number % 2:
                sock.sendall(head + b"\x89PN")
            sockets.append(sock)
        tricklers = sockets[1::4]

        def trickle() -> None:
            while not stop.wait(1.0):
                for sock in tricklers:
                    with contextlib.suppress(OSError):
                        sock.send(b"x")

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        yield sockets
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
