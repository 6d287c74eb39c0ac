"""Publishing a finished file: an atomic copy with the source's holes (and only those), ``NAME.sha256`` beside it."""

from __future__ import annotations

from pathlib import Path

from pibake.disk.sparse import copy_file
from pibake.util.cache import sha256_file


def publish(image: Path, output: Path, digest: str) -> Path:
    """Copy IMAGE to OUTPUT atomically, keeping IMAGE's extents (written zeros stay written), with OUTPUT.sha256."""
    copy_file(image, output)
    write_sha256(output, digest)
    return output


def write_sha256(path: Path, digest: str | None = None) -> str:
    digest = digest or sha256_file(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest
