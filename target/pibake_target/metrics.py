"""The service's Prometheus metrics (GET /metrics), on their own registry.

Requests by endpoint and status, request and inference latency, the inference queue's depth and
capacity, and the model being served as an info-style gauge (value 1, the version in a label).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# From a fast host (0.3 ms a model run) to an emulated Pi (0.1-0.7 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self, *, model: str, version: str, runtime: str, queue_depth: Callable[[], float], queue_capacity: int
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pibake_http_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "pibake_http_request_duration_seconds",
            "Time from a request's headers to the end of its answer, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "pibake_inference_duration_seconds",
            "Time the model takes for one request's batch (the runtime's invoke calls).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        depth = Gauge(
            "pibake_inference_queue_depth",
            "Inference jobs waiting or running.",
            registry=self.registry,
        )
        depth.set_function(queue_depth)
        capacity = Gauge(
            "pibake_inference_queue_capacity",
            "Inference jobs that may wait; beyond that requests get 503.",
            registry=self.registry,
        )
        capacity.set(queue_capacity)
        info = Gauge(
            "pibake_model_info",
            "The model being served (always 1; the model, its version and runtime are labels).",
            ["model", "version", "runtime"],
            registry=self.registry,
        )
        info.labels(model=model, version=version, runtime=runtime).set(1)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()
        self.request_seconds.labels(endpoint=endpoint).observe(seconds)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
