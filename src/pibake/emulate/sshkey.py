"""The harness's SSH key pair: the image trusts it, the emulator and Ansible use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pibake.util.cache import cache_root
from pibake.util.proc import run


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: str


def ensure_keypair(directory: Path | None = None) -> KeyPair:
    directory = directory or cache_root() / "ssh"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = directory / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pibake", "-f", str(key)])
    return KeyPair(private_key=key, public_key=key.with_suffix(".pub").read_text().strip())
