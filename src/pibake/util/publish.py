"""Publishing a finished file: an atomic sparse copy with ``NAME.sha256`` beside it."""

from __future__ import annotations

from pathlib import Path

from pibake.util.cache import sha256_file
from pibake.util.proc import run


def publish(image: Path, output: Path, digest: str) -> Path:
    """Copy IMAGE to OUTPUT atomically (sparse), with OUTPUT.sha256 beside it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_name(output.name + ".part")
    run(["cp", "--sparse=always", str(image), str(part)])
    part.rename(output)
    write_sha256(output, digest)
    return output


def write_sha256(path: Path, digest: str | None = None) -> str:
    digest = digest or sha256_file(path)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest
