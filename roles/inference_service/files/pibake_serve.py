#!/usr/bin/env python3
"""Serve a float32 TFLite image classifier over HTTP: a small JSON API and the Open Inference Protocol.

Runs unchanged on the Raspberry Pi (Debian bullseye armhf: Python 3.9, numpy 1.19, Pillow 8.1,
tflite-runtime 2.11) and on a development host (Python 3.11, tflite-runtime 2.14 or ai-edge-litert).
Only the standard library's http.server, numpy, Pillow and the TFLite interpreter are used.

Endpoints (all answers are JSON; every error is {"error": "..."} with a 4xx or 5xx status):

    GET  /                                   health: 200 {"status": "ok", "model": ..., "version": ...}
    POST /predict                            body: a PNG or JPEG image -> label, probability, top_k
    GET  /v2                                 Open Inference Protocol (OIP, "KServe v2") server metadata
    GET  /v2/health/live | /v2/health/ready  OIP server liveness and readiness
    GET  /v2/models/NAME[/versions/V]        OIP model metadata
    GET  /v2/models/NAME[/versions/V]/ready  OIP model readiness
    POST /v2/models/NAME[/versions/V]/infer  OIP inference, with Triton's binary tensor data and
                                             classification extensions (what tritonclient[http] sends)

The model is loaded before the port is opened: a model that cannot be loaded ends the process with
exit status 1 and the reason on stderr (journald), and systemd restarts it.
"""

from __future__ import annotations

import argparse
import http.server
import importlib
import io
import json
import logging
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # numpy.typing is not in numpy 1.19 (the Pi); only for type checkers.
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float32]

SERVER_NAME = "pibake-inference"
SERVER_VERSION = "1.0.0"
# OIP platform names are <framework>_<format> (tensorflow_graphdef, onnxruntime_onnx, ...).
PLATFORM = "tensorflow_tflite"
EXTENSIONS = ("binary_tensor_data", "classification")

# Candidate interpreter modules, in order of preference (as in models/predict.py).
_RUNTIMES = (
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
)
# PIL's BILINEAR filter: Image.BILINEAR on Pillow 8.1, Image.Resampling.BILINEAR on Pillow >= 9.1.
_RESAMPLE = getattr(Image, "Resampling", Image).BILINEAR
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Content types POST /predict accepts; the image format itself is read from the bytes.
PREDICT_CONTENT_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream")
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?$")
_DIGITS = re.compile(r"[0-9]{1,18}")

log = logging.getLogger("pibake_serve")


class ServeError(Exception):
    """A request the server refuses: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # True when the connection cannot be reused (for instance a body that was not read).
        self.close = close


class ModelError(Exception):
    """The model, its labels or the runtime cannot be used: the server does not start."""


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def read_labels(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def default_version(model_path: str) -> str:
    """The model's version: the name of the directory the model file really lives in.

    The model role deploys /opt/pibake/model/versions/<version>/car.tflite and points
    /opt/pibake/model/current at it, so the service's path through `current` gives the version.
    """
    return Path(model_path).resolve().parent.name or "1"


def load_interpreter(model_path: str, num_threads: int | None = None) -> tuple[Any, str]:
    """A TFLite interpreter for the model, and "<runtime> <version>"."""
    errors: list[str] = []
    for package, module_name in _RUNTIMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{module_name}: {exc}")
            continue
        version = getattr(importlib.import_module(package), "__version__", "unknown")
        try:
            interpreter = module.Interpreter(model_path=model_path, num_threads=num_threads)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load the model {model_path}: {exc}") from exc
        return interpreter, f"{package} {version}"
    raise ModelError("no TFLite interpreter found (install tflite-runtime or ai-edge-litert): " + "; ".join(errors))


class Model:
    """A float32 NHWC image classifier behind a TFLite interpreter, safe to call from many threads.

    The interpreter has batch size 1 and is not thread-safe: a batch is run one image at a time,
    under a lock.
    """

    def __init__(
        self,
        interpreter: Any,
        labels: Sequence[str],
        *,
        name: str,
        version: str,
        max_batch_size: int = 8,
        runtime: str = "unknown",
    ) -> None:
        self.name = name
        self.version = version
        self.labels = list(labels)
        self.max_batch_size = max_batch_size
        self.runtime = runtime
        self._interpreter = interpreter
        self._lock = threading.Lock()
        try:
            interpreter.allocate_tensors()
            inputs = interpreter.get_input_details()
            outputs = interpreter.get_output_details()
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"cannot allocate the model's tensors: {exc}") from exc
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"expected a model with one input and one output, got {len(inputs)} and {len(outputs)}")
        in_shape = [int(d) for d in inputs[0]["shape"]]
        out_shape = [int(d) for d in outputs[0]["shape"]]
        if len(in_shape) != 4 or in_shape[0] != 1 or in_shape[3] != 3 or min(in_shape) < 1:
            raise ModelError(f"expected a (1, height, width, 3) model input, got {in_shape}")
        if len(out_shape) != 2 or out_shape[0] != 1:
            raise ModelError(f"expected a (1, classes) model output, got {out_shape}")
        for kind, detail in (("input", inputs[0]), ("output", outputs[0])):
            if np.dtype(detail["dtype"]) != np.float32:
                raise ModelError(f"expected a float32 model {kind}, got {np.dtype(detail['dtype'])}")
        if out_shape[1] != len(self.labels):
            raise ModelError(f"the model has {out_shape[1]} classes but the labels file has {len(self.labels)} labels")
        self.input_name = str(inputs[0]["name"])
        self.output_name = str(outputs[0]["name"])
        self._input_index = int(inputs[0]["index"])
        self._output_index = int(outputs[0]["index"])
        self.height, self.width = in_shape[1], in_shape[2]
        self.num_classes = out_shape[1]

    def run(self, batch: FloatArray) -> FloatArray:
        """Class probabilities, shape (N, classes), for a float32 batch of shape (N, height, width, 3)."""
        rows = []
        with self._lock:
            for i in range(batch.shape[0]):
                self._interpreter.set_tensor(self._input_index, batch[i : i + 1])
                self._interpreter.invoke()
                rows.append(np.array(self._interpreter.get_tensor(self._output_index), dtype=np.float32).reshape(-1))
        return np.stack(rows)

    def top_k(self, probabilities: FloatArray, k: int) -> list[tuple[int, float]]:
        """The k highest (class index, probability) pairs of one row, best first (ties: lower index first)."""
        order = np.argsort(-probabilities, kind="stable")[: max(1, min(k, self.num_classes))]
        return [(int(i), float(probabilities[i])) for i in order]

    def metadata(self) -> dict[str, Any]:
        """OIP model metadata; the batch dimension is variable (-1), up to max_batch_size."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": [-1, self.height, self.width, 3]}],
            "outputs": [{"name": self.output_name, "datatype": "FP32", "shape": [-1, self.num_classes]}],
        }


def load_model(
    model_path: str, labels_path: str, *, name: str, version: str | None, max_batch_size: int, num_threads: int | None
) -> Model:
    try:
        labels = read_labels(labels_path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read the labels file {labels_path}: {exc}") from exc
    if not Path(model_path).is_file():
        raise ModelError(f"no model file at {model_path}")
    interpreter, runtime = load_interpreter(model_path, num_threads)
    return Model(
        interpreter,
        labels,
        name=name,
        version=version or default_version(model_path),
        max_batch_size=max_batch_size,
        runtime=runtime,
    )


# --------------------------------------------------------------------------------------------
# Requests: images and OIP tensors
# --------------------------------------------------------------------------------------------


def sniff_image(data: bytes) -> str | None:
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    return None


def decode_image(data: bytes, height: int, width: int, *, max_pixels: int) -> FloatArray:
    """A PNG or JPEG into a float32 (1, height, width, 3) array in [0, 1], exactly as models/predict.py does."""
    image_format = sniff_image(data)
    if image_format is None:
        raise ServeError(400, "the body is not a PNG or JPEG image")
    try:
        # Only the sniffed format's decoder sees the bytes.
        with Image.open(io.BytesIO(data), formats=[image_format]) as img:
            w, h = img.size  # read from the header; nothing is decoded yet
            if w * h > max_pixels:
                raise ServeError(400, f"the image is {w}x{h} pixels; the limit is {max_pixels} pixels")
            rgb = img.convert("RGB")
    except ServeError:
        raise
    except Exception as exc:  # Pillow raises many types on broken input; all of them are the client's
        raise ServeError(400, f"cannot decode the {image_format} image: {exc}") from None
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), _RESAMPLE)
    array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return array.reshape((1, height, width, 3))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ServeError(400, f"{what} is not valid JSON: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flatten_numbers(data: Any, name: str) -> list[float]:
    """The numbers of a flat or nested JSON list, row-major; anything else is a ServeError."""
    if not isinstance(data, list):
        raise ServeError(400, f"input {name!r}: data must be a JSON list of numbers")
    out: list[float] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 8:
                    raise ServeError(400, f"input {name!r}: data is nested too deeply")
                stack.append(iter(item))
                break
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ServeError(400, f"input {name!r}: data must hold only numbers, found {type(item).__name__}")
            out.append(item)
        else:
            stack.pop()
    return out


def parse_infer_request(body: bytes, header_length: int | None, model: Model) -> tuple[dict[str, Any], FloatArray]:
    """Split and check an OIP inference request; returns (the JSON object, the input batch).

    With Triton's binary tensor data extension the body is the JSON object (header_length bytes,
    from the Inference-Header-Content-Length header) followed by the inputs' raw bytes.
    """
    if header_length is None:
        header, binary = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise ServeError(
                400, f"Inference-Header-Content-Length is {header_length} but the body is {len(body)} bytes"
            )
        header, binary = body[:header_length], body[header_length:]
    what = "the inference request"
    if header_length is not None:
        what += f" (the first {header_length} bytes of the body, by Inference-Header-Content-Length)"
    request = parse_json(header, what)
    if not isinstance(request, dict):
        raise ServeError(400, "the inference request must be a JSON object")
    if "id" in request and not isinstance(request["id"], str):
        raise ServeError(400, "the request id must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise ServeError(400, "the inference request needs 'inputs': a non-empty list of tensor objects")
    if len(inputs) != 1:
        raise ServeError(400, f"the model has one input, {model.input_name!r}; the request has {len(inputs)}")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != model.input_name:
        raise ServeError(400, f"unknown input {name!r}: the model's input is {model.input_name!r}")
    datatype = tensor.get("datatype")
    if datatype != "FP32":
        raise ServeError(400, f"input {name!r} has datatype {datatype!r}; the model takes FP32")
    shape = tensor.get("shape")
    expected = [model.height, model.width, 3]
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(_is_int(d) for d in shape)
        or shape[1:] != expected
        or not 1 <= shape[0] <= model.max_batch_size
    ):
        raise ServeError(
            400,
            f"input {name!r} has shape {json.dumps(shape)}; the model takes [N, {model.height}, {model.width}, 3] "
            f"with N from 1 to {model.max_batch_size}",
        )
    count = shape[0] * model.height * model.width * 3
    parameters = tensor.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ServeError(400, f"input {name!r}: parameters must be a JSON object")
    if any(key.startswith("shared_memory") for key in parameters):
        raise ServeError(400, "shared memory inputs are not supported: send the data in the request")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size < 0:
            raise ServeError(400, f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise ServeError(400, f"input {name!r} has both data and binary_data_size")
        if size != len(binary):
            raise ServeError(
                400,
                f"input {name!r} declares {size} bytes of binary data but {len(binary)} bytes follow "
                "the JSON header (Inference-Header-Content-Length)",
            )
        if size != count * 4:
            raise ServeError(400, f"input {name!r}: FP32 {json.dumps(shape)} is {count * 4} bytes, not {size}")
        values = np.frombuffer(binary, dtype="<f4", count=count).astype(np.float32)
    else:
        if binary:
            raise ServeError(400, f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
        if "data" not in tensor:
            raise ServeError(400, f"input {name!r} has neither data nor parameters.binary_data_size")
        numbers = _flatten_numbers(tensor["data"], name)
        if len(numbers) != count:
            raise ServeError(
                400, f"input {name!r}: shape {json.dumps(shape)} needs {count} numbers, got {len(numbers)}"
            )
        values = np.array(numbers, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ServeError(400, f"input {name!r} holds NaN or infinite values")
    return request, values.reshape(shape)


def requested_outputs(request: dict[str, Any], model: Model) -> list[tuple[str, bool, int]]:
    """(output name, as binary data, classification count or 0) for each output to return."""
    parameters = request.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ServeError(400, "the request's parameters must be a JSON object")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ServeError(400, "binary_data_output must be true or false")
    outputs = request.get("outputs")
    if outputs is None:
        return [(model.output_name, binary_default, 0)]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ServeError(400, "'outputs' must be a list of objects")
    result: list[tuple[str, bool, int]] = []
    for output in outputs:
        name = output.get("name")
        if name != model.output_name:
            raise ServeError(400, f"unknown output {name!r}: the model's output is {model.output_name!r}")
        if any(entry[0] == name for entry in result):
            raise ServeError(400, f"output {name!r} is requested twice")
        params = output.get("parameters", {})
        if not isinstance(params, dict):
            raise ServeError(400, f"output {name!r}: parameters must be a JSON object")
        if any(key.startswith("shared_memory") for key in params):
            raise ServeError(400, "shared memory outputs are not supported")
        binary = params.get("binary_data", binary_default)
        classes = params.get("classification", 0)
        if not isinstance(binary, bool):
            raise ServeError(400, f"output {name!r}: binary_data must be true or false")
        if not _is_int(classes) or classes < 0:
            raise ServeError(400, f"output {name!r}: classification must be a non-negative integer")
        result.append((name, binary, classes))
    return result


def encode_infer_response(
    request: dict[str, Any], probabilities: FloatArray, outputs: list[tuple[str, bool, int]], model: Model
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when binary tensors follow it."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    batch = int(probabilities.shape[0])
    for name, binary, classes in outputs:
        tensor: dict[str, Any] = {"name": name}
        if classes:
            # Triton's classification extension: "<value>:<index>:<label>" strings, best first.
            k = min(classes, model.num_classes)
            strings = [
                f"{value:f}:{index}:{model.labels[index]}"
                for row in probabilities
                for index, value in model.top_k(row, k)
            ]
            tensor.update(datatype="BYTES", shape=[batch, k])
            if binary:
                encoded = [s.encode("utf-8") for s in strings]
                blob = b"".join(struct.pack("<I", len(e)) + e for e in encoded)
            else:
                tensor["data"] = strings
        else:
            tensor.update(datatype="FP32", shape=[batch, model.num_classes])
            if binary:
                blob = probabilities.astype("<f4").tobytes()
            else:
                tensor["data"] = [float(v) for v in probabilities.reshape(-1)]
        if binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": tensors}
    if "id" in request:
        response["id"] = request["id"]
    header = json.dumps(response, allow_nan=False).encode("utf-8")
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline per request, so a slow client cannot hold a connection forever.

    A per-read timeout alone lets a client send one byte just before each timeout expires.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                # Not TimeoutError: on Python 3.9 (the Pi) socket.timeout is not one, and http.server catches it.
                raise socket.timeout("the request took too long")
            self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class InferenceServer(http.server.ThreadingHTTPServer):
    """A thread per connection, at most max_connections at once (the next ones get a quick 503)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        model: Model,
        *,
        max_body_bytes: int,
        top_k: int,
        request_timeout: float,
        max_connections: int,
        max_image_pixels: int,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.top_k = top_k
        self.request_timeout = request_timeout
        self.max_image_pixels = max_image_pixels
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (socket.getfqdn): seconds on a Pi without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("%s: too many connections, answering 503", client_address[0])
            body = b'{"error": "too many connections; retry later"}'
            try:
                request.settimeout(1.0)
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away or timed out: nothing to answer
            log.info("%s: connection dropped: %s", client_address[0], exc)
        else:
            log.exception("%s: unexpected error", client_address[0])


class RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: tritonclient reuses its connections
    # TCP_NODELAY: the headers and the body are two writes; with Nagle's algorithm the body waits for the
    # client's delayed ACK of the headers on a kept-alive connection (about 40 ms a request).
    disable_nagle_algorithm = True
    server: InferenceServer

    def version_string(self) -> str:
        return f"{SERVER_NAME}/{SERVER_VERSION}"

    # ---- connection plumbing ----

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._linger = False
        self._started = time.monotonic()

    def handle_one_request(self) -> None:
        # The whole request (line, headers, body), or the wait for the next one on a kept-alive
        # connection, must arrive within the request timeout.
        self._reader.deadline = time.monotonic() + self.server.request_timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        self._started = time.monotonic()
        return super().parse_request()

    def handle_expect_100(self) -> bool:
        # "Expect: 100-continue" (curl sends it for large bodies): refuse a body over the limit before it is sent.
        length = (self.headers.get("Content-Length") or "").strip()
        if _DIGITS.fullmatch(length) and int(length) > self.server.max_body_bytes:
            self._send_json(
                413,
                {"error": f"the body is {length} bytes; the limit is {self.server.max_body_bytes} bytes"},
                close=True,
            )
            return False
        return super().handle_expect_100()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._linger:
                self._drain()

    def _drain(self) -> None:
        """After answering without reading the body: read (a bounded amount of) what the client still sends,
        so that closing does not reset the connection before the client has read the answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.5)
            end = time.monotonic() + 2.0
            drained = 0
            while time.monotonic() < end and drained < 1 << 20:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info(
            '%s "%s" %s %.1f ms',
            self.client_address[0],
            self.requestline[:200].encode("unicode_escape").decode("ascii"),
            code,
            (time.monotonic() - self._started) * 1000,
        )

    def log_error(self, format: str, *args: Any) -> None:
        log.info("%s: " + format, self.client_address[0], *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The base class calls this for malformed request lines and headers: answer in JSON too.
        if self.request_version == "HTTP/0.9" and not self.command:
            # A request line too broken to parse: answer with a status line all the same (HTTP/0.9 has none).
            self.request_version = "HTTP/1.0"
        text = message or self.responses.get(code, ("error",))[0]
        self._linger = True  # the rest of the request is unread
        self._send_json(code, {"error": text}, close=True)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        self.connection.settimeout(self.server.request_timeout)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self, status: int, payload: Any, *, close: bool = False, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json", headers=headers, close=close)

    # ---- dispatch ----

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    def __getattr__(self, name: str) -> Any:
        # Any other method (the base class looks for do_<METHOD>): 405 on a known path, 404 elsewhere,
        # rather than the base class's 501, so that every bad request gets a 4xx.
        if name.startswith("do_"):
            return lambda: self._handle(name[3:])
        raise AttributeError(name)

    def _handle(self, method: str) -> None:
        allowed: tuple[str, ...] = ()
        try:
            allowed, action = self._route()
            if method not in allowed and not (method == "HEAD" and "GET" in allowed):
                # The body (if any) is not read: close the connection after answering.
                self._linger = method not in ("GET", "HEAD")
                raise ServeError(405, f"{method[:32]} is not allowed on {self._path()[:200]}", close=True)
            if method in ("GET", "HEAD") and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # a GET with a body: do not read it, do not reuse the connection
            action()
        except ServeError as exc:
            if exc.status == 405:
                allowed_header = ", ".join(sorted(set(allowed) | ({"HEAD"} if "GET" in allowed else set())))
                self._send_json(exc.status, {"error": exc.message}, close=True, headers=[("Allow", allowed_header)])
            else:
                self._send_json(exc.status, {"error": exc.message}, close=exc.close)
        except socket.timeout:  # Python 3.9 (the Pi): socket.timeout is not TimeoutError
            log.info("%s: request timed out", self.client_address[0])
            self._send_json(408, {"error": "the request took too long"}, close=True)
        except ConnectionError:
            raise
        except Exception:
            log.exception("error handling %s %s", method, self._path())
            self._send_json(500, {"error": "internal server error (see the service log)"}, close=True)

    def _path(self) -> str:
        path = urlsplit(self.path).path
        return path.rstrip("/") or "/"

    def _route(self) -> tuple[tuple[str, ...], Callable[[], None]]:
        path = self._path()
        model = self.server.model
        if path == "/":
            return ("GET",), self._health
        if path == "/predict":
            return ("POST",), self._predict
        if path == "/v2":
            return ("GET",), self._server_metadata
        if path in ("/v2/health/live", "/v2/health/ready"):
            key = path.rsplit("/", 1)[1]
            return ("GET",), lambda: self._send_json(200, {key: True})
        match = _MODEL_PATH.match(path)
        if match is None:
            raise ServeError(404, f"no such endpoint: {path[:200]}")
        name, version, action = unquote(match.group(1)), match.group(2), match.group(3)
        if name != model.name:
            raise ServeError(404, f"unknown model {name!r}: this server serves {model.name!r}")
        if version is not None and unquote(version) != model.version:
            raise ServeError(404, f"model {model.name!r} has no version {unquote(version)!r}; it has {model.version!r}")
        if action == "/ready":
            return ("GET",), lambda: self._send_json(200, {"name": model.name, "ready": True})
        if action == "/infer":
            return ("POST",), self._infer
        return ("GET",), lambda: self._send_json(200, model.metadata())

    # ---- bodies ----

    def _read_body(self) -> bytes:
        """The request body, decompressed; never more than max_body_bytes are read or produced."""
        limit = self.server.max_body_bytes
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            self._linger = True
            raise ServeError(
                415, f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)", close=True
            )
        if self.headers.get("Transfer-Encoding") is not None:
            self._linger = True
            raise ServeError(
                411, "send the body with a Content-Length (Transfer-Encoding is not supported)", close=True
            )
        values = {v.strip() for v in self.headers.get_all("Content-Length") or []}
        if not values:
            self._linger = True
            raise ServeError(411, "a Content-Length header is required", close=True)
        value = values.pop()
        if values or not _DIGITS.fullmatch(value):
            self._linger = True
            raise ServeError(400, "the Content-Length header is not a number", close=True)
        length = int(value)
        if length > limit:
            self._linger = True
            raise ServeError(413, f"the body is {length} bytes; the limit is {limit} bytes", close=True)
        body = self.rfile.read(length)
        if len(body) < length:
            raise ServeError(400, f"the body ended after {len(body)} of {length} bytes", close=True)
        if encoding == "identity":
            return body
        # zlib with wbits 47 reads both the zlib ("deflate") and the gzip format.
        decompressor = zlib.decompressobj(wbits=47)
        try:
            data = decompressor.decompress(body, limit + 1)
        except zlib.error as exc:
            raise ServeError(400, f"the {encoding} body cannot be decompressed: {exc}") from None
        if len(data) > limit:
            raise ServeError(413, f"the body decompresses to more than {limit} bytes")
        if not decompressor.eof or decompressor.unused_data:
            raise ServeError(400, f"the {encoding} body is truncated or has trailing data")
        return data

    # ---- endpoints ----

    def _health(self) -> None:
        model = self.server.model
        self._send_json(200, {"status": "ok", "model": model.name, "version": model.version})

    def _server_metadata(self) -> None:
        self._send_json(200, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)})

    def _predict(self) -> None:
        content_type = self.headers.get("Content-Type")
        if content_type is not None:
            media_type = content_type.split(";", 1)[0].strip().lower()
            if media_type not in PREDICT_CONTENT_TYPES:
                self._linger = True
                raise ServeError(
                    415,
                    f"Content-Type {media_type!r} is not accepted: send a PNG or JPEG image as "
                    + ", ".join(PREDICT_CONTENT_TYPES),
                    close=True,
                )
        body = self._read_body()
        model = self.server.model
        image = decode_image(body, model.height, model.width, max_pixels=self.server.max_image_pixels)
        probabilities = model.run(image)[0]
        if not np.all(np.isfinite(probabilities)):
            raise ServeError(500, "the model's output is not a number")
        best = model.top_k(probabilities, self.server.top_k)
        self._send_json(
            200,
            {
                "model": model.name,
                "version": model.version,
                "label": model.labels[best[0][0]],
                "probability": best[0][1],
                "top_k": [{"label": model.labels[i], "probability": p} for i, p in best],
            },
        )

    def _infer(self) -> None:
        header_value = self.headers.get("Inference-Header-Content-Length")
        header_length = None
        if header_value is not None:
            if not _DIGITS.fullmatch(header_value.strip()):
                self._linger = True
                raise ServeError(400, "Inference-Header-Content-Length is not a number", close=True)
            header_length = int(header_value.strip())
        body = self._read_body()
        model = self.server.model
        request, batch = parse_infer_request(body, header_length, model)
        outputs = requested_outputs(request, model)
        probabilities = model.run(batch)
        if not np.all(np.isfinite(probabilities)):
            raise ServeError(400, "the model's output is not finite for this input (pixel values belong in [0, 1])")
        payload, json_length = encode_infer_response(request, probabilities, outputs, model)
        if json_length is None:
            self._send(200, payload, "application/json")
        else:
            self._send(
                200,
                payload,
                "application/octet-stream",
                headers=[("Inference-Header-Content-Length", str(json_length))],
            )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: tell systemd (Type=notify) the service is ready."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pibake_serve.py",
        description="Serve a float32 TFLite image classifier over HTTP: GET / (health), POST /predict "
        "(a PNG or JPEG body) and the Open Inference Protocol v2 (/v2/...), with Triton's binary tensor data "
        "and classification extensions.",
    )
    parser.add_argument("--model", required=True, metavar="FILE", help="float32 .tflite model, input (1, H, W, 3)")
    parser.add_argument("--labels", required=True, metavar="FILE", help="labels file, one label per line, output order")
    parser.add_argument("--name", required=True, help="model name in the API (/v2/models/NAME)")
    parser.add_argument(
        "--version",
        help="model version in the API (default: the name of the directory the model file really is in, "
        "after symlinks: /opt/pibake/model/current/car.tflite -> the version directory's name)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")  # noqa: S104
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s, Triton's HTTP port)")
    parser.add_argument(
        "--max-body-bytes",
        type=_positive_int,
        default=8 * 1024 * 1024,
        metavar="N",
        help="largest request body, also after decompression; larger ones get 413 unread (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k", type=_positive_int, default=5, metavar="K", help="classes in /predict's top_k (default: %(default)s)"
    )
    parser.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=8,
        metavar="N",
        help="largest batch /infer accepts (default: %(default)s)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=4096 * 4096,
        metavar="N",
        help="largest image (width x height) /predict decodes (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="seconds a client has to send a whole request; also how long an idle kept-alive connection lives "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=16,
        metavar="N",
        help="concurrent connections (default: %(default)s)",
    )
    parser.add_argument(
        "--num-threads", type=_positive_int, metavar="N", help="TFLite interpreter threads (default: the runtime's)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="(default: %(default)s)"
    )
    return parser


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # stderr goes to journald, which adds the time and the unit.
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        model = load_model(
            args.model,
            args.labels,
            name=args.name,
            version=args.version,
            max_batch_size=args.max_batch_size,
            num_threads=args.num_threads,
        )
    except ModelError as exc:
        log.error("%s", exc)
        return 1
    try:
        server = InferenceServer(
            (args.host, args.port),
            model,
            max_body_bytes=args.max_body_bytes,
            top_k=args.top_k,
            request_timeout=args.timeout,
            max_connections=args.max_connections,
            max_image_pixels=args.max_image_pixels,
        )
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", args.host, args.port, exc)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    log.info(
        "serving model %r version %r (%s, input %dx%d, %d classes) on http://%s:%d/",
        model.name,
        model.version,
        model.runtime,
        model.width,
        model.height,
        model.num_classes,
        args.host,
        server.server_address[1],
    )
    notify_systemd(f"READY=1\nSTATUS=serving {model.name} {model.version} on port {server.server_address[1]}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        notify_systemd("STOPPING=1")
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
