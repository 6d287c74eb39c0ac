"""The bench's serving step: requests a second and latency of the inference service, once it can be measured."""

from __future__ import annotations

from pathlib import Path

from pibake.bench.context import Context


def serving_unavailable(project: Path) -> str | None:
    """Why the serving load test cannot run, or None when it can."""
    role = project / "roles" / "inference_service"
    if not (role / "tasks").is_dir():
        return f"no inference_service role yet (issue 5): {role.relative_to(project)}/tasks does not exist"
    # The service and the forwarded port exist (emulator.DEFAULT_FORWARDS); the load generator does not yet.
    return (
        "no load test of the service in the bench yet: the service answers on the guest's port 8000, forwarded "
        "to the host (`pibake emulate status`); tests/serve_client.py has the requests to time"
    )


def serve(ctx: Context) -> None:
    """serve: the endpoints' rows, each with the reason it cannot run yet."""
    reason = serving_unavailable(ctx.project)
    for endpoint in ("serve-predict", "serve-v2-infer"):
        if reason:
            ctx.rec.cannot(endpoint, "serving", reason)
