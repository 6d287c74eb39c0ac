"""The cache under ~/.cache/pibake (or $PIBAKE_CACHE), keyed by hashes of inputs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


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
