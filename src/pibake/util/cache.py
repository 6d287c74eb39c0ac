"""The cache under ~/.cache/pibake (or $PIBAKE_CACHE), keyed by hashes of inputs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cache_root() -> Path:
    env = os.environ.get("PIBAKE_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "pibake"
    root.mkdir(parents=True, exist_ok=True)
    return root


def recipe_hash(recipe: dict[str, Any]) -> str:
    """A stable hex digest of a JSON-able recipe: key order does not matter."""
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def sha256_file(path: Path, *, chunk: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on PATH: two processes building the same cache entry take turns
    instead of deleting each other's half-built trees."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another pibake process that is building %s", what)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
