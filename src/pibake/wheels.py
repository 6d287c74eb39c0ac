"""Runtime locks on the controller: download a lock's wheels into the cache and check every SHA-256.

The rules (the lock format, pip's target options, the digest checks, the staging directory) are the
collection's plugins/module_utils/wheel_lock.py, which the python_runtime role runs through the
wheel_lock module; this module adds the cache's place, the subprocess runner and pibake's error kinds.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pibake._module_utils import wheel_lock as _rules
from pibake._module_utils.wheel_lock import HashMismatch, Lock, LockError, MissingWheel, Pin, normalize, parse
from pibake.errors import UsageError, VerificationFailed
from pibake.util.cache import cache_root, locked
from pibake.util.proc import run

log = logging.getLogger(__name__)

__all__ = ["FetchResult", "Lock", "Pin", "fetch", "normalize", "parse", "read_lock", "wheel_cache"]


@dataclass(frozen=True)
class FetchResult:
    """What fetch left in the cache: one (pin, path, sha256 hex) per pin, the files it downloaded, seconds taken."""

    lock: Lock
    wheels: tuple[tuple[Pin, Path, str], ...]
    downloaded: tuple[str, ...]
    seconds: float

    @property
    def total_bytes(self) -> int:
        """Size of the lock's wheels in bytes (the closure the target installs)."""
        return sum(path.stat().st_size for _, path, _ in self.wheels)


def wheel_cache() -> Path:
    """The controller's wheel cache, $PIBAKE_CACHE/wheels or ~/.cache/pibake/wheels (the role's default too)."""
    return cache_root() / "wheels"


def read_lock(path: Path) -> Lock:
    """Parse the lock file at PATH. Raises UsageError when it is missing or not a lock (the message says which line)."""
    try:
        return _rules.read(path)
    except FileNotFoundError as e:
        raise UsageError(f"no lock file at {path} (the locks are in roles/python_runtime/files/locks/)") from e
    except LockError as e:
        raise UsageError(str(e)) from e


def fetch(lock_path: Path, *, cache: Path | None = None, python: str | None = None) -> FetchResult:
    """Download the wheels the lock at LOCK_PATH pins into CACHE (default wheel_cache()) and verify each.

    pip (PYTHON -m pip, default this interpreter) picks each wheel for the lock's platform and Python
    from its default index, or the one PIP_INDEX_URL / PIP_FIND_LINKS / pip.conf set. A second run
    with every wheel cached and intact downloads nothing. Raises UsageError for a file that is not a
    lock, VerificationFailed when a wheel's SHA-256 differs from the lock's (the message names the
    file, the expected and the actual digest; the file is deleted) or pip chose another file than the
    lock names, CommandFailed when pip fails (no network, no such release).
    """
    lock = read_lock(lock_path)
    cache = cache if cache is not None else wheel_cache()
    started = time.monotonic()
    with locked(cache / ".lock", f"the wheel cache {cache}"):
        try:
            wheels, downloaded = _rules.fetch(lock, cache, pip=[python or sys.executable, "-m", "pip"], run=run)
        except HashMismatch as e:
            raise VerificationFailed(
                f"refused {e.path.name} for {lock_path}: its SHA-256 is {e.actual}, the lock pins {e.expected}. "
                "The file was deleted. If the lock is right, the index served other bytes under that name: "
                "check PIP_INDEX_URL; if the release was replaced on purpose, regenerate the lock with `make locks`."
            ) from e
        except MissingWheel as e:
            raise VerificationFailed(f"{lock_path}: {e}; regenerate the lock with `make locks`") from e
    seconds = time.monotonic() - started
    log.info("%s: %d wheels, %d downloaded in %.1f s", lock_path, len(wheels), len(downloaded), seconds)
    return FetchResult(lock, tuple(wheels), tuple(downloaded), seconds)
