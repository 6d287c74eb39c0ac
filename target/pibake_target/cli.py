"""`python3 -m pibake_target COMMAND`: serve (the HTTP service), predict (images to JSON), time (latency).

Exit status 1 with the reason on stderr when the model or its runtime cannot be used; systemd
restarts the service then (the model may be fixed later).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pibake_target.errors import ModelError

log = logging.getLogger("pibake_target")


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


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, metavar="FILE", help="float32 model, input (1, H, W, 3): .tflite or .onnx"
    )
    parser.add_argument("--labels", required=True, metavar="FILE", help="labels file, one label per line, output order")
    parser.add_argument(
        "--preprocessing",
        metavar="FILE",
        help="JSON file saying how an image becomes the model's input: "
        '{"scale": S, "mean": [R, G, B], "std": [R, G, B], "channel_order": "rgb"|"bgr"}, applied after the resize '
        "as (pixel * scale - mean) / std (default: preprocessing.json beside the model file if there is one, "
        "else RGB scaled by 1/255)",
    )


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
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
        help="largest batch /infer accepts (%(default)s)",
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
        help="seconds a client has to send a request's headers, and then its body; also how long an idle "
        "connection lives (default: %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="open connections (idle ones included); past it, requests get 503 at once (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-size",
        type=_positive_int,
        default=16,
        metavar="N",
        help="requests that may wait for the model; past it, 503 with Retry-After at once (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="threads that decode requests and run the model (one model run at a time) (default: %(default)s)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding a bearer token every endpoint but /, /v2/health/live and /v2/health/ready requires",
    )
    parser.add_argument(
        "--num-threads",
        type=_positive_int,
        metavar="N",
        help="threads of the TFLite interpreter, or onnxruntime's intra-op threads (default: the runtime's; "
        "onnxruntime's: one per CPU the process may use)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="(default: %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m pibake_target", description="pibake's model on the Pi: serve it, or run it on images."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    serve = commands.add_parser(
        "serve",
        help="serve the model over HTTP",
        description="Serve a float32 image classifier over HTTP: GET / (health), POST /predict (a PNG or JPEG "
        "body), GET /metrics (Prometheus) and the Open Inference Protocol v2 (/v2/...), with Triton's binary "
        "tensor data and classification extensions.",
    )
    _add_serve_arguments(serve)
    predict = commands.add_parser(
        "predict", help="classify image files", description="Classify images and print one JSON object."
    )
    _add_model_arguments(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    timing = commands.add_parser(
        "time", help="time the model per image", description="Time the model per image; print one JSON object."
    )
    _add_model_arguments(timing)
    timing.add_argument("--runs", type=_positive_int, default=5, help="passes over the images (default: %(default)s)")
    timing.add_argument("images", nargs="+", metavar="IMAGE")
    return parser


def read_token(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{path} must hold one token without spaces")
    return token


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from pibake_target.app import InferenceApp, Settings
    from pibake_target.metrics import Metrics
    from pibake_target.model import load_model
    from pibake_target.server import listen, make_server, serve
    from pibake_target.workqueue import WorkQueue

    try:
        token = read_token(args.token_file) if args.token_file else None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.error("cannot read the token: %s", exc)
        return 1
    try:
        model = load_model(
            args.model,
            args.labels,
            name=args.name,
            version=args.version,
            max_batch_size=args.max_batch_size,
            num_threads=args.num_threads,
            preprocessing_file=args.preprocessing,
        )
    except ModelError as exc:
        log.error("%s", exc)
        return 1
    try:
        sock = listen(args.host, args.port, backlog=min(4096, args.max_connections + 64))
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", args.host, args.port, exc)
        return 1
    work = WorkQueue(args.queue_size, workers=args.workers)
    metrics = Metrics(
        model=model.name,
        version=model.version,
        runtime=model.runtime,
        queue_depth=work.depth,
        queue_capacity=args.queue_size,
    )
    settings = Settings(
        max_body_bytes=args.max_body_bytes,
        top_k=args.top_k,
        max_image_pixels=args.max_image_pixels,
        request_timeout=args.timeout,
        token=token,
    )
    app = InferenceApp(model, settings, work, metrics)
    server = make_server(app, request_timeout=args.timeout, max_connections=args.max_connections)
    port = int(sock.getsockname()[1])
    log.info(
        "serving model %r version %r (%s, input %dx%d, %d classes) on http://%s:%d/%s",
        model.name,
        model.version,
        model.runtime,
        model.width,
        model.height,
        model.num_classes,
        args.host,
        port,
        " (token required)" if token else "",
    )
    log.info("preprocessing of POST /predict images: %s", model.preprocessing.describe())
    # uvicorn handles SIGTERM and SIGINT while it serves (a graceful stop); newer releases raise the signal again
    # afterwards, for the handler that was there before: this one, so that a stop ends with status 0.
    signal.signal(signal.SIGTERM, _stopped)
    asyncio.run(serve(server, sock, ready_status=f"serving {model.name} {model.version} on port {port}"))
    work.close()
    return 0


def _stopped(signum: int, frame: Any) -> None:
    """SIGTERM after uvicorn's graceful stop: nothing left to do."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        # stderr goes to journald, which adds the time and the unit.
        logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(message)s", stream=sys.stderr)
        return run_serve(args)
    logging.basicConfig(level="WARNING", format="%(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "predict":
            from pibake_target.predict import predict

            output = predict(args.model, args.labels, args.images, preprocessing_file=args.preprocessing)
        else:
            from pibake_target.timing import time_model

            output = time_model(
                args.model, args.labels, args.images, runs=args.runs, preprocessing_file=args.preprocessing
            )
    except (ModelError, OSError, ValueError) as exc:
        print(f"pibake_target {args.command}: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(output) + "\n")
    return 0
