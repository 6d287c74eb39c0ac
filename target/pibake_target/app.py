"""The HTTP API as an ASGI application (uvicorn serves it; see server.py).

    GET  /                                   health: 200 {"status": "ok", "model": ..., "version": ...}
    POST /predict                            body: a PNG or JPEG image -> label, probability, top_k
                                             (preprocessed as the model's preprocessing.json says)
    GET  /metrics                            Prometheus text format
    GET  /v2                                 Open Inference Protocol (OIP) server metadata
    GET  /v2/health/live | /v2/health/ready  OIP liveness and readiness
    GET  /v2/models/NAME[/versions/V]        OIP model metadata
    GET  /v2/models/NAME[/versions/V]/ready  OIP model readiness
    POST /v2/models/NAME[/versions/V]/infer  OIP inference, with Triton's binary tensor data and
                                             classification extensions (what tritonclient[http] sends)

Every answer is JSON but /metrics'; every error is {"error": "..."}. The event loop only reads and
writes bytes: the work of a request (decompression, decoding, the model, encoding) is a job on the
bounded WorkQueue, and a full queue is a 503 with Retry-After at once. With a token, every endpoint
but the three health ones wants `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from pibake_target import __version__
from pibake_target.errors import RequestError
from pibake_target.metrics import Metrics
from pibake_target.model import Model
from pibake_target.oip import EXTENSIONS, encode_infer_response, parse_infer_request, requested_outputs
from pibake_target.preprocess import decode_image
from pibake_target.workqueue import QueueFull, WorkQueue

log = logging.getLogger(__name__)

SERVER_NAME = "pibake-inference"
# Content types POST /predict accepts; the image format itself is read from the bytes.
PREDICT_CONTENT_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream")
# Answered without a token: what health checks, load balancers and the role's handler poll.
PUBLIC_ENDPOINTS = frozenset({"health", "v2_live", "v2_ready"})
_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?$")
_DIGITS = re.compile(r"[0-9]{1,18}")

# ASGI's callables (evaluated at run time: builtin generics are fine from Python 3.9).
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer."""


class Response:
    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        *,
        headers: Sequence[tuple[str, str]] = (),
        close: bool = False,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = list(headers)
        self.close = close


def json_response(status: int, payload: Any, **kwargs: Any) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), **kwargs)


class Request:
    """One request's scope, with its headers by lower-case name, and its receive callable."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"].rstrip("/") or "/"
        self.started = time.monotonic()
        self.headers: dict[str, list[str]] = {}
        for name, value in scope.get("headers", []):
            self.headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None

    @property
    def client(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else "-"


class Settings:
    def __init__(
        self,
        *,
        max_body_bytes: int = 8 * 1024 * 1024,
        top_k: int = 5,
        max_image_pixels: int = 4096 * 4096,
        request_timeout: float = 30.0,
        token: str | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.top_k = top_k
        self.max_image_pixels = max_image_pixels
        self.request_timeout = request_timeout
        self.token = token or None


Handler = Callable[[Request], Awaitable[Response]]


class InferenceApp:
    """The ASGI application: routing, the token, bodies and their limits, jobs on the queue, metrics."""

    def __init__(self, model: Model, settings: Settings, work: WorkQueue, metrics: Metrics) -> None:
        self.model = model
        self.settings = settings
        self.work = work
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        endpoint = "unknown"
        allowed: tuple[str, ...] = ()
        try:
            endpoint, allowed, handler = self._route(request.path)
            if request.method not in allowed and not (request.method == "HEAD" and "GET" in allowed):
                raise RequestError(
                    405,
                    f"{request.method[:32]} is not allowed on {request.path[:200]}",
                    close=True,
                    headers=[("Allow", ", ".join(sorted(set(allowed) | ({"HEAD"} if "GET" in allowed else set()))))],
                )
            if endpoint not in PUBLIC_ENDPOINTS:
                self._check_token(request)
            response = await handler(request)
        except RequestError as exc:
            response = json_response(exc.status, {"error": exc.message}, headers=exc.headers, close=exc.close)
        except ClientGone:
            log.info("%s: the client closed the connection before sending its whole request", request.client)
            self.metrics.observe_request(endpoint, 499, time.monotonic() - request.started)
            return
        except Exception:
            log.exception("error handling %s %s", request.method, request.path[:200])
            response = json_response(500, {"error": "internal server error (see the service log)"}, close=True)
        await self._send(request, response, send)
        seconds = time.monotonic() - request.started
        self.metrics.observe_request(endpoint, response.status, seconds)
        log.info(
            '%s "%s %s" %d %.1f ms',
            request.client,
            request.method[:32],
            request.path[:200].encode("unicode_escape").decode("ascii"),
            response.status,
            seconds * 1000,
        )

    # ---- plumbing ----

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send(self, request: Request, response: Response, send: Send) -> None:
        headers = [
            (b"content-type", response.content_type.encode("latin-1")),
            (b"content-length", str(len(response.body)).encode("latin-1")),
        ]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        body = b"" if request.method == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _check_token(self, request: Request) -> None:
        token = self.settings.token
        if token is None:
            return
        given = request.header("authorization") or ""
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")
        ):
            raise RequestError(
                401,
                "this endpoint needs the service's token: Authorization: Bearer <token>",
                headers=[("WWW-Authenticate", 'Bearer realm="pibake"')],
                close=request.method not in ("GET", "HEAD"),
            )

    def _route(self, path: str) -> tuple[str, tuple[str, ...], Handler]:
        model = self.model
        if path == "/":
            return "health", ("GET",), self._health
        if path == "/predict":
            return "predict", ("POST",), self._predict
        if path == "/metrics":
            return "metrics", ("GET",), self._metrics
        if path == "/v2":
            return "v2_server", ("GET",), self._server_metadata
        if path == "/v2/health/live":
            return "v2_live", ("GET",), self._const(200, {"live": True})
        if path == "/v2/health/ready":
            return "v2_ready", ("GET",), self._const(200, {"ready": True})
        match = _MODEL_PATH.match(path)
        if match is None:
            raise RequestError(404, f"no such endpoint: {path[:200]}")
        name, version, action = match.group(1), match.group(2), match.group(3)
        if name != model.name:
            raise RequestError(404, f"unknown model {name[:100]!r}: this server serves {model.name!r}")
        if version is not None and version != model.version:
            raise RequestError(404, f"model {model.name!r} has no version {version[:100]!r}; it has {model.version!r}")
        if action == "/ready":
            return "v2_model_ready", ("GET",), self._const(200, {"name": model.name, "ready": True})
        if action == "/infer":
            return "v2_infer", ("POST",), self._infer
        return "v2_model", ("GET",), self._const(200, model.metadata())

    @staticmethod
    def _const(status: int, payload: Any) -> Handler:
        async def handler(request: Request) -> Response:
            return json_response(status, payload)

        return handler

    async def _read_body(self, request: Request) -> bytes:
        """The request body as sent (still encoded); never more than max_body_bytes, never after the deadline.

        A refusal before the body is read (its length or its deadline) closes the connection after the answer. An
        unsupported Content-Encoding is refused after the body is read: a connection closed with a body still in its
        receive buffer is reset by the kernel, and the reset can destroy the answer before the client reads it (seen
        in Molecule's fuzz on the emulated Pi: a 415 that arrived without its body).
        """
        limit = self.settings.max_body_bytes
        encoding = (request.header("content-encoding") or "identity").strip().lower()
        length = request.header("content-length")
        chunked = request.header("transfer-encoding") is not None
        if length is None and not chunked:
            raise RequestError(411, "a Content-Length header is required (or a chunked body)", close=True)
        if length is not None and (not _DIGITS.fullmatch(length.strip()) or len(request.headers["content-length"]) > 1):
            raise RequestError(400, "the Content-Length header is not a number", close=True)
        if length is not None and int(length) > limit:
            raise RequestError(413, f"the body is {int(length)} bytes; the limit is {limit} bytes", close=True)
        deadline = request.started + self.settings.request_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestError(408, "the request took too long", close=True)
            try:
                message = await asyncio.wait_for(request.receive(), remaining)
            except asyncio.TimeoutError:
                raise RequestError(408, "the request took too long", close=True) from None
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"the body is over the limit of {limit} bytes", close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if encoding not in ("identity", "gzip", "deflate"):
            raise RequestError(415, f"Content-Encoding {encoding[:50]!r} is not supported (use gzip, deflate or none)")
        return b"".join(chunks)

    def _decoded(self, body: bytes, encoding: str) -> bytes:
        """The body decompressed (gzip, deflate), never to more than max_body_bytes. Runs as a job."""
        if encoding == "identity":
            return body
        limit = self.settings.max_body_bytes
        # zlib with wbits 47 reads both the zlib ("deflate") and the gzip format.
        decompressor = zlib.decompressobj(wbits=47)
        try:
            data = decompressor.decompress(body, limit + 1)
        except zlib.error as exc:
            raise RequestError(400, f"the {encoding} body cannot be decompressed: {exc}") from None
        if len(data) > limit:
            raise RequestError(413, f"the body decompresses to more than {limit} bytes")
        if not decompressor.eof or decompressor.unused_data:
            raise RequestError(400, f"the {encoding} body is truncated or has trailing data")
        return data

    async def _run_job(self, job: Callable[[], Response]) -> Response:
        try:
            future = self.work.submit(job)
        except QueueFull as exc:
            log.warning("inference queue full (%s): answering 503", exc)
            raise RequestError(
                503, f"the service is busy ({exc}); retry later", headers=[("Retry-After", "1")]
            ) from None
        return await asyncio.wrap_future(future)

    def _run_model(self, batch: Any) -> Any:
        start = time.perf_counter()
        probabilities = self.model.run(batch)
        self.metrics.inference_seconds.observe(time.perf_counter() - start)
        return probabilities

    # ---- endpoints ----

    async def _health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok", "model": self.model.name, "version": self.model.version})

    async def _server_metadata(self, request: Request) -> Response:
        return json_response(200, {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), self.metrics.content_type)

    async def _predict(self, request: Request) -> Response:
        # The body first (within its limits), then the refusal of its type: see _read_body on refusing with a body
        # unread.
        body = await self._read_body(request)
        content_type = request.header("content-type")
        if content_type is not None:
            media_type = content_type.split(";", 1)[0].strip().lower()
            if media_type not in PREDICT_CONTENT_TYPES:
                raise RequestError(
                    415,
                    f"Content-Type {media_type[:100]!r} is not accepted: send a PNG or JPEG image as "
                    + ", ".join(PREDICT_CONTENT_TYPES),
                )
        encoding = (request.header("content-encoding") or "identity").strip().lower()
        model, settings = self.model, self.settings

        def job() -> Response:
            image = decode_image(
                self._decoded(body, encoding),
                model.height,
                model.width,
                max_pixels=settings.max_image_pixels,
                preprocessing=model.preprocessing,
            )
            probabilities = self._run_model(image)[0]
            if not np.all(np.isfinite(probabilities)):
                raise RequestError(500, "the model's output is not a number")
            best = model.top_k(probabilities, settings.top_k)
            return json_response(
                200,
                {
                    "model": model.name,
                    "version": model.version,
                    "label": model.labels[best[0][0]],
                    "probability": best[0][1],
                    "top_k": [{"label": model.labels[i], "probability": p} for i, p in best],
                },
            )

        return await self._run_job(job)

    async def _infer(self, request: Request) -> Response:
        header_value = request.header("inference-header-content-length")
        header_length: int | None = None
        if header_value is not None:
            if not _DIGITS.fullmatch(header_value.strip()):
                raise RequestError(400, "Inference-Header-Content-Length is not a number", close=True)
            header_length = int(header_value.strip())
        body = await self._read_body(request)
        encoding = (request.header("content-encoding") or "identity").strip().lower()
        model = self.model

        def job() -> Response:
            infer_request, batch = parse_infer_request(self._decoded(body, encoding), header_length, model)
            outputs = requested_outputs(infer_request, model)
            probabilities = self._run_model(batch)
            if not np.all(np.isfinite(probabilities)):
                raise RequestError(
                    400,
                    "the model's output is not finite for this input (send the image preprocessed as the model "
                    f"expects: {model.preprocessing.describe()})",
                )
            payload, json_length = encode_infer_response(infer_request, probabilities, outputs, model)
            if json_length is None:
                return Response(200, payload)
            return Response(
                200,
                payload,
                "application/octet-stream",
                headers=[("Inference-Header-Content-Length", str(json_length))],
            )

        return await self._run_job(job)
